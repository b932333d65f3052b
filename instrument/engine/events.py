"""Events the engine consumes, the engine's parameter table, and the queue MIDI/OSC threads push to.

Every event carries ``offset``: the sample inside the block being processed at which it applies (0 = the
block's first sample). Events are small frozen dataclasses made by the producer thread (MIDI, OSC, a file
reader); the audio callback only reads them. Units are in the names; MIDI ranges are converted at the edge
(:func:`from_mido`), so the engine sees note numbers, velocities 0..127, bend in -1..1 and CC values 0..127.

The parameter table (:data:`PARAMS`) is data, like torchsynth's: every synth parameter has a name, unit,
range, default and knob curve; OSC addresses and mapping files point at these names.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterator, Union

__all__ = [
    "NoteOn", "NoteOff", "PitchBend", "ControlChange", "LatentSet", "ParamSet", "Panic", "TuningSet", "SongSelect",
    "ChannelPressure", "ChannelTimbre", "Event",
    "CC_MOD_WHEEL", "CC_SUSTAIN", "CC_ALL_SOUND_OFF", "CC_RESET_ALL_CONTROLLERS", "CC_ALL_NOTES_OFF",
    "ParamSpec", "PARAMS", "Param", "param_spec", "param_event", "EventQueue", "from_mido", "with_offset",
]

CC_MOD_WHEEL = 1
CC_SUSTAIN = 64
CC_ALL_SOUND_OFF = 120
CC_RESET_ALL_CONTROLLERS = 121
CC_ALL_NOTES_OFF = 123


@dataclass(frozen=True, slots=True)
class NoteOn:
    note: int            # MIDI note number (0..127; fractional notes are allowed and tune the voice)
    velocity: int = 100  # 1..127 (0 is a note-off, as in MIDI)
    channel: int = 0     # 0..15
    offset: int = 0


@dataclass(frozen=True, slots=True)
class NoteOff:
    note: int
    velocity: int = 0
    channel: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class PitchBend:
    value: float         # -1..1 (scaled by the bend_range_semitones parameter)
    channel: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ControlChange:
    control: int         # 1 mod wheel, 64 sustain, 120 all sound off, 121 reset controllers, 123 all notes off;
                         # others ignored
    value: int           # 0..127
    channel: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class LatentSet:
    """Set latent dimension ``index`` (z index, 0..latent_dim-1) to ``value``: a z value, or, with
    ``knob=True``, a 0..1 knob mapped through the model's latent table (LatentInfo.knob_to_z)."""

    index: int
    value: float
    knob: bool = False
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ParamSet:
    """Set engine parameter ``param`` (a :class:`Param`) to ``value`` in its unit (clamped to its range)."""

    param: int
    value: float
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Panic:
    """Silence everything now (same as CC120 on every channel)."""

    offset: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class TuningSet:
    """Retune the keys: ``key_offsets_semitones`` is a read-only (128,) array (each key's distance from 12-TET
    at A4 = 440 Hz, NaN = unmapped; :func:`instrument.engine.tuning.read_tuning`), or None for equal
    temperament. Built off the audio thread; the voices keep a reference (notes already sounding keep their
    pitch)."""

    key_offsets_semitones: object = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class SongSelect:
    """Switch a set list to song ``index`` (:class:`~instrument.engine.setlist.SetEngine`: the events after it in
    the queue go to that song's engine). A single engine ignores it."""

    index: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ChannelPressure:
    """MPE: a member channel's pressure (channel aftertouch), 0..1; every voice on that channel follows it (its
    loudness, by ``mpe_pressure_db``, and/or the latent ``mpe_pressure_latent``). The router sends it only for
    the member channels of an MPE zone."""

    value: float
    channel: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ChannelTimbre:
    """MPE: a member channel's timbre (CC 74, the "slide" dimension), 0..1; every voice on that channel sets the
    knob of latent ``mpe_timbre_latent`` to it, for itself only."""

    value: float
    channel: int = 0
    offset: int = 0


Event = Union[NoteOn, NoteOff, PitchBend, ControlChange, LatentSet, ParamSet, Panic, TuningSet, SongSelect,
              ChannelPressure, ChannelTimbre]


def with_offset(event: Event, offset: int) -> Event:
    """The same event at another sample offset (a new object; for producers, not the callback)."""
    from dataclasses import replace
    return replace(event, offset=int(offset))


# ---------------------------------------------------------------------------------------------- parameters
INTEGER_UNITS = ("channel", "index")   # values of these units (and of choices) are whole numbers


class KnobRange:
    """Knob 0..1 <-> value for a class with ``low``, ``high``, ``curve``, ``unit`` and ``choices``:
    ``value = low + (high - low) * knob ** curve`` (also for an inverted range, high < low)."""

    def clamp(self, value: float) -> float:
        """Into the range (either order of low and high), rounded for choices and integer units."""
        value = min(max(float(value), min(self.low, self.high)), max(self.low, self.high))
        return float(round(value)) if (self.choices or self.unit in INTEGER_UNITS) else value

    def from_knob(self, knob: float) -> float:
        knob = min(max(float(knob), 0.0), 1.0)
        return self.clamp(self.low + (self.high - self.low) * knob ** self.curve)

    def to_knob(self, value: float) -> float:
        span = self.high - self.low
        if span == 0:
            return 0.0
        return min(max((self.clamp(value) - self.low) / span, 0.0), 1.0) ** (1.0 / self.curve)


@dataclass(frozen=True)
class ParamSpec(KnobRange):
    """One engine parameter: ``value = low + (high - low) * knob ** curve`` for a knob in 0..1."""

    name: str
    unit: str
    default: float
    low: float
    high: float
    curve: float = 1.0
    choices: tuple[str, ...] = ()   # for discrete parameters: the name of each integer value low..high
    doc: str = ""


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("harmonic_gain_db", "dB", 0.0, -60.0, 12.0, doc="gain of the harmonic branch"),
    ParamSpec("noise_gain_db", "dB", 0.0, -60.0, 12.0, doc="gain of the filtered-noise branch"),
    ParamSpec("output_gain_db", "dB", 0.0, -60.0, 12.0, doc="gain of the mix, before the soft limiter"),
    ParamSpec("pitch_shift_semitones", "semitones", 0.0, -24.0, 24.0, doc="transposes every voice"),
    ParamSpec("bend_range_semitones", "semitones", 2.0, 0.0, 24.0, doc="pitch bend at full deflection"),
    ParamSpec("glide_ms", "ms", 0.0, 0.0, 2000.0, 2.0, doc="portamento time (mono and legato modes)"),
    ParamSpec("attack_ms", "ms", 10.0, 0.0, 5000.0, 3.0, doc="envelope attack, floor to peak"),
    ParamSpec("decay_ms", "ms", 200.0, 0.0, 10000.0, 3.0, doc="envelope decay, peak to sustain"),
    ParamSpec("sustain_db", "dB", -6.0, -60.0, 0.0, doc="envelope sustain level below the peak"),
    ParamSpec("release_ms", "ms", 300.0, 1.0, 10000.0, 3.0, doc="envelope release, peak to floor"),
    ParamSpec("velocity_sensitivity", "", 1.0, 0.0, 1.0,
              doc="learned, 1: MIDI's velocity curve, 40 dB per decade below the corpus's loudest notes (a "
                  "quarter of that under its softest); envelope, 1: the top 3/4 of the corpus loudness range; "
                  "0: every note at the top"),
    ParamSpec("voice_mode", "", 0.0, 0.0, 2.0, choices=("poly", "mono", "legato")),
    ParamSpec("midi_channel", "channel", -1.0, -1.0, 15.0, doc="-1: omni; else only this channel (0..15)"),
    ParamSpec("expression", "", 1.0, 0.0, 1.0, choices=("envelope", "learned"),
              doc="learned: the note articulation fitted from the corpus (model format 3); envelope: the ADSR"),
    ParamSpec("vibrato_depth", "", 1.0, 0.0, 4.0, 2.0,
              doc="times the learnt vibrato and tremolo depth (the mod wheel pushes it up to 4x more)"),
    ParamSpec("attack_time_scale", "", 1.0, 0.25, 4.0, 2.0, doc="times the learnt attack and decay times"),
    ParamSpec("release_time_scale", "", 1.0, 0.25, 4.0, 2.0, doc="times the learnt release time"),
    ParamSpec("level_offset_db", "dB", 0.0, -24.0, 12.0, doc="added to the learnt note level"),
    ParamSpec("tuning_a4_hz", "Hz", 440.0, 415.0, 466.0, doc="concert pitch: A4's frequency (442 for many "
              "orchestras); moves the whole tuning, a Scala scale too"),
    ParamSpec("mpe_zone", "", 0.0, 0.0, 2.0, choices=("off", "lower", "upper"),
              doc="MPE: lower zone (master channel 1, members 2, 3, ...), upper (master 16, members 15, 14, ...); "
              "an MPE controller's configuration message (RPN 6) sets it"),
    ParamSpec("mpe_members", "", 15.0, 1.0, 15.0, doc="MPE: member channels in the zone"),
    ParamSpec("mpe_bend_range_semitones", "semitones", 48.0, 0.0, 96.0,
              doc="MPE: a member channel's pitch bend at full deflection (per note; the master channel's bend, "
              "bend_range_semitones, moves every note of the zone)"),
    ParamSpec("mpe_pressure_db", "dB", 12.0, 0.0, 24.0,
              doc="MPE: loudness a note gains at full pressure (0: pressure leaves loudness alone)"),
    ParamSpec("mpe_timbre_latent", "index", 0.0, -1.0, 15.0,
              doc="MPE: the latent (by rank, as latent/<rank>) each note's CC 74 moves, for that note only (-1: none)"),
    ParamSpec("mpe_pressure_latent", "index", -1.0, -1.0, 15.0,
              doc="MPE: the latent (by rank) each note's pressure pushes up, for that note only (-1: none)"),
)


class Param(IntEnum):
    """Index of each entry of :data:`PARAMS`."""

    HARMONIC_GAIN_DB = 0
    NOISE_GAIN_DB = 1
    OUTPUT_GAIN_DB = 2
    PITCH_SHIFT_SEMITONES = 3
    BEND_RANGE_SEMITONES = 4
    GLIDE_MS = 5
    ATTACK_MS = 6
    DECAY_MS = 7
    SUSTAIN_DB = 8
    RELEASE_MS = 9
    VELOCITY_SENSITIVITY = 10
    VOICE_MODE = 11
    MIDI_CHANNEL = 12
    EXPRESSION = 13
    VIBRATO_DEPTH = 14
    ATTACK_TIME_SCALE = 15
    RELEASE_TIME_SCALE = 16
    LEVEL_OFFSET_DB = 17
    TUNING_A4_HZ = 18
    MPE_ZONE = 19
    MPE_MEMBERS = 20
    MPE_BEND_RANGE_SEMITONES = 21
    MPE_PRESSURE_DB = 22
    MPE_TIMBRE_LATENT = 23
    MPE_PRESSURE_LATENT = 24


assert [p.name.upper() for p in PARAMS] == [p.name for p in Param], "Param and PARAMS disagree"


def param_spec(key: int | str) -> ParamSpec:
    """A parameter's spec by :class:`Param` or by name."""
    if isinstance(key, str):
        for spec in PARAMS:
            if spec.name == key:
                return spec
        raise KeyError(f"no engine parameter {key!r}; parameters: {', '.join(p.name for p in PARAMS)}")
    return PARAMS[int(key)]


def param_event(key: int | str, value: float | str, offset: int = 0, knob: bool = False) -> ParamSet:
    """A ParamSet by name or index; ``value`` in the parameter's unit, a 0..1 knob, or a choice name."""
    index = int(Param[key.upper()]) if isinstance(key, str) else int(key)
    spec = PARAMS[index]
    if isinstance(value, str):
        value = float(spec.choices.index(value))
    return ParamSet(index, spec.from_knob(value) if knob else spec.clamp(value), offset)


# ---------------------------------------------------------------------------------------------- queue
class EventQueue:
    """Bounded multi-producer, single-consumer event queue.

    Producers (MIDI / OSC threads) call :meth:`push`; the audio callback drains it. ``deque.append`` and
    ``popleft`` are atomic in CPython, so no lock is taken; when full, new events are dropped and counted
    (``dropped``) rather than blocking a producer or growing without bound.
    """

    def __init__(self, capacity: int = 1024):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.dropped = 0
        self._events: deque = deque()

    def push(self, event: Event) -> bool:
        if len(self._events) >= self.capacity:
            self.dropped += 1
            return False
        self._events.append(event)
        return True

    def __len__(self) -> int:
        return len(self._events)

    def drain(self) -> Iterator[Event]:
        """Yield queued events until empty (what the callback passes to ``Engine.process``)."""
        events = self._events
        while events:
            try:
                yield events.popleft()
            except IndexError:   # emptied concurrently
                return

    def clear(self) -> None:
        self._events.clear()


# ---------------------------------------------------------------------------------------------- MIDI edge
def from_mido(message, offset: int = 0) -> Event | None:
    """A mido message -> an engine event (None for messages the engine does not use)."""
    kind = message.type
    if kind == "note_on":
        if message.velocity == 0:
            return NoteOff(message.note, 0, message.channel, offset)
        return NoteOn(message.note, message.velocity, message.channel, offset)
    if kind == "note_off":
        return NoteOff(message.note, message.velocity, message.channel, offset)
    if kind == "pitchwheel":
        return PitchBend(max(-1.0, min(1.0, message.pitch / 8192.0)), message.channel, offset)
    if kind == "control_change":
        return ControlChange(message.control, message.value, message.channel, offset)
    return None
