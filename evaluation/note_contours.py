"""What the model learnt about playing a note: notes played through the live engine at a few velocities, and
notes segmented from a corpus, as loudness and pitch contours over time since the onset.

Played notes go through :class:`instrument.engine.engine.Engine` (its voice bank plays the model's learnt
articulation, :mod:`instrument.engine.expression`, or the ADSR for a model without one); their loudness is
measured on the output with the corpus's own A-weighted loudness (:func:`training.features.a_weighted_loudness_db`)
and their pitch is the f0 the engine gave the synth, so both sides of the overlay are measured alike. Corpus
notes come from :func:`training.expression.segment_notes` on the training features (cached as training caches
them). ``sdga-info --expression-plot`` draws them (:func:`evaluation.plots.plot_note_expression`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["VELOCITIES", "NoteContour", "played_contours", "corpus_contours", "expression_summary"]

VELOCITIES = (32, 64, 96, 127)
LOUDNESS_N_FFT = 2048            # the corpus features' loudness window (training.features.FeatureSettings)


@dataclass(frozen=True)
class NoteContour:
    """One note over time since its onset: ``t_ms`` (F,), ``loudness_db`` (F,) A-weighted, ``cents`` (F,)
    from the note (NaN where unvoiced); ``held_ms`` where it was released (None: not known)."""

    label: str
    t_ms: np.ndarray
    loudness_db: np.ndarray
    cents: np.ndarray
    held_ms: float | None = None
    velocity: int | None = None


def _reference_note(bundle) -> int:
    return int(round(69.0 + 12.0 * np.log2(bundle.corpus.reference_f0_hz / 440.0)))


def played_contours(bundle, velocities: Sequence[int] = VELOCITIES, held_ms: float = 1000.0,
                    tail_ms: float = 800.0, note: int | None = None, block_size: int = 256) -> list[NoteContour]:
    """Each velocity as one note (default: the key nearest the corpus's median pitch) held ``held_ms`` then
    released, through a fresh engine at the model's rate; its output's loudness and the synth's f0 per frame."""
    from evaluation.audition import play_events
    from instrument.engine.engine import Engine
    from instrument.engine.events import NoteOff, NoteOn
    from training.features import a_weighted_loudness_db

    note = _reference_note(bundle) if note is None else int(note)
    note_hz = 440.0 * 2.0 ** ((note - 69.0) / 12.0)
    out = []
    for velocity in velocities:
        engine = Engine(bundle)
        engine.prepare(None, block_size, 1)
        sr, hop = engine.sample_rate, engine.hop_size
        f0s: list[float] = []
        engine.set_recorder(lambda record: f0s.append(float(record.f0_hz[0])))
        n = int(round((held_ms + tail_ms) * 1e-3 * sr))
        off = int(round(held_ms * 1e-3 * sr))
        audio = play_events(engine, [(0, NoteOn(note, int(velocity))), (off, NoteOff(note))], n, block_size)
        loudness = a_weighted_loudness_db(audio, sr, hop, LOUDNESS_N_FFT).astype(np.float64)
        frames = len(loudness)
        # the k-th interval rendered (from 0) is the output's samples k * hop .. (k + 1) * hop once the one
        # control frame of delay is trimmed: its f0 goes with loudness frame k
        f0 = np.asarray(f0s[:frames], np.float64)
        if len(f0) < frames:
            f0 = np.concatenate([f0, np.full(frames - len(f0), np.nan)])
        sounding = loudness > loudness.max() - 60.0
        cents = np.where(sounding & (f0 > 0), 1200.0 * np.log2(np.maximum(f0, 1e-6) / note_hz), np.nan)
        t_ms = np.arange(frames) * 1000.0 * hop / sr
        out.append(NoteContour(f"velocity {velocity}", t_ms, loudness, cents, held_ms, int(velocity)))
    return out


def corpus_contours(corpus_dir: Path | str, sample_rate: int, hop_size: int, cache_dir: Path | None = None,
                    window_ms: float = 2500.0, max_notes: int = 80, log=print) -> list[NoteContour]:
    """Notes segmented from the corpus (``training.expression.segment_notes``, fresh onsets only: the ones a
    key press starts), each from its onset to the end of its release or the next note, at most ``window_ms``;
    at most ``max_notes``, evenly chosen. Raises training.corpus.CorpusError on an unusable folder."""
    from training.corpus import load_corpus
    from training.expression import segment_notes
    from training.features import FeatureSettings, extract_corpus_features
    from training.train import default_cache_dir

    corpus = load_corpus(corpus_dir, sample_rate=sample_rate, log=None)
    settings = FeatureSettings(sample_rate=sample_rate, hop_size=hop_size)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    features = extract_corpus_features([f.audio for f in corpus.files], settings, cache / "features", n_jobs=1,
                                       progress=False, names=[f.path.name for f in corpus.files])
    frame_ms = 1000.0 * hop_size / sample_rate
    window = int(window_ms / frame_ms)
    found = []
    for file, feats in zip(corpus.files, features):
        notes = segment_notes(feats.f0_hz, feats.voiced, feats.loudness_db, frame_ms)
        for k, note in enumerate(notes):
            if not note.fresh:
                continue
            end = note.stop
            if note.release_stop is not None:
                end = max(end, note.release_stop)
            if k + 1 < len(notes):
                end = min(end, notes[k + 1].start)
            end = min(end, note.start + window, feats.n_frames)
            if end - note.start < 2:
                continue
            s = slice(note.start, end)
            f0 = feats.f0_hz[s].astype(np.float64)
            cents = np.where(feats.voiced[s], 1200.0 * np.log2(f0 / 440.0) + 6900.0 - 100.0 * note.midi, np.nan)
            held = None if note.release_start is None else (note.release_start - note.start) * frame_ms
            found.append(NoteContour(f"{file.path.name}@{note.start * frame_ms / 1000.0:.2f}s",
                                     np.arange(end - note.start) * frame_ms,
                                     feats.loudness_db[s].astype(np.float64), cents, held))
    if len(found) > max_notes:
        found = [found[int(i)] for i in np.linspace(0, len(found) - 1, max_notes).round()]
    if log is not None:
        log(f"corpus: {len(found)} fresh notes segmented from {len(corpus.files)} files in {corpus_dir}")
    return found


def expression_summary(bundle) -> list[str]:
    """The model card's lines on note expression: what was learnt (vibrato and tremolo figures included), or
    that the file has none and plays the ADSR."""
    from instrument.engine.expression import LOUDEST_NOTE_VELOCITY, attack_ms_to_within

    art = bundle.expression
    if art is None:
        return ["  expression: none in this file (written before format 3): notes play the ADSR envelope"]
    mode = "fallback: too few notes, the envelope plays unless asked for 'learned'" if art.fallback else "learnt"
    levels = art.level_input_db or art.level_db
    lines = [f"  expression ({mode}): {art.notes} notes segmented from the corpus",
             f"    attack from {art.attack_start_db:+.1f} dB to within 3 dB in {attack_ms_to_within(art):.0f} ms "
             f"(over {art.attack_ms:.0f} ms, shape {art.attack_shape:.2f}; fast part {art.attack_fast_fraction:.0%}, "
             f"shape {art.attack_fast_shape:.1f}) "
             f"to a peak of {art.attack_peak_db:+.1f} dB decaying over {art.decay_ms:.0f} ms; sustain drift "
             f"{art.sustain_slope_db_per_s:+.1f} dB/s; release {art.release_db_per_s:.0f} dB/s",
             f"    vibrato {art.vibrato_cents:.1f} cents at {art.vibrato_hz:.2f} Hz, fading in around "
             f"{art.vibrato_delay_ms:.0f} ms; tremolo {art.tremolo_db:.2f} dB at {art.tremolo_hz:.2f} Hz",
             f"    pitch approach {art.approach_cents:+.1f} cents settling over {art.approach_ms:.0f} ms; legato "
             f"glide {art.legato_ms:.0f} ms",
             f"    velocity 1..127 -> MIDI's curve through the corpus's loudest notes at velocity "
             f"{LOUDEST_NOTE_VELOCITY:.0f} (ff), note levels "
             f"{art.level_db[0]:.1f}..{art.level_db[-1]:.1f} dB (decoder input {levels[0]:.1f}..{levels[-1]:.1f} dB)"]
    if art.level_db_per_semitone:
        lines.append(f"    register: {art.level_db_per_semitone:+.2f} dB per semitone around MIDI "
                     f"{art.level_reference_midi:.0f}")
    if art.calibration_midi:
        lines.append(f"    level calibration: {len(art.calibration_midi)} pitches (MIDI {art.calibration_midi[0]:.0f}.."
                     f"{art.calibration_midi[-1]:.0f}) x {len(art.calibration_level_db)} levels "
                     f"({art.calibration_level_db[0]:.0f}..{art.calibration_level_db[-1]:.0f} dB), every frame")
    return lines
