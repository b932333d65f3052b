"""A small learnt sequence model of note expression, to compare with the parametric articulation
(:mod:`training.expression`): a GRU over note-state features, one step per control frame, predicting the
loudness (dB relative to the note's level) and the pitch deviation (cents from the note) of that frame.

Trained on the notes :func:`training.expression.segment_notes` finds in the corpus (the same segmentation the
parametric fit uses), one note per sequence from a zero state, causal by construction (a unidirectional GRU
fed only what a player gives). The features of one frame (:func:`frame_features`) are what a voice knows:
time since its note-on, whether the key is held and time since the note-off, the note's pitch, the interval
from the previous note and whether the note was entered legato. Velocity is not one: the articulation's
calibrated velocity -> level map sets the note level, the GRU the shape relative to it. In the corpus a
note's "note-off" is where its release starts (``Note.release_start``); a note followed by another without a
release has no off frames. The GRU steps once per ``stride`` control frames (its output held between).

Torch is used only to train (:func:`train_gru`); :class:`NumpyGru` steps the trained weights per voice
without torch (preallocated state per voice), as a live engine would. Times in ms, levels in dB.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from training.expression import ACTIVE_RANGE_DB, segment_notes
from training.features import hz_to_midi

__all__ = ["FEATURES", "frame_features", "note_sequences", "GruWeights", "train_gru", "NumpyGru",
           "RELEASE_FRAMES_MS", "HELD_FRAMES_MS"]

FEATURES = ("on_fast", "on_mid", "on_slow", "held", "off_fast", "off_mid", "off_slow", "pitch", "interval",
            "legato")
HELD_FRAMES_MS = 2500.0        # a sequence keeps at most this much of a note's held part
RELEASE_FRAMES_MS = 1000.0     # and this much of its release
LOUDNESS_SCALE_DB = 10.0       # network outputs are scaled by these
CENTS_SCALE = 50.0
FLOOR_REL_DB = -60.0           # targets are clipped here (the engine's floor)


def frame_features(out: np.ndarray, t_on_ms: float, t_off_ms: float, midi: float, interval_semitones: float,
                   legato: bool) -> np.ndarray:
    """Write one frame's features into ``out`` (len(FEATURES)) and return it. ``t_off_ms`` < 0 while the key
    is held. Saturating time codes: the network sees how far into the attack / release it is on three scales.
    No velocity: the level comes from the calibrated velocity -> level map, the GRU gives the shape relative to
    it (so velocity stays monotonic in loudness by construction)."""
    out[0] = 1.0 - math.exp(-t_on_ms / 50.0)
    out[1] = 1.0 - math.exp(-t_on_ms / 300.0)
    out[2] = 1.0 - math.exp(-t_on_ms / 1500.0)
    held = t_off_ms < 0.0
    out[3] = 1.0 if held else 0.0
    out[4] = 0.0 if held else 1.0 - math.exp(-t_off_ms / 50.0)
    out[5] = 0.0 if held else 1.0 - math.exp(-t_off_ms / 300.0)
    out[6] = 0.0 if held else 1.0 - math.exp(-t_off_ms / 1000.0)
    out[7] = (midi - 60.0) / 24.0
    out[8] = max(min(interval_semitones / 12.0, 2.0), -2.0)
    out[9] = 1.0 if legato else 0.0
    return out


@dataclass
class Sequences:
    """Padded note sequences: features (N, T, F), targets (N, T, 2) (loudness rel dB, cents), masks (N, T, 2)."""

    features: np.ndarray
    targets: np.ndarray
    masks: np.ndarray
    stride: int = 1            # control frames per step
    release_horizon_ms: float = 0.0    # the longest time after a note-off any sequence shows


def note_sequences(files: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], frame_ms: float,
                   stride: int = 4) -> Sequences:
    """One sequence per segmented note of every file (f0_hz, voiced, loudness_db): its held frames (at most
    HELD_FRAMES_MS) and, where it ends in a release, up to RELEASE_FRAMES_MS past the release start (never into
    the next note). One step per ``stride`` frames (the GRU steps at that rate and its output is held between
    steps): the features at the window's first frame, the targets the window's means."""
    rows = []
    held_max = int(HELD_FRAMES_MS / frame_ms)
    release_max = int(RELEASE_FRAMES_MS / frame_ms)
    for f0, voiced, ld in files:
        f0 = np.asarray(f0, np.float64)
        ld = np.asarray(ld, np.float64)
        voiced = np.asarray(voiced, bool)
        notes = segment_notes(f0, voiced, ld, frame_ms)
        for k, note in enumerate(notes):
            next_start = notes[k + 1].start if k + 1 < len(notes) else len(f0)
            held_stop = note.stop if note.release_start is None else note.release_start
            if held_stop - note.start > held_max:           # a long note cut: no release frames then
                held_stop = stop = note.start + held_max
            elif note.release_start is not None:
                stop = min(note.release_start + release_max, next_start, len(f0))
            else:
                stop = held_stop
            n = (stop - note.start) // stride
            if n < 2:
                continue
            interval = 0.0 if note.previous_midi is None else note.midi - note.previous_midi
            frames = note.start + np.arange(n * stride).reshape(n, stride)
            x = np.zeros((n, len(FEATURES)), np.float32)
            for j in range(n):
                frame = int(frames[j, 0])
                t_on = (frame - note.start + 1) * frame_ms
                t_off = -1.0 if frame < held_stop else (frame - held_stop + 1) * frame_ms
                frame_features(x[j], t_on, t_off, note.midi, interval, not note.fresh)
            # below the file's active range is silence: the floor (the measured loudness there is the
            # recording's noise, some 40 dB under the notes, not where a release is heading)
            silent = ld[frames] < ld.max() - ACTIVE_RANGE_DB
            loud = np.clip(np.where(silent, -np.inf, ld[frames] - note.level_db), FLOOR_REL_DB, 20.0).mean(axis=1)
            f = f0[frames]
            cents = 100.0 * (hz_to_midi(np.maximum(f, 1e-3)) - note.midi)
            ok = voiced[frames] & np.isfinite(f) & (f > 0) & (frames < held_stop) & (np.abs(cents) < 300.0)
            count = ok.sum(axis=1)
            cents_mean = np.where(count > 0, np.where(ok, cents, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)
            y = np.stack([loud, cents_mean], axis=1).astype(np.float32)
            m = np.stack([np.ones(n), (count > 0).astype(float)], axis=1).astype(np.float32)
            rows.append((x, y, m))
    if not rows:
        return Sequences(np.zeros((0, 1, len(FEATURES)), np.float32), np.zeros((0, 1, 2), np.float32),
                         np.zeros((0, 1, 2), np.float32), stride)
    t_max = max(len(x) for x, _, _ in rows)
    feats = np.zeros((len(rows), t_max, len(FEATURES)), np.float32)
    targets = np.zeros((len(rows), t_max, 2), np.float32)
    masks = np.zeros((len(rows), t_max, 2), np.float32)
    for i, (x, y, m) in enumerate(rows):
        feats[i, :len(x)], targets[i, :len(x)], masks[i, :len(x)] = x, y, m
    off = feats[..., 6][(feats[..., 3] == 0.0) & (masks[..., 0] > 0)]       # off_slow = 1 - exp(-t / 1000)
    horizon_ms = float(-1000.0 * np.log1p(-min(float(off.max()), 0.999999))) if off.size else 0.0
    return Sequences(feats, targets, masks, stride, horizon_ms)


@dataclass(frozen=True)
class GruWeights:
    """A trained GRU (PyTorch's gate layout: reset, update, new) and its linear head, as NumPy arrays."""

    w_ih: np.ndarray       # (3H, F)
    w_hh: np.ndarray       # (3H, H)
    b_ih: np.ndarray       # (3H,)
    b_hh: np.ndarray       # (3H,)
    w_out: np.ndarray      # (2, H)
    b_out: np.ndarray      # (2,)
    train_seconds: float = 0.0
    train_l1_db: float = float("nan")      # loudness L1 on the training notes
    held_out_l1_db: float = float("nan")   # on the held-out notes (every 5th)
    notes: int = 0
    stride: int = 1                        # control frames per step (the output is held between steps)
    epochs: int = 0
    release_horizon_ms: float = 0.0        # the longest time after a note-off the training notes showed

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]


def train_gru(seqs: Sequences, hidden: int = 24, max_seconds: float = 45.0, max_epochs: int = 400,
              seed: int = 0, log=print) -> GruWeights:
    """Fit a GRU (``hidden`` units) + linear head on the sequences: L1 on the loudness (dB; the frames after
    note-offs weighted as a group as much as the rest) and on the cents (scaled), masked; full batch, Adam, stopped at ``max_seconds`` or ``max_epochs``. Every 5th note is held
    out (its L1 is reported); the weights of the best held-out epoch are kept."""
    import torch

    torch.manual_seed(seed)
    n = seqs.features.shape[0]
    if n == 0:
        raise ValueError("no notes to train the expression GRU on")
    held = np.arange(n) % 5 == 4 if n >= 10 else np.zeros(n, bool)
    x = torch.from_numpy(seqs.features)
    y = torch.from_numpy(seqs.targets)
    m = torch.from_numpy(seqs.masks)
    scale = torch.tensor([LOUDNESS_SCALE_DB, CENTS_SCALE])
    gru = torch.nn.GRU(x.shape[-1], hidden, batch_first=True)
    head = torch.nn.Linear(hidden, 2)
    params = list(gru.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    train_idx = torch.from_numpy(np.flatnonzero(~held))
    test_idx = torch.from_numpy(np.flatnonzero(held))

    release = (x[..., 3] == 0.0).float()                       # off frames (padding has no mask)

    def losses(index):
        out = head(gru(x[index])[0]) * scale
        err = (out - y[index]).abs() * m[index]
        per = err.sum(dim=(0, 1)) / m[index].sum(dim=(0, 1)).clamp(min=1.0)
        rel = release[index] * m[index][..., 0]
        release_l1 = (err[..., 0] * rel).sum() / rel.sum().clamp(min=1.0)
        return per, release_l1                  # (loudness L1 dB, cents L1), loudness L1 after note-offs

    t0 = time.perf_counter()
    best = (math.inf, None, math.nan, math.nan)
    epoch = 0
    while epoch < max_epochs and time.perf_counter() - t0 < max_seconds:
        opt.zero_grad()
        per, release_l1 = losses(train_idx)
        # releases are few (a note ends in silence only at a phrase's end): their error counts as much as
        # the held frames' together
        loss = (per[0] + release_l1) / LOUDNESS_SCALE_DB + 0.5 * per[1] / CENTS_SCALE
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        epoch += 1
        if epoch % 10 == 0 or epoch == max_epochs:
            with torch.no_grad():
                test = losses(test_idx)[0][0].item() if len(test_idx) else per[0].item()
            if test < best[0]:
                state = [p.detach().clone() for p in params]
                best = (test, state, per[0].item(), test)
    seconds = time.perf_counter() - t0
    if best[1] is not None:
        with torch.no_grad():
            for p, s in zip(params, best[1]):
                p.copy_(s)
    log(f"expression GRU: {n} notes, {hidden} units, {epoch} epochs in {seconds:.1f} s; loudness L1 "
        f"{best[2]:.2f} dB train, {best[3]:.2f} dB held-out notes")
    g = lambda t: t.detach().numpy().astype(np.float64).copy()      # noqa: E731
    return GruWeights(g(gru.weight_ih_l0), g(gru.weight_hh_l0), g(gru.bias_ih_l0), g(gru.bias_hh_l0),
                      g(head.weight), g(head.bias), seconds, best[2], best[3], n, seqs.stride, epoch,
                      seqs.release_horizon_ms)


class NumpyGru:
    """The trained GRU stepped per voice without torch: state (n_voices, H) preallocated; :meth:`step` writes
    voice ``i``'s next (loudness rel dB, cents) from one frame's features, allocating nothing but scalars."""

    def __init__(self, weights: GruWeights, n_voices: int):
        self.w = weights
        h = weights.hidden
        self.state = np.zeros((n_voices, h))
        self._gi = np.zeros(3 * h)
        self._gh = np.zeros(3 * h)
        self._r = np.zeros(h)
        self._z = np.zeros(h)
        self._n = np.zeros(h)
        self._out = np.zeros(2)

    def reset(self, voice: int) -> None:
        self.state[voice].fill(0.0)

    def step(self, voice: int, features: np.ndarray) -> tuple[float, float]:
        w, h = self.w, self.state[voice]
        H = w.hidden
        np.dot(w.w_ih, features, out=self._gi)
        self._gi += w.b_ih
        np.dot(w.w_hh, h, out=self._gh)
        self._gh += w.b_hh
        r, z, nn = self._r, self._z, self._n
        np.add(self._gi[:H], self._gh[:H], out=r)
        np.negative(r, out=r)
        np.exp(r, out=r)
        r += 1.0
        np.reciprocal(r, out=r)                 # sigmoid
        np.add(self._gi[H:2 * H], self._gh[H:2 * H], out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        np.multiply(r, self._gh[2 * H:], out=nn)
        nn += self._gi[2 * H:]
        np.tanh(nn, out=nn)
        # h = (1 - z) * n + z * h = n + z * (h - n)
        h -= nn
        h *= z
        h += nn
        np.dot(w.w_out, h, out=self._out)
        self._out += w.b_out
        return float(self._out[0] * LOUDNESS_SCALE_DB), float(self._out[1] * CENTS_SCALE)
