"""sdga-report: a markdown page with PNG figures for one run folder, plus the experiment tables of
`evaluation.experiments`'s drivers when given their JSON results.

    sdga-report runs/latest [-o runs/latest/report] [--results bench/beta_table.json ...] [--eval-corpus DIR] [--quick]

Sections: model card and held-out metrics; loss curves (logs/metrics.csv); latent traversal spectrograms;
disentanglement (when the run was evaluated on a synthetic corpus, or --eval-corpus is given); invariance table;
f0 and loudness accuracy over the pitch range when played from MIDI; beta table, time-to-quality and
real-instrument tables from --results. Evaluations already cached in <run>/evaluation.json are reused; what is
computed here is written to <report>/evaluation.json (the run folder is not written to).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["read_metrics_csv", "plot_loss_curves", "plot_midi_accuracy", "plot_beta_table", "plot_time_to_quality",
           "markdown_table", "write_report", "main"]


# ---------------------------------------------------------------------------------------------- helpers
def _fmt(x, spec: str = ".3g") -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "–" if not math.isfinite(float(x)) else format(float(x), spec)
    if isinstance(x, (list, tuple)):
        return ", ".join(_fmt(v, spec) for v in x)
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; cells formatted by _fmt (None/NaN as a dash)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_metrics_csv(path: Path | str) -> dict[str, np.ndarray]:
    """Lightning's CSV log -> column name -> float array (NaN where a row has no value)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, np.ndarray] = {}
    for key in (rows[0].keys() if rows else []):
        cols[key] = np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])
    return cols


def _series(cols: dict, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if key not in cols or "step" not in cols:
        return None
    ok = np.isfinite(cols[key])
    return (cols["step"][ok], cols[key][ok]) if ok.any() else None


# ---------------------------------------------------------------------------------------------- figures
def plot_loss_curves(metrics_csv: Path | str, path: Path | str) -> Path:
    """2x2 panels over optimiser steps: spectral loss (train, val); KL (train, val) with beta; harmonic and noise
    energy (dB); validation loss and active latents."""
    plt = _plt()
    cols = read_metrics_csv(metrics_csv)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        (axes[0, 0], "spectral loss", [("train/spectral", "train"), ("val/spectral", "validation")]),
        (axes[0, 1], "KL (nats per frame, summed over latents)", [("train/kl", "train"), ("val/kl", "validation")]),
        (axes[1, 0], "energy (dB)", [("train/harmonic_db", "harmonic (train)"), ("train/noise_db", "noise (train)"),
                                     ("val/harmonic_db", "harmonic (val)"), ("val/noise_db", "noise (val)")]),
        (axes[1, 1], "validation loss", [("val/loss", "val loss (spectral + beta KL)")]),
    ]
    for ax, title, keys in panels:
        for key, label in keys:
            s = _series(cols, key)
            if s is not None:
                ax.plot(*s, marker="." if len(s[0]) < 30 else None, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    beta = _series(cols, "train/beta")
    if beta is not None:
        twin = axes[0, 1].twinx()
        twin.plot(*beta, color="grey", ls="--", label="beta")
        twin.set_ylabel("beta", color="grey")
    active = _series(cols, "val/active_latents")
    if active is not None:
        twin = axes[1, 1].twinx()
        twin.plot(*active, color="grey", ls="--", marker=".", label="active latents")
        twin.set_ylabel("active latents", color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_midi_accuracy(result: dict, path: Path | str) -> Path:
    """Pitch error (cents) and measured loudness over the played notes, one line per velocity."""
    plt = _plt()
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for v in result["velocities"]:
        rows = [r for r in result["rows"] if r["velocity"] == v]
        notes = [r["note"] for r in rows]
        cents = [r["f0_cents"] if r["f0_cents"] is not None else np.nan for r in rows]
        a.plot(notes, cents, marker="o", ms=3, label=f"velocity {v}")
        b.plot(notes, [r["loudness_db"] if r["loudness_db"] is not None else np.nan for r in rows], marker="o", ms=3,
               label=f"velocity {v} (in {rows[0]['loudness_in_db']:.0f} dB)" if rows else f"velocity {v}")
    a.axhspan(-5, 5, color="green", alpha=0.1, label="±5 cents")
    a.set_yscale("symlog", linthresh=5)
    worst = max([abs(r["f0_cents"]) for r in result["rows"] if r["f0_cents"] is not None
                 and math.isfinite(r["f0_cents"])] or [0.0])
    top = max(20.0, 1.3 * worst)
    a.set_ylim(-top, top)
    a.set_yticks([t for t in (-1200, -100, -20, -5, 0, 5, 20, 100, 1200) if abs(t) <= top])
    a.set_yticklabels([f"{t:+d}" if t else "0" for t in (-1200, -100, -20, -5, 0, 5, 20, 100, 1200) if abs(t) <= top])
    a.set_ylabel("f0 error (cents)")
    a.set_title("pitch error of held notes played from MIDI (latents at their means)", fontsize=10)
    b.set_ylabel("measured loudness (dB)")
    b.set_xlabel("MIDI note")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _attribute_label(weight) -> str:
    return "attributes ?" if weight is None else ("no attributes" if weight == 0 else f"attributes {weight:g}")


def _regularisation(row: dict) -> tuple:
    """(attribute weight, invariance weight) of a beta-table row; rows from before the invariance term have 0."""
    return row.get("attribute_weight"), row.get("invariance_weight") or 0.0


def _regularisation_label(key: tuple) -> str:
    attributes, invariance = key
    return _attribute_label(attributes) + (f" + invariance {invariance:g}" if invariance else "")


def plot_beta_table(results: dict, path: Path | str) -> Path:
    """MIG / DCI disentanglement and active latents over beta (left), held-out spectral distance (right); one
    line per regularisation (attribute and invariance weights) when the rows differ in it. Of several rows with
    the same regularisation and beta, the last one listed (the newest) is drawn."""
    plt = _plt()
    newest: dict = {}
    for r in results["rows"]:
        newest[(_regularisation(r), r["beta"])] = r
    rows = sorted(newest.values(), key=lambda r: r["beta"])
    groups: dict = {}
    for r in rows:
        groups.setdefault(_regularisation(r), []).append(r)
    several = len(groups) > 1
    all_betas = [r["beta"] for r in rows]
    scale = ("log",) if min(all_betas) > 0 else ("symlog",)
    kwargs = {} if min(all_betas) > 0 else {"linthresh": 0.1}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    twin = a.twinx()
    styles = ["-", ":", "-."]
    for g, (reg, group) in enumerate(sorted(groups.items(), key=lambda kv: (-(kv[0][0] or 0), -kv[0][1]))):
        betas = [r["beta"] for r in group]
        suffix = f", {_regularisation_label(reg)}" if several else ""
        for c, (key, label) in enumerate((("mig", "MIG"), ("mig_active", "MIG (active latents)"),
                                          ("dci_disentanglement", "DCI disentanglement (linear)"))):
            ys = [r.get(key) for r in group]
            if any(y is not None for y in ys):
                a.plot(betas, [np.nan if y is None else y for y in ys], marker="o", color=f"C{c}",
                       ls=styles[g % len(styles)], label=label + suffix)
        twin.plot(betas, [r.get("active_latents") for r in group], color="grey", ls=styles[g % len(styles)],
                  marker="s")
        b.plot(betas, [np.nan if r.get("spectral_distance") is None else r["spectral_distance"] for r in group],
               marker="o", ls=styles[g % len(styles)], label=_regularisation_label(reg) if several else None)
    ticks = sorted(set(all_betas))
    for axis in (a, b):
        axis.set_xscale(*scale, **kwargs)
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.minorticks_off()
    a.set_xlabel("beta")
    a.set_ylabel("score")
    a.set_ylim(0, 1)
    a.grid(alpha=0.3)
    twin.set_ylabel("active latents (grey)", color="grey")
    twin.set_ylim(0, max([r.get("latent_dim") or r.get("active_latents") or 1 for r in rows]) + 0.5)
    a.legend(fontsize=7)
    b.set_xlabel("beta")
    b.set_ylabel("held-out spectral distance")
    b.grid(alpha=0.3)
    if several:
        b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_time_to_quality(results: dict, path: Path | str) -> Path:
    """Held-out spectral distance, f0 error and loudness error over the training budget (minutes)."""
    plt = _plt()
    rows = sorted(results["rows"], key=lambda r: r["budget_s"])
    minutes = [r["budget_s"] / 60 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in zip(axes, ("spectral_distance", "f0_cents_median", "loudness_db_median"),
                              ("spectral distance", "f0 error median (cents)", "loudness error median (dB)")):
        ax.plot(minutes, [np.nan if r.get(key) is None else r[key] for r in rows], marker="o")
        ax.set_xlabel("training budget (min)")
        ax.set_title(f"held-out {label}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------- sections
def _invariance_section(inv: list[dict]) -> list[str]:
    from evaluation.playing import INVARIANCE_DESCRIPTOR_UNITS, INVARIANCE_F0_CENTS, INVARIANCE_LOUDNESS_DB
    out = ["## Invariance: does each knob change timbre only?", "",
           f"Every active latent swept 0..1 (others at their means) on held notes at "
           f"{_fmt(inv[0]['pitches_hz'], '.0f') if inv else '–'} Hz. Pass: |f0 error| < {INVARIANCE_F0_CENTS:g} cents "
           f"and |loudness change vs knob 0.5| < {INVARIANCE_LOUDNESS_DB:g} dB at every knob value and pitch, and the "
           f"named descriptor rising by at least {INVARIANCE_DESCRIPTOR_UNITS:g} unit(s) (export.DESCRIPTORS: "
           f"0.25 octave of centroid, 6 dB of noise ratio, ...) from knob 0 to 1, median over pitches.", ""]
    if not inv:
        return out + ["No active latent.", ""]
    rows = [[r["latent"], f"z{r['index']}", r["kl_nats"], r["descriptor"] + (" (measured)" if r["descriptor_from"] == "measured" else ""),
             _fmt(r["f0_cents_max_abs"], ".2f"), _fmt(r["loudness_db_max_abs"], ".2f"),
             f"{_fmt(r['descriptor_delta'], '+.3g')} ({_fmt(r['descriptor_delta_units'], '+.2f')} u)",
             "pass" if r["pass"] else "FAIL: " + ", ".join(k for k in ("f0", "loudness", "descriptor") if not r[f"{k}_pass"])]
            for r in inv]
    out += [markdown_table(["latent", "z", "KL (nats)", "descriptor", "max \\|f0\\| (cents)", "max \\|Δ loudness\\| (dB)",
                            "descriptor 0→1", "result"], rows), ""]
    out += [f"{sum(r['pass'] for r in inv)} of {len(inv)} active latents pass.", ""]
    return out


def _midi_section(m: dict, figure: str) -> list[str]:
    lo, hi = (min(m["notes"]), max(m["notes"])) if m["notes"] else (None, None)
    return ["## Playing from MIDI: pitch and loudness accuracy", "",
            f"Notes {lo}–{hi} at velocities {', '.join(map(str, m['velocities']))} (velocity mapped linearly onto the "
            f"corpus loudness range), held {m['seconds']} s; f0 by pYIN refined below its 10-cent grid.", "",
            markdown_table(["renders", "median \\|cents\\|", "95th pct \\|cents\\|", "max \\|cents\\|", "within ±5 cents",
                            "octave errors", "unvoiced", "loudness rises with velocity", "slope dB/dB"],
                           [[m["renders"], _fmt(m["f0_cents_median_abs"], ".2f"), _fmt(m["f0_cents_p95_abs"], ".2f"),
                             _fmt(m["f0_cents_max_abs"], ".2f"), f"{100 * m['within_tolerance_fraction']:.0f}%",
                             m["octave_errors"], m["unvoiced"],
                             f"{100 * m['loudness_rises_fraction']:.0f}% of notes", _fmt(m["loudness_slope_db_per_db"], ".2f")]]),
            "", f"![f0 accuracy]({figure})", ""]


def _disentanglement_section(d: dict) -> list[str]:
    names = d["factor_names"]
    out = ["## Disentanglement on the synthetic corpus", "",
           f"{d['n_segments']} segments with known factors; MIG with {d['n_bins']} equal-width bins; DCI with a linear "
           f"importance matrix (|standardised least-squares weights|, no gradient boosting).", "",
           markdown_table(["MIG", "MIG (active latents)", "DCI disentanglement", "DCI completeness",
                           "DCI informativeness (R²)"],
                          [[_fmt(d["mig"], ".3f"), _fmt(d["mig_active"], ".3f"), _fmt(d["dci"]["disentanglement"], ".3f"),
                            _fmt(d["dci"]["completeness"], ".3f"), _fmt(d["dci"]["informativeness"], ".3f")]]), "",
           markdown_table(["factor", "MIG", "most informative latent", "its MI / H(factor)"],
                          [[f, _fmt(d["mig_per_factor"][k], ".3f"), str(b["latent"]), _fmt(b["mi_over_entropy"], ".3f")]
                           for k, (f, b) in enumerate(zip(names, d["best_latent_per_factor"]))]), ""]
    return out


def _results_section(data: dict, report_dir: Path) -> list[str]:
    kind = data.get("kind")
    rows = data.get("rows", [])
    if not rows:
        return [f"## {kind}: no rows", ""]
    if kind == "beta_table":
        plot_beta_table(data, report_dir / "beta_table.png")
        table = [[r["beta"], _regularisation_label(_regularisation(r)), r.get("steps"), r.get("active_latents"),
                  _fmt(r.get("mig"), ".3f"),
                  _fmt(r.get("mig_active"), ".3f"), _fmt(r.get("dci_disentanglement"), ".3f"),
                  _fmt(r.get("spectral_distance"), ".3f"), _fmt(r.get("f0_cents_median"), ".2f"),
                  _fmt(r.get("loudness_db_median"), ".2f"),
                  f"{r['invariance_pass']}/{r['invariance_checked']}" if "invariance_pass" in r else "–",
                  ", ".join(r.get("latent_names", []))]
                 for r in sorted(rows, key=lambda r: (-(r.get("attribute_weight") or 0), -(r.get("invariance_weight") or 0),
                                                      r["beta"]))]
        s = data.get("settings", {})
        return ["## Beta table", "",
                f"Corpus {s.get('corpus')}, evaluated on {s.get('eval_corpus')}; budget {s.get('max_time_s')} s per run.",
                "", markdown_table(["beta", "regularisation", "steps", "active", "MIG", "MIG active", "DCI D", "held-out spectral",
                                    "f0 (cents)", "loudness (dB)", "invariance", "names"], table), "",
                "![beta table](beta_table.png)", ""]
    if kind == "time_to_quality":
        plot_time_to_quality(data, report_dir / "time_to_quality.png")
        table = [[f"{r['budget_s'] / 60:g} min", r.get("steps"), r.get("fit_seconds"), _fmt(r.get("best_val_loss"), ".3f"),
                  _fmt(r.get("spectral_distance"), ".3f"), _fmt(r.get("f0_cents_median"), ".2f"),
                  _fmt(r.get("loudness_db_median"), ".2f"), r.get("active_latents"), _fmt(r.get("mig"), ".3f"),
                  _fmt(r.get("midi_f0_cents_median_abs"), ".2f")] for r in sorted(rows, key=lambda r: r["budget_s"])]
        return ["## Time to quality", "", f"Corpus {data.get('settings', {}).get('corpus')}.", "",
                markdown_table(["budget", "steps", "fit s", "best val loss", "held-out spectral", "f0 (cents)",
                                "loudness (dB)", "active", "MIG", "MIDI \\|cents\\|"], table), "",
                "![time to quality](time_to_quality.png)", ""]
    if kind == "instrument_quality":
        table = [[r["instrument"], r.get("steps"), _fmt(r.get("spectral_distance"), ".3f"),
                  _fmt(r.get("f0_cents_median"), ".2f"), _fmt(r.get("loudness_db_median"), ".2f"),
                  _fmt(r.get("midi_f0_cents_median_abs"), ".2f"), _fmt(r.get("midi_loudness_rises_fraction"), ".2f"),
                  r.get("active_latents"),
                  f"{r['invariance_pass']}/{r['invariance_checked']}" if "invariance_pass" in r else "–",
                  ", ".join(r.get("latent_names", []))] for r in rows]
        s = data.get("settings", {})
        return ["## Real instruments (FluidR3_GM via fluidsynth)", "",
                f"{s.get('n_files')} phrases × {s.get('seconds_per_file')} s per instrument, budget {s.get('max_time_s')} s.",
                "", markdown_table(["instrument", "steps", "held-out spectral", "f0 (cents)", "loudness (dB)",
                                    "MIDI \\|cents\\|", "loudness rises", "active", "invariance", "names"], table), ""]
    return [f"## {kind}", "", "```", json.dumps(data, indent=1)[:4000], "```", ""]


# ---------------------------------------------------------------------------------------------- the report
CLIP_SECONDS = 12.0


def _audio_clips(resynth: Path, out_dir: Path) -> tuple[Path, Path] | None:
    """The first CLIP_SECONDS of a held-out resynthesis and its original as Ogg Vorbis in ``out_dir`` (None
    when the original is missing or this libsndfile cannot write Vorbis)."""
    import soundfile as sf

    original = resynth.with_name(resynth.name.replace(".resynth", ".original"))
    if not original.exists():
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for source in (resynth, original):
            info = sf.info(str(source))
            audio, rate = sf.read(str(source), frames=int(CLIP_SECONDS * info.samplerate), dtype="float32")
            target = out_dir / (source.stem + ".ogg")
            sf.write(str(target), audio, rate, format="OGG", subtype="VORBIS")
            written.append(target)
    except (RuntimeError, sf.LibsndfileError, ValueError):
        return None
    return written[0], written[1]


def write_report(run_dir: Path | str, report_dir: Path | str | None = None, results: Sequence[Path | str | dict] = (),
                 eval_corpus: Path | str | None = None, quick: bool = False, log=print) -> Path:
    """Write <report_dir>/report.md (default <run_dir>/report) and its PNGs; returns the markdown path."""
    from instrument.model.bundle import load_bundle
    from evaluation.info import format_card
    from evaluation.disentanglement import disentanglement_scores
    from evaluation.playing import invariance_check, midi_play_accuracy
    from evaluation.experiments import write_json
    from evaluation.plots import plot_latent_traversals

    run_dir = Path(run_dir)
    report_dir = Path(report_dir) if report_dir else run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    model_file = run_dir / "model.sdga"
    if not model_file.exists() and summary.get("model_file"):
        model_file = Path(summary["model_file"])
    bundle = load_bundle(model_file)
    evaluation: dict = {}
    if (run_dir / "evaluation.json").exists():
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
    t0 = time.time()
    if eval_corpus is not None:
        from evaluation.synthetic_corpus import load_factors
        evaluation["disentanglement"] = disentanglement_scores(bundle, sorted(Path(eval_corpus).glob("*.wav")),
                                                               load_factors(eval_corpus))
    if evaluation.get("invariance") is None:
        evaluation["invariance"] = invariance_check(bundle, n_steps=3 if quick else 5, n_pitches=1 if quick else 3,
                                                    seconds=0.6 if quick else 1.0)
    if evaluation.get("midi") is None:
        notes = None
        if quick:
            lo, hi = bundle.f0_range_hz()
            notes = sorted({int(round(69 + 12 * math.log2(f / 440))) for f in (lo * 1.05, math.sqrt(lo * hi), hi / 1.05)})
        evaluation["midi"] = midi_play_accuracy(bundle, notes=notes, velocities=(40, 120) if quick else (32, 64, 96, 127))
    write_json(report_dir / "evaluation.json", evaluation)
    log(f"evaluation: {time.time() - t0:.1f} s")

    md = [f"# sdga report: {run_dir}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')}.", "", "## Model", "", "```",
          format_card(model_file, bundle), "```", ""]
    h = summary.get("heldout") or {}
    if h:
        md += ["## Held-out resynthesis", "",
               markdown_table(["seconds", "spectral distance", "f0 error median (cents)", "f0 error mean (cents)",
                               "loudness error median (dB)", "loudness error mean (dB)"],
                              [[h.get("seconds"), _fmt(h.get("spectral_distance"), ".3f"), _fmt(h.get("f0_cents_median"), ".2f"),
                                _fmt(h.get("f0_cents_mean"), ".2f"), _fmt(h.get("loudness_db_median"), ".2f"),
                                _fmt(h.get("loudness_db_mean"), ".2f")]]), ""]
        heldout = sorted((run_dir / "heldout").glob("*.resynth.wav"))[:6]
        clips = _audio_clips(heldout[0], report_dir / "audio") if heldout else None
        if clips:                  # copied into the report, so that a committed report plays without its run
            md += [f"Listen (the first {CLIP_SECONDS:g} s of one held-out phrase, Ogg Vorbis): "
                   f"[{clips[0].name}](audio/{clips[0].name}) / [original](audio/{clips[1].name})", ""]
        elif heldout:
            md += ["Listen: " + ", ".join(f"[{p.name}]({os.path.relpath(p, report_dir)}) / "
                                          f"[original]({os.path.relpath(p.with_name(p.name.replace('.resynth', '.original')), report_dir)})"
                                          for p in heldout), ""]
    metrics_csv = run_dir / "logs" / "metrics.csv"
    if metrics_csv.exists():
        plot_loss_curves(metrics_csv, report_dir / "loss_curves.png")
        md += ["## Training curves", "", "![loss curves](loss_curves.png)", ""]
    plot_latent_traversals(bundle, report_dir / "latents.png")
    md += ["## Latent traversals", "", "Each latent's knob from 0 to 1 on a held note at the corpus's median pitch "
           "and loudness (other latents at their means); names measured at export.", "", "![latents](latents.png)", ""]
    if evaluation.get("disentanglement"):
        md += _disentanglement_section(evaluation["disentanglement"])
    md += _invariance_section(evaluation["invariance"])
    plot_midi_accuracy(evaluation["midi"], report_dir / "f0_accuracy.png")
    md += _midi_section(evaluation["midi"], "f0_accuracy.png")
    for item in results:
        data = item if isinstance(item, dict) else json.loads(Path(item).read_text())
        md += _results_section(data, report_dir)
    path = report_dir / "report.md"
    path.write_text("\n".join(md))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdga-report", description="Write a markdown report with figures for a run "
                                "folder (and experiment tables from JSON results).")
    p.add_argument("run_dir", type=Path, help="a run folder written by sdga-train")
    p.add_argument("-o", "--out", type=Path, help="report folder [<run_dir>/report]")
    p.add_argument("--results", type=Path, nargs="*", default=[], help="JSON results of the evaluation drivers "
                   "(beta_table.json, time_to_quality.json, instrument_quality.json)")
    p.add_argument("--eval-corpus", type=Path, help="a synthetic corpus (evaluation.synthetic_corpus) to measure "
                   "disentanglement on")
    p.add_argument("--quick", action="store_true", help="fewer pitches, knob steps and notes")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)
    from instrument.model.modelfile import ModelFileError
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if not (args.run_dir / "model.sdga").exists() and not (args.run_dir / "summary.json").exists():
        print(f"sdga-report: {args.run_dir}: not a run folder (no model.sdga or summary.json)", file=sys.stderr)
        return 2
    try:
        path = write_report(args.run_dir, args.out, args.results, eval_corpus=args.eval_corpus, quick=args.quick)
    except (ModelFileError, FileNotFoundError, ValueError) as exc:
        print(f"sdga-report: {exc}", file=sys.stderr)
        return 2
    print(f"report written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
