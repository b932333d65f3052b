"""MPE (MIDI Polyphonic Expression, the MMA / AMEI specification) ahead of the mapping: which channels are an MPE
zone's member channels, and what their messages mean.

- The MPE configuration message (MCM: RPN 6, CC 101 = 0, CC 100 = 6, then CC 6 = member count) on channel 0
  sets the lower zone (master channel 0, members 1..n), on channel 15 the upper zone (master 15, members 14
  down to 15 - n); 0 members turns that zone off. It also sets the bend ranges the specification gives: 48
  semitones on the members, 2 on the master.
- RPN 0 (pitch bend sensitivity: CC 6 semitones, CC 38 cents) on a member channel sets the notes' bend range,
  elsewhere the ordinary one.
- On a member channel: pitch bend is that note's (a PitchBend on that channel, which the voice bank plays with
  ``mpe_bend_range_semitones``), channel pressure is that note's pressure (ChannelPressure), CC 74 its timbre
  (ChannelTimbre). Everything else (notes, the master channel, other CCs) is left to the mapping.

The zone the engine plays is also set by ParamSets from anywhere (``--mpe``, ``--param``, patches, OSC):
:meth:`MpeInput.track` follows them. One object per input stream; not thread-safe (the MIDI reader owns it).
"""
from __future__ import annotations

from typing import Iterable

from instrument.engine.events import PARAMS, ChannelPressure, ChannelTimbre, Event, Param, ParamSet, PitchBend

__all__ = ["MpeInput", "CC_TIMBRE"]

CC_TIMBRE = 74
_RPN_MSB, _RPN_LSB, _DATA_MSB, _DATA_LSB = 101, 100, 6, 38
_RPN_BEND_RANGE, _RPN_MCM = 0, 6


class MpeInput:
    """MIDI messages of an MPE controller -> per-note events (see the module docstring)."""

    def __init__(self):
        self.zone = 0                     # 0 off, 1 lower (master channel 0), 2 upper (master channel 15)
        self.members = 15
        self.bend_range_semitones = 48.0  # the member channels' bend range the engine was told
        self._rpn = [[127, 127] for _ in range(16)]      # the RPN each channel selected; 127: none
        self._bend_range = [[2, 0] for _ in range(16)]   # RPN 0's data entry per channel (semitones, cents)

    def member(self, channel: int) -> bool:
        """Whether ``channel`` (0-based) is a member channel of the zone."""
        n = min(max(int(self.members), 1), 15)
        if self.zone == 1:
            return 1 <= channel <= n
        if self.zone == 2:
            return 15 - n <= channel <= 14
        return False

    def message(self, message, offset: int = 0) -> list[Event] | None:
        """The events for one mido message when it is MPE's to decode (configuration, bend sensitivity, a member
        channel's bend, pressure or CC 74); None when it is not (the mapping decides)."""
        kind = message.type
        channel = getattr(message, "channel", 0)
        if kind == "control_change":
            cc, value = message.control, message.value
            rpn = self._rpn[channel]
            if cc == _RPN_MSB:
                rpn[0] = value
                return None
            if cc == _RPN_LSB:
                rpn[1] = value
                return None
            if cc in (_DATA_MSB, _DATA_LSB) and rpn[0] == 0 and rpn[1] in (_RPN_BEND_RANGE, _RPN_MCM):
                events = self._data_entry(channel, rpn[1], cc, value, offset)
                self.track(events)
                return events
            if cc == CC_TIMBRE and self.member(channel):
                return [ChannelTimbre(value / 127.0, channel, offset)]
            return None
        if not self.member(channel):
            return None
        if kind == "pitchwheel":
            return [PitchBend(max(-1.0, min(1.0, message.pitch / 8192.0)), channel, offset)]
        if kind == "aftertouch":
            return [ChannelPressure(message.value / 127.0, channel, offset)]
        return None

    def _data_entry(self, channel: int, rpn: int, cc: int, value: int, offset: int) -> list[Event]:
        if rpn == _RPN_MCM:
            if cc != _DATA_MSB or channel not in (0, 15):
                return []
            zone = 1 if channel == 0 else 2
            if value == 0:
                return [ParamSet(Param.MPE_ZONE, 0.0, offset)] if self.zone == zone else []
            return [ParamSet(Param.MPE_ZONE, float(zone), offset),
                    ParamSet(Param.MPE_MEMBERS, float(min(value, 15)), offset),
                    ParamSet(Param.MPE_BEND_RANGE_SEMITONES, 48.0, offset),
                    ParamSet(Param.BEND_RANGE_SEMITONES, 2.0, offset)]
        param = Param.MPE_BEND_RANGE_SEMITONES if self.member(channel) else Param.BEND_RANGE_SEMITONES
        pair = self._bend_range[channel]
        if cc == _DATA_MSB:
            pair[0], pair[1] = value, 0
        else:
            pair[1] = value
        return [ParamSet(param, PARAMS[param].clamp(pair[0] + min(pair[1], 99) / 100.0), offset)]

    def track(self, events: Iterable[Event]) -> None:
        """Follow the zone through ParamSets sent to the engine by anyone."""
        for event in events:
            if type(event) is ParamSet:
                if event.param == Param.MPE_ZONE:
                    self.zone = int(round(event.value))
                elif event.param == Param.MPE_MEMBERS:
                    self.members = int(round(event.value))
                elif event.param == Param.MPE_BEND_RANGE_SEMITONES:
                    self.bend_range_semitones = float(event.value)

    def carry_to(self, other: "MpeInput") -> list[Event]:
        """The ParamSets that give ``other`` (the next song's input, in a set list) this zone, member count and
        bend range, which a controller sends once, when it connects; [] when they already agree."""
        if (self.zone, self.members, self.bend_range_semitones) == (other.zone, other.members,
                                                                    other.bend_range_semitones):
            return []
        events: list[Event] = [ParamSet(Param.MPE_ZONE, float(self.zone)),
                               ParamSet(Param.MPE_MEMBERS, float(self.members)),
                               ParamSet(Param.MPE_BEND_RANGE_SEMITONES, float(self.bend_range_semitones))]
        other.track(events)
        return events
