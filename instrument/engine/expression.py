"""Learnt note expression, played causally per voice: (time since note-on / off, velocity, amounts) -> the
level and pitch offsets of one control frame.

The articulation (:class:`instrument.model.bundle.Articulation`) was fitted from the corpus by
``training/expression.py``; this module only evaluates it. Every function is pure, takes Python floats and
returns a float (the voice bank calls them once per voice per control frame on the audio thread: no arrays,
no allocation beyond Python scalars, no torch). Times are in ms since the note-on (``t_on_ms``) or the
note-off (``t_off_ms``); levels in dB relative to the note's level unless named ``*_abs_db``.

:func:`note_curve` is what tests, plots and the benchmark use to draw a whole note the same way.
"""
from __future__ import annotations

import math

import numpy as np

from instrument.model.bundle import Articulation

__all__ = ["EXPRESSION_MODES", "ENVELOPE", "LEARNED", "velocity_level_db", "velocity_output_db", "output_input_db",
           "register_db", "held_level_db", "attack_ms_to_within", "release_level_db",
           "release_ms_to_floor", "tremolo_db", "pitch_offset_cents", "fade_in", "note_curve"]

EXPRESSION_MODES = ("envelope", "learned")
ENVELOPE, LEARNED = range(2)
TWO_PI = 2.0 * math.pi


# Velocity -> level follows MIDI's own curve (GM2 / DLS: gain proportional to (velocity / 127) ** 2, i.e.
# 40 dB per decade of velocity: what keyboards and sample players assume). The corpus's loudest notes (the
# top of ``level_db``, its 98th percentile) sound at velocity 112, ff in the dynamics -> velocity table of
# notation programs and sequencers (pp 33, p 49, mf 80, f 96, ff 112, fff 127): a set of recordings seldom
# holds a player's very hardest notes, and anchoring it at 127 played every note 1-2 dB under the recording
# of the same MIDI (benchmarks/NOTES.md). Velocities above rise on the same curve past the corpus (2.1 dB at
# 127); below the corpus's softest notes the curve goes on at a quarter of its slope (still monotonic,
# without driving the decoder far below the levels it learnt).
VELOCITY_DB_PER_DECADE = 40.0
LOUDEST_NOTE_VELOCITY = 112.0
BELOW_CORPUS_SLOPE = 0.25


def velocity_output_db(art: Articulation, velocity: float, sensitivity: float = 1.0,
                       pitch_midi: float | None = None) -> float:
    """A velocity 1..127 -> the level the note should sound at (dB, as the corpus was measured): the corpus's
    loudest note level (``level_db[-1]``) at LOUDEST_NOTE_VELOCITY, ``sensitivity * VELOCITY_DB_PER_DECADE *
    log10(velocity / LOUDEST_NOTE_VELOCITY)`` dB from there, bent to BELOW_CORPUS_SLOPE of that slope under
    the softest (``level_db[0]``), plus the corpus's register slope at ``pitch_midi`` (none without a pitch).
    Strictly rising in velocity 1..127 where ``sensitivity`` > 0; 0: every velocity at ``level_db[-1]``."""
    v = min(max(float(velocity), 1.0), 127.0)
    floor_db = art.level_db[0]
    level = art.level_db[-1] + sensitivity * VELOCITY_DB_PER_DECADE * math.log10(v / LOUDEST_NOTE_VELOCITY)
    if level < floor_db:
        level = floor_db - BELOW_CORPUS_SLOPE * (floor_db - level)
    return level if pitch_midi is None else level + register_db(art, pitch_midi)


def register_db(art: Articulation, pitch_midi: float) -> float:
    """How much louder the corpus plays at ``pitch_midi`` than at its reference pitch (its register line)."""
    return art.level_db_per_semitone * (pitch_midi - art.level_reference_midi)


def output_input_db(art: Articulation, level_db: float, pitch_midi: float | None = None) -> float:
    """The decoder input that makes the model sound at ``level_db``, by its calibration (measured at export):
    at ``pitch_midi`` where the file has the per-pitch table, else at the corpus's median pitch
    (``level_input_db``); 1:1 past either end of the table; ``level_db`` itself for an uncalibrated file."""
    pitches, table = art.calibration_midi, art.level_input_by_pitch_db
    if pitch_midi is not None and pitches:
        levels = art.calibration_level_db
        n = len(levels)
        if pitch_midi <= pitches[0] or len(pitches) == 1:
            return _level_input(levels, table, 0, level_db)
        for r in range(1, len(pitches)):
            if pitch_midi <= pitches[r]:
                w = (pitch_midi - pitches[r - 1]) / (pitches[r] - pitches[r - 1])
                return ((1.0 - w) * _level_input(levels, table, (r - 1) * n, level_db)
                        + w * _level_input(levels, table, r * n, level_db))
        return _level_input(levels, table, (len(pitches) - 1) * n, level_db)
    if not art.level_input_db:
        return level_db
    return _level_input(art.level_db, art.level_input_db, 0, level_db)


def velocity_level_db(art: Articulation, velocity: float, sensitivity: float = 1.0,
                      pitch_midi: float | None = None) -> float:
    """The decoder input of a note played at ``velocity`` (:func:`velocity_output_db` through
    :func:`output_input_db`)."""
    return output_input_db(art, velocity_output_db(art, velocity, sensitivity, pitch_midi), pitch_midi)


def _level_input(levels, inputs, offset: int, level: float) -> float:
    """``level`` through the measured (output level -> decoder input) row ``inputs[offset:offset + len(levels)]``;
    1:1 past either end."""
    if level <= levels[0]:
        return inputs[offset] + (level - levels[0])
    for k in range(1, len(levels)):
        if level <= levels[k]:
            a, b = levels[k - 1], levels[k]
            if b <= a:
                return inputs[offset + k]
            return inputs[offset + k - 1] + (inputs[offset + k] - inputs[offset + k - 1]) * (level - a) / (b - a)
    return inputs[offset + len(levels) - 1] + (level - levels[-1])


def held_level_db(art: Articulation, t_on_ms: float, attack_from_db: float, attack_scale: float = 1.0) -> float:
    """Level of a held note ``t_on_ms`` after its note-on, relative to the note level, tremolo excluded:
    attack from ``attack_from_db`` to the peak (its slow part and its fast part), decay of the peak's excess,
    sustain drift."""
    attack_ms = art.attack_ms * attack_scale
    peak = art.attack_peak_db
    if t_on_ms < attack_ms:
        u = max(t_on_ms, 0.0) / attack_ms
        to_go = (1.0 - u) ** art.attack_shape
        fast = art.attack_fast_fraction
        if fast > 0.0:
            to_go = (1.0 - fast) * to_go + fast * (1.0 - u) ** art.attack_fast_shape
        return attack_from_db + (peak - attack_from_db) * (1.0 - to_go)
    after_ms = t_on_ms - attack_ms
    drift = art.sustain_slope_db_per_s * after_ms * 0.001
    drift = min(max(drift, -art.sustain_drift_db), art.sustain_drift_db)
    return peak * math.exp(-after_ms / (art.decay_ms * attack_scale)) + drift


def attack_ms_to_within(art: Articulation, within_db: float = 3.0) -> float:
    """How long a fresh note takes to come within ``within_db`` of its level (for what is printed; the attack's
    own ``attack_ms`` is where its curve ends, long after the level is reached with a fast part)."""
    t_ms = 0.0
    while t_ms < art.attack_ms and held_level_db(art, t_ms, art.attack_start_db) < -within_db:
        t_ms += 1.0
    return t_ms


def release_level_db(art: Articulation, t_off_ms: float, off_level_db: float, release_scale: float = 1.0) -> float:
    """Level ``t_off_ms`` after the note-off, from ``off_level_db`` (the held level at the note-off)."""
    return off_level_db - art.release_db_per_s / release_scale * max(t_off_ms, 0.0) * 0.001


def release_ms_to_floor(art: Articulation, off_level_db: float, floor_db: float, release_scale: float = 1.0) -> float:
    """How long the release takes from ``off_level_db`` down to ``floor_db`` (where the voice is freed)."""
    return max(off_level_db - floor_db, 0.0) * 1000.0 * release_scale / art.release_db_per_s


def fade_in(t_on_ms: float, delay_ms: float) -> float:
    """0 before ``delay_ms / 2``, rising linearly to 1 at ``1.5 * delay_ms`` (half at the delay)."""
    if delay_ms <= 0.0:
        return 1.0
    return min(max((t_on_ms - 0.5 * delay_ms) / delay_ms, 0.0), 1.0)


def tremolo_db(art: Articulation, t_on_ms: float, amount: float = 1.0) -> float:
    """Loudness wobble (dB) ``t_on_ms`` into the note; ``amount`` scales the learnt depth."""
    depth = art.tremolo_db * amount
    if depth == 0.0:
        return 0.0
    return depth * fade_in(t_on_ms, art.vibrato_delay_ms) * math.sin(TWO_PI * art.tremolo_hz * t_on_ms * 0.001)


def pitch_offset_cents(art: Articulation, t_on_ms: float, approach: bool, vibrato_amount: float = 1.0) -> float:
    """Pitch offset from the note (cents): the approach into a fresh note (``approach``; not after a legato
    transition) plus vibrato centred on the note, its learnt depth times ``vibrato_amount``."""
    cents = 0.0
    if approach and art.approach_cents != 0.0:
        cents = art.approach_cents * math.exp(-max(t_on_ms, 0.0) / art.approach_ms)
    depth = art.vibrato_cents * vibrato_amount
    if depth != 0.0:
        cents += depth * fade_in(t_on_ms, art.vibrato_delay_ms) * math.sin(TWO_PI * art.vibrato_hz * t_on_ms * 0.001)
    return cents


def note_curve(art: Articulation, velocity: float, held_ms: float, frame_ms: float, tail_ms: float = 1000.0,
               floor_db: float = -60.0, pitch_midi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(loudness_db, pitch_offset_cents) per frame of one fresh note held ``held_ms`` then released, as the
    voice bank plays it with default amounts (for plots, tests and the benchmark; allocates)."""
    level = velocity_output_db(art, velocity)
    n = int(round((held_ms + tail_ms) / frame_ms))
    loudness = np.empty(n)
    cents = np.empty(n)
    off_level = held_level_db(art, held_ms, art.attack_start_db) + tremolo_db(art, held_ms)
    for i in range(n):
        t = (i + 1) * frame_ms
        if t <= held_ms:
            rel = held_level_db(art, t, art.attack_start_db) + tremolo_db(art, t)
        else:
            rel = release_level_db(art, t - held_ms, off_level)
        loudness[i] = output_input_db(art, level + max(rel, floor_db), pitch_midi)
        cents[i] = pitch_offset_cents(art, t, True)
    return loudness, cents
