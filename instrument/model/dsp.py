"""The DDSP synthesiser: pure functions over tensors, shared by training (offline) and the instrument (streaming).

Time convention. Controls come in frames every ``hop_size`` samples; frame k describes the sound at sample
k * hop_size. Audio interval k (samples [k*hop, (k+1)*hop)) is rendered from two frames: the previous frame
(k, kept in :class:`SynthState`) and the current frame (k+1), interpolated linearly per sample. So rendering
F frames produces F * hop_size samples, and streaming is the same code called with fewer frames at a time:
``synthesize(controls, noise, state) -> (audio, state)``. The state is one dataclass owned by the caller.

Shapes: ``B`` batch (voices), ``F`` frames, ``H`` harmonics, ``N`` noise bands, ``S`` samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F_

__all__ = [
    "SynthControls", "SynthState", "exp_sigmoid", "db_to_amplitude", "amplitude_to_db", "hz_to_midi", "midi_to_hz",
    "harmonic_mask", "raw_to_controls", "noise_impulse_responses", "initial_state", "synthesize",
    "render_harmonic", "render_noise", "upsample_linear",
]


@dataclass
class SynthControls:
    """Synth controls per frame. ``harmonic_distribution`` sums to 1 over audible harmonics (or to 0)."""

    f0_hz: torch.Tensor                  # (B, F)
    amplitude: torch.Tensor              # (B, F) linear overall harmonic amplitude
    harmonic_distribution: torch.Tensor  # (B, F, H)
    noise_magnitudes: torch.Tensor       # (B, F, N) linear magnitudes of N bands spread evenly 0..Nyquist

    def frame(self, index: int) -> "SynthControls":
        """One frame, keeping the frame axis (length 1)."""
        s = slice(index, index + 1) if index != -1 else slice(-1, None)
        return SynthControls(self.f0_hz[:, s], self.amplitude[:, s], self.harmonic_distribution[:, s],
                             self.noise_magnitudes[:, s])

    def frames(self, start: int, stop: int | None = None) -> "SynthControls":
        s = slice(start, stop)
        return SynthControls(self.f0_hz[:, s], self.amplitude[:, s], self.harmonic_distribution[:, s],
                             self.noise_magnitudes[:, s])

    @property
    def n_frames(self) -> int:
        return self.f0_hz.shape[1]


@dataclass
class SynthState:
    """Everything the synth carries from one call to the next (per batch item / voice)."""

    last: SynthControls        # the previous frame (F = 1): the start point of the next interval
    phase_cycles: torch.Tensor  # (B,) float64 fundamental phase in cycles, wrapped to [0, 1)
    noise_tail: torch.Tensor    # (B, ir_size - 1) overlap-add tail of the filtered noise


# ---------------------------------------------------------------------------------------------- scalings
EXP_SIGMOID_EXPONENT = 10.0      # exp_sigmoid's constants (ddsp's), also read by the engine's synth kernel
EXP_SIGMOID_MAX_VALUE = 2.0
EXP_SIGMOID_THRESHOLD = 1e-7


def exp_sigmoid(x: torch.Tensor, exponent: float = EXP_SIGMOID_EXPONENT, max_value: float = EXP_SIGMOID_MAX_VALUE,
                threshold: float = EXP_SIGMOID_THRESHOLD) -> torch.Tensor:
    """DDSP's positive output scaling: max_value * sigmoid(x) ** log(exponent) + threshold."""
    return max_value * torch.sigmoid(x) ** math.log(exponent) + threshold


def db_to_amplitude(db: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, db / 20.0)


def amplitude_to_db(amplitude: torch.Tensor, floor_db: float = -120.0) -> torch.Tensor:
    return (20.0 * torch.log10(amplitude.clamp_min(1e-12))).clamp_min(floor_db)


A4_MIDI = 69.0
A4_HZ = 440.0


def hz_to_midi(f0_hz: torch.Tensor) -> torch.Tensor:
    return A4_MIDI + 12.0 * torch.log2(f0_hz.clamp_min(1e-3) / A4_HZ)


def midi_to_hz(note: torch.Tensor | np.ndarray, out: np.ndarray | None = None) -> torch.Tensor | np.ndarray:
    """MIDI note number -> Hz. With ``out`` (a NumPy array, for the audio thread), computed in place there
    from ``note`` (an array) without allocating, and returned."""
    if out is None:
        return A4_HZ * torch.pow(2.0, (note - A4_MIDI) / 12.0)
    np.subtract(note, A4_MIDI, out=out)
    out /= 12.0
    np.exp2(out, out=out)
    out *= A4_HZ
    return out


def harmonic_mask(f0_hz: torch.Tensor, n_harmonics: int, sample_rate: float) -> torch.Tensor:
    """1.0 for harmonics strictly below Nyquist, else 0.0. f0_hz (...,) -> (..., H)."""
    harmonics = torch.arange(1, n_harmonics + 1, dtype=f0_hz.dtype, device=f0_hz.device)
    return (f0_hz.unsqueeze(-1) * harmonics < sample_rate / 2.0).to(f0_hz.dtype)


def raw_to_controls(raw: torch.Tensor, f0_hz: torch.Tensor, n_harmonics: int, n_noise_bands: int,
                    sample_rate: float, noise_bias: float = -5.0) -> SynthControls:
    """Decoder outputs (B, F, 1 + H + N) -> controls (ddsp's get_controls).

    ``noise_bias`` starts the noise branch quiet so the harmonic branch learns first (the 48 kHz field fix).
    """
    amplitude = exp_sigmoid(raw[..., 0])
    harmonics = exp_sigmoid(raw[..., 1:1 + n_harmonics]) * harmonic_mask(f0_hz, n_harmonics, sample_rate)
    harmonics = harmonics / harmonics.sum(-1, keepdim=True).clamp_min(1e-7)
    noise = exp_sigmoid(raw[..., 1 + n_harmonics:1 + n_harmonics + n_noise_bands] + noise_bias)
    return SynthControls(f0_hz=f0_hz, amplitude=amplitude, harmonic_distribution=harmonics, noise_magnitudes=noise)


# ---------------------------------------------------------------------------------------------- rendering
def upsample_linear(start: torch.Tensor, frames: torch.Tensor, hop_size: int) -> torch.Tensor:
    """Per-sample linear ramps. start (B, 1, C), frames (B, F, C) -> (B, F * hop, C).

    Interval k runs from frame k-1 (``start`` for k = 0) to frame k; its first sample equals frame k-1.
    """
    previous = torch.cat([start, frames[:, :-1]], dim=1)                       # (B, F, C)
    ramp = torch.arange(hop_size, dtype=frames.dtype, device=frames.device) / hop_size  # (hop,)
    out = previous.unsqueeze(2) + (frames - previous).unsqueeze(2) * ramp.view(1, 1, -1, 1)  # (B, F, hop, C)
    return out.reshape(frames.shape[0], -1, frames.shape[-1])


def render_harmonic(controls: SynthControls, state: SynthState, hop_size: int, sample_rate: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive harmonic synthesis of controls' F frames. Returns (audio (B, F*hop), final phase (B,) float64)."""
    last = state.last
    f0 = upsample_linear(last.f0_hz.unsqueeze(-1), controls.f0_hz.unsqueeze(-1), hop_size)[..., 0]  # (B, S)
    # Phase of sample s = phase before the call + sum_{t <= s} f0_t / sr, accumulated in float64 and wrapped.
    phase = torch.cumsum(f0.double() / sample_rate, dim=1) + state.phase_cycles.unsqueeze(1)
    phase = torch.remainder(phase, 1.0)
    final_phase = phase[:, -1].clone() if phase.shape[1] else state.phase_cycles
    # Harmonic amplitudes: masked per interval by the higher f0 of its two frames (no aliasing inside a glide).
    n_harmonics = controls.harmonic_distribution.shape[-1]
    f0_prev = torch.cat([last.f0_hz, controls.f0_hz[:, :-1]], dim=1)
    mask = harmonic_mask(torch.maximum(f0_prev, controls.f0_hz), n_harmonics, sample_rate)  # (B, F, H)
    amps_frames = controls.amplitude.unsqueeze(-1) * controls.harmonic_distribution            # (B, F, H)
    amps_last = last.amplitude.unsqueeze(-1) * last.harmonic_distribution                     # (B, 1, H)
    amps_prev = torch.cat([amps_last, amps_frames[:, :-1]], dim=1)
    # The output is linear in the amplitudes and the sine basis needs no gradient (f0 is an input), so each
    # interval is two batched mat-vecs: sum_h sin_h(s) a_h(k-1) + r_s sum_h sin_h(s) (a_h(k) - a_h(k-1)).
    batch, n_frames = controls.f0_hz.shape
    dtype = amps_frames.dtype
    with torch.no_grad():
        harmonic_numbers = torch.arange(1, n_harmonics + 1, dtype=dtype, device=amps_frames.device)
        angles = (2.0 * math.pi) * phase.to(dtype).unsqueeze(-1) * harmonic_numbers                # (B, S, H)
        basis = torch.sin(angles).reshape(batch * n_frames, hop_size, n_harmonics)
        ramp = (torch.arange(hop_size, dtype=dtype, device=amps_frames.device) / hop_size).view(1, -1)
    a_prev = (amps_prev * mask).reshape(batch * n_frames, n_harmonics)
    a_cur = (amps_frames * mask).reshape(batch * n_frames, n_harmonics)
    both = torch.bmm(basis, torch.stack([a_prev, a_cur - a_prev], dim=-1))                     # (B*F, hop, 2)
    audio = both[..., 0] + ramp * both[..., 1]
    audio = audio.reshape(batch, n_frames * hop_size)
    return audio, final_phase


def noise_impulse_responses(magnitudes: torch.Tensor, ir_size: int | None = None) -> torch.Tensor:
    """Frequency-sampling FIR design (ddsp's frequency_impulse_response).

    magnitudes (..., N) for N bands spread from 0 Hz to Nyquist -> causal linear-phase IRs (..., ir_size),
    Hann-windowed; ir_size defaults to 2 * (N - 1). The filter delays the noise by ir_size // 2 samples.
    """
    n_bands = magnitudes.shape[-1]
    ir_size = ir_size or 2 * (n_bands - 1)
    ir = torch.fft.irfft(magnitudes, n=2 * (n_bands - 1))          # zero-phase, (..., 2(N-1))
    ir = torch.roll(ir, shifts=(n_bands - 1), dims=-1)               # centre it: causal, linear phase
    if ir_size != ir.shape[-1]:
        centre = ir.shape[-1] // 2
        ir = ir[..., max(0, centre - ir_size // 2):centre - ir_size // 2 + ir_size]
    window = torch.hann_window(ir.shape[-1], periodic=False, dtype=ir.dtype, device=ir.device)
    return ir * window


def render_noise(controls: SynthControls, noise: torch.Tensor, state: SynthState, hop_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered noise. noise (B, F*hop) white in [-1, 1]; interval k is filtered by frame k's bands
    (the frame the interval ends on) and overlap-added. Returns (audio (B, F*hop), new tail (B, ir-1))."""
    batch, n_frames = controls.f0_hz.shape
    ir = noise_impulse_responses(controls.noise_magnitudes)                    # (B, F, ir)
    ir_size = ir.shape[-1]
    tail_len = state.noise_tail.shape[-1]
    conv_len = hop_size + ir_size - 1
    n_fft = 1 << (conv_len - 1).bit_length()
    segments = noise.reshape(batch, n_frames, hop_size)
    filtered = torch.fft.irfft(torch.fft.rfft(segments, n=n_fft) * torch.fft.rfft(ir, n=n_fft), n=n_fft)
    filtered = filtered[..., :conv_len]                                        # (B, F, hop + ir - 1)
    # Overlap-add with stride hop (fold), plus the tail carried in from the previous call.
    total = n_frames * hop_size + ir_size - 1
    out = F_.fold(filtered.transpose(1, 2), output_size=(1, total), kernel_size=(1, conv_len),
                  stride=(1, hop_size)).reshape(batch, total)
    out = torch.cat([out[:, :tail_len] + state.noise_tail, out[:, tail_len:]], dim=1)
    return out[:, :n_frames * hop_size], out[:, n_frames * hop_size:]


def initial_state(first_frame: SynthControls, ir_size: int | None = None) -> SynthState:
    """A state whose previous frame is ``first_frame`` (F = 1), zero phase and silent noise tail."""
    batch = first_frame.f0_hz.shape[0]
    n_bands = first_frame.noise_magnitudes.shape[-1]
    ir_size = ir_size or 2 * (n_bands - 1)
    return SynthState(
        last=first_frame,
        phase_cycles=torch.zeros(batch, dtype=torch.float64, device=first_frame.f0_hz.device),
        noise_tail=torch.zeros(batch, ir_size - 1, dtype=first_frame.amplitude.dtype, device=first_frame.f0_hz.device),
    )


def synthesize(controls: SynthControls, noise: torch.Tensor, state: SynthState, hop_size: int,
               sample_rate: float) -> tuple[torch.Tensor, torch.Tensor, SynthState]:
    """Render F frames: returns (harmonic (B, F*hop), noise (B, F*hop), new state). Sum them for the output."""
    harmonic, phase = render_harmonic(controls, state, hop_size, sample_rate)
    filtered, tail = render_noise(controls, noise, state, hop_size)
    return harmonic, filtered, replace(state, last=controls.frame(-1), phase_cycles=phase, noise_tail=tail)
