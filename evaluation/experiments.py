"""Experiment drivers: train models and measure them (beta table, time to quality, real-instrument quality).

Resumable: a run folder whose summary.json exists is not trained again; its evaluation is cached in
evaluation.json. The JSON results are what `evaluation.report` turns into tables and figures.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from evaluation.disentanglement import disentanglement_scores
from evaluation.playing import invariance_check, midi_play_accuracy

__all__ = ["evaluate_run", "beta_table", "time_to_quality", "instrument_quality", "write_json"]


# ---------------------------------------------------------------------------------------------- run evaluation
def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path | str, data) -> Path:
    """Atomic JSON write (NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1))
    tmp.replace(path)
    return path


def _eval_key(run_dir: Path, eval_dir: Path | None, options: dict) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    payload = {"date": summary.get("training", {}).get("date"), "options": options}
    if eval_dir is not None:
        from evaluation.synthetic_corpus import FACTORS_JSON
        payload["eval"] = json.loads((Path(eval_dir) / FACTORS_JSON).read_text()).get("settings")
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate_run(run_dir: Path | str, eval_dir: Path | str | None = None, n_bins: int = 10,
                 invariance: bool = True, midi: bool = True, quick: bool = False, log=print) -> dict:
    """Evaluate a finished run folder: its summary, disentanglement on the synthetic corpus in `eval_dir` (if
    given), invariance and MIDI accuracy. Cached in <run_dir>/evaluation.json (recomputed when the run, the
    evaluation corpus or the options change)."""
    from instrument.model.bundle import load_bundle
    from evaluation.synthetic_corpus import load_factors

    run_dir = Path(run_dir)
    options = {"n_bins": n_bins, "invariance": invariance, "midi": midi, "quick": quick}
    key = _eval_key(run_dir, Path(eval_dir) if eval_dir else None, options)
    cache = run_dir / "evaluation.json"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return cached
        except ValueError:
            pass
    t0 = time.time()
    summary = json.loads((run_dir / "summary.json").read_text())
    bundle = load_bundle(summary.get("model_file") or run_dir / "model.sdga")
    out: dict = {"key": key, "run_dir": str(run_dir), "options": options}
    if eval_dir is not None:
        factors = load_factors(eval_dir)
        files = sorted(Path(eval_dir).glob("*.wav"))
        out["disentanglement"] = disentanglement_scores(bundle, files, factors, n_bins=n_bins)
    if invariance:
        out["invariance"] = invariance_check(bundle, n_steps=3 if quick else 5, n_pitches=1 if quick else 3,
                                             seconds=0.6 if quick else 1.0)
    if midi:
        notes = None
        if quick:
            lo, hi = bundle.f0_range_hz()
            notes = sorted({int(round(69 + 12 * math.log2(f / 440))) for f in (lo * 1.05, math.sqrt(lo * hi), hi / 1.05)})
        out["midi"] = midi_play_accuracy(bundle, notes=notes, velocities=(40, 120) if quick else (32, 64, 96, 127))
    out["seconds"] = round(time.time() - t0, 1)
    write_json(cache, out)
    log(f"evaluated {run_dir} in {out['seconds']} s")
    return json.loads(cache.read_text())


def _row_from_run(run_dir: Path, evaluation: dict) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    t, h = summary.get("training", {}), summary.get("heldout", {})
    latents = summary.get("latents", [])
    row = {"run_dir": str(run_dir), "steps": t.get("steps"), "fit_seconds": t.get("fit_seconds"),
           "best_val_loss": t.get("best_val_loss"), "beta": t.get("beta"), "max_time_s": t.get("max_time_s"),
           "attribute_weight": t.get("attribute_weight"), "invariance_weight": t.get("invariance_weight", 0.0),
           "interrupted": t.get("interrupted"),
           "active_latents": sum(1 for l in latents if l.get("active")), "latent_dim": t.get("latent_dim"),
           "latent_names": [l["name"] for l in latents if l.get("active")],
           "spectral_distance": h.get("spectral_distance"), "f0_cents_median": h.get("f0_cents_median"),
           "loudness_db_median": h.get("loudness_db_median")}
    d = evaluation.get("disentanglement")
    if d:
        row.update(mig=d["mig"], mig_active=d["mig_active"], mig_per_factor=d["mig_per_factor"],
                   dci_disentanglement=d["dci"]["disentanglement"], dci_completeness=d["dci"]["completeness"],
                   dci_informativeness=d["dci"]["informativeness"],
                   best_latent_per_factor=d["best_latent_per_factor"])
    inv = evaluation.get("invariance")
    if inv is not None:
        row["invariance_pass"] = sum(1 for r in inv if r["pass"])
        row["invariance_checked"] = len(inv)
    m = evaluation.get("midi")
    if m:
        row.update(midi_f0_cents_median_abs=m["f0_cents_median_abs"], midi_f0_cents_max_abs=m["f0_cents_max_abs"],
                   midi_loudness_rises_fraction=m["loudness_rises_fraction"])
    return row


def _train_if_needed(cfg, log) -> None:
    from training.train import run_training
    run_dir = Path(cfg.out_dir)
    if (run_dir / "summary.json").exists():
        log(f"{run_dir}: summary.json exists, not training again")
        return
    log(f"training {run_dir} (beta {cfg.beta}, budget {cfg.max_time_s} s, max steps {cfg.max_steps})")
    run_training(replace(cfg, resume=False, model_file=None), log=log)


def _results(kind: str, settings: dict, rows: list, path: Path) -> dict:
    data = {"kind": kind, "settings": settings, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(path, data)
    return data


def beta_table(base, betas: Sequence[float], out_dir: Path | str, eval_dir: Path | str | None = None,
               n_bins: int = 10, invariance: bool = True, midi: bool = False, quick: bool = False,
               log: Callable = print) -> dict:
    """Train one run per beta from the TrainConfig template `base` (its corpus: normally a synthetic corpus) into
    <out_dir>/beta_<beta>, evaluate each, and write <out_dir>/beta_table.json after every run."""
    out_dir = Path(out_dir)
    settings = {"corpus": str(base.corpus_dir), "eval_corpus": str(eval_dir) if eval_dir else None,
                "max_time_s": base.max_time_s, "max_steps": base.max_steps, "latent_dim": base.latent_dim,
                "n_bins": n_bins, "betas": [float(b) for b in betas]}
    rows: list[dict] = []
    data = _results("beta_table", settings, rows, out_dir / "beta_table.json")
    for beta in betas:
        run_dir = out_dir / f"beta_{beta:g}"
        _train_if_needed(replace(base, out_dir=run_dir, beta=float(beta)), log)
        ev = evaluate_run(run_dir, eval_dir, n_bins=n_bins, invariance=invariance, midi=midi, quick=quick, log=log)
        rows.append(dict(_row_from_run(run_dir, ev), beta=float(beta)))
        data = _results("beta_table", settings, rows, out_dir / "beta_table.json")
    return data


def time_to_quality(base, budgets_s: Sequence[float], out_dir: Path | str, eval_dir: Path | str | None = None,
                    n_bins: int = 10, invariance: bool = True, midi: bool = True, quick: bool = False,
                    log: Callable = print) -> dict:
    """One run per wall-clock budget (seconds) into <out_dir>/budget_<s>s; writes <out_dir>/time_to_quality.json."""
    out_dir = Path(out_dir)
    settings = {"corpus": str(base.corpus_dir), "eval_corpus": str(eval_dir) if eval_dir else None,
                "beta": base.beta, "max_steps": base.max_steps, "latent_dim": base.latent_dim,
                "budgets_s": [float(b) for b in budgets_s]}
    rows: list[dict] = []
    data = _results("time_to_quality", settings, rows, out_dir / "time_to_quality.json")
    for budget in budgets_s:
        run_dir = out_dir / f"budget_{int(round(budget))}s"
        _train_if_needed(replace(base, out_dir=run_dir, max_time_s=float(budget)), log)
        ev = evaluate_run(run_dir, eval_dir, n_bins=n_bins, invariance=invariance, midi=midi, quick=quick, log=log)
        rows.append(dict(_row_from_run(run_dir, ev), budget_s=float(budget)))
        data = _results("time_to_quality", settings, rows, out_dir / "time_to_quality.json")
    return data


def instrument_quality(base, instruments: Sequence[str], out_dir: Path | str, n_files: int = 8,
                       seconds_per_file: float = 12.0, invariance: bool = True, midi: bool = True,
                       quick: bool = False, log: Callable = print) -> dict:
    """Real-instrument quality: a FluidR3 demo corpus per instrument (evaluation.demo_corpus) in
    <out_dir>/corpora/<name>, one run each in <out_dir>/<name>; writes <out_dir>/instrument_quality.json."""
    from evaluation.demo_corpus import make_demo_corpus

    out_dir = Path(out_dir)
    settings = {"n_files": n_files, "seconds_per_file": seconds_per_file, "beta": base.beta,
                "max_time_s": base.max_time_s, "max_steps": base.max_steps, "instruments": list(instruments)}
    rows: list[dict] = []
    data = _results("instrument_quality", settings, rows, out_dir / "instrument_quality.json")
    for name in instruments:
        corpus = out_dir / "corpora" / name
        make_demo_corpus(corpus, instrument=name, n_files=n_files, seconds_per_file=seconds_per_file, seed=base.seed)
        run_dir = out_dir / name
        _train_if_needed(replace(base, corpus_dir=corpus, out_dir=run_dir), log)
        ev = evaluate_run(run_dir, None, invariance=invariance, midi=midi, quick=quick, log=log)
        rows.append(dict(_row_from_run(run_dir, ev), instrument=name))
        data = _results("instrument_quality", settings, rows, out_dir / "instrument_quality.json")
    return data
