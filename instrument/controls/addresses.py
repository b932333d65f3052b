"""The OSC address space: one table (:data:`OSC_ADDRESSES`) that the router decodes with, the OSC server serves
and the README's table is generated from (:func:`osc_table_markdown`).

Each row has the address (``<name>`` is one path part; a row with ``slashes`` takes the rest of the address,
'/' included), its arguments (``[arg]`` optional), what it does, and a decoder ``(name, args, latents) ->``
an engine :class:`~instrument.engine.events.Event` (``engine`` rows: they reach the engine as they are) or a
:data:`Command` the router carries out (patch recall, learn, save, targets by name). Ints and floats are
accepted alike (Pd sends floats). Decoding never touches a socket: the transport is
:mod:`instrument.io.osc`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

from instrument.engine.events import (CC_SUSTAIN, ControlChange, Event, LatentSet, NoteOff, NoteOn, Panic, PitchBend,
                                      param_event)

__all__ = ["OscError", "OscAddress", "OSC_ADDRESSES", "OSC_SPECS", "SetTarget", "Learn", "CancelLearn",
           "RecallPatch", "StepPatch", "SavePatch", "SelectSong", "StepSong", "Command", "match_address", "decode", "osc_event",
           "osc_table_markdown", "README_BEGIN", "README_END"]

PREFIX = "/sdga/"
RAW_Z_MAX = 10.0        # /sdga/z values are clamped to +-10 (prior standard deviations: the decoder never saw more)
README_BEGIN = "<!-- osc-table:begin -->"
README_END = "<!-- osc-table:end -->"


class OscError(ValueError):
    """A message that is not in the address space or has bad arguments."""


# ---------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class SetTarget:
    """Move a target (any name of the target table) to a 0..1 knob position; triggers fire at >= 0.5."""
    target: str
    knob: float


@dataclass(frozen=True)
class Learn:
    target: str


@dataclass(frozen=True)
class CancelLearn:
    pass


@dataclass(frozen=True)
class RecallPatch:
    which: str | int      # a patch name, or its index in the mapping's patch list


@dataclass(frozen=True)
class StepPatch:
    step: int             # +1 next, -1 previous (wraps)


@dataclass(frozen=True)
class SavePatch:
    name: str


@dataclass(frozen=True)
class SelectSong:
    which: str | int      # a set list song's name, or its number (0 = the first)


@dataclass(frozen=True)
class StepSong:
    step: int             # +1 next, -1 previous (stops at the ends of the set)


Command = Union[SetTarget, Learn, CancelLearn, RecallPatch, StepPatch, SavePatch, SelectSong, StepSong]


# ---------------------------------------------------------------------------------------------- argument readers
def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OscError(f"{what} must be a number, got {value!r}")
    return float(value)


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise OscError(f"{what} must be text, got {value!r}")
    return value


def _channel(args: Sequence, index: int) -> int:
    if len(args) <= index:
        return 0
    channel = int(_number(args[index], "channel"))
    if not 0 <= channel <= 15:
        raise OscError(f"channel must be 0..15, got {channel}")
    return channel


# ---------------------------------------------------------------------------------------------- decoders
def _note_on(name, args, latents) -> Event:
    note, velocity = _number(args[0], "note"), _number(args[1], "velocity")
    if not 0 <= note <= 127 or not 0 <= velocity <= 127:
        raise OscError("note and velocity must be 0..127")
    channel = _channel(args, 2)
    return NoteOn(note, velocity, channel) if velocity > 0 else NoteOff(note, 0, channel)


def _note_off(name, args, latents) -> Event:
    note = _number(args[0], "note")
    if not 0 <= note <= 127:
        raise OscError("note must be 0..127")
    return NoteOff(note, 0, _channel(args, 1))


def _cc(name, args, latents) -> Event:
    control, value = int(_number(args[0], "control")), int(_number(args[1], "value"))
    if not 0 <= control <= 127 or not 0 <= value <= 127:
        raise OscError("control and value must be 0..127")
    return ControlChange(control, value, _channel(args, 2))


def _latent(name, args, latents) -> Event:
    knob = _number(args[0], "knob")
    for rank, info in enumerate(latents):
        if info.name == name or name == str(rank):
            return LatentSet(info.index, min(max(knob, 0.0), 1.0), knob=True)
    raise OscError(f"no latent {name!r}; latents: {', '.join(l.name for l in latents)}")


def _z(name, args, latents) -> Event:
    if not name.isdecimal() or (latents and int(name) >= len(latents)):
        raise OscError(f"bad latent index {name!r}")
    return LatentSet(int(name), max(-RAW_Z_MAX, min(RAW_Z_MAX, _number(args[0], "value"))))


def _param(knob: bool):
    def decode_param(name, args, latents) -> Event:
        try:
            return param_event(name, _number(args[0], "value"), knob=knob)
        except KeyError as exc:
            raise OscError(str(exc)) from None
    return decode_param


def _patch(name, args, latents) -> Command:
    which = args[0]
    if isinstance(which, str):
        return RecallPatch(int(which) if which.isdecimal() else which)
    return RecallPatch(int(_number(which, "patch")))


def _song(name, args, latents) -> Command:
    which = args[0]
    if isinstance(which, str):
        return SelectSong(int(which) if which.isdecimal() else which)
    return SelectSong(int(_number(which, "song")))


@dataclass(frozen=True)
class OscAddress:
    """One row of the address space (see the module docstring)."""

    address: str
    args: tuple[str, ...]
    doc: str
    decode: Callable[[str, Sequence, Sequence], "Event | Command"]
    engine: bool = True        # an engine message (passes through a mapping with passthrough on)
    slashes: bool = False      # the <name> part may contain '/'

    @property
    def n_required(self) -> int:
        return sum(1 for a in self.args if not a.startswith("["))

    @property
    def stem(self) -> str:
        return self.address[:self.address.index("<")] if "<" in self.address else self.address

    def match(self, address: str) -> str | None:
        """The <name> part ('' for a fixed address) when ``address`` is this row's, else None."""
        if "<" not in self.address:
            return "" if address == self.address else None
        stem = self.stem
        if not address.startswith(stem) or len(address) == len(stem):
            return None
        name = address[len(stem):]
        return name if self.slashes or "/" not in name else None


OSC_ADDRESSES: tuple[OscAddress, ...] = (
    # engine messages
    OscAddress("/sdga/note_on", ("note", "velocity", "[channel]"), "start a note; velocity 1..127 (0 releases)",
               _note_on),
    OscAddress("/sdga/note_off", ("note", "[channel]"), "release a note", _note_off),
    OscAddress("/sdga/bend", ("value", "[channel]"), "pitch bend, -1..1 of the bend range",
               lambda n, a, l: PitchBend(max(-1.0, min(1.0, _number(a[0], "value"))), _channel(a, 1))),
    OscAddress("/sdga/cc", ("control", "value", "[channel]"), "MIDI control change (64 sustain, 120, 123)", _cc),
    OscAddress("/sdga/sustain", ("on",), "sustain pedal; on when >= 0.5",
               lambda n, a, l: ControlChange(CC_SUSTAIN, 127 if _number(a[0], "on") >= 0.5 else 0)),
    OscAddress("/sdga/panic", (), "silence everything now", lambda n, a, l: Panic()),
    OscAddress("/sdga/latent/<name>", ("knob",), "latent by measured name (or importance rank), as a 0..1 knob",
               _latent),
    OscAddress("/sdga/z/<index>", ("value",), "latent dimension <index> set to a raw z value (clamped to ±10)", _z),
    OscAddress("/sdga/param/<name>", ("value",), "engine parameter (`instrument.engine.events.PARAMS`) in its unit",
               _param(False)),
    OscAddress("/sdga/knob/<name>", ("knob",), "engine parameter as a 0..1 knob", _param(True)),
    # controller commands (the router carries them out)
    OscAddress("/sdga/target/<target>", ("knob",), "any target by name (it may contain '/': "
               "/sdga/target/latent/brightness) as a 0..1 knob; triggers fire at >= 0.5",
               lambda n, a, l: SetTarget(n, _number(a[0], "knob")), engine=False, slashes=True),
    OscAddress("/sdga/learn", ("target",), "MIDI learn: the next CC / aftertouch / bend moved is bound to target "
               "and written to the mapping file", lambda n, a, l: Learn(_text(a[0], "target")), engine=False),
    OscAddress("/sdga/learn/cancel", (), "stop waiting for a control to learn", lambda n, a, l: CancelLearn(),
               engine=False),
    OscAddress("/sdga/patch", ("name_or_index",), "recall a patch (glides)", _patch, engine=False),
    OscAddress("/sdga/patch/next", (), "recall the next patch", lambda n, a, l: StepPatch(1), engine=False),
    OscAddress("/sdga/patch/prev", (), "recall the previous patch", lambda n, a, l: StepPatch(-1), engine=False),
    OscAddress("/sdga/save", ("name",), "save the current sound as <patches folder>/<name>.yaml",
               lambda n, a, l: SavePatch(_text(a[0], "name")), engine=False),
    OscAddress("/sdga/set/song", ("name_or_index",), "switch the set list (`sdga-play --set`) to a song, by name or "
               "number (0 = the first), with a crossfade", _song, engine=False),
    OscAddress("/sdga/set/next", (), "switch to the set list's next song", lambda n, a, l: StepSong(1), engine=False),
    OscAddress("/sdga/set/prev", (), "switch to the set list's previous song", lambda n, a, l: StepSong(-1),
               engine=False),
)
OSC_SPECS: tuple[OscAddress, ...] = tuple(a for a in OSC_ADDRESSES if a.engine)   # the engine's part


def match_address(address: str) -> tuple[OscAddress, str]:
    """The table row for ``address`` and its <name> part; OscError when there is none."""
    for row in OSC_ADDRESSES:
        name = row.match(address)
        if name is not None:
            return row, name
    raise OscError(f"unknown OSC address {address!r}")


def decode(address: str, args: Sequence, latents: Sequence = ()) -> "tuple[OscAddress, Event | Command]":
    """Decode one message through the table: its row and the event or command (OscError when it does not fit)."""
    row, name = match_address(address)
    if not row.n_required <= len(args) <= len(row.args):
        raise OscError(f"{row.address} takes {', '.join(row.args) or 'no arguments'}; got {len(args)}: "
                       f"{list(args)!r}")
    return row, row.decode(name, args, latents)


def osc_event(address: str, args: Sequence, latents: Sequence = ()) -> Event:
    """Translate one engine message into an event (offset 0); raises OscError when it does not fit."""
    row, out = decode(address, args, latents)
    if not row.engine:
        raise OscError(f"{row.address} is a controller command, not an engine message")
    return out


def osc_table_markdown(rows: Sequence[OscAddress] = OSC_ADDRESSES) -> str:
    """The README's OSC table (between :data:`README_BEGIN` and :data:`README_END`)."""
    lines = ["| address | arguments | meaning |", "|---|---|---|"]
    lines += [f"| `{r.address}` | {' '.join(r.args)} | {r.doc} |" for r in rows]
    return "\n".join(lines)
