"""Voice allocation and per-voice control curves: notes -> (pitch, loudness) per control frame.

A :class:`VoiceBank` owns N voices. Events arrive with ``pos``, the sample inside the current control interval
(0 <= pos < hop); each voice's envelope and glide are advanced to exactly that sample before the event
applies, and :meth:`VoiceBank.end_interval` advances every voice to the end of the interval and writes the
frame's decoder inputs into preallocated arrays (``pitch_midi``, ``loudness_db``, ``gain``, ``onset``).

Envelope: ADSR in the dB domain, relative to the note's peak loudness (velocity mapped onto the corpus
loudness range). Attack rises linearly in dB from ``floor_db`` to 0, decay falls to ``sustain_db``, release
falls at a constant rate (``release_ms`` from 0 dB to the floor) and frees the voice at the floor.

Learnt expression (``settings.expression == LEARNED`` and the bank was given an articulation, which a model
file of format 3 carries): the held level follows the corpus's attack / decay / sustain drift and tremolo, the
release its fall rate, velocity its note-level quantiles, and the pitch its approach into a fresh note, vibrato
(times ``vibrato_depth``, pushed up to 4x by the mod wheel) and legato glide (:mod:`instrument.engine.expression`),
all from the samples counted since note-on and note-off: causal, the same whatever the block size.

Onsets: a note that starts on an idle voice is a *fresh onset*: ``onset[v]`` holds its sample inside the
interval so the engine can open the voice exactly there with its phase reset. A note that reuses a sounding
voice (same note re-struck, voice stolen, mono retrigger) continues from the voice's current level and phase
(no click); its pitch moves at the next control frame.

Pure Python and NumPy; no torch, nothing allocated per frame beyond Python scalars.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from instrument.engine.expression import (LEARNED, held_level_db, pitch_offset_cents, release_level_db,
                                          release_ms_to_floor, tremolo_db, velocity_output_db,
                                          output_input_db)
from instrument.engine.tuning import a4_offset_semitones
from instrument.model.bundle import Articulation

__all__ = ["IDLE", "ATTACK", "DECAY", "SUSTAIN", "RELEASE", "POLY", "MONO", "LEGATO", "Voice", "VoiceSettings",
           "VoiceBank"]

IDLE, ATTACK, DECAY, SUSTAIN, RELEASE = range(5)
STAGE_NAMES = ("idle", "attack", "decay", "sustain", "release")
POLY, MONO, LEGATO = range(3)
MAX_NOTE_STACK = 32


ENVELOPE_VELOCITY_SPAN = 0.75   # envelope: velocity 0..127 spans the top 3/4 of the corpus range at sensitivity 1


@dataclass
class VoiceSettings:
    """Musician-facing settings of the voice bank (the engine keeps them in sync with its parameter table)."""

    attack_ms: float = 10.0
    decay_ms: float = 200.0
    sustain_db: float = -6.0
    release_ms: float = 300.0
    floor_db: float = -60.0            # envelope bottom, relative to the note's peak
    glide_ms: float = 0.0
    velocity_sensitivity: float = 1.0
    bend_range_semitones: float = 2.0
    pitch_shift_semitones: float = 0.0
    mode: int = POLY
    midi_channel: int = -1             # -1 omni
    expression: int = LEARNED          # ENVELOPE: the ADSR above; LEARNED: the articulation, where there is one
    vibrato_depth: float = 1.0         # times the learnt vibrato and tremolo depth
    attack_time_scale: float = 1.0     # times the learnt attack and decay times
    release_time_scale: float = 1.0    # times the learnt release time
    level_offset_db: float = 0.0       # added to the learnt note level
    tuning_a4_hz: float = 440.0        # concert pitch: moves every key (a Scala tuning too)
    mpe_zone: int = 0                  # MPE: 0 off, 1 lower zone (master channel 0), 2 upper (master 15)
    mpe_members: int = 15              # MPE: member channels (lower: 1..n; upper: 14 down to 15 - n)
    mpe_bend_range_semitones: float = 48.0   # a member channel's bend at full deflection (the note's own)
    mpe_pressure_db: float = 12.0      # loudness a member note gains at full pressure
    mpe_timbre_latent: int = 0         # the latent a member note's CC 74 moves (the engine applies it), -1 none
    mpe_pressure_latent: int = -1      # the latent a member note's pressure pushes up (the engine), -1 none


@dataclass(slots=True)
class Voice:
    stage: int = IDLE
    note: float = 60.0
    channel: int = 0
    velocity: float = 0.0
    key_down: bool = False
    sustained: bool = False            # key released while the sustain pedal was down
    env_db: float = -60.0
    peak_db: float = -30.0
    pitch: float = 60.0                # current pitch in MIDI notes, glide included, before bend and shift
    target: float = 60.0
    glide_rate: float = 0.0            # semitones per sample
    age: int = 0                       # order of the last note start (for stealing)
    released_at: int = 0               # order of the last key release
    t: int = 0                         # sample inside the current interval the envelope is computed up to
    linger: int = 0                    # frames the engine still renders this voice after it went idle
    on_samples: int = 0                # samples since the note-on (the articulation's clock)
    off_samples: int = 0               # samples since the note-off (in release)
    attack_from_db: float = -30.0      # where the learnt attack starts, relative to the note level
    off_level_db: float = 0.0          # relative level at the note-off (the learnt release starts there)
    approach: bool = True              # a fresh or re-struck note: the learnt pitch approach applies


class VoiceBank:
    """N voices with stealing, mono/legato modes, glide, sustain pedal, pitch bend and channel filtering."""

    def __init__(self, n_voices: int, sample_rate: float, hop_size: int,
                 loudness_range_db: tuple[float, float] = (-60.0, -10.0),
                 f0_range_hz: tuple[float, float] = (32.7, 2093.0),
                 settings: VoiceSettings | None = None, silence_db: float = -100.0,
                 articulation: Articulation | None = None):
        if n_voices < 1:
            raise ValueError("n_voices must be >= 1")
        self.n_voices = int(n_voices)
        self.sample_rate = float(sample_rate)
        self.hop_size = int(hop_size)
        self.loudness_range_db = (float(loudness_range_db[0]), float(loudness_range_db[1]))
        self.f0_range_hz = (float(f0_range_hz[0]), float(f0_range_hz[1]))
        self.silence_db = float(silence_db)
        self.settings = settings or VoiceSettings()
        self.articulation = articulation
        self.mod_wheel = 0.0                   # 0..1, pushes the vibrato depth (learnt expression)
        # the tuning: None (12-TET) or a read-only (128,) table of each key's offset in semitones, NaN = unmapped
        # (instrument.engine.tuning); replaced by one assignment, never written
        self.key_offsets_semitones: np.ndarray | None = None
        self._ms_per_sample = 1000.0 / self.sample_rate
        self.voices = [Voice(env_db=self.settings.floor_db) for _ in range(self.n_voices)]
        self.bend = [0.0] * 16                 # per MIDI channel, -1..1
        self.pressure = [0.0] * 16             # per MIDI channel, 0..1 (MPE member channels)
        self.timbre = [math.nan] * 16          # per MIDI channel, 0..1 (MPE CC 74), NaN: not sent (the global knob)
        self.sustain_pedal = False
        self.note_stack: list[tuple[float, int, float]] = []   # held keys in mono / legato (note, channel, vel)
        self._counter = 0
        # Per-frame outputs (written by end_interval).
        self.pitch_midi = np.full(self.n_voices, 60.0)
        self.loudness_db = np.full(self.n_voices, self.silence_db)
        self.gain = np.zeros(self.n_voices, dtype=np.float32)
        self.onset = np.full(self.n_voices, -1, dtype=np.int64)
        self.voice_pressure = np.full(self.n_voices, math.nan)   # MPE: the voice's channel pressure, NaN: no MPE
        self.voice_timbre = np.full(self.n_voices, math.nan)     # MPE: the voice's channel CC 74, NaN: none
        self.active_rows = 0                   # voices 0 .. active_rows-1 need rendering this frame
        self._pending_onset = np.full(self.n_voices, -1, dtype=np.int64)
        self.has_onset = False                 # any fresh onset in the interval just ended (onset >= 0)
        self._any_pending = False
        # Counters the UI reads.
        self.steals = 0
        self.out_of_range_notes = 0
        self.last_out_of_range_note: float | None = None
        self.ignored_events = 0
        self._update_rates()

    # ------------------------------------------------------------------------------------------ settings
    def _update_rates(self) -> None:
        s = self.settings
        per_ms = self.sample_rate / 1000.0
        depth = -s.floor_db

        def rate(db: float, ms: float) -> float:
            return math.inf if ms <= 0.0 else db / (ms * per_ms)

        self._attack_rate = rate(depth, s.attack_ms)
        self._decay_rate = rate(-s.sustain_db, s.decay_ms)
        self._release_rate = rate(depth, s.release_ms)
        self._glide_samples = max(0.0, s.glide_ms * per_ms)
        self._a4_shift = a4_offset_semitones(s.tuning_a4_hz) if s.tuning_a4_hz > 0.0 else 0.0
        self._learn = s.expression == LEARNED and self.articulation is not None
        if self.articulation is not None:
            self._legato_samples = self.articulation.legato_ms * per_ms

    def set(self, name: str, value: float, pos: int = 0) -> None:
        """Change one setting by name (a VoiceSettings field); a mode change releases every note at ``pos``."""
        if name in ("mode", "midi_channel", "expression", "mpe_zone", "mpe_members", "mpe_timbre_latent",
                    "mpe_pressure_latent"):
            value = int(round(value))
            if name == "mode" and value != self.settings.mode:
                self.all_notes_off(pos)
                self.note_stack.clear()
        setattr(self.settings, name, value)
        if name in ("mpe_zone", "mpe_members"):    # members changed: nothing is per note until the next frame
            self.voice_pressure.fill(math.nan)
            self.voice_timbre.fill(math.nan)
        self._update_rates()

    def set_tuning(self, key_offsets_semitones: np.ndarray | None) -> None:
        """Retune the keys (a table from :func:`instrument.engine.tuning.read_tuning`, or None for 12-TET);
        sounding notes keep their pitch, the next notes use the new tuning."""
        self.key_offsets_semitones = key_offsets_semitones

    def tuned(self, note: float) -> float:
        """The pitch (12-TET MIDI units at A4 = 440 Hz, before bend, shift and concert pitch) key ``note``
        sounds in the current tuning; NaN for an unmapped key. A fractional note interpolates its two keys."""
        table = self.key_offsets_semitones
        if table is None:
            return float(note)
        k = min(max(int(math.floor(note)), 0), len(table) - 1)
        frac = float(note) - k
        offset = float(table[k])
        if frac > 0.0 and k + 1 < len(table):
            offset += frac * (float(table[k + 1]) - offset)
        return float(note) + offset

    def _key_pitch(self, note: float) -> float:
        """tuned(note), or the key itself where the tuning leaves it unmapped (a held key after a retune)."""
        pitch = self.tuned(note)
        return pitch if pitch == pitch else float(note)

    # ------------------------------------------------------------------------------------------ helpers
    def accepts(self, channel: int) -> bool:
        c = self.settings.midi_channel
        return c < 0 or c == channel

    def mpe_members(self) -> tuple[int, int, int]:
        """(master channel, first member, last member) of the MPE zone, 0-based; (-1, 0, -1) when MPE is off."""
        s = self.settings
        n = min(max(int(s.mpe_members), 1), 15)
        if s.mpe_zone == 1:
            return 0, 1, n
        if s.mpe_zone == 2:
            return 15, 15 - n, 14
        return -1, 0, -1

    @property
    def mpe_on(self) -> bool:
        return self.settings.mpe_zone != 0

    def _peak_db(self, velocity: float, pitch_midi: float | None = None) -> float:
        """The note's level: learned, by MIDI's velocity curve, the output level it should sound at (the
        corpus's loudest notes at ff: ``velocity_output_db``), with the corpus's register slope at
        ``pitch_midi`` (every frame's level goes through the model's calibration to the decoder input in
        ``end_interval``); envelope, the decoder input, linear in dB over the top ENVELOPE_VELOCITY_SPAN of the
        corpus loudness range (the ADSR as it always played)."""
        if self._learn:
            return velocity_output_db(self.articulation, velocity, self.settings.velocity_sensitivity, pitch_midi)
        low, high = self.loudness_range_db
        v = min(max(float(velocity) / 127.0, 0.0), 1.0)
        return high - ENVELOPE_VELOCITY_SPAN * self.settings.velocity_sensitivity * (1.0 - v) * (high - low)

    def _check_range(self, note: float) -> None:
        pitch = self.tuned(note) + self.settings.pitch_shift_semitones + self._a4_shift
        f0 = 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)
        if not self.f0_range_hz[0] <= f0 <= self.f0_range_hz[1]:
            self.out_of_range_notes += 1
            self.last_out_of_range_note = note

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _advance(self, v: Voice, pos: int) -> None:
        """Run voice v's envelope and glide from v.t to sample ``pos`` of the current interval."""
        n = pos - v.t
        v.t = pos
        if n <= 0 or v.stage == IDLE:
            return
        v.on_samples += n
        if v.pitch != v.target:
            step = v.glide_rate * n
            if abs(v.target - v.pitch) <= step:
                v.pitch = v.target
            else:
                v.pitch += step if v.target > v.pitch else -step
        s = self.settings
        if self._learn:
            self._advance_learned(v, n)
            return
        left = float(n)
        while left > 0.0:
            stage = v.stage
            if stage == ATTACK:
                need = -v.env_db / self._attack_rate
                if need <= left:
                    v.env_db, v.stage, left = 0.0, DECAY, left - need
                else:
                    v.env_db += self._attack_rate * left
                    left = 0.0
            elif stage == DECAY:
                if v.env_db <= s.sustain_db:
                    v.stage = SUSTAIN
                    continue
                need = (v.env_db - s.sustain_db) / self._decay_rate
                if need <= left:
                    v.env_db, v.stage, left = s.sustain_db, SUSTAIN, left - need
                else:
                    v.env_db -= self._decay_rate * left
                    left = 0.0
            elif stage == SUSTAIN:
                v.env_db = s.sustain_db
                left = 0.0
            elif stage == RELEASE:
                need = (v.env_db - s.floor_db) / self._release_rate
                if need <= left:
                    v.env_db, v.stage = s.floor_db, IDLE
                    v.key_down = v.sustained = False
                else:
                    v.env_db -= self._release_rate * left
                left = 0.0
            else:
                left = 0.0

    def _advance_learned(self, v: Voice, n: int) -> None:
        """The learnt articulation's level at the voice's clock (already advanced by n samples)."""
        art, s = self.articulation, self.settings
        if v.stage == RELEASE:
            v.off_samples += n
            t_off_ms = v.off_samples * self._ms_per_sample
            to_floor_ms = release_ms_to_floor(art, v.off_level_db, s.floor_db, s.release_time_scale)
            if t_off_ms >= to_floor_ms:
                v.env_db, v.stage = s.floor_db, IDLE
                v.key_down = v.sustained = False
            else:
                v.env_db = release_level_db(art, t_off_ms, v.off_level_db, s.release_time_scale)
        else:
            t_on_ms = v.on_samples * self._ms_per_sample
            v.env_db = (held_level_db(art, t_on_ms, v.attack_from_db, s.attack_time_scale)
                        + tremolo_db(art, t_on_ms, s.vibrato_depth))

    def _legato_to(self, v: Voice, note: float) -> None:
        """A legato transition to key ``note``: the glide time set, else the learnt one."""
        if self._learn and self._glide_samples <= 0.0:
            v.target = self._key_pitch(note)
            v.glide_rate = abs(v.target - v.pitch) / max(self._legato_samples, 1.0)
        else:
            self._glide_to(v, note)

    def _glide_to(self, v: Voice, note: float) -> None:
        v.target = self._key_pitch(note)
        if self._glide_samples <= 0.0:
            v.pitch = v.target
            v.glide_rate = 0.0
        else:
            v.glide_rate = abs(v.target - v.pitch) / self._glide_samples

    def _start(self, index: int, note: float, velocity: float, channel: int, pos: int, glide: bool) -> None:
        """Start a note on voice ``index``: fresh onset if idle, else retrigger from the current level."""
        v = self.voices[index]
        self._advance(v, pos)
        was_abs_db = v.peak_db + v.env_db
        was_idle = v.stage == IDLE
        if v.stage == IDLE:
            v.env_db = self.settings.floor_db
            v.pitch = v.target = self._key_pitch(note)
            v.glide_rate = 0.0
            self._pending_onset[index] = pos
            self._any_pending = True
        elif glide:
            self._glide_to(v, note)
        else:
            v.pitch = v.target = self._key_pitch(note)
            v.glide_rate = 0.0
        v.stage = ATTACK
        v.note, v.channel, v.velocity = float(note), int(channel), float(velocity)
        v.key_down, v.sustained = True, False
        v.peak_db = self._peak_db(velocity, v.target)
        v.age = self._next()
        v.on_samples = v.off_samples = 0
        v.approach = True
        if self._learn:
            art = self.articulation
            start = art.attack_start_db
            if not was_idle:                    # re-struck: the attack starts from where the voice is
                start = min(max(was_abs_db - v.peak_db, start), max(art.attack_peak_db, start))
            v.attack_from_db = v.env_db = start

    def _release(self, v: Voice, pos: int) -> None:
        self._advance(v, pos)
        v.key_down = False
        if self.sustain_pedal:
            v.sustained = True
        else:
            v.sustained = False
            if v.stage != IDLE:
                v.stage = RELEASE
                v.off_samples = 0
                v.off_level_db = v.env_db
        v.released_at = self._next()

    # ------------------------------------------------------------------------------------------ events
    def note_on(self, note: float, velocity: float, channel: int, pos: int) -> None:
        if velocity <= 0:
            self.note_off(note, channel, pos)
            return
        if not self.accepts(channel) or not math.isfinite(self.tuned(note)):   # other channel, unmapped key
            self.ignored_events += 1
            return
        self._check_range(note)
        if self.settings.mode == POLY:
            self._poly_note_on(note, velocity, channel, pos)
        else:
            self._mono_note_on(note, velocity, channel, pos)

    def _poly_note_on(self, note: float, velocity: float, channel: int, pos: int) -> None:
        voices = self.voices
        target = -1
        for i, v in enumerate(voices):          # the same key again: reuse its voice
            if v.stage != IDLE and v.note == note and v.channel == channel:
                target = i
                break
        if target < 0:
            for i, v in enumerate(voices):
                if v.stage == IDLE:
                    target = i
                    break
        if target < 0:                          # steal: oldest released, else oldest
            best_released, best_any = -1, -1
            for i, v in enumerate(voices):
                if not v.key_down and (best_released < 0 or v.released_at < voices[best_released].released_at):
                    best_released = i
                if best_any < 0 or v.age < voices[best_any].age:
                    best_any = i
            target = best_released if best_released >= 0 else best_any
            self.steals += 1
        self._start(target, note, velocity, channel, pos, glide=False)

    def _mono_note_on(self, note: float, velocity: float, channel: int, pos: int) -> None:
        stack = self.note_stack
        for k in range(len(stack) - 1, -1, -1):
            if stack[k][0] == note and stack[k][1] == channel:
                del stack[k]
        if len(stack) >= MAX_NOTE_STACK:
            del stack[0]
        stack.append((float(note), int(channel), float(velocity)))
        v = self.voices[0]
        self._advance(v, pos)
        if v.stage != IDLE and self.settings.mode == LEGATO and v.key_down:
            self._legato_to(v, note)            # legato: new pitch, same envelope
            v.note, v.channel = float(note), int(channel)
            v.sustained = False
            return
        self._start(0, note, velocity, channel, pos, glide=True)

    def note_off(self, note: float, channel: int, pos: int) -> None:
        if not self.accepts(channel):
            self.ignored_events += 1
            return
        if self.settings.mode == POLY:
            for v in self.voices:
                if v.key_down and v.note == note and v.channel == channel:
                    self._release(v, pos)
            return
        stack = self.note_stack
        for k in range(len(stack) - 1, -1, -1):
            if stack[k][0] == note and stack[k][1] == channel:
                del stack[k]
        v = self.voices[0]
        if v.key_down and v.note == note and v.channel == channel:
            if stack:                           # fall back to the previous held key
                self._advance(v, pos)
                back_note, back_channel, _ = stack[-1]
                self._legato_to(v, back_note)
                v.note, v.channel = back_note, back_channel
            else:
                self._release(v, pos)

    def sustain(self, on: bool, pos: int) -> None:
        self.sustain_pedal = bool(on)
        if not on:
            for v in self.voices:
                if v.sustained:
                    self._release(v, pos)

    def pitch_bend(self, value: float, channel: int) -> None:
        if not self.accepts(channel):
            self.ignored_events += 1
            return
        if math.isfinite(value):
            self.bend[channel & 15] = min(max(float(value), -1.0), 1.0)

    def channel_pressure(self, value: float, channel: int) -> None:
        """MPE pressure of ``channel`` (0..1): the voices on it follow from the next control frame."""
        if math.isfinite(value):
            self.pressure[channel & 15] = min(max(float(value), 0.0), 1.0)
        else:
            self.ignored_events += 1

    def channel_timbre(self, value: float, channel: int) -> None:
        """MPE timbre (CC 74) of ``channel`` (0..1): the voices on it follow from the next control frame."""
        if math.isfinite(value):
            self.timbre[channel & 15] = min(max(float(value), 0.0), 1.0)
        else:
            self.ignored_events += 1

    def modulation(self, value: float) -> None:
        """Mod wheel 0..1 (CC 1): with learnt expression, the vibrato depth up to 4x the learnt one."""
        if math.isfinite(value):
            self.mod_wheel = min(max(float(value), 0.0), 1.0)

    def reset_controllers(self, channel: int, pos: int) -> None:
        self.bend[channel & 15] = 0.0
        self.pressure[channel & 15] = 0.0
        self.timbre[channel & 15] = math.nan
        self.mod_wheel = 0.0
        self.sustain(False, pos)

    def all_notes_off(self, pos: int) -> None:
        """Release every held key (sustained notes keep sounding while the pedal is down, as in MIDI)."""
        self.note_stack.clear()
        for v in self.voices:
            if v.key_down:
                self._release(v, pos)

    def all_sound_off(self) -> None:
        """Every voice idle now (panic); the engine also silences the synth."""
        self.note_stack.clear()
        self.sustain_pedal = False
        for i, v in enumerate(self.voices):
            v.stage, v.key_down, v.sustained, v.env_db = IDLE, False, False, self.settings.floor_db
            v.linger = 0
            self._pending_onset[i] = -1

    def kill(self, index: int) -> None:
        """Voice ``index`` idle now (after its output went non-finite; the engine clears its synth state)."""
        v = self.voices[index]
        v.stage, v.key_down, v.sustained, v.env_db = IDLE, False, False, self.settings.floor_db
        v.linger = 0
        v.pitch = v.target = v.note

    # ------------------------------------------------------------------------------------------ frames
    def end_interval(self) -> None:
        """Advance every voice to the end of the interval and write this frame's arrays."""
        hop = self.hop_size
        s = self.settings
        shift = s.pitch_shift_semitones + self._a4_shift
        bend_range = s.bend_range_semitones
        bend = self.bend
        pitch, loudness, gain = self.pitch_midi, self.loudness_db, self.gain
        learn = self._learn
        art = self.articulation
        offset_db = s.level_offset_db if learn else 0.0
        vibrato = s.vibrato_depth * (1.0 + 3.0 * self.mod_wheel)
        master, first, last = self.mpe_members()
        if master >= 0:
            member_range, pressure_db = s.mpe_bend_range_semitones, s.mpe_pressure_db
            master_bend = bend[master] * bend_range
            pressure, timbre = self.pressure, self.timbre
            voice_pressure, voice_timbre = self.voice_pressure, self.voice_timbre
        rows = 0
        for i, v in enumerate(self.voices):
            if v.stage != IDLE:
                self._advance(v, hop)
            v.t = 0
            ch = v.channel
            member = master >= 0 and first <= ch <= last
            if member:     # MPE: the note's own bend on top of the zone's (master channel) bend
                pitch[i] = v.pitch + bend[ch] * member_range + master_bend + shift
            else:
                pitch[i] = v.pitch + bend[ch] * bend_range + shift
            if master >= 0:
                voice_pressure[i] = pressure[ch] if member else math.nan
                voice_timbre[i] = timbre[ch] if member else math.nan
            if learn and v.stage != IDLE:
                pitch[i] += 0.01 * pitch_offset_cents(art, v.on_samples * self._ms_per_sample, v.approach, vibrato)
            if v.stage != IDLE:
                loudness[i] = v.peak_db + v.env_db + offset_db
                if member:
                    loudness[i] += pressure_db * pressure[ch]
                if learn:
                    loudness[i] = output_input_db(art, loudness[i], pitch[i])
                gain[i] = 1.0
                v.linger = 2            # the frame it goes idle fades out; one more zeroes the other buffer
                rows = i + 1
            else:
                loudness[i] = self.silence_db
                gain[i] = 0.0
                if v.linger > 0:
                    v.linger -= 1
                    rows = i + 1
        self.active_rows = rows
        if self._any_pending or self.has_onset:
            self.onset[:] = self._pending_onset
            self._pending_onset.fill(-1)
        self.has_onset, self._any_pending = self._any_pending, False

    def reset(self) -> None:
        """All voices idle, controllers at rest, counters kept."""
        self.all_sound_off()
        self.bend = [0.0] * 16
        self.pressure = [0.0] * 16
        self.timbre = [math.nan] * 16
        for v in self.voices:
            v.t = 0
            v.pitch = v.target = v.note
        self.onset.fill(-1)
        self.gain.fill(0.0)
        self.loudness_db.fill(self.silence_db)

    # ------------------------------------------------------------------------------------------ views
    def __repr__(self) -> str:
        sounding = ", ".join(f"{i}: note {v.note:g} ch {v.channel} {STAGE_NAMES[v.stage]} {v.peak_db + v.env_db:.1f} dB"
                             for i, v in enumerate(self.voices) if v.stage != IDLE)
        return (f"VoiceBank({self.n_voices} voices, mode {('poly', 'mono', 'legato')[self.settings.mode]}, "
                f"sustain {'down' if self.sustain_pedal else 'up'}, sounding [{sounding}], steals {self.steals}, "
                f"out-of-range notes {self.out_of_range_notes})")

    @property
    def release_seconds(self) -> float:
        """How long a note sounds after its note-off at most (the ADSR's or the learnt release to the floor)."""
        s = self.settings
        if self._learn:
            return release_ms_to_floor(self.articulation, self.articulation.attack_peak_db, s.floor_db,
                                       s.release_time_scale) / 1000.0
        return s.release_ms / 1000.0

    @property
    def active_voices(self) -> int:
        return sum(1 for v in self.voices if v.stage != IDLE)

    def sounding_notes(self) -> list[tuple[float, int, str]]:
        """(note, channel, stage name) of every non-idle voice (for UIs; allocates)."""
        return [(v.note, v.channel, STAGE_NAMES[v.stage]) for v in self.voices if v.stage != IDLE]
