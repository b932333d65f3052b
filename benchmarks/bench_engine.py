"""Engine callback cost and note-on delay.

    .venv/bin/python benchmarks/bench_engine.py [MODEL.sdga] [--blocks 64 128 256 512] [--voices 1 4 8 16]
                                                [--seconds 2] [--sample-rate 48000] [--repeats 1]

For every block size x voice count: prepare an engine with that many voices, hold that many notes, and time
``process`` per block (one torch thread, as in the live instrument). Reports median and p99 compute time as
a percentage of the block's real-time budget (block / sample rate). With blocks shorter than a control
frame (hop, 128 samples at 48 kHz) only some blocks render a frame, so their median is low and p99 is the
frame's cost; the mean is the sustained load. Then measures the note-on -> first-sample delay from rendered audio.

Without a model file an untrained model of the default architecture is used (same cost as a trained one).
Timings depend on what else the machine runs: the load average is printed with the table, and
``--repeats N`` measures every cell N times (fresh engines) and prints the median of each statistic.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.model.bundle import load_bundle, random_bundle  # noqa: E402
from instrument.engine.engine import Engine  # noqa: E402
from instrument.engine.events import ChannelPressure, ChannelTimbre, LatentSet, NoteOn, PitchBend  # noqa: E402


def time_blocks(bundle, sample_rate: int, block: int, voices: int, seconds: float, notes: int | None = None,
                moving: bool = False, ramp: bool = False, mpe: bool = False) -> np.ndarray:
    """process() times with ``notes`` (default: ``voices``) held notes; ``moving``: a pitch-bend LFO
    changes every voice's inputs every block (the decoder's full path on every frame); ``ramp``: a latent
    changes every block (as under a mapping's smoothing ramp or a fader move); ``mpe``: every note on its own
    MPE member channel, each with its own bend, pressure (loudness and latent 1) and CC 74 (latent 0) moving
    every block (every voice's own latents recomputed every frame: MPE's worst case)."""
    engine = Engine(bundle)
    engine.prepare(sample_rate, block, voices)
    out = np.zeros(block, dtype=np.float32)
    n_notes = voices if notes is None else notes
    if mpe:
        for name, value in (("mpe_zone", 1), ("mpe_pressure_latent", 1)):
            engine.set_param(name, value)
    engine.process([NoteOn(48 + (7 * k) % 36, 100, 1 + k % 15 if mpe else 0) for k in range(n_notes)], out)
    for _ in range(max(20, int(0.3 * sample_rate / block))):          # warm-up (past the decay)
        engine.process((), out)
    n_blocks = max(200, int(seconds * sample_rate / block))
    bends = [([PitchBend(0.2 * math.sin(2 * math.pi * 5 * k * block / sample_rate))] if moving else [])
             + ([LatentSet(0, 0.5 + 0.4 * math.sin(2 * math.pi * k * block / sample_rate), knob=True)] if ramp else [])
             for k in range(n_blocks)]
    if mpe:
        for k in range(n_blocks):
            for v in range(n_notes):
                x = 0.5 + 0.4 * math.sin(2 * math.pi * (k * block / sample_rate + v / 7))
                bends[k] += [PitchBend(0.01 * (x - 0.5), 1 + v % 15), ChannelPressure(x, 1 + v % 15),
                             ChannelTimbre(1.0 - x, 1 + v % 15)]
    times = np.empty(n_blocks)
    perf = time.perf_counter
    for k in range(n_blocks):
        events = bends[k]
        t0 = perf()
        engine.process(events, out)
        times[k] = perf() - t0
    if engine.stats.errors:
        raise RuntimeError(engine.stats.last_error)
    return times


def note_on_delay(bundle, sample_rate: int, block: int) -> list[int]:
    """Samples from each note-on's sample to the first non-zero output sample, for a few offsets."""
    delays = []
    for offset in (0, 1, block // 3, block - 1):
        engine = Engine(bundle)
        engine.prepare(sample_rate, block, 1)
        n_blocks = 4 + 2 * engine.hop_size // block
        out = np.zeros(n_blocks * block, dtype=np.float32)
        for k in range(n_blocks):
            events = [NoteOn(60, 100, offset=offset)] if k == 1 else []
            engine.process(events, out[k * block:(k + 1) * block])
        nonzero = np.flatnonzero(out)
        delays.append(int(nonzero[0]) - (block + offset) if nonzero.size else -1)
    return delays


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", type=Path, help="model file (default: untrained model)")
    p.add_argument("--blocks", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--voices", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=2.0, help="audio time per cell")
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--repeats", type=int, default=1, help="measure every cell this many times; report medians")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_bundle(args.model, with_encoder=False) if args.model else random_bundle()
    sr = args.sample_rate
    print(f"sdga engine benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} (1 thread), {sr} Hz, model {'untrained' if args.model is None else args.model}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    header = "block (ms)      " + "".join(f"{v:>4} voice{'s' if v > 1 else ' '}            " for v in args.voices)

    def cell(measure, budget: float) -> str:
        runs = [measure() for _ in range(max(1, args.repeats))]
        stats = [np.median([f(t) for t in runs]) for f in (np.median, lambda t: np.percentile(t, 99), np.mean)]
        return " /".join(f"{100 * s / budget:5.1f}" for s in stats)

    print("\ncompute time per process() call as % of the block's real-time budget: median / p99 / mean")
    print("A. every voice holds a note (sustained)")
    print(header)
    for block in args.blocks:
        budget = block / sr
        cells = [cell(lambda: time_blocks(bundle, sr, block, v, args.seconds), budget) for v in args.voices]
        print(f"{block:5d} ({1000 * budget:5.2f}) " + "".join(f"{c:>23}" for c in cells))
    print("B. same, with a 5 Hz pitch-bend vibrato (inputs change every frame: no decoder caching)")
    print(header)
    for block in args.blocks:
        budget = block / sr
        cells = [cell(lambda: time_blocks(bundle, sr, block, v, args.seconds, moving=True), budget)
                 for v in args.voices]
        print(f"{block:5d} ({1000 * budget:5.2f}) " + "".join(f"{c:>23}" for c in cells))
    block = 128
    budget = block / sr
    print(f"C. {max(args.voices)}-voice engine, block {block}: "
          f"1 note {cell(lambda: time_blocks(bundle, sr, block, max(args.voices), args.seconds, notes=1), budget)}; "
          f"silence {cell(lambda: time_blocks(bundle, sr, block, max(args.voices), args.seconds, notes=0), budget)}")
    print(f"D. block {block}, a latent moving every block (a fader or a smoothing ramp), held notes: " + "; ".join(
        f"{v} voice{'s' if v > 1 else ''} {cell(lambda: time_blocks(bundle, sr, block, v, args.seconds, ramp=True), budget)}"
        for v in args.voices))
    print(f"E. block {block}, MPE: every note's own bend, pressure and CC 74 moving every block: " + "; ".join(
        f"{v} voice{'s' if v > 1 else ''} {cell(lambda: time_blocks(bundle, sr, block, v, args.seconds, mpe=True), budget)}"
        for v in args.voices))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    engine = Engine(bundle)
    engine.prepare(sr, 128, 1)
    print(f"\nnote-on -> first sample (from rendered audio; hop = {engine.hop_size} samples):")
    for block in args.blocks:
        delays = note_on_delay(bundle, sr, block)
        print(f"  block {block:4d}: engine delay {sorted(set(delays))} samples = {1000 * max(delays) / sr:.2f} ms; "
              f"with the host's block buffering, latency = {block + max(delays)} samples = "
              f"{1000 * (block + max(delays)) / sr:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
