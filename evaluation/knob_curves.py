"""What each knob does, measured: every offered knob swept 0..1 on a small grid of held notes, every descriptor's
change from the knob's centre (knob 0.5) in its natural unit.

The notes are rendered and measured by the code the invariance check uses (:mod:`evaluation.playing`: held
notes through the streaming synth, pitch by pYIN refined below its grid, A-weighted loudness) and the timbre
descriptors are the export's (:func:`training.export.describe`): nothing here measures sound a second way.
:func:`knob_curves` is pure (a model in, a table out); ``sdga-info --plot`` draws it
(:func:`evaluation.plots.plot_knob_curves`) and ``benchmarks/bench_knob_curves.py`` prints it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["CurveDescriptor", "CURVE_DESCRIPTORS", "KnobCurves", "offered_knobs", "corpus_band", "knob_curves"]


def _octaves_to_percent(value: float, centre: float) -> float:
    return float(100.0 * (2.0 ** (value - centre) - 1.0))


def _difference(value: float, centre: float) -> float:
    return float(value - centre)


def _log10_to_db(value: float, centre: float) -> float:
    return float(10.0 * (value - centre))


@dataclass(frozen=True)
class CurveDescriptor:
    """One measured quantity: ``key`` in the measurement (``training.export.describe``'s descriptors, or
    ``f0_cents`` / ``loudness_db`` of ``evaluation.playing.measure_note``), how it is labelled, and how a value
    becomes a change from the centre's value in ``unit``."""

    key: str
    label: str
    unit: str
    change: Callable[[float, float], float]


# The descriptors drawn, in order. A knob's name (training.export.DESCRIPTORS) picks the one drawn bold.
CURVE_DESCRIPTORS: tuple[CurveDescriptor, ...] = (
    CurveDescriptor("centroid_octaves", "centroid", "%", _octaves_to_percent),
    CurveDescriptor("spread_octaves", "spread", "%", _octaves_to_percent),
    CurveDescriptor("noise_ratio_db", "noise/harmonic", "dB", _difference),
    CurveDescriptor("odd_even_db", "odd/even", "dB", _difference),
    CurveDescriptor("flatness_log10", "flatness", "dB", _log10_to_db),
    CurveDescriptor("f0_cents", "pitch", "cents", _difference),
    CurveDescriptor("loudness_db", "loudness (A-weighted)", "dB", _difference),
)


def offered_knobs(bundle) -> list:
    """The latents a player is offered as knobs (active ones), in the model's order (rank 0 first)."""
    return [info for info in bundle.latents if info.active]


def corpus_band(info) -> tuple[float, float]:
    """Where the corpus lies on a knob (0..1): the optional ``corpus_low`` / ``corpus_high`` of the latent
    table (a model without them: the whole knob)."""
    low, high = getattr(info, "corpus_low", None), getattr(info, "corpus_high", None)
    return (0.0 if low is None else float(low)), (1.0 if high is None else float(high))


@dataclass(frozen=True)
class KnobCurves:
    """The measured table. ``changes[k, s, n, d]``: knob ``latents[k]`` at ``knobs[s]``, note ``notes_hz[n]``,
    descriptor ``descriptors[d]``: the change from the same note with the knob at 0.5, in the descriptor's unit
    (NaN where a pitch could not be measured). ``named[k]``: the descriptor key knob k is named after (None:
    its name names none)."""

    knobs: np.ndarray                       # (S,)
    notes_hz: tuple[float, ...]             # (N,)
    loudness_db: float                      # the decoder loudness the notes were played at
    latents: tuple                          # (K,) LatentInfo
    named: tuple[str | None, ...]           # (K,)
    descriptors: tuple[CurveDescriptor, ...]  # (D,)
    changes: np.ndarray                     # (K, S, N, D)

    def median(self) -> np.ndarray:
        """(K, S, D): the median over notes."""
        with warnings.catch_warnings():                 # an all-NaN cell (pitch never measured) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(self.changes, axis=2)

    def spread(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, S, D) lowest and highest over notes."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmin(self.changes, axis=2), np.nanmax(self.changes, axis=2)

    def column(self, key: str) -> int:
        return [d.key for d in self.descriptors].index(key)

    def full_sweep(self) -> np.ndarray:
        """(K, D): the largest |median change| over the sweep (what a full turn of the knob moves)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(np.abs(self.median()), axis=1)

    def to_dict(self) -> dict:
        med = self.median()
        lo, hi = self.spread()
        return {"knobs": [float(k) for k in self.knobs], "notes_hz": list(self.notes_hz),
                "loudness_db": self.loudness_db,
                "descriptors": [{"key": d.key, "label": d.label, "unit": d.unit} for d in self.descriptors],
                "latents": [{"name": info.name, "index": info.index, "named": named,
                             "corpus_band": list(corpus_band(info)),
                             "median": np.round(med[k], 4).tolist(), "low": np.round(lo[k], 4).tolist(),
                             "high": np.round(hi[k], 4).tolist()}
                            for k, (info, named) in enumerate(zip(self.latents, self.named))]}


def _knob_positions(steps: int) -> np.ndarray:
    if steps < 2:
        raise ValueError(f"knob_curves needs at least 2 steps, got {steps}")
    return np.round(np.linspace(0.0, 1.0, int(steps)), 6)


def _measure(bundle, f0_hz: float, loudness_db: float, z: np.ndarray, seconds: float) -> dict:
    """Every descriptor of one held note, by the invariance check's rendering and measurement."""
    from evaluation.playing import _render_note, measure_note
    from training.export import describe

    c = bundle.config
    audio, harmonic, noise, dist = _render_note(bundle, f0_hz, loudness_db, z, seconds)
    steady = slice(int(0.25 * c.sample_rate), None)
    values = describe(audio[steady], harmonic[steady], noise[steady], dist[len(dist) // 3:], c.sample_rate)
    m = measure_note(audio, f0_hz, c.sample_rate, c.hop_size, unvoiced_by_peaks=True)
    values["f0_cents"] = m["f0_cents"]
    values["loudness_db"] = m["loudness_db"]          # A-weighted, as the invariance check measures it
    return values


def knob_curves(bundle, steps: int = 11, notes: Sequence[float] | None = None, seconds: float = 1.0,
                loudness_db: float | None = None, latents: Sequence | None = None,
                descriptors: Sequence[CurveDescriptor] = CURVE_DESCRIPTORS) -> KnobCurves:
    """Sweep every offered knob (``latents``: default :func:`offered_knobs`) over ``steps`` positions 0..1
    (others at the corpus mean) on held notes at ``notes`` (Hz; default: three pitches across the corpus's
    range) at ``loudness_db`` (default: the corpus median) for ``seconds``, and measure every descriptor's
    change from the knob at 0.5 (rendered once per note even when 0.5 is not a step)."""
    from evaluation.playing import _descriptor_key, _test_pitches

    knobs = _knob_positions(steps)
    notes_hz = tuple(float(f) for f in (notes if notes is not None else _test_pitches(bundle, 3)))
    if not notes_hz or not all(np.isfinite(notes_hz)) or min(notes_hz) <= 0:
        raise ValueError(f"knob_curves needs notes in Hz > 0, got {notes_hz}")
    loud = bundle.corpus.reference_loudness_db if loudness_db is None else float(loudness_db)
    chosen = tuple(offered_knobs(bundle) if latents is None else latents)
    descriptors = tuple(descriptors)
    changes = np.full((len(chosen), len(knobs), len(notes_hz), len(descriptors)), np.nan)
    for k, info in enumerate(chosen):
        for n, f0 in enumerate(notes_hz):
            measured = {}
            for knob in sorted(set(knobs.tolist()) | {0.5}):
                z = bundle.default_z().numpy().copy()
                z[info.index] = info.knob_to_z(knob)
                measured[knob] = _measure(bundle, f0, loud, z, seconds)
            centre = measured[0.5]
            for s, knob in enumerate(knobs.tolist()):
                for d, desc in enumerate(descriptors):
                    value, ref = measured[knob][desc.key], centre[desc.key]
                    changes[k, s, n, d] = desc.change(value, ref) if np.isfinite(value) and np.isfinite(ref) else np.nan
    named = tuple(_descriptor_key(info.name) for info in chosen)
    return KnobCurves(knobs=knobs, notes_hz=notes_hz, loudness_db=loud, latents=chosen, named=named,
                      descriptors=descriptors, changes=changes)
