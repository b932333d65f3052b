"""A loaded model file: networks, their config, and the musician-facing latent table.

The file layout (see :mod:`instrument.model.modelfile` for the container): tensors ``decoder.*`` and ``encoder.*``;
metadata keys ``model_config`` (ModelConfig fields), ``latents`` (one entry per latent dimension, ordered by
importance), ``corpus`` (a :class:`CorpusInfo`: pitch and loudness ranges), ``training`` (summary and held-out
metrics), ``expression`` (format version 3, its per-pitch calibration since 4: an :class:`Articulation` fitted
from the corpus, or null; older files load with ``expression`` None and play with the ADSR envelope).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from instrument.model.networks import Decoder, Encoder, ModelConfig
from instrument.model.modelfile import FORMAT_VERSION, ModelFileError, load_model_file, save_model_file

REQUIRED_METADATA = ("model_config", "latents", "corpus", "training")


@dataclass(frozen=True)
class LatentInfo:
    """One latent dimension as a knob: knob 0..1 maps linearly onto [low, high] of z[index].

    Files written with knobs found by intervention (training.knobs) also say where the corpus's 5th..95th
    percentile lies on the knob (``corpus_low``, ``corpus_high``: knob positions; beyond them the knob
    extrapolates) and the descriptor the knob is named after (``descriptor``: a training.export.DESCRIPTORS key);
    older files leave them None."""

    index: int
    name: str
    active: bool
    kl_nats: float
    low: float
    high: float
    mean: float
    std: float
    descriptor_deltas: dict = field(default_factory=dict)
    corpus_low: float | None = None
    corpus_high: float | None = None
    descriptor: str | None = None

    def knob_to_z(self, knob: float) -> float:
        return self.low + (self.high - self.low) * float(knob)

    def z_to_knob(self, z: float) -> float:
        span = self.high - self.low
        return 0.5 if span == 0 else (float(z) - self.low) / span

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "active": self.active, "kl_nats": self.kl_nats,
                "low": self.low, "high": self.high, "mean": self.mean, "std": self.std,
                "descriptor_deltas": dict(self.descriptor_deltas), "corpus_low": self.corpus_low,
                "corpus_high": self.corpus_high, "descriptor": self.descriptor}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentInfo":
        return cls(index=int(d["index"]), name=str(d["name"]), active=bool(d["active"]), kl_nats=float(d["kl_nats"]),
                   low=float(d["low"]), high=float(d["high"]), mean=float(d["mean"]), std=float(d["std"]),
                   descriptor_deltas=dict(d.get("descriptor_deltas", {})),
                   corpus_low=_optional_number(d.get("corpus_low")), corpus_high=_optional_number(d.get("corpus_high")),
                   descriptor=None if d.get("descriptor") is None else str(d["descriptor"]))


def default_latents(latent_dim: int) -> list[LatentInfo]:
    """Latents before analysis: unnamed, knob range +-2 (the prior's 95% interval)."""
    return [LatentInfo(i, f"z{i}", True, 0.0, -2.0, 2.0, 0.0, 1.0) for i in range(latent_dim)]


@dataclass(frozen=True)
class CorpusInfo:
    """What a model was trained on: the ``corpus`` record of its file, written by training, read by everything
    that plays the model. The defaults live here and nowhere else; ``None`` is a figure that was not measured
    (a corpus without voiced frames has no pitch range).

    Stored as a JSON object with every field (format version 2); a version-1 file may lack any of them, or hold
    only the two ranges (`from_v1_dict`)."""

    files: int = 0
    minutes: float = 0.0
    f0_range_hz: tuple[float, float] | None = None      # 1st..99th percentile of confidently voiced frames
    f0_median_hz: float | None = None
    loudness_range_db: tuple[float, float] = (-60.0, -10.0)   # 5th..99th percentile of active frames
    loudness_median_db: float | None = None
    skipped: tuple[tuple[str, str], ...] = ()           # (path, reason) of each file left out

    DEFAULT_F0_RANGE_HZ = (32.7, 2093.0)                # C1..C7, for a corpus whose pitch was not measured
    DEFAULT_F0_HZ = 220.0

    @property
    def f0_range_or_default_hz(self) -> tuple[float, float]:
        return self.f0_range_hz or self.DEFAULT_F0_RANGE_HZ

    @property
    def reference_f0_hz(self) -> float:
        """The pitch a held test note plays at: the corpus median."""
        return self.f0_median_hz if self.f0_median_hz is not None else self.DEFAULT_F0_HZ

    @property
    def reference_loudness_db(self) -> float:
        """The loudness a held test note plays at: the corpus median, else the middle of the loudness range."""
        if self.loudness_median_db is not None:
            return self.loudness_median_db
        return 0.5 * (self.loudness_range_db[0] + self.loudness_range_db[1])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["f0_range_hz"] = None if self.f0_range_hz is None else list(self.f0_range_hz)
        d["loudness_range_db"] = list(self.loudness_range_db)
        d["skipped"] = [{"path": path, "reason": reason} for path, reason in self.skipped]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusInfo":
        """The stored record (every field present); TypeError / KeyError / ValueError on anything else."""
        if not isinstance(d, dict):
            raise TypeError(f"corpus record is a {type(d).__name__}, not an object")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise KeyError(f"corpus record has unknown field(s) {unknown}")

        def pair(value) -> tuple[float, float]:
            low, high = value
            return (_number(low), _number(high))

        return cls(files=int(d["files"]), minutes=_number(d["minutes"]),
                   f0_range_hz=None if d["f0_range_hz"] is None else pair(d["f0_range_hz"]),
                   f0_median_hz=None if d["f0_median_hz"] is None else _number(d["f0_median_hz"]),
                   loudness_range_db=pair(d["loudness_range_db"]),
                   loudness_median_db=None if d["loudness_median_db"] is None else _number(d["loudness_median_db"]),
                   skipped=tuple((str(s["path"]), str(s["reason"])) for s in d["skipped"]))

    @classmethod
    def from_v1_dict(cls, d: dict) -> "CorpusInfo":
        """The record as format version 1 stored it: any field may be missing, a range may be null."""
        defaults = cls()
        full = {name: getattr(defaults, name) for name in cls.__dataclass_fields__}
        full.update({k: v for k, v in (d or {}).items() if k in full and v is not None})
        full["f0_range_hz"] = (d or {}).get("f0_range_hz")
        full["f0_median_hz"] = (d or {}).get("f0_median_hz")
        full["loudness_median_db"] = (d or {}).get("loudness_median_db")
        full["skipped"] = [s if isinstance(s, dict) else {"path": s[0], "reason": s[1]} for s in full["skipped"]]
        return cls.from_dict(full)


@dataclass(frozen=True)
class Articulation:
    """How the corpus's instrument plays a note, fitted by :func:`training.expression.fit_articulation` from
    the corpus's f0 / voicing / loudness (no MIDI) and played by :mod:`instrument.engine.expression`.

    Level over a note, in dB relative to the note's level (its median over the sustained part), ``t`` in ms
    since note-on: an attack from ``attack_start_db`` to ``attack_peak_db`` over ``attack_ms`` (fraction of the
    rise in dB ``1 - (1 - attack_fast_fraction) * (1 - t / attack_ms) ** attack_shape - attack_fast_fraction *
    (1 - t / attack_ms) ** attack_fast_shape``: a slow part and, where the corpus's notes jump most of the way
    in the first few ms and then settle, a fast one), then an exponential decay (time constant
    ``decay_ms``) of the peak's excess to 0 dB, a sustain drift ``sustain_slope_db_per_s`` (bounded by
    ``sustain_drift_db``), a tremolo; after note-off the level falls ``release_db_per_s`` from where it was.
    Pitch: a fresh note starts ``approach_cents`` off and settles with time constant ``approach_ms``; legato
    transitions glide over ``legato_ms``; vibrato of ``vibrato_cents`` (amplitude) at ``vibrato_hz`` fades in
    around ``vibrato_delay_ms``. ``level_db[k]`` is the quantile ``level_quantiles[k]`` of the notes' levels;
    velocity 1..127 follows MIDI's curve through ``level_db[-1]`` at velocity 112, ff
    (``instrument.engine.expression``, ``velocity_output_db``), bent under ``level_db[0]``, plus the register:
    ``level_db_per_semitone`` times the note's distance from ``level_reference_midi`` (the levels are quantiles with
    it taken out); ``level_input_db[k]`` is the decoder input that makes the model sound at ``level_db[k]`` (at the
    corpus's median pitch, from the per-pitch table where there is one; empty: the same as ``level_db``);
    ``level_input_by_pitch_db`` holds the decoder inputs that sound at the output levels ``calibration_level_db``
    (from 30 dB under the softest notes to velocity 127, with the register), measured at each pitch of
    ``calibration_midi`` (MIDI notes, rising): one row per pitch, flat (empty: ``level_input_db`` at every pitch; a
    decoder does not sound equally loud over its range, nor equally far from its input at every level, so the engine
    maps every frame's level through it). ``notes`` is how many notes the fit used; ``fallback`` says there were too
    few (then only what could be fitted differs from the defaults, and the engine plays the envelope unless asked
    for ``learned``)."""

    notes: int = 0
    fallback: bool = True
    attack_start_db: float = -30.0
    attack_peak_db: float = 0.0
    attack_ms: float = 60.0
    attack_shape: float = 2.0
    attack_fast_fraction: float = 0.0
    attack_fast_shape: float = 1.0
    decay_ms: float = 150.0
    sustain_slope_db_per_s: float = 0.0
    sustain_drift_db: float = 12.0
    release_db_per_s: float = 120.0
    approach_cents: float = 0.0
    approach_ms: float = 30.0
    legato_ms: float = 40.0
    vibrato_hz: float = 5.0
    vibrato_cents: float = 0.0
    vibrato_delay_ms: float = 200.0
    tremolo_hz: float = 5.0
    tremolo_db: float = 0.0
    level_quantiles: tuple[float, ...] = (0.0, 1.0)
    level_db: tuple[float, ...] = (-40.0, -15.0)
    level_input_db: tuple[float, ...] = ()
    calibration_midi: tuple[float, ...] = ()
    calibration_level_db: tuple[float, ...] = ()
    level_input_by_pitch_db: tuple[float, ...] = ()
    level_db_per_semitone: float = 0.0
    level_reference_midi: float = 60.0

    OPTIONAL = ("level_input_db", "calibration_midi", "calibration_level_db", "level_input_by_pitch_db",
                "level_db_per_semitone", "level_reference_midi",       # absent in files before version 4
                "attack_fast_fraction", "attack_fast_shape")            # absent before version 5

    def __post_init__(self):
        if len(self.level_quantiles) != len(self.level_db) or len(self.level_db) < 2:
            raise ValueError("level_quantiles and level_db need the same length, at least 2")
        if any(b < a for a, b in zip(self.level_db, self.level_db[1:])) or \
                any(b <= a for a, b in zip(self.level_quantiles, self.level_quantiles[1:])):
            raise ValueError("level_quantiles must rise and level_db must not fall")
        if self.level_input_db and (len(self.level_input_db) != len(self.level_db) or any(
                b < a for a, b in zip(self.level_input_db, self.level_input_db[1:]))):
            raise ValueError("level_input_db must be empty or as long as level_db, and not fall")
        n = len(self.calibration_level_db)
        if len(self.level_input_by_pitch_db) != n * len(self.calibration_midi) or (n == 1) or \
                any(b <= a for a, b in zip(self.calibration_midi, self.calibration_midi[1:])) or \
                any(b <= a for a, b in zip(self.calibration_level_db, self.calibration_level_db[1:])):
            raise ValueError("calibration_midi and calibration_level_db must rise, and level_input_by_pitch_db "
                             "hold one row of len(calibration_level_db) per pitch")
        rows = self.level_input_by_pitch_db
        if any(rows[r * n + k + 1] < rows[r * n + k] for r in range(len(self.calibration_midi)) for k in range(n - 1)):
            raise ValueError("each row of level_input_by_pitch_db must not fall")
        if not 0.0 <= self.attack_fast_fraction <= 1.0:
            raise ValueError(f"articulation attack_fast_fraction must be in 0..1, got {self.attack_fast_fraction!r}")
        for name in ("attack_ms", "attack_shape", "attack_fast_shape", "decay_ms", "release_db_per_s", "approach_ms",
                     "legato_ms", "vibrato_hz", "tremolo_hz"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"articulation {name} must be > 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Articulation":
        """The stored record; TypeError / KeyError / ValueError on anything else (every field present but
        the ``OPTIONAL`` ones)."""
        if not isinstance(d, dict):
            raise TypeError(f"expression record is a {type(d).__name__}, not an object")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise KeyError(f"expression record has unknown field(s) {unknown}")
        values = {}
        for name in cls.__dataclass_fields__:
            if name in cls.OPTIONAL and name not in d:        # uncalibrated, or calibrated at one pitch
                continue
            value, default = d[name], cls.__dataclass_fields__[name].default
            if isinstance(default, bool):                     # the field's default says its kind
                values[name] = bool(value)
            elif isinstance(default, int):
                values[name] = int(value)
            elif isinstance(default, tuple):
                values[name] = tuple(_number(x) for x in value)
            else:
                values[name] = _number(value)
        return cls(**values)


def _optional_number(value) -> float | None:
    return None if value is None else _number(value)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _upgrade_v1(metadata: dict) -> dict:
    return dict(metadata, corpus=CorpusInfo.from_v1_dict(metadata.get("corpus")).to_dict())


def _upgrade_v2(metadata: dict) -> dict:
    """Version 2 had no learnt expression: ``expression`` is null (the engine plays the ADSR envelope)."""
    return dict(metadata, expression=None)


def _upgrade_v3(metadata: dict) -> dict:
    """Version 3's expression record had no per-pitch level calibration (``calibration_midi``,
    ``level_input_by_pitch_db``): absent, the one-pitch ``level_input_db`` serves every pitch. The layout is
    otherwise the same."""
    return metadata


def _upgrade_v4(metadata: dict) -> dict:
    """Version 4's expression record had a one-part attack (no ``attack_fast_fraction``, ``attack_fast_shape``):
    absent, the fast part is 0 and the attack plays as it did. The layout is otherwise the same."""
    return metadata


# Format version -> metadata as that version wrote it, turned into what the next version writes.
METADATA_UPGRADES = {1: _upgrade_v1, 2: _upgrade_v2, 3: _upgrade_v3, 4: _upgrade_v4}
assert sorted(METADATA_UPGRADES) == list(range(1, FORMAT_VERSION))


@dataclass
class ModelBundle:
    config: ModelConfig
    decoder: Decoder
    encoder: Encoder | None
    latents: list[LatentInfo]          # ordered by importance (most active first)
    metadata: dict = field(default_factory=dict)             # the rest of the file (training summary, ...)
    corpus: CorpusInfo = field(default_factory=CorpusInfo)
    expression: Articulation | None = None   # learnt note expression (format 3); None: the ADSR envelope

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
        return self.corpus.f0_range_or_default_hz


def parse_latent_knobs(bundle: ModelBundle, items: Sequence[str]) -> list[tuple[LatentInfo, float]]:
    """``--latent NAME=KNOB`` arguments -> (latent, knob 0..1) pairs, in the order given.

    NAME is a latent's name or its importance rank (0 = most important). Raises ValueError naming the
    argument (and the latents there are, where NAME names none) on a malformed item, an unknown latent or a
    knob outside 0..1. The one parser behind sdga-play, sdga-render and sdga-transfer."""
    parsed = []
    for item in items:
        name, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not name or not text:
            raise ValueError(f"--latent expects NAME=KNOB (e.g. brightness=0.8), got {item!r}")
        try:
            knob = float(text)
        except ValueError:
            raise ValueError(f"--latent {item!r}: {text!r} is not a number") from None
        try:
            info = bundle.latent(int(name) if name.isdecimal() else name)
        except KeyError as exc:
            raise ValueError(f"--latent {item!r}: {exc.args[0]}") from None
        except IndexError:
            raise ValueError(f"--latent {item!r}: no latent at rank {name} ({len(bundle.latents)} latents: "
                             f"{', '.join(bundle.latent_names)})") from None
        if not 0.0 <= knob <= 1.0:
            raise ValueError(f"--latent {item!r}: knob values are 0..1")
        parsed.append((info, knob))
    return parsed


def save_bundle(path: Path | str, bundle: ModelBundle) -> Path:
    tensors = {f"decoder.{k}": v for k, v in bundle.decoder.state_dict().items()}
    if bundle.encoder is not None:
        tensors.update({f"encoder.{k}": v for k, v in bundle.encoder.state_dict().items()})
    metadata = dict(bundle.metadata)
    metadata["model_config"] = bundle.config.to_dict()
    metadata["latents"] = [l.to_dict() for l in bundle.latents]
    metadata["corpus"] = bundle.corpus.to_dict()
    metadata["expression"] = None if bundle.expression is None else bundle.expression.to_dict()
    metadata.setdefault("training", {})
    return save_model_file(path, tensors, metadata)


def load_bundle(path: Path | str, with_encoder: bool = True) -> ModelBundle:
    """Load and check a model file; every problem is a ModelFileError raised before anything runs."""
    tensors, metadata = load_model_file(path, required_metadata_keys=REQUIRED_METADATA, upgrades=METADATA_UPGRADES)
    try:
        config = ModelConfig.from_dict(metadata["model_config"])
        latents = [LatentInfo.from_dict(d) for d in metadata["latents"]]
        corpus = CorpusInfo.from_dict(metadata["corpus"])
        expression = None if metadata["expression"] is None else Articulation.from_dict(metadata["expression"])
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
    rest = {k: v for k, v in metadata.items() if k not in ("model_config", "latents", "corpus", "expression")}
    return ModelBundle(config=config, decoder=decoder, encoder=encoder, latents=latents, metadata=rest, corpus=corpus,
                       expression=expression)


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
    return ModelBundle(config, decoder, encoder, default_latents(config.latent_dim), {"training": {"untrained": True}},
                       CorpusInfo(f0_range_hz=(65.4, 1046.5), loudness_range_db=(-60.0, -10.0)))
