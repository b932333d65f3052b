"""The live engine: events in, audio blocks out, for any block size, with a fixed one-frame delay.

Lifecycle (pedalboard-style): :meth:`Engine.prepare` allocates everything for a sample rate, block size and
voice count; :meth:`Engine.process` renders one block in place from the events that fall inside it;
:meth:`Engine.reset` silences. The streaming state is one dataclass (:class:`EngineState`).

Timing. Control frames come every ``hop`` samples (the model's frame duration at the device rate). The
engine renders one control interval at a time: when the event timeline reaches the end of an interval, all
events inside it are known, so it advances the voices to the interval's end, runs ONE decoder step for all
sounding voices (batched), and synthesises the interval; that audio plays during the following interval. So
every event is heard exactly ``control_delay_samples`` (= hop) after its sample, whatever the block size:

- a note-on at sample o opens its voice at exactly o (+ the constant delay), phase starting there;
- the output does not depend on how the host cuts it into blocks (tests check this sample for sample).

The host adds its own buffering: :attr:`Engine.latency_samples` = block size + hop.

Cost. Voices 0 .. k-1 are computed, where k - 1 is the highest voice that sounds or is fading out (voices are
allocated lowest-first), so silence costs almost nothing and a few notes on a many-voice engine cost a few
voices. The decoder reuses its input layers while no voice's pitch or loudness changes (held notes).

Threads. The audio thread only calls :meth:`process`; MIDI/OSC threads push events into an
:class:`~instrument.engine.events.EventQueue` whose ``drain()`` is passed to :meth:`process`. Set one torch thread
in the host (``torch.set_num_threads(1)``): the engine does not change process-wide settings itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from instrument.model import dsp
from instrument.model.bundle import ModelBundle
from instrument.engine.decoder_kernel import DecoderStep
from instrument.engine.synth_kernel import StreamingSynth, device_hop_size
from instrument.engine.events import (CC_MOD_WHEEL, CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF, CC_RESET_ALL_CONTROLLERS, CC_SUSTAIN, PARAMS,
                     ChannelPressure, ChannelTimbre, ControlChange, LatentSet, NoteOff, NoteOn, Panic, Param, ParamSet,
                     PitchBend, TuningSet)
from instrument.engine.voices import VoiceBank, VoiceSettings

__all__ = ["Engine", "EngineState", "EngineStats", "FrameRecord"]

# Parameters that live in the voice bank's settings.
_VOICE_SETTINGS = {
    Param.PITCH_SHIFT_SEMITONES: "pitch_shift_semitones", Param.BEND_RANGE_SEMITONES: "bend_range_semitones",
    Param.GLIDE_MS: "glide_ms", Param.ATTACK_MS: "attack_ms", Param.DECAY_MS: "decay_ms",
    Param.SUSTAIN_DB: "sustain_db", Param.RELEASE_MS: "release_ms",
    Param.VELOCITY_SENSITIVITY: "velocity_sensitivity", Param.VOICE_MODE: "mode", Param.MIDI_CHANNEL: "midi_channel",
    Param.EXPRESSION: "expression", Param.VIBRATO_DEPTH: "vibrato_depth", Param.ATTACK_TIME_SCALE: "attack_time_scale",
    Param.RELEASE_TIME_SCALE: "release_time_scale", Param.LEVEL_OFFSET_DB: "level_offset_db",
    Param.TUNING_A4_HZ: "tuning_a4_hz", Param.MPE_ZONE: "mpe_zone", Param.MPE_MEMBERS: "mpe_members",
    Param.MPE_BEND_RANGE_SEMITONES: "mpe_bend_range_semitones", Param.MPE_PRESSURE_DB: "mpe_pressure_db",
    Param.MPE_TIMBRE_LATENT: "mpe_timbre_latent", Param.MPE_PRESSURE_LATENT: "mpe_pressure_latent",
}


@dataclass
class EngineStats:
    """Counters the UI reads; the engine never prints from the audio thread."""

    blocks: int = 0
    intervals: int = 0
    events: int = 0
    errors: int = 0                 # exceptions caught in process (the block was silenced)
    last_error: str = ""
    voice_resets: int = 0           # voices reset after non-finite output
    limited_intervals: int = 0      # intervals the soft limiter touched
    panics: int = 0


@dataclass
class EngineState:
    """Everything the engine carries from one block to the next."""

    voices: VoiceBank               # notes, envelopes, glide, sustain, bend
    gru: torch.Tensor               # (1, V, G) decoder recurrent state
    synth: dsp.SynthState           # previous frame, phase (V,), noise tail (V, ir - 1)
    decoder_inputs: torch.Tensor    # (V, 2): scaled f0 and loudness of the last frame
    z: torch.Tensor                 # (D,) latent vector, shared by all voices
    params: np.ndarray              # (len(PARAMS),) current value of every engine parameter
    interval_audio: np.ndarray      # (hop,) the interval being played
    position: int = 0               # sample inside the current interval
    output_gain: float = 1.0        # linear output gain reached at the end of the last interval


@dataclass
class FrameRecord:
    """What one interval rendered (copies; for tests and analysis, see :meth:`Engine.set_recorder`)."""

    f0_hz: torch.Tensor                   # (V,)
    amplitude: torch.Tensor               # (V,) after harmonic gain and voice gate
    harmonic_distribution: torch.Tensor   # (V, H)
    noise_magnitudes: torch.Tensor        # (V, N) model bands, after noise gain and voice gate
    noise: torch.Tensor                   # (V, hop) white noise used
    onset: np.ndarray                     # (V,) sample of a fresh onset in this interval, or -1
    output_gain: tuple[float, float]      # linear gain at the start and end of the interval
    audio: np.ndarray                     # (hop,) the final interval output


LIMITER_CEILING_DBFS = -0.1        # the soft limiter's output never reaches this (0.98855 of full scale)
METER_INTERVALS = 128              # the output meter's window: 128 control frames (341 ms at 48 kHz, hop 128)
METER_FLOOR_DB = -120.0

class Engine:
    """Plays a :class:`ModelBundle` live: ``prepare`` -> ``process`` (many) -> ``reset``."""

    def __init__(self, bundle: ModelBundle, *, noise_seed: int = 0, noise_frames: int = 4096,
                 limiter_threshold: float = 0.9, limiter_ceiling_dbfs: float = LIMITER_CEILING_DBFS,
                 silence_db: float = -100.0):
        self.bundle = bundle
        self.config = bundle.config
        self.noise_seed = int(noise_seed)
        self.noise_frames = int(noise_frames)
        self.limiter_threshold = float(limiter_threshold)
        self.limiter_ceiling = float(10.0 ** (limiter_ceiling_dbfs / 20.0))
        if not 0.0 < self.limiter_threshold < self.limiter_ceiling <= 1.0:
            raise ValueError("the limiter needs 0 < threshold < ceiling <= 1 (0 dBFS)")
        self.silence_db = float(silence_db)
        self.stats = EngineStats()
        self.params = np.array([p.default for p in PARAMS], dtype=np.float64)
        self._latents = {l.index: l for l in bundle.latents}
        self.loudness_range_db = bundle.corpus.loudness_range_db
        self.f0_range_hz = bundle.f0_range_hz()
        self._recorder: Callable[[FrameRecord], None] | None = None
        self.state: EngineState | None = None
        self._meter = np.zeros(METER_INTERVALS)    # output peak of the last intervals: the audio thread writes
        self.sample_rate = 0
        self.block_size = 0
        self.max_voices = 0
        self.hop_size = 0

    # ------------------------------------------------------------------------------------------ lifecycle
    def prepare(self, sample_rate: int | None = None, block_size: int = 512, max_voices: int = 8) -> None:
        """Allocate everything for ``sample_rate`` (default: the model's), blocks of up to any size
        (``block_size`` is the host's nominal size, used for :attr:`latency_samples`) and ``max_voices``."""
        c = self.config
        sr = int(sample_rate or c.sample_rate)
        if sr <= 0 or block_size <= 0 or max_voices <= 0:
            raise ValueError("sample_rate, block_size and max_voices must be positive")
        self.sample_rate, self.block_size, self.max_voices = sr, int(block_size), int(max_voices)
        self.hop_size = hop = device_hop_size(c.hop_size, c.sample_rate, sr)
        V = self.max_voices
        z = self._step.z_np.copy() if self.state is not None else self.bundle.default_z().numpy()
        with torch.no_grad():
            settings = VoiceSettings()
            voices = VoiceBank(V, sr, hop, self.loudness_range_db, self.f0_range_hz, settings, self.silence_db,
                               articulation=self.bundle.expression)
            self._step = DecoderStep(self.bundle.decoder, V)
            self._synth = StreamingSynth(V, c.n_harmonics, c.n_noise_bands, c.sample_rate, sr, hop,
                                         noise_bias=c.noise_bias, noise_frames=self.noise_frames,
                                         seed=self.noise_seed)
            gru = torch.zeros(1, V, c.gru_size)
            self._gru_flat = gru[0]
            self._step.set_z_all(z)                   # latents survive a re-prepare
            self._in_f0 = self._step.inputs_np[:, 0]
            self._in_loudness = self._step.inputs_np[:, 1]
            self._voice_out = torch.zeros(V, hop)
            self._voice_out_np = self._voice_out.numpy()
            self._voice_out_rows = [self._voice_out_np[:a] for a in range(V + 1)]
            interval_np = np.zeros(hop, dtype=np.float32)
            self._amp_gain_np = np.zeros(V, dtype=np.float32)
            self._noise_gain_np = np.zeros(V, dtype=np.float32)
            self._tmp_v = np.zeros(V)
            self._ramp_np = (np.arange(hop) / hop).astype(np.float32)
            self._tmp_a = np.zeros(hop, dtype=np.float32)
            self._tmp_b = np.zeros(hop, dtype=np.float32)
            self._mpe_own = False                     # any voice has its own latents (MPE)
        self.state = EngineState(voices=voices, gru=gru, synth=self._synth.state, decoder_inputs=self._step.inputs,
                                 z=self._step.z, params=self.params, interval_audio=interval_np)
        for index, value in enumerate(self.params):
            self._set_param(index, value)
        self.state.output_gain = self._output_gain

    def reset(self) -> None:
        """Silence: every voice idle, synth and decoder state cleared. Parameters and latents are kept."""
        if self.state is None:
            return
        with torch.no_grad():
            self.state.voices.reset()
            self._synth.reset()
            self.state.gru.zero_()
            self.state.interval_audio.fill(0.0)
        self._meter.fill(0.0)

    @property
    def control_delay_samples(self) -> int:
        """Samples from an event to its first effect in the output (one control frame)."""
        return self.hop_size

    @property
    def latency_samples(self) -> int:
        """Total latency a host sees: one block of buffering plus the control-frame delay."""
        return self.block_size + self.hop_size

    @property
    def voices(self) -> VoiceBank:
        return self.state.voices

    def set_recorder(self, recorder: Callable[[FrameRecord], None] | None) -> None:
        """Call ``recorder`` with a :class:`FrameRecord` after every interval (allocates: tests/analysis only)."""
        self._recorder = recorder

    # ------------------------------------------------------------------------------------------ process
    def process(self, events: Iterable, out) -> None:
        """Render one block into ``out`` (np.ndarray or torch.Tensor, shape (n,) or (n, channels); every
        channel gets the mono mix), applying ``events`` at their ``offset`` (non-decreasing; offsets past
        the block apply at its end). Never raises: on any error the block is silenced and counted."""
        try:
            buffer = out.numpy() if isinstance(out, torch.Tensor) else out
        except Exception as exc:  # e.g. a GPU tensor
            self.stats.errors += 1
            self.stats.last_error = repr(exc)
            try:
                out.zero_()
            except Exception:
                pass
            return
        try:
            if self.state is None:
                raise RuntimeError("process() before prepare()")
            with torch.inference_mode():
                self._process(events, buffer)
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = repr(exc)
            try:
                buffer.fill(0.0)
                self.reset()
            except Exception:
                pass

    def _process(self, events: Iterable, out: np.ndarray) -> None:
        n = out.shape[0]
        mono = out if out.ndim == 1 else out[:, 0]
        state = self.state
        hop = self.hop_size
        pos = state.position
        interval = state.interval_audio
        it = iter(events)
        event = next(it, None)
        i = 0
        while True:
            while event is not None and (event.offset <= i or i >= n):
                state.position = pos
                self._apply(event, pos)
                event = next(it, None)
            if i >= n:
                break
            stop = n if event is None else min(n, max(event.offset, i + 1))
            stop = min(stop, i + hop - pos)
            mono[i:stop] = interval[pos:pos + stop - i]
            pos += stop - i
            i = stop
            if pos == hop:
                self._render_interval()
                pos = 0
        state.position = pos
        if out.ndim == 2 and out.shape[1] > 1:
            out[:, 1:] = mono[:, None]
        self.stats.blocks += 1

    # ------------------------------------------------------------------------------------------ events
    def _apply(self, event, pos: int) -> None:
        self.stats.events += 1
        voices = self.state.voices
        kind = type(event)
        if kind is NoteOn:
            voices.note_on(event.note, event.velocity, event.channel, pos)
        elif kind is NoteOff:
            voices.note_off(event.note, event.channel, pos)
        elif kind is PitchBend:
            voices.pitch_bend(event.value, event.channel)
        elif kind is ControlChange:
            if not voices.accepts(event.channel):
                voices.ignored_events += 1
            elif event.control == CC_SUSTAIN:
                voices.sustain(event.value >= 64, pos)
            elif event.control == CC_MOD_WHEEL:
                voices.modulation(event.value / 127.0)
            elif event.control == CC_ALL_SOUND_OFF:
                self._panic()
            elif event.control == CC_ALL_NOTES_OFF:
                voices.all_notes_off(pos)
            elif event.control == CC_RESET_ALL_CONTROLLERS:
                voices.reset_controllers(event.channel, pos)
            else:
                voices.ignored_events += 1
        elif kind is LatentSet:
            info = self._latents.get(event.index)
            value = float(event.value)
            if info is None or not math.isfinite(value):
                voices.ignored_events += 1
            else:
                self._step.set_z(event.index, info.knob_to_z(value) if event.knob else value)
        elif kind is ParamSet:
            self._set_param(event.param, event.value, pos)
        elif kind is Panic:
            self._panic()
        elif kind is TuningSet:
            voices.set_tuning(event.key_offsets_semitones)
        elif kind is ChannelPressure:
            voices.channel_pressure(event.value, event.channel)
        elif kind is ChannelTimbre:
            voices.channel_timbre(event.value, event.channel)
        else:
            voices.ignored_events += 1

    def _set_param(self, index: int, value: float, pos: int = 0) -> None:
        index = int(index)
        if not 0 <= index < len(PARAMS) or not math.isfinite(float(value)):
            self.state.voices.ignored_events += 1
            return
        value = PARAMS[index].clamp(value)
        self.params[index] = value
        if index == Param.HARMONIC_GAIN_DB:
            self._harmonic_gain = 10.0 ** (value / 20.0)
        elif index == Param.NOISE_GAIN_DB:
            self._noise_gain_lin = 10.0 ** (value / 20.0)
        elif index == Param.OUTPUT_GAIN_DB:
            self._output_gain = 10.0 ** (value / 20.0)
        else:
            self.state.voices.set(_VOICE_SETTINGS[Param(index)], value, pos)
            if index in (Param.MPE_ZONE, Param.MPE_MEMBERS, Param.MPE_TIMBRE_LATENT, Param.MPE_PRESSURE_LATENT):
                self._clear_voice_latents()

    def set_param(self, key: int | str, value: float) -> None:
        """Set a parameter from the control thread while not processing (tests, setup); live changes go
        through ParamSet events so they land at a sample."""
        self._set_param(int(Param[key.upper()]) if isinstance(key, str) else int(key), value)

    def _panic(self) -> None:
        self.stats.panics += 1
        self.state.voices.all_sound_off()
        self._synth.reset()
        self.state.interval_audio.fill(0.0)

    # ------------------------------------------------------------------------------------------ render
    def _render_interval(self) -> None:
        c = self.config
        state, synth, voices = self.state, self._synth, self.state.voices
        voices.end_interval()
        if self._mpe_own or voices.mpe_on:
            self._voice_latents()
        # Decoder inputs and f0, from the voices' pitch (MIDI) and loudness (dB), by the model's own functions.
        c.f0_input(voices.pitch_midi, out=self._in_f0)
        c.loudness_input(voices.loudness_db, out=self._in_loudness)
        np.copyto(synth.cur.f0, dsp.midi_to_hz(voices.pitch_midi, out=self._tmp_v))    # float64, then stored
        rows = voices.active_rows               # voices 0 .. rows-1 are sounding or fading: render those
        raw = self._step.run(self._gru_flat, rows)
        np.multiply(voices.gain, self._harmonic_gain, out=self._amp_gain_np)
        np.multiply(voices.gain, self._noise_gain_lin, out=self._noise_gain_np)
        synth.set_controls(raw, self._amp_gain_np, self._noise_gain_np, rows)
        onset = voices.onset
        has_onset = rows > 0 and voices.has_onset
        if has_onset:
            for v in range(rows):
                if onset[v] >= 0:
                    synth.restart_voice(v, int(onset[v]))
        record = self._start_record() if self._recorder is not None else None
        synth.render(self._voice_out, rows)
        if has_onset:
            for v in range(rows):
                if onset[v] > 0:
                    self._voice_out_np[v, :onset[v]] = 0.0
        # Mix, check, gain, limit.
        audio = state.interval_audio
        if rows:
            np.add.reduce(self._voice_out_rows[rows], axis=0, out=audio)
        else:
            audio.fill(0.0)
        peak = max(float(audio.max()), -float(audio.min()))     # NaN if any sample is NaN
        if not peak <= self.limiter_threshold:
            if not math.isfinite(peak):
                self._recover(rows)
                peak = max(float(audio.max()), -float(audio.min()))
        gain_start, gain_end = state.output_gain, self._output_gain
        if gain_start != gain_end:
            np.multiply(self._ramp_np, gain_end - gain_start, out=self._tmp_a)
            self._tmp_a += gain_start
            audio *= self._tmp_a
        elif gain_end != 1.0:
            audio *= gain_end
        peak *= max(gain_start, gain_end)
        state.output_gain = gain_end
        if peak > self.limiter_threshold:
            self._limit(audio)
            peak = min(peak, self.limiter_ceiling)
        self._meter[self.stats.intervals % METER_INTERVALS] = peak
        self.stats.intervals += 1
        if record is not None:
            record.output_gain = (gain_start, gain_end)
            record.audio = audio.copy()
            self._recorder(record)

    def _clear_voice_latents(self) -> None:
        """Every voice back to the shared latents (the MPE latent targets changed); set again from the next frame."""
        self._step.clear_voice_z()
        self._mpe_own = False

    def _voice_latents(self) -> None:
        """MPE: each voice's own latents from its channel's CC 74 (a knob position, ``mpe_timbre_latent``) and
        pressure (pushes ``mpe_pressure_latent`` from the shared knob towards its top), both latent ranks (as
        ``latent/<rank>``); only changes reach the decoder (one z row per changed voice)."""
        voices, step = self.state.voices, self._step
        s = voices.settings
        ranked = self.bundle.latents                # by importance rank, as the targets latent/<rank>
        timbre_info = ranked[int(s.mpe_timbre_latent)] if 0 <= s.mpe_timbre_latent < len(ranked) else None
        pressure_info = ranked[int(s.mpe_pressure_latent)] if 0 <= s.mpe_pressure_latent < len(ranked) else None
        if timbre_info is None and pressure_info is None:
            return
        shared = pressure_info.z_to_knob(float(step.z_np[pressure_info.index])) if pressure_info is not None else 0.0
        own = False
        for v in range(self.max_voices):           # set_voice_z passes on changes only
            if timbre_info is not None:
                knob = voices.voice_timbre[v]
                mine = knob == knob                 # NaN: no CC 74 on its channel, the shared knob
                step.set_voice_z(v, timbre_info.index, timbre_info.knob_to_z(knob) if mine else math.nan)
                own = own or mine
            if pressure_info is not None:
                press = voices.voice_pressure[v]
                mine = press == press and press > 0.0
                step.set_voice_z(v, pressure_info.index,
                                 pressure_info.knob_to_z(shared + press * (1.0 - shared)) if mine else math.nan)
                own = own or mine
        self._mpe_own = own

    def output_peak_db(self) -> float:
        """The output's peak over the last ``METER_INTERVALS`` control frames, in dBFS (a level meter for
        other threads: it reads what the audio thread wrote and changes nothing)."""
        peak = float(self._meter.max())
        return 20.0 * math.log10(peak) if peak > 10.0 ** (METER_FLOOR_DB / 20.0) else METER_FLOOR_DB

    def _limit(self, audio: np.ndarray) -> None:
        """Soft limiter: identity below the threshold T, then T + (C - T) tanh((|x| - T) / (C - T)), which never
        reaches the ceiling C (-0.1 dBFS: a chord of any size stays below full scale, so an integer export or a
        converter's inter-sample peak does not clip)."""
        threshold, ceiling = self.limiter_threshold, self.limiter_ceiling
        self.stats.limited_intervals += 1
        knee = ceiling - threshold
        over, soft = self._tmp_a, self._tmp_b
        np.abs(audio, out=over)
        over -= threshold
        np.maximum(over, 0.0, out=over)
        np.multiply(over, 1.0 / knee, out=soft)
        np.tanh(soft, out=soft)
        soft *= knee
        over -= soft
        np.copysign(over, audio, out=over)
        audio -= over
        np.clip(audio, -ceiling, ceiling, out=audio)   # T + (C - T) tanh(.) <= C, but float32 rounding is not

    def _recover(self, rows: int) -> None:
        """Reset every voice whose output or recurrent state went non-finite, and re-mix without them."""
        voice_out = self._voice_out_np[:rows]
        gru = self._gru_flat.numpy()[:rows]
        bad = ~(np.isfinite(voice_out).all(axis=1) & np.isfinite(gru).all(axis=1))
        for v in np.flatnonzero(bad):
            self.state.voices.kill(int(v))
            self._synth.silence_voice(int(v))
            gru[v] = 0.0
            voice_out[v] = 0.0
            self.stats.voice_resets += 1
        audio = self.state.interval_audio
        np.sum(voice_out, axis=0, out=audio)
        if not np.isfinite(audio).all():
            audio.fill(0.0)

    def _start_record(self) -> FrameRecord:
        cur = self._synth.cur
        return FrameRecord(
            f0_hz=torch.tensor(cur.f0), amplitude=torch.tensor(cur.amp), harmonic_distribution=torch.tensor(cur.dist),
            noise_magnitudes=torch.tensor(cur.noise), noise=self._synth.current_noise(), onset=self.state.voices.onset.copy(),
            output_gain=(1.0, 1.0), audio=np.zeros(0, dtype=np.float32))

    # ------------------------------------------------------------------------------------------ info
    def describe(self) -> str:
        """One line for logs and UIs."""
        return (f"Engine(sr={self.sample_rate}, hop={self.hop_size}, block={self.block_size}, voices={self.max_voices}, "
                f"latency={self.latency_samples} samples = {1000.0 * self.latency_samples / max(1, self.sample_rate):.1f} ms, "
                f"decoder={'fused' if self._step.fused else 'module'})")
