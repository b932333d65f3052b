"""One training run, end to end: corpus -> features -> split/augment -> Lightning fit -> export -> held-out report.

Config is bound here, at the edge (the CLI builds a TrainConfig); everything below takes plain arguments.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from instrument.model.networks import ModelConfig

from training.corpus import Corpus, format_summary, load_corpus
from training.data import Example, RandomWindows, TiledWindows, split_examples
from training.features import FeatureSettings, extract_corpus_features_reported
from training.module import LossConfig


@dataclass
class TrainConfig:
    corpus_dir: Path
    out_dir: Path = Path("runs/latest")
    model_file: Path | None = None            # default: <out_dir>/model.sdga
    cache_dir: Path | None = None             # default: $XDG_CACHE_HOME/sdga or ~/.cache/sdga
    sample_rate: int = 48000
    hop_size: int = 128
    latent_dim: int = 8
    beta: float = 4.0
    window_seconds: float = 1.0
    batch_size: int = 8
    max_time_s: float | None = 600.0
    max_steps: int = -1
    max_epochs: int | None = None
    val_fraction: float = 0.2
    val_every_steps: int = 100
    early_stop_patience: int = 10             # validations without improvement
    augment: bool = True
    augment_variants: int = 2                 # pedalboard renders per training file (cached)
    seed: int = 0
    resume: bool = False
    accelerator: str = "cpu"
    devices: int | str = 1
    num_threads: int | None = None
    learning_rate: float = 2e-3
    progress: bool = True
    heldout_seconds: float = 30.0             # at most this much held-out audio is resynthesised at the end
    model_overrides: dict = field(default_factory=dict)
    loss_overrides: dict = field(default_factory=dict)     # LossConfig fields, e.g. beta_warmup_steps

    @property
    def window_frames(self) -> int:
        frames = int(round(self.window_seconds * self.sample_rate / self.hop_size))
        return max(4, frames - frames % 4)    # a multiple of the encoder stride


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdga"


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h30m', '600' -> seconds."""
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"bad duration {text!r} (use e.g. 10m, 90s, 1h30m)")
    if number:
        raise ValueError(f"bad duration {text!r}: number without unit at the end")
    return total


def make_mel_basis(config: ModelConfig) -> torch.Tensor | None:
    if config.encoder_features != "mel":
        return None
    import librosa
    return torch.from_numpy(librosa.filters.mel(sr=config.sample_rate, n_fft=config.encoder_n_fft,
                                                n_mels=config.encoder_n_mels, fmin=30.0)).float()


def corpus_statistics(examples: list[Example]) -> dict:
    f0 = np.concatenate([e.features.f0_hz[e.features.voiced & (e.features.voiced_prob >= 0.5)] for e in examples])
    ld = np.concatenate([e.features.loudness_db for e in examples])
    active = ld[ld > max(-70.0, ld.max() - 50.0)] if ld.size else ld
    stats: dict = {"files": len(examples)}
    stats["f0_range_hz"] = [float(np.percentile(f0, 1)), float(np.percentile(f0, 99))] if f0.size else None
    stats["f0_median_hz"] = float(np.median(f0)) if f0.size else None
    stats["loudness_range_db"] = ([float(np.percentile(active, 5)), float(np.percentile(active, 99))]
                                  if active.size else [-60.0, -10.0])
    stats["loudness_median_db"] = float(np.median(active)) if active.size else -30.0
    return stats


@dataclass
class PreparedData:
    corpus: Corpus
    train: list[Example]
    val: list[Example]
    split: str
    stats: dict


def prepare_data(cfg: TrainConfig, log=print) -> PreparedData:
    corpus = load_corpus(cfg.corpus_dir, sample_rate=cfg.sample_rate, log=log)
    settings = FeatureSettings(sample_rate=cfg.sample_rate, hop_size=cfg.hop_size)
    cache = cfg.cache_dir or default_cache_dir()
    t0 = time.time()
    features, report = extract_corpus_features_reported(
        [f.audio for f in corpus.files], settings, cache / "features", progress=cfg.progress,
        names=[f.path.name for f in corpus.files])
    log(f"features: {len(features)} files ({report.describe()}) in {time.time() - t0:.1f} s "
        f"(cache {cache / 'features'})")
    examples = [Example(f.path.stem, f.audio, feats) for f, feats in zip(corpus.files, features)]
    stats = corpus_statistics(examples)
    stats["minutes"] = corpus.total_seconds / 60.0
    stats["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in corpus.skipped]
    log(format_summary(corpus, tuple(stats["f0_range_hz"]) if stats["f0_range_hz"] else None))
    train, val, how = split_examples(examples, cfg.val_fraction, cfg.seed, cfg.hop_size)
    log(f"validation split {how}")
    if cfg.augment and cfg.augment_variants > 0:
        from training.augment import make_augmented_variants
        t0 = time.time()
        variants = make_augmented_variants([e.audio for e in train], [e.features for e in train],
                                           cfg.augment_variants, cfg.seed, settings, cache / "augment",
                                           progress=cfg.progress)
        train = train + [Example(f"{train[src].name}~aug{i}", audio, feats)
                         for i, (audio, feats, _params, src) in enumerate(variants)]
        log(f"augmentation: {len(variants)} pedalboard variants in {time.time() - t0:.1f} s")
    return PreparedData(corpus, train, val, how, stats)


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train, export and evaluate. Returns a summary dict (also written to <out_dir>/summary.json)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from training.export import export_model
    from training.module import SdgaModule

    started = time.time()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    data = prepare_data(cfg, log=log)
    model_config = ModelConfig(sample_rate=cfg.sample_rate, hop_size=cfg.hop_size, latent_dim=cfg.latent_dim,
                               **cfg.model_overrides)
    loss_config = LossConfig(beta=cfg.beta, learning_rate=cfg.learning_rate, **cfg.loss_overrides)
    ckpt_dir = out_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    resume_from = str(last_ckpt) if cfg.resume and last_ckpt.exists() else None
    if cfg.resume and resume_from is None:
        log(f"--resume: no checkpoint at {last_ckpt}; starting fresh")
    # Under DDP Lightning re-launches this script once per extra device (LOCAL_RANK set): only rank 0 cleans up.
    if resume_from is None and ckpt_dir.exists() and os.environ.get("LOCAL_RANK", "0") == "0":
        stale = list(ckpt_dir.glob("*.ckpt"))
        for path in stale:
            path.unlink()
        if stale:
            log(f"fresh run: removed {len(stale)} old checkpoint(s) from {ckpt_dir} (use --resume to continue one)")
    module = SdgaModule(model_config.to_dict(), asdict(loss_config), make_mel_basis(model_config))

    window_s = cfg.window_frames * cfg.hop_size / cfg.sample_rate
    train_seconds = sum(len(e.audio) for e in data.train) / cfg.sample_rate
    # An "epoch" is one validation period: val_every_steps batches of random windows.
    windows_per_epoch = max(1, cfg.val_every_steps) * cfg.batch_size
    train_ds = RandomWindows(data.train, cfg.window_frames, cfg.hop_size, windows_per_epoch, cfg.seed,
                             gain_db_range=6.0 if cfg.augment else 0.0)
    val_ds = TiledWindows(data.val, cfg.window_frames, cfg.hop_size)
    loader_args = dict(batch_size=cfg.batch_size, num_workers=0)
    train_loader = torch.utils.data.DataLoader(train_ds, shuffle=False, drop_last=True, **loader_args)
    val_loader = torch.utils.data.DataLoader(val_ds, shuffle=False, **loader_args)
    steps_per_epoch = len(train_loader)

    class InterruptCheckpoint(Callback):
        """Ctrl-C (or any crash) leaves a resumable checkpoint."""

        interrupted = False

        def on_exception(self, trainer, pl_module, exception):
            InterruptCheckpoint.interrupted = True
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(last_ckpt))
            log(f"\ninterrupted ({type(exception).__name__}); resumable checkpoint: {last_ckpt} "
                f"(continue with --resume)")

    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min",
                                 save_last=True, save_top_k=1)
    callbacks = [checkpoint, InterruptCheckpoint(),
                 EarlyStopping(monitor="val_loss", mode="min", patience=cfg.early_stop_patience,
                               check_on_train_epoch_end=False)]
    loggers = [CSVLogger(str(out_dir), name="logs", version="")]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401
        loggers.append(TensorBoardLogger(str(out_dir), name="tb", version=""))
    except ImportError:
        pass
    max_time = None
    if cfg.max_time_s:
        max_time = {"seconds": max(1, int(cfg.max_time_s))}
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, max_time=max_time, max_steps=cfg.max_steps,
        max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        callbacks=callbacks, logger=loggers, default_root_dir=str(out_dir),
        gradient_clip_val=loss_config.grad_clip, enable_progress_bar=cfg.progress, log_every_n_steps=10,
        num_sanity_val_steps=0, deterministic=False, enable_model_summary=False,
    )
    log(f"training: {len(data.train)} train examples ({train_seconds / 60:.1f} min incl. augmentation), "
        f"{len(val_ds)} validation windows, window {window_s:.2f} s, batch {cfg.batch_size}, "
        f"validation every {steps_per_epoch} steps, budget {cfg.max_time_s or 'none'} s")
    fit_started = time.time()
    interrupted = False
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C into sys.exit(1) after its on_exception hooks (our checkpoint) ran; we still
        # export what was learnt, so an interrupted run leaves both a resumable checkpoint and a model file.
        if isinstance(exc, SystemExit) and not trainer.interrupted:
            raise
        interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = interrupted or trainer.interrupted or InterruptCheckpoint.interrupted
    fit_seconds = time.time() - fit_started
    if not interrupted:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(last_ckpt))
    if trainer.global_rank != 0:          # DDP workers stop here; rank 0 exports and evaluates
        return {"rank": trainer.global_rank}
    best = checkpoint.best_model_path
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    module.eval()

    steps = int(trainer.global_step)
    training_summary = {
        "steps": steps, "epochs": int(trainer.current_epoch), "fit_seconds": round(fit_seconds, 1),
        "audio_seconds_per_second": round(steps * cfg.batch_size * window_s / max(fit_seconds, 1e-9), 2),
        "best_val_loss": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "interrupted": interrupted, "beta": cfg.beta, "latent_dim": cfg.latent_dim, "seed": cfg.seed,
        "attribute_weight": loss_config.attribute_weight, "invariance_weight": loss_config.invariance_weight, "augment": cfg.augment, "augment_variants": cfg.augment_variants if cfg.augment else 0,
        "window_seconds": window_s, "batch_size": cfg.batch_size, "split": data.split,
        "max_time_s": cfg.max_time_s, "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    model_file = Path(cfg.model_file) if cfg.model_file else out_dir / "model.sdga"
    heldout_dir = out_dir / "heldout"
    result = export_model(module, data, training_summary, model_file, heldout_dir,
                          heldout_seconds=cfg.heldout_seconds, log=log)
    summary = {"model_file": str(model_file), "training": training_summary, "corpus": data.stats,
               "heldout": result["heldout"], "latents": result["latents"],
               "total_seconds": round(time.time() - started, 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
