"""Loudness invariance of the latents: a training term that keeps z from changing how loud a note is.

The decoder gets loudness as an input, so a timbre knob should reshape the spectrum at constant loudness. The
spectral loss alone does not ask for that: it only sees the z the encoder gives each window, so a knob turned
to a value the encoder never paired with that loudness may play louder or softer (without this term, 10 minutes
on the FluidR3 flute: brightness and noisiness knobs moving loudness by 2.15 and 2.12 dB; with it, at most
0.93). This term decodes the batch a second time with every latent taken from another example of the batch
(each latent dimension its own random pairing, so knobs are mixed as a musician mixes them), estimates both
renders' A-weighted loudness from the synth controls (no audio rendered: cheap), and penalises the difference
in dB on loud frames.
Only the decoder learns from it (z is detached), so the encoder is not pushed to collapse z.

The estimate is the same A-weighted mean square as ``training.features.a_weighted_loudness_db`` measures from
audio (a full-scale sine reads 0 dB), computed from the controls:

- harmonic k: amplitude * distribution_k, a sine of mean square a^2 / 2 at k * f0, weighted by A(k * f0);
- filtered noise: white noise uniform in [-1, 1] (variance 1/3) through the synth's own FIR
  (``dsp.noise_impulse_responses``, Hann-windowed), whose A-weighted power gain is sum_k |H_k|^2 A(f_k) / n
  over its FFT grid (Parseval).

Checked against ``a_weighted_loudness_db`` of rendered audio (tests/test_invariance.py): exact for the harmonics
(within 0.004 dB); for the noise it is the expected power, within 0.2 dB of a render of a few seconds (measured
<= 0.094 dB over 4 s), while a 0.3 s noise-dominated render can read up to 0.44 dB off from that stretch of
noise's own randomness.
"""
from __future__ import annotations

import functools

import torch

from instrument.model import dsp

__all__ = ["a_weighting_db", "controls_loudness_db", "loudness_change_loss", "loudness_invariance_loss", "swap_latents"]

LOUD_WINDOW_DB = 30.0      # frames within this of the window's loudest (input loudness) count
LOUD_FLOOR_DB = -70.0
HUBER_DB = 0.5             # smooth L1: quadratic below this many dB, linear above


def a_weighting_db(f_hz: torch.Tensor) -> torch.Tensor:
    """librosa's A-weighting (dB, 0 at 1 kHz, floored at -150 dB) of a tensor of frequencies: a constant of the
    loss (frequencies carry no gradient), so librosa computes it on the CPU."""
    import librosa
    import numpy as np

    with np.errstate(divide="ignore"):                     # 0 Hz (the DC bin): -inf, floored
        weights = librosa.A_weighting(f_hz.detach().cpu().double().numpy(), min_db=-150.0)
    return torch.from_numpy(weights).to(dtype=f_hz.dtype, device=f_hz.device)


@functools.lru_cache(maxsize=8)
def _rfft_weights(n_fft: int, sample_rate: float) -> torch.Tensor:
    """Per rfft bin: A-weight (power) times its share of the full FFT grid (DC and Nyquist once, others
    twice), over n_fft (Parseval)."""
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate, dtype=torch.float64)
    weight = 10.0 ** (a_weighting_db(freqs) / 10.0)
    weight[1:(n_fft + 1) // 2] *= 2.0
    return (weight / n_fft).float()


def controls_loudness_db(controls: dsp.SynthControls, sample_rate: float) -> torch.Tensor:
    """A-weighted loudness (dB, full-scale sine = 0 dB) of what the controls render, per frame: (B, F)."""
    n_harmonics = controls.harmonic_distribution.shape[-1]
    k = torch.arange(1, n_harmonics + 1, dtype=controls.f0_hz.dtype, device=controls.f0_hz.device)
    freqs = controls.f0_hz.unsqueeze(-1) * k                                          # (B, F, H)
    weight = 10.0 ** (a_weighting_db(freqs) / 10.0)
    amp = controls.amplitude.unsqueeze(-1) * controls.harmonic_distribution
    harmonic_ms = (0.5 * amp.pow(2) * weight).sum(-1)
    ir = dsp.noise_impulse_responses(controls.noise_magnitudes)                       # (B, F, n)
    gain = torch.fft.rfft(ir).abs().pow(2)
    noise_ms = (gain * _rfft_weights(ir.shape[-1], float(sample_rate)).to(gain.device)).sum(-1) / 3.0
    return 10.0 * torch.log10(2.0 * (harmonic_ms + noise_ms) + 1e-12)


def swap_latents(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z (B, F, D) with latent d of example b taken from example perm_d(b), perm_d a random derangement-ish
    permutation per dimension (a cyclic shift by 1..B-1), so that every example gets other values."""
    batch, _, dims = z.shape
    if batch < 2:
        return z.flip(1)                        # one example: its own latents, time-reversed
    shifts = torch.randint(1, batch, (dims,), generator=generator, device=z.device)
    index = (torch.arange(batch, device=z.device).unsqueeze(-1) + shifts) % batch   # (B, D)
    return torch.stack([z[index[:, d], :, d] for d in range(dims)], dim=-1)


def loudness_invariance_loss(decoder, f0_hz: torch.Tensor, loudness_db: torch.Tensor, controls: dsp.SynthControls,
                             z: torch.Tensor, sample_rate: float, generator: torch.Generator | None = None
                             ) -> torch.Tensor:
    """Mean smooth-L1 (dB) between the loudness of ``controls`` (the batch's own z; a fixed target) and of the
    batch decoded with swapped latents, over loud frames (by the input loudness)."""
    swapped, _ = decoder.controls(f0_hz, loudness_db, swap_latents(z.detach(), generator))
    return loudness_change_loss(controls, swapped, loudness_db, sample_rate)


def loudness_change_loss(controls: dsp.SynthControls, swapped: dsp.SynthControls, loudness_db: torch.Tensor,
                         sample_rate: float) -> torch.Tensor:
    """The loss of :func:`loudness_invariance_loss` from the two decodes (``swapped`` already decoded)."""
    target = controls_loudness_db(controls, sample_rate).detach()
    estimate = controls_loudness_db(swapped, sample_rate)
    mask = (loudness_db >= loudness_db.amax(1, keepdim=True) - LOUD_WINDOW_DB) & (loudness_db >= LOUD_FLOOR_DB)
    if not bool(mask.any()):
        return estimate.sum() * 0.0
    return torch.nn.functional.smooth_l1_loss(estimate[mask], target[mask], beta=HUBER_DB)
