"""The engine's synth hot path: one synth interval for V voices (:class:`StreamingSynth`), on buffers allocated
once.

It computes what :func:`instrument.model.dsp.raw_to_controls` and :func:`instrument.model.dsp.synthesize`
compute (tests check both to float precision, and a minute of a held note against the offline synth), in two
numba kernels (compiled once per machine, cached; fastmath off, so every operation rounds as written): the
controls of a frame, and the interval. Sines come from the exact phase of every sample (Chebyshev recurrence
over harmonics in float64, nothing carried between samples: no drift). The noise filter's FIR is a
precomputed linear map of the band magnitudes, convolved directly with the interval's white noise.

Rates: the decoder's controls are rate-independent. At a device rate other than the model's, harmonics are
rendered at the device rate (its Nyquist mask drops what does not fit) and the noise bands are resampled
onto a band grid of the same resolution at the device rate, scaled so the noise power density is unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from instrument.model import dsp

__all__ = ["StreamingSynth", "device_hop_size", "noise_band_map"]


def device_hop_size(model_hop: int, model_rate: float, sample_rate: float) -> int:
    """Samples per control frame at ``sample_rate`` (frame duration kept; rounded to whole samples)."""
    return max(1, int(round(model_hop * float(sample_rate) / float(model_rate))))


def noise_band_map(n_model_bands: int, model_rate: float, sample_rate: float) -> torch.Tensor:
    """(N_model, N_device) float64 linear map from model noise bands to device bands (gain included).

    Device bands keep the model's band spacing in Hz; bands above the model's Nyquist are silent. The gain
    sqrt(sample_rate / model_rate) keeps the noise power spectral density of the model's rate.
    """
    if float(sample_rate) == float(model_rate):
        return torch.eye(n_model_bands, dtype=torch.float64)
    n_dev = int(round((n_model_bands - 1) * float(sample_rate) / float(model_rate))) + 1
    f_model = np.linspace(0.0, model_rate / 2.0, n_model_bands)
    f_dev = np.linspace(0.0, sample_rate / 2.0, n_dev)
    band_map = np.zeros((n_model_bands, n_dev))
    spacing = f_model[1] - f_model[0]
    for i, f in enumerate(f_dev):
        if f > f_model[-1] + 1e-9:
            continue
        position = min(f / spacing, n_model_bands - 1.0)
        j = min(int(math.floor(position)), n_model_bands - 2)
        w = position - j
        band_map[j, i] += 1.0 - w
        band_map[j + 1, i] += w
    return torch.from_numpy(band_map * math.sqrt(float(sample_rate) / float(model_rate)))



class _Frame:
    """One frame of controls for V voices: dsp.SynthControls (V, 1, ...) plus flat NumPy views of it, and the
    harmonic amplitudes amplitude * distribution (unmasked)."""

    def __init__(self, V: int, H: int, N: int):
        self.controls = dsp.SynthControls(
            f0_hz=torch.full((V, 1), 440.0), amplitude=torch.zeros(V, 1),
            harmonic_distribution=torch.zeros(V, 1, H), noise_magnitudes=torch.zeros(V, 1, N))
        self.f0 = self.controls.f0_hz.numpy()[:, 0]                          # (V,)
        self.amp = self.controls.amplitude.numpy()[:, 0]
        self.dist = self.controls.harmonic_distribution.numpy()[:, 0]        # (V, H)
        self.noise = self.controls.noise_magnitudes.numpy()[:, 0]            # (V, N)
        self.amps = np.zeros((V, H), dtype=np.float32)

    def zero_voice(self, v: int) -> None:
        self.amp[v] = 0.0
        self.dist[v] = 0.0
        self.noise[v] = 0.0
        self.amps[v] = 0.0


class StreamingSynth:
    """dsp.synthesize for one interval of V voices at a time, on preallocated buffers.

    Set ``cur.f0`` and fill the rest of :attr:`cur` with :meth:`set_controls`; :meth:`render` then writes
    each voice's interval (from ``state.last`` to ``cur``) into a (V, hop) tensor and makes ``cur`` the new
    ``state.last``. Both take ``rows``: only voices 0..rows-1 are computed (the others keep their state).
    Noise comes from a table of ``noise_frames`` white-noise frames made from ``seed``; voice v reads frame
    ``(interval + v * noise_frames // V) % noise_frames``.
    """

    def __init__(self, n_voices: int, n_harmonics: int, n_noise_bands: int, model_sample_rate: float,
                 sample_rate: float, hop_size: int, noise_bias: float = -5.0, noise_frames: int = 4096,
                 seed: int = 0):
        V, H, N = int(n_voices), int(n_harmonics), int(n_noise_bands)
        self.n_voices, self.n_harmonics, self.n_noise_bands = V, H, N
        self.sample_rate = float(sample_rate)
        self.model_sample_rate = float(model_sample_rate)
        self.hop_size = hop = int(hop_size)
        self.noise_bias = float(noise_bias)
        with torch.no_grad():
            self.band_map = noise_band_map(N, model_sample_rate, sample_rate)         # (N, N_dev) float64
            n_dev = self.band_map.shape[1]
            irs = dsp.noise_impulse_responses(torch.eye(n_dev, dtype=torch.float64))  # (N_dev, ir)
            self.ir_size = ir_size = irs.shape[-1]
            self.tail_size = tail = ir_size - 1
            # The FIR design is linear in the magnitudes: model bands -> FIR taps is one (N, ir) map.
            self._ir_map = (self.band_map @ irs).numpy().copy()                      # float64
            generator = torch.Generator().manual_seed(int(seed))
            self.noise_frames = T = int(noise_frames)
            self.noise_table = torch.rand(T, hop, generator=generator) * 2.0 - 1.0      # (T, hop)
            self._noise_table_np = self.noise_table.numpy()
            offsets = (np.arange(V, dtype=np.int64) * (T // V)) % T
            self._noise_index = torch.from_numpy(offsets.copy())
            self._noise_index_np = self._noise_index.numpy()
            self.interval = 0

            self._frames = (_Frame(V, H, N), _Frame(V, H, N))
            self.cur, self.last = self._frames
            self.state = dsp.SynthState(last=self.last.controls, phase_cycles=torch.zeros(V, dtype=torch.float64),
                                        noise_tail=torch.zeros(V, tail))
            self._phase = self.state.phase_cycles.numpy()
            self._tail = self.state.noise_tail.numpy()
            self._ramp = (np.arange(hop, dtype=np.float32) / np.float32(hop)).astype(np.float32)
            # Scratch for the render kernel (one voice at a time).
            self._ir, self._ir32 = np.zeros(ir_size), np.zeros(ir_size, np.float32)
            self._filt = np.zeros(hop + tail, np.float32)
            self._scratch = [np.zeros(hop) for _ in range(5)]        # 2 cos, sin_h, sin_(h-1), two sums
        self._raw: torch.Tensor | None = None
        self._out: torch.Tensor | None = None
        # Compile (or load from numba's cache) the kernels now, not in the first callback.
        f32 = np.zeros(V, np.float32)
        cur = self.cur
        _controls_kernel(0, np.zeros((V, 1 + H + N), np.float32), f32, f32, self.noise_bias, cur.f0, cur.amp, cur.dist,
                         cur.noise, cur.amps, self.model_sample_rate / 2.0, _EXP_SIGMOID)
        _render_kernel(0, np.zeros((V, hop), np.float32), cur.f0, cur.f0, cur.amps, cur.amps, cur.noise, self._phase,
                       self._tail, self._noise_table_np, self._noise_index_np, self._ramp, self.sample_rate,
                       self._ir_map, self._ir, self._ir32, self._filt, *self._scratch)

    # ------------------------------------------------------------------------------------------ controls
    def set_controls(self, raw: torch.Tensor, amp_gain: np.ndarray, noise_gain: np.ndarray,
                     rows: int | None = None) -> None:
        """raw (V, 1 + H + N) decoder outputs -> ``cur`` (dsp.raw_to_controls at the model's rate), with the
        amplitude scaled by amp_gain (V,) and the noise magnitudes by noise_gain (V,).
        ``cur.f0`` must hold this frame's f0 already."""
        rows = self.n_voices if rows is None else rows
        if rows <= 0:
            return
        if raw is not self._raw:
            self._raw, self._raw_np = raw, raw.numpy()
        cur = self.cur
        _controls_kernel(rows, self._raw_np, amp_gain, noise_gain, self.noise_bias, cur.f0, cur.amp, cur.dist, cur.noise,
                         cur.amps, self.model_sample_rate / 2.0, _EXP_SIGMOID)

    def restart_voice(self, v: int, offset: int) -> None:
        """Voice v starts fresh at sample ``offset`` of the next interval: its previous frame becomes the
        current one (no ramp from the old sound), its phase is set so that the phase at sample ``offset - 1``
        is 0 (the phase after ``offset`` equals a fresh start there), and its noise tail is cleared."""
        cur, last = self.cur, self.last
        last.f0[v] = cur.f0[v]
        last.amp[v] = cur.amp[v]
        last.dist[v] = cur.dist[v]
        last.noise[v] = cur.noise[v]
        last.amps[v] = cur.amps[v]
        self._phase[v] = (-offset * float(cur.f0[v]) / self.sample_rate) % 1.0
        self._tail[v] = 0.0

    def silence_voice(self, v: int) -> None:
        """Voice v silent from the next interval on, with no tail and zero phase."""
        for frame in self._frames:
            frame.zero_voice(v)
        self._phase[v] = 0.0
        self._tail[v] = 0.0

    def reset(self) -> None:
        for v in range(self.n_voices):
            self.silence_voice(v)

    def current_noise(self) -> torch.Tensor:
        """The white noise (V, hop) the next :meth:`render` uses (a copy; for tests and recording)."""
        return self.noise_table.index_select(0, self._noise_index)

    # ------------------------------------------------------------------------------------------ render
    def render(self, out: torch.Tensor, rows: int | None = None) -> None:
        """Render one interval of voices 0..rows-1 into out (V, hop); ``cur`` becomes ``state.last``."""
        rows = self.n_voices if rows is None else rows
        if rows > 0:
            if out is not self._out:
                self._out, self._out_np = out, out.numpy()
            cur, last = self.cur, self.last
            _render_kernel(rows, self._out_np, cur.f0, last.f0, cur.amps, last.amps, cur.noise, self._phase,
                           self._tail, self._noise_table_np, self._noise_index_np, self._ramp, self.sample_rate,
                           self._ir_map, self._ir, self._ir32, self._filt, *self._scratch)
        self.interval += 1
        self._noise_index_np += 1
        np.remainder(self._noise_index_np, self.noise_frames, out=self._noise_index_np)
        self.cur, self.last = self.last, self.cur
        self.state.last = self.last.controls



# ---------------------------------------------------------------------------------------------- numba kernels
# Compiled once per machine (cache=True); fastmath stays off so every operation rounds as written.
# dsp.exp_sigmoid's constants (log(exponent), max_value, threshold), passed to the kernel as an argument: a
# module global would be frozen into numba's on-disk cache, which a change in dsp.py does not invalidate.
_EXP_SIGMOID = (math.log(dsp.EXP_SIGMOID_EXPONENT), dsp.EXP_SIGMOID_MAX_VALUE, dsp.EXP_SIGMOID_THRESHOLD)


@njit(cache=True)
def _exp_sigmoid(x, constants):
    """dsp.exp_sigmoid of one float64; constants = _EXP_SIGMOID."""
    log_exponent, max_value, threshold = constants
    return max_value * (1.0 / (1.0 + math.exp(-x))) ** log_exponent + threshold


@njit(cache=True)
def _controls_kernel(rows, raw, amp_gain, noise_gain, noise_bias, f0, amp, dist, noise, amps, nyquist_model,
                     exp_sigmoid_constants):
    """dsp.raw_to_controls for one frame of voices 0..rows-1 (exp_sigmoid in float64, stored as float32)."""
    H = dist.shape[1]
    N = noise.shape[1]
    for v in range(rows):
        a = _exp_sigmoid(float(raw[v, 0]), exp_sigmoid_constants)
        amp_v = np.float32(a) * amp_gain[v]
        amp[v] = amp_v
        f = f0[v]
        total = 0.0
        for h in range(H):
            if f * np.float32(h + 1) < nyquist_model:
                x = np.float32(_exp_sigmoid(float(raw[v, 1 + h]), exp_sigmoid_constants))
            else:
                x = np.float32(0.0)
            dist[v, h] = x
            total += float(x)
        scale = np.float32(max(total, 1e-7))
        for h in range(H):
            d = dist[v, h] / scale
            dist[v, h] = d
            amps[v, h] = d * amp_v
        g = noise_gain[v]
        for n in range(N):
            x = float(raw[v, 1 + H + n]) + noise_bias
            noise[v, n] = np.float32(_exp_sigmoid(x, exp_sigmoid_constants)) * g


@njit(cache=True)
def _render_kernel(rows, out, cur_f0, last_f0, cur_amps, last_amps, cur_noise, phase, tail, noise_table, noise_index,
                   ramp, sample_rate, ir_map, ir, ir32, filt, c2, s1, s2, acc0, acc1):
    """One interval of voices 0..rows-1: harmonic bank (render_harmonic) + filtered noise (render_noise).

    Sines: sin(h x) by the Chebyshev recurrence over h in float64 from x = float32(2 pi phase), exact per
    sample (nothing carries over between samples, so no drift). Noise: the FIR (a linear map of the band
    magnitudes, in float64) convolved directly with the interval's white noise in float32 (as the FFT path
    of render_noise), overlap-added with the tail.
    """
    hop = out.shape[1]
    H = cur_amps.shape[1]
    N, n_ir = ir_map.shape
    n_tail = tail.shape[1]
    two_pi = np.float32(2.0 * math.pi)
    for v in range(rows):
        # f0 ramp (float32, as upsample_linear) and phase (float64 cumsum, then wrapped).
        f_last, f_cur = last_f0[v], cur_f0[v]
        df = f_cur - f_last
        p0 = phase[v]
        cum = 0.0
        for s in range(hop):
            f = df * ramp[s] + f_last
            cum += float(f) / sample_rate
            p = cum + p0
            p -= math.floor(p)
            x = float(np.float32(np.float32(p) * two_pi))
            c2[s] = 2.0 * math.cos(x)
            s1[s] = math.sin(x)
            s2[s] = 0.0
            acc0[s] = 0.0
            acc1[s] = 0.0
            if s == hop - 1:
                phase[v] = p
        # Harmonics below Nyquist for the higher f0 of the two frames.
        f_max = max(f_last, f_cur)
        n_h = 0
        while n_h < H and f_max * np.float32(n_h + 1) < sample_rate / 2.0:
            n_h += 1
        for h in range(n_h):
            a0 = last_amps[v, h]
            d = float(cur_amps[v, h] - a0)
            a0 = float(a0)
            if h == 0:
                for s in range(hop):
                    acc0[s] = a0 * s1[s]
                    acc1[s] = d * s1[s]
            else:
                for s in range(hop):
                    t = c2[s] * s1[s] - s2[s]
                    s2[s] = s1[s]
                    s1[s] = t
                    acc0[s] += a0 * t
                    acc1[s] += d * t
        for s in range(hop):
            out[v, s] = np.float32(acc0[s] + float(ramp[s]) * acc1[s])
        # Filtered noise.
        for j in range(n_ir):
            ir[j] = 0.0
        for n in range(N):
            m = float(cur_noise[v, n])
            if m != 0.0:
                for j in range(n_ir):
                    ir[j] += m * ir_map[n, j]
        for j in range(n_ir):
            ir32[j] = np.float32(ir[j])
        for j in range(n_tail):
            filt[j] = tail[v, j]
        for j in range(n_tail, filt.shape[0]):
            filt[j] = 0.0
        frame = noise_index[v]
        for k in range(hop):
            w = noise_table[frame, k]
            for j in range(n_ir):
                filt[k + j] += w * ir32[j]
        for s in range(hop):
            out[v, s] += filt[s]
        for j in range(n_tail):
            tail[v, j] = filt[hop + j]
