"""Controller mappings: YAML files that bind MIDI / OSC sources to targets, hot reload, MIDI learn, patch
recall, OSC feedback. :func:`load_router` gives the play app a :class:`MappingRouter` (the Router seam of
``instrument.controls.routing``: ``midi(message, offset) -> events``, ``osc(address, args) -> events``).

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
through :class:`~instrument.controls.targets.Ramps`: one event per control frame, emitted by :meth:`MappingRouter.tick`
which the audio side calls once per block (until :meth:`MappingRouter.prepare` is called nothing ramps).

Threads: ``midi``/``osc`` run on the MIDI and OSC threads, ``tick`` on the audio thread, the watcher on its
own. The active :class:`Mapping` is immutable and replaced by one reference assignment (reload, learn), and
each call reads it once, so a call never sees half of two mappings.
"""
from __future__ import annotations

import math
import os
import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import yaml

from instrument.engine.events import PARAMS, Event, LatentSet, ParamSet, from_mido, with_offset
from instrument.io.osc import OscError, OscSpec, osc_event
from instrument.controls.patches import DEFAULT_GLIDE_MS, Patch, _atomic_write, load_patches, patch_files, save_patch
from instrument.controls.targets import KeySpec, MappingError, Ramps, Target, YamlFile, _did_you_mean, target_table

__all__ = ["MAPPING_VERSION", "MAPPING_FILE_KEYS", "ENTRY_KEYS", "SOURCE_KINDS", "RELATIVE_MODES", "CURVES",
           "OSC_ADDITIONS", "Source", "Binding", "Mapping", "MappingError", "MappingRouter", "parse_mapping",
           "load_router", "relative_delta"]

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
                "e.g. latent/7 on a 4-latent model", "optional: true"),
    ])
_FILE_KEY_NAMES = tuple(k.name for k in MAPPING_FILE_KEYS)
_ENTRY_KEY_NAMES = tuple(k.name for k in ENTRY_KEYS)
_MODIFIER_SOURCES = {"channel": tuple(k for k in SOURCE_KINDS if k != "osc"), "lsb": ("cc",), "relative": ("cc",),
                     "step": ("cc",), "arg": ("osc",), "input": ("osc",)}

OSC_ADDITIONS: tuple[OscSpec, ...] = (
    OscSpec("/sdga/target/<target>", ("knob",), "any target by name (it may contain '/': "
            "/sdga/target/latent/brightness) as a 0..1 knob; triggers fire at >= 0.5"),
    OscSpec("/sdga/learn", ("target",), "MIDI learn: the next CC / aftertouch / bend moved is bound to target "
            "and written to the mapping file"),
    OscSpec("/sdga/learn/cancel", (), "stop waiting for a control to learn"),
    OscSpec("/sdga/patch", ("name_or_index",), "recall a patch (glides)"),
    OscSpec("/sdga/patch/next", (), "recall the next patch"),
    OscSpec("/sdga/patch/prev", (), "recall the previous patch"),
    OscSpec("/sdga/save", ("name",), "save the current sound as <patches folder>/<name>.yaml"),
)
_PATCH_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OSC_ADDRESS = re.compile(r"^(/[^\s#*?,\[\]{}/]+)+$")
_LEARNABLE = ("control_change", "aftertouch", "polytouch", "pitchwheel")


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
    span: tuple[int, int]  # the entry's text in the file (MIDI learn rewrites it)

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
    midi: dict               # (kind, number or None) -> bindings; kind "lsb" for 14-bit LSBs
    osc: dict                # address -> bindings
    by_key: dict             # Target.key -> Target (the first name of each: latent/<rank> for latents)

    def target_for(self, key: tuple) -> Target | None:
        return self.by_key.get(key)


# ---------------------------------------------------------------------------------------------- loading
def _node_end(node) -> int:
    """Index just after a node's own text (block collections end at their last value, not the next token)."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False) or not node.value:
        return node.end_mark.index
    last = node.value[-1]
    return _node_end(last[1] if isinstance(node, yaml.MappingNode) else last)


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
            if not p.exists():
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
                   passthrough=passthrough, glide_ms=glide, midi={k: tuple(v) for k, v in midi.items()},
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
                   node.start_mark.line + 1, (node.start_mark.index, _node_end(node)))


# ---------------------------------------------------------------------------------------------- router
class MappingRouter:
    """Turns MIDI / OSC messages into engine events through a :class:`Mapping` (see the module docstring).

    For the play app: ``prepare(sample_rate, hop)`` after ``Engine.prepare``; in the audio callback
    ``engine.process(router.block_events(queue.drain(), n), out)``; ``watch()`` for hot reload; ``recall``
    for patches; ``learn`` for MIDI learn; ``messages`` / ``on_message`` for what to print; ``close()``.
    """

    def __init__(self, mapping: Mapping, bundle, *, effects=None, feedback: tuple[str, int] | None = None,
                 on_message: Callable[[str], None] | None = None, on_patch: Callable[[Patch], None] | None = None,
                 patches_override=None, model_path: str | Path | None = None):
        self.bundle = bundle
        self._mapping = mapping
        self.ramps = Ramps()
        self.values: dict[tuple, float] = {}       # the value each target was last sent towards
        self.effects = effects                     # an EffectsChain, swapped on patch recall
        self.current_effects: tuple = ()
        self.current_patch = -1
        self.model_path = Path(model_path) if model_path else None
        self.on_message = on_message
        self.on_patch = on_patch
        self.messages: deque[str] = deque(maxlen=100)
        self.last_error = ""
        self.reloads = 0
        self.refused = 0
        self.feedback_errors = 0
        self._feedback_override = feedback
        self._feedback_client = None
        self._feedback_dest = None
        self._patches_override = patches_override
        self._learning: str | None = None
        self._hires: dict[tuple[int, int], list[int]] = {}
        self._last_x: dict[Binding, float] = {}
        self._lock = threading.RLock()             # serialises reload / learn / save (file work), not messages
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stat = self._signature()

    # ------------------------------------------------------------------------------------------ state
    @property
    def mapping(self) -> Mapping:
        return self._mapping

    @property
    def learning(self) -> str | None:
        return self._learning

    def prepare(self, sample_rate: int, hop: int) -> None:
        """Enable smoothing and glides at the engine's rate and control hop (``engine.hop_size``)."""
        self.ramps.prepare(sample_rate, hop)

    def tick(self, n_samples: int) -> list[Event]:
        """Ramp events for the next block of ``n_samples`` (audio thread, before ``Engine.process``)."""
        return self.ramps.tick(n_samples)

    def block_events(self, queued: Iterable[Event], n_samples: int) -> Iterable[Event]:
        """``queued`` (e.g. ``queue.drain()``) merged with this block's ramp events, in offset order."""
        ticks = self.ramps.tick(n_samples)
        if not ticks:
            return queued
        return sorted([*queued, *ticks], key=lambda e: e.offset)

    def value(self, target: str) -> float:
        """The value a target was last sent towards (its default if never moved)."""
        t = self._mapping.targets[target]
        return self.values.get(t.key, t.default)

    def _log(self, text: str) -> None:
        self.messages.append(text)
        if self.on_message is not None:
            try:
                self.on_message(text)
            except Exception:
                pass

    # ------------------------------------------------------------------------------------------ MIDI
    def midi(self, message, offset: int = 0) -> list[Event]:
        """Events for one mido message ([] when it was consumed by nothing and passthrough is off)."""
        kind = message.type
        if self._learning is not None and kind in _LEARNABLE:
            self._learn_from(message)
        m = self._mapping
        out: list[Event] = []
        channel = getattr(message, "channel", 0)
        consumed = False
        if kind == "control_change":
            cc, value = message.control, message.value
            for b in m.midi.get(("cc", cc), ()):
                if b.source.channel is not None and b.source.channel != channel:
                    continue
                consumed = True
                s = b.source
                if s.relative:
                    x = b.unshape(self.values.get(b.target.key, b.target.default))
                    self._drive(b, x + relative_delta(s.relative, value) * s.step, channel, offset, out)
                elif s.lsb is not None:
                    pair = self._hires.setdefault((channel, cc), [0, 0])
                    pair[0], pair[1] = value, 0
                    self._drive(b, (value * 128) / 16383.0, channel, offset, out)
                else:
                    self._drive(b, value / 127.0, channel, offset, out)
            for b in m.midi.get(("lsb", cc), ()):
                if b.source.channel is not None and b.source.channel != channel:
                    continue
                consumed = True
                pair = self._hires.setdefault((channel, b.source.number), [0, 0])
                pair[1] = value
                self._drive(b, (pair[0] * 128 + pair[1]) / 16383.0, channel, offset, out)
        elif kind == "aftertouch":
            consumed = self._each(m.midi.get(("aftertouch", None), ()), channel, message.value / 127.0, offset, out)
        elif kind == "polytouch":
            bindings = m.midi.get(("poly_aftertouch", None), ()) + m.midi.get(("poly_aftertouch", message.note), ())
            consumed = self._each(bindings, channel, message.value / 127.0, offset, out)
        elif kind == "pitchwheel":
            consumed = self._each(m.midi.get(("bend", None), ()), channel, (message.pitch + 8192) / 16383.0,
                                  offset, out)
        elif kind == "note_on" and message.velocity > 0:
            self._each(m.midi.get(("velocity", None), ()), channel, message.velocity / 127.0, offset, out)
        elif kind == "program_change":
            bindings = m.midi.get(("program", None), ()) + m.midi.get(("program", message.program), ())
            for b in bindings:
                if b.source.channel is not None and b.source.channel != channel:
                    continue
                consumed = True
                if b.target.name == "patch/select" and b.source.number is None:
                    out += self._recall_index(message.program, offset)
                else:
                    self._drive(b, 1.0 if b.source.number is not None else message.program / 127.0, channel,
                                offset, out)
        if not consumed and m.passthrough:
            event = from_mido(message, offset)
            if event is not None:
                out.append(event)
        return out

    def _each(self, bindings, channel: int, x: float, offset: int, out: list) -> bool:
        used = False
        for b in bindings:
            if b.source.channel is None or b.source.channel == channel:
                used = True
                self._drive(b, x, channel, offset, out)
        return used

    def _drive(self, b: Binding, x: float, channel: int, offset: int, out: list, address: str = "") -> None:
        x = min(max(x, 0.0), 1.0)
        t = b.target
        if t.trigger:
            last = self._last_x.get(b, 0.0)
            self._last_x[b] = x
            momentary = b.source.kind in ("program", "velocity")
            if x >= 0.5 and (momentary or last < 0.5):
                out += self._fire(t, channel, offset)
            return
        if t.name == "patch/select":
            out += self._recall_index(int(round(b.shape(x))), offset)
            return
        self._set(t, b.shape(x), b.smooth_ms, channel, offset, out, address)

    def _set(self, t: Target, value: float, ms: float, channel: int, offset: int, out: list, address: str = "") -> None:
        value = t.clamp(value)
        self.values[t.key] = value
        event = self.ramps.move(t, value, ms, channel)
        if event is not None:
            out.append(with_offset(event, offset) if offset else event)
        self._send_feedback(t, value, address)

    def _fire(self, t: Target, channel: int, offset: int) -> list[Event]:
        n = len(self._mapping.patches)
        if t.name == "patch/next":
            return self._recall_index((self.current_patch + 1) % n if n else 0, offset)
        if t.name == "patch/prev":
            return self._recall_index((self.current_patch - 1) % n if n else 0, offset)
        if t.kind == "patch":
            return self._recall_index(t.index, offset)
        event = t.event(1.0, channel, offset)
        return [event] if event is not None else []

    # ------------------------------------------------------------------------------------------ OSC
    def osc(self, address: str, args: Sequence) -> list[Event]:
        """Events for one OSC message; raises OscError (a ValueError) for a message that does not fit."""
        m = self._mapping
        bindings = m.osc.get(address)
        out: list[Event] = []
        if bindings:
            for b in bindings:
                s = b.source
                if s.arg >= len(args):
                    raise OscError(f"{address}: the mapping on line {b.line} reads argument {s.arg}; the message "
                                   f"has {len(args)}")
                value = args[s.arg]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise OscError(f"{address}: argument {s.arg} must be a number, got {value!r}")
                lo, hi = s.input
                self._drive(b, (float(value) - lo) / (hi - lo), 0, 0, out, address)
            return out
        if address.startswith("/sdga/target/"):
            return self._osc_target(address[len("/sdga/target/"):], args)
        if address == "/sdga/learn":
            self.learn(_one(address, args, str))
            return []
        if address == "/sdga/learn/cancel":
            self.cancel_learn()
            return []
        if address == "/sdga/patch":
            which = _one(address, args, (str, int, float))
            if isinstance(which, str) and not which.isdigit():
                return self.recall(which)
            return self._recall_index(int(which), 0, strict=True)
        if address in ("/sdga/patch/next", "/sdga/patch/prev"):
            if not m.patches:
                raise OscError(f"{address}: no patches (add 'patches:' to the mapping file)")
            return self._fire(m.targets[address[len("/sdga/"):]], 0, 0)
        if address == "/sdga/save":
            self.save_patch_named(_one(address, args, str))
            return []
        if m.passthrough and address.startswith("/sdga/"):
            event = osc_event(address, args, self.bundle.latents)
            self.sync([event])
            return [event]
        raise OscError(f"unmapped OSC address {address!r} (not in the mapping"
                       f"{'' if m.passthrough else ', and passthrough is off'})")

    def _osc_target(self, name: str, args: Sequence) -> list[Event]:
        m = self._mapping
        t = m.targets.get(name)
        if t is None:
            raise OscError(f"no target {name!r}{_did_you_mean(name, list(m.targets))}; targets: "
                           f"{', '.join(m.targets)}")
        knob = _one(f"/sdga/target/{name}", args, (int, float))
        out: list[Event] = []
        if t.trigger:
            return self._fire(t, 0, 0) if knob >= 0.5 else []
        if t.name == "patch/select":
            return self._recall_index(int(round(t.from_knob(knob))), 0)
        self._set(t, t.from_knob(knob), DEFAULT_SMOOTH_MS if t.smoothable else 0.0, 0, 0, out,
                  f"/sdga/target/{name}")
        return out

    def sync(self, events: Iterable[Event]) -> None:
        """Note latent and parameter values sent around the router (passthrough messages, start-up settings
        such as --latent / --param), so encoders, feedback and saved patches start from them."""
        for event in events:
            self._note(event)

    def describe(self) -> str:
        """One line for the app's start-up log."""
        m = self._mapping
        return (f"mapping {m.path or '(none)'}{f' ({m.name})' if m.name else ''}: {len(m.bindings)} bindings, "
                f"{len(m.patches)} patches, passthrough {'on' if m.passthrough else 'off'}"
                f"{', feedback to %s:%d' % (self._feedback_override or m.feedback) if (self._feedback_override or m.feedback) else ''}")

    def _note(self, event: Event) -> None:
        m = self._mapping
        if isinstance(event, LatentSet):
            t = m.target_for(("latent", event.index))
            info = next((l for l in self.bundle.latents if l.index == event.index), None)
            if t is not None and info is not None:
                value = event.value if event.knob else info.z_to_knob(event.value)
                self.ramps.stop(t, value)
                self.values[t.key] = t.clamp(value)
        elif isinstance(event, ParamSet):
            t = m.target_for(("param", event.param))
            if t is not None:
                self.ramps.stop(t, event.value)
                self.values[t.key] = t.clamp(event.value)

    # ------------------------------------------------------------------------------------------ patches
    def recall(self, patch: Patch | str | int, glide_ms: float | None = None, offset: int = 0) -> list[Event]:
        """Recall a patch (object, name or index in the mapping's patch list): continuous values glide over
        ``glide_ms`` (default: the patch's, else the mapping's) through :meth:`tick`; discrete ones (voice
        mode) change now and come back as events; the effects chain crossfades. Returns the events to send."""
        m = self._mapping
        index = -1
        if isinstance(patch, bool):
            raise TypeError("patch must be a Patch, a name or an index")
        if isinstance(patch, int):
            if not 0 <= patch < len(m.patches):
                raise ValueError(f"no patch number {patch}; {len(m.patches)} patches: "
                                 f"{', '.join(p.name for p in m.patches) or 'none'}")
            index, patch = patch, m.patches[patch]
        elif isinstance(patch, str):
            names = [p.name for p in m.patches]
            if patch not in names:
                raise ValueError(f"no patch {patch!r}{_did_you_mean(patch, names)}; patches: "
                                 f"{', '.join(names) or 'none'}")
            index = names.index(patch)
            patch = m.patches[index]
        else:
            index = next((i for i, p in enumerate(m.patches) if p.path == patch.path and p.name == patch.name), -1)
        if not patch.resolved:
            patch = patch.resolve(self.bundle.latents)
        glide = float(glide_ms if glide_ms is not None else patch.glide_ms if patch.glide_ms is not None
                      else m.glide_ms)
        out: list[Event] = []
        for z, knob in patch.latents:
            t = m.target_for(("latent", z))
            if t is not None:
                self._set(t, knob, glide, 0, offset, out)
        for param, value in patch.params:
            t = m.target_for(("param", param))
            if t is None:
                continue
            if not t.smoothable and self.values.get(t.key, t.default) == t.clamp(value):
                continue                          # e.g. the same voice mode: do not release held notes
            self._set(t, value, glide, 0, offset, out)
        if self.effects is not None:
            try:
                self.effects.set_effects(patch.effects, fade_ms=max(glide, 20.0))
            except Exception as exc:             # pedalboard missing: play on without effects
                self._log(f"effects of patch {patch.name!r} not loaded: {exc}")
        self.current_effects = patch.effects
        self.current_patch = index
        self._log(f"patch {patch.name}" + (f" ({index})" if index >= 0 else "") + f", glide {glide:g} ms")
        if self.on_patch is not None:
            try:
                self.on_patch(patch)
            except Exception:
                pass
        return out

    def _recall_index(self, index: int, offset: int, strict: bool = False) -> list[Event]:
        n = len(self._mapping.patches)
        if not 0 <= index < n:
            if strict:
                raise OscError(f"no patch number {index}; {n} patches")
            self._log(f"no patch number {index} ({n} patches)")
            return []
        return self.recall(index, offset=offset)

    def save_current_patch(self, path: str | Path, name: str | None = None, description: str = "") -> Path:
        """Save the sound the router has set (latents by name, parameters, effects) as a patch file."""
        latents = {}
        for info in self.bundle.latents:
            t = self._mapping.target_for(("latent", info.index))
            latents[info.name] = self.values.get(t.key, t.default) if t is not None else 0.5
        params = {}
        for i, spec in enumerate(PARAMS):
            if spec.name != "midi_channel":
                params[spec.name] = self.values.get(("param", i), spec.default)
        return save_patch(path, name=name, model=self.model_path, latents=latents, params=params,
                          effects=self.current_effects, description=description)

    def save_patch_named(self, name: str) -> Path:
        """``/sdga/save NAME``: write NAME.yaml into the mapping's patch folder (the watcher then reloads)."""
        if not _PATCH_NAME.match(name):
            raise OscError(f"patch name {name!r}: use 1..64 letters, digits, '-' or '_'")
        folders = [p for p in self._mapping.patch_source if p.is_dir()]
        if not folders:
            raise OscError("no patch folder: add 'patches: <folder>' to the mapping file")
        path = self.save_current_patch(folders[0] / f"{name}.yaml", name)
        self._log(f"saved patch {path}")
        return path

    # ------------------------------------------------------------------------------------------ learn
    def learn(self, target: str) -> None:
        """Arm MIDI learn: the next CC, aftertouch or pitch bend moved is bound to ``target``."""
        m = self._mapping
        if target not in m.targets:
            raise MappingError(f"unknown target '{target}'{_did_you_mean(target, list(m.targets))}", m.path, None,
                               "target", tuple(m.targets))
        self._learning = target
        self._log(f"learn {target}: move a knob, fader, pressure or the bend wheel")

    def cancel_learn(self) -> None:
        if self._learning is not None:
            self._log(f"learn {self._learning}: cancelled")
        self._learning = None

    def _learn_from(self, message) -> None:
        target, self._learning = self._learning, None
        if target is None:
            return
        entry: dict = {}
        if message.type == "control_change":
            entry["cc"] = message.control
        elif message.type == "aftertouch":
            entry["aftertouch"] = True
        elif message.type == "polytouch":
            entry["poly_aftertouch"] = True
        else:
            entry["bend"] = True
        entry["channel"] = message.channel
        entry["target"] = target
        try:
            mapping = self.add_entry(entry)
        except (MappingError, OSError) as exc:
            self.last_error = str(exc)
            self._log(f"learn {target} failed: {exc}")
            return
        where = f", saved in {mapping.path}" if mapping.path else ""
        source = Source(next(iter(entry)), entry.get("cc"), entry["channel"])
        self._log(f"learned {source.describe()} -> {target}{where}")

    def add_entry(self, entry: dict) -> Mapping:
        """Add one mapping entry (replacing entries for the same control), write the file (keeping its
        comments) and switch to the result loaded back through the loader."""
        with self._lock:
            m = self._mapping
            text = _splice_entry(m, entry)
            new = parse_mapping(m.path, self.bundle, text=text, patches=self._patches_override)
            if m.path is not None:
                _atomic_write(m.path, text)
                self._stat = self._signature(new)
            self._mapping = new
            return new

    # ------------------------------------------------------------------------------------------ reload
    def _signature(self, mapping: Mapping | None = None) -> tuple:
        m = mapping or self._mapping
        paths = ([m.path] if m.path else []) + [p.path for p in m.patches if p.path]
        sig = []
        for p in paths:
            try:
                st = os.stat(p)
                sig.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((str(p), None, None))
        for folder in m.patch_source:
            if folder.is_dir():
                sig.append((str(folder), tuple(sorted(f.name for f in folder.glob("*.yaml")))))
        return tuple(sig)

    def reload(self) -> bool:
        """Load the mapping file again; on any error keep the current mapping (message in ``last_error``)."""
        with self._lock:
            m = self._mapping
            if m.path is None:
                return False
            try:
                new = parse_mapping(m.path, self.bundle, patches=self._patches_override)
            except (MappingError, OSError) as exc:
                self.refused += 1
                self.last_error = str(exc)
                self._log(f"mapping not reloaded, the previous one stays active: {exc}")
                return False
            self._mapping = new                    # the swap: one reference assignment
            self.reloads += 1
            self.last_error = ""
            self._log(f"mapping reloaded: {m.path} ({len(new.bindings)} bindings, {len(new.patches)} patches)")
            return True

    def watch(self, interval_s: float = 0.25) -> "MappingRouter":
        """Poll the mapping file (and its patches) every ``interval_s`` in a thread; reload on change."""
        if self._thread is None and self._mapping.path is not None:
            self._stop.clear()
            self._stat = self._signature()
            self._thread = threading.Thread(target=self._watch, args=(float(interval_s),), name="sdga-mapping-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                sig = self._signature()
                if sig != self._stat:
                    self._stat = sig
                    self.reload()
                    self._stat = self._signature()
            except Exception as exc:               # never let the watcher die silently
                self._log(f"mapping watcher: {exc!r}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        client, self._feedback_client = self._feedback_client, None
        if client is not None:
            try:
                client._sock.close()
            except Exception:
                pass

    def __enter__(self) -> "MappingRouter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ feedback
    def _send_feedback(self, t: Target, value: float, exclude: str = "") -> None:
        m = self._mapping
        dest = self._feedback_override or m.feedback
        if dest is None:
            return
        try:
            if self._feedback_client is None or self._feedback_dest != dest:
                from pythonosc.udp_client import SimpleUDPClient
                self._feedback_client, self._feedback_dest = SimpleUDPClient(dest[0], int(dest[1])), dest
            client = self._feedback_client
            client.send_message(f"/sdga/value/{t.name}", float(value))
            for address, bindings in m.osc.items():
                if address == exclude or not any(b.target.key == t.key for b in bindings):
                    continue
                args = [0.0] * (max(b.source.arg for b in bindings) + 1)
                for b in bindings:
                    lo, hi = b.source.input
                    x = b.unshape(self.values.get(b.target.key, b.target.default))
                    args[b.source.arg] = lo + (hi - lo) * x
                client.send_message(address, args)
        except OSError:
            self.feedback_errors += 1


def _one(address: str, args: Sequence, types) -> object:
    if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], types):
        raise OscError(f"{address} takes one argument, got {list(args)!r}")
    return args[0]


def _splice_entry(m: Mapping, entry: dict) -> str:
    """The mapping file's text with ``entry`` added (or replacing the entries for the same control), leaving
    every other line, comment included, as it was."""
    text = m.text
    entry_text = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=1000).strip()
    kind = next(k for k in entry if k in SOURCE_KINDS)
    new_source = Source(kind, entry[kind] if kind == "cc" else None, entry.get("channel"))
    same = [b for b in m.bindings if b.source.same_control(new_source)]
    if same:
        edits = [(same[0].span[0], same[0].span[1], entry_text)]
        for b in same[1:]:
            start = text.rfind("\n", 0, b.span[0]) + 1
            end = text.find("\n", b.span[1])
            edits.append((start, len(text) if end < 0 else end + 1, ""))
        for start, end, new in sorted(edits, reverse=True):
            text = text[:start] + new + text[end:]
        return text
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seq = None
    if isinstance(root, yaml.MappingNode):
        seq = next((v for k, v in root.value if k.value == "mappings"), None)
    if seq is None:
        return (text if text.endswith("\n") or not text else text + "\n") + f"mappings:\n  - {entry_text}\n"
    if isinstance(seq, yaml.SequenceNode) and not seq.flow_style and seq.value:
        first, last = seq.value[0], seq.value[-1]
        line_start = text.rfind("\n", 0, first.start_mark.index) + 1
        prefix = text[line_start:first.start_mark.index]
        indent = prefix[:prefix.index("-")] if "-" in prefix else "  "
        end = _node_end(last)
        newline = text.find("\n", end)
        if newline < 0:
            return text + f"\n{indent}- {entry_text}\n"
        return text[:newline + 1] + f"{indent}- {entry_text}\n" + text[newline + 1:]
    items = [text[i.start_mark.index:_node_end(i)] for i in seq.value] if isinstance(seq, yaml.SequenceNode) else []
    block = "".join(f"\n  - {t}" for t in items + [entry_text])
    start, end = seq.start_mark.index, _node_end(seq)
    if isinstance(seq, yaml.ScalarNode):          # "mappings:" with nothing after it
        start = end = text.find("\n", seq.start_mark.index) if text.find("\n", seq.start_mark.index) >= 0 else len(text)
    return text[:start].rstrip(" ") + block + text[end:]


def load_router(path: str | Path | None, bundle, *, patches=None, effects=None,
                feedback: tuple[str, int] | None = None, on_message: Callable[[str], None] | None = None,
                on_patch: Callable[[Patch], None] | None = None, model_path: str | Path | None = None
                ) -> MappingRouter:
    """The play app's entry point: a router for the mapping file at ``path`` (None: no bindings, everything
    passes through) checked against ``bundle``. Raises MappingError (a ValueError) naming file, line, key
    and the valid choices. ``patches`` overrides the file's patch list; ``effects`` is the EffectsChain that
    patch recall swaps; ``feedback`` (host, port) overrides the file's; ``model_path`` goes into saved patches."""
    mapping = parse_mapping(path, bundle, patches=patches)
    return MappingRouter(mapping, bundle, effects=effects, feedback=feedback, on_message=on_message,
                         on_patch=on_patch, patches_override=patches, model_path=model_path)
