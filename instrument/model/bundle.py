"""A loaded model file: networks, their config, and the musician-facing latent table.

The file layout (see :mod:`instrument.model.modelfile` for the container): tensors ``decoder.*`` and ``encoder.*``;
metadata keys ``model_config`` (ModelConfig fields), ``latents`` (one entry per latent dimension, ordered by
importance), ``corpus`` (f0 and loudness ranges), ``training`` (summary and held-out metrics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from instrument.model.networks import Decoder, Encoder, ModelConfig
from instrument.model.modelfile import ModelFileError, load_model_file, save_model_file

REQUIRED_METADATA = ("model_config", "latents", "corpus", "training")


@dataclass(frozen=True)
class LatentInfo:
    """One latent dimension as a knob: knob 0..1 maps linearly onto [low, high] of z[index]."""

    index: int
    name: str
    active: bool
    kl_nats: float
    low: float
    high: float
    mean: float
    std: float
    descriptor_deltas: dict = field(default_factory=dict)

    def knob_to_z(self, knob: float) -> float:
        return self.low + (self.high - self.low) * float(knob)

    def z_to_knob(self, z: float) -> float:
        span = self.high - self.low
        return 0.5 if span == 0 else (float(z) - self.low) / span

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "active": self.active, "kl_nats": self.kl_nats,
                "low": self.low, "high": self.high, "mean": self.mean, "std": self.std,
                "descriptor_deltas": dict(self.descriptor_deltas)}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentInfo":
        return cls(index=int(d["index"]), name=str(d["name"]), active=bool(d["active"]), kl_nats=float(d["kl_nats"]),
                   low=float(d["low"]), high=float(d["high"]), mean=float(d["mean"]), std=float(d["std"]),
                   descriptor_deltas=dict(d.get("descriptor_deltas", {})))


def default_latents(latent_dim: int) -> list[LatentInfo]:
    """Latents before analysis: unnamed, knob range +-2 (the prior's 95% interval)."""
    return [LatentInfo(i, f"z{i}", True, 0.0, -2.0, 2.0, 0.0, 1.0) for i in range(latent_dim)]


@dataclass
class ModelBundle:
    config: ModelConfig
    decoder: Decoder
    encoder: Encoder | None
    latents: list[LatentInfo]          # ordered by importance (most active first)
    metadata: dict                     # everything else in the file (corpus, training, ...)

    @property
    def latent_names(self) -> list[str]:
        return [l.name for l in self.latents]

    def latent(self, key: int | str) -> LatentInfo:
        """By name, or by position in the importance order."""
        if isinstance(key, str):
            for l in self.latents:
                if l.name == key:
                    return l
            raise KeyError(f"no latent named {key!r}; latents: {', '.join(self.latent_names)}")
        return self.latents[key]

    def default_z(self) -> torch.Tensor:
        """z at the corpus mean of every latent (D,)."""
        z = torch.zeros(self.config.latent_dim)
        for l in self.latents:
            z[l.index] = l.mean
        return z

    def f0_range_hz(self) -> tuple[float, float]:
        r = self.metadata.get("corpus", {}).get("f0_range_hz")
        return (float(r[0]), float(r[1])) if r else (32.7, 2093.0)


def save_bundle(path: Path | str, bundle: ModelBundle) -> Path:
    tensors = {f"decoder.{k}": v for k, v in bundle.decoder.state_dict().items()}
    if bundle.encoder is not None:
        tensors.update({f"encoder.{k}": v for k, v in bundle.encoder.state_dict().items()})
    metadata = dict(bundle.metadata)
    metadata["model_config"] = bundle.config.to_dict()
    metadata["latents"] = [l.to_dict() for l in bundle.latents]
    metadata.setdefault("corpus", {})
    metadata.setdefault("training", {})
    return save_model_file(path, tensors, metadata)


def load_bundle(path: Path | str, with_encoder: bool = True) -> ModelBundle:
    """Load and check a model file; every problem is a ModelFileError raised before anything runs."""
    tensors, metadata = load_model_file(path, required_metadata_keys=REQUIRED_METADATA)
    try:
        config = ModelConfig.from_dict(metadata["model_config"])
        latents = [LatentInfo.from_dict(d) for d in metadata["latents"]]
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: bad metadata: {exc}") from exc
    if sorted(l.index for l in latents) != list(range(config.latent_dim)):
        raise ModelFileError(f"{path}: latent table does not cover latent_dim={config.latent_dim}")

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    decoder = Decoder(config)
    try:
        decoder.load_state_dict(part("decoder."), strict=True)
        encoder = None
        if with_encoder and any(k.startswith("encoder.") for k in tensors):
            encoder = Encoder(config)
            encoder.load_state_dict(part("encoder."), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not match the architecture in its metadata: {exc}") from exc
    decoder.eval()
    if encoder is not None:
        encoder.eval()
    rest = {k: v for k, v in metadata.items() if k not in ("model_config", "latents")}
    return ModelBundle(config=config, decoder=decoder, encoder=encoder, latents=latents, metadata=rest)


def random_bundle(config: ModelConfig | None = None, seed: int = 0) -> ModelBundle:
    """An untrained model (for tests and benchmarks of the engine; sounds like a buzzy tone: its harmonic
    distribution starts flat, not with the tilt a model starts training from, so that timbre changes made by
    patches and effects are easy to measure)."""
    config = config or ModelConfig()
    torch.manual_seed(seed)
    decoder = Decoder(config).eval()
    with torch.no_grad():
        decoder.out.bias[1:1 + config.n_harmonics] = 0.0
    encoder = Encoder(config).eval()
    return ModelBundle(config, decoder, encoder, default_latents(config.latent_dim),
                       {"corpus": {"f0_range_hz": [65.4, 1046.5], "loudness_range_db": [-60.0, -10.0]},
                        "training": {"untrained": True}})
