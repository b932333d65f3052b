"""Training throughput and time-to-quality on this machine.

    python benchmarks/bench_training.py throughput [--steps 20] [--threads N]
    python benchmarks/bench_training.py budget CORPUS --max-time 10m [--out DIR]

`throughput` times optimiser steps of the real model on windows of a real corpus (the demo corpus if none is
given) and prints the median step time, steps/s and audio-seconds processed per wall-second.
`budget` runs sdga-train with a wall-clock budget and prints, from its logs, the validation loss over wall time
(time-to-quality) and the final held-out metrics.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch


def throughput(args) -> None:
    from instrument.model.networks import ModelConfig
    from training.data import RandomWindows
    from evaluation.demo_corpus import make_demo_corpus
    from training.module import LossConfig, SdgaModule
    from training.train import TrainConfig, make_mel_basis, prepare_data

    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = args.corpus
    if corpus is None:
        corpus = Path(tempfile.gettempdir()) / "sdga-bench-corpus"
        make_demo_corpus(corpus, "violin", n_files=4, seconds_per_file=8.0)
    cfg = TrainConfig(corpus_dir=corpus, augment=False, progress=False, batch_size=args.batch_size,
                      window_seconds=args.window)
    data = prepare_data(cfg, log=lambda *_: None)
    mc = ModelConfig()
    module = SdgaModule(mc.to_dict(), asdict(LossConfig()), make_mel_basis(mc))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    ds = RandomWindows(data.train, cfg.window_frames, cfg.hop_size, args.steps * cfg.batch_size, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size)
    times, fwd = [], []
    for i, batch in enumerate(loader):
        t0 = time.perf_counter()
        out = module.forward_batch(batch, sample=True)
        loss = out["spectral"] + 0.01 * out["kl"]
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= 2:                       # warm-up steps excluded
            times.append(t2 - t0)
            fwd.append(t1 - t0)
    step = statistics.median(times)
    window_s = cfg.window_frames * cfg.hop_size / cfg.sample_rate
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {cfg.batch_size} x {window_s:.2f} s "
          f"at {cfg.sample_rate} Hz, {sum(p.numel() for p in module.parameters()):,} parameters")
    print(f"step median {step * 1000:.0f} ms (forward {statistics.median(fwd) * 1000:.0f} ms), "
          f"p90 {sorted(times)[int(0.9 * (len(times) - 1))] * 1000:.0f} ms over {len(times)} steps")
    print(f"{1 / step:.2f} steps/s, {cfg.batch_size * window_s / step:.1f} audio-seconds per wall-second")


def budget(args) -> None:
    from training.cli import train_main

    out = args.out or Path(tempfile.mkdtemp(prefix="sdga-budget-"))
    argv = [str(args.corpus), "-o", str(out), "--max-time", args.max_time, "--no-progress", "--seed", str(args.seed)]
    if args.patience is not None:
        argv += ["--patience", str(args.patience)]
    rc = train_main(argv)
    if rc not in (0, 130):
        sys.exit(rc)
    rows = [r for r in csv.DictReader(open(out / "logs" / "metrics.csv")) if r.get("val/elapsed_s")]
    print("\ntime-to-quality (validation over wall time):")
    print(f"{'elapsed s':>10} {'step':>6} {'val spectral':>13} {'val KL':>8} {'active':>7} {'harm dB':>8} {'noise dB':>9}")
    for r in rows:
        print(f"{float(r['val/elapsed_s']):10.0f} {int(r['step']):6d} {float(r['val/spectral']):13.4f} "
              f"{float(r['val/kl']):8.3f} {float(r['val/active_latents']):7.0f} {float(r['val/harmonic_db']):8.1f} "
              f"{float(r['val/noise_db']):9.1f}")
    summary = json.loads((out / "summary.json").read_text())
    print("\nheld-out:", json.dumps(summary["heldout"]))
    print("training:", json.dumps({k: summary["training"][k] for k in
                                   ("steps", "fit_seconds", "audio_seconds_per_second", "best_val_loss")}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--corpus", type=Path)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--window", type=float, default=1.0)
    t.add_argument("--threads", type=int)
    b = sub.add_parser("budget")
    b.add_argument("corpus", type=Path)
    b.add_argument("--max-time", default="10m")
    b.add_argument("--out", type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--patience", type=int)
    args = p.parse_args()
    {"throughput": throughput, "budget": budget}[args.cmd](args)


if __name__ == "__main__":
    main()
