"""Are the latents musical controls, and how good is a model after N minutes? The experiments of issue 5.

    python benchmarks/bench_latents.py [--out runs/bench-latents] [--stages beta,time,quality] [--threads 2]
        [--betas 0.5,1,2,4,8] [--budget 10m] [--budgets 2m,5m,10m,20m]
        [--instruments violin,flute,trumpet,cello] [--quality-budget 10m] [--quick] [--max-steps N]

Stages (each resumable: a run folder with a summary.json is not trained again, its evaluation is cached):
- beta: a synthetic corpus with known timbre factors (evaluation.synthetic_corpus; augmentation off, because EQ
  would change the factors) -> one run per beta -> MIG / DCI on a separate synthetic evaluation corpus, active
  latents, invariance of each knob, held-out metrics.
- time: the same corpus and beta 4 (--beta) trained for each budget -> held-out metrics, MIG, MIDI accuracy
  (--time-corpus violin: the demo corpus instead, augmentation on, no MIG).
- quality: real recorded instruments (FluidR3_GM via fluidsynth, evaluation.demo_corpus), default sdga-train
  settings (augmentation on) -> held-out metrics, MIDI pitch accuracy, invariance, latent names.

Writes <out>/results/{beta_table,time_to_quality,instrument_quality}.json, a report (markdown + PNGs) in
<out>/report for one run of the beta table plus every table, and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _fmt(x, spec=".3f"):
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _value(text: str):
    """A --loss value: int, float or string (e.g. posterior_noise=frame)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    print(f"\n{title}")
    widths = [max(len(h), 8) for _, h, _ in columns]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(k), spec).rjust(w) for (k, _, spec), w in zip(columns, widths)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-latents"), help="results, runs, corpora, cache")
    p.add_argument("--stages", default="beta,time,quality", help="comma list of beta, time, quality")
    p.add_argument("--betas", default=None, help="comma list [0.5,1,2,4,8; quick: 1,4]")
    p.add_argument("--beta", type=float, default=4.0, help="beta of the time and quality stages [4]")
    p.add_argument("--budget", default=None, help="training budget per beta run [10m; quick: 60s]")
    p.add_argument("--budgets", default=None, help="comma list of budgets for the time stage [2m,5m,10m,20m; quick: 30s,60s]")
    p.add_argument("--instruments", default=None, help="FluidR3 instruments [violin,flute,trumpet,cello; quick: violin]")
    p.add_argument("--quality-budget", default=None, help="training budget per instrument [10m; quick: 60s]")
    p.add_argument("--time-corpus", default="synthetic", help="corpus of the time stage: synthetic (MIG per budget) "
                   "or a FluidR3 instrument name such as violin (the demo corpus, augmentation on) [synthetic]")
    p.add_argument("--latents", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=-1, help="step limit for every run (smoke tests)")
    p.add_argument("--threads", type=int, help="torch CPU threads [all cores]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-bins", type=int, default=10, help="MIG histogram bins [10]")
    p.add_argument("--no-invariance", action="store_true", help="skip the invariance sweeps")
    p.add_argument("--quick", action="store_true", help="small corpora, short budgets, quick evaluations")
    p.add_argument("--loss", action="append", default=[], metavar="KEY=VALUE",
                   help="LossConfig override for every run, e.g. beta_warmup_steps=100 (needs TrainConfig.loss_overrides)")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="ModelConfig override for every run, e.g. encoder_features=harmonic")
    args = p.parse_args(argv)

    import torch
    from evaluation.experiments import beta_table, instrument_quality, time_to_quality
    from evaluation.report import write_report
    from evaluation.synthetic_corpus import make_synthetic_corpus
    from training.train import TrainConfig, parse_duration

    extra = {}
    if args.loss:
        from dataclasses import fields
        if "loss_overrides" not in {f.name for f in fields(TrainConfig)}:
            p.error("--loss needs TrainConfig.loss_overrides (passed to LossConfig by run_training)")
        pairs = [item.split("=", 1) for item in args.loss]
        extra["loss_overrides"] = {k: _value(v) for k, v in pairs}
    if args.model:
        extra["model_overrides"] = {k: _value(v) for k, v in (item.split("=", 1) for item in args.model)}
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"beta", "time", "quality"}
    if unknown:
        p.error(f"unknown stages: {sorted(unknown)}")
    betas = [float(b) for b in (args.betas or ("1,4" if q else "0.5,1,2,4,8")).split(",")]
    budget = parse_duration(args.budget or ("60s" if q else "10m"))
    budgets = [parse_duration(b) for b in (args.budgets or ("30s,60s" if q else "2m,5m,10m,20m")).split(",")]
    instruments = (args.instruments or ("violin" if q else "violin,flute,trumpet,cello")).split(",")
    quality_budget = parse_duration(args.quality_budget or ("60s" if q else "10m"))
    out = args.out
    results_dir = out / "results"
    cache = out / "cache"
    log = print
    started = time.time()

    train_dir, eval_dir = out / "corpora" / "synthetic_train", out / "corpora" / "synthetic_eval"
    if {"beta", "time"} & set(stages):
        t0 = time.time()
        make_synthetic_corpus(train_dir, n_files=8 if q else 24, seconds=4.0 if q else 6.0, seed=args.seed,
                              segments_per_file=2 if q else 3)
        make_synthetic_corpus(eval_dir, n_files=12 if q else 32, seconds=4.0 if q else 8.0, seed=args.seed + 1000,
                              segments_per_file=4 if q else 8)
        log(f"synthetic corpora ready in {time.time() - t0:.1f} s: {train_dir}, {eval_dir}")
    base = TrainConfig(corpus_dir=train_dir, cache_dir=cache, latent_dim=args.latents, beta=args.beta,
                       max_time_s=budget, max_steps=args.max_steps, augment=False, seed=args.seed,
                       num_threads=args.threads, progress=False, **extra,
                       **({"batch_size": 4, "window_seconds": 0.5, "val_every_steps": 20} if q else {}))
    inv = not args.no_invariance
    results = []
    if "beta" in stages:
        data = beta_table(base, betas, out / "beta", eval_dir=eval_dir, n_bins=args.n_bins, invariance=inv,
                          midi=False, quick=q, log=log)
        (results_dir / "beta_table.json").parent.mkdir(parents=True, exist_ok=True)
        (results_dir / "beta_table.json").write_text(json.dumps(data, indent=1))
        results.append(data)
    if "time" in stages:
        tbase, teval = base, eval_dir
        if args.time_corpus != "synthetic":
            from dataclasses import replace
            from evaluation.demo_corpus import make_demo_corpus
            corpus = out / "corpora" / args.time_corpus
            make_demo_corpus(corpus, instrument=args.time_corpus, n_files=3 if q else 8,
                             seconds_per_file=6.0 if q else 12.0, seed=args.seed)
            tbase, teval = replace(base, corpus_dir=corpus, augment=True), None
        data = time_to_quality(tbase, budgets, out / f"time_{args.time_corpus}", eval_dir=teval, n_bins=args.n_bins,
                               invariance=inv, midi=True, quick=q, log=log)
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "time_to_quality.json").write_text(json.dumps(data, indent=1))
        results.append(data)
    if "quality" in stages:
        from dataclasses import replace
        qbase = replace(base, augment=True, max_time_s=quality_budget)
        data = instrument_quality(qbase, instruments, out / "quality", n_files=3 if q else 8,
                                  seconds_per_file=6.0 if q else 12.0, invariance=inv, midi=True, quick=q, log=log)
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "instrument_quality.json").write_text(json.dumps(data, indent=1))
        results.append(data)

    for data in results:
        rows = data["rows"]
        if data["kind"] == "beta_table":
            print_table("beta table (synthetic corpus; MIG / DCI on the evaluation corpus)", rows, [
                ("beta", "beta", "g"), ("steps", "steps", ""), ("active_latents", "active", ""), ("mig", "MIG", ".3f"),
                ("mig_active", "MIG act", ".3f"), ("dci_disentanglement", "DCI D", ".3f"),
                ("dci_informativeness", "DCI I", ".3f"), ("spectral_distance", "spectral", ".3f"),
                ("f0_cents_median", "f0 cents", ".2f"), ("loudness_db_median", "loud dB", ".2f"),
                ("invariance_pass", "inv pass", "")])
        elif data["kind"] == "time_to_quality":
            print_table(f"time to quality ({data['settings'].get('corpus')})", rows, [
                ("budget_s", "budget s", ".0f"), ("steps", "steps", ""), ("fit_seconds", "fit s", ".0f"),
                ("best_val_loss", "val loss", ".3f"), ("spectral_distance", "spectral", ".3f"),
                ("f0_cents_median", "f0 cents", ".2f"), ("loudness_db_median", "loud dB", ".2f"),
                ("active_latents", "active", ""), ("mig", "MIG", ".3f"), ("midi_f0_cents_median_abs", "MIDI cents", ".2f")])
        else:
            print_table("real instruments (FluidR3_GM)", rows, [
                ("instrument", "instrument", ""), ("steps", "steps", ""), ("spectral_distance", "spectral", ".3f"),
                ("f0_cents_median", "f0 cents", ".2f"), ("loudness_db_median", "loud dB", ".2f"),
                ("midi_f0_cents_median_abs", "MIDI cents", ".2f"), ("midi_loudness_rises_fraction", "loud rises", ".2f"),
                ("active_latents", "active", ""), ("invariance_pass", "inv pass", "")])

    # One report page: the beta-table run nearest --beta (else the first run of another stage), plus every table.
    # Its cached evaluation.json (disentanglement included for synthetic runs) is reused.
    runs = [(abs(r["beta"] - args.beta) if d["kind"] == "beta_table" else 1e9 + i, r["run_dir"])
            for d in results for i, r in enumerate(d["rows"])]
    if runs:
        path = write_report(Path(min(runs)[1]), out / "report", results, quick=q, log=log)
        print(f"\nreport: {path}")
    print(f"results: {results_dir} (total {time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
