"""Note expression: a model played from MIDI with the ADSR vs with the articulation learnt from its corpus, against
the recording of the same MIDI, with resynthesis (the recording's own f0 and loudness through the same model) as
the floor, also with each frame's loudness through the model's level calibration (``resynthesis_calibrated``).

Held-out phrases are new random phrases (evaluation.demo_corpus.write_phrase_midi, seeds the training corpus did
not use) rendered by fluidsynth with FluidR3 and, where ``timidity`` and freepats are installed and have the
program, by timidity (another sample set). Figures, by the reference definitions in /work/shared/measure/measure.py
(imported from there, not re-implemented): A-weighted loudness-contour L1 (16 kHz, 10 ms frames, frames within
50 dB of the recording's loudest) and the multi-resolution spectral distance. Also a note grid (velocities
32/64/96/127 on three pitches, 1 s each) through measure.py's ``grid``: velocity monotonic in loudness on every
note, and the held notes' pitch error in cents. ``uncalibrated`` (the articulation without the model's
measured input -> output loudness) shows what the calibration brings. ``gru`` is the learnt sequence model
(:mod:`training.expression_gru`) trained on the same segmented notes, played through the same engine by a
voice bank that steps it per voice (:class:`GruVoiceBank`, NumPy, here only: a benchmark mode), with the
same calibrated velocity -> level map: only the shape over the note differs from ``learned``.

    python benchmarks/bench_expression.py cello=runs/cello/model.sdga:data/cello clarinet=...:... \\
        --phrases 3 --out benchmarks/results/expression_48k.json
    # each model against held-out phrases of the sample set it was trained on
    python benchmarks/bench_expression.py cello@fluidr3=runs/cello/model.sdga:data/cello \
        clarinet@freepats=runs/clarinet-freepats/model.sdga:data/clarinet-freepats --out ...

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

from instrument.apps.render import midi_file_events, render_events  # noqa: E402
from instrument.engine.engine import Engine  # noqa: E402
from instrument.engine.events import param_event  # noqa: E402
from instrument.engine.voices import IDLE, RELEASE, VoiceBank  # noqa: E402
from instrument.model.bundle import load_bundle  # noqa: E402
from instrument.model.offline import encode_means, render_controls  # noqa: E402
from training.corpus import load_corpus  # noqa: E402
from training.expression import calibrate_levels, fit_articulation  # noqa: E402
from training.expression_gru import (FEATURES, RELEASE_FRAMES_MS, NumpyGru, frame_features,  # noqa: E402
                                     note_sequences, train_gru)
from training.features import FeatureSettings, extract_corpus_features, extract_features  # noqa: E402
from training.transfer import calibrated_loudness_db  # noqa: E402

MEASURE = Path("/work/shared/measure/measure.py")
# envelope: the ADSR (what the instrument played before); learned: the articulation; uncalibrated: the
# articulation with velocity -> decoder input taken as the corpus's levels (no measurement of the model)
# gru: the learnt sequence model in place of the articulation's level and pitch curves
MODES = ("envelope", "learned", "uncalibrated", "gru")
LEGATO_GAP_MS = 30.0       # a note-on this soon after a note-off (or while a key is held) is entered legato


class GruVoiceBank(VoiceBank):
    """The voice bank with the expression GRU in place of the articulation's curves: per voice and control
    frame (every ``stride`` frames, held between) the GRU's level (dB relative to the note level, which the
    calibrated velocity map still sets) and pitch offset (cents). The articulation's own approach, vibrato and
    tremolo are switched off; its legato glide and velocity map stay. Past the longest release the corpus
    showed (``weights.release_horizon_ms``: releases are cut by the next note) the level falls on at the
    articulation's fitted release rate from where the GRU left it. A note-on within LEGATO_GAP_MS of a
    note-off, or while another key is held, is fed as legato from that note (as the corpus's notes were)."""

    def __init__(self, old: VoiceBank, weights):
        flat = replace(old.articulation, approach_cents=0.0, vibrato_cents=0.0, tremolo_db=0.0)
        super().__init__(old.n_voices, old.sample_rate, old.hop_size, old.loudness_range_db, old.f0_range_hz,
                         old.settings, old.silence_db, articulation=flat)
        n = self.n_voices
        self.gru = NumpyGru(weights, n)
        self.stride = int(weights.stride)
        self._x = np.zeros(len(FEATURES))
        self._rel = np.zeros(n)
        self._horizon_ms = max(float(weights.release_horizon_ms), 0.0)
        self._at_horizon = np.zeros(n)
        self._cents = np.zeros(n)
        self._count = np.zeros(n, np.int64)
        self._interval = np.zeros(n)
        self._legato = np.zeros(n, bool)
        self._frame = 0
        self._last_off = (-1e9, 60.0)           # (sample of the last note-off, its note)

    def _now(self, pos: int) -> int:
        return self._frame * self.hop_size + pos

    def _start(self, index, note, velocity, channel, pos, glide):
        now = self._now(pos)
        held = [v.note for i, v in enumerate(self.voices) if i != index and v.key_down and v.stage != IDLE]
        previous = None
        if (now - self._last_off[0]) * self._ms_per_sample <= LEGATO_GAP_MS:
            previous = self._last_off[1]
        elif held:
            previous = held[-1]
        super()._start(index, note, velocity, channel, pos, glide)
        self.gru.reset(index)
        self._count[index] = 0
        self._legato[index] = previous is not None
        self._interval[index] = 0.0 if previous is None else float(note) - previous

    def _release(self, v, pos):
        if v.key_down:
            self._last_off = (self._now(pos), v.note)
        super()._release(v, pos)

    def _advance_learned(self, v, n):
        if v.stage == RELEASE:
            v.off_samples += n
            if v.off_samples * self._ms_per_sample >= 1.5 * RELEASE_FRAMES_MS:
                v.env_db, v.stage = self.settings.floor_db, IDLE
                v.key_down = v.sustained = False

    def end_interval(self):
        s, hop, ms = self.settings, self.hop_size, self._ms_per_sample
        for i, v in enumerate(self.voices):
            if v.stage == IDLE:
                continue
            self._advance(v, hop)
            if v.stage == IDLE:
                continue
            t_off = v.off_samples * ms if v.stage == RELEASE else -1.0
            if t_off > self._horizon_ms:
                self._rel[i] = self._at_horizon[i] - self.articulation.release_db_per_s * (t_off - self._horizon_ms) * 1e-3
            elif self._count[i] % self.stride == 0:
                frame_features(self._x, v.on_samples * ms, t_off, v.note, self._interval[i], self._legato[i])
                self._rel[i], self._cents[i] = self.gru.step(i, self._x)
                self._at_horizon[i] = self._rel[i]
            self._count[i] += 1
            v.env_db = max(self._rel[i], s.floor_db)
            if v.stage == RELEASE and self._rel[i] <= s.floor_db:
                v.stage, v.key_down, v.sustained = IDLE, False, False
        super().end_interval()
        vibrato = s.vibrato_depth * (1.0 + 3.0 * self.mod_wheel)
        for i, v in enumerate(self.voices):
            if v.stage != IDLE:
                self.pitch_midi[i] += 0.01 * self._cents[i] * vibrato
        self._frame += 1


def gru_render(bundle, weights, midi_path: Path, sample_rate: int, block_size: int = 512, max_voices: int = 8,
               tail_seconds: float = 1.75) -> np.ndarray:
    """instrument.apps.render.render_midi with the GRU voice bank swapped in after prepare."""
    engine = Engine(bundle, noise_seed=0)
    engine.prepare(sample_rate, block_size, max_voices)
    engine.state.voices = GruVoiceBank(engine.state.voices, weights)
    engine.set_param(param_event("expression", "learned").param, param_event("expression", "learned").value)
    sr = engine.sample_rate
    events, length = midi_file_events(midi_path, sr)
    return render_events(engine, events, length + int(round(tail_seconds * sr)), block_size)


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


def resynthesis(bundle, audio: np.ndarray, sample_rate: int, calibrated: bool = False) -> np.ndarray:
    """The recording's own f0 and loudness (and its posterior-mean z) through the model; ``calibrated``: each
    frame's loudness through the model's level calibration first (what the engine does to the articulation's
    levels), so the model sounds at the recording's loudness rather than at its own gain."""
    c = bundle.config
    feats = extract_features(audio, FeatureSettings(sample_rate=c.sample_rate, hop_size=c.hop_size))
    mean, _ = encode_means(bundle.encoder, audio, feats.f0_hz)
    n = feats.n_frames
    z = mean[: n + 1]
    if z.shape[0] < n + 1:
        z = np.concatenate([z, np.repeat(z[-1:], n + 1 - z.shape[0], axis=0)])
    f0 = np.concatenate([feats.f0_hz, feats.f0_hz[-1:]])
    ld = np.concatenate([feats.loudness_db, feats.loudness_db[-1:]])
    if calibrated:
        ld = calibrated_loudness_db(bundle, ld, f0)
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
    art = calibrate_levels(art, bundle.decoder, bundle.corpus.reference_f0_hz, bundle.default_z().numpy(),
                           f0_range_hz=bundle.corpus.f0_range_hz)
    return art, time.perf_counter() - t0, [(f.f0_hz, f.voiced, f.loudness_db) for f in feats]


def summary(values: list[float]) -> dict:
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="INSTRUMENT[@SET]=MODEL[:CORPUS]",
                   help="@fluidr3 or @freepats: measure on that sample set only (a model trained on it) [both]")
    p.add_argument("--phrases", type=int, default=3, help="held-out phrases per instrument and sample set [3]")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phrase [10]")
    p.add_argument("--seed", type=int, default=1000, help="phrase seeds start here (the corpora used 0) [1000]")
    p.add_argument("--budget", default="", help="training budget of the models, written beside the figures")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--keep", type=Path, help="keep the WAVs here")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/expression_48k.json"))
    p.add_argument("--measure", type=Path, default=MEASURE)
    p.add_argument("--gru-units", type=int, default=24, help="hidden units of the expression GRU [24]")
    p.add_argument("--gru-seconds", type=float, default=45.0, help="training time limit of the GRU [45]")
    p.add_argument("--modes", default=",".join(MODES), help="modes to play [all]")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="an engine parameter set before playing, in every mode (repeatable)")
    args = p.parse_args(argv)
    extra = [param_event(k, float(v)) for k, _, v in (a.partition("=") for a in args.param)]
    torch.set_num_threads(1)
    measure = load_measure(args.measure)
    result = {"machine": platform.platform(), "budget": args.budget, "params": args.param, "phrases": args.phrases,
              "seconds": args.seconds, "measure": str(args.measure), "instruments": {}}
    work = Path(args.keep or tempfile.mkdtemp(prefix="sdga-bench-expression-"))
    work.mkdir(parents=True, exist_ok=True)
    for item in args.models:
        label, _, spec = item.partition("=")
        name, _, only_set = label.partition("@")     # cello@freepats: a model of the freepats cello, its set only
        model_path, _, corpus_dir = spec.partition(":")
        bundle = load_bundle(model_path)
        sr = bundle.config.sample_rate
        entry: dict = {"model": model_path}
        modes = tuple(m for m in args.modes.split(",") if m)
        gru = None
        if corpus_dir:              # (re)fit from the corpus: older files have none, or an uncalibrated one
            bundle.expression, seconds, files = fit_from_corpus(Path(corpus_dir), bundle, args.cache_dir)
            entry["fit_seconds"] = round(seconds, 2)
            if "gru" in modes:
                frame_ms = 1000.0 * bundle.config.hop_size / bundle.config.sample_rate
                t0 = time.perf_counter()
                seqs = note_sequences(files, frame_ms)
                gru = train_gru(seqs, hidden=args.gru_units, max_seconds=args.gru_seconds)
                entry["gru"] = {"units": args.gru_units, "stride_frames": gru.stride, "notes": gru.notes,
                                "epochs": gru.epochs, "train_seconds": round(gru.train_seconds, 2),
                                "total_seconds": round(time.perf_counter() - t0, 2),
                                "train_l1_db": gru.train_l1_db, "held_out_notes_l1_db": gru.held_out_l1_db}
        elif bundle.expression is None:
            raise SystemExit(f"{model_path} has no learnt expression: give its corpus as {name}=MODEL:CORPUS")
        if "gru" in modes and gru is None:
            raise SystemExit("the gru mode trains on the corpus: give it as INSTRUMENT=MODEL:CORPUS")
        entry["articulation"] = bundle.expression.to_dict()
        uncalibrated = replace(bundle, expression=replace(bundle.expression, level_input_db=(), calibration_midi=(),
                                                                       level_input_by_pitch_db=()))
        program, low, high = INSTRUMENTS[name]
        sets = [("fluidr3", fluidsynth_render)] + ([("freepats", timidity_render)] if timidity_has(program) else [])
        if only_set:
            sets = [s for s in sets if s[0] == only_set]
            if not sets:
                raise SystemExit(f"{label}: no sample set {only_set!r} for {name} (fluidr3, or freepats with timidity)")
            entry["sample_set"] = only_set
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
                for mode in modes:
                    played = uncalibrated if mode == "uncalibrated" else bundle
                    expression = "envelope" if mode == "envelope" else "learned"
                    if mode == "gru":
                        audio = gru_render(bundle, gru, midi_path, sr)
                    else:
                        audio, _ = model_render(played, midi_path, sr,
                                                initial_events=[param_event("expression", expression)] + extra)
                    out_path = Path(f"{stem}.{mode}.wav")
                    sf.write(str(out_path), np.clip(audio, -1, 1), sr, subtype="FLOAT")
                    row[mode] = figures(measure, ref_path, out_path)
                resyn_path = Path(f"{stem}.resynthesis.wav")
                sf.write(str(resyn_path), np.clip(resynthesis(bundle, ref, sr), -1, 1), sr, subtype="FLOAT")
                row["resynthesis"] = figures(measure, ref_path, resyn_path)
                resyn_path = Path(f"{stem}.resynthesis_calibrated.wav")
                sf.write(str(resyn_path), np.clip(resynthesis(bundle, ref, sr, calibrated=True), -1, 1), sr,
                         subtype="FLOAT")
                row["resynthesis_calibrated"] = figures(measure, ref_path, resyn_path)
                rows.append(row)
                print(f"{name} {set_name} phrase {k}: loudness L1 dB / MSS  " + "   ".join(
                    f"{mode} {row[mode]['loudness_db_l1']:.2f} / {row[mode]['mss']:.2f}"
                    for mode in modes + ("resynthesis", "resynthesis_calibrated")), flush=True)
        entry["phrases"] = rows
        entry["summary"] = {mode: {fig: summary([r[mode][fig] for r in rows]) for fig in ("loudness_db_l1", "mss")}
                            for mode in modes + ("resynthesis", "resynthesis_calibrated")}
        grid_path = work / f"{name}_grid.mid"
        grid_midi(grid_path, program, low, high)
        grids = {}
        for mode in [m for m in ("envelope", "learned", "gru") if m in modes]:
            if mode == "gru":
                audio = gru_render(bundle, gru, grid_path, sr)
            else:
                audio, _ = model_render(bundle, grid_path, sr, initial_events=[param_event("expression", mode)] + extra)
            out_path = work / f"{name}_grid.{mode}.wav"
            sf.write(str(out_path), np.clip(audio, -1, 1), sr, subtype="FLOAT")
            g = measure.grid(str(grid_path), str(out_path))
            g.pop("rows")
            grids[mode] = g
        entry["grid"] = grids
        print(f"{name} grid: {json.dumps(grids)}", flush=True)
        result["instruments"][label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written {args.out} (WAVs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
