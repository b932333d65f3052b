"""Note expression from the corpus alone: segment notes from the extracted f0, voicing and loudness (no MIDI)
and fit the parametric articulation the live engine plays (:class:`instrument.model.bundle.Articulation`,
played by :mod:`instrument.engine.expression`).

Segmentation (:func:`segment_notes`), per file: frames are *active* where pYIN says voiced and the loudness is
within ``ACTIVE_RANGE_DB`` of the file's loudest frame. A note starts where an active run starts (a *fresh*
onset), where the pitch moves to another semitone and stays there ``STABLE_MS`` (a *legato* onset: the level
carries over) or where the loudness rises ``ATTACK_RISE_DB`` within ``ATTACK_MS`` after a dip on the same
pitch (a re-articulation, fresh). A note ends where the next starts or its run ends; a note that ends in
silence has a *release*: from its last frame within ``RELEASE_FROM_DB`` of its level down ``RELEASE_DEPTH_DB``
(measured past the run's end, on the raw loudness).

Fitting (:func:`fit_articulation`): each note's level is the median loudness of its body (after the attack,
before the release); levels relative to it are medianed over notes on a common time grid (attack, peak,
decay, sustain drift; the attack from the notes that begin in silence where there are MIN_ATTACK_NOTES),
releases give a fall rate, the pitch in cents from the note gives the approach and, on long notes, vibrato
rate and depth (band 3-9 Hz) and their onset delay; the loudness gives the tremolo. Velocity follows MIDI's
curve through the notes' loudest level (:func:`instrument.engine.expression.velocity_output_db`). Everything
is a pure function of arrays; times in ms.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from instrument.engine.expression import output_input_db, register_db, velocity_output_db
from instrument.model.bundle import Articulation
from training.features import hz_to_midi, midi_to_hz

__all__ = ["Note", "segment_notes", "fit_articulation", "corpus_articulation", "calibrate_levels",
           "calibration_pitches", "calibration_levels", "MIN_NOTES",
           "LEVEL_QUANTILES"]

MIN_NOTES = 10                 # fewer usable notes: say so, and fit only what there is
ACTIVE_RANGE_DB = 50.0
MIN_NOTE_MS = 80.0
STABLE_MS = 40.0
ATTACK_RISE_DB = 6.0
ATTACK_MS = 40.0
RELEASE_FROM_DB = 3.0
RELEASE_DEPTH_DB = 20.0
CURVE_MS = 2000.0              # level curves are medianed over the first 2 s of notes
VIBRATO_BAND_HZ = (3.0, 9.0)
LEVEL_QUANTILES = tuple(np.round(np.linspace(0.0, 1.0, 11), 3))
MIN_ATTACK_NOTES = 5           # the attack is fitted from notes that begin in silence where there are this many
SILENT_BEFORE_MS = 100.0
SILENT_BELOW_DB = 25.0
ATTACK_FIT_MS = 800.0          # the attack's time and shape are fitted over this much of the median curve
REGISTER_MIN_SEMITONES = 5.0   # the register line needs notes over at least this range (5th..95th percentile)
REGISTER_MAX_DB = 0.5          # dB per semitone, at most
REGISTER_SIGNIFICANCE = 3.0    # the slope is kept when it is this many standard errors from 0


@dataclass(frozen=True)
class Note:
    """One segmented note: frames [start, stop) of its file (stop excludes the release tail past the run)."""

    start: int
    stop: int
    midi: float                # median pitch over the body (MIDI note, fractional)
    level_db: float            # median loudness over the body
    fresh: bool                # from silence or re-articulated (else a legato transition)
    previous_midi: float | None
    release_start: int | None  # frame where the release starts (ends in silence), else None
    release_stop: int | None   # frame where the release is RELEASE_DEPTH_DB down (may be past ``stop``)


def _median_filter(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(x) < width:
        return x.copy()
    pad = width // 2
    padded = np.pad(x, pad, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=-1)


def segment_notes(f0_hz: np.ndarray, voiced: np.ndarray, loudness_db: np.ndarray, frame_ms: float) -> list[Note]:
    """Notes of one file from its per-frame f0 (Hz), voicing (bool) and loudness (dB); see the module doc."""
    f0_hz = np.asarray(f0_hz, np.float64)
    loudness_db = np.asarray(loudness_db, np.float64)
    n = len(f0_hz)
    if n == 0:
        return []
    top_db = float(loudness_db.max())
    active = np.asarray(voiced, bool) & (loudness_db > top_db - ACTIVE_RANGE_DB) & np.isfinite(f0_hz) & (f0_hz > 0)
    midi = hz_to_midi(np.maximum(f0_hz, 1e-3))
    smooth = _median_filter(midi, max(1, int(round(15.0 / frame_ms)) | 1))
    semitone = np.round(smooth)
    stable = max(1, int(round(STABLE_MS / frame_ms)))
    attack = max(1, int(round(ATTACK_MS / frame_ms)))
    min_frames = max(2, int(round(MIN_NOTE_MS / frame_ms)))
    notes: list[Note] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    lookback = int(round(150.0 / frame_ms))
    for run, (run_start, run_stop) in enumerate(zip(edges[::2], edges[1::2])):
        if run_stop - run_start < min_frames:
            continue
        next_run = int(edges[2 * run + 2]) if 2 * run + 2 < len(edges) else n
        # a fresh note's attack begins before pYIN calls it voiced: back while the level still falls, above
        # the silence (never into the previous run)
        previous_stop = int(edges[2 * run - 1]) if run > 0 else 0
        early = max(previous_stop, run_start - lookback)
        while run_start > early and top_db - ACTIVE_RANGE_DB < loudness_db[run_start - 1] < loudness_db[run_start]:
            run_start -= 1
        onsets = [(int(run_start), True)]
        current = semitone[run_start + min(stable, run_stop - run_start - 1)]
        i = run_start + 1
        while i < run_stop - stable:
            if semitone[i] != current and np.all(semitone[i:i + stable] == semitone[i]):
                if i - onsets[-1][0] >= min_frames:
                    onsets.append((int(i), False))
                current = semitone[i]
                i += stable
                continue
            if i >= attack and i - onsets[-1][0] >= min_frames:
                dip = loudness_db[i - attack:i].min()
                if loudness_db[i] - dip >= ATTACK_RISE_DB and loudness_db[i] >= loudness_db[i - attack:i + attack].max() - 1.0 \
                        and dip < np.median(loudness_db[onsets[-1][0]:i]) - ATTACK_RISE_DB:
                    start = i - attack + int(np.argmin(loudness_db[i - attack:i]))
                    onsets.append((int(start), True))
                    i += attack
                    continue
            i += 1
        bounds = [o for o, _ in onsets] + [int(run_stop)]
        for k, (start, fresh) in enumerate(onsets):
            stop = bounds[k + 1]
            if stop - start < min_frames:
                continue
            last = k == len(onsets) - 1
            body_from = start + min(int(round(150.0 / frame_ms)), (stop - start) // 3)
            note_midi = float(np.median(smooth[body_from:stop]))
            level = float(np.median(loudness_db[body_from:stop]))
            release_start = release_stop = None
            if last:
                near = np.flatnonzero(loudness_db[start:stop] >= level - RELEASE_FROM_DB)
                if near.size:
                    release_start = start + int(near[-1])
                    # the fall must happen before the next note starts, else it was not a release
                    below = np.flatnonzero(loudness_db[release_start:next_run]
                                           <= loudness_db[release_start] - RELEASE_DEPTH_DB)
                    if below.size:
                        release_stop = release_start + int(below[0])
                    else:
                        # cut by the next note before it fell RELEASE_DEPTH_DB: the fall up to the trough
                        # still counts (only full-depth releases made the fit 2x too fast: the slow
                        # ones are the ones the next note cuts)
                        seg = loudness_db[release_start:next_run]
                        trough = int(np.argmin(seg)) if seg.size else 0
                        if trough >= min_frames and seg[0] - seg[trough] >= ATTACK_RISE_DB:
                            release_stop = release_start + trough
                        else:
                            release_start = None
                if release_start is not None:
                    body_stop = max(body_from + 1, release_start)
                    level = float(np.median(loudness_db[body_from:body_stop]))
            prev = None if fresh or k == 0 else float(np.median(smooth[onsets[k - 1][0]:start]))
            notes.append(Note(int(start), int(stop), note_midi, level, bool(fresh), prev, release_start, release_stop))
    return notes


def _from_silence(loudness_db, note: Note, frame_ms: float) -> bool:
    """Whether ``note`` begins in silence: its file's loudness stays SILENT_BELOW_DB under the note's level over
    the SILENT_BEFORE_MS before it (a note at the very start of a file counts)."""
    before = np.asarray(loudness_db[max(0, note.start - int(round(SILENT_BEFORE_MS / frame_ms))):note.start])
    return before.size == 0 or float(before.max()) < note.level_db - SILENT_BELOW_DB


def _time_constant_ms(curve: np.ndarray, frame_ms: float) -> float | None:
    """Frames until |curve| first falls below |curve[0]| / e, in ms (None when it never does)."""
    if len(curve) < 2 or curve[0] == 0:
        return None
    below = np.flatnonzero(np.abs(curve) <= abs(curve[0]) / np.e)
    return None if below.size == 0 else max(float(below[0]) * frame_ms, frame_ms)


def _band_oscillation(x: np.ndarray, frame_ms: float) -> tuple[float, float] | None:
    """(rate_hz, amplitude) of the strongest sinusoid in VIBRATO_BAND_HZ of a detrended signal."""
    n = len(x)
    if n < 8:
        return None
    t = np.arange(n)
    x = x - np.polyval(np.polyfit(t, x, 2), t)
    n_fft = max(4096, 1 << int(np.ceil(np.log2(n))))
    spectrum = np.abs(np.fft.rfft(x * np.hanning(n), n_fft))
    freqs = np.fft.rfftfreq(n_fft, frame_ms * 0.001)
    band = (freqs >= VIBRATO_BAND_HZ[0]) & (freqs <= VIBRATO_BAND_HZ[1])
    if not band.any():
        return None
    k = int(np.flatnonzero(band)[np.argmax(spectrum[band])])
    # amplitude of a sinusoid from the Hann-windowed peak (window sum n / 2)
    return float(freqs[k]), float(2.0 * spectrum[k] / (0.5 * n))


def fit_articulation(files: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], frame_ms: float,
                     log=print) -> Articulation:
    """The articulation of a corpus from each file's (f0_hz, voiced, loudness_db) frames."""
    defaults = Articulation()
    notes_per_file = [segment_notes(f0, voiced, ld, frame_ms) for f0, voiced, ld in files]
    notes = [(i, n) for i, ns in enumerate(notes_per_file) for n in ns]
    n_notes = len(notes)
    fit: dict = {}
    if n_notes == 0:
        log("expression: no notes found in the corpus; the engine plays the ADSR envelope")
        return replace(defaults, notes=0, fallback=True)
    grid = int(CURVE_MS / frame_ms)
    levels = np.array([n.level_db for _, n in notes])

    # Level curves relative to the note level, on a common grid, NaN past each note's body.
    def curves(selected):
        out = np.full((len(selected), grid), np.nan)
        for row, (i, note) in enumerate(selected):
            ld = np.asarray(files[i][2], np.float64)
            stop = note.release_start if note.release_start is not None else note.stop
            m = min(grid, stop - note.start)
            out[row, :m] = ld[note.start:note.start + m] - note.level_db
        return out

    fresh = [(i, n) for i, n in notes if n.fresh]
    # The attack as the engine plays it (a fresh voice, the previous one releasing on its own) shows only on
    # notes that begin in silence: after a short rest the recording's onset sits on the previous note's tail
    # (5 dB under the note level on the cello corpus, against 30 dB from silence)
    silent = [(i, n) for i, n in fresh if _from_silence(files[i][2], n, frame_ms)]
    attack_notes = silent if len(silent) >= MIN_ATTACK_NOTES else fresh if len(fresh) >= MIN_ATTACK_NOTES else notes
    c = curves(attack_notes)
    counts = np.sum(np.isfinite(c), axis=0)
    valid = counts >= max(3, len(attack_notes) // 4)
    if valid.sum() >= int(100.0 / frame_ms):
        length = int(np.flatnonzero(valid)[-1]) + 1
        median = np.nanmedian(c[:, :length], axis=0)
        first = max(1, int(round(10.0 / frame_ms)))
        fit["attack_start_db"] = float(np.clip(median[0], -40.0, -1.0))
        look = median[: min(length, int(500.0 / frame_ms))]
        peak_index = int(np.argmax(look))
        peak = float(max(look[peak_index], 0.0))
        reach = np.flatnonzero(look >= min(peak, look[peak_index]) - 1.0)
        attack_index = max(int(reach[0]) if reach.size else peak_index, first)     # where the decay is read
        fit["attack_peak_db"] = float(np.clip(peak, 0.0, 12.0))
        excess = median[attack_index:] - 0.0
        tau = _time_constant_ms(excess[: int(1000.0 / frame_ms)], frame_ms) if fit["attack_peak_db"] > 0.5 else None
        fit["decay_ms"] = float(np.clip(tau if tau else 100.0, 10.0, 2000.0))
        # attack as played: the time, shape and fast part whose curve (held_level_db's, :func:`attack_curves`)
        # has the least L1 against the median over the first ATTACK_FIT_MS. (A rise from silence is steep at
        # first: the time to within 1 dB of the peak and the level half-way there under-read it by 5-6 dB over
        # the first 100 ms on the cello; one shape alone still missed the jump over the first 10-30 ms of the
        # notes that then settle slowly by 4-7 dB on the cello, violin and trumpet, and sat at the grid's edge.)
        window = median[: min(length, int(ATTACK_FIT_MS / frame_ms))]
        fit.update(_fit_attack(window, frame_ms, fit["attack_start_db"], fit["attack_peak_db"], fit["decay_ms"]))
    # Sustain drift, as the engine plays it (a line from 0 dB at the end of the attack, relative to the note
    # level): the slope with the least L1 over the frames past 300 ms of every note's held part. (Each note's
    # own slope, medianed, drifted the level away from the note's median level, which is the reference:
    # 0.4-0.5 dB worse than no drift at all on the 10-minute corpora.)
    t_s, rel = [], []
    t_from = max(fit.get("attack_ms", defaults.attack_ms), 300.0)
    for i, note in notes:
        stop = note.release_start if note.release_start is not None else note.stop
        from_frame = note.start + int(t_from / frame_ms)
        if stop - from_frame >= int(100.0 / frame_ms):
            ld = np.asarray(files[i][2], np.float64)[from_frame:stop]
            t_s.append((np.arange(len(ld)) * frame_ms + t_from - fit.get("attack_ms", defaults.attack_ms)) * 0.001)
            rel.append(ld - note.level_db)
    if len(t_s) >= 3:
        t_s, rel = np.concatenate(t_s), np.concatenate(rel)
        candidates = np.arange(-40.0, 10.0 + 1e-9, 0.25)
        drift = np.clip(candidates[:, None] * t_s[None, :], -defaults.sustain_drift_db, defaults.sustain_drift_db)
        cost = np.abs(rel[None, :] - drift).mean(axis=1)
        fit["sustain_slope_db_per_s"] = float(candidates[int(np.argmin(cost))])
    # Release, as the engine plays it (a fall from the note level at the note-off): the rate (dB per second)
    # with the least L1 over every release, from its start to RELEASE_DEPTH_DB down. (The median of each
    # release's mean rate to that depth missed the steep start of the fall: 2-3x too slow.)
    t_s, rel = [], []
    for i, n in notes:
        if n.release_start is not None and n.release_stop is not None:
            ld = np.asarray(files[i][2], np.float64)[n.release_start:n.release_stop + 1]
            t_s.append(np.arange(1, len(ld) + 1) * frame_ms * 0.001)
            rel.append(ld - n.level_db)
    if t_s:
        t_s, rel = np.concatenate(t_s), np.concatenate(rel)
        candidates = np.geomspace(10.0, 3000.0, 200)
        # each with its own best start offset (the L1 median): the releases begin up to RELEASE_FROM_DB
        # under the note level, and a line held to 0 dB at the start was 40 % too steep to reach them
        fall = rel[None, :] + candidates[:, None] * t_s[None, :]
        cost = np.abs(fall - np.median(fall, axis=1, keepdims=True)).mean(axis=1)
        fit["release_db_per_s"] = float(candidates[int(np.argmin(cost))])
    # Pitch approach into fresh notes: median cents from the note over the first 150 ms.
    n_approach = int(150.0 / frame_ms)
    dev = []
    for i, note in fresh:
        if note.stop - note.start > 2 * n_approach:
            f0 = np.asarray(files[i][0], np.float64)[note.start:note.start + n_approach]
            dev.append(100.0 * (hz_to_midi(f0) - note.midi))
    if len(dev) >= 3:
        approach = np.median(np.array(dev), axis=0)
        fit["approach_cents"] = float(np.clip(approach[0], -200.0, 200.0))
        tau = _time_constant_ms(approach, frame_ms)
        fit["approach_ms"] = float(np.clip(tau if tau else 30.0, 3.0, 500.0))
    # Legato transitions, as the engine plays them (a straight line in pitch from the previous note to the new one
    # over legato_ms): twice the time the pitch takes from a quarter to three quarters of the way. (The time spent
    # over 50 cents from the new note counted the previous note's own frames in its 100 ms look-back: every corpus
    # read 99 ms.)
    glides = [g for i, note in notes if not note.fresh and note.previous_midi is not None
              for g in [_glide_ms(files[i][0], note, frame_ms)] if g is not None]
    if len(glides) >= 3:
        fit["legato_ms"] = float(np.clip(np.median(glides), 3.0, 500.0))
    # Vibrato and tremolo over the bodies of long notes; the onset delay from the depth over time.
    vib, trem = [], []
    skip = int(200.0 / frame_ms)
    for i, note in notes:
        stop = note.release_start if note.release_start is not None else note.stop
        if stop - note.start - skip < int(400.0 / frame_ms):
            continue
        f0 = np.asarray(files[i][0], np.float64)[note.start + skip:stop]
        ld = np.asarray(files[i][2], np.float64)[note.start + skip:stop]
        v = _band_oscillation(100.0 * hz_to_midi(f0), frame_ms)
        t = _band_oscillation(ld, frame_ms)
        if v:
            vib.append(v)
        if t:
            trem.append(t)
    if len(vib) >= 3:
        rate, depth = np.median(np.array(vib), axis=0)
        fit["vibrato_hz"], fit["vibrato_cents"] = float(rate), float(np.clip(depth, 0.0, 100.0))
    if len(trem) >= 3:
        rate, depth = np.median(np.array(trem), axis=0)
        fit["tremolo_hz"], fit["tremolo_db"] = float(rate), float(np.clip(depth, 0.0, 6.0))
    if fit.get("vibrato_cents", 0.0) > 0.0:
        fit["vibrato_delay_ms"] = _vibrato_delay_ms(files, notes, frame_ms, fit["vibrato_hz"])
    # Register: the notes' level against their pitch, a least-squares line over the notes above the softest 2 %
    # (where there are enough notes over enough of a range; the corpus's own velocities, whatever they were, are
    # independent of pitch only on average). Measured: cello 0.20, clarinet 0.17, trumpet 0.16, violin 0.02 dB
    # per semitone on the demo corpora.
    midis = np.array([n.midi for _, n in notes])
    if n_notes >= MIN_NOTES and np.ptp(np.percentile(midis, [5, 95])) >= REGISTER_MIN_SEMITONES:
        upper = levels > np.quantile(levels, 0.02)
        x, y = midis[upper], levels[upper]
        line = np.polyfit(x, y, 1)
        slope = float(line[0])
        # kept where it stands out of its own noise (the notes' levels also vary with how they were played:
        # 40 notes at random velocities gave 0.38 dB per semitone from nothing)
        stderr = float(np.std(y - np.polyval(line, x)) / (np.sqrt(len(x)) * max(float(np.std(x)), 1e-9)))
        if abs(slope) > REGISTER_SIGNIFICANCE * stderr:
            fit["level_db_per_semitone"] = float(np.clip(slope, -REGISTER_MAX_DB, REGISTER_MAX_DB))
            fit["level_reference_midi"] = float(np.median(midis))
            levels = levels - fit["level_db_per_semitone"] * (midis - fit["level_reference_midi"])
    # Velocity -> level: the notes' levels (with the register taken out) at fixed quantiles (non-decreasing by
    # construction). (2nd..98th percentile: one mis-segmented note does not set the softest velocity)
    quantile_levels = np.maximum.accumulate(np.quantile(levels, 0.02 + 0.96 * np.asarray(LEVEL_QUANTILES)))
    if quantile_levels[-1] - quantile_levels[0] < 1.0:          # one dynamic: still a usable velocity range
        quantile_levels = quantile_levels + np.linspace(-6.0, 0.0, len(quantile_levels))
    fit["level_quantiles"] = tuple(float(q) for q in LEVEL_QUANTILES)
    fit["level_db"] = tuple(float(x) for x in quantile_levels)
    fallback = n_notes < MIN_NOTES
    if fallback:
        log(f"expression: only {n_notes} usable notes in the corpus (fewer than {MIN_NOTES}); the articulation "
            f"keeps what could be fitted ({', '.join(sorted(fit)) or 'nothing'}) and defaults for the rest")
    return replace(defaults, notes=n_notes, fallback=fallback, **fit)


def _glide_ms(f0_hz: np.ndarray, note: Note, frame_ms: float, around_ms: float = 150.0) -> float | None:
    """A legato transition's glide time as a straight line would take it: twice the time from a quarter to three
    quarters of the way from ``note.previous_midi`` to ``note.midi`` within ``around_ms`` of the note's start;
    None where the pitch does not make the crossing there (unvoiced, or back and forth)."""
    around = int(round(around_ms / frame_ms))
    f0 = np.asarray(f0_hz, np.float64)[max(note.start - around, 0):note.start + around]
    with np.errstate(divide="ignore", invalid="ignore"):
        way = (hz_to_midi(np.where(f0 > 0.0, f0, np.nan)) - note.previous_midi) / (note.midi - note.previous_midi)
    past_quarter = np.flatnonzero(way > 0.25)
    if not past_quarter.size:
        return None
    first = int(past_quarter[0])
    arrived = np.flatnonzero(way[first:] >= 0.75)
    if not arrived.size or np.isnan(way[first:first + int(arrived[0]) + 1]).any():
        return None
    return 2.0 * max(int(arrived[0]), 0.5) * frame_ms


ATTACK_GRID_MS = np.geomspace(10.0, 2000.0, 47)
ATTACK_GRID_SHAPES = np.geomspace(0.3, 30.0, 41)
ATTACK_GRID_FAST = ((0.0, 1.0),) + tuple((round(float(w), 1), float(s)) for w in np.arange(0.1, 0.95, 0.1)
                                         for s in np.geomspace(1.0, 300.0, 16))


def attack_curves(t_ms: np.ndarray, start_db: float, peak_db: float, decay_ms: float, attack_ms, shape,
                  fast_fraction=0.0, fast_shape=1.0) -> np.ndarray:
    """:func:`instrument.engine.expression.held_level_db` without sustain drift, vectorised: the level at times
    ``t_ms`` (last axis) for attack parameters that broadcast against each other (leading axes)."""
    t = np.asarray(t_ms, np.float64)
    attack_ms = np.asarray(attack_ms, np.float64)[..., None]
    u = np.clip(np.maximum(t, 0.0) / attack_ms, 0.0, 1.0)
    fast = np.asarray(fast_fraction, np.float64)[..., None]
    to_go = (1.0 - fast) * (1.0 - u) ** np.asarray(shape, np.float64)[..., None] \
        + fast * (1.0 - u) ** np.asarray(fast_shape, np.float64)[..., None]
    rising = start_db + (peak_db - start_db) * (1.0 - to_go)
    decaying = peak_db * np.exp(-np.maximum(t - attack_ms, 0.0) / decay_ms)
    return np.where(t < attack_ms, rising, decaying)


def _fit_attack(window: np.ndarray, frame_ms: float, start_db: float, peak_db: float, decay_ms: float) -> dict:
    """The attack (time, shape, fast part) on ATTACK_GRID_* with the least mean |played - window|, ``window``
    the median level curve from the note-on; ties keep the one-part attack, then the shorter time."""
    t_ms = np.arange(len(window)) * frame_ms
    times, shapes = ATTACK_GRID_MS[:, None], ATTACK_GRID_SHAPES[None, :]
    best = None
    for fast_fraction, fast_shape in ATTACK_GRID_FAST:
        played = attack_curves(t_ms, start_db, peak_db, decay_ms, times, shapes, fast_fraction, fast_shape)
        cost = np.mean(np.abs(played - window), axis=-1)
        k = np.unravel_index(int(np.argmin(cost)), cost.shape)
        if best is None or cost[k] < best[0] - 1e-9:
            best = (float(cost[k]), float(ATTACK_GRID_MS[k[0]]), float(ATTACK_GRID_SHAPES[k[1]]), fast_fraction,
                    fast_shape)
    return {"attack_ms": best[1], "attack_shape": best[2], "attack_fast_fraction": best[3],
            "attack_fast_shape": best[4]}


def _vibrato_delay_ms(files, notes, frame_ms: float, rate_hz: float) -> float:
    """When the pitch wobble (std of detrended cents over one vibrato period) reaches half its late value."""
    period = max(3, int(round(1000.0 / rate_hz / frame_ms)))
    horizon = int(1200.0 / frame_ms)
    rows = []
    for i, note in notes:
        stop = note.release_start if note.release_start is not None else note.stop
        if stop - note.start < horizon:
            continue
        cents = 100.0 * hz_to_midi(np.asarray(files[i][0], np.float64)[note.start:note.start + horizon])
        windows = np.lib.stride_tricks.sliding_window_view(cents, period)[::max(1, period // 2)]
        rows.append(windows.std(axis=1))
    if len(rows) < 3:
        return 200.0
    wobble = np.median(np.array(rows), axis=0)
    late = np.median(wobble[len(wobble) // 2:])
    reach = np.flatnonzero(wobble[1:] >= 0.5 * late)      # the first window holds the approach
    hop_ms = max(1, period // 2) * frame_ms
    return float(np.clip((reach[0] + 1) * hop_ms if reach.size else 200.0, 0.0, 1500.0))


def corpus_articulation(examples: Sequence, frame_ms: float, log=print) -> Articulation:
    """:func:`fit_articulation` over training examples (objects with ``features``: f0_hz, voiced, loudness_db)."""
    return fit_articulation([(e.features.f0_hz, e.features.voiced, e.features.loudness_db) for e in examples],
                            frame_ms, log=log)


CALIBRATION_STEP_SEMITONES = 3.0     # per-pitch level calibration: a row every minor third over the corpus's range


def calibration_pitches(f0_range_hz: tuple[float, float] | None) -> tuple[float, ...]:
    """MIDI pitches a row apart by CALIBRATION_STEP_SEMITONES over ``f0_range_hz`` (ends included); () without one."""
    if not f0_range_hz:
        return ()
    lo, hi = (float(hz_to_midi(max(f, 1.0))) for f in f0_range_hz)
    if hi - lo < 1.0:
        return ()
    steps = max(1, int(np.ceil((hi - lo) / CALIBRATION_STEP_SEMITONES)))
    return tuple(float(x) for x in np.linspace(lo, hi, steps + 1))


CALIBRATION_BELOW_DB = 30.0         # the per-pitch calibration reaches this far under the softest notes (tails)
CALIBRATION_LEVEL_STEP_DB = 3.0


def calibration_levels(art: Articulation, pitches_midi: Sequence[float] = ()) -> tuple[float, ...]:
    """Output levels of the per-pitch calibration, CALIBRATION_LEVEL_STEP_DB apart through the corpus's loudest
    note level, covering CALIBRATION_BELOW_DB under its softest note level to the level of velocity 127
    (:func:`velocity_output_db`), each with the register at the lowest / highest of ``pitches_midi``."""
    register = [register_db(art, p) for p in pitches_midi] or [0.0]
    lo = art.level_db[0] + min(min(register), 0.0) - CALIBRATION_BELOW_DB
    hi = velocity_output_db(art, 127.0) + max(max(register), 0.0)
    top, step = art.level_db[-1], CALIBRATION_LEVEL_STEP_DB       # a row at the loudest note level itself
    return tuple(float(top + k * step) for k in range(int(np.floor((lo - top) / step)),
                                                      int(np.ceil((hi - top) / step - 1e-9)) + 1))


def _measured_inputs(targets, decoder, f0_hz: float, z: np.ndarray, step_db: float,
                     seconds: float) -> tuple[float, ...] | None:
    """The decoder inputs that make ``decoder`` sound at the output levels ``targets`` (dB, rising) on a note
    held at ``f0_hz``: held notes rendered at inputs ``step_db`` apart, measured with the A-weighted loudness
    the corpus was measured with, inverted by interpolation."""
    from instrument.model.offline import render_controls
    from training.features import a_weighted_loudness_db

    c = decoder.config
    n = int(seconds * c.sample_rate / c.hop_size) + 1
    inputs = np.arange(targets[0] - 24.0, targets[-1] + 24.0 + step_db, step_db)
    outputs = []
    for level in inputs:
        audio = render_controls(decoder, np.full(n, f0_hz, np.float32), np.full(n, level, np.float32),
                                np.asarray(z, np.float32), seed=0)
        ld = a_weighted_loudness_db(audio, c.sample_rate, c.hop_size, 2048)
        outputs.append(float(np.median(ld[len(ld) // 2:])))
    outputs = np.maximum.accumulate(np.asarray(outputs))
    keep = np.concatenate([[True], np.diff(outputs) > 1e-3])        # strictly rising for the inversion
    if keep.sum() < 2:
        return None
    wanted = np.interp(targets, outputs[keep], inputs[keep])
    return tuple(float(x) for x in np.maximum.accumulate(wanted))


def calibrate_levels(art: Articulation, decoder, f0_hz: float, z: np.ndarray, step_db: float = 3.0,
                     seconds: float = 0.6, f0_range_hz: tuple[float, float] | None = None) -> Articulation:
    """The articulation with ``level_input_db``: the decoder inputs that make ``decoder`` sound at the corpus's note
    levels at ``f0_hz`` and latent ``z``, measured on held notes (:func:`_measured_inputs`), or read from the
    per-pitch table below where there is one. A model that renders quieter or louder than its input (a short
    training) then still plays notes at the recordings' levels. With ``f0_range_hz`` the same is measured at each of
    :func:`calibration_pitches`, at the output levels :func:`calibration_levels` (``level_input_by_pitch_db``): a
    decoder's level at a given input drifts by 4-7 dB over three octaves (10-minute models), and falls faster than
    its input in a release tail; the engine maps every frame through it."""
    art = replace(art, level_input_db=(), calibration_midi=(), calibration_level_db=(), level_input_by_pitch_db=())
    pitches = calibration_pitches(f0_range_hz)
    levels = calibration_levels(art, pitches)
    rows = [_measured_inputs(levels, decoder, float(midi_to_hz(p)), z, step_db, seconds) for p in pitches]
    if pitches and all(r is not None for r in rows):
        table = replace(art, calibration_midi=pitches, calibration_level_db=levels,
                        level_input_by_pitch_db=tuple(x for r in rows for x in r))
        # the one-pitch row (files and callers without a pitch) read from the table, not measured again
        midi = float(hz_to_midi(f0_hz))
        row = np.maximum.accumulate([output_input_db(table, level, midi) for level in art.level_db])
        return replace(table, level_input_db=tuple(float(x) for x in row))
    row = _measured_inputs(art.level_db, decoder, f0_hz, z, step_db, seconds)
    return art if row is None else replace(art, level_input_db=row)
