"""The engine's decoder hot path: one decoder frame for V voices (:class:`DecoderStep`), on buffers allocated once.

It computes what :class:`instrument.model.networks.Decoder` computes (tests check it to float precision),
rearranged for one frame at a time in a few numba kernels (compiled once per machine, cached; fastmath off
except reassociation inside the matmuls' dot products): the decoder's input part and its per-frame part are
one call each, with LayerNorm, LeakyReLU and the GRU cell fused between the matmuls. The reference is the
module; this is the fast path, and a decoder of another structure runs through the module.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import nn

from instrument.model import dsp
from instrument.model.networks import Decoder

__all__ = ["DecoderStep", "UnsupportedDecoder"]


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


def _w(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().float().contiguous()


class DecoderStep:
    """One decoder frame for V voices, equal to :meth:`Decoder.forward` on that frame.

    Write the scaled inputs into ``inputs`` (V, 2): column 0 ``(midi - f0_center_midi) / f0_scale_midi``,
    column 1 ``(dB - loudness_center_db) / loudness_scale_db``; z (shared by all voices) with :meth:`set_z`;
    a voice's own value of some latents (MPE: a note's CC 74 or pressure) with :meth:`set_voice_z`.
    :meth:`run` updates ``gru_state`` (V, G) in place and returns ``raw`` (V, 1 + H + N), a buffer that the
    next call overwrites.

    Exact rearrangements of the fused path: z only enters through the GRU's input projection (a linear map
    of z_mlp(z)), so its contribution is folded into the GRU's input bias whenever z changes (one bias row per
    voice: the shared one, or the voice's own where it has its own latents); and when no
    voice's (f0, loudness) changed since the previous frame (sustained notes, idle voices) the input MLPs and
    input projections are reused. Decoders of another structure run through the module (slower).
    The matmuls take voices four at a time, so a voice's result can differ in the last bits with the number
    of voices computed (as with BLAS), never by more than float rounding.
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
            # per-voice latents: NaN = the shared value; a voice with any finite entry has its own GRU input bias
            self.voice_z = np.full((V, c.latent_dim), np.nan, dtype=np.float32)
            self._own = np.zeros(V, dtype=np.bool_)
            self._voice_dirty = np.zeros(V, dtype=np.bool_)
            self._any_dirty = False
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

    def set_voice_z(self, voice: int, index: int, value: float) -> None:
        """Voice ``voice``'s own value of latent ``index`` (NaN: back to the shared value); applied at the next
        :meth:`run` (one z MLP row for that voice). Allocates nothing."""
        row = self.voice_z[voice]
        old = row[index]
        value = np.float32(value)
        if old == value or (old != old and value != value):
            return
        row[index] = value
        self._voice_dirty[voice] = True
        self._any_dirty = True

    def clear_voice_z(self) -> None:
        """Every voice back to the shared latents."""
        for v in range(self.n_voices):
            if self._own[v] or self._voice_dirty[v]:
                self.voice_z[v].fill(np.nan)
                self._voice_dirty[v] = True
                self._any_dirty = True

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
        self._slope, self._eps = float(slopes.pop()), float(norms[0].eps)
        f0_b, ld_b = branches[0], branches[1]
        f32 = lambda t: _w(t).numpy()                     # noqa: E731  float32, contiguous, owned
        # Input MLPs of f0 and loudness side by side: layer 1 (V, 2) -> (V, 2h), layer 2 per branch.
        w1 = torch.zeros(2, 2 * h)
        w1[0, :h] = f0_b[0][0].weight[:, 0]
        w1[1, h:] = ld_b[0][0].weight[:, 0]
        self._w1 = f32(w1)
        self._b1 = f32(torch.cat([f0_b[0][0].bias, ld_b[0][0].bias]))
        self._g1 = f32(torch.cat([f0_b[1][0].weight, ld_b[1][0].weight]))
        self._be1 = f32(torch.cat([f0_b[1][0].bias, ld_b[1][0].bias]))
        self._w2 = f32(torch.stack([f0_b[0][1].weight, ld_b[0][1].weight]))             # (2, h, h) (out, in)
        self._b2 = f32(torch.stack([f0_b[0][1].bias, ld_b[0][1].bias]))                 # (2, h)
        self._g2 = f32(torch.stack([f0_b[1][1].weight, ld_b[1][1].weight]))
        self._be2 = f32(torch.stack([f0_b[1][1].bias, ld_b[1][1].bias]))
        # GRU: input projection split into the (f0, loudness) part and the z part (folded into the bias).
        w_ih = gru.weight_ih_l0                                                           # (3G, 3h)
        self._w_ih_fl = f32(w_ih[:, :2 * h])                                             # (3G, 2h)
        self._w_ih_z = f32(w_ih[:, 2 * h:])                                              # (3G, h)
        self._b_ih = f32(gru.bias_ih_l0)
        self._b_ih_z_np = self._b_ih.copy()               # GRU input bias with z's contribution
        self._bias_v = np.zeros((V, 3 * G), np.float32)   # per voice: that bias (its own z's where it has one)
        self._zrow = np.zeros((1, c.latent_dim), np.float32)   # a voice's z (scratch)
        z_b = branches[2]                                 # z_mlp, run by a kernel when z changes (no torch)
        self._zw = (f32(z_b[0][0].weight), f32(z_b[0][0].bias), f32(z_b[1][0].weight), f32(z_b[1][0].bias),
                    f32(z_b[0][1].weight), f32(z_b[0][1].bias), f32(z_b[1][1].weight), f32(z_b[1][1].bias))
        self._z2 = self.z_np.reshape(1, -1)               # a view of z as one row
        self._zt = (np.zeros((1, h), np.float32), np.zeros((1, h), np.float32), np.zeros((1, 3 * G), np.float32))
        self._z_shifts = 0                                # cached rows shifted by z changes since a recompute
        self._w_hh, self._b_hh = f32(gru.weight_hh_l0), f32(gru.bias_hh_l0)
        # out_mlp layer 1 on [gru_out, f0_h, loudness_h], split into the GRU part and the input part.
        wo1 = out_lin[0].weight
        self._wo1_g, self._wo1_fl, self._bo1 = f32(wo1[:, :G]), f32(wo1[:, G:]), f32(out_lin[0].bias)
        self._no1 = (f32(out_norm[0].weight), f32(out_norm[0].bias))
        self._wo2, self._bo2 = f32(out_lin[1].weight), f32(out_lin[1].bias)
        self._no2 = (f32(out_norm[1].weight), f32(out_norm[1].bias))
        self._wout, self._bout = f32(dec.out.weight), f32(dec.out.bias)
        # Buffers.
        self._x1 = np.zeros((V, 2 * h), np.float32)       # input layer 1 (both branches)
        self._x2 = np.zeros((2, V, h), np.float32)        # input layer 2, per branch
        self._fl = np.zeros((V, 2 * h), np.float32)       # input MLP outputs [f0_h, loudness_h]
        self._gi = np.zeros((V, 3 * G), np.float32)       # GRU input projection (+ bias), cached
        self._ofl = np.zeros((V, h), np.float32)          # out_mlp layer-1 input part (+ bias), cached
        self._gh = np.zeros((V, 3 * G), np.float32)       # GRU recurrent projection
        self._o1, self._o2 = np.zeros((V, h), np.float32), np.zeros((V, h), np.float32)
        self._raw_np = self.raw.numpy()
        self._cached_rows = 0                             # rows of gi / ofl valid for self._previous
        self._compile()

    def _compile(self) -> None:
        """Compile (or load from numba's cache) the kernels for these buffers now, not in the first callback."""
        _z_step(self._z2, *self._zw, self._w_ih_z, self._b_ih, *self._zt, self._b_ih_z_np, self._gi, 0,
                self._eps, self._slope, self._bias_v, self._own)
        _voice_z_step(self.z_np, self.voice_z, self._zrow, *self._zw, self._w_ih_z, self._b_ih, *self._zt, self._gi,
                      0, self._eps, self._slope, self._bias_v, self._own, self._voice_dirty)
        _rows_equal(self.inputs_np, self._previous, 0)
        _input_step(self.inputs_np, self._w1, self._b1, self._g1, self._be1, self._w2, self._b2, self._g2, self._be2,
                    self._w_ih_fl, self._bias_v, self._wo1_fl, self._bo1, self._x1, self._x2, self._fl, self._gi,
                    self._ofl, self._eps, self._slope, 0)
        state = np.zeros((1, self.config.gru_size), np.float32)
        _held_step(state, self._gi, self._gh, self._ofl, self._o1, self._o2, self._raw_np, self._w_hh, self._b_hh,
                   self._wo1_g, self._no1[0], self._no1[1], self._wo2, self._bo2, self._no2[0], self._no2[1],
                   self._wout, self._bout, self._eps, self._slope, 0)

    def run(self, gru_state: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """One frame for voices ``0 .. rows-1`` (default all): gru_state (V, G), contiguous, updated in
        place for those rows; returns ``raw`` (V, outputs), valid for those rows."""
        rows = self.n_voices if rows is None else rows
        if rows <= 0:
            return self.raw
        if not self.fused:
            return self._run_module(gru_state)
        eps, slope = self._eps, self._slope
        if self._z_changed:
            # New GRU input bias; the cached input projections of unchanged voices move by the bias change
            # instead of being recomputed (a latent ramp changes z every frame). Recomputed now and then so
            # rounding cannot accumulate.
            self._z_shifts += 1
            if self._z_shifts >= 256:
                self._cached_rows = self._z_shifts = 0
            _z_step(self._z2, *self._zw, self._w_ih_z, self._b_ih, *self._zt, self._b_ih_z_np, self._gi,
                    self._cached_rows, eps, slope, self._bias_v, self._own)
            self._z_changed = False
            if self._own.any():                           # voices with their own latents follow the shared rest
                np.logical_or(self._voice_dirty, self._own, out=self._voice_dirty)
                self._any_dirty = True
        if self._any_dirty:
            self._z_shifts += 1
            _voice_z_step(self.z_np, self.voice_z, self._zrow, *self._zw, self._w_ih_z, self._b_ih, *self._zt,
                          self._gi, self._cached_rows, eps, slope, self._bias_v, self._own, self._voice_dirty)
            self._any_dirty = False
        if rows > self._cached_rows or not _rows_equal(self.inputs_np, self._previous, rows):
            self._cached_rows = rows
            self._previous[:rows] = self.inputs_np[:rows]
            _input_step(self.inputs_np, self._w1, self._b1, self._g1, self._be1, self._w2, self._b2, self._g2,
                        self._be2, self._w_ih_fl, self._bias_v, self._wo1_fl, self._bo1, self._x1, self._x2,
                        self._fl, self._gi, self._ofl, eps, slope, rows)
        _held_step(gru_state.numpy(), self._gi, self._gh, self._ofl, self._o1, self._o2, self._raw_np, self._w_hh,
                   self._b_hh, self._wo1_g, self._no1[0], self._no1[1], self._wo2, self._bo2, self._no2[0],
                   self._no2[1], self._wout, self._bout, eps, slope, rows)
        return self.raw

    def _run_module(self, gru_state: torch.Tensor) -> torch.Tensor:
        c = self.config
        V = self.n_voices
        midi = self.inputs[:, 0] * c.f0_scale_midi + c.f0_center_midi
        loudness = self.inputs[:, 1] * c.loudness_scale_db + c.loudness_center_db
        z = self.z.expand(V, -1).clone()
        own = torch.from_numpy(self.voice_z)
        z = torch.where(torch.isnan(own), z, own)
        self._own[:] = ~np.isnan(self.voice_z).all(axis=1)
        self._voice_dirty[:] = False
        self._any_dirty = False
        raw, h = self._decoder(dsp.midi_to_hz(midi).unsqueeze(1), loudness.unsqueeze(1),
                               z.unsqueeze(1), gru_state.unsqueeze(0))
        gru_state.copy_(h[0])
        self.raw.copy_(raw[:, 0])
        return self.raw



# ---------------------------------------------------------------------------------------------- numba kernels
# Compiled once per machine (cache=True); fastmath stays off except reassociation in _matmul_acc.
@njit(cache=True, fastmath={"reassoc"})
def _matmul_acc(x, x_col, w, out, out_col, rows):
    """out[i, out_col + j] += sum_k x[i, x_col + k] w[j, k] for rows i < rows; w (N, K) is nn.Linear's layout.

    Each sum is a dot product over contiguous memory, vectorised (``reassoc`` lets LLVM split it into lanes:
    a different rounding order than BLAS, not a less accurate one); four rows share each weight row.
    """
    N, K = w.shape
    i0 = 0
    while i0 + 4 <= rows:
        x0, x1 = x[i0, x_col:x_col + K], x[i0 + 1, x_col:x_col + K]
        x2, x3 = x[i0 + 2, x_col:x_col + K], x[i0 + 3, x_col:x_col + K]
        for j in range(N):
            wj = w[j]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(K):
                wk = wj[k]
                a0 += x0[k] * wk
                a1 += x1[k] * wk
                a2 += x2[k] * wk
                a3 += x3[k] * wk
            out[i0, out_col + j] += a0
            out[i0 + 1, out_col + j] += a1
            out[i0 + 2, out_col + j] += a2
            out[i0 + 3, out_col + j] += a3
        i0 += 4
    for i in range(i0, rows):
        xi = x[i, x_col:x_col + K]
        for j in range(N):
            wj = w[j]
            a0 = np.float32(0.0)
            for k in range(K):
                a0 += xi[k] * wj[k]
            out[i, out_col + j] += a0


@njit(cache=True)
def _fill_rows(src, out, rows):
    """out[i] = src for i < rows (src (N,)), or out[i] = src[i] (src (rows, N))."""
    for i in range(rows):
        if src.ndim == 1:
            out[i, :] = src
        else:
            out[i, :] = src[i]


@njit(cache=True)
def _norm_act(x, col, width, g, b, eps, slope, out, out_col, rows):
    """LayerNorm (stats in float64) + affine + LeakyReLU of x[i, col:col+width] into out[i, out_col:...]."""
    for i in range(rows):
        mean = 0.0
        for j in range(width):
            mean += float(x[i, col + j])
        mean /= width
        var = 0.0
        for j in range(width):
            d = float(x[i, col + j]) - mean
            var += d * d
        rstd = 1.0 / math.sqrt(var / width + eps)
        for j in range(width):
            y = np.float32((float(x[i, col + j]) - mean) * rstd) * g[j] + b[j]
            out[i, out_col + j] = y if y >= 0 else y * slope


@njit(cache=True)
def _input_layer(inputs, w1, b1, g1, be1, eps, slope, out, rows):
    """The f0 and loudness MLPs' first layers (1 -> h each) with their LayerNorm and LeakyReLU: out (V, 2h)."""
    h2 = out.shape[1]
    h = h2 // 2
    for i in range(rows):
        for j in range(h2):
            out[i, j] = inputs[i, 0] * w1[0, j] + inputs[i, 1] * w1[1, j] + b1[j]
    _norm_act(out, 0, h, g1[:h], be1[:h], eps, slope, out, 0, rows)
    _norm_act(out, h, h, g1[h:], be1[h:], eps, slope, out, h, rows)


@njit(cache=True)
def _gru_update(gi, gh, state, rows):
    """PyTorch's GRU cell from the projections gi, gh (rows, 3G): r, z = sigmoid(gi + gh);
    n = tanh(gi_n + r * gh_n); h' = n + z * (h - n), in place on state."""
    G = state.shape[1]
    for i in range(rows):
        for j in range(G):
            r = np.float32(1.0 / (1.0 + math.exp(-float(gi[i, j] + gh[i, j]))))
            z = np.float32(1.0 / (1.0 + math.exp(-float(gi[i, G + j] + gh[i, G + j]))))
            n = np.float32(math.tanh(float(gi[i, 2 * G + j] + r * gh[i, 2 * G + j])))
            state[i, j] = n + z * (state[i, j] - n)


@njit(cache=True)
def _input_step(inputs, w1, b1, g1, be1, w2, b2, g2, be2, w_ih_fl, b_ih_z, wo1_fl, bo1, x1, x2, fl, gi, ofl, eps,
                slope, rows):
    """The decoder's input part (f0 and loudness MLPs, their GRU input projection and out_mlp layer-1 part)."""
    h = x2.shape[2]
    _input_layer(inputs, w1, b1, g1, be1, eps, slope, x1, rows)
    for k in range(2):
        _fill_rows(b2[k], x2[k], rows)
        _matmul_acc(x1, k * h, w2[k], x2[k], 0, rows)
        _norm_act(x2[k], 0, h, g2[k], be2[k], eps, slope, fl, k * h, rows)
    _fill_rows(b_ih_z, gi, rows)
    _matmul_acc(fl, 0, w_ih_fl, gi, 0, rows)
    _fill_rows(bo1, ofl, rows)
    _matmul_acc(fl, 0, wo1_fl, ofl, 0, rows)


@njit(cache=True)
def _held_step(state, gi, gh, ofl, o1, o2, raw, w_hh, b_hh, wo1_g, g1, be1, wo2, bo2, g2, be2, wout, bout, eps,
                slope, rows):
    """The decoder's per-frame part (GRU cell, out_mlp, output layer): state updated in place, raw written."""
    h = o1.shape[1]
    _fill_rows(b_hh, gh, rows)
    _matmul_acc(state, 0, w_hh, gh, 0, rows)
    _gru_update(gi, gh, state, rows)
    _fill_rows(ofl, o1, rows)
    _matmul_acc(state, 0, wo1_g, o1, 0, rows)
    _norm_act(o1, 0, h, g1, be1, eps, slope, o1, 0, rows)
    _fill_rows(bo2, o2, rows)
    _matmul_acc(o1, 0, wo2, o2, 0, rows)
    _norm_act(o2, 0, h, g2, be2, eps, slope, o2, 0, rows)
    _fill_rows(bout, raw, rows)
    _matmul_acc(o2, 0, wout, raw, 0, rows)


@njit(cache=True)
def _z_bias(z, w1, b1, g1, be1, w2, b2, g2, be2, w_ih_z, b_ih, t1, t2, bias, eps, slope):
    """bias (1, 3G) = b_ih + w_ih_z @ z_mlp(z) for one z row (1, D); t1, t2: scratch rows."""
    h = t1.shape[1]
    _fill_rows(b1, t1, 1)
    _matmul_acc(z, 0, w1, t1, 0, 1)
    _norm_act(t1, 0, h, g1, be1, eps, slope, t1, 0, 1)
    _fill_rows(b2, t2, 1)
    _matmul_acc(t1, 0, w2, t2, 0, 1)
    _norm_act(t2, 0, h, g2, be2, eps, slope, t2, 0, 1)
    _fill_rows(b_ih, bias, 1)
    _matmul_acc(t2, 0, w_ih_z, bias, 0, 1)


@njit(cache=True)
def _z_step(z, w1, b1, g1, be1, w2, b2, g2, be2, w_ih_z, b_ih, t1, t2, bias, b_ih_z, gi, rows, eps, slope, bias_v,
            own):
    """The shared z (1, D) changed: b_ih_z = b_ih + w_ih_z @ z_mlp(z); the bias rows of voices without their
    own latents become it, and their cached GRU input projections gi[:rows] move by the change."""
    _z_bias(z, w1, b1, g1, be1, w2, b2, g2, be2, w_ih_z, b_ih, t1, t2, bias, eps, slope)
    for j in range(bias.shape[1]):
        b_ih_z[j] = bias[0, j]
    for i in range(bias_v.shape[0]):
        if own[i]:
            continue
        for j in range(bias.shape[1]):
            if i < rows:
                gi[i, j] += bias[0, j] - bias_v[i, j]
            bias_v[i, j] = bias[0, j]


@njit(cache=True)
def _voice_z_step(z_shared, voice_z, zrow, w1, b1, g1, be1, w2, b2, g2, be2, w_ih_z, b_ih, t1, t2, bias, gi, rows,
                  eps, slope, bias_v, own, dirty):
    """Voices marked ``dirty``: their z (the shared one, with their own finite entries of ``voice_z``) -> their
    bias row, and their cached GRU input projection moves by its change."""
    D = zrow.shape[1]
    for i in range(voice_z.shape[0]):
        if not dirty[i]:
            continue
        dirty[i] = False
        mine = False
        for d in range(D):
            x = voice_z[i, d]
            if x == x:
                zrow[0, d] = x
                mine = True
            else:
                zrow[0, d] = z_shared[d]
        own[i] = mine
        _z_bias(zrow, w1, b1, g1, be1, w2, b2, g2, be2, w_ih_z, b_ih, t1, t2, bias, eps, slope)
        for j in range(bias.shape[1]):
            if i < rows:
                gi[i, j] += bias[0, j] - bias_v[i, j]
            bias_v[i, j] = bias[0, j]


@njit(cache=True)
def _rows_equal(a, b, rows):
    for i in range(rows):
        for j in range(a.shape[1]):
            if a[i, j] != b[i, j]:
                return False
    return True
