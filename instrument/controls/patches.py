"""Patches: a named sound in a YAML file (model, latent knobs, engine parameters, effects chain, mapping).

A patch is recalled at start-up (``sdga-play --patch FILE``), by MIDI program change or OSC
(:meth:`instrument.controls.router.MappingRouter.recall`, which glides every continuous value to the patch over
``glide_ms`` and crossfades the effects), and the current sound is saved as a new one with
:func:`save_sound` (from :func:`engine_sound` or the router's values; :func:`save_patch` writes the file). Paths inside a patch are relative to the patch file.

Validation works like mapping files: a mistake raises :class:`PatchError` (a MappingError, so a ValueError)
naming the file, line, key and the valid choices. Latents are keyed by measured name (``brightness``) or by
importance rank (``0``); names are checked against the model when a bundle is given.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from instrument.model.modelfile import write_atomically
from instrument.engine.effects import EFFECTS, EffectConfig
from instrument.engine.events import PARAMS, Event, LatentSet, Param, ParamSet, TuningSet
from instrument.engine.tuning import TuningError, read_tuning
from instrument.controls.targets import KeySpec, MappingError, YamlFile

__all__ = ["PatchError", "Patch", "PATCH_KEYS", "PATCH_VERSION", "load_patch", "load_patches", "save_patch",
           "save_sound", "engine_sound", "patch_files"]

PATCH_VERSION = 1

PATCH_KEYS: tuple[KeySpec, ...] = (
    KeySpec("version", "1", "file format version (optional; only 1 exists)", "version: 1"),
    KeySpec("name", "text", "the patch's name (default: the file name without .yaml)", "name: glass"),
    KeySpec("description", "text", "free text shown by the app", "description: airy, long release"),
    KeySpec("model", "path", "model file, relative to the patch (the app's --model overrides it)",
            "model: ../demo/run/model.sdga"),
    KeySpec("mapping", "path", "mapping file to use with this patch when none is given, relative to the patch",
            "mapping: ../mappings/default.yaml"),
    KeySpec("latents", "{name or rank: 0..1}", "latent knobs by measured name or importance rank (0 = most "
            "important); latents not listed keep their value", "latents: {brightness: 0.8, 1: 0.2}"),
    KeySpec("params", "{parameter: value}", "engine parameters (instrument.engine.events.PARAMS) in their units; "
            "voice_mode also takes poly/mono/legato", "params: {noise_gain_db: -12, release_ms: 900}"),
    KeySpec("effects", "list of {type: ..., parameter: value}", "effects chain in order (see the effects table)",
            "effects: [{type: reverb, room_size: 0.8}]"),
    KeySpec("glide_ms", "number 0..20000", "how long recalling this patch glides (default: the mapping's "
            "glide_ms, 300)", "glide_ms: 500"),
    KeySpec("scale", "path", "a Scala scale file (.scl), relative to the patch: the keys play its degrees "
            "(a patch without one plays the mapping's scale, else keeps the tuning); concert pitch is the "
            "tuning_a4_hz parameter", "scale: ../tunings/19edo.scl"),
    KeySpec("keyboard_map", "path", "a Scala keyboard map (.kbm) for the scale, relative to the patch "
            "(default: degree 0 on key 60, key 69 at 440 Hz)", "keyboard_map: ../tunings/c261.kbm"),
)
_KEY_NAMES = tuple(k.name for k in PATCH_KEYS)
DEFAULT_GLIDE_MS = 300.0


class PatchError(MappingError):
    """A patch file that does not load (file, line, key, valid choices in the message)."""


@dataclass(frozen=True)
class Patch:
    """A loaded patch. ``latents`` are (z index, knob 0..1), resolved against a model (empty until then);
    ``latent_keys`` are the keys as written (name or rank text, knob, line)."""

    name: str
    path: Path | None = None
    model: Path | None = None
    mapping: Path | None = None
    description: str = ""
    latents: tuple[tuple[int, float], ...] = ()
    latent_keys: tuple[tuple[str, float, int], ...] = ()
    params: tuple[tuple[int, float], ...] = ()
    effects: tuple[EffectConfig, ...] = ()
    glide_ms: float | None = None    # None: the mapping's (default 300 ms)
    scale: Path | None = None
    keyboard_map: Path | None = None
    tuning: object = field(default=None, compare=False)   # read-only (128,) key offsets from scale + keyboard_map
    resolved: bool = field(default=False, compare=False)

    def resolve(self, latents: Sequence) -> "Patch":
        """Resolve latent names / ranks against a model's latent table (``bundle.latents``)."""
        names = [l.name for l in latents]
        choices = names + [str(r) for r in range(len(latents))]
        out: list[tuple[int, float]] = []
        seen: dict[int, str] = {}
        for key, knob, line in self.latent_keys:
            if key.isdecimal() and int(key) < len(latents):
                info = latents[int(key)]
            elif key in names:
                info = latents[names.index(key)]
            else:
                raise PatchError(f"no latent '{key}' in this model", self.path, line, f"latents.{key}", choices)
            if info.index in seen:
                raise PatchError(f"'{key}' is the same latent as '{seen[info.index]}' (rank "
                                 f"{latents.index(info)}, named {info.name})", self.path, line, f"latents.{key}")
            seen[info.index] = key
            out.append((info.index, knob))
        return replace(self, latents=tuple(out), resolved=True)

    def events(self, offset: int = 0) -> list[Event]:
        """Set the whole sound at once (start-up; for a glide use Router.recall)."""
        if self.latent_keys and not self.resolved:
            raise ValueError(f"patch {self.name!r}: resolve() it against a model first")
        events: list[Event] = [LatentSet(index, knob, knob=True, offset=offset) for index, knob in self.latents]
        events += [ParamSet(param, value, offset) for param, value in self.params]
        if self.tuning is not None:
            events.append(TuningSet(self.tuning, offset))
        return events

    def param(self, key: str | int) -> float | None:
        index = int(Param[key.upper()]) if isinstance(key, str) else int(key)
        return dict(self.params).get(index)


def _relative(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base.parent / path)


def load_patch(path: str | Path, bundle=None, *, model: str | Path | None = None, require_model: bool = False,
               text: str | None = None) -> Patch:
    """Read and check a patch file. ``bundle``: resolve latent names against it. ``model``: use this model
    file instead of the patch's (``--model`` on the command line). ``require_model``: the model file must
    exist (the app, when it loads the model named by the patch)."""
    doc = YamlFile(path, text, error=PatchError)
    top = doc.mapping(doc.root, "", _KEY_NAMES)
    path = doc.path
    name = path.stem
    kwargs: dict = {}
    if "version" in top:
        doc.number(top["version"][1], "version", PATCH_VERSION, PATCH_VERSION, integer=True)
    if "name" in top:
        name = doc.string(top["name"][1], "name")
    if "description" in top:
        kwargs["description"] = doc.string(top["description"][1], "description")
    if "model" in top:
        node = top["model"][1]
        kwargs["model"] = _relative(path, doc.string(node, "model"))
        if require_model and model is None:
            try:
                found = kwargs["model"].is_file()
            except OSError as exc:                 # e.g. a name too long for the file system
                raise doc.error(node, "model", f"model file {kwargs['model']}: {exc.strerror or exc}") from None
            if not found:
                raise doc.error(node, "model", f"model file {kwargs['model']} does not exist")
    if model is not None:
        kwargs["model"] = Path(model)
    if "mapping" in top:
        kwargs["mapping"] = _relative(path, doc.string(top["mapping"][1], "mapping"))
    if "glide_ms" in top:
        kwargs["glide_ms"] = doc.number(top["glide_ms"][1], "glide_ms", 0.0, 20000.0)
    if "latents" in top:
        entries = doc.mapping(top["latents"][1], "latents") if not _is_null(top["latents"][1]) else {}
        kwargs["latent_keys"] = tuple(
            (k, doc.number(v, f"latents.{k}", 0.0, 1.0), knode.start_mark.line + 1)
            for k, (knode, v) in entries.items())
    if "params" in top:
        names = [p.name for p in PARAMS]
        entries = doc.mapping(top["params"][1], "params", names) if not _is_null(top["params"][1]) else {}
        params = []
        for key, (_, node) in entries.items():
            spec = PARAMS[names.index(key)]
            if spec.choices and isinstance(doc.value(node), str):
                value = float(spec.choices.index(doc.string(node, f"params.{key}", spec.choices)))
            else:
                value = doc.number(node, f"params.{key}", spec.low, spec.high,
                                   integer=bool(spec.choices) or spec.unit == "channel")
            params.append((names.index(key), float(value)))
        kwargs["params"] = tuple(params)
    if "keyboard_map" in top and "scale" not in top:
        raise doc.error(top["keyboard_map"][1], "keyboard_map", "a keyboard map needs a scale (add scale: FILE.scl)")
    if "scale" in top:
        node = top["scale"][1]
        kwargs["scale"] = _relative(path, doc.string(node, "scale"))
        if "keyboard_map" in top:
            kwargs["keyboard_map"] = _relative(path, doc.string(top["keyboard_map"][1], "keyboard_map"))
        try:
            kwargs["tuning"] = read_tuning(kwargs["scale"], kwargs.get("keyboard_map"))
        except TuningError as exc:       # the .scl/.kbm's own file:line, and where the patch names it
            raise doc.error(node, "scale", str(exc)) from exc
    if "effects" in top:
        kwargs["effects"] = tuple(_effect(doc, node, f"effects[{i}]")
                                  for i, node in enumerate(doc.sequence(top["effects"][1], "effects")))
    patch = Patch(name=name, path=path, **kwargs)
    return patch.resolve(bundle.latents) if bundle is not None else patch


def _is_null(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _effect(doc: YamlFile, node, key: str) -> EffectConfig:
    entries = doc.mapping(node, key)
    if "type" not in entries:
        raise doc.error(node, f"{key}.type", "missing: every effect needs a type", tuple(EFFECTS))
    kind = doc.string(entries["type"][1], f"{key}.type", tuple(EFFECTS))
    spec = EFFECTS[kind]
    names = ["type"] + [p.name for p in spec.params]
    values = {}
    for name, (knode, vnode) in entries.items():
        if name == "type":
            continue
        if name not in names:
            raise doc.error(knode, f"{key}.{name}", f"not a parameter of {kind}", names[1:])
        p = spec.param(name)
        values[name] = doc.number(vnode, f"{key}.{name}", p.low, p.high)
    return EffectConfig.make(kind, values)


def patch_files(where: str | Path | Sequence[str | Path]) -> list[Path]:
    """Patch files from a folder (every *.yaml, sorted by name: program change N is the N-th) or a list."""
    if isinstance(where, (str, Path)):
        where = Path(where)
        return sorted(where.glob("*.yaml")) if where.is_dir() else [where]
    return [Path(p) for p in where]


def load_patches(where: str | Path | Sequence[str | Path], bundle=None) -> tuple[Patch, ...]:
    """Load every patch of a folder or list; names must be unique."""
    patches: list[Patch] = []
    for path in patch_files(where):
        patch = load_patch(path, bundle)
        for other in patches:
            if other.name == patch.name:
                raise PatchError(f"patch name '{patch.name}' is also used by {other.path}", path, None, "name")
        patches.append(patch)
    return tuple(patches)


# ---------------------------------------------------------------------------------------------- saving
def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode("utf-8"))


def _rel(path: Path, target: str | Path) -> str:
    try:
        return os.path.relpath(Path(target).resolve(), path.parent.resolve())
    except ValueError:          # another drive (Windows)
        return str(Path(target).resolve())


def save_patch(path: str | Path, *, name: str | None = None, model: str | Path | None = None,
               latents: Mapping[str | int, float] | None = None, params: Mapping[str, float] | None = None,
               effects: Sequence[EffectConfig] = (), mapping: str | Path | None = None,
               glide_ms: float | None = None, description: str = "", scale: str | Path | None = None,
               keyboard_map: str | Path | None = None) -> Path:
    """Write a patch file (atomically) that :func:`load_patch` reads back; model, mapping and tuning paths are
    stored relative to the patch. Values are checked the same way as when loading (PatchError on a bad one)."""
    path = Path(path)
    data: dict = {"version": PATCH_VERSION, "name": name or path.stem}
    if description:
        data["description"] = description
    if model is not None:
        data["model"] = _rel(path, model)
    if mapping is not None:
        data["mapping"] = _rel(path, mapping)
    if glide_ms is not None:
        data["glide_ms"] = float(glide_ms)
    if scale is not None:
        data["scale"] = _rel(path, scale)
        if keyboard_map is not None:
            data["keyboard_map"] = _rel(path, keyboard_map)
    if latents:
        data["latents"] = {k: round(float(v), 4) for k, v in latents.items()}
    if params:
        data["params"] = {k: (PARAMS[int(Param[k.upper()])].choices[int(v)] if PARAMS[int(Param[k.upper()])].choices
                              else round(float(v), 4)) for k, v in params.items()}
    if effects:
        data["effects"] = [e.to_dict() for e in effects]
    text = "# sdga patch (saved by sdga; see the README's Patches section for the schema)\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
    path.parent.mkdir(parents=True, exist_ok=True)    # (relative paths through it must resolve)
    load_patch(path, text=text)                       # refuse to write what would not load back
    _atomic_write(path, text)
    return path


def save_sound(path: str | Path, bundle, latent_knobs: Mapping[int, float], param_values: Sequence[float], *,
               name: str | None = None, model: str | Path | None = None, effects: Sequence[EffectConfig] = (),
               mapping: str | Path | None = None, glide_ms: float | None = None, description: str = "",
               scale_files: tuple = ()) -> Path:
    """Save a sound as a patch (``scale_files``: () or the (.scl, .kbm or None) of the tuning playing): the one place that turns "what plays" into a patch file. ``latent_knobs``:
    z index -> 0..1 knob (stored by the model's measured names; a latent not given is 0.5); ``param_values``:
    every PARAMS value by index (all but midi_channel are stored). Sources: :func:`engine_sound` (what an
    engine plays) or :meth:`instrument.controls.router.MappingRouter.sound` (what the controls have set)."""
    latents = {info.name: min(max(float(latent_knobs.get(info.index, 0.5)), 0.0), 1.0) for info in bundle.latents}
    params = {spec.name: float(param_values[i]) for i, spec in enumerate(PARAMS) if spec.name != "midi_channel"}
    scale, keyboard_map = tuple(scale_files) if scale_files else (None, None)
    return save_patch(path, name=name, model=model, latents=latents, params=params, effects=effects,
                      mapping=mapping, glide_ms=glide_ms, description=description, scale=scale,
                      keyboard_map=keyboard_map)


def engine_sound(engine) -> tuple[dict[int, float], list[float]]:
    """What a running :class:`~instrument.engine.engine.Engine` plays now, for :func:`save_sound`: every latent
    as a knob over its corpus range, and every parameter value."""
    z = engine.state.z.numpy() if engine.state is not None else engine.bundle.default_z().numpy()
    knobs = {info.index: info.z_to_knob(float(z[info.index])) for info in engine.bundle.latents}
    return knobs, [float(engine.params[i]) for i in range(len(PARAMS))]
