"""Hear the knobs: one short phrase per offered knob, played through the live engine with that knob swept
0 -> 1 -> 0 over the phrase (the others at the corpus mean), and the same phrase with no knob moving.

``sdga-info MODEL --audition DIR`` writes ``NN-<name>.wav`` (NN: the knob's rank, the number MIDI, OSC and
patches address it by), ``reference.wav`` and ``index.txt`` saying what each file is. The phrase is a few
notes inside the corpus's pitch range; the engine (:class:`instrument.engine.engine.Engine`, with the model's
learnt expression where it has one) renders it block by block, as ``sdga-render`` does, and the knob moves by
``LatentSet`` events once per control frame, as a knob on a controller would.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.knob_curves import corpus_band, offered_knobs

__all__ = ["PHRASE_SECONDS", "PHRASE_VELOCITY", "Audition", "phrase_notes", "phrase_events", "knob_sweep",
           "play_events", "render_phrase", "write_audition"]

PHRASE_SECONDS = 6.0
PHRASE_VELOCITY = 96
PHRASE_SHAPE = (0.2, 0.45, 0.7, 0.45, 0.2, 0.55)     # where each note sits in the corpus's pitch range (log)
NOTE_FRACTION = 0.85                                 # a note is held this fraction of its slot, then released


def phrase_notes(bundle, shape: Sequence[float] = PHRASE_SHAPE) -> list[int]:
    """MIDI notes inside the corpus's pitch range (its 1st..99th percentile), at ``shape`` fractions of it
    (log frequency), rounded to the nearest key that stays inside."""
    lo_hz, hi_hz = bundle.f0_range_hz()
    lo = math.ceil(69.0 + 12.0 * math.log2(lo_hz / 440.0))
    hi = max(lo, math.floor(69.0 + 12.0 * math.log2(hi_hz / 440.0)))
    return [int(min(hi, max(lo, round(lo + (hi - lo) * f)))) for f in shape]


def knob_sweep(t_s: np.ndarray | float, seconds: float) -> np.ndarray:
    """The knob position at ``t_s`` of a ``seconds`` phrase: 0 at the start and the end, 1 in the middle."""
    u = np.clip(np.asarray(t_s, np.float64) / seconds, 0.0, 1.0)
    return 1.0 - np.abs(2.0 * u - 1.0)


def phrase_events(notes: Sequence[int], seconds: float, sample_rate: int, velocity: int = PHRASE_VELOCITY,
                  latent_index: int | None = None, knob_every: int = 128) -> list[tuple[int, object]]:
    """(sample, event) of the phrase, sorted: the notes in equal slots, each held ``NOTE_FRACTION`` of its
    slot; with ``latent_index``, a knob event for that latent every ``knob_every`` samples (the sweep)."""
    from instrument.engine.events import LatentSet, NoteOff, NoteOn

    total = int(round(seconds * sample_rate))
    slot = total / max(1, len(notes))
    events: list[tuple[int, int, object]] = []
    for i, note in enumerate(notes):
        on = int(round(i * slot))
        off = int(round((i + NOTE_FRACTION) * slot))
        events.append((on, 1, NoteOn(int(note), int(velocity))))
        events.append((off, 0, NoteOff(int(note))))
    if latent_index is not None:
        for sample in range(0, total + 1, knob_every):
            knob = float(knob_sweep(sample / sample_rate, seconds))
            events.append((sample, 2, LatentSet(int(latent_index), knob, knob=True)))
    # at one sample: note-offs before note-ons (a repeated key re-strikes), the knob before both sound
    events.sort(key=lambda e: (e[0], -1 if e[1] == 2 else e[1]))
    return [(sample, event) for sample, _, event in events]


def play_events(engine, events: Sequence[tuple[int, object]], n_samples: int, block_size: int | None = None,
                ) -> np.ndarray:
    """A prepared engine over timed events for ``n_samples`` output samples aligned with the events (the one
    control frame of delay is rendered and trimmed), block by block as the audio callback calls it."""
    from instrument.engine.events import with_offset

    block = int(block_size or engine.block_size)
    delay = engine.control_delay_samples
    total = n_samples + delay
    out = np.zeros(total, dtype=np.float32)
    k = 0
    for start in range(0, total, block):
        stop = min(total, start + block)
        block_events = []
        while k < len(events) and events[k][0] < stop:
            sample, event = events[k]
            block_events.append(with_offset(event, max(0, sample - start)))
            k += 1
        engine.process(block_events, out[start:stop])
    return out[delay:]


def render_phrase(bundle, latent=None, seconds: float = PHRASE_SECONDS, notes: Sequence[int] | None = None,
                  sample_rate: int | None = None, block_size: int = 256, seed: int = 0, fixed_knob: float | None = None,
                  ) -> np.ndarray:
    """The phrase through a fresh engine: ``latent`` (a LatentInfo) swept 0 -> 1 -> 0, or held at
    ``fixed_knob`` when given; None: every knob at its default. Exactly ``seconds`` long, mono float32."""
    from instrument.engine.engine import Engine
    from instrument.engine.events import LatentSet

    engine = Engine(bundle, noise_seed=seed)
    engine.prepare(sample_rate, block_size, 8)
    sr = engine.sample_rate
    notes = list(notes) if notes is not None else phrase_notes(bundle)
    sweep = latent is not None and fixed_knob is None
    events = phrase_events(notes, seconds, sr, latent_index=latent.index if sweep else None,
                           knob_every=engine.hop_size)
    if latent is not None and fixed_knob is not None:
        events = [(0, LatentSet(latent.index, float(fixed_knob), knob=True))] + events
    return play_events(engine, events, int(round(seconds * sr)), block_size)


@dataclass(frozen=True)
class Audition:
    """What ``write_audition`` wrote: the folder, each file with what it is, and the index."""

    folder: Path
    files: tuple[tuple[Path, str], ...]
    index: Path


def _file_stem(rank: int, name: str) -> str:
    return f"{rank:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name) or 'knob'}"


def _write_atomic(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """A WAV written beside its place and renamed onto it: an interrupted run leaves no half file."""
    import soundfile as sf

    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, audio, sample_rate, subtype="PCM_24")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_audition(bundle, folder: Path | str, seconds: float = PHRASE_SECONDS, sample_rate: int | None = None,
                   model_name: str = "", log=print) -> Audition:
    """Write the reference phrase, one swept phrase per offered knob and ``index.txt`` into ``folder``
    (created). Raises OSError (with the folder in its message) when the folder cannot be made or written,
    before any audio is rendered; ValueError on a phrase shorter than 1 s."""
    if not seconds >= 1.0 or not math.isfinite(seconds):
        raise ValueError(f"an audition phrase needs at least 1 s, got {seconds}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".sdga-write-test.", delete=True)
        probe.close()
    except OSError as exc:
        raise OSError(f"cannot write the audition to {folder}: {exc.strerror or exc}") from exc
    notes = phrase_notes(bundle)
    knobs = offered_knobs(bundle)
    ranks = {id(info): rank for rank, info in enumerate(bundle.latents)}
    sr = int(sample_rate or bundle.config.sample_rate)
    written: list[tuple[Path, str]] = []
    reference = folder / "reference.wav"
    _write_atomic(reference, render_phrase(bundle, None, seconds, notes, sr), sr)
    written.append((reference, "the phrase with every knob at its default (the corpus mean): compare with it"))
    log(f"  {reference.name}")
    for info in knobs:
        path = folder / f"{_file_stem(ranks[id(info)], info.name)}.wav"
        low, high = corpus_band(info)
        _write_atomic(path, render_phrase(bundle, info, seconds, notes, sr), sr)
        band = "" if (low, high) == (0.0, 1.0) else f"; the corpus spans knob {low:.2f}..{high:.2f}"
        written.append((path, f"knob {ranks[id(info)]} '{info.name}' (z{info.index}) swept 0 -> 1 -> 0: 0 at "
                              f"0 s, 1 at {seconds / 2:g} s, 0 at {seconds:g} s (z {info.low:+.2f} .. "
                              f"{info.high:+.2f}){band}; the other knobs at their default"))
        log(f"  {path.name}")
    names = " ".join(_midi_name(n) for n in notes)
    lines = [f"sdga-info --audition{' of ' + model_name if model_name else ''}",
             f"phrase: {len(notes)} notes ({names}), velocity {PHRASE_VELOCITY}, {seconds:g} s at {sr} Hz, "
             f"played through the live engine ({'learnt expression' if bundle.expression is not None else 'ADSR envelope'})",
             ""]
    lines += [f"{path.name}: {what}" for path, what in written]
    if not knobs:
        lines.append("(this model offers no knob: no latent is active)")
    index = folder / "index.txt"
    tmp = index.with_name(".index.txt.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, index)
    return Audition(folder, tuple(written), index)


def _midi_name(note: int) -> str:
    return ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"][note % 12] + str(note // 12 - 1)
