"""A corpus at the top of the promise (500 files): corpus check, feature extraction (cold and cached) and the
training data build, one thread, timed, with peak memory and what was kept or skipped.

    python benchmarks/bench_corpus_scale.py build CORPUS [--files 500] [--seed 0] [--seconds 1 8]
    python benchmarks/bench_corpus_scale.py run CORPUS [--subset 125] [--out results.json] [--cache DIR]

`build` renders a few real phrases (FluidR3 via fluidsynth: violin and cello; freepats via timidity: cello) and
cuts them into ``--files`` files of 1-8 s (``--seconds MIN MAX``) at random places (uniform length), in wav
(16-bit), flac and ogg, at 48, 44.1 and 22.05 kHz, plus five bad files: empty, a truncated flac, a truncated wav,
a text file named .wav, and 3 s of silence. The phrases last 40 s, or longer where the files do.
`run` measures, each step in a fresh subprocess (so its peak RSS is its own; ``ru_maxrss`` of the process and
of its children), for the whole corpus and for the first ``--subset`` files (to see how time and memory grow):
  check-cold      ``run_check`` (load, features computed, check) with an empty cache
  check-cached    the same again: features from the cache
  prepare-cold    ``training.train.prepare_data`` (load, cached features, check, split, augmentation computed)
  prepare-cached  the same again: augmentation from the cache
  prepare-noaug   ``prepare_data`` with augmentation off (load, features, check, split)
One thread: ``torch.set_num_threads(1)``, ``OMP/MKL/NUMBA_NUM_THREADS=1`` and ``os.cpu_count`` reported as 1 in
the step (so feature extraction and augmentation run in the process, no worker pool).

Memory: ``peak_rss_mb`` is the kernel's peak resident set (ru_maxrss: anonymous memory and mapped file pages);
``peak_anon_mb`` and ``peak_file_mb`` are the largest RssAnon (memory only swap can free) and RssFile (mapped
file pages, which the OS drops whenever it needs the memory) sampled every 10 ms from /proc/self/status (Linux).
``examples_audio_mb`` is the float32 audio of the prepared examples (train incl. augmentation, and validation). The
prepare steps spool the audio (training.spool) as sdga-train does, where the code has a spool. ``--cache DIR``
shares one feature/augmentation cache between the sets and keeps it (by default each set gets a fresh one).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAD = ("bad_empty.wav", "bad_truncated.flac", "bad_truncated.wav", "bad_not_audio.wav", "bad_silent.wav")


# ---------------------------------------------------------------------------------------------- build
def build(out: Path, n_files: int, seed: int, seconds_range: tuple[float, float] = (1.0, 8.0)) -> None:
    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    from evaluation.demo_corpus import make_demo_corpus

    sources_dir = out.parent / f"{out.name}-sources"
    t0 = time.time()
    phrase_s = max(40.0, seconds_range[1] + 10.0)
    phrases = [*make_demo_corpus(sources_dir / "violin", "violin", n_files=3, seconds_per_file=phrase_s, seed=seed),
               *make_demo_corpus(sources_dir / "cello", "cello", n_files=3, seconds_per_file=phrase_s, seed=seed + 1),
               *make_demo_corpus(sources_dir / "cello_freepats", "cello", n_files=2, seconds_per_file=phrase_s,
                                 seed=seed + 2, sample_set="freepats")]
    sources = [sf.read(str(p), dtype="float32")[0] for p in phrases]
    sources = [s if s.ndim == 1 else s.mean(axis=1) for s in sources]
    print(f"rendered {len(phrases)} phrases ({sum(len(s) for s in sources) / 48000:.0f} s) in {time.time() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    formats = [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")]
    rates = [(48000, 1, 1), (44100, 147, 160), (22050, 147, 320)]
    n_good = n_files - len(BAD)
    total_s = 0.0
    for i in range(n_good):
        src = sources[int(rng.integers(len(sources)))]
        seconds = float(rng.uniform(*seconds_range))
        n = int(seconds * 48000)
        start = int(rng.integers(0, len(src) - n))
        clip = src[start:start + n]
        rate, up, down = rates[i % len(rates)]
        if rate != 48000:
            clip = resample_poly(clip, up, down).astype(np.float32)
        ext, subtype = formats[(i // len(rates)) % len(formats)]
        with sf.SoundFile(str(out / f"clip_{i:03d}.{ext}"), "w", rate, 1, subtype=subtype) as f:
            for block in range(0, len(clip), rate):     # in 1 s blocks: libsndfile's vorbis encoder crashes
                f.write(clip[block:block + rate])         # on one long write (a 50 s ogg)
        total_s += seconds
    # the bad ones
    (out / "bad_empty.wav").write_bytes(b"")
    flac = (out / "clip_003.flac").read_bytes()
    (out / "bad_truncated.flac").write_bytes(flac[:len(flac) // 3])
    wav = (out / "clip_000.wav").read_bytes()
    (out / "bad_truncated.wav").write_bytes(wav[:len(wav) // 2])
    (out / "bad_not_audio.wav").write_text("this is not a sound file\n" * 40)
    sf.write(str(out / "bad_silent.wav"), np.zeros(3 * 48000, dtype=np.float32), 48000, subtype="PCM_16")
    print(f"wrote {n_good} clips ({total_s / 60:.1f} min of audio) + {len(BAD)} bad files to {out}")


# ---------------------------------------------------------------------------------------------- steps
def _one_thread() -> None:
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = "1"
    os.cpu_count = lambda: 1            # extract_corpus_features / augmentation: no worker pool
    import torch

    torch.set_num_threads(1)


def _memory_sampler(period_s: float = 0.01):
    """Start a thread that keeps the largest RssAnon and RssFile (MB) of this process; returns its peaks dict."""
    import threading

    peaks = {"anon": 0.0, "file": 0.0}
    status = Path("/proc/self/status")
    if not status.exists():
        return peaks

    def sample() -> None:
        while True:
            for line in status.read_text().splitlines():
                for key, field in (("anon", "RssAnon:"), ("file", "RssFile:")):
                    if line.startswith(field):
                        peaks[key] = max(peaks[key], int(line.split()[1]) / 1024.0)
            time.sleep(period_s)

    threading.Thread(target=sample, daemon=True).start()
    return peaks


def step(name: str, corpus: Path, cache: Path) -> dict:
    """One measured step in this (fresh) process; returns its figures."""
    _one_thread()
    peaks = _memory_sampler()
    lines: list[str] = []
    log = lines.append
    t0 = time.perf_counter()
    out: dict = {"step": name}
    if name.startswith("check"):
        from training.check import run_check

        check = run_check(corpus, 48000, 128, cache / "features", progress=False, log=log)
        out.update(files=len(check.files), skipped=[[Path(p).name, r] for p, r in check.skipped],
                   audio_s=check.total_s, warnings=list(check.warnings))
    else:
        import contextlib
        import inspect

        from training.train import TrainConfig, prepare_data

        cfg = TrainConfig(corpus_dir=corpus, cache_dir=cache, progress=False, augment=not name.endswith("noaug"))
        spooled = "spool" in inspect.signature(prepare_data).parameters
        with contextlib.ExitStack() as stack:
            kwargs = {}
            if spooled:
                from training.spool import audio_spool
                from training.train import spool_parent

                kwargs["spool"] = stack.enter_context(audio_spool(spool_parent(cfg)))
            data = prepare_data(cfg, log=log, **kwargs)
            out.update(files=len(data.corpus.files), skipped=[[Path(p).name, r] for p, r in data.stats.skipped],
                       train_examples=len(data.train), val_examples=len(data.val), split=data.split,
                       train_audio_s=sum(len(e.audio) for e in data.train) / 48000,
                       val_audio_s=sum(len(e.audio) for e in data.val) / 48000, spooled=spooled,
                       corpus_audio_s=data.corpus.total_seconds)
            out["examples_audio_mb"] = (out["train_audio_s"] + out["val_audio_s"]) * 48000 * 4 / 2**20
    out["seconds"] = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_mb"] = max(self_kb, child_kb) / 1024.0
    out["peak_anon_mb"], out["peak_file_mb"] = peaks["anon"], peaks["file"]
    out["log"] = [l for l in lines if any(k in l for k in ("skipped", "features:", "augmentation:", "files",
                                                             "validation split", "WARNING", "checked in"))]
    return out


def run(args) -> None:
    import shutil

    corpus = args.corpus
    sets = [("all", corpus)]
    if args.subset:
        sub = corpus.parent / f"{corpus.name}-first{args.subset}"
        if not sub.is_dir():
            sub.mkdir()
            for p in sorted(corpus.iterdir())[:args.subset]:
                shutil.copy(p, sub / p.name)
        sets.insert(0, (f"first{args.subset}", sub))
        if args.only_subset:
            sets = sets[:1]
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_before": os.getloadavg(),
               "python": sys.version.split()[0], "runs": []}
    for label, folder in sets:
        cache = args.cache or corpus.parent / f"{corpus.name}-cache-{label}"
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for name in args.steps:
            proc = subprocess.run([sys.executable, __file__, "_step", name, str(folder), str(cache)],
                                  capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"step {name} on {label} failed ({proc.returncode})")
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            figures.update(set=label, n_files_in_folder=len(files), load_after=os.getloadavg())
            results["runs"].append(figures)
            held = f"  examples audio {figures['examples_audio_mb']:6.0f} MB" if "examples_audio_mb" in figures else ""
            print(f"{label:>9} {name:<15} {figures['seconds']:8.1f} s  peak RSS {figures['peak_rss_mb']:7.0f} MB  "
                  f"(anon {figures['peak_anon_mb']:6.0f}, file {figures['peak_file_mb']:5.0f}){held}  "
                  f"load {figures['load_after'][0]:.1f}", flush=True)
            for line in figures["log"]:
                print(f"{'':>26}| {line[:300]}")
            if args.out is not None:              # after every step: a long run cut short keeps what it measured
                args.out.write_text(json.dumps(results, indent=1))


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_step":
        print(json.dumps(step(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("corpus", type=Path)
    b.add_argument("--files", type=int, default=500)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--seconds", type=float, nargs=2, default=(1.0, 8.0), metavar=("MIN", "MAX"),
                   help="length range of the files [1 8]")
    r = sub.add_parser("run")
    r.add_argument("corpus", type=Path)
    r.add_argument("--subset", type=int, default=125, help="also measure the first N files (0: not)")
    r.add_argument("--only-subset", action="store_true", help="measure only the first --subset files")
    r.add_argument("--steps", nargs="+", default=["check-cold", "check-cached", "prepare-cold", "prepare-cached"])
    r.add_argument("--out", type=Path)
    r.add_argument("--cache", type=Path, help="one cache for every set, kept (default: a fresh one per set)")
    args = p.parse_args(argv)
    if args.cmd == "build":
        build(args.corpus, args.files, args.seed, tuple(args.seconds))
    else:
        run(args)


if __name__ == "__main__":
    main()
