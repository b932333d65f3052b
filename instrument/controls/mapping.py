"""The mapping file: YAML that binds MIDI / OSC sources to targets. Its schema tables, the checked data
(:class:`Source`, :class:`Binding`, :class:`Mapping`) and the loader :func:`parse_mapping`. What plays a
mapping is :class:`instrument.controls.router.MappingRouter` (``load_router`` there).

A mapping file (schema tables :data:`MAPPING_FILE_KEYS` and :data:`ENTRY_KEYS`)::

    version: 1
    patches: ../patches                    # folder (program change N = N-th file by name) or list of files
    mappings:
      - {cc: 70, target: latent/0}                              # 0..127 -> the latent's 0..1 knob
      - {cc: 1, target: noise_gain_db, range: [-24, 6], smooth_ms: 40}
      - {cc: 16, relative: twos, target: latent/brightness}     # endless encoder
      - {osc: /1/fader1, target: release_ms, curve: exponential, range: [20, 4000]}
      - {program: true, target: patch/select}

Every source value becomes a position x in 0..1 (CC / 127, 14-bit / 16383, bend centre = 0.5, OSC over its
``input`` range); ``invert`` flips it; the curve maps it onto ``range`` (default: the target's whole range
and its own knob curve): linear ``low + (high - low) x``, power ``low + (high - low) x ** exponent``,
exponential ``low (high / low) ** x``. Continuous targets then glide there over ``smooth_ms`` (default 20)
through :mod:`instrument.controls.ramps`.

A :class:`Mapping` is immutable: the router swaps whole Mappings (reload, learn) with one reference
assignment, so a message never sees half of two mappings.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from instrument.controls.patches import DEFAULT_GLIDE_MS, Patch, load_patches, patch_files
from instrument.engine.tuning import TuningError, read_tuning
from instrument.controls.targets import KeySpec, MappingError, Target, YamlFile, _did_you_mean, target_table

__all__ = ["MAPPING_VERSION", "MAPPING_FILE_KEYS", "ENTRY_KEYS", "SOURCE_KINDS", "RELATIVE_MODES", "CURVES",
           "DEFAULT_SMOOTH_MS", "Source", "Binding", "Mapping", "MappingError", "parse_mapping", "relative_delta"]

MAPPING_VERSION = 1
DEFAULT_SMOOTH_MS = 20.0

SOURCE_KINDS: dict[str, str] = {       # source key -> what its value is
    "cc": "controller number 0..127 (the MSB with lsb:)",
    "aftertouch": "true (channel pressure)",
    "poly_aftertouch": "true, or a note number 0..127 (polyphonic key pressure)",
    "bend": "true (pitch wheel; centre = the middle of the range)",
    "velocity": "true (note-on velocity; the note still plays)",
    "program": "true (any program: its number / 127, or patch N for patch/select), or one program 0..127",
    "osc": "an OSC address, e.g. /1/fader1",
}
RELATIVE_MODES: dict[str, str] = {
    "twos": "two's complement: 1..63 up, 127..65 down (127 = -1)",
    "offset": "binary offset: 65.. up, ..63 down (64 = no change)",
    "sign": "sign-magnitude: 1..63 up, 65..127 down (65 = -1)",
}
CURVES = ("linear", "exponential", "power")

MAPPING_FILE_KEYS: tuple[KeySpec, ...] = (
    KeySpec("version", "1", "file format version (optional; only 1 exists)", "version: 1"),
    KeySpec("name", "text", "shown by the app", "name: my controller"),
    KeySpec("patches", "path or list of paths", "patch folder (sorted by file name: program change N recalls "
            "the N-th) or list of patch files, relative to this file", "patches: ../patches"),
    KeySpec("glide_ms", "number 0..20000", "default glide when a patch is recalled (a patch's own glide_ms "
            "wins; default 300)", "glide_ms: 500"),
    KeySpec("passthrough", "true/false", "unmapped notes, bend, CCs and /sdga/ OSC addresses still reach the "
            "engine (default true)", "passthrough: false"),
    KeySpec("feedback", "{host: text, port: 1..65535}", "send values of moved targets back over OSC "
            "(/sdga/value/<target> and each mapped OSC address)", "feedback: {host: 127.0.0.1, port: 9001}"),
    KeySpec("scale", "path", "a Scala scale file (.scl), relative to this file: the tuning at start and for "
            "every patch without its own scale (default: 12-tone equal temperament); concert pitch is the "
            "tuning_a4_hz parameter", "scale: ../tunings/just.scl"),
    KeySpec("keyboard_map", "path", "a Scala keyboard map (.kbm) for the scale, relative to this file (default: "
            "degree 0 on key 60, key 69 at 440 Hz)", "keyboard_map: ../tunings/white_keys.kbm"),
    KeySpec("mappings", "list of entries", "the bindings, one source each (several may drive one target)",
            "mappings: [{cc: 70, target: latent/0}]"),
)
ENTRY_KEYS: tuple[KeySpec, ...] = tuple(
    [KeySpec(k, v, "source", f"{k}: " + {"cc": "74", "osc": "/1/fader1"}.get(k, "true"))
     for k, v in SOURCE_KINDS.items()]
    + [
        KeySpec("channel", "0..15", "only this MIDI channel (default any); not for osc", "channel: 0"),
        KeySpec("lsb", "0..127", "cc only: the LSB controller of a 14-bit pair (usually cc + 32)", "lsb: 33"),
        KeySpec("relative", " / ".join(RELATIVE_MODES), "cc only: an endless encoder sending increments",
                "relative: twos"),
        KeySpec("step", "number (0, 1]", "relative only: knob travel per encoder tick (default 1/128)",
                "step: 0.01"),
        KeySpec("arg", "integer 0..63", "osc only: which argument (default 0)", "arg: 1"),
        KeySpec("input", "[low, high]", "osc only: the argument's range (default [0, 1])", "input: [0, 127]"),
        KeySpec("target", "target name", "what it moves (required; see the target table)",
                "target: latent/brightness"),
        KeySpec("range", "[low, high]", "output range in the target's unit (default: all of it)",
                "range: [-24, 6]"),
        KeySpec("curve", " / ".join(CURVES), "shape from control to range (default: the target's own "
                "curve); exponential needs both ends of one sign", "curve: exponential"),
        KeySpec("exponent", "number > 0", "power curve's exponent (default 2)", "exponent: 3"),
        KeySpec("invert", "true/false", "turn the control the other way", "invert: true"),
        KeySpec("smooth_ms", "number 0..10000", "glide time for each move of a continuous target (default 20; "
                "switches and triggers never glide)", "smooth_ms: 50"),
        KeySpec("optional", "true/false", "skip this entry (no error) when the model lacks the target, "
                "e.g. latent/7 on a 4-latent model, or it is a latent the model does not offer as a knob",
                "optional: true"),
    ])
_FILE_KEY_NAMES = tuple(k.name for k in MAPPING_FILE_KEYS)
_ENTRY_KEY_NAMES = tuple(k.name for k in ENTRY_KEYS)
_MODIFIER_SOURCES = {"channel": tuple(k for k in SOURCE_KINDS if k != "osc"), "lsb": ("cc",), "relative": ("cc",),
                     "step": ("cc",), "arg": ("osc",), "input": ("osc",)}

_OSC_ADDRESS = re.compile(r"^(/[^\s#*?,\[\]{}/]+)+$")


def relative_delta(mode: str, value: int) -> int:
    """Encoder ticks in one relative CC value."""
    if mode == "twos":
        return value if value < 64 else value - 128
    if mode == "offset":
        return value - 64
    if mode == "sign":
        return value if value < 64 else -(value - 64)
    raise ValueError(f"unknown relative mode {mode!r}; modes: {', '.join(RELATIVE_MODES)}")


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Source:
    """Where a value comes from. ``number``: CC number, poly-aftertouch note or program (None: any)."""

    kind: str
    number: int | None = None
    channel: int | None = None
    lsb: int | None = None
    relative: str | None = None
    step: float = 1.0 / 128.0
    address: str = ""
    arg: int = 0
    input: tuple[float, float] = (0.0, 1.0)

    def describe(self) -> str:
        if self.kind == "osc":
            return f"OSC {self.address}" + (f" arg {self.arg}" if self.arg else "")
        text = {"cc": f"CC {self.number}", "poly_aftertouch": "poly aftertouch", "program": "program change"
                }.get(self.kind, self.kind)
        if self.kind in ("poly_aftertouch", "program") and self.number is not None:
            text += f" {self.number}"
        if self.lsb is not None:
            text += f"/{self.lsb} (14-bit)"
        if self.relative:
            text += f" ({self.relative} relative)"
        return text + (f" on channel {self.channel}" if self.channel is not None else "")

    def same_control(self, other: "Source") -> bool:
        """The same physical control (for MIDI learn replacing an older binding)."""
        return (self.kind == other.kind and self.number == other.number and self.address == other.address
                and self.arg == other.arg and (self.channel is None or other.channel is None
                                               or self.channel == other.channel))


@dataclass(frozen=True)
class Binding:
    """One entry of a mapping file, checked: source -> shape -> target."""

    source: Source
    target: Target
    low: float
    high: float
    curve: str             # "power" (linear = exponent 1) or "exponential"
    exponent: float
    invert: bool
    smooth_ms: float
    line: int

    def shape(self, x: float) -> float:
        """Control position 0..1 -> target value."""
        x = min(max(float(x), 0.0), 1.0)
        if self.invert:
            x = 1.0 - x
        if self.curve == "exponential":
            return self.low * (self.high / self.low) ** x
        return self.low + (self.high - self.low) * x ** self.exponent

    def unshape(self, value: float) -> float:
        """Target value -> control position 0..1 (inverse of :meth:`shape`, clamped)."""
        if self.high == self.low:
            return 0.0
        if self.curve == "exponential":
            ratio = float(value) / self.low
            x = math.log(ratio) / math.log(self.high / self.low) if ratio > 0 else 0.0
        else:
            y = min(max((float(value) - self.low) / (self.high - self.low), 0.0), 1.0)
            x = y ** (1.0 / self.exponent)
        x = min(max(x, 0.0), 1.0)
        return 1.0 - x if self.invert else x


@dataclass(frozen=True)
class Mapping:
    """A loaded mapping file (immutable; the router swaps whole Mappings)."""

    path: Path | None
    text: str
    name: str
    bindings: tuple[Binding, ...]
    targets: dict            # name -> Target: the table the file was checked against
    patches: tuple[Patch, ...]
    patch_source: tuple[Path, ...]   # folder or files the patches came from (the watcher watches them)
    feedback: tuple[str, int] | None
    passthrough: bool
    glide_ms: float
    tuning: object           # None (12-TET) or the read-only key table of scale + keyboard_map
    scale_files: tuple       # () or (the .scl path, the .kbm path or None) the tuning was read from
    midi: dict               # (kind, number or None) -> bindings; kind "lsb" for 14-bit LSBs
    osc: dict                # address -> bindings
    by_key: dict             # Target.key -> Target (the first name of each: latent/<rank> for latents)

    def target_for(self, key: tuple) -> Target | None:
        return self.by_key.get(key)


# ---------------------------------------------------------------------------------------------- loading
def parse_mapping(path: str | Path | None, bundle, *, text: str | None = None,
                  patches: str | Path | Sequence[str | Path] | None = None) -> Mapping:
    """Read and check a mapping file against a model (``bundle.latents``); ``patches`` overrides the file's
    ``patches:``. Raises MappingError (file, line, key, valid choices)."""
    if path is None:
        text = "version: 1\nmappings: []\n" if text is None else text
    doc = YamlFile(path if path is not None else "<mapping>", text)
    base = doc.path.parent if path is not None else Path.cwd()
    root = doc.root
    top = doc.mapping(root, "", _FILE_KEY_NAMES) if root is not None else {}
    if "version" in top:
        doc.number(top["version"][1], "version", MAPPING_VERSION, MAPPING_VERSION, integer=True)
    name = doc.string(top["name"][1], "name") if "name" in top else (doc.path.stem if path else "")
    # patches
    source: list[Path] = []
    if patches is not None:
        source = [Path(p) for p in ([patches] if isinstance(patches, (str, Path)) else patches)]
    elif "patches" in top:
        node = top["patches"][1]
        items = doc.sequence(node, "patches") if isinstance(node, yaml.SequenceNode) else [node]
        for i, item in enumerate(items):
            key = "patches" if item is node else f"patches[{i}]"
            p = Path(os.path.expanduser(doc.string(item, key)))
            p = p if p.is_absolute() else base / p
            try:
                found = p.exists()
            except OSError as exc:                 # e.g. a name too long for the file system
                raise doc.error(item, key, f"{p}: {exc.strerror or exc}") from None
            if not found:
                raise doc.error(item, key, f"{p} does not exist (a folder of patch files or a patch file)")
            source.append(p)
    files: list[Path] = []
    for p in source:
        files += patch_files(p)
    loaded = load_patches(files, bundle) if files else ()
    glide = doc.number(top["glide_ms"][1], "glide_ms", 0.0, 20000.0) if "glide_ms" in top else DEFAULT_GLIDE_MS
    passthrough = doc.boolean(top["passthrough"][1], "passthrough") if "passthrough" in top else True
    feedback = None
    if "feedback" in top:
        fb = doc.mapping(top["feedback"][1], "feedback", ("host", "port"), ("port",))
        host = doc.string(fb["host"][1], "feedback.host") if "host" in fb else "127.0.0.1"
        feedback = (host, doc.number(fb["port"][1], "feedback.port", 1, 65535, integer=True))
    tuning, scale_files = None, ()
    if "keyboard_map" in top and "scale" not in top:
        raise doc.error(top["keyboard_map"][1], "keyboard_map", "a keyboard map needs a scale (add scale: FILE.scl)")
    if "scale" in top:
        def rel(node, key: str) -> Path:
            p = Path(os.path.expanduser(doc.string(node, key)))
            return p if p.is_absolute() else base / p
        node = top["scale"][1]
        scale_files = (rel(node, "scale"),
                       rel(top["keyboard_map"][1], "keyboard_map") if "keyboard_map" in top else None)
        try:
            tuning = read_tuning(*scale_files)
        except TuningError as exc:       # the .scl/.kbm's own file:line, and where the mapping names it
            raise doc.error(node, "scale", str(exc)) from exc
    table = target_table(bundle.latents, [p.name for p in loaded])
    bindings: list[Binding] = []
    if "mappings" in top:
        for i, item in enumerate(doc.sequence(top["mappings"][1], "mappings")):
            binding = _binding(doc, item, f"mappings[{i}]", table, bool(loaded))
            if binding is not None:
                bindings.append(binding)
    midi: dict = {}
    osc: dict = {}
    by_key: dict = {}
    for t in table.values():
        by_key.setdefault(t.key, t)
    for b in bindings:
        s = b.source
        if s.kind == "osc":
            osc.setdefault(s.address, []).append(b)
        else:
            midi.setdefault((s.kind, s.number), []).append(b)
            if s.lsb is not None:
                midi.setdefault(("lsb", s.lsb), []).append(b)
    return Mapping(path=doc.path if path is not None else None, text=doc.text, name=name, bindings=tuple(bindings),
                   targets=table, patches=loaded, patch_source=tuple(source), feedback=feedback,
                   passthrough=passthrough, glide_ms=glide, tuning=tuning, scale_files=scale_files, midi={k: tuple(v) for k, v in midi.items()},
                   osc={k: tuple(v) for k, v in osc.items()}, by_key=by_key)


def _binding(doc: YamlFile, node, key: str, table: dict, have_patches: bool) -> Binding | None:
    entries = doc.mapping(node, key, _ENTRY_KEY_NAMES)
    kinds = [k for k in entries if k in SOURCE_KINDS]
    if not kinds:
        raise doc.error(node, key, "needs a source: one of the keys below", tuple(SOURCE_KINDS))
    if len(kinds) > 1:
        raise doc.error(entries[kinds[1]][0], f"{key}.{kinds[1]}",
                        f"one entry has one source, this one has {' and '.join(kinds)}: write one entry per source")
    kind = kinds[0]
    vnode = entries[kind][1]
    k = f"{key}.{kind}"
    for mod, kinds_ok in _MODIFIER_SOURCES.items():
        if mod in entries and kind not in kinds_ok:
            raise doc.error(entries[mod][0], f"{key}.{mod}", f"does not apply to a {kind} source; it applies to: "
                            f"{', '.join(kinds_ok)}")
    src: dict = {"kind": kind}
    if kind == "cc":
        src["number"] = doc.number(vnode, k, 0, 127, integer=True)
    elif kind in ("aftertouch", "bend", "velocity"):
        if doc.boolean(vnode, k) is not True:
            raise doc.error(vnode, k, "must be true (delete the entry to drop it)", ("true",))
    elif kind in ("poly_aftertouch", "program"):
        value = doc.value(vnode)
        if value is not True:
            if isinstance(value, bool):
                raise doc.error(vnode, k, "must be true or a number 0..127", ("true",))
            src["number"] = doc.number(vnode, k, 0, 127, integer=True)
    elif kind == "osc":
        address = doc.string(vnode, k)
        if not _OSC_ADDRESS.match(address):
            raise doc.error(vnode, k, f"'{address}' is not an OSC address: it starts with '/', and parts have no "
                            "spaces or # * ? , [ ] { }")
        src["address"] = address
        if "arg" in entries:
            src["arg"] = doc.number(entries["arg"][1], f"{key}.arg", 0, 63, integer=True)
        if "input" in entries:
            lo, hi = doc.pair(entries["input"][1], f"{key}.input")
            if lo == hi:
                raise doc.error(entries["input"][1], f"{key}.input", "low and high must differ")
            src["input"] = (lo, hi)
    if "channel" in entries:
        src["channel"] = doc.number(entries["channel"][1], f"{key}.channel", 0, 15, integer=True)
    if "lsb" in entries:
        src["lsb"] = doc.number(entries["lsb"][1], f"{key}.lsb", 0, 127, integer=True)
        if src["lsb"] == src["number"]:
            raise doc.error(entries["lsb"][1], f"{key}.lsb", "must differ from the cc number (usually cc + 32)")
    if "relative" in entries:
        if "lsb" in entries:
            raise doc.error(entries["relative"][0], f"{key}.relative", "a relative encoder has no 14-bit pair")
        src["relative"] = doc.string(entries["relative"][1], f"{key}.relative", tuple(RELATIVE_MODES))
    if "step" in entries:
        if "relative" not in entries:
            raise doc.error(entries["step"][0], f"{key}.step", "only applies with relative:", tuple(RELATIVE_MODES))
        src["step"] = doc.number(entries["step"][1], f"{key}.step", 0.0, 1.0)
        if src["step"] <= 0:
            raise doc.error(entries["step"][1], f"{key}.step", "must be more than 0")
    source = Source(**src)
    # target
    if "target" not in entries:
        raise doc.error(node, f"{key}.target", "missing: what does this control move?", tuple(table))
    tnode = entries["target"][1]
    optional = doc.boolean(entries["optional"][1], f"{key}.optional") if "optional" in entries else False
    tname = doc.string(tnode, f"{key}.target")
    if tname not in table:
        if optional:
            return None
        if tname.startswith("patch/") and not have_patches:
            raise doc.error(tnode, f"{key}.target", f"'{tname}' needs patches: add a 'patches:' folder or list "
                            "to this file")
        raise doc.error(tnode, f"{key}.target", f"unknown target '{tname}'{_did_you_mean(tname, list(table))}",
                        tuple(table))
    target: Target = table[tname]
    if optional and target.kind == "latent" and not target.active:
        return None                      # a direction the model does not offer as a knob
    low, high = target.low, target.high
    if "range" in entries:
        rnode = entries["range"][1]
        low, high = doc.pair(rnode, f"{key}.range")
        lo_t, hi_t = min(target.low, target.high), max(target.low, target.high)
        for v in (low, high):
            if not lo_t <= v <= hi_t:
                raise doc.error(rnode, f"{key}.range", f"{v:g} is outside {tname}'s range {lo_t:g}..{hi_t:g}"
                                f"{' ' + target.unit if target.unit else ''}")
    curve, exponent = "power", target.curve
    if "curve" in entries:
        curve = doc.string(entries["curve"][1], f"{key}.curve", CURVES)
        exponent = 1.0 if curve == "linear" else 2.0
        if curve == "linear":
            curve = "power"
        elif curve == "exponential" and not (low * high > 0):
            raise doc.error(entries["curve"][1], f"{key}.curve", f"exponential needs a range with both ends "
                            f"of one sign and not 0 (e.g. [20, 4000]); the range is [{low:g}, {high:g}]",
                            ("linear", "power"))
    if "exponent" in entries:
        if "curve" in entries and doc.value(entries["curve"][1]) != "power":
            raise doc.error(entries["exponent"][0], f"{key}.exponent", "only applies to curve: power")
        curve, exponent = "power", doc.number(entries["exponent"][1], f"{key}.exponent", 0.0, 20.0)
        if exponent <= 0:
            raise doc.error(entries["exponent"][1], f"{key}.exponent", "must be more than 0")
    invert = doc.boolean(entries["invert"][1], f"{key}.invert") if "invert" in entries else False
    smooth = DEFAULT_SMOOTH_MS if target.smoothable else 0.0
    if "smooth_ms" in entries:
        smooth = doc.number(entries["smooth_ms"][1], f"{key}.smooth_ms", 0.0, 10000.0)
    return Binding(source, target, float(low), float(high), curve, float(exponent), invert, float(smooth),
                   node.start_mark.line + 1)
