"""Note shape, offline: how well the parametric articulation and the expression GRU predict the loudness of the
corpus's own notes (dB relative to each note's level, per 4-frame step, the GRU's training targets), on the
held-out notes (every 5th note, which the GRU did not train on; the parametric fit saw all notes: an advantage
to it). No model, no rendering: the shape alone, apart from the velocity -> level map and the decoder.

    python benchmarks/bench_expression_shape.py cello=data/cello violin=data/violin --out results/x.json

Modes: ``zero`` (the note level throughout: the baseline), ``learned`` (the fitted articulation as the engine
plays it, tremolo left out: its phase is not the recording's), ``learned_flat`` (the same with no sustain
drift), ``gru``. Figures: mean L1 over held frames, over frames after the note-off, and over all.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.engine.expression import held_level_db, release_level_db  # noqa: E402
from training.corpus import load_corpus  # noqa: E402
from training.expression import fit_articulation  # noqa: E402
from training.expression_gru import FEATURES, NumpyGru, note_sequences, train_gru  # noqa: E402
from training.features import FeatureSettings, extract_corpus_features  # noqa: E402

ON_SLOW, HELD, OFF_SLOW = FEATURES.index("on_slow"), FEATURES.index("held"), FEATURES.index("off_slow")


def parametric(art, x: np.ndarray, n: int, floor_db: float = -60.0) -> np.ndarray:
    """The articulation's level per step of one sequence (features x, n valid steps), as the voice bank plays it."""
    out = np.zeros(n)
    off_level = 0.0
    for j in range(n):
        t_on = -1500.0 * math.log(max(1.0 - x[j, ON_SLOW], 1e-12))
        if x[j, HELD] == 1.0:
            off_level = held_level_db(art, t_on, art.attack_start_db)
            out[j] = off_level
        else:
            t_off = -1000.0 * math.log(max(1.0 - x[j, OFF_SLOW], 1e-12))
            out[j] = max(release_level_db(art, t_off, off_level), floor_db)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpora", nargs="+", metavar="NAME=CORPUS")
    p.add_argument("--gru-units", type=int, default=24)
    p.add_argument("--gru-seconds", type=float, default=45.0)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = FeatureSettings(sample_rate=48000, hop_size=128)
    frame_ms = 1000.0 * settings.hop_size / settings.sample_rate
    result = {"machine": platform.platform(), "corpora": {}}
    for item in args.corpora:
        name, _, corpus_dir = item.partition("=")
        corpus = load_corpus(Path(corpus_dir), sample_rate=settings.sample_rate, log=lambda *a: None)
        feats = extract_corpus_features([f.audio for f in corpus.files], settings, args.cache_dir, progress=False)
        files = [(f.f0_hz, f.voiced, f.loudness_db) for f in feats]
        art = fit_articulation(files, frame_ms, log=lambda *a: None)
        seqs = note_sequences(files, frame_ms)
        t0 = time.perf_counter()
        weights = train_gru(seqs, hidden=args.gru_units, max_seconds=args.gru_seconds)
        train_s = time.perf_counter() - t0
        held_out = np.flatnonzero(np.arange(seqs.features.shape[0]) % 5 == 4)
        errors = {m: {"held": [], "released": []} for m in ("zero", "learned", "learned_flat", "gru")}
        flat = replace(art, sustain_slope_db_per_s=0.0)
        for i in held_out:
            n = int((seqs.masks[i, :, 0] > 0).sum())
            x, y = seqs.features[i, :n].astype(np.float64), seqs.targets[i, :n, 0]
            step = NumpyGru(weights, 1)
            predictions = {"zero": np.zeros(n), "learned": parametric(art, x, n), "learned_flat": parametric(flat, x, n),
                           "gru": np.array([max(step.step(0, x[j])[0], -60.0) for j in range(n)])}
            held = x[:, HELD] == 1.0
            for mode, pred in predictions.items():
                e = np.abs(pred - y)
                errors[mode]["held"] += list(e[held])
                errors[mode]["released"] += list(e[~held])
        entry = {"notes": int(seqs.features.shape[0]), "held_out_notes": int(len(held_out)),
                 "gru_train_seconds": round(train_s, 2), "gru_epochs": weights.epochs,
                 "release_horizon_ms": round(seqs.release_horizon_ms, 1), "l1_db": {}}
        for mode, e in errors.items():
            both = e["held"] + e["released"]
            entry["l1_db"][mode] = {"held": float(np.mean(e["held"])) if e["held"] else None,
                                    "released": float(np.mean(e["released"])) if e["released"] else None,
                                    "all": float(np.mean(both)), "frames_released": len(e["released"])}
        result["corpora"][name] = entry
        print(name, json.dumps(entry), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
