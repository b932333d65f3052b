"""Augmentation ablation: short trainings with the default augmentations, each new one added, and all of them.

    python benchmarks/bench_augment.py CORPUS [CORPUS ...] [--max-time 150s] [--max-steps N] [--out DIR] [--json FILE]
    python benchmarks/bench_augment.py --combine A.json B.json [--json ALL.json]     # one table from several

Every run is sdga-train (training.cli.train_main, in a child process) on one thread with the same seed and so
the same split and the same settings for the augmentations both runs share (a variant draws every row's
parameters, then turns off the rows not chosen). Printed per run: the held-out resynthesis spectral distance
and loudness error (the export's `heldout` figures in summary.json), the number of active latents and of
distinctly named ones (`brightness` and `brightness2` count once), the steps done in the time budget, and the
load average before and after (the steps depend on it). Runs go config by config across the corpora, so a run
cut short still leaves complete comparisons. One seed and short runs: differences of a few percent are noise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = (                       # (label, --augment value)
    ("defaults", "default"),
    ("+stretch", "default,stretch"),
    ("+distort", "default,distort"),
    ("+noise", "default,noise"),
    ("+all three", "all"),
)


def distinct_names(names: list[str]) -> int:
    """Knob names that differ once the number the export appends to a repeated name is dropped."""
    return len({re.sub(r"\d+$", "", n) for n in names})


def one_run(corpus: Path, label: str, augment: str, out: Path, args) -> dict:
    argv = [str(corpus), "-o", str(out), "--max-time", args.max_time, "--max-steps", str(args.max_steps),
            "--batch-size", str(args.batch_size), "--window", str(args.window), "--val-every", str(args.val_every),
            "--threads", "1", "--no-progress", "--seed", str(args.seed), "--augment", augment,
            "--cache-dir", str(args.cache_dir)]
    load_before = os.getloadavg()
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", "import sys; from training.cli import train_main; "
                           "sys.exit(train_main(sys.argv[1:]))", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.time() - t0
    (out / "stdout.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "stdout.txt").write_text(proc.stdout + proc.stderr)
    row = {"corpus": corpus.name, "config": label, "augment": augment, "rc": proc.returncode,
           "wall_s": round(wall, 1), "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in os.getloadavg()]}
    if proc.returncode not in (0, 130) or not (out / "summary.json").exists():
        row["error"] = (proc.stdout + proc.stderr)[-2000:]
        return row
    s = json.loads((out / "summary.json").read_text())
    active = [l["name"] for l in s["latents"] if l["active"]]
    row.update(
        spectral_distance=s["heldout"].get("spectral_distance"),
        loudness_db_median=s["heldout"].get("loudness_db_median"),
        f0_cents_median=s["heldout"].get("f0_cents_median"),
        steps=s["training"]["steps"], model_step=s["training"]["model_step"],
        best_val_loss=s["training"]["best_val_loss"], augmentations=s["training"].get("augmentations"),
        active_knobs=len(active), distinct_knobs=distinct_names(active), knob_names=active,
        augment_log=next((line for line in (proc.stdout + proc.stderr).splitlines()
                          if line.startswith("augmentation:")), None))
    return row


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'corpus':<10} {'config':<11} {'spec.dist':>9} {'loud.dB':>8} {'f0 c':>6} {'steps':>6} {'best@':>6} "
            f"{'active':>6} {'distinct':>8} {'load':>11}  knobs")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['corpus']:<10} {r['config']:<11} failed rc={r['rc']}")
            continue
        lines.append(f"{r['corpus']:<10} {r['config']:<11} {fmt(r['spectral_distance'], '9.3f')} "
                     f"{fmt(r['loudness_db_median'], '8.2f')} {fmt(r['f0_cents_median'], '6.1f')} {r['steps']:>6} "
                     f"{r['model_step']:>6} {r['active_knobs']:>6} {r['distinct_knobs']:>8} "
                     f"{r['load_before'][0]:>5.2f}/{r['load_after'][0]:<5.2f}  {','.join(r['knob_names'])}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpora", type=Path, nargs="*")
    p.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                   help="no training: merge the rows of these --json files (into --json if given) and print the table")
    p.add_argument("--max-time", default="150s", help="training budget per run (a ceiling with --max-steps) [150s]")
    p.add_argument("--max-steps", type=int, default=-1, help="steps per run: the same for every config, so a "
                   "busy machine changes the wall time, not the result [no limit: --max-time decides]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=float, default=1.0, help="training window in seconds [1.0]")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/augment-runs"), help="run folders [/tmp/augment-runs]")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/augment-cache"))
    p.add_argument("--json", type=Path, help="write the rows here (rewritten after every run)")
    p.add_argument("--configs", default=",".join(c for c, _ in CONFIGS), help="labels to run, comma-separated")
    args = p.parse_args()
    if args.combine:
        parts = [json.loads(f.read_text()) for f in args.combine]
        rows = [r for part in parts for r in part["rows"]]
        order = [c for c, _ in CONFIGS]
        rows.sort(key=lambda r: (order.index(r["config"]), r["corpus"]))
        if args.json:
            args.json.write_text(json.dumps({"parts": [part.get("settings") for part in parts], "rows": rows},
                                            indent=1))
        print(table(rows))
        return
    if not args.corpora:
        p.error("give one or more corpora (or --combine)")
    wanted = args.configs.split(",")
    rows: list[dict] = []
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {len(args.corpora)} corpora x {len(wanted)} configs, "
          f"--max-time {args.max_time} --max-steps {args.max_steps} --batch-size {args.batch_size} --window "
          f"{args.window} --val-every {args.val_every}, seed {args.seed}, 1 thread; load {os.getloadavg()}",
          flush=True)
    for label, augment in CONFIGS:
        if label not in wanted:
            continue
        for corpus in args.corpora:
            out = args.out / f"{corpus.name}-{label.replace(' ', '').replace('+', 'plus-')}"
            row = one_run(corpus, label, augment, out, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                 "rows": rows}, indent=1))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
