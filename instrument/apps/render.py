"""Offline rendering: the live engine run over a MIDI file, block by block, faster than real time.

``sdga-render MODEL --midi in.mid -o out.wav [--sample-rate SR] [--block-size N] [--latent NAME=0..1]``

The output is aligned with the MIDI file (the engine's one-frame control delay is trimmed) and runs until
the last release has faded. Because the engine is block-size independent, the file is the same sample for
sample as what the instrument plays live.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from instrument.model.bundle import ModelBundle, load_bundle, parse_latent_knobs
from instrument.engine.engine import Engine
from instrument.engine.events import Event, LatentSet, ParamSet, from_mido, param_event, with_offset
from instrument.model.modelfile import ModelFileError

__all__ = ["midi_file_events", "render_events", "render_midi", "parse_assignments", "main"]


def midi_file_events(midi, sample_rate: int, mpe=None) -> tuple[list[tuple[int, Event]], int]:
    """(absolute sample, event) for every message of a MIDI file the engine uses, and the file's length in
    samples. ``midi`` is a path or a mido.MidiFile; tempo changes are honoured (mido converts to seconds).
    MPE data (a configuration message, member channels' bend, pressure and CC 74) is decoded as sdga-play does
    (an :class:`~instrument.controls.mpe.MpeInput`, given or new)."""
    import mido

    from instrument.controls.mpe import MpeInput

    mpe = mpe if mpe is not None else MpeInput()

    midi_file = midi if isinstance(midi, mido.MidiFile) else mido.MidiFile(str(midi))
    events: list[tuple[int, Event]] = []
    seconds = 0.0
    for message in midi_file:               # merged tracks, .time = delta seconds
        seconds += message.time
        if message.is_meta:
            continue
        sample = int(round(seconds * sample_rate))
        decoded = mpe.message(message)
        if decoded is not None:
            events += [(sample, event) for event in decoded]
            continue
        event = from_mido(message)
        if event is not None:
            events.append((sample, event))
    return events, int(round(seconds * sample_rate))


def render_events(engine: Engine, events: Sequence[tuple[int, Event]], n_samples: int,
                  block_size: int | None = None) -> np.ndarray:
    """Run a prepared engine over timed events for ``n_samples`` output samples aligned with the events
    (the control delay is rendered and trimmed). Events must be sorted by sample."""
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


def render_midi(bundle: ModelBundle, midi, sample_rate: int | None = None, block_size: int = 512,
                max_voices: int = 8, initial_events: Iterable[Event] = (), tail_seconds: float | None = None,
                noise_seed: int = 0) -> tuple[np.ndarray, Engine]:
    """Render a MIDI file; returns (mono float32 audio, the engine, for its stats). ``initial_events``
    (latents, parameters) apply before the first note. The tail defaults to the release time (the learnt one where the model has it) + 0.25 s."""
    engine = Engine(bundle, noise_seed=noise_seed)
    engine.prepare(sample_rate, block_size, max_voices)
    sr = engine.sample_rate
    from instrument.controls.mpe import MpeInput

    initial_events = list(initial_events)
    mpe = MpeInput()
    mpe.track(initial_events)                # --mpe / --param mpe_zone=...: the file's member channels are MPE
    events, length = midi_file_events(midi, sr, mpe)
    initial = [(0, e) for e in initial_events]
    for _, event in initial:                 # parameters that set the tail length must be known now
        if isinstance(event, ParamSet):
            engine.set_param(event.param, event.value)
    if tail_seconds is None:
        tail_seconds = engine.voices.release_seconds + 0.25    # the envelope's or the learnt release
    audio = render_events(engine, initial + events, length + int(round(tail_seconds * sr)), block_size)
    return audio, engine


def parse_assignments(items: Sequence[str], what: str) -> list[tuple[str, float]]:
    """["name=0.5", ...] -> [("name", 0.5), ...]; raises ValueError naming ``what`` on a malformed item."""
    parsed = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--{what} expects NAME=VALUE, got {item!r}")
        try:
            parsed.append((name.strip(), float(value)))
        except ValueError:
            raise ValueError(f"--{what} {item!r}: {value!r} is not a number") from None
    return parsed


def _midi_error(path: Path, exc: Exception) -> str:
    """Why a MIDI file could not be read, in words (mido's EOFError has no message)."""
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        return "the file is empty (0 bytes)"
    if isinstance(exc, EOFError):
        return f"the file ends early ({size} bytes: truncated, or not a Standard MIDI File)"
    return str(exc) or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdga-render", description="Render a MIDI file with an sdga model (offline, "
                                "same engine as the live instrument).")
    p.add_argument("model", type=Path, help="model file (.sdga)")
    p.add_argument("--midi", type=Path, required=True, help="input MIDI file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output WAV/FLAC file")
    p.add_argument("--sample-rate", type=int, default=None, help="output rate (default: the model's)")
    p.add_argument("--block-size", type=int, default=512, help="engine block size (the result does not depend on it)")
    p.add_argument("--voices", type=int, default=8, help="polyphony")
    p.add_argument("--latent", action="append", default=[], metavar="NAME=KNOB",
                   help="set a latent (name or importance rank) to a 0..1 knob value; repeatable")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set an engine parameter in its unit (e.g. release_ms=500); repeatable")
    p.add_argument("--scale", type=Path, default=None, metavar="FILE.scl",
                   help="play the keys in a Scala scale (concert pitch: --param tuning_a4_hz=442)")
    p.add_argument("--keyboard-map", type=Path, default=None, metavar="FILE.kbm",
                   help="a Scala keyboard map for --scale (default: degree 0 on key 60, key 69 at 440 Hz)")
    p.add_argument("--mpe", choices=("lower", "upper"), default=None,
                   help="the file is MPE (each note on its own channel; a file holding the MPE configuration "
                   "message needs no flag)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    try:
        bundle = load_bundle(args.model, with_encoder=False)
    except (ModelFileError, OSError) as exc:
        print(f"sdga-render: {exc}", file=sys.stderr)
        return 2
    try:
        initial: list[Event] = [LatentSet(info.index, knob, knob=True)
                                 for info, knob in parse_latent_knobs(bundle, args.latent)]
        if args.mpe:
            initial.append(param_event("mpe_zone", args.mpe))
        initial += [param_event(name, value) for name, value in parse_assignments(args.param, "param")]
        if args.keyboard_map is not None and args.scale is None:
            raise ValueError("--keyboard-map needs --scale")
        if args.scale is not None:
            from instrument.engine.events import TuningSet
            from instrument.engine.tuning import read_tuning
            initial.append(TuningSet(read_tuning(args.scale, args.keyboard_map)))
        if args.block_size < 1 or args.voices < 1 or (args.sample_rate is not None and args.sample_rate < 1000):
            raise ValueError("--block-size and --voices must be >= 1, --sample-rate >= 1000")
    except (ValueError, KeyError, IndexError) as exc:
        print(f"sdga-render: {exc}", file=sys.stderr)
        return 2
    if not args.midi.is_file():
        print(f"sdga-render: no MIDI file {args.midi}", file=sys.stderr)
        return 2
    import soundfile as sf

    started = time.perf_counter()
    import mido
    from instrument.engine.events import NoteOn

    try:
        midi = mido.MidiFile(str(args.midi))
        notes = sum(isinstance(e, NoteOn) and e.velocity > 0 for _, e in midi_file_events(midi, 1000)[0])
    except (OSError, ValueError, EOFError, KeyError, IndexError) as exc:   # unreadable MIDI
        print(f"sdga-render: cannot read {args.midi}: {_midi_error(args.midi, exc)}", file=sys.stderr)
        return 2
    if notes == 0:
        print(f"sdga-render: warning: {args.midi} has no notes (no note-on with velocity > 0): the output is "
              f"silence", file=sys.stderr)
    audio, engine = render_midi(bundle, midi, args.sample_rate, args.block_size, args.voices, initial,
                                noise_seed=args.seed)
    elapsed = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(args.output), audio, engine.sample_rate, subtype="PCM_24" if args.output.suffix.lower() in
             (".wav", ".flac") else None)
    seconds = len(audio) / engine.sample_rate
    voices, stats = engine.voices, engine.stats
    print(f"{args.output}: {seconds:.2f} s at {engine.sample_rate} Hz, rendered in {elapsed:.2f} s "
          f"({seconds / max(elapsed, 1e-9):.1f}x real time); peak {float(np.abs(audio).max(initial=0.0)):.3f}")
    if voices.out_of_range_notes:
        lo, hi = engine.f0_range_hz
        print(f"note: {voices.out_of_range_notes} note(s) outside the model's pitch range {lo:.0f}-{hi:.0f} Hz "
              f"(last: MIDI {voices.last_out_of_range_note:g}); they were played anyway")
    if voices.steals:
        print(f"note: {voices.steals} voice(s) stolen (more than {engine.max_voices} notes at once)")
    if stats.errors or stats.voice_resets:
        print(f"warning: {stats.errors} engine error(s), {stats.voice_resets} voice reset(s); last: {stats.last_error}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
