"""The engine's per-frame hot path: one decoder step and one synth interval for V voices, on buffers
allocated once.

These compute exactly what :class:`instrument.model.Decoder` and :func:`instrument.dsp.synthesize` compute
(tests check both to float precision), rearranged for one frame at a time: the three input MLPs' first
layers are one matmul, their second layers one batched matmul, the GRU is one ``gru_cell``, every
elementwise op writes into a preallocated tensor, and the noise filter is a precomputed linear map
(band magnitudes -> FIR spectrum) applied to a precomputed table of noise spectra.

Rates: the decoder's controls are rate-independent. At a device rate other than the model's, harmonics are
rendered at the device rate (its Nyquist mask drops what does not fit) and the noise bands are resampled
onto a band grid of the same resolution at the device rate, scaled so the noise power density is unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_layer_norm = torch.layer_norm            # the C function, without functional's Python dispatch checks
_leaky_relu_ = torch._C._nn.leaky_relu_
from torch import nn

from . import dsp
from .model import Decoder

__all__ = ["DecoderStep", "StreamingSynth", "device_hop_size", "noise_band_map"]


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


# ---------------------------------------------------------------------------------------------- decoder
class UnsupportedDecoder(Exception):
    pass


def _mlp_parts(mlp: nn.Module) -> tuple[list[nn.Linear], list[nn.LayerNorm], float]:
    layers = list(mlp) if isinstance(mlp, nn.Sequential) else []
    if len(layers) % 3 or not layers:
        raise UnsupportedDecoder("MLP is not (Linear, LayerNorm, LeakyReLU) * n")
    linears, norms, slope = [], [], None
    for k in range(0, len(layers), 3):
        lin, norm, act = layers[k:k + 3]
        if not (isinstance(lin, nn.Linear) and isinstance(norm, nn.LayerNorm) and isinstance(act, nn.LeakyReLU)):
            raise UnsupportedDecoder("MLP is not (Linear, LayerNorm, LeakyReLU) * n")
        if slope is not None and act.negative_slope != slope:
            raise UnsupportedDecoder("mixed LeakyReLU slopes")
        slope = act.negative_slope
        linears.append(lin)
        norms.append(norm)
    return linears, norms, float(slope)


class _Rows:
    """Views of the first ``a`` rows (voices) of a kernel's buffers, made once in prepare."""


def _w(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().float().contiguous()


class DecoderStep:
    """One decoder frame for V voices, equal to :meth:`Decoder.forward` on that frame.

    Write the scaled inputs into ``inputs`` (V, 2): column 0 ``(midi - f0_center_midi) / f0_scale_midi``,
    column 1 ``(dB - loudness_center_db) / loudness_scale_db``; z (shared by all voices) with :meth:`set_z`.
    :meth:`run` updates ``gru_state`` (V, G) in place and returns ``raw`` (V, 1 + H + N), a buffer that the
    next call overwrites.

    Exact rearrangements of the fused path: z only enters through the GRU's input projection (a linear map
    of z_mlp(z)), so its contribution is folded into the GRU's input bias whenever z changes; and when no
    voice's (f0, loudness) changed since the previous frame (sustained notes, idle voices) the input MLPs and
    input projections are reused. Decoders of another structure run through the module (slower).
    """

    def __init__(self, decoder: Decoder, n_voices: int):
        c = decoder.config
        self.config = c
        self.n_voices = V = int(n_voices)
        self._decoder = decoder
        with torch.no_grad():
            self.inputs = torch.zeros(V, 2)
            self.z = torch.zeros(c.latent_dim)
            self.raw = torch.zeros(V, c.n_outputs)
            self.inputs_np = self.inputs.numpy()
            self.z_np = self.z.numpy()
            self._previous = np.full((V, 2), np.nan, dtype=np.float32)
            self._z_changed = True
            try:
                self._prepare_fused(decoder)
                self.fused = True
            except UnsupportedDecoder:
                self.fused = False

    def set_z(self, index: int, value: float) -> None:
        self.z_np[index] = value
        self._z_changed = True

    def set_z_all(self, z) -> None:
        self.z_np[:] = np.asarray(z, dtype=np.float32)
        self._z_changed = True

    def _prepare_fused(self, dec: Decoder) -> None:
        c = self.config
        V, h, G = self.n_voices, c.hidden_size, c.gru_size
        branches = [_mlp_parts(m) for m in (dec.f0_mlp, dec.loudness_mlp, dec.z_mlp)]
        out_lin, out_norm, out_slope = _mlp_parts(dec.out_mlp)
        if any(len(b[0]) != 2 for b in branches) or len(out_lin) != 2:
            raise UnsupportedDecoder("expected two-layer MLPs")
        slopes = {b[2] for b in branches} | {out_slope}
        gru = dec.gru
        if not (isinstance(gru, nn.GRU) and gru.num_layers == 1 and not gru.bidirectional and gru.bias
                and gru.batch_first and gru.input_size == 3 * h and gru.hidden_size == G and len(slopes) == 1
                and isinstance(dec.out, nn.Linear)):
            raise UnsupportedDecoder("unexpected GRU / output layer")
        norms = [n for b in branches for n in b[1]] + list(out_norm)
        if any(n.normalized_shape != (h,) or not n.elementwise_affine for n in norms):
            raise UnsupportedDecoder("unexpected LayerNorm")
        if len({n.eps for n in norms}) != 1 or out_lin[0].weight.shape != (h, G + 2 * h):
            raise UnsupportedDecoder("unexpected LayerNorm eps / out_mlp input size")
        self._slope, self._eps, self._h = slopes.pop(), norms[0].eps, (h,)
        f0_b, ld_b = branches[0], branches[1]
        # Input MLPs of f0 and loudness side by side: (V, 2) -> (V, 2, h).
        w1 = torch.zeros(2, 2 * h)
        w1[0, :h] = f0_b[0][0].weight[:, 0]
        w1[1, h:] = ld_b[0][0].weight[:, 0]
        self._w1 = _w(w1)
        self._b1 = _w(torch.cat([f0_b[0][0].bias, ld_b[0][0].bias]))
        self._g1 = _w(torch.stack([f0_b[1][0].weight, ld_b[1][0].weight]))               # (2, h)
        self._be1 = _w(torch.stack([f0_b[1][0].bias, ld_b[1][0].bias]))
        self._w2 = _w(torch.stack([f0_b[0][1].weight.t(), ld_b[0][1].weight.t()]))      # (2, h, h)
        self._b2 = _w(torch.stack([f0_b[0][1].bias, ld_b[0][1].bias]).unsqueeze(1))     # (2, 1, h)
        self._g2 = _w(torch.stack([f0_b[1][1].weight, ld_b[1][1].weight]).unsqueeze(1))
        self._be2 = _w(torch.stack([f0_b[1][1].bias, ld_b[1][1].bias]).unsqueeze(1))
        # GRU: input projection split into the (f0, loudness) part and the z part (folded into the bias).
        w_ih = gru.weight_ih_l0                                                           # (3G, 3h)
        self._w_ih_fl = _w(w_ih[:, :2 * h].t())                                          # (2h, 3G)
        self._w_ih_z = _w(w_ih[:, 2 * h:])                                               # (3G, h)
        self._b_ih = _w(gru.bias_ih_l0)
        self._w_hh, self._b_hh = _w(gru.weight_hh_l0.t()), _w(gru.bias_hh_l0)
        self._z_mlp = dec.z_mlp
        # out_mlp layer 1 on [gru_out, f0_h, loudness_h], split into the GRU part and the input part.
        wo1 = out_lin[0].weight
        self._wo1_g, self._wo1_fl = _w(wo1[:, :G].t()), _w(wo1[:, G:].t())
        self._bo1 = _w(out_lin[0].bias)
        self._no1 = (_w(out_norm[0].weight), _w(out_norm[0].bias))
        self._wo2, self._bo2 = _w(out_lin[1].weight.t()), _w(out_lin[1].bias)
        self._no2 = (_w(out_norm[1].weight), _w(out_norm[1].bias))
        self._wout, self._bout = _w(dec.out.weight.t()), _w(dec.out.bias)
        # Buffers (full size) and, for every row count a = 1..V, views of their first a rows.
        self._b_ih_z = self._b_ih.clone()                 # GRU input bias with z's contribution
        x1, fl = torch.zeros(V, 2 * h), torch.zeros(V, 2, h)
        gi, gh = torch.zeros(V, 3 * G), torch.zeros(V, 3 * G)     # gi: input projection (+ bias), cached
        ofl = torch.zeros(V, h)                           # out_mlp layer-1 input part (+ bias), cached
        rz, n, tmp = torch.zeros(V, 2 * G), torch.zeros(V, G), torch.zeros(V, G)
        o1, o2 = torch.zeros(V, h), torch.zeros(V, h)
        self._rows = [None]
        for a in range(1, V + 1):
            r = _Rows()
            r.inputs, r.inputs_np, r.previous = self.inputs[:a], self.inputs_np[:a], self._previous[:a]
            r.x1, r.x1_3 = x1[:a], x1[:a].view(a, 2, h)
            r.x2 = torch.zeros(2, a, h)
            r.fl, r.fl_flat = fl[:a], fl[:a].view(a, 2 * h)
            r.gi, r.gh, r.ofl, r.rz, r.n, r.o1, r.o2 = gi[:a], gh[:a], ofl[:a], rz[:a], n[:a], o1[:a], o2[:a]
            r.raw = self.raw[:a]
            r.rz_np, r.n_np, r.tmp_np = rz.numpy()[:a], n.numpy()[:a], tmp.numpy()[:a]
            r.r_np, r.zg_np = r.rz_np[:, :G], r.rz_np[:, G:]
            r.gi_rz, r.gh_rz = gi.numpy()[:a, :2 * G], gh.numpy()[:a, :2 * G]
            r.gi_n, r.gh_n = gi.numpy()[:a, 2 * G:], gh.numpy()[:a, 2 * G:]
            self._rows.append(r)
        self._cached_rows = 0                             # rows of gi / ofl valid for self._previous
        self._state_t: torch.Tensor | None = None

    def run(self, gru_state: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """One frame for voices ``0 .. rows-1`` (default all): gru_state (V, G), contiguous, updated in
        place for those rows; returns ``raw`` (V, outputs), valid for those rows."""
        rows = self.n_voices if rows is None else rows
        if rows <= 0:
            return self.raw
        if not self.fused:
            return self._run_module(gru_state)
        h, eps, slope = self._h, self._eps, self._slope
        if gru_state is not self._state_t:
            self._state_t, state_np = gru_state, gru_state.numpy()
            self._state_rows = [None] + [(gru_state[:a], state_np[:a]) for a in range(1, self.n_voices + 1)]
        r = self._rows[rows]
        state, state_np = self._state_rows[rows]
        if self._z_changed:
            z_h = self._z_mlp(self.z.unsqueeze(0))[0]
            torch.addmv(self._b_ih, self._w_ih_z, z_h, out=self._b_ih_z)
            self._cached_rows = 0
            self._z_changed = False
        if rows > self._cached_rows or not np.array_equal(r.inputs_np, r.previous):
            self._cached_rows = rows
            r.previous[:] = r.inputs_np
            torch.addmm(self._b1, r.inputs, self._w1, out=r.x1)
            y = _layer_norm(r.x1_3, h, None, None, eps)
            torch.addcmul(self._be1, y, self._g1, out=y)
            _leaky_relu_(y, slope)
            torch.baddbmm(self._b2, y.transpose(0, 1), self._w2, out=r.x2)
            y = _layer_norm(r.x2, h, None, None, eps)
            torch.addcmul(self._be2, y, self._g2, out=y)
            _leaky_relu_(y, slope)
            r.fl.copy_(y.transpose(0, 1))
            torch.addmm(self._b_ih_z, r.fl_flat, self._w_ih_fl, out=r.gi)
            torch.addmm(self._bo1, r.fl_flat, self._wo1_fl, out=r.ofl)
        # GRU cell (PyTorch's equations): r, z = sigmoid(gi + gh); n = tanh(gi_n + r * gh_n);
        # h' = n + z * (h - n).
        torch.addmm(self._b_hh, state, self._w_hh, out=r.gh)
        np.add(r.gi_rz, r.gh_rz, out=r.rz_np)
        r.rz.sigmoid_()
        np.multiply(r.r_np, r.gh_n, out=r.n_np)
        r.n_np += r.gi_n
        r.n.tanh_()
        np.subtract(state_np, r.n_np, out=r.tmp_np)
        r.tmp_np *= r.zg_np
        np.add(r.n_np, r.tmp_np, out=state_np)
        # out_mlp and output layer.
        torch.addmm(r.ofl, state, self._wo1_g, out=r.o1)
        y = _layer_norm(r.o1, h, self._no1[0], self._no1[1], eps)
        _leaky_relu_(y, slope)
        torch.addmm(self._bo2, y, self._wo2, out=r.o2)
        y = _layer_norm(r.o2, h, self._no2[0], self._no2[1], eps)
        _leaky_relu_(y, slope)
        torch.addmm(self._bout, y, self._wout, out=r.raw)
        return self.raw

    def _run_module(self, gru_state: torch.Tensor) -> torch.Tensor:
        c = self.config
        V = self.n_voices
        midi = self.inputs[:, 0] * c.f0_scale_midi + c.f0_center_midi
        loudness = self.inputs[:, 1] * c.loudness_scale_db + c.loudness_center_db
        raw, h = self._decoder(dsp.midi_to_hz(midi).unsqueeze(1), loudness.unsqueeze(1),
                               self.z.expand(V, 1, -1), gru_state.unsqueeze(0))
        gru_state.copy_(h[0])
        self.raw.copy_(raw[:, 0])
        return self.raw


# ---------------------------------------------------------------------------------------------- synth
class _Frame:
    """One frame of controls for V voices: dsp.SynthControls (V, 1, ...) plus flat NumPy views and the
    harmonic amplitudes amplitude * distribution (unmasked); ``rows[a]`` holds the views of voices 0..a-1."""

    def __init__(self, V: int, H: int, N: int):
        self.controls = dsp.SynthControls(
            f0_hz=torch.full((V, 1), 440.0), amplitude=torch.zeros(V, 1),
            harmonic_distribution=torch.zeros(V, 1, H), noise_magnitudes=torch.zeros(V, 1, N))
        amps_t = torch.zeros(V, H)
        noise_t = self.controls.noise_magnitudes.view(V, N)
        f0_2d = self.controls.f0_hz.numpy()                       # (V, 1)
        amp_2d = self.controls.amplitude.numpy()
        dist = self.controls.harmonic_distribution.numpy()[:, 0]  # (V, H)
        self.f0, self.amp, self.dist, self.noise, self.amps = f0_2d[:, 0], amp_2d[:, 0], dist, noise_t.numpy(), \
            amps_t.numpy()
        self.rows = [None]
        for a in range(1, V + 1):
            r = _Rows()
            r.f0_2d, r.amp_2d, r.amp, r.dist = f0_2d[:a], amp_2d[:a], amp_2d[:a, 0], dist[:a]
            r.noise_t, r.noise, r.amps = noise_t[:a], noise_t.numpy()[:a], amps_t.numpy()[:a]
            self.rows.append(r)

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
        f32 = np.float32
        with torch.no_grad():
            self.band_map = noise_band_map(N, model_sample_rate, sample_rate)         # (N, N_dev) float64
            n_dev = self.band_map.shape[1]
            irs = dsp.noise_impulse_responses(torch.eye(n_dev, dtype=torch.float64))  # (N_dev, ir)
            self.ir_size = ir_size = irs.shape[-1]
            self.tail_size = tail = ir_size - 1
            conv_len = hop + ir_size - 1
            self.n_fft = n_fft = 1 << (conv_len - 1).bit_length()
            n_bins = n_fft // 2 + 1
            spectrum = self.band_map.to(torch.complex128) @ torch.fft.rfft(irs, n=n_fft)   # (N, bins)
            self._band_to_spectrum = torch.view_as_real(spectrum).reshape(N, 2 * n_bins).float().contiguous()
            generator = torch.Generator().manual_seed(int(seed))
            self.noise_frames = T = int(noise_frames)
            self.noise_table = torch.rand(T, hop, generator=generator) * 2.0 - 1.0      # (T, hop)
            self._noise_spectra = torch.fft.rfft(self.noise_table, n=n_fft)            # (T, bins) complex64
            self._noise_spectra_np = self._noise_spectra.numpy()
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
            self._ramp = (np.arange(hop, dtype=f32) / f32(hop)).astype(f32)
            self._hnum = np.arange(1, H + 1, dtype=f32)
            self._hnum_t = torch.from_numpy(self._hnum)
            # Full-size buffers, and views of their first a rows for a = 1..V.
            df, f0max, hsum = np.zeros((V, 1), f32), np.zeros((V, 1), f32), np.zeros((V, 1), f32)
            f0s, ph_a, ph_b = np.zeros((V, hop), f32), np.zeros((V, hop)), np.zeros((V, hop))
            ph32_t, angles = torch.zeros(V, hop, 1), torch.zeros(V, hop, H)
            tmp_h, mask = np.zeros((V, H), f32), np.zeros((V, H), bool)
            amps2, both = torch.zeros(V, 2, H), torch.zeros(V, 2, hop)
            ir_spec_real = torch.zeros(V, 2 * n_bins)
            nspec, prod = torch.zeros(V, n_bins, dtype=torch.complex64), torch.zeros(V, n_bins, dtype=torch.complex64)
            filt = torch.zeros(V, n_fft)
            self._rows = [None]
            for a in range(1, V + 1):
                r = _Rows()
                r.df, r.f0max, r.hsum = df[:a], f0max[:a], hsum[:a]
                r.f0s, r.ph_a, r.ph_b = f0s[:a], ph_a[:a], ph_b[:a]
                r.ph_b_t, r.ph_last = torch.from_numpy(ph_b[:a]), ph_b[:a, -1]
                r.phase, r.phase_2d, r.tail = self._phase[:a], self._phase[:a, None], self._tail[:a]
                r.ph32_t, r.ph32 = ph32_t[:a], ph32_t.numpy()[:a, :, 0]
                r.angles, r.angles_t = angles[:a], angles[:a].transpose(1, 2)
                r.tmp_h, r.mask = tmp_h[:a], mask[:a]
                r.amps2, r.a0, r.a1 = amps2[:a], amps2.numpy()[:a, 0], amps2.numpy()[:a, 1]
                r.both, r.both0, r.both1 = both[:a], both.numpy()[:a, 0], both.numpy()[:a, 1]
                r.ir_spec_real = ir_spec_real[:a]
                r.ir_spec = torch.view_as_complex(ir_spec_real[:a].view(a, n_bins, 2))
                r.nspec, r.nspec_np, r.prod = nspec[:a], nspec.numpy()[:a], prod[:a]
                r.filt = filt[:a]
                r.filt_head, r.filt_hop = filt.numpy()[:a, :tail], filt.numpy()[:a, :hop]
                r.filt_tail = filt.numpy()[:a, hop:hop + tail]
                r.noise_index = self._noise_index_np[:a]
                self._rows.append(r)
        self._raw: torch.Tensor | None = None
        self._out: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ controls
    def set_controls(self, raw: torch.Tensor, amp_gain: np.ndarray, noise_gain: np.ndarray,
                     rows: int | None = None) -> None:
        """raw (V, 1 + H + N) decoder outputs -> ``cur`` (dsp.raw_to_controls at the model's rate), with the
        amplitude scaled by amp_gain (V,) and the noise magnitudes by noise_gain (V,). ``raw`` is overwritten.
        ``cur.f0`` must hold this frame's f0 already."""
        rows = self.n_voices if rows is None else rows
        if rows <= 0:
            return
        if raw is not self._raw:
            H = self.n_harmonics
            self._raw, raw_np = raw, raw.numpy()
            self._raw_rows = [None] + [(raw[:a], raw_np[:a], raw_np[:a, 0], raw_np[:a, 1:1 + H],
                                        raw_np[:a, 1 + H:]) for a in range(1, self.n_voices + 1)]
        raw_t, raw_np, raw_amp, raw_h, raw_n = self._raw_rows[rows]
        cur, r = self.cur.rows[rows], self._rows[rows]
        raw_n += self.noise_bias
        raw_t.sigmoid_()
        raw_t.pow_(math.log(10.0))
        raw_np *= 2.0
        raw_np += 1e-7
        np.multiply(raw_amp, amp_gain[:rows], out=cur.amp)
        np.multiply(cur.f0_2d, self._hnum, out=r.tmp_h)
        np.less(r.tmp_h, self.model_sample_rate / 2.0, out=r.mask)
        np.multiply(raw_h, r.mask, out=cur.dist)
        np.add.reduce(cur.dist, axis=1, keepdims=True, out=r.hsum)
        np.maximum(r.hsum, 1e-7, out=r.hsum)
        cur.dist /= r.hsum
        np.multiply(raw_n, noise_gain[:rows, None], out=cur.noise)
        np.multiply(cur.dist, cur.amp_2d, out=cur.amps)

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
                self._out, out_np = out, out.numpy()
                self._out_rows = [None] + [out_np[:a] for a in range(1, self.n_voices + 1)]
            self._render(self._out_rows[rows], self.cur.rows[rows], self.last.rows[rows], self._rows[rows])
        self.interval += 1
        self._noise_index_np += 1
        np.remainder(self._noise_index_np, self.noise_frames, out=self._noise_index_np)
        self.cur, self.last = self.last, self.cur
        self.state.last = self.last.controls

    def _render(self, out, cur, last, r) -> None:
        # Harmonic part (dsp.render_harmonic for one frame): f0 ramp, phase in float64, sines, two mat-vecs.
        np.subtract(cur.f0_2d, last.f0_2d, out=r.df)
        np.multiply(r.df, self._ramp, out=r.f0s)
        r.f0s += last.f0_2d
        np.divide(r.f0s, self.sample_rate, out=r.ph_a, dtype=np.float64)
        np.add.accumulate(r.ph_a, axis=1, out=r.ph_b)
        r.ph_b += r.phase_2d
        r.ph_b_t.frac_()                        # phase >= 0, so frac == remainder(., 1)
        r.phase[:] = r.ph_last
        np.copyto(r.ph32, r.ph_b, casting="same_kind")
        r.ph32 *= np.float32(2.0 * math.pi)
        torch.mul(r.ph32_t, self._hnum_t, out=r.angles)
        r.angles.sin_()
        np.maximum(last.f0_2d, cur.f0_2d, out=r.f0max)
        np.multiply(r.f0max, self._hnum, out=r.tmp_h)
        np.less(r.tmp_h, self.sample_rate / 2.0, out=r.mask)
        np.multiply(last.amps, r.mask, out=r.a0)
        np.multiply(cur.amps, r.mask, out=r.a1)
        r.a1 -= r.a0
        torch.bmm(r.amps2, r.angles_t, out=r.both)
        np.multiply(r.both1, self._ramp, out=out)
        out += r.both0
        # Filtered noise (dsp.render_noise for one frame), overlap-added with the tail.
        torch.mm(cur.noise_t, self._band_to_spectrum, out=r.ir_spec_real)
        np.take(self._noise_spectra_np, r.noise_index, axis=0, out=r.nspec_np)
        torch.mul(r.nspec, r.ir_spec, out=r.prod)
        torch.fft.irfft(r.prod, n=self.n_fft, out=r.filt)
        r.filt_head += r.tail
        out += r.filt_hop
        r.tail[:] = r.filt_tail
