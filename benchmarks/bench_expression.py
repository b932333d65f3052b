"""Note expression: a model played from MIDI with the ADSR vs with the articulation learnt from its corpus, against
the recording of the same MIDI, with resynthesis (the recording's own f0 and loudness through the same model) as
the floor.

Held-out phrases are new random phrases (evaluation.demo_corpus.write_phrase_midi, seeds the training corpus did
not use) rendered by fluidsynth with FluidR3 and, where ``timidity`` and freepats are installed and have the
program, by timidity (another sample set). Figures, by the reference definitions in /work/shared/measure/measure.py
(imported from there, not re-implemented): A-weighted loudness-contour L1 (16 kHz, 10 ms frames, frames within
50 dB of the recording's loudest) and the multi-resolution spectral distance. Also a note grid (velocities
32/64/96/127 on three pitches, 1 s each) through measure.py's ``grid``: velocity monotonic in loudness on every
note, and the held notes' pitch error in cents. ``uncalibrated`` (the articulation without the model's
measured input -> output loudness) shows what the calibration brings.

    python benchmarks/bench_expression.py cello=runs/cello/model.sdga:data/cello clarinet=...:... \\
        --phrases 3 --out benchmarks/results/expression_48k.json

Given a corpus folder, the articulation is (re)fitted from it (the time is reported), else the model file's is used.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.demo_corpus import (INSTRUMENTS, render_midi as fluidsynth_render, timidity_has,  # noqa: E402
                                    timidity_render, write_phrase_midi)
from instrument.apps.render import render_midi as model_render  # noqa: E402
from dataclasses import replace  # noqa: E402

from instrument.engine.events import param_event  # noqa: E402
from instrument.model.bundle import load_bundle  # noqa: E402
from instrument.model.offline import encode_means, render_controls  # noqa: E402
from training.corpus import load_corpus  # noqa: E402
from training.expression import calibrate_levels, fit_articulation  # noqa: E402
from training.features import FeatureSettings, extract_corpus_features, extract_features  # noqa: E402

MEASURE = Path("/work/shared/measure/measure.py")
# envelope: the ADSR (what the instrument played before); learned: the articulation; uncalibrated: the
# articulation with velocity -> decoder input taken as the corpus's levels (no measurement of the model)
MODES = ("envelope", "learned", "uncalibrated")


def load_measure(path: Path):
    spec = importlib.util.spec_from_file_location("sdga_reference_measure", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures(measure, ref_path: Path, out_path: Path) -> dict:
    """measure.py's transfer figures without its pYIN f0 (slow, and not what this benchmark compares): the same
    loudness-contour and MSS lines, on the same loaded signals."""
    a, b = measure.load(str(ref_path)), measure.load(str(out_path))
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    la, lb = measure.loudness_db(a), measure.loudness_db(b)
    m2 = min(len(la), len(lb))
    act = la[:m2] > la.max() - 50
    return {"loudness_db_l1": float(np.mean(np.abs(la[:m2][act] - lb[:m2][act]))), "mss": float(measure.mss(a, b))}


def resynthesis(bundle, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The recording's own f0 and loudness (and its posterior-mean z) through the model."""
    c = bundle.config
    feats = extract_features(audio, FeatureSettings(sample_rate=c.sample_rate, hop_size=c.hop_size))
    mean, _ = encode_means(bundle.encoder, audio, feats.f0_hz)
    n = feats.n_frames
    z = mean[: n + 1]
    if z.shape[0] < n + 1:
        z = np.concatenate([z, np.repeat(z[-1:], n + 1 - z.shape[0], axis=0)])
    f0 = np.concatenate([feats.f0_hz, feats.f0_hz[-1:]])
    ld = np.concatenate([feats.loudness_db, feats.loudness_db[-1:]])
    return render_controls(bundle.decoder, f0, ld, z, seed=0)[: len(audio)]


def grid_midi(path: Path, program: int, low: int, high: int) -> None:
    """Three pitches x velocities 32/64/96/127, 1 s notes with 0.5 s rests."""
    track = mido.MidiTrack()
    track.append(mido.Message("program_change", program=program, time=0))
    ticks = lambda s: int(round(s * 960))                          # noqa: E731 (120 bpm, 480 tpb)
    gap = 0
    for note in (low + (high - low) // 4, (low + high) // 2, high - (high - low) // 4):
        for velocity in (32, 64, 96, 127):
            track.append(mido.Message("note_on", note=note, velocity=velocity, time=gap))
            track.append(mido.Message("note_off", note=note, velocity=0, time=ticks(1.0)))
            gap = ticks(0.5)
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    midi.save(str(path))


def fit_from_corpus(corpus_dir: Path, bundle, cache_dir: Path | None):
    c = bundle.config
    corpus = load_corpus(corpus_dir, sample_rate=c.sample_rate, log=lambda *a: None)
    settings = FeatureSettings(sample_rate=c.sample_rate, hop_size=c.hop_size)
    feats = extract_corpus_features([f.audio for f in corpus.files], settings, cache_dir, progress=False)
    t0 = time.perf_counter()
    art = fit_articulation([(f.f0_hz, f.voiced, f.loudness_db) for f in feats], 1000.0 * c.hop_size / c.sample_rate,
                           log=print)
    art = calibrate_levels(art, bundle.decoder, bundle.corpus.reference_f0_hz, bundle.default_z().numpy())
    return art, time.perf_counter() - t0


def summary(values: list[float]) -> dict:
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="INSTRUMENT=MODEL[:CORPUS]")
    p.add_argument("--phrases", type=int, default=3, help="held-out phrases per instrument and sample set [3]")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phrase [10]")
    p.add_argument("--seed", type=int, default=1000, help="phrase seeds start here (the corpora used 0) [1000]")
    p.add_argument("--budget", default="", help="training budget of the models, written beside the figures")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--keep", type=Path, help="keep the WAVs here")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/expression_48k.json"))
    p.add_argument("--measure", type=Path, default=MEASURE)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    measure = load_measure(args.measure)
    result = {"machine": platform.platform(), "budget": args.budget, "phrases": args.phrases,
              "seconds": args.seconds, "measure": str(args.measure), "instruments": {}}
    work = Path(args.keep or tempfile.mkdtemp(prefix="sdga-bench-expression-"))
    work.mkdir(parents=True, exist_ok=True)
    for item in args.models:
        name, _, spec = item.partition("=")
        model_path, _, corpus_dir = spec.partition(":")
        bundle = load_bundle(model_path)
        sr = bundle.config.sample_rate
        entry: dict = {"model": model_path}
        if corpus_dir:              # (re)fit from the corpus: older files have none, or an uncalibrated one
            bundle.expression, seconds = fit_from_corpus(Path(corpus_dir), bundle, args.cache_dir)
            entry["fit_seconds"] = round(seconds, 2)
        elif bundle.expression is None:
            raise SystemExit(f"{model_path} has no learnt expression: give its corpus as {name}=MODEL:CORPUS")
        entry["articulation"] = bundle.expression.to_dict()
        uncalibrated = replace(bundle, expression=replace(bundle.expression, level_input_db=()))
        program, low, high = INSTRUMENTS[name]
        sets = [("fluidr3", fluidsynth_render)] + ([("freepats", timidity_render)] if timidity_has(program) else [])
        rows = []
        for set_name, renderer in sets:
            for k in range(args.phrases):
                stem = work / f"{name}_{set_name}_{k}"
                midi_path = stem.with_suffix(".mid")
                write_phrase_midi(midi_path, program, low, high, args.seconds, np.random.default_rng([args.seed, k]))
                ref_path = Path(f"{stem}.ref.wav")
                renderer(midi_path, ref_path)
                ref, _ = sf.read(str(ref_path), dtype="float32")
                row = {"set": set_name, "phrase": k}
                for mode in MODES:
                    played = uncalibrated if mode == "uncalibrated" else bundle
                    expression = "envelope" if mode == "envelope" else "learned"
                    audio, _ = model_render(played, midi_path, sr, initial_events=[param_event("expression", expression)])
                    out_path = Path(f"{stem}.{mode}.wav")
                    sf.write(str(out_path), np.clip(audio, -1, 1), sr, subtype="FLOAT")
                    row[mode] = figures(measure, ref_path, out_path)
                resyn_path = Path(f"{stem}.resynthesis.wav")
                sf.write(str(resyn_path), np.clip(resynthesis(bundle, ref, sr), -1, 1), sr, subtype="FLOAT")
                row["resynthesis"] = figures(measure, ref_path, resyn_path)
                rows.append(row)
                print(f"{name} {set_name} phrase {k}: loudness L1 dB / MSS  ADSR "
                      f"{row['envelope']['loudness_db_l1']:.2f} / {row['envelope']['mss']:.2f}   learnt "
                      f"{row['learned']['loudness_db_l1']:.2f} / {row['learned']['mss']:.2f}   (uncalibrated "
                      f"{row['uncalibrated']['loudness_db_l1']:.2f} / {row['uncalibrated']['mss']:.2f})   resynthesis "
                      f"{row['resynthesis']['loudness_db_l1']:.2f} / {row['resynthesis']['mss']:.2f}", flush=True)
        entry["phrases"] = rows
        entry["summary"] = {mode: {fig: summary([r[mode][fig] for r in rows]) for fig in ("loudness_db_l1", "mss")}
                            for mode in MODES + ("resynthesis",)}
        grid_path = work / f"{name}_grid.mid"
        grid_midi(grid_path, program, low, high)
        grids = {}
        for mode in ("envelope", "learned"):
            audio, _ = model_render(bundle, grid_path, sr, initial_events=[param_event("expression", mode)])
            out_path = work / f"{name}_grid.{mode}.wav"
            sf.write(str(out_path), np.clip(audio, -1, 1), sr, subtype="FLOAT")
            g = measure.grid(str(grid_path), str(out_path))
            g.pop("rows")
            grids[mode] = g
        entry["grid"] = grids
        print(f"{name} grid: {json.dumps(grids)}", flush=True)
        result["instruments"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written {args.out} (WAVs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
