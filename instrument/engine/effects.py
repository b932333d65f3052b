"""A live effects chain after the engine: pedalboard plugins processed block by block, state kept between
blocks, with click-free changes (the old and new chains run side by side through a linear crossfade).

The table :data:`EFFECTS` is data (names, ranges, units, defaults): patch validation, docs and tests read it
without importing pedalboard. pedalboard itself is imported only when a chain is built, so the instrument
loads without it; :func:`effects_available` says whether it is installed.

Thread use: the audio thread calls :meth:`EffectsChain.process`; a control thread calls
:meth:`EffectsChain.set_effects`, which builds the new plugins there and hands them over with one reference
assignment. pedalboard allocates its output array on every call, so the audio path allocates one block per
chain per call (measured cheap; noted for the real-time budget).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["EffectParam", "EffectSpec", "EFFECTS", "EffectConfig", "EffectsChain", "effects_available",
           "EffectsUnavailable"]


@dataclass(frozen=True)
class EffectParam:
    name: str           # the key in patch files
    kwarg: str          # pedalboard's constructor argument
    unit: str
    low: float
    high: float
    default: float


@dataclass(frozen=True)
class EffectSpec:
    type: str           # the ``type:`` in patch files
    plugin: str         # pedalboard class
    params: tuple[EffectParam, ...]
    doc: str

    def param(self, name: str) -> EffectParam:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def _filter(kind: str, plugin: str, doc: str, default_hz: float, gain: bool) -> EffectSpec:
    params = [EffectParam("cutoff_hz", "cutoff_frequency_hz", "Hz", 20.0, 20000.0, default_hz)]
    if gain:
        params += [EffectParam("gain_db", "gain_db", "dB", -24.0, 24.0, 0.0),
                   EffectParam("q", "q", "", 0.1, 10.0, 0.7071)]
    return EffectSpec(kind, plugin, tuple(params), doc)


EFFECTS: dict[str, EffectSpec] = {s.type: s for s in (
    EffectSpec("reverb", "Reverb", (
        EffectParam("room_size", "room_size", "", 0.0, 1.0, 0.5),
        EffectParam("damping", "damping", "", 0.0, 1.0, 0.5),
        EffectParam("wet_level", "wet_level", "", 0.0, 1.0, 0.33),
        EffectParam("dry_level", "dry_level", "", 0.0, 1.0, 0.4),
        EffectParam("width", "width", "", 0.0, 1.0, 1.0)), "Freeverb-style room"),
    EffectSpec("delay", "Delay", (
        EffectParam("delay_s", "delay_seconds", "s", 0.0, 2.0, 0.5),
        EffectParam("feedback", "feedback", "", 0.0, 0.95, 0.0),
        EffectParam("mix", "mix", "", 0.0, 1.0, 0.5)), "digital delay with feedback"),
    EffectSpec("chorus", "Chorus", (
        EffectParam("rate_hz", "rate_hz", "Hz", 0.01, 20.0, 1.0),
        EffectParam("depth", "depth", "", 0.0, 1.0, 0.25),
        EffectParam("centre_delay_ms", "centre_delay_ms", "ms", 1.0, 50.0, 7.0),
        EffectParam("feedback", "feedback", "", -0.95, 0.95, 0.0),
        EffectParam("mix", "mix", "", 0.0, 1.0, 0.5)), "chorus / flanger"),
    EffectSpec("phaser", "Phaser", (
        EffectParam("rate_hz", "rate_hz", "Hz", 0.01, 20.0, 1.0),
        EffectParam("depth", "depth", "", 0.0, 1.0, 0.5),
        EffectParam("centre_hz", "centre_frequency_hz", "Hz", 20.0, 10000.0, 1300.0),
        EffectParam("feedback", "feedback", "", -0.95, 0.95, 0.0),
        EffectParam("mix", "mix", "", 0.0, 1.0, 0.5)), "phaser"),
    EffectSpec("compressor", "Compressor", (
        EffectParam("threshold_db", "threshold_db", "dB", -60.0, 0.0, 0.0),
        EffectParam("ratio", "ratio", "", 1.0, 20.0, 1.0),
        EffectParam("attack_ms", "attack_ms", "ms", 0.1, 1000.0, 1.0),
        EffectParam("release_ms", "release_ms", "ms", 1.0, 5000.0, 100.0)), "compressor"),
    EffectSpec("limiter", "Limiter", (
        EffectParam("threshold_db", "threshold_db", "dB", -60.0, 0.0, -10.0),
        EffectParam("release_ms", "release_ms", "ms", 1.0, 5000.0, 100.0)), "limiter"),
    EffectSpec("gain", "Gain", (EffectParam("gain_db", "gain_db", "dB", -60.0, 24.0, 0.0),), "gain"),
    EffectSpec("distortion", "Distortion", (EffectParam("drive_db", "drive_db", "dB", 0.0, 60.0, 25.0),),
               "tanh distortion"),
    _filter("highpass", "HighpassFilter", "EQ: 12 dB/oct high-pass", 50.0, False),
    _filter("lowpass", "LowpassFilter", "EQ: 12 dB/oct low-pass", 8000.0, False),
    _filter("low_shelf", "LowShelfFilter", "EQ: low shelf", 200.0, True),
    _filter("high_shelf", "HighShelfFilter", "EQ: high shelf", 4000.0, True),
    _filter("peak", "PeakFilter", "EQ: peak / notch", 1000.0, True),
)}


@dataclass(frozen=True)
class EffectConfig:
    """One validated effect: ``type`` from :data:`EFFECTS` and every parameter's value (defaults filled)."""

    type: str
    params: tuple[tuple[str, float], ...]

    @classmethod
    def make(cls, type: str, params: Mapping[str, float] | None = None) -> "EffectConfig":
        """Build and check (KeyError / ValueError with the valid choices) from plain values."""
        if type not in EFFECTS:
            raise KeyError(f"unknown effect {type!r}; effects: {', '.join(EFFECTS)}")
        spec, params = EFFECTS[type], dict(params or {})
        values = []
        for p in spec.params:
            value = float(params.pop(p.name, p.default))
            if not p.low <= value <= p.high:
                raise ValueError(f"{type}.{p.name} = {value} is outside {p.low:g}..{p.high:g} {p.unit}")
            values.append((p.name, value))
        if params:
            raise KeyError(f"{type}: unknown parameter(s) {', '.join(params)}; parameters: "
                           f"{', '.join(p.name for p in spec.params)}")
        return cls(type, tuple(values))

    def to_dict(self) -> dict:
        defaults = {p.name: p.default for p in EFFECTS[self.type].params}
        return {"type": self.type, **{k: v for k, v in self.params if v != defaults[k]}}


class EffectsUnavailable(RuntimeError):
    """pedalboard is not installed."""


def effects_available() -> bool:
    return importlib.util.find_spec("pedalboard") is not None


def _build_board(effects: Sequence[EffectConfig]):
    if not effects:
        return None
    try:
        import pedalboard
    except ImportError as exc:
        raise EffectsUnavailable("effects need pedalboard (pip install 'pedalboard>=0.9'); "
                                 "play without effects or install it") from exc
    plugins = []
    for effect in effects:
        spec = EFFECTS[effect.type]
        kwargs = {spec.param(name).kwarg: value for name, value in effect.params}
        plugins.append(getattr(pedalboard, spec.plugin)(**kwargs))
    return pedalboard.Pedalboard(plugins)


class EffectsChain:
    """Effects after the engine: ``prepare(sample_rate, block_size, channels)`` then ``process(block)`` in place
    for blocks of any size, (n,) or (n, channels) float32. ``set_effects`` swaps the chain with a crossfade."""

    def __init__(self, effects: Sequence[EffectConfig] = ()):
        self.effects: tuple[EffectConfig, ...] = tuple(effects)
        self._board = _build_board(self.effects)
        self._pending = None
        self._fade: list | None = None      # [old board or None, new board or None, position, length]
        self.sample_rate = 0
        self.block_size = 0
        self.channels = 1
        self.swaps = 0

    def prepare(self, sample_rate: int, block_size: int = 512, channels: int = 1) -> None:
        if sample_rate <= 0 or block_size <= 0 or channels <= 0:
            raise ValueError("sample_rate, block_size and channels must be positive")
        self.sample_rate, self.block_size, self.channels = int(sample_rate), int(block_size), int(channels)
        self.reset()

    def reset(self) -> None:
        """Clear every plugin's state (tails, delay lines) and any crossfade in progress."""
        if self._board is not None:
            self._board.reset()
        self._fade = None

    def set_effects(self, effects: Sequence[EffectConfig], fade_ms: float = 50.0) -> None:
        """From a control thread: build ``effects`` and crossfade to them over ``fade_ms`` (at least one sample)
        from the next processed block on."""
        effects = tuple(effects)
        board = _build_board(effects)
        length = max(1, int(round(fade_ms * max(self.sample_rate, 1) / 1000.0)))
        self._pending = (effects, board, length)

    def process(self, block: np.ndarray) -> None:
        """Run one block through the chain in place (state carried to the next call)."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            effects, board, length = pending
            if board is not None:
                board.reset()
            self._fade = [self._board, board, 0, length]
            self._board, self.effects = board, effects
            self.swaps += 1
        fade = self._fade
        if fade is None and self._board is None:
            return
        if self.sample_rate <= 0:
            raise RuntimeError("EffectsChain.process() before prepare()")
        frames = block if block.ndim == 2 else block[:, None]
        planar = np.ascontiguousarray(frames.T, dtype=np.float32)        # (channels, n)
        n = planar.shape[1]
        if n == 0:
            return
        sr = float(self.sample_rate)
        if fade is None:
            wet = self._board.process(planar, sr, buffer_size=max(n, 1), reset=False)
        else:
            old, new, position, length = fade
            a = old.process(planar, sr, buffer_size=n, reset=False) if old is not None else planar
            b = new.process(planar, sr, buffer_size=n, reset=False) if new is not None else planar
            ramp = np.minimum((position + 1 + np.arange(n, dtype=np.float32)) / np.float32(length), 1.0)
            wet = a + (b - a) * ramp
            fade[2] = position + n
            if fade[2] >= length:
                self._fade = None
        frames[:] = wet.T.astype(frames.dtype, copy=False)
