"""Knobs found by intervention: directions in z-space, each moving one named descriptor, folded into the networks.

After training (issue 14): around the corpus centre ``c`` (mean posterior mean) and in units of each active
latent's corpus span ``s`` (5th..95th percentile), perturb each active latent, render held notes on a small grid
(pitches across the corpus's range x two loudness levels) and measure the descriptors, the rendered pitch and
the A-weighted loudness: a response matrix ``J`` (rows: descriptors in their ``DESCRIPTORS`` unit, loudness in
``LOUDNESS_UNIT_DB``, pitch in ``PITCH_UNIT_CENTS``; columns: active latents; change per corpus span).

For a set ``K`` of named descriptors (``KNOB_CANDIDATES``, in a fixed order) the knob directions are
``V = pinv([J_K; J_loudness; J_pitch])[:, :K]``: each moves its own descriptor by one unit and, to first
order, neither the other chosen descriptors nor loudness nor pitch (closed-form, in SeFa's spirit). The rest of
the active space (its orthogonal complement) and the inactive latents complete a basis and are not offered.

Each knob's range is the corpus's 5th..95th percentile of its coordinate (clipped so that no latent leaves the
corpus by more than ``MAX_SPANS``) in the middle 3/4 of the knob, the outer eighth on each side extrapolating;
where a full sweep moves pitch or loudness too much, the extrapolation shrinks, then the knob narrows inside the
corpus (``SHRINK_STEPS``). A knob is offered only if a real render (not the linear estimate) at knob 0, 0.5 and
1 passes `knob_passes`. The export runs the grid at the decoder inputs the engine will play (the calibrated
note levels), since a briefly trained model renders quieter than its input.

The basis is folded into the networks (`fold_networks`): ``z = c + A u`` with ``A = diag(s) [V N]``; the
decoder's first z layer becomes ``W A u + (W c + b)`` and the encoder's mean head ``A^-1 (mean - c)``, so the
model file's latents are the knob coordinates ``u`` and nothing that plays a model file changes. The encoder's
log-variance head is left as it was: it still describes the posterior in the unfolded coordinates (a
diagonal head cannot carry the rotated covariance). Only training and the activity analysis read it, and both
run before the fold; the basis is stored in the model file's metadata (``knob_basis``) to undo the fold.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from instrument.model import dsp
from instrument.model.bundle import CorpusInfo, LatentInfo
from instrument.model.offline import encode_means

from training.data import AUGMENTED_MARK
from training.descriptors import ACTIVE_KL_NATS, DESCRIPTORS, KNOB_PERCENTILES as PERCENTILES, describe

# Named descriptors a knob can be made for, in the order knobs are numbered (the same knob number means the
# same descriptor across retrains where the descriptors allow). Keys of training.export.DESCRIPTORS.
KNOB_CANDIDATES = ("centroid_octaves", "noise_ratio_db", "odd_even_db", "spread_octaves", "flatness_log10")
EXCLUSIVE = (frozenset({"noise_ratio_db", "flatness_log10"}),)     # flatness is nearly the noise ratio
PITCH_UNIT_CENTS = 5.0            # the invariance limits, as the units of the pitch and loudness rows
LOUDNESS_UNIT_DB = 1.5
PITCH_LIMIT_CENTS = 5.0           # a knob's full sweep must move pitch less than this ...
LOUDNESS_LIMIT_DB = 1.5           # ... and loudness less than this (per note, against knob 0.5)
SEPARATION = 3.0                  # own descriptor moved >= this many times what any other offered knob moves it
MIN_UNITS = 1.0                   # own descriptor moved by at least this many DESCRIPTORS units
EXTRAPOLATION = 1.0 / 8.0         # the outer eighth of the knob on each side lies beyond the corpus
CONSTRAINT_MIN_UNITS = 0.05       # a loudness / pitch row smaller than this (units per span) is no constraint
# Where a full sweep moves pitch or loudness too much: shrink the extrapolation, then the knob inside the corpus.
SHRINK_STEPS = ((EXTRAPOLATION, 1.0), (EXTRAPOLATION / 2, 1.0), (0.0, 1.0), (0.0, 0.7), (0.0, 0.5))
VERIFY_SETS = 3                   # candidate sets verified by rendering, best predicted first
MAX_SPANS = 1.0                   # a knob's corpus band keeps every active latent within this many corpus spans


# ---------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class NoteGrid:
    """Held reference notes: every pitch at every loudness, ``seconds`` long with a short attack."""

    pitches_hz: tuple[float, ...]
    loudness_db: tuple[float, ...]
    seconds: float = 1.0

    @property
    def notes(self) -> list[tuple[float, float]]:
        return [(p, l) for p in self.pitches_hz for l in self.loudness_db]


def note_grid(corpus: CorpusInfo, n_pitches: int = 3, seconds: float = 1.0,
              levels_db: tuple[float, ...] | None = None) -> NoteGrid:
    """Pitches at 15/50/85 % (log) of the corpus's f0 range; decoder loudness inputs ``levels_db`` (default: the
    corpus median and 8 dB below)."""
    lo, hi = corpus.f0_range_or_default_hz
    fractions = np.linspace(0.15, 0.85, n_pitches) if n_pitches > 1 else np.array([0.5])
    pitches = tuple(float(lo * (hi / lo) ** f) for f in fractions)
    if levels_db is None:
        ref = corpus.reference_loudness_db
        low = max(corpus.loudness_range_db[0], ref - 8.0)
        levels_db = (float(low), float(ref)) if low < ref - 1.0 else (float(ref),)
    return NoteGrid(pitches, tuple(float(x) for x in levels_db), seconds)


def _held_controls(grid: NoteGrid, hop_size: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    n = int(round(grid.seconds * sample_rate / hop_size)) + 1
    attack = max(2, min(n, int(0.05 * sample_rate / hop_size)))
    f0s, lds = [], []
    for pitch, loud in grid.notes:
        ld = np.full(n, loud, np.float32)
        ld[:attack] = np.linspace(-80.0, loud, attack)
        f0s.append(np.full(n, pitch, np.float32))
        lds.append(ld)
    return np.stack(f0s), np.stack(lds)


def rendered_pitch_cents(audio: np.ndarray, f0_hz: float, sample_rate: int, max_harmonic: int = 6) -> float:
    """Pitch of a steady tone against ``f0_hz`` in cents: the strongest of its first harmonics (each searched
    within +-50 cents) by parabolic interpolation of a zero-padded Hann spectrum, divided by its number."""
    n = len(audio)
    n_fft = 1 << int(math.ceil(math.log2(max(n, 2) * 4)))
    spec = np.abs(np.fft.rfft(audio * np.hanning(n), n_fft)) + 1e-20
    best = None
    for k in range(1, max_harmonic + 1):
        fk = k * f0_hz
        if fk * 2 ** (50 / 1200) >= 0.45 * sample_rate:
            break
        i0 = max(1, int(fk * 2 ** (-50 / 1200) * n_fft / sample_rate))
        i1 = min(len(spec) - 1, int(math.ceil(fk * 2 ** (50 / 1200) * n_fft / sample_rate)) + 1)
        i = i0 + int(np.argmax(spec[i0:i1]))
        if best is None or spec[i] > best[0]:
            best = (spec[i], i, k)
    if best is None:
        return 0.0
    _, i, k = best
    y0, y1, y2 = np.log(spec[i - 1: i + 2])
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
    return float(1200 * np.log2((i + shift) * sample_rate / n_fft / k / f0_hz))


@torch.inference_mode()
def measure_grid(decoder, grid: NoteGrid, zs: np.ndarray, seed: int = 7) -> list[list[dict]]:
    """Render every note of ``grid`` at every latent vector ``zs`` (Z, D) in one batch through the training
    render path (the same decoder and synth as `instrument.model.offline.render_parts` for notes under 512
    frames) and measure each: ``describe``'s descriptors plus ``pitch_cents`` (rendered vs nominal) and
    ``loudness_a_db`` (A-weighted, as the corpus was measured). Returns [z][note] -> dict."""
    from training.features import a_weighted_loudness_db

    c = decoder.config
    f0, ld = _held_controls(grid, c.hop_size, c.sample_rate)
    n_notes, n_frames = f0.shape
    zs = np.asarray(zs, np.float32).reshape(-1, c.latent_dim)
    n_z = zs.shape[0]
    f0_b = torch.as_tensor(np.tile(f0, (n_z, 1)))
    ld_b = torch.as_tensor(np.tile(ld, (n_z, 1)))
    z_b = torch.as_tensor(np.repeat(zs, n_notes, axis=0)).view(-1, 1, c.latent_dim).expand(-1, n_frames, -1)
    out: list[list[dict]] = []
    harmonic_parts, noise_parts, dists = [], [], []
    batch = 24
    generator = torch.Generator().manual_seed(seed)
    noise_src = torch.rand(1, (n_frames - 1) * c.hop_size, generator=generator) * 2.0 - 1.0
    for start in range(0, f0_b.shape[0], batch):
        sl = slice(start, start + batch)
        controls, _ = decoder.controls(f0_b[sl], ld_b[sl], z_b[sl])
        state = dsp.initial_state(controls.frame(0))
        b = controls.f0_hz.shape[0]
        harmonic, noise, _ = dsp.synthesize(controls.frames(1), noise_src.expand(b, -1), state, c.hop_size,
                                            c.sample_rate)
        harmonic_parts.append(harmonic.numpy())
        noise_parts.append(noise.numpy())
        dists.append(controls.harmonic_distribution[:, n_frames // 3:].numpy())
    harmonic = np.concatenate(harmonic_parts)
    noise = np.concatenate(noise_parts)
    dist = np.concatenate(dists)
    steady = slice(harmonic.shape[1] // 3, None)
    for zi in range(n_z):
        row = []
        for ni, (pitch, _loud) in enumerate(grid.notes):
            k = zi * n_notes + ni
            h, n = harmonic[k, steady], noise[k, steady]
            audio = h + n
            d = describe(audio, h, n, dist[k], c.sample_rate)
            lda = a_weighted_loudness_db(audio, c.sample_rate, c.hop_size, 2048)
            d["loudness_a_db"] = float(10 * np.log10(np.mean(10 ** (lda.astype(np.float64) / 10)) + 1e-30))
            d["pitch_cents"] = rendered_pitch_cents(audio, pitch, c.sample_rate)
            row.append(d)
        out.append(row)
    return out


def descriptor_units() -> dict[str, float]:
    """Every measured row and its unit: the DESCRIPTORS table's "one unit", loudness and pitch limits."""
    units = {k: unit for k, (_name, unit) in DESCRIPTORS.items() if k != "loudness_db"}
    units["loudness_a_db"] = LOUDNESS_UNIT_DB
    units["pitch_cents"] = PITCH_UNIT_CENTS
    return units


# ---------------------------------------------------------------------------------------------- corpus
def recorded_rows(values: np.ndarray, recorded: np.ndarray | None) -> np.ndarray:
    """The rows of ``values`` from the recordings (``recorded``), else all of them (no mask, or no recording)."""
    if recorded is None or not np.any(recorded):
        return values
    return values[recorded]


@dataclass
class CorpusLatents:
    """Posterior means of training frames (N, D), the per-latent average KL (D,), and which frames come from the
    recordings themselves (``recorded``, N bools; None: all of them) rather than from augmented variants.

    The spans (what a knob may reach) are over every frame: the model learnt to render the augmented variants
    too, whose timbre factors (training.augment: tilt, breath, hollow) reach past the recordings. The centre (the
    default sound) and the corpus band shown on each knob are the recordings'."""

    means: np.ndarray
    kl_nats: np.ndarray
    recorded: np.ndarray | None = None

    @property
    def recorded_means(self) -> np.ndarray:
        return recorded_rows(self.means, self.recorded)

    @property
    def centre(self) -> np.ndarray:
        return self.recorded_means.mean(0)

    @property
    def span(self) -> np.ndarray:
        lo, hi = np.percentile(self.means, PERCENTILES, axis=0)
        return hi - lo

    @property
    def active(self) -> np.ndarray:
        return np.flatnonzero((self.kl_nats >= ACTIVE_KL_NATS) & (self.span > 0))




def corpus_latents(encoder, examples: list, max_seconds: float = 120.0, min_chunk_seconds: float = 2.0
                   ) -> CorpusLatents:
    """Posterior means over at most ``max_seconds`` of ``examples``, spread evenly over them: the middle
    ``max(min_chunk_seconds, max_seconds / len(examples))`` of each of evenly spaced examples (recordings and
    augmented variants alike, so that neither the first files nor the recordings alone decide the spans)."""
    c = encoder.config
    if not examples:
        raise ValueError("no examples to encode")
    chunk_s = max(min_chunk_seconds, max_seconds / len(examples))
    count = max(1, min(len(examples), int(max_seconds // chunk_s)))
    picked = sorted({int(i) for i in np.linspace(0, len(examples) - 1, count).round()})
    means, kls, recorded = [], [], []
    block = c.hop_size * c.encoder_stride
    for i in picked:
        ex = examples[i]
        n = len(ex.audio)
        length = min(n, int(chunk_s * c.sample_rate) // block * block)
        start = (n - length) // 2 // block * block
        frames = slice(start // c.hop_size, (start + length) // c.hop_size + 1)
        m, lv = encode_means(encoder, np.asarray(ex.audio[start:start + length]), ex.features.f0_hz[frames])
        means.append(m)
        kls.append(0.5 * (m ** 2 + np.exp(lv) - 1.0 - lv))
        recorded.append(np.full(len(m), AUGMENTED_MARK not in getattr(ex, "name", ""), bool))
    return CorpusLatents(np.concatenate(means).astype(np.float64), np.concatenate(kls).mean(0).astype(np.float64),
                         np.concatenate(recorded))


# ---------------------------------------------------------------------------------------------- response
@dataclass(frozen=True)
class Response:
    """J[row][j]: change of ``rows[row]`` (in its unit) per corpus span of active latent ``active[j]``."""

    rows: tuple[str, ...]
    active: tuple[int, ...]
    matrix: np.ndarray

    def row(self, key: str) -> np.ndarray:
        return self.matrix[self.rows.index(key)]


def _median_rows(measured: list[dict], units: dict) -> dict:
    return {k: float(np.median([m[k] for m in measured])) / units[k] for k in units}


def response_matrix(decoder, grid: NoteGrid, centre: np.ndarray, span: np.ndarray, active, step: float = 0.5
                    ) -> Response:
    """Central differences: each active latent at centre +- ``step`` spans, median over the grid's notes."""
    units = descriptor_units()
    rows = tuple(units)
    active = tuple(int(a) for a in active)
    zs = []
    for d in active:
        for sign in (-1.0, 1.0):
            z = centre.copy()
            z[d] += sign * step * span[d]
            zs.append(z)
    if not zs:
        return Response(rows, active, np.zeros((len(rows), 0)))
    measured = measure_grid(decoder, grid, np.stack(zs))
    J = np.zeros((len(rows), len(active)))
    for j in range(len(active)):
        lo, hi = measured[2 * j], measured[2 * j + 1]
        for r, key in enumerate(rows):
            J[r, j] = float(np.median([(b[key] - a[key]) for a, b in zip(lo, hi)])) / units[key] / (2 * step)
    return Response(rows, active, J)


def knob_directions(J: Response, chosen: tuple[str, ...]) -> np.ndarray:
    """Directions (m, K) in span units: column k moves descriptor ``chosen[k]`` by one unit and, to first
    order, the other chosen descriptors, loudness and pitch (where they move at all) by nothing."""
    rows = [J.row(k) for k in chosen]
    for key in ("loudness_a_db", "pitch_cents"):
        if np.abs(J.row(key)).max(initial=0.0) >= CONSTRAINT_MIN_UNITS:
            rows.append(J.row(key))
    M = np.stack(rows) if rows else np.zeros((0, len(J.active)))
    return np.linalg.pinv(M)[:, :len(chosen)]


def complete_basis(V: np.ndarray) -> np.ndarray:
    """[V N]: N an orthonormal basis of the complement of V's column space (m, m)."""
    m, k = V.shape
    if k == 0:
        return np.eye(m)
    u, sv, _ = np.linalg.svd(V, full_matrices=True)
    rank = int((sv > 1e-9 * max(sv.max(), 1e-300)).sum())
    return np.concatenate([V, u[:, rank:]], axis=1) if rank == k else np.concatenate([V[:, :rank], u[:, rank:]], 1)


def candidate_sets(n_active: int) -> list[tuple[str, ...]]:
    """Every allowed subset of KNOB_CANDIDATES (in candidate order) of at most n_active descriptors, largest first,
    then earliest in the candidate order."""
    sets = []
    for r in range(min(n_active, len(KNOB_CANDIDATES)), 0, -1):
        for combo in itertools.combinations(KNOB_CANDIDATES, r):
            if any(ex <= set(combo) for ex in EXCLUSIVE):
                continue
            sets.append(combo)
    return sets


# ---------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class KnobRange:
    """A knob over coordinate u: knob 0..1 -> u in [low, high]; the corpus's 5th..95th percentile lies between
    knob positions corpus_low and corpus_high."""

    low: float
    high: float
    corpus_low: float
    corpus_high: float

    def knob_to_u(self, knob: float) -> float:
        return self.low + (self.high - self.low) * knob


def corpus_band(u: np.ndarray, direction: np.ndarray, recorded: np.ndarray | None = None
                ) -> tuple[float, float, float, float]:
    """(low, high) of a knob's band: the 5th..95th percentile of its coordinate ``u`` over the training frames,
    clipped so that no active latent leaves the centre by more than ``MAX_SPANS`` of its span (``direction``:
    the knob's column in span units; an ill-conditioned direction would otherwise reach far outside the
    corpus), and the 5th..95th percentile over the recordings' frames (``recorded``; None: all frames), unclipped."""
    p_lo, p_hi = (float(x) for x in np.percentile(u, PERCENTILES))
    rec = recorded_rows(u, recorded)
    r_lo, r_hi = (float(x) for x in np.percentile(rec, PERCENTILES))
    reach = float(np.abs(direction).max(initial=0.0))
    limit = MAX_SPANS / reach if reach > 0 else math.inf
    return max(p_lo, -limit), min(p_hi, limit), r_lo, r_hi


def knob_range(band: tuple[float, float, float, float], extrapolation: float = EXTRAPOLATION,
               narrow: float = 1.0) -> KnobRange:
    """The corpus band (`corpus_band`) in the middle, ``extrapolation`` of the knob beyond it on each side
    (0 <= extrapolation < 0.5); with ``narrow`` < 1, only that fraction of the band (about its middle) and no
    extrapolation. ``corpus_low``/``corpus_high`` are where the unclipped percentiles fall (0 / 1 where the
    knob lies inside the corpus on that side)."""
    lo, hi, p_lo, p_hi = band
    if narrow < 1.0:
        mid, half = 0.5 * (lo + hi), 0.5 * narrow * (hi - lo)
        lo, hi, extrapolation = mid - half, mid + half, 0.0
    span = hi - lo
    if span <= 0:
        return KnobRange(lo - 1.0, hi + 1.0, 0.0, 1.0)
    ext = span * extrapolation / (1.0 - 2.0 * extrapolation)
    low, high = lo - ext, hi + ext
    position = lambda x: min(max((x - low) / (high - low), 0.0), 1.0)
    return KnobRange(low, high, position(p_lo), position(p_hi))


# ---------------------------------------------------------------------------------------------- the basis
@dataclass
class KnobBasis:
    """z = centre + matrix @ u (D x D). Columns in knob order: offered knobs, then unoffered directions."""

    centre: np.ndarray
    matrix: np.ndarray

    def to_z(self, u: np.ndarray) -> np.ndarray:
        return self.centre + np.asarray(u, np.float64) @ self.matrix.T

    def to_u(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.centre) @ np.linalg.inv(self.matrix).T

    def to_dict(self) -> dict:
        return {"centre": [float(x) for x in self.centre], "matrix": [[float(x) for x in r] for r in self.matrix]}


def build_basis(centre: np.ndarray, span: np.ndarray, active, directions: np.ndarray) -> KnobBasis:
    """A (D x D) from active-space directions (m x m, span units): active columns first, inactive latents last
    (identity on their own dimension)."""
    D = len(centre)
    active = list(active)
    inactive = [d for d in range(D) if d not in active]
    A = np.zeros((D, D))
    for col in range(directions.shape[1]):
        A[active, col] = span[active] * directions[:, col]
    for k, d in enumerate(inactive):
        A[d, directions.shape[1] + k] = 1.0
    return KnobBasis(np.asarray(centre, np.float64), A)


# ---------------------------------------------------------------------------------------------- folding
def fold_decoder(decoder, basis: KnobBasis):
    """A copy of ``decoder`` whose z input is u: first z layer W z + b -> (W A) u + (W c + b)."""
    folded = copy.deepcopy(decoder)
    layer = folded.z_mlp[0]
    with torch.no_grad():
        W = layer.weight.double()
        A = torch.as_tensor(basis.matrix, dtype=torch.float64)
        c = torch.as_tensor(basis.centre, dtype=torch.float64)
        layer.bias.copy_((W @ c + layer.bias.double()).float())
        layer.weight.copy_((W @ A).float())
    return folded


def fold_encoder(encoder, basis: KnobBasis):
    """A copy of ``encoder`` whose posterior mean is u = A^-1 (mean - c); its log-variance head is unchanged."""
    folded = copy.deepcopy(encoder)
    D = basis.matrix.shape[0]
    out = folded.out
    with torch.no_grad():
        Ainv = torch.as_tensor(np.linalg.inv(basis.matrix), dtype=torch.float64)
        c = torch.as_tensor(basis.centre, dtype=torch.float64)
        W = out.weight[:D].double()
        b = out.bias[:D].double()
        out.weight[:D] = (Ainv @ W).float()
        out.bias[:D] = (Ainv @ (b - c)).float()
    return folded


# ---------------------------------------------------------------------------------------------- verifying
def knob_grid_zs(basis: KnobBasis, rng: KnobRange, col: int, knobs=(0.0, 0.5, 1.0)) -> np.ndarray:
    """u vectors with knob ``col`` at each of ``knobs`` and every other coordinate at the corpus centre (0)."""
    D = basis.matrix.shape[0]
    out = np.zeros((len(knobs), D))
    for i, k in enumerate(knobs):
        out[i, col] = rng.knob_to_u(k)
    return out


def sweep_figures(measured: list[list[dict]]) -> dict:
    """From renders at knob 0, 0.5, 1 ([knob][note]): median over notes of (knob 1 - knob 0) of every row
    (``deltas``, natural units) and the largest pitch / loudness move against knob 0.5 over notes."""
    lo, mid, hi = measured
    keys = [k for k in lo[0]]
    deltas = {k: float(np.median([b[k] - a[k] for a, b in zip(lo, hi)])) for k in keys}
    pitch = max(abs(x[k]["pitch_cents"] - mid[k]["pitch_cents"]) for x in (lo, hi) for k in range(len(mid)))
    loud = max(abs(x[k]["loudness_a_db"] - mid[k]["loudness_a_db"]) for x in (lo, hi) for k in range(len(mid)))
    return {"deltas": deltas, "pitch_cents_max": float(pitch), "loudness_db_max": float(loud)}


def invariant(fig: dict) -> bool:
    return fig["pitch_cents_max"] < PITCH_LIMIT_CENTS and fig["loudness_db_max"] < LOUDNESS_LIMIT_DB


def knob_passes(own_key: str, own: dict, others: list[dict]) -> tuple[bool, str]:
    """The offering rule for one knob's measured sweep (`sweep_figures`) beside the other offered knobs'."""
    units = descriptor_units()
    move = own["deltas"][own_key]
    if move < MIN_UNITS * units[own_key]:
        return False, f"moves {own_key} by {move:+.3f} (< {MIN_UNITS:g} unit = {units[own_key]:g})"
    if not invariant(own):
        return False, (f"moves pitch {own['pitch_cents_max']:.1f} cents / loudness {own['loudness_db_max']:.2f} dB")
    worst = max((abs(o["deltas"][own_key]) for o in others), default=0.0)
    if move < SEPARATION * worst:
        return False, f"another knob moves {own_key} by {worst:.3f}, more than 1/{SEPARATION:g} of {move:.3f}"
    return True, "ok"


# ---------------------------------------------------------------------------------------------- analysis
@dataclass
class KnobAnalysis:
    latents: list[LatentInfo]
    basis: KnobBasis
    response: Response
    chosen: tuple[str, ...]
    log: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"basis": self.basis.to_dict(), "chosen": list(self.chosen), "response_rows": list(self.response.rows),
                "response_active": list(self.response.active),
                "response": [[round(float(x), 4) for x in r] for r in self.response.matrix], "log": self.log}


def _try_set(decoder, grid, corpus: CorpusLatents, J: Response, chosen: tuple[str, ...]) -> dict:
    """Build, range and verify one candidate set; returns what passed and everything needed to finish."""
    centre, span = corpus.centre, corpus.span
    active = list(J.active)
    V = knob_directions(J, chosen)
    B = complete_basis(V)
    basis = build_basis(centre, span, active, B)
    u = basis.to_u(corpus.means)
    folded = fold_decoder(decoder, basis)
    ranges, figs, notes = {}, {}, []
    for k, key in enumerate(chosen):
        band = corpus_band(u[:, k], B[:, k], corpus.recorded)
        for ext, narrow in SHRINK_STEPS:
            rng = knob_range(band, ext, narrow)
            fig = sweep_figures(measure_grid(folded, grid, knob_grid_zs(basis, rng, k)))
            if invariant(fig) or (ext, narrow) == SHRINK_STEPS[-1]:
                break
            notes.append(f"{key}: {'extrapolation %.3f' % ext if narrow == 1.0 else '%.0f%% of the corpus band' % (100 * narrow)}"
                         f" broke invariance (pitch {fig['pitch_cents_max']:.1f} cents, loudness "
                         f"{fig['loudness_db_max']:.2f} dB): shrunk")
        ranges[k], figs[k] = rng, fig
    offered = list(range(len(chosen)))
    reasons = {}
    for k in list(offered):              # own criteria first (a knob that fails them is not compared with)
        ok, why = knob_passes(chosen[k], figs[k], [])
        if not ok:
            offered.remove(k)
            reasons[k] = why
    while True:                          # then separation: drop the least separated until all pass
        fails = []
        for k in offered:
            ok, why = knob_passes(chosen[k], figs[k], [figs[j] for j in offered if j != k])
            if not ok:
                worst = max(abs(figs[j]["deltas"][chosen[k]]) for j in offered if j != k)
                fails.append((figs[k]["deltas"][chosen[k]] / max(worst, 1e-12), k, why))
        if not fails:
            break
        _, k, why = min(fails)
        offered.remove(k)
        reasons[k] = why
    return {"chosen": chosen, "basis": basis, "u": u, "ranges": ranges, "figs": figs, "offered": offered,
            "reasons": reasons, "notes": notes, "n_directions": B.shape[1]}


def analyse_knobs(decoder, encoder, examples: list, corpus_info: CorpusInfo, log=print,
                  max_seconds: float = 120.0, corpus: CorpusLatents | None = None,
                  grid: NoteGrid | None = None) -> KnobAnalysis:
    """The whole analysis (module docstring) on the unfolded ``decoder``, the corpus's posterior means from
    ``encoder`` over ``examples`` (or ``corpus`` given), held notes of ``grid`` (default `note_grid`): returns
    the latent table in knob coordinates and the basis (fold both networks with it: `fold_networks`)."""

    corpus = corpus if corpus is not None else corpus_latents(encoder, examples, max_seconds)
    centre, span, active = corpus.centre, corpus.span, corpus.active
    grid = grid if grid is not None else note_grid(corpus_info)
    J = response_matrix(decoder, grid, centre, span, active)
    lines = []
    best = None
    verified = 0
    for chosen in candidate_sets(len(active)):
        if best is not None and len(chosen) <= len(best["offered"]):
            break
        # linear prediction: the knob's corpus band alone moves its descriptor by (p95 - p5) units
        V = knob_directions(J, chosen)
        if np.linalg.matrix_rank(V) < len(chosen):
            continue                     # a descriptor no latent moves (a zero row): no direction for it
        basis = build_basis(centre, span, active, complete_basis(V))
        u = basis.to_u(corpus.means)
        gain = np.diag(np.stack([J.row(k) for k in chosen]) @ V)          # 1 where the constraints are met
        predicted = []
        for k in range(len(chosen)):
            lo, hi, _, _ = corpus_band(u[:, k], V[:, k])
            predicted.append(float(gain[k] * (hi - lo)))
        if min(predicted) < MIN_UNITS * (1.0 - 2 * EXTRAPOLATION):
            continue
        trial = _try_set(decoder, grid, corpus, J, chosen)
        verified += 1
        lines.append(f"set {'+'.join(chosen)}: predicted {', '.join(f'{p:.2f}' for p in predicted)} units; "
                     f"offered {[chosen[k] for k in trial['offered']]}")
        if best is None or len(trial["offered"]) > len(best["offered"]):
            best = trial
        if verified >= VERIFY_SETS or len(best["offered"]) == len(chosen):
            break                        # sets come largest first: a later one cannot offer more
    if best is None:                     # nothing predicted to pass: no knobs, every direction unoffered
        basis = build_basis(centre, span, active, np.eye(len(active)))
        best = {"chosen": (), "basis": basis, "u": basis.to_u(corpus.means), "ranges": {}, "figs": {},
                "offered": [], "reasons": {}, "notes": [], "n_directions": len(active)}
        lines.append("no set of named descriptors is predicted to move by one unit over the corpus: no knobs")
    # Reorder columns: offered knobs (candidate order), then every other column.
    D = len(centre)
    order = list(best["offered"]) + [k for k in range(D) if k not in best["offered"]]
    old = best["basis"]
    basis = KnobBasis(old.centre, old.matrix[:, order])
    u = best["u"][:, order]
    u_rec = recorded_rows(u, corpus.recorded)
    kl = corpus.kl_nats
    latents = []
    for new, col in enumerate(order):
        a = old.matrix[:, col] / np.where(span > 0, span, 1.0)
        weights = a ** 2 / max(float((a ** 2).sum()), 1e-300)
        kl_col = float((weights * kl).sum())
        if col in best["offered"]:
            key = best["chosen"][col]
            rng, fig = best["ranges"][col], best["figs"][col]
            name = DESCRIPTORS[key][0]
            deltas = {k: round(v, 4) for k, v in fig["deltas"].items()}
            latents.append(LatentInfo(index=new, name=name, active=True, kl_nats=round(kl_col, 5), low=rng.low,
                                      high=rng.high, mean=float(u_rec[:, new].mean()), std=float(u_rec[:, new].std()),
                                      descriptor_deltas=deltas, corpus_low=rng.corpus_low,
                                      corpus_high=rng.corpus_high, descriptor=key))
        else:
            rng = knob_range(corpus_band(u[:, new], np.zeros(1), corpus.recorded), 0.0)
            why = best["reasons"].get(col) if col < len(best["chosen"]) else None
            if why:
                lines.append(f"not offered: {best['chosen'][col]} knob ({why})")
            latents.append(LatentInfo(index=new, name=f"inactive{new}", active=False, kl_nats=round(kl_col, 5),
                                      low=rng.low, high=rng.high, mean=float(u_rec[:, new].mean()),
                                      std=float(u_rec[:, new].std())))
    lines += best["notes"]
    for line in lines:
        log(f"knobs: {line}")
    return KnobAnalysis(latents, basis, J, tuple(best["chosen"][k] for k in best["offered"]), lines)


def fold_networks(decoder, encoder, basis: KnobBasis):
    """(folded decoder, folded encoder or None)."""
    return fold_decoder(decoder, basis), (None if encoder is None else fold_encoder(encoder, basis))
