"""What a controller can move (the target table) and the YAML reading both mapping and patch files share.

Targets are data, like :data:`instrument.engine.events.PARAMS` (which they reuse): every target has a name, unit,
range, default and knob curve. Mapping files only point at these names:

- every engine parameter by its PARAMS name (``release_ms``, ``noise_gain_db``, ``voice_mode`` ...);
- ``latent/<rank>`` (0 = the most important latent) and ``latent/<name>`` (the model's measured names), as
  0..1 knobs over each latent's corpus range;
- ``bend`` (-1..1), ``sustain`` (a switch), ``panic`` (a trigger);
- ``patch/next``, ``patch/prev``, ``patch/select`` (by index: program change N recalls patch N) and
  ``patch/<name>`` for every patch the mapping knows (triggers).

Smoothing towards a target's value is :mod:`instrument.controls.ramps`.

Errors: a broken file raises :class:`MappingError` (a ValueError) naming the file, the line, the key and the
valid choices; :class:`YamlFile` keeps yaml's node marks to know the lines.
"""
from __future__ import annotations

import difflib
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from instrument.engine.events import (CC_SUSTAIN, PARAMS, ControlChange, Event, KnobRange, LatentSet, Panic, ParamSet, PitchBend)

__all__ = ["MappingError", "Target", "ENGINE_TARGETS", "PATCH_TRIGGERS", "target_table", "KeySpec",
           "YamlFile", "keys_markdown"]


# ---------------------------------------------------------------------------------------------- errors
class MappingError(ValueError):
    """A mapping or patch file that does not load: ``file``, ``line`` (1-based), ``key`` and ``choices``."""

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None, key: str = "",
                 choices: Sequence[str] = ()):
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.choices = tuple(choices)
        self.problem = message
        where = ", ".join(p for p in (self.file or "", f"line {line}" if line else "") if p)
        text = f"{where}: " if where else ""
        if key:
            text += f"key '{key}': "
        text += message
        if self.choices:
            shown = list(self.choices[:60])
            text += "; valid choices: " + ", ".join(shown) + (" ..." if len(self.choices) > 60 else "")
        super().__init__(text)


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target(KnobRange):
    """One thing a controller can move. ``value = low + (high - low) * knob ** curve`` for a 0..1 knob."""

    name: str
    kind: str                  # "param" | "latent" | "engine" | "patch"
    unit: str
    low: float
    high: float
    default: float
    curve: float = 1.0
    choices: tuple[str, ...] = ()
    index: int = -1            # Param index, z index, or patch index (patch/<name>)
    trigger: bool = False      # fires once when its input rises past the middle (buttons, program change)
    doc: str = ""
    active: bool = True        # a latent the model offers as a knob (an "optional" binding skips one that is not)

    @property
    def key(self) -> tuple[str, int | str]:
        """Identity of what is moved (``latent/0`` and ``latent/brightness`` can be the same z index)."""
        return (self.kind, self.index if self.kind in ("param", "latent") else self.name)

    @property
    def smoothable(self) -> bool:
        """Continuous targets ramp; switches, choices, channels and triggers change at once."""
        return not self.trigger and not self.choices and self.unit not in ("channel", "switch")

    def event(self, value: float, channel: int = 0, offset: int = 0) -> Event | None:
        """The engine event that sets this target to ``value`` (in its unit); None for patch targets."""
        value = self.clamp(value)
        if self.kind == "param":
            return ParamSet(self.index, value, offset)
        if self.kind == "latent":
            return LatentSet(self.index, value, knob=True, offset=offset)
        if self.name == "bend":
            return PitchBend(value, channel, offset)
        if self.name == "sustain":
            return ControlChange(CC_SUSTAIN, 127 if value >= 0.5 else 0, channel, offset)
        if self.name == "panic":
            return Panic(offset)
        return None


ENGINE_TARGETS: tuple[Target, ...] = (
    Target("bend", "engine", "", -1.0, 1.0, 0.0, doc="pitch bend, -1..1 of bend_range_semitones"),
    Target("sustain", "engine", "switch", 0.0, 1.0, 0.0, doc="sustain pedal (on at >= 0.5)"),
    Target("panic", "engine", "", 0.0, 1.0, 0.0, trigger=True, doc="silence everything"),
)
PATCH_TRIGGERS: tuple[Target, ...] = (
    Target("patch/next", "patch", "", 0.0, 1.0, 0.0, trigger=True, doc="recall the next patch (wraps)"),
    Target("patch/prev", "patch", "", 0.0, 1.0, 0.0, trigger=True, doc="recall the previous patch (wraps)"),
)


def target_table(latents: Sequence = (), patch_names: Sequence[str] = ()) -> dict[str, Target]:
    """Every target for a model's latent table (``bundle.latents``, importance order) and a patch list."""
    table: dict[str, Target] = {}
    for index, spec in enumerate(PARAMS):
        table[spec.name] = Target(spec.name, "param", spec.unit, spec.low, spec.high, spec.default, spec.curve,
                                  spec.choices, index, doc=spec.doc)
    for rank, info in enumerate(latents):
        default = min(max(info.z_to_knob(info.mean), 0.0), 1.0)
        doc = f"latent z{info.index} ({info.name}, rank {rank}{'' if info.active else ', inactive'}) as a 0..1 knob"
        for name in (f"latent/{rank}", f"latent/{info.name}"):
            table.setdefault(name, Target(name, "latent", "knob", 0.0, 1.0, default, 1.0, (), info.index, doc=doc,
                                          active=bool(info.active)))
    for target in ENGINE_TARGETS:
        table[target.name] = target
    if patch_names:
        for target in PATCH_TRIGGERS:
            table[target.name] = target
        table["patch/select"] = Target("patch/select", "patch", "index", 0.0, float(len(patch_names) - 1), 0.0,
                                       doc="recall patch number N (program change N)")
        for index, name in enumerate(patch_names):
            table[f"patch/{name}"] = Target(f"patch/{name}", "patch", "", 0.0, 1.0, 0.0, index=index,
                                            trigger=True, doc=f"recall patch {name!r}")
    return table


# ---------------------------------------------------------------------------------------------- YAML
@dataclass(frozen=True)
class KeySpec:
    """One key of a file schema: validation, the README and the tests read these tables."""

    name: str
    type: str           # what it holds, in words ("int 0..127", "[low, high]", ...)
    doc: str
    example: str = ""


def keys_markdown(keys: Iterable[KeySpec]) -> str:
    """A markdown table of a schema (used for the README section)."""
    rows = ["| key | value | meaning |", "|---|---|---|"]
    rows += [f"| `{k.name}` | {k.type} | {k.doc}{f' (e.g. `{k.example}`)' if k.example else ''} |" for k in keys]
    return "\n".join(rows)


MAX_FILE_BYTES = 1 << 20      # a mapping or patch file is a few kB; larger is refused unread

_TYPE_NAMES = {"tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
               "tag:yaml.org,2002:bool": "true/false", "tag:yaml.org,2002:null": "nothing (null)",
               "tag:yaml.org,2002:str": "text", "tag:yaml.org,2002:seq": "a list", "tag:yaml.org,2002:map": "a mapping"}


class YamlFile:
    """A YAML file composed into nodes (with line marks) plus typed readers that raise :class:`MappingError`
    naming this file, the node's line and the key path."""

    def __init__(self, path: str | Path, text: str | None = None, error: type[MappingError] = MappingError):
        self.path = Path(path)
        self.error_type = error
        if text is None:
            text = self._read(error)
        self.text = text
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise error(f"not valid YAML: {exc.problem or exc}", self.path,
                        mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise error(f"not valid YAML: {exc}", self.path) from None
        self._constructor = yaml.constructor.SafeConstructor()

    def _read(self, error: type[MappingError]) -> str:
        """The file's text; a device, pipe or huge file is refused before it is opened (reading /dev/zero
        or a FIFO named by a mapping would never end)."""
        try:
            info = self.path.stat()
        except (OSError, ValueError) as exc:           # ValueError: a NUL in the name
            raise error(f"cannot read: {getattr(exc, 'strerror', None) or exc}", self.path) from None
        if not stat.S_ISREG(info.st_mode):
            raise error("cannot read: not a regular file (a folder, device or pipe)", self.path)
        if info.st_size > MAX_FILE_BYTES:
            raise error(f"cannot read: {info.st_size} bytes is too big for a mapping or patch file "
                        f"(the limit is {MAX_FILE_BYTES})", self.path)
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise error(f"cannot read: {exc.strerror or exc}", self.path) from None
        except UnicodeDecodeError as exc:
            raise error(f"not UTF-8 text: {exc}", self.path) from None

    # -------------------------------------------------------------------------------------- errors
    def error(self, node: yaml.Node | None, key: str, message: str, choices: Sequence[str] = ()) -> MappingError:
        line = node.start_mark.line + 1 if node is not None else None
        return self.error_type(message, self.path, line, key, choices)

    @staticmethod
    def describe(node: yaml.Node) -> str:
        return _TYPE_NAMES.get(node.tag, node.tag)

    # -------------------------------------------------------------------------------------- readers
    def value(self, node: yaml.Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(node, "", f"bad value: {exc}") from None

    def mapping(self, node: yaml.Node | None, key: str, allowed: Sequence[str] | None = None,
                required: Sequence[str] = ()) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A YAML mapping as {key text: (key node, value node)}; unknown, duplicate and missing keys raise."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, f"must be a mapping (key: value lines), got "
                                        f"{self.describe(node) if node is not None else 'an empty file'}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, key, "keys must be plain names")
            name = str(self.value(key_node))
            path = f"{key}.{name}" if key else name
            if name in out:
                raise self.error(key_node, path, f"duplicate key (first on line {out[name][0].start_mark.line + 1})")
            if allowed is not None and name not in allowed:
                raise self.error(key_node, path, f"unknown key{_did_you_mean(name, allowed)}", allowed)
            out[name] = (key_node, value_node)
        for name in required:
            if name not in out:
                raise self.error(node, f"{key}.{name}" if key else name, "missing", allowed or ())
        return out

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, f"must be a list, got {self.describe(node)}")
        return list(node.value)

    def number(self, node: yaml.Node, key: str, low: float | None = None, high: float | None = None,
               integer: bool = False) -> float:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        what = "an integer" if integer else "a number"
        span = f" {low:g}..{high:g}" if low is not None and high is not None else ""
        if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise self.error(node, key, f"must be {what}{span}, got {self.describe(node)} {_show(node)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(node, key, f"{value} is out of range: must be {what}{span}")
        return int(value) if integer else float(value)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise self.error(node, key, f"must be true or false, got {self.describe(node)} {_show(node)}",
                             ("true", "false"))
        return value

    def string(self, node: yaml.Node, key: str, choices: Sequence[str] | None = None) -> str:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str) or not value:
            raise self.error(node, key, f"must be text, got {self.describe(node)} {_show(node)}", choices or ())
        if choices is not None and value not in choices:
            raise self.error(node, key, f"unknown value '{value}'{_did_you_mean(value, choices)}", choices)
        return value

    def pair(self, node: yaml.Node, key: str) -> tuple[float, float]:
        items = self.sequence(node, key) if isinstance(node, yaml.SequenceNode) else None
        if items is None or len(items) != 2:
            raise self.error(node, key, f"must be a list of two numbers [low, high], got {_show(node)}")
        return self.number(items[0], key), self.number(items[1], key)


def _show(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return repr(node.value)
    return ""
