"""Timbre attributes measured from the training audio, and the attribute regularisation that ties latents to them.

Attribute-regularised VAE (Pati & Lerch 2020, "Attribute-based regularization of latent spaces for variational
auto-encoders"): latent ``j`` is pushed to order the frames of a batch as attribute ``j`` orders them,

    L_j = mean over frame pairs (m, n) of | tanh(delta * (z_mj - z_nj)) - sign(a_mj - a_nj) |

so that turning that knob up means more of that attribute, while the KL keeps the latent a well-behaved
Gaussian and the other latents free. The attributes are computed from the audio and f0 alone (no labels), on
the spectrum read at multiples of f0 (`instrument.model.networks.sample_at_multiples`), per encoder frame:

- ``brightness``: log2 of the power-weighted mean harmonic number (harmonics 1..N_HARMONICS);
- ``breath``: dB of the power midway between harmonics over the power at them (harmonics 1..N_HARMONICS);
- ``hollowness``: dB of odd harmonics 3, 5, 7, 9 over even harmonics 2, 4, 6, 8.

Frames count when they are loud (within LOUDNESS_WINDOW_DB of the window's loudest frame, above
LOUDNESS_FLOOR_DB) and harmonic 10 is below Nyquist. These are the names that `training.export` gives a
latent after what sweeping it does (its DESCRIPTORS), so an anchored latent is named after its attribute.
"""
from __future__ import annotations

import math

import torch

from instrument.model.networks import sample_at_multiples

__all__ = ["ATTRIBUTES", "N_HARMONICS", "attribute_n_fft", "frame_attributes", "attribute_loss"]

ATTRIBUTES: tuple[str, ...] = ("brightness", "breath", "hollowness")
N_HARMONICS = 12
LOUDNESS_WINDOW_DB = 30.0
LOUDNESS_FLOOR_DB = -70.0
MAX_PAIR_FRAMES = 256


def attribute_n_fft(sample_rate: float) -> int:
    """The analysis window: the power of two of at least 40 ms (2048 at 44.1 / 48 kHz), enough to separate
    harmonics of notes down to ~100 Hz."""
    return 2 ** int(math.ceil(math.log2(0.04 * sample_rate)))


@torch.no_grad()
def frame_attributes(audio: torch.Tensor, f0_hz: torch.Tensor, loudness_db: torch.Tensor, hop_size: int,
                     stride: int, sample_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (B, S); f0_hz, loudness_db (B, F) per control frame -> (attributes (B, Fs, 3), mask (B, Fs)) at
    every ``stride``-th control frame (the encoder's frames), with Fs = S // (hop_size * stride) + 1."""
    n_fft = attribute_n_fft(sample_rate)
    spec = torch.stft(audio, n_fft=n_fft, hop_length=hop_size * stride,
                      window=torch.hann_window(n_fft, device=audio.device), center=True, return_complex=True).abs()
    n = spec.shape[2]

    def at_frames(x: torch.Tensor) -> torch.Tensor:
        x = x[:, ::stride]
        if x.shape[1] < n:
            x = torch.cat([x, x[:, -1:].expand(-1, n - x.shape[1])], dim=1)
        return x[:, :n]

    f0, loud = at_frames(f0_hz), at_frames(loudness_db)
    k = torch.arange(1, N_HARMONICS + 1, dtype=audio.dtype, device=audio.device)
    ratios = torch.cat([k, k + 0.5])
    mag, valid = sample_at_multiples(spec, f0, ratios, n_fft, sample_rate)
    power = mag.pow(2) + 1e-12
    peaks, troughs = power[..., :N_HARMONICS], power[..., N_HARMONICS:]
    ok_peaks, ok_troughs = valid[..., :N_HARMONICS].float(), valid[..., N_HARMONICS:].float()
    centroid = (peaks * k * ok_peaks).sum(-1) / (peaks * ok_peaks).sum(-1).clamp_min(1e-12)
    brightness = torch.log2(centroid.clamp_min(1.0))
    mean_trough = (troughs * ok_troughs).sum(-1) / ok_troughs.sum(-1).clamp_min(1.0)
    mean_peak = (peaks * ok_peaks).sum(-1) / ok_peaks.sum(-1).clamp_min(1.0)
    breath = 10.0 * torch.log10(mean_trough / mean_peak.clamp_min(1e-12))
    odd, even = peaks[..., [2, 4, 6, 8]].mean(-1), peaks[..., [1, 3, 5, 7]].mean(-1)
    hollowness = 10.0 * torch.log10(odd / even)
    attributes = torch.stack([brightness, breath, hollowness], dim=-1)
    mask = (loud >= loud.amax(1, keepdim=True) - LOUDNESS_WINDOW_DB) & (loud >= LOUDNESS_FLOOR_DB) & valid[..., 9]
    return attributes, mask & torch.isfinite(attributes).all(-1)


def attribute_loss(z: torch.Tensor, attributes: torch.Tensor, mask: torch.Tensor, delta: float = 10.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over attributes j < min(3, D) of the AR-VAE ordering loss between latent j and attribute j, over
    at most MAX_PAIR_FRAMES of the masked frames (drawn at random). z (B, Fs, D) at the attributes' frames;
    0 (with a gradient path) when fewer than 2 frames count."""
    zs, a = z[mask], attributes[mask]                                   # (M, D), (M, 3)
    if zs.shape[0] < 2:
        return z.sum() * 0.0
    if zs.shape[0] > MAX_PAIR_FRAMES:
        pick = torch.randperm(zs.shape[0], generator=generator, device=z.device)[:MAX_PAIR_FRAMES]
        zs, a = zs[pick], a[pick]
    n = min(zs.shape[1], a.shape[1])
    dz = zs[:, None, :n] - zs[None, :, :n]                              # (M, M, n)
    da = a[:, None, :n] - a[None, :, :n]
    return (torch.tanh(delta * dz) - torch.sign(da)).abs().mean()
