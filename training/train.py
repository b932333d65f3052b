"""One training run, end to end: corpus -> features -> split/augment -> Lightning fit -> export -> held-out report.

Config is bound here, at the edge (the CLI builds a TrainConfig); everything below takes plain arguments.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from instrument.model.bundle import CorpusInfo
from instrument.model.networks import ModelConfig

from training.check import check_corpus, format_check
from training.corpus import Corpus, load_corpus
from training.data import Example, RandomWindows, TiledWindows, split_examples
from training.features import FeatureSettings, extract_corpus_features_reported
from training.module import LossConfig
from training.spool import AudioSpool, audio_spool


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
    checkpoint_every_s: float = 30.0          # last.ckpt also on this wall-clock period (kill -9 loses at most this)
    early_stop_patience: int = 10             # validations without improvement
    augment: bool = True
    augment_variants: int = 2                 # pedalboard renders per training file (cached)
    augmentations: tuple[str, ...] | None = None   # names from training.augment.AUGMENTATIONS [its defaults]
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
    knobs: str = "intervention"               # the export's knob analysis (training.export.KNOB_ANALYSES)

    @property
    def window_frames(self) -> int:
        frames = int(round(self.window_seconds * self.sample_rate / self.hop_size))
        return max(4, frames - frames % 4)    # a multiple of the encoder stride


class TrainingError(Exception):
    """A run that cannot go on; the message says why and what was kept. Nothing was overwritten."""


class CheckpointError(TrainingError):
    """A checkpoint to resume from is unreadable or not a checkpoint of this trainer."""


def augmentations(cfg: TrainConfig) -> tuple[str, ...]:
    """The augmentations a run uses (training.augment.AUGMENTATIONS names): cfg's, or the table's defaults."""
    from training.augment import DEFAULT_AUGMENTATIONS
    return DEFAULT_AUGMENTATIONS if cfg.augmentations is None else tuple(cfg.augmentations)


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


def corpus_statistics(examples: list[Example]) -> CorpusInfo:
    f0 = np.concatenate([e.features.f0_hz[e.features.voiced & (e.features.voiced_prob >= 0.5)] for e in examples])
    ld = np.concatenate([e.features.loudness_db for e in examples])
    active = ld[ld > max(-70.0, ld.max() - 50.0)] if ld.size else ld
    return CorpusInfo(
        files=len(examples),
        f0_range_hz=(float(np.percentile(f0, 1)), float(np.percentile(f0, 99))) if f0.size else None,
        f0_median_hz=float(np.median(f0)) if f0.size else None,
        loudness_range_db=((float(np.percentile(active, 5)), float(np.percentile(active, 99)))
                           if active.size else CorpusInfo.loudness_range_db),
        loudness_median_db=float(np.median(active)) if active.size else -30.0)


@dataclass
class PreparedData:
    corpus: Corpus
    train: list[Example]
    val: list[Example]
    split: str
    stats: CorpusInfo


def spool_parent(cfg: TrainConfig) -> Path:
    """Where a run's audio spool folders go (training.spool): <cache>/spool."""
    return (cfg.cache_dir or default_cache_dir()) / "spool"


def prepare_data(cfg: TrainConfig, log=print, spool: AudioSpool | None = None) -> PreparedData:
    """Load the corpus, its features, the check, the validation split and the augmented variants.

    With a ``spool`` (training.spool.audio_spool; run_training passes one) every decoded file and every variant
    goes to disk as soon as it is made and the examples' audio are read-only memmaps of it: memory holds about one
    file's audio at a time instead of the whole corpus. The spool must outlive the returned data. Without one,
    the audio is held in memory (the same values)."""
    corpus = load_corpus(cfg.corpus_dir, sample_rate=cfg.sample_rate, log=log, spool=spool)
    settings = FeatureSettings(sample_rate=cfg.sample_rate, hop_size=cfg.hop_size)
    cache = cfg.cache_dir or default_cache_dir()
    t0 = time.time()
    features, report = extract_corpus_features_reported(
        [f.audio for f in corpus.files], settings, cache / "features", progress=cfg.progress,
        names=[f.path.name for f in corpus.files])
    log(f"features: {len(features)} files ({report.describe()}) in {time.time() - t0:.1f} s "
        f"(cache {cache / 'features'})")
    examples = [Example(f.path.stem, f.audio, feats) for f, feats in zip(corpus.files, features)]
    stats = replace(corpus_statistics(examples), minutes=corpus.total_seconds / 60.0,
                    skipped=tuple((str(s.path), s.reason) for s in corpus.skipped))
    log(format_check(check_corpus(corpus, features, cfg.hop_size)))
    train, val, how = split_examples(examples, cfg.val_fraction, cfg.seed, cfg.hop_size)
    log(f"validation split {how}")
    if cfg.augment and cfg.augment_variants > 0:
        from training.augment import make_augmented_variants_reported
        t0 = time.time()
        variants, report = make_augmented_variants_reported(
            [e.audio for e in train], [e.features for e in train], cfg.augment_variants, cfg.seed, settings,
            cache / "augment", progress=cfg.progress, enabled=augmentations(cfg), spool=spool)
        train = train + [Example(Example.variant_name(train[src].name, i), audio, feats)
                         for i, (audio, feats, _params, src) in enumerate(variants)]
        log(f"augmentation: {len(variants)} pedalboard variants ({', '.join(augmentations(cfg)) or 'none'}; "
            f"{report.describe()}) in {time.time() - t0:.1f} s")
    return PreparedData(corpus, train, val, how, stats)


def check_checkpoint(path: Path) -> int:
    """The optimiser step a Lightning checkpoint was saved at; CheckpointError if it is truncated, unreadable,
    incomplete or holds non-finite weights (resuming from it would start over, or from garbage)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        first_sentence = str(exc).splitlines()[0].split(". ")[0][:160] if str(exc) else ""
        raise CheckpointError(f"{path} is unreadable: truncated or not a checkpoint ({type(exc).__name__}: "
                              f"{first_sentence})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step", "optimizer_states"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a complete training checkpoint")
    bad = [k for k, v in checkpoint["state_dict"].items() if torch.is_tensor(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])})")
    return int(checkpoint["global_step"])


def model_file_step(path: Path) -> int | None:
    """The training step of the weights in an existing model file; None if there is none or it is unreadable."""
    from instrument.model.modelfile import ModelFileError, read_metadata
    if not Path(path).is_file():
        return None
    try:
        training = read_metadata(path).get("training", {})
    except ModelFileError:
        return None
    step = training.get("model_step", training.get("steps"))
    return int(step) if isinstance(step, (int, float)) else None


def backup_path(model_file: Path) -> Path:
    return model_file.with_name(f"{model_file.stem}.prev{model_file.suffix}")


def keep_further_trained_model(model_file: Path, new_step: int, log=print) -> Path | None:
    """Before a model of `new_step` steps replaces `model_file`: if the file there trained further, copy it
    (atomically) to <stem>.prev<suffix> and return that path. A failed copy (disk full) raises before the
    model file is touched."""
    from instrument.model.modelfile import write_atomically
    old_step = model_file_step(model_file)
    if old_step is None or old_step <= new_step:
        return None
    backup = backup_path(model_file)
    write_atomically(backup, model_file.read_bytes())
    log(f"{model_file} held a model trained further ({old_step} steps) than this one ({new_step}): "
        f"kept it as {backup}")
    return backup


def _atomic_checkpoint_io():
    """Lightning CheckpointIO whose saves never leave a half-written checkpoint (temp file, fsync, rename)."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    from instrument.model.modelfile import write_atomically

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomically(Path(path), buffer.getvalue())

    return AtomicCheckpointIO()


def _read_metrics_rows(path: Path, before_step: int) -> tuple[list[str], list[dict]]:
    """Header and rows of a CSVLogger metrics.csv logged before `before_step` (later rows were not kept in the
    checkpoint and are logged again)."""
    if not path.is_file():
        return [], []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if (r.get("step") or "").isdigit() and int(r["step"]) < before_step
                    and None not in r.values()]             # (a line cut short by a kill is dropped)
            return list(reader.fieldnames or []), rows
    except (OSError, csv.Error, UnicodeDecodeError):
        return [], []


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train, export and evaluate. Returns a summary dict (also written to <out_dir>/summary.json).

    The corpus's decoded audio and its augmented variants are spooled to a folder of this run under
    <cache>/spool (training.spool), removed when the run ends, however it ends."""
    with audio_spool(spool_parent(cfg)) as spool:
        return _run_training(cfg, log, spool)


def _run_training(cfg: TrainConfig, log, spool: AudioSpool) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer
    from pytorch_lightning.loggers import CSVLogger

    from instrument.model.modelfile import write_atomically
    from training.export import export_model
    from training.module import SdgaModule

    started = time.time()
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    resume_from = str(last_ckpt) if cfg.resume and last_ckpt.exists() else None
    resume_step = 0

    def resume_advice(fallback: str) -> str:
        best = ckpt_dir / "best.ckpt"
        try:
            return (f"{best} (step {check_checkpoint(best)}, the best validated) is intact: copy it to "
                    f"{last_ckpt.name} to resume from there, or {fallback}")
        except CheckpointError:
            return fallback

    # Refuse before anything is written: a corrupt last.ckpt must neither start the run over nor be
    # overwritten by a step-0 checkpoint, and the run's model file must stay.
    if resume_from is not None:
        try:
            resume_step = check_checkpoint(last_ckpt)
        except CheckpointError as exc:
            advice = resume_advice(f"move {last_ckpt.name} away to train from scratch (without --resume), "
                                   f"or put back a good copy")
            raise CheckpointError(f"cannot resume: {exc}. Nothing was changed; {advice}.") from None
    elif cfg.resume and (ckpt_dir / "best.ckpt").is_file():
        # --resume never deletes checkpoints (a fresh start would): say what there is instead.
        advice = resume_advice("run without --resume to train from scratch (that removes the old checkpoints)")
        raise CheckpointError(f"cannot resume: there is no {last_ckpt}. Nothing was changed; {advice}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    try:
        data = prepare_data(cfg, log=log, spool=spool)
    except OSError as exc:                # disk full while spooling the audio or writing the caches
        raise TrainingError(f"could not prepare the training data: could not write {exc.filename or 'a file'}: "
                            f"{exc.strerror or exc}. The decoded audio is spooled under {spool_parent(cfg)} "
                            f"(about 0.2 MB per second of audio and of each augmented variant) and removed at the "
                            f"end: free some space there, or choose another --cache-dir") from exc
    model_config = ModelConfig(sample_rate=cfg.sample_rate, hop_size=cfg.hop_size, latent_dim=cfg.latent_dim,
                               **cfg.model_overrides)
    loss_config = LossConfig(beta=cfg.beta, learning_rate=cfg.learning_rate, **cfg.loss_overrides)
    if cfg.resume and resume_from is None:
        log(f"--resume: no checkpoint at {last_ckpt}; starting fresh")
    # Under DDP Lightning re-launches this script once per extra device (LOCAL_RANK set): only rank 0 cleans up.
    if ckpt_dir.exists() and os.environ.get("LOCAL_RANK", "0") == "0":
        for tmp in ckpt_dir.glob(".*.ckpt.*.tmp"):        # left by a kill -9 in the middle of a save
            tmp.unlink()
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
                             gain_db_range=6.0 if cfg.augment and "gain" in augmentations(cfg) else 0.0)
    val_ds = TiledWindows(data.val, cfg.window_frames, cfg.hop_size)
    loader_args = dict(batch_size=cfg.batch_size, num_workers=0)
    train_loader = torch.utils.data.DataLoader(train_ds, shuffle=False, drop_last=True, **loader_args)
    val_loader = torch.utils.data.DataLoader(val_ds, shuffle=False, **loader_args)
    steps_per_epoch = len(train_loader)

    class InterruptCheckpoint(Callback):
        """Ctrl-C (or any crash) leaves a resumable checkpoint, if training got past where it started."""

        interrupted = False
        start_step: int | None = None

        def on_train_start(self, trainer, pl_module):
            InterruptCheckpoint.start_step = trainer.global_step

        def on_exception(self, trainer, pl_module, exception):
            InterruptCheckpoint.interrupted = True
            start = InterruptCheckpoint.start_step
            if isinstance(exception, NonFiniteLoss) or start is None or trainer.global_step <= start:
                return                    # nothing learnt since the last checkpoint: never overwrite it
            try:
                trainer.save_checkpoint(str(last_ckpt))
            except OSError as exc:        # e.g. the disk is full: the previous last.ckpt stays as it was
                log(f"\ninterrupted ({type(exception).__name__}); could not save a checkpoint ({exc}); "
                    f"{last_ckpt} holds the previous one")
                return
            log(f"\ninterrupted ({type(exception).__name__}); resumable checkpoint: {last_ckpt} "
                f"(continue with --resume)")

    class PeriodicCheckpoint(Callback):
        """last.ckpt every checkpoint_every_s of wall-clock time too, so kill -9 loses at most that much."""

        def __init__(self, period_s: float):
            self.period_s = period_s
            self.saved_at = time.monotonic()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            due = self.period_s > 0 and time.monotonic() - self.saved_at >= self.period_s
            if trainer.strategy.broadcast(due, src=0):      # every rank saves together (DDP)
                trainer.save_checkpoint(str(last_ckpt))
                self.saved_at = time.monotonic()

    class NonFiniteLoss(TrainingError):
        pass

    class StopOnNonFiniteLoss(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None and not torch.isfinite(loss).all():
                raise NonFiniteLoss(
                    f"the training loss became {float(loss)} at step {trainer.global_step}; stopped without "
                    f"saving these weights (checkpoints in {ckpt_dir} and the model file are as they were)")

    class BudgetTimer(Timer):
        """--max-time counts from this start: a resumed run gets the whole budget again."""

        def load_state_dict(self, state_dict):
            pass

    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min",
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks = [checkpoint, InterruptCheckpoint(), PeriodicCheckpoint(cfg.checkpoint_every_s),
                 StopOnNonFiniteLoss(),
                 EarlyStopping(monitor="val_loss", mode="min", patience=cfg.early_stop_patience,
                               check_on_train_epoch_end=False)]
    if cfg.max_time_s:
        callbacks.append(BudgetTimer(duration={"seconds": max(1, int(cfg.max_time_s))}, interval="step"))
    csv_logger = CSVLogger(str(out_dir), name="logs", version="")
    metrics_csv = Path(csv_logger.log_dir) / "metrics.csv"
    header, rows = _read_metrics_rows(metrics_csv, resume_step) if resume_from else ([], [])
    writer = csv_logger.experiment       # (Lightning's writer deletes an existing metrics.csv here)
    if header:                           # a resumed run appends to the metrics logged up to its checkpoint
        with metrics_csv.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = sorted(header)
    loggers = [csv_logger]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401
        loggers.append(TensorBoardLogger(str(out_dir), name="tb", version=""))
    except ImportError:
        pass
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, max_steps=cfg.max_steps,
        max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        callbacks=callbacks, logger=loggers, default_root_dir=str(out_dir), plugins=[_atomic_checkpoint_io()],
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
        if not trainer.interrupted:
            trainer.save_checkpoint(str(last_ckpt))
    except OSError as exc:                # disk full (or gone) while writing a checkpoint or a log
        raise TrainingError(f"training stopped: could not write {exc.filename or 'a file'}: "
                            f"{exc.strerror or exc}. Checkpoints are written atomically: {last_ckpt} holds the "
                            f"last one that was complete; free some space and continue with --resume") from exc
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C into sys.exit(1) after its on_exception hooks (our checkpoint) ran; we still
        # export what was learnt, so an interrupted run leaves both a resumable checkpoint and a model file.
        if isinstance(exc, SystemExit) and not trainer.interrupted:
            raise
        interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = interrupted or trainer.interrupted or InterruptCheckpoint.interrupted
    fit_seconds = time.time() - fit_started
    if trainer.global_rank != 0:          # DDP workers stop here; rank 0 exports and evaluates
        return {"rank": trainer.global_rank}
    # The model file and the summary describe the same weights: the best validated checkpoint, else the last.
    # (A resumed run folder that was moved or copied still names the old folder's best.ckpt: use this one's.)
    best = ckpt_dir / Path(checkpoint.best_model_path).name if checkpoint.best_model_path else None
    model_step, model_val_loss = int(trainer.global_step), None
    saved = None
    if best and best.exists():
        try:
            check_checkpoint(best)
            saved = torch.load(best, map_location="cpu", weights_only=True)
        except CheckpointError as exc:
            log(f"not exporting the best validated weights: {exc}; exporting the last weights instead")
    if saved is not None:
        module.load_state_dict(saved["state_dict"])
        model_step = int(saved["global_step"])
        scores = [c.get("best_model_score") for k, c in saved.get("callbacks", {}).items()
                  if k.startswith("ModelCheckpoint")]
        score = scores[0] if scores and scores[0] is not None else checkpoint.best_model_score
        model_val_loss = float(score) if score is not None else None
    module.eval()

    steps = int(trainer.global_step)
    if model_step != steps:
        log(f"exporting the best validated weights: step {model_step} of {steps} "
            f"(validation loss {model_val_loss if model_val_loss is None else round(model_val_loss, 4)})")
    training_summary = {
        "steps": steps, "model_step": model_step, "resumed_from_step": resume_step if resume_from else None,
        "epochs": int(trainer.current_epoch), "fit_seconds": round(fit_seconds, 1),
        "audio_seconds_per_second": round((steps - resume_step) * cfg.batch_size * window_s
                                          / max(fit_seconds, 1e-9), 2),
        "best_val_loss": model_val_loss,
        "interrupted": interrupted, "beta": cfg.beta, "latent_dim": cfg.latent_dim, "seed": cfg.seed,
        "attribute_weight": loss_config.attribute_weight, "invariance_weight": loss_config.invariance_weight,
        "response_weight": loss_config.response_weight, "response_gain": loss_config.response_gain,
        "augment": cfg.augment, "augment_variants": cfg.augment_variants if cfg.augment else 0,
        "augmentations": list(augmentations(cfg)) if cfg.augment else [],
        "window_seconds": window_s, "batch_size": cfg.batch_size, "split": data.split,
        "max_time_s": cfg.max_time_s, "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    model_file = Path(cfg.model_file) if cfg.model_file else out_dir / "model.sdga"
    heldout_dir = out_dir / "heldout"
    backup = keep_further_trained_model(model_file, model_step, log=log)
    try:
        result = export_model(module, data, training_summary, model_file, heldout_dir,
                              heldout_seconds=cfg.heldout_seconds, log=log, knobs=cfg.knobs)
    except OSError as exc:                # disk full: the model file is written atomically, so it is as it was
        raise TrainingError(f"export failed: could not write {exc.filename or 'a file'}: {exc.strerror or exc}. "
                            f"{model_file} is unchanged; the trained weights are in {ckpt_dir}: free some space "
                            f"and run the same command with --resume to export them") from exc
    summary = {"model_file": str(model_file), "previous_model_file": str(backup) if backup else None,
               "training": training_summary, "corpus": data.stats.to_dict(),
               "heldout": result["heldout"], "latents": result["latents"],
               "total_seconds": round(time.time() - started, 1)}
    write_atomically(out_dir / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary


def run_export_only(cfg: TrainConfig, log=print) -> dict:
    """Export again, with the current analysis, the weights of a run folder: its best validated checkpoint,
    else its last one (``sdga-train CORPUS -o RUN --export-only``). The corpus is prepared as training did
    (features and augmentation from the cache); nothing is trained. Writes the model file (the previous one,
    if it holds further-trained weights, is kept as <stem>.prev) and <out>/summary.json. The audio is spooled
    as in run_training."""
    with audio_spool(spool_parent(cfg)) as spool:
        return _run_export_only(cfg, log, spool)


def _run_export_only(cfg: TrainConfig, log, spool: AudioSpool) -> dict:
    from instrument.model.modelfile import write_atomically
    from training.export import export_model
    from training.module import SdgaModule

    started = time.time()
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    candidates = [ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"]
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"no {path}")
            continue
        try:
            check_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        break
    else:
        raise CheckpointError(f"--export-only: nothing to export in {out_dir} ({'; '.join(problems)})")
    if problems:
        log(f"--export-only: {'; '.join(problems)}: exporting {path}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    hparams = saved.get("hyper_parameters", {})
    if "model_config" not in hparams or "loss_config" not in hparams:
        raise CheckpointError(f"{path} holds no model_config / loss_config hyper-parameters: not an sdga checkpoint")
    model_config = ModelConfig.from_dict(hparams["model_config"])
    if model_config.sample_rate != cfg.sample_rate or model_config.hop_size != cfg.hop_size:
        cfg = replace(cfg, sample_rate=model_config.sample_rate, hop_size=model_config.hop_size)
    module = SdgaModule(hparams["model_config"], hparams["loss_config"], make_mel_basis(model_config))
    module.load_state_dict(saved["state_dict"])
    module.eval()
    data = prepare_data(cfg, log=log, spool=spool)
    previous = {}
    if (out_dir / "summary.json").is_file():
        try:
            previous = json.loads((out_dir / "summary.json").read_text()).get("training", {}) or {}
        except (OSError, ValueError):
            previous = {}
    loss = LossConfig(**hparams["loss_config"])
    training_summary = dict(previous, model_step=int(saved["global_step"]),
                            steps=previous.get("steps", int(saved["global_step"])),
                            beta=loss.beta, latent_dim=model_config.latent_dim,
                            attribute_weight=loss.attribute_weight, invariance_weight=loss.invariance_weight,
                            response_weight=hparams["loss_config"].get("response_weight", 0.0),
                            exported_from=str(path), export_date=time.strftime("%Y-%m-%d %H:%M:%S"))
    model_file = Path(cfg.model_file) if cfg.model_file else out_dir / "model.sdga"
    backup = keep_further_trained_model(model_file, int(saved["global_step"]), log=log)
    try:
        result = export_model(module, data, training_summary, model_file, out_dir / "heldout",
                              heldout_seconds=cfg.heldout_seconds, log=log, knobs=cfg.knobs)
    except OSError as exc:
        raise TrainingError(f"export failed: could not write {exc.filename or 'a file'}: {exc.strerror or exc}. "
                            f"{model_file} is unchanged") from exc
    summary = {"model_file": str(model_file), "previous_model_file": str(backup) if backup else None,
               "training": training_summary, "corpus": data.stats.to_dict(),
               "heldout": result["heldout"], "latents": result["latents"],
               "total_seconds": round(time.time() - started, 1)}
    write_atomically(out_dir / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
