"""Knob response: a training term that makes each anchored latent move its own timbre attribute, and only it.

The attribute regularisation (training.attributes) orders the *encoder's* latents like brightness, breath and
hollowness measured from the audio; it does not ask the *decoder* to answer to them. On a corpus of one
instrument the timbre varies little, and the decoder's response to z came out nearly rank 1: on the cello,
four latents that all moved the spectral centroid (issue 14). This term asks it directly. The batch is decoded a
second time with its latents swapped between examples (the same swapped pass as the loudness-invariance term,
training.invariance: no extra decoder run), both decodes' attributes are read from the synth controls (no audio
rendered), and the change of each attribute is pulled towards a fixed gain times the change of its latent:

    a_j(z') - a_j(z) ~ GAIN_j * (z'_j - z_j)     for j = brightness, breath, hollowness (latents 0, 1, 2)

so latent j turns attribute j up by GAIN_j per unit (a corpus spans about 2 units of a latent), while the
other latents' changes, which are in the same swap, must not move it. The attributes are those the knob
analysis measures a render by (training.descriptors.describe), from the controls:

- ``centroid_octaves``: log2 of the power-weighted mean frequency of harmonics (k f0) and noise together;
- ``noise_ratio_db``: the filtered noise's mean square over the harmonics' (unweighted);
- ``odd_even_db``: odd over even harmonic amplitudes of the distribution (harmonics 1, 3, ... over 2, 4, ...).

Only the decoder learns from it (z is detached). Loud frames only, as the invariance term.
"""
from __future__ import annotations

import torch

from instrument.model import dsp
from training.invariance import LOUD_FLOOR_DB, LOUD_WINDOW_DB

__all__ = ["RESPONSE_ATTRIBUTES", "RESPONSE_GAINS", "controls_attributes", "knob_response_loss"]

RESPONSE_ATTRIBUTES = ("centroid_octaves", "noise_ratio_db", "odd_even_db")
RESPONSE_GAINS = (0.3, 5.0, 4.0)       # per unit of latent 0, 1, 2: octaves, dB, dB
RESPONSE_SCALE = (0.25, 6.0, 4.0)       # errors in the descriptors' units (training.descriptors.DESCRIPTORS)
HUBER_UNITS = 0.25


def controls_attributes(controls: dsp.SynthControls, sample_rate: float) -> torch.Tensor:
    """(B, F, 3): centroid_octaves, noise_ratio_db, odd_even_db of what the controls render, per frame. The
    centroid is the rendered sound's, harmonics and noise together (as describe measures it from the audio):
    a breath knob that lifted the noise would otherwise move the measured brightness unseen."""
    dist = controls.harmonic_distribution
    k = torch.arange(1, dist.shape[-1] + 1, dtype=dist.dtype, device=dist.device)
    harmonic_power = 0.5 * (controls.amplitude.unsqueeze(-1) * dist).pow(2)        # mean square per harmonic
    harmonic_ms = harmonic_power.sum(-1)
    ir = dsp.noise_impulse_responses(controls.noise_magnitudes)                       # (B, F, n)
    n = ir.shape[-1]
    share = torch.full((n // 2 + 1,), 2.0, dtype=ir.dtype, device=ir.device)
    share[0] = 1.0
    if n % 2 == 0:
        share[-1] = 1.0
    noise_power = torch.fft.rfft(ir).abs().pow(2) * share / n / 3.0          # uniform [-1, 1] noise, Parseval
    noise_ms = noise_power.sum(-1)
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate, dtype=ir.dtype).to(ir.device)
    moment = controls.f0_hz * (harmonic_power * k).sum(-1) + (noise_power * freqs).sum(-1)
    centroid_hz = moment / (harmonic_ms + noise_ms).clamp_min(1e-12)
    centroid = torch.log2(centroid_hz.clamp_min(1.0))
    noise_ratio = 10.0 * torch.log10(noise_ms.clamp_min(1e-12)) - 10.0 * torch.log10(harmonic_ms.clamp_min(1e-12))
    odd = dist[..., 0::2].sum(-1).clamp_min(1e-9)
    even = dist[..., 1::2].sum(-1).clamp_min(1e-9)
    odd_even = 10.0 * torch.log10(odd / even)
    return torch.stack([centroid, noise_ratio, odd_even], dim=-1)


def knob_response_loss(controls: dsp.SynthControls, swapped: dsp.SynthControls, z: torch.Tensor,
                       z_swapped: torch.Tensor, loudness_db: torch.Tensor, sample_rate: float,
                       gains: tuple[float, ...] = RESPONSE_GAINS) -> torch.Tensor:
    """Mean smooth-L1 (in descriptor units) between each attribute's change from ``controls`` (the batch's own z;
    a fixed reference) to ``swapped`` (decoded from ``z_swapped``) and its gain times latent j's change, over
    loud frames; latents 0..min(3, D)-1 are anchored."""
    n = min(len(gains), z.shape[-1])
    own = controls_attributes(controls, sample_rate).detach()[..., :n]
    moved = controls_attributes(swapped, sample_rate)[..., :n]
    dz = (z_swapped - z).detach()[..., :n]
    frames = min(own.shape[1], dz.shape[1])
    gain = torch.tensor(gains[:n], dtype=dz.dtype, device=dz.device)
    scale = torch.tensor(RESPONSE_SCALE[:n], dtype=dz.dtype, device=dz.device)
    error = ((moved - own)[:, :frames] - gain * dz[:, :frames]) / scale
    loud = loudness_db[:, :frames]
    mask = (loud >= loud.amax(1, keepdim=True) - LOUD_WINDOW_DB) & (loud >= LOUD_FLOOR_DB)
    if not bool(mask.any()):
        return moved.sum() * 0.0
    error = error[mask]
    return torch.nn.functional.smooth_l1_loss(error, torch.zeros_like(error), beta=HUBER_UNITS)
