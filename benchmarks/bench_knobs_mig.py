"""Does folding the knobs into the networks change disentanglement? MIG and linear DCI (evaluation.disentanglement,
which reads the model file's encoder) on a synthetic evaluation corpus, for one short synthetic run exported twice
from the same checkpoint: one knob per raw latent (``--knobs raw``) and the knobs found by intervention, folded.

The fold maps the encoder's means affinely (u = A^-1 (z - c)): DCI's informativeness (a linear regression's R^2)
cannot change; MIG and DCI's disentanglement / completeness, which read the latent axes, can.

    python benchmarks/bench_knobs_mig.py --out /tmp/knobs-syn --max-time 5m \\
        --json benchmarks/results/knobs_mig_synthetic_16k.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.disentanglement import disentanglement_scores  # noqa: E402
from evaluation.synthetic_corpus import load_factors, make_synthetic_corpus  # noqa: E402
from instrument.model.bundle import load_bundle  # noqa: E402
from training.cli import train_main  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="corpora, run, cache")
    p.add_argument("--max-time", default="5m")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train, ev, run = args.out / "train", args.out / "eval", args.out / "run"
    make_synthetic_corpus(train, n_files=12, seconds=6.0, seed=0, sample_rate=16000)
    make_synthetic_corpus(ev, n_files=8, seconds=6.0, seed=1, sample_rate=16000)
    common = ["--threads", "1", "--no-progress", "--sample-rate", "16000", "--cache-dir", str(args.out / "cache"),
              "--window", "0.5"]
    t0 = time.time()
    if train_main([str(train), "-o", str(run), "--max-time", args.max_time, "--knobs", "raw",
                   "--model-file", str(run / "model-raw.sdga")] + common) != 0:
        return 1
    if train_main([str(train), "-o", str(run), "--export-only", "--model-file", str(run / "model-knobs.sdga")]
                  + common) != 0:
        return 1
    factors, files = load_factors(ev), sorted(ev.glob("*.wav"))
    out = {"seconds": round(time.time() - t0, 1)}
    for name in ("raw", "knobs"):
        bundle = load_bundle(run / f"model-{name}.sdga")
        s = disentanglement_scores(bundle, files, factors)
        out[name] = {"mig": s["mig"], "mig_active": s["mig_active"], "dci": s["dci"],
                     "model_step": bundle.metadata["training"].get("model_step"),
                     "latents": [(l.name, l.active) for l in bundle.latents], "best": s["best_latent_per_factor"]}
        print(f"{name:6} MIG {s['mig']:.3f} (active {s['mig_active']:.3f})  DCI D {s['dci']['disentanglement']:.3f} "
              f"C {s['dci']['completeness']:.3f} I {s['dci']['informativeness']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
