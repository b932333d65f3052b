"""Console scripts: sdga-train, sdga-transfer. Config is bound here and nowhere else (sdga-info: evaluation.info)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# OpenMP threads that spin while waiting turn a second busy program on a 2-core laptop into a 3-5x slowdown
# of training (measured: 5.2 s vs 1.8 s per step with another process on one core). Sleeping waiters cost
# little when the machine is quiet. Set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_BAD_INPUT = 2


def _train_parser() -> argparse.ArgumentParser:
    from training.augment import AUGMENTATIONS
    p = argparse.ArgumentParser(prog="sdga-train", description="Train a DDSP + beta-VAE instrument from a folder "
                                "of recordings and write one model file.")
    p.add_argument("corpus", type=Path, help="folder of recordings (wav/flac/aiff/ogg/mp3, any rate), or one file")
    p.add_argument("-o", "--out", type=Path, default=Path("runs/latest"), help="run folder (logs, checkpoints, "
                   "held-out WAVs, model.sdga) [runs/latest]")
    p.add_argument("--model-file", type=Path, help="where to write the model file [<out>/model.sdga]")
    p.add_argument("--max-time", default="10m", help="wall-clock training budget, e.g. 10m, 90s, 1h; 0 = none [10m]")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps [no limit]")
    p.add_argument("--latents", type=int, default=8, help="number of timbre latents [8]")
    p.add_argument("--beta", type=float, default=4.0, help="weight of the KL term once annealed in [4]")
    p.add_argument("--attributes", type=float, default=None, metavar="WEIGHT",
                   help="weight of the attribute regularisation that ties latents 0-2 to brightness, breath and "
                        "hollowness (0 = off) [0.3]")
    p.add_argument("--invariance", type=float, default=None, metavar="WEIGHT",
                   help="weight of the loudness-invariance term that keeps the latents from changing loudness "
                        "(0 = off) [0.1]")
    p.add_argument("--knob-response", type=float, default=None, metavar="WEIGHT",
                   help="weight of the knob-response term that makes latents 0-2 move the rendered brightness, "
                        "breath and odd/even balance, each its own (0 = off) [1]")
    p.add_argument("--knob-response-gain", type=float, default=None, metavar="SCALE",
                   help="scales the knob-response gains (0.3 octave, 5 dB, 4 dB per unit of latent) [1]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=float, default=1.0, help="training window in seconds [1.0]")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate [2e-3]")
    p.add_argument("--sample-rate", type=int, default=48000, help="model sample rate [48000]")
    p.add_argument("--no-augment", action="store_true", help="disable pedalboard augmentation")
    p.add_argument("--augment-variants", type=int, default=2, help="pedalboard renders per training file [2]")
    p.add_argument("--augment", default="default", metavar="NAMES",
                   help="augmentations to use: a comma list of " + "; ".join(
                       f"{a.name} ({a.does}{', on by default' if a.default else ''})".replace("%", "%%") for a in AUGMENTATIONS)
                   + "; or default, all, none; '-name' removes one, e.g. default,stretch or all,-reverb [default]")
    p.add_argument("--val-every", type=int, default=100, help="validate every N steps [100]")
    p.add_argument("--checkpoint-every", default="30s", help="also write checkpoints/last.ckpt this often "
                   "(wall clock), so a crash or kill loses at most this much training; 0 = only at validation [30s]")
    p.add_argument("--patience", type=int, default=10, help="early stopping: validations without improvement [10]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt")
    p.add_argument("--cache-dir", type=Path, help="feature/augmentation cache [~/.cache/sdga]")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto [cpu]")
    p.add_argument("--devices", default="1", help="Lightning devices: a count, 'auto', or a list like 0,1 [1]")
    p.add_argument("--threads", type=int, help="torch CPU threads [all cores]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--export-only", action="store_true", help="train nothing: export <out>'s best (else last) "
                   "checkpoint again with the current knob analysis and write the model file")
    p.add_argument("--knobs", choices=("intervention", "raw"), default="intervention",
                   help="knob analysis at export: named directions found by intervention, or one knob per raw "
                        "latent (the old analysis) [intervention]")
    p.add_argument("--check", action="store_true", help="only check the corpus (duration, pitch, texture, "
                   "loudness, clipping, DC, sample rates; warnings with advice) and exit; every run prints it too")
    return p


def train_main(argv: list[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)
    from training.corpus import CorpusError
    if args.check:
        from training.check import run_check
        from training.train import TrainConfig, default_cache_dir
        try:
            run_check(args.corpus, args.sample_rate, TrainConfig.hop_size,
                      (args.cache_dir or default_cache_dir()) / "features",
                      progress=not args.no_progress)
        except CorpusError as exc:
            print(f"sdga-train: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    from training.train import (CheckpointError, TrainConfig, TrainingError, parse_duration, run_export_only,
                                run_training)

    try:
        max_time = parse_duration(args.max_time)
    except ValueError as exc:
        print(f"sdga-train: --max-time: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        checkpoint_every = parse_duration(args.checkpoint_every)
    except ValueError as exc:
        print(f"sdga-train: --checkpoint-every: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from training.augment import parse_augmentations
    try:
        chosen = parse_augmentations(args.augment)
    except ValueError as exc:
        print(f"sdga-train: --augment: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    devices: int | str = int(args.devices) if args.devices.isdecimal() else args.devices
    cfg = TrainConfig(
        corpus_dir=args.corpus, out_dir=args.out, model_file=args.model_file, cache_dir=args.cache_dir,
        sample_rate=args.sample_rate, latent_dim=args.latents, beta=args.beta, window_seconds=args.window,
        batch_size=args.batch_size, max_time_s=max_time or None, max_steps=args.max_steps, augment=not args.no_augment,
        augment_variants=args.augment_variants, augmentations=chosen, val_every_steps=args.val_every,
        checkpoint_every_s=checkpoint_every, early_stop_patience=args.patience,
        seed=args.seed, resume=args.resume, accelerator=args.accelerator, devices=devices,
        num_threads=args.threads, learning_rate=args.lr, progress=not args.no_progress,
        loss_overrides={**({} if args.attributes is None else {"attribute_weight": args.attributes}),
                        **({} if args.invariance is None else {"invariance_weight": args.invariance}),
                        **({} if args.knob_response is None else {"response_weight": args.knob_response}),
                        **({} if args.knob_response_gain is None else {"response_gain": args.knob_response_gain})},
        knobs=args.knobs)
    if args.export_only:
        try:
            summary = run_export_only(cfg)
        except (CorpusError, CheckpointError) as exc:
            print(f"sdga-train: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except TrainingError as exc:
            print(f"sdga-train: {exc}", file=sys.stderr)
            return 1
        print(f"\nexported {summary['training']['exported_from']} (step {summary['training']['model_step']}) "
              f"in {summary['total_seconds']:.0f} s: model file {summary['model_file']}")
        return 0
    try:
        summary = run_training(cfg)
    except (CorpusError, CheckpointError) as exc:
        print(f"sdga-train: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as exc:
        print(f"sdga-train: {exc}", file=sys.stderr)
        return 1
    if "rank" in summary:                 # a DDP worker process: rank 0 reports
        return 0
    h = summary["heldout"]
    t = summary["training"]
    print(f"\ndone in {summary['total_seconds']:.0f} s: {t['steps']} steps, "
          f"{t['audio_seconds_per_second']} audio-s/s; model file {summary['model_file']}")
    if h.get("f0_cents_median") is not None:
        print(f"held-out: f0 error {h['f0_cents_median']:.1f} cents (median), loudness error "
              f"{h['loudness_db_median']:.2f} dB (median), spectral distance {h['spectral_distance']:.3f}")
    if t["interrupted"]:
        print(f"interrupted: the model file holds the best weights so far; continue with: sdga-train "
              f"{args.corpus} -o {args.out} --resume")
        return 130
    return 0


# ---------------------------------------------------------------------------------------------- sdga-transfer
def transfer_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdga-transfer", description="Timbre transfer: the pitch and loudness of any "
                                "recording, played in the model's timbre.")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path, help="a recording (any format the corpus loader reads)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--pitch-shift", type=float, default=None,
                   help="semitones; default: whole octaves that bring the input into the model's pitch range")
    p.add_argument("--loudness-shift", type=float, default=None,
                   help="dB; default: match the input's median loudness to the corpus's")
    p.add_argument("--latent", action="append", default=[], metavar="NAME=KNOB",
                   help="set a latent knob (0..1) by name or position, e.g. brightness=0.8 (repeatable)")
    p.add_argument("--cache-dir", type=Path)
    args = p.parse_args(argv)
    from instrument.model.bundle import load_bundle, parse_latent_knobs
    from instrument.model.modelfile import ModelFileError
    from training.transfer import TransferError, timbre_transfer
    try:
        bundle = load_bundle(args.model)
    except ModelFileError as exc:
        print(f"sdga-transfer: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        knobs = {info.name: knob for info, knob in parse_latent_knobs(bundle, args.latent)}
        report = timbre_transfer(bundle, args.input, args.output, pitch_shift=args.pitch_shift,
                                 loudness_shift=args.loudness_shift, knobs=knobs, cache_dir=args.cache_dir)
    except (TransferError, ValueError, KeyError) as exc:
        print(f"sdga-transfer: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report)
    return 0
