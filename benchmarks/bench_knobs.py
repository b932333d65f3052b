"""Knobs worth turning (issue 14): per model, per offered knob, what its full sweep (knob 0 -> 1, every other
knob at its default) does to the sound, measured from the audio alone.

Each model plays a note grid: 3 MIDI notes in its pitch range (15 / 50 / 85 % of the range, log) x 2 velocities
(64, 110), 1 s held notes rendered offline through the engine exactly as sdga-render plays a MIDI file
(instrument.apps.render.render_events, learnt articulation), held without vibrato (``--vibrato-depth 0``, the
default here: the learnt vibrato moves the upper harmonics by more than the Hann main lobe around each one, and
that smear would count as noise; ``--vibrato-depth 1`` measures as played). From the steady part (0.3..1.0 s):
spectral centroid and spread (Hz), flatness, odd/even harmonic ratio (dB, harmonic peaks read at k * f0), the
noise-to-harmonic ratio (dB: the power away from the harmonic peaks against the power at them), the rendered
pitch (cents, harmonic peaks) and the A-weighted loudness (dB). Per knob: the median over notes of the change
0 -> 1 of every descriptor; the named descriptor's change in natural units (% for centroid / spread, dB for the
ratios, flatness in dB); its ratio to the largest change any other offered knob makes to the same descriptor;
the largest pitch and loudness move against knob 0.5 over the grid. Pass / fail against issue 14's targets
(>= 3 knobs, unique names, >= 30 % for a frequency descriptor, >= 4 dB for a ratio, >= 3x, pitch < 5 cents,
loudness < 1.5 dB).

Baseline: the same figures for a model file exported with the old raw-latent knobs (``sdga-train CORPUS -o RUN
--export-only --knobs raw``, or a file written before issue 14): give both files.

    python benchmarks/bench_knobs.py cello=/tmp/run/model.sdga cello-raw=/tmp/run/model-raw.sdga \\
        --json benchmarks/results/knobs_48k.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.apps.render import render_events  # noqa: E402
from instrument.engine.engine import Engine  # noqa: E402
from instrument.engine.events import LatentSet, NoteOff, NoteOn, Param, ParamSet  # noqa: E402
from instrument.model.bundle import load_bundle  # noqa: E402
from training.descriptors import DESCRIPTORS  # noqa: E402
from training.features import a_weighted_loudness_db  # noqa: E402
from training.knobs import rendered_pitch_cents  # noqa: E402

VELOCITIES = (64, 110)
NOTE_SECONDS = 1.0
STEADY_S = (0.3, 1.0)
FREQUENCY_KEYS = ("centroid_octaves", "spread_octaves")
TARGET_PERCENT = 30.0
TARGET_DB = 4.0
TARGET_SEPARATION = 3.0
TARGET_PITCH_CENTS = 5.0
TARGET_LOUDNESS_DB = 1.5
TARGET_KNOBS = 3


def audio_descriptors(audio: np.ndarray, f0_hz: float, sample_rate: int) -> dict:
    """Descriptors of a steady note from its audio alone (keys as training.descriptors.DESCRIPTORS)."""
    n_fft = 8192
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[:: n_fft // 4] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2 + 1e-20
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    p = power.mean(0)
    centroid = float((freqs * p).sum() / p.sum())
    spread = float(np.sqrt(((freqs - centroid) ** 2 * p).sum() / p.sum()))
    flatness = float(np.exp(np.mean(np.log(power), axis=-1)).mean() / power.mean(-1).mean())
    bin_hz = sample_rate / n_fft
    near = np.zeros_like(p, dtype=bool)
    odd = even = 0.0
    k = 1
    while k * f0_hz < 0.45 * sample_rate:
        centre = k * f0_hz / bin_hz
        lo, hi = int(max(0, math.floor(centre - 3))), int(math.ceil(centre + 3)) + 1     # the Hann main lobe
        near[lo:hi] = True
        energy = float(p[lo:hi].sum())
        if k % 2:
            odd += energy
        else:
            even += energy
        k += 1
    harmonic = float(p[near].sum())
    noise = float(p[~near].sum())
    return {"centroid_hz": centroid, "spread_hz": spread,
            "centroid_octaves": math.log2(max(centroid, 1.0)), "spread_octaves": math.log2(max(spread, 1.0)),
            "flatness_log10": math.log10(flatness + 1e-30),
            "noise_ratio_db": 10 * math.log10(noise + 1e-30) - 10 * math.log10(harmonic + 1e-30),
            "odd_even_db": 10 * math.log10((odd + 1e-30) / (even + 1e-30))}


def render_note(bundle, note: int, velocity: int, latents: dict[int, float], vibrato_depth: float = 0.0
                ) -> tuple[np.ndarray, int]:
    engine = Engine(bundle, noise_seed=0)
    engine.prepare(None, 512, 1)
    sr = engine.sample_rate
    events = [(0, LatentSet(i, k, knob=True)) for i, k in latents.items()]
    events += [(0, ParamSet(int(Param.VIBRATO_DEPTH), vibrato_depth)), (0, NoteOn(note, velocity)), (int(NOTE_SECONDS * sr), NoteOff(note))]
    return render_events(engine, events, int((NOTE_SECONDS + 0.1) * sr)), sr


def measure(bundle, note: int, velocity: int, latents: dict[int, float], vibrato_depth: float = 0.0) -> dict:
    audio, sr = render_note(bundle, note, velocity, latents, vibrato_depth)
    steady = audio[int(STEADY_S[0] * sr):int(STEADY_S[1] * sr)].astype(np.float64)
    f0 = 440.0 * 2 ** ((note - 69) / 12)
    out = audio_descriptors(steady, f0, sr)
    ld = a_weighted_loudness_db(steady.astype(np.float32), sr, 128, 2048).astype(np.float64)
    out["loudness_db"] = float(10 * np.log10(np.mean(10 ** (ld / 10)) + 1e-30))
    out["pitch_cents"] = rendered_pitch_cents(steady, f0, sr)
    return out


def grid_notes(bundle) -> list[int]:
    lo, hi = bundle.f0_range_hz()
    notes = []
    for f in (0.15, 0.5, 0.85):
        hz = lo * (hi / lo) ** f
        notes.append(int(round(69 + 12 * math.log2(hz / 440.0))))
    return notes


def named_descriptor(info, deltas: dict) -> str:
    if getattr(info, "descriptor", None):
        return info.descriptor
    base = re.sub(r"\d+$", "", info.name)
    for key, (label, _unit) in DESCRIPTORS.items():
        if label == base and key != "loudness_db":
            return key
    return max((k for k in DESCRIPTORS if k != "loudness_db"), key=lambda k: abs(deltas[k]) / DESCRIPTORS[k][1])


def natural_change(key: str, lo: list[dict], hi: list[dict]) -> float:
    """% for centroid / spread (median over notes of the ratio), dB for the ratios and flatness."""
    if key in FREQUENCY_KEYS:
        hz = key.replace("_octaves", "_hz")
        return float(np.median([100.0 * (b[hz] / a[hz] - 1.0) for a, b in zip(lo, hi)]))
    scale = 10.0 if key == "flatness_log10" else 1.0
    return float(np.median([scale * (b[key] - a[key]) for a, b in zip(lo, hi)]))


def bench_model(label: str, path: Path, vibrato_depth: float = 0.0) -> dict:
    bundle = load_bundle(path, with_encoder=False)
    notes = grid_notes(bundle)
    knobs = [l for l in bundle.latents if l.active]
    defaults = {l.index: min(max(l.z_to_knob(l.mean), 0.0), 1.0) for l in bundle.latents}
    t0 = time.perf_counter()
    sweeps = {}
    for info in knobs:
        per = {}
        for k in (0.0, 0.5, 1.0):
            per[k] = [measure(bundle, n, v, {**defaults, info.index: k}, vibrato_depth)
                      for n in notes for v in VELOCITIES]
        sweeps[info.index] = per
    keys = [k for k in DESCRIPTORS if k != "loudness_db"]
    rows = []
    for info in knobs:
        per = sweeps[info.index]
        deltas = {k: float(np.median([b[k] - a[k] for a, b in zip(per[0.0], per[1.0])])) for k in keys}
        key = named_descriptor(info, deltas)
        change = natural_change(key, per[0.0], per[1.0])
        others = [natural_change(key, sweeps[o.index][0.0], sweeps[o.index][1.0]) for o in knobs if o is not info]
        worst = max((abs(x) for x in others), default=0.0)
        ratio = abs(change) / worst if worst > 0 else math.inf
        pitch = max(abs(x["pitch_cents"] - m["pitch_cents"]) for end in (0.0, 1.0)
                    for x, m in zip(per[end], per[0.5]))
        loud = max(abs(x["loudness_db"] - m["loudness_db"]) for end in (0.0, 1.0)
                   for x, m in zip(per[end], per[0.5]))
        target = TARGET_PERCENT if key in FREQUENCY_KEYS else TARGET_DB
        row = {"knob": info.name, "index": info.index, "descriptor": key, "change": change,
               "unit": "%" if key in FREQUENCY_KEYS else "dB", "ratio_to_other_knobs": ratio,
               "pitch_cents_max": pitch, "loudness_db_max": loud, "deltas": deltas,
               "corpus_band": [getattr(info, "corpus_low", None), getattr(info, "corpus_high", None)]}
        row["pass_change"] = bool(change >= target)          # up = more of the named quality
        row["pass_ratio"] = bool(ratio >= TARGET_SEPARATION)
        row["pass_pitch"] = bool(pitch < TARGET_PITCH_CENTS)
        row["pass_loudness"] = bool(loud < TARGET_LOUDNESS_DB)
        row["pass"] = row["pass_change"] and row["pass_ratio"] and row["pass_pitch"] and row["pass_loudness"]
        rows.append(row)
    names = [r["knob"] for r in rows]
    unique = len(set(names)) == len(names) and not any(re.search(r"\d$", n) for n in names)
    passing = sum(r["pass"] for r in rows)
    return {"label": label, "path": str(path), "notes": notes, "velocities": list(VELOCITIES),
            "knob_analysis": bundle.metadata.get("training", {}).get("knob_analysis", "raw (before issue 14)"),
            "model_step": bundle.metadata.get("training", {}).get("model_step"),
            "knobs": rows, "offered": len(rows), "passing": passing, "unique_plain_names": unique,
            "pass": bool(passing >= TARGET_KNOBS and passing == len(rows) and unique),
            "seconds": round(time.perf_counter() - t0, 1)}


def format_result(r: dict) -> str:
    lines = [f"{r['label']}: {r['path']} ({r['knob_analysis']}, step {r['model_step']}), notes {r['notes']} x "
             f"velocities {r['velocities']}, {r['seconds']} s",
             f"  {'knob':<12} {'descriptor':<17} {'change':>9} {'x others':>9} {'pitch c':>8} {'loud dB':>8}  pass"]
    for k in r["knobs"]:
        ratio = "inf" if math.isinf(k["ratio_to_other_knobs"]) else f"{k['ratio_to_other_knobs']:.1f}"
        fails = [n for n in ("change", "ratio", "pitch", "loudness") if not k[f"pass_{n}"]]
        lines.append(f"  {k['knob']:<12} {k['descriptor']:<17} {k['change']:>+8.1f}{k['unit']:<1} {ratio:>9} "
                     f"{k['pitch_cents_max']:>8.2f} {k['loudness_db_max']:>8.2f}  "
                     f"{'yes' if k['pass'] else 'no (' + ', '.join(fails) + ')'}")
    lines.append(f"  {r['passing']} of {r['offered']} knobs pass; unique plain names: {r['unique_plain_names']}; "
                 f"model {'PASSES' if r['pass'] else 'fails'} (>= {TARGET_KNOBS} knobs, all passing)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="LABEL=MODEL.sdga or MODEL.sdga")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vibrato-depth", type=float, default=0.0,
                   help="the engine's vibrato_depth for the held notes [0: steady notes; 1 plays the learnt vibrato, "
                        "whose smear of the upper harmonics the noise/harmonic ratio reads as noise]")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for item in args.models:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).parent.name or item, item
        r = bench_model(label, Path(path), args.vibrato_depth)
        print(format_result(r), flush=True)
        results.append(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                                         "threads": args.threads, "vibrato_depth": args.vibrato_depth,
                                         "results": results}, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
