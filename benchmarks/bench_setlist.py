"""Set list: start-up time and memory per song, and the callback's cost during a crossfade (two engines).

    .venv/bin/python benchmarks/bench_setlist.py [MODEL.sdga ...] [--songs 4] [--block 128] [--voices 8]
                                                 [--crossfade-ms 50] [--seconds 3] [--repeats 3] [--threads 1]

A. What ``sdga-play --set`` does per song before the first block, timed and with the process's resident memory
   (VmRSS) before and after: load the model file; warm up (kernels compiled: the first song pays numba's JIT)
   and prepare its engine at the block size and voice count. Without model files, ``--songs`` untrained models
   of the default architecture are written to a temporary folder (same size and cost as trained ones).
B. ``SetEngine.process`` time per block as % of the block's real-time budget (median / p99 / mean; wall clock
   and the thread's CPU time, which a loaded machine's scheduling does not inflate), with every
   engine holding ``--voices`` notes: (1) steady, one song heard: the baseline; (2) crossfading: a switch every
   fade, so both engines render and mix on every block measured (only the blocks where two are heard count);
   (3) a plain Engine with the same notes, for reference. The three are measured in turn ``--repeats`` times
   (fresh engines each time) and the medians of each statistic printed, with the load average.
C. Switch timing, by construction: a switch lands at the next block's start; the crossfade lasts crossfade_ms.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.apps.session import _rss_mb  # noqa: E402
from instrument.engine.engine import Engine  # noqa: E402
from instrument.engine.events import NoteOn, SongSelect  # noqa: E402
from instrument.engine.setlist import SetEngine  # noqa: E402
from instrument.model.bundle import load_bundle, random_bundle, save_bundle  # noqa: E402


def warm_up(bundle, sample_rate: int, block: int, voices: int) -> None:
    """As sdga-play's: render a little on a throwaway engine (numba compiles on the first)."""
    engine = Engine(bundle)
    engine.prepare(sample_rate, block, voices)
    out = np.zeros(block, dtype=np.float32)
    engine.process([NoteOn(60, 100)], out)
    for _ in range(max(8, 4096 // block)):
        engine.process((), out)


def chords(voices: int) -> list:
    return [NoteOn(48 + (7 * k) % 36, 100) for k in range(voices)]


def time_set(bundles, sample_rate: int, block: int, voices: int, crossfade_ms: float, seconds: float,
             fading: bool) -> np.ndarray:
    """process() times of a 2-song SetEngine with every engine holding ``voices`` notes; ``fading``: switch
    whenever a fade ends and keep only the blocks where both engines are heard."""
    engines = [Engine(b) for b in bundles[:2]]
    s = SetEngine(engines, crossfade_ms=crossfade_ms)
    s.prepare(sample_rate, block, voices)
    out = np.zeros(block, dtype=np.float32)
    for i in (0, 1):                                  # both songs hold their notes
        s.process([SongSelect(i), *chords(voices)], out)
        for _ in range(max(20, int(0.3 * sample_rate / block))):
            s.process((), out)
    n_blocks = max(200, int(seconds * sample_rate / block))
    times = np.empty((n_blocks, 2))
    perf, cpu = time.perf_counter, time.thread_time
    song, kept = 1, 0
    while kept < n_blocks:
        events = []
        if fading and not s.fading:
            song = 1 - song
            events = [SongSelect(song), *chords(voices)]      # the new song's keys: the old one's release
        t0, c0 = perf(), cpu()
        s.process(events, out)
        t1, c1 = perf(), cpu()
        if not fading or s.fading or events:
            times[kept] = t1 - t0, c1 - c0
            kept += 1
    if s.errors or any(e.stats.errors for e in engines):
        raise RuntimeError(s.last_error or next(e.stats.last_error for e in engines if e.stats.errors))
    return times / (block / sample_rate)


def time_engine(bundle, sample_rate: int, block: int, voices: int, seconds: float) -> np.ndarray:
    engine = Engine(bundle)
    engine.prepare(sample_rate, block, voices)
    out = np.zeros(block, dtype=np.float32)
    engine.process(chords(voices), out)
    for _ in range(max(20, int(0.3 * sample_rate / block))):
        engine.process((), out)
    n_blocks = max(200, int(seconds * sample_rate / block))
    times = np.empty((n_blocks, 2))
    perf, cpu = time.perf_counter, time.thread_time
    for k in range(n_blocks):
        t0, c0 = perf(), cpu()
        engine.process((), out)
        t1, c1 = perf(), cpu()
        times[k] = t1 - t0, c1 - c0
    return times / (block / sample_rate)


def stats(loads: np.ndarray) -> list[float]:
    """median / p99 / mean in % for wall-clock time, then for the thread's CPU time."""
    return [100 * float(f(loads[:, j])) for j in (0, 1)
            for f in (np.median, lambda x: np.percentile(x, 99), np.mean)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path, help="model files (default: --songs untrained models)")
    p.add_argument("--songs", type=int, default=4)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--voices", type=int, default=8)
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--crossfade-ms", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=3.0, help="audio time per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the live instrument uses 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sr, block, voices = args.sample_rate, args.block, args.voices
    print(f"sdga set list benchmark: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({args.threads} thread), {sr} Hz, block {block}, {voices} voices, crossfade {args.crossfade_ms:g} ms")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="setlist-bench-") as tmp:
        paths = list(args.models)
        if not paths:
            for i in range(args.songs):
                paths.append(save_bundle(Path(tmp) / f"song{i}.sdga", random_bundle(seed=i)))
        print(f"\nA. start-up per song (as sdga-play --set, in order; resident memory of this process)")
        print(f"{'song':>4} {'file MB':>8} {'load s':>7} {'+MB':>6} {'warm+prepare s':>15} {'+MB':>6}")
        bundles, engines = [], []
        rss0 = _rss_mb()
        t_all = time.perf_counter()
        for i, path in enumerate(paths):
            t0, m0 = time.perf_counter(), _rss_mb()
            bundle = load_bundle(path, with_encoder=False)
            t1, m1 = time.perf_counter(), _rss_mb()
            warm_up(bundle, sr, block, voices)
            engine = Engine(bundle)
            engine.prepare(sr, block, voices)
            t2, m2 = time.perf_counter(), _rss_mb()
            bundles.append(bundle)
            engines.append(engine)
            print(f"{i:>4} {path.stat().st_size / 1e6:>8.2f} {t1 - t0:>7.2f} {m1 - m0:>6.1f} {t2 - t1:>15.2f} "
                  f"{m2 - m1:>6.1f}")
        print(f"all {len(paths)} songs: {time.perf_counter() - t_all:.2f} s, +{_rss_mb() - rss0:.0f} MB "
              f"(process now {_rss_mb():.0f} MB)")
        del engines
        if len(bundles) < 2:
            bundles.append(random_bundle(seed=99))
        print(f"\nB. process() time per block as % of the {1000 * block / sr:.2f} ms budget: median / p99 / mean "
              f"(medians of {args.repeats} repeats); wall clock, then the thread's CPU time (time.thread_time: "
              f"what the work costs, without the time the scheduler gave to other processes)")
        print(f"  {'':<36} {'wall: median /    p99 /   mean':>30}   {'CPU: median /    p99 /   mean':>30}")
        rows = {"steady, one song heard (baseline)": [], "crossfading, two songs heard": [],
                "plain Engine (reference)": []}
        for _ in range(args.repeats):
            rows["steady, one song heard (baseline)"].append(
                stats(time_set(bundles, sr, block, voices, args.crossfade_ms, args.seconds, fading=False)))
            rows["crossfading, two songs heard"].append(
                stats(time_set(bundles, sr, block, voices, args.crossfade_ms, args.seconds, fading=True)))
            rows["plain Engine (reference)"].append(stats(time_engine(bundles[0], sr, block, voices, args.seconds)))
        for name, values in rows.items():
            a = np.array(values)
            med = np.median(a, axis=0)
            spread = ", ".join(f"{x:.1f}" for x in a[:, 3])
            print(f"  {name:<36} {med[0]:12.1f} / {med[1]:6.1f} / {med[2]:6.1f}   {med[3]:11.1f} / {med[4]:6.1f} / "
                  f"{med[5]:6.1f}   (CPU medians per repeat: {spread})")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(f"\nC. a switch lands at the next block's start (<= {1000 * block / sr:.2f} ms after it is queued); the "
              f"old song fades out and the new one in over {args.crossfade_ms:g} ms (equal power)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
