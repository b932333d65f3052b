"""Offline rendering of whole control sequences with the streaming code path (chunk by chunk, state carried),
so long files need little memory and offline output is what the live engine would play."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from instrument.model import dsp
from instrument.model.networks import Decoder


class RenderedParts(NamedTuple):
    """The two branches of a render, each (n_samples,) float32; the output is their sum."""

    harmonic: np.ndarray
    noise: np.ndarray


@torch.inference_mode()
def render_parts(decoder: Decoder, f0_hz: np.ndarray | torch.Tensor, loudness_db: np.ndarray | torch.Tensor,
                 z: np.ndarray | torch.Tensor, seed: int = 0, chunk_frames: int = 512) -> RenderedParts:
    """Render F frames of (f0_hz (F,), loudness_db (F,), z (F, D) or (D,)) to (F - 1) * hop samples per branch.

    Frame k sits at sample k * hop (the training convention); the first frame only starts the synth state.
    """
    c = decoder.config
    f0 = torch.as_tensor(np.asarray(f0_hz, np.float32)).view(1, -1)
    ld = torch.as_tensor(np.asarray(loudness_db, np.float32)).view(1, -1)
    z = torch.as_tensor(np.asarray(z, np.float32))
    if z.dim() == 1:
        z = z.view(1, 1, -1).expand(1, f0.shape[1], -1)
    else:
        z = z.view(1, f0.shape[1], -1)
    n_frames = f0.shape[1]
    generator = torch.Generator().manual_seed(seed)
    harmonic_parts, noise_parts = [], []
    gru_state, synth_state = None, None
    for start in range(0, n_frames, chunk_frames):
        stop = min(n_frames, start + chunk_frames)
        controls, gru_state = decoder.controls(f0[:, start:stop], ld[:, start:stop], z[:, start:stop], gru_state)
        if synth_state is None:
            synth_state = dsp.initial_state(controls.frame(0))
            controls = controls.frames(1)
        if controls.n_frames == 0:
            continue
        noise = torch.rand(1, controls.n_frames * c.hop_size, generator=generator) * 2.0 - 1.0
        harmonic, filtered, synth_state = dsp.synthesize(controls, noise, synth_state, c.hop_size, c.sample_rate)
        harmonic_parts.append(harmonic[0])
        noise_parts.append(filtered[0])
    if not harmonic_parts:
        return RenderedParts(np.zeros(0, np.float32), np.zeros(0, np.float32))
    return RenderedParts(torch.cat(harmonic_parts).numpy(), torch.cat(noise_parts).numpy())


def render_controls(decoder: Decoder, f0_hz: np.ndarray | torch.Tensor, loudness_db: np.ndarray | torch.Tensor,
                    z: np.ndarray | torch.Tensor, seed: int = 0, chunk_frames: int = 512) -> np.ndarray:
    """The output of `render_parts`: harmonic + noise, (F - 1) * hop samples."""
    parts = render_parts(decoder, f0_hz, loudness_db, z, seed, chunk_frames)
    return parts.harmonic + parts.noise


@torch.inference_mode()
def encode_means(encoder, audio: np.ndarray, f0_hz: np.ndarray | None = None, chunk_seconds: float = 20.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log-variance per control frame (n_samples // hop + 1, D) for audio of any length.

    ``f0_hz`` per control frame (as the features give it; the last value is repeated where it is short) is
    needed by an encoder reading the spectrum at multiples of f0 (``encoder_features == "harmonic"``)."""
    c = encoder.config
    step = int(chunk_seconds * c.sample_rate) // (c.hop_size * c.encoder_stride) * c.hop_size * c.encoder_stride
    means, logvars = [], []
    x = torch.from_numpy(np.require(audio, np.float32, ["C", "W"]))   # copies a read-only (memmap) input
    f0 = None
    if f0_hz is not None:
        f0 = torch.as_tensor(np.asarray(f0_hz, np.float32)).flatten()
        need = len(x) // c.hop_size + 2 + c.encoder_n_fft // c.hop_size
        if f0.shape[0] < need:
            f0 = torch.cat([f0, f0[-1:].expand(need - f0.shape[0])])
    elif getattr(c, "encoder_features", "mel") == "harmonic":
        raise ValueError("this model's encoder needs f0_hz (features of the audio)")
    for start in range(0, max(1, len(x)), step):
        seg = x[start:start + step]
        if len(seg) < c.encoder_n_fft // 2 + 1:
            seg = torch.nn.functional.pad(seg, (0, c.encoder_n_fft // 2 + 1 - len(seg)))
        seg_f0 = None if f0 is None else f0[start // c.hop_size:start // c.hop_size + len(seg) // c.hop_size + 1]
        m, lv = encoder(seg.view(1, -1), None if seg_f0 is None else seg_f0.view(1, -1))
        keep = m.shape[1] if start + step >= len(x) else step // c.hop_size
        means.append(m[0, :keep])
        logvars.append(lv[0, :keep])
    n_frames = len(x) // c.hop_size + 1
    mean = torch.cat(means)[:n_frames]
    logvar = torch.cat(logvars)[:n_frames]
    if mean.shape[0] < n_frames:
        pad = n_frames - mean.shape[0]
        mean = torch.cat([mean, mean[-1:].expand(pad, -1)])
        logvar = torch.cat([logvar, logvar[-1:].expand(pad, -1)])
    return mean.numpy(), logvar.numpy()
