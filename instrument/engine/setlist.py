"""A set list's engines: several prepared :class:`~instrument.engine.engine.Engine` objects, one playing, and an
equal-power crossfade when the player switches songs.

Lifecycle as the engine's: :meth:`SetEngine.prepare` prepares every song's engine and allocates the fade table and
the mixing buffers; :meth:`SetEngine.process` renders one block (the audio callback's only call); :meth:`reset`.

Switching. A :class:`~instrument.engine.events.SongSelect` event in the block's events (pushed by a controller
thread into the same :class:`~instrument.engine.events.EventQueue` as everything else, so the order is kept)
switches at the block's start: the events before it go to the outgoing engine, the ones after it to the new
song's. The outgoing engine's held keys are released (``all_notes_off``), and from that block on every engine
has a presence ``p`` (samples, 0..F, F = ``crossfade_ms`` at the device rate) that moves one step per sample:
up for the active song, down for the others, and an engine is heard at gain ``sin(p / F * pi / 2)``. Two engines
crossing over therefore sum at constant power (``sin^2 + cos^2 = 1``); a switch during a crossfade turns each
engine round from where it is (no jump, whatever the switching rate). An engine whose presence reaches 0 is
reset (silent, its voices idle, latents and parameters kept) and costs nothing until it is chosen again.

Cost. In steady state the active engine renders straight into the output (no copy). While fading, each audible
engine renders into a preallocated scratch block that is scaled and summed. The callback allocates only the
event lists of a block that holds a switch (a few small Python objects, freed at once): the buffers and the
fade table are made in :meth:`prepare`.

Ramps (``block_events``): each song's router has its own ramps; the active song's are advanced once per block
and their events go to the active engine (the outgoing song's ramps pause where they are).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np

from instrument.engine.engine import Engine
from instrument.engine.events import SongSelect

__all__ = ["SetEngine", "DEFAULT_CROSSFADE_MS", "MAX_SWITCH_LOG"]

DEFAULT_CROSSFADE_MS = 50.0
MAX_SWITCH_LOG = 256            # the first switches are logged (block number, song) for the summary
_CHUNK = 4096                   # mixing buffers hold this many frames (a larger block is mixed in pieces)


class SetEngine:
    """Plays one of ``engines`` (unprepared or prepared :class:`Engine` objects, one per song) with crossfades."""

    def __init__(self, engines: Sequence[Engine], *, crossfade_ms: float = DEFAULT_CROSSFADE_MS,
                 block_events: Sequence[Callable[[Iterable, int], Iterable] | None] | None = None,
                 first: int = 0):
        if not engines:
            raise ValueError("a set needs at least one engine")
        if not (math.isfinite(crossfade_ms) and crossfade_ms >= 0.0):
            raise ValueError(f"crossfade_ms must be >= 0, got {crossfade_ms}")
        if not 0 <= first < len(engines):
            raise ValueError(f"no song {first}: {len(engines)} songs")
        if block_events is not None and len(block_events) != len(engines):
            raise ValueError("one block_events (or None) per engine")
        self.engines = tuple(engines)
        self.crossfade_ms = float(crossfade_ms)
        self.block_events = tuple(block_events) if block_events is not None else (None,) * len(engines)
        self.active = int(first)                 # the song heard (written by the audio thread only)
        self.sample_rate = 0
        self.block_size = 0
        self.max_voices = 0
        self.fade_samples = 0
        self.switches = 0                        # switches applied
        self.refused = 0                         # SongSelect events for songs that do not exist
        self.hook_errors = 0                     # a song's block_events raised (its queued events played alone)
        self.errors = 0                          # exceptions caught in process (the block was silenced)
        self.last_error = ""
        self.blocks = 0
        self._first = int(first)

    # ------------------------------------------------------------------------------------------ lifecycle
    def prepare(self, sample_rate: int, block_size: int = 512, max_voices: int = 8) -> None:
        """Prepare every engine at the device rate (one already prepared so is kept as it is) and allocate the
        fade table and mixing buffers."""
        for engine in self.engines:
            if engine.state is None or (engine.sample_rate, engine.block_size, engine.max_voices) != (
                    int(sample_rate), int(block_size), int(max_voices)):
                engine.prepare(sample_rate, block_size, max_voices)
        self.sample_rate, self.block_size, self.max_voices = int(sample_rate), int(block_size), int(max_voices)
        F = max(1, int(round(self.crossfade_ms * self.sample_rate / 1000.0)))
        self.fade_samples = F
        # gain(p) = sin(p / F * pi / 2) for p = 0..F, padded with F + _CHUNK ones / zeros so a block reads one slice
        ramp = np.sin(np.arange(F + 1) / F * (math.pi / 2.0)).astype(np.float32)
        ramp[0], ramp[F] = 0.0, 1.0
        self._rise = np.concatenate([ramp, np.ones(_CHUNK, dtype=np.float32)])           # p, p+1, ... read forward
        self._fall = np.concatenate([ramp[::-1], np.zeros(_CHUNK, dtype=np.float32)])    # F-p, ... read forward
        n = len(self.engines)
        self._presence = np.zeros(n, dtype=np.int64)
        self._presence[self._first] = F
        self.active = self._first
        self._scratch = np.zeros(_CHUNK, dtype=np.float32)
        self._mix = np.zeros(_CHUNK, dtype=np.float32)
        self._blocks_active = np.zeros(n, dtype=np.int64)
        self._switch_log = np.zeros((MAX_SWITCH_LOG, 2), dtype=np.int64)
        self._fading = False

    def reset(self) -> None:
        """Silence every engine; the first song becomes the active one."""
        for engine in self.engines:
            engine.reset()
        if self.fade_samples:
            self._presence.fill(0)
            self._presence[self._first] = self.fade_samples
            self.active = self._first
            self._fading = False

    # ------------------------------------------------------------------------------------------ views
    @property
    def engine(self) -> Engine:
        """The active song's engine."""
        return self.engines[self.active]

    @property
    def bundle(self):
        return self.engine.bundle

    @property
    def state(self):
        return self.engine.state

    @property
    def stats(self):
        return self.engine.stats

    @property
    def voices(self):
        return self.engine.voices

    @property
    def hop_size(self) -> int:
        return self.engine.hop_size

    @property
    def control_delay_samples(self) -> int:
        return self.engine.control_delay_samples

    @property
    def latency_samples(self) -> int:
        return self.engine.latency_samples

    @property
    def fading(self) -> bool:
        """True while more than one engine is heard."""
        return self._fading

    def output_peak_db(self) -> float:
        return self.engine.output_peak_db()

    def describe(self) -> str:
        return (f"SetEngine({len(self.engines)} songs, crossfade {self.crossfade_ms:g} ms = {self.fade_samples} "
                f"samples); song 0: {self.engines[0].describe()}")

    def seconds_played(self) -> list[float]:
        """Seconds each song was the active one (a copy; any thread)."""
        return [float(b) * self.block_size / max(1, self.sample_rate) for b in self._blocks_active]

    def switch_log(self) -> list[tuple[float, int]]:
        """(seconds into the stream, song) of the first :data:`MAX_SWITCH_LOG` switches."""
        n = min(self.switches, MAX_SWITCH_LOG)
        return [(round(float(b) * self.block_size / max(1, self.sample_rate), 6), int(i))
                for b, i in self._switch_log[:n]]

    # ------------------------------------------------------------------------------------------ process
    def process(self, events: Iterable, out) -> None:
        """Render one block into ``out`` (np.ndarray (n,) or (n, channels): every channel gets the mono mix).
        Never raises: on an error the block is silenced and counted."""
        try:
            self._process(events, out)
        except Exception as exc:
            self.errors += 1
            self.last_error = repr(exc)
            try:
                out.fill(0.0)
            except Exception:
                pass

    def _process(self, events: Iterable, out: np.ndarray) -> None:
        n = out.shape[0]
        old = self.active
        events = events if isinstance(events, list) else list(events)
        before = None
        cut = -1
        for k, event in enumerate(events):           # the last SongSelect wins
            if type(event) is SongSelect:
                if 0 <= event.index < len(self.engines):
                    cut = k
                else:
                    self.refused += 1
        if cut >= 0:
            new = int(events[cut].index)
            before, events = events[:cut], events[cut + 1:]
            if new == old:                           # the song already playing: nothing to switch
                events, before = before + events, None
            else:
                self.active = new
                if self.switches < MAX_SWITCH_LOG:
                    self._switch_log[self.switches, 0] = self.blocks
                    self._switch_log[self.switches, 1] = new
                self.switches += 1
                self._fading = True
        active = self.active
        hook = self.block_events[active]
        if hook is not None:
            try:
                events = hook(events, n)
            except Exception:
                self.hook_errors += 1
        self._blocks_active[active] += 1
        self.blocks += 1
        if not self._fading:
            self.engines[active].process(events, out)
            return
        mono = out if out.ndim == 1 else out[:, 0]
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            self._mix_chunk(mono[start:stop], events if start == 0 else (), before if start == 0 else None, old)
        if out.ndim == 2 and out.shape[1] > 1:
            out[:, 1:] = mono[:, None]
        self._fading = int(np.count_nonzero(self._presence)) > 1 or self._presence[active] < self.fade_samples

    def _mix_chunk(self, out: np.ndarray, events, before, old: int) -> None:
        m = out.shape[0]
        F = self.fade_samples
        mix, scratch = self._mix[:m], self._scratch[:m]
        mix.fill(0.0)
        presence = self._presence
        for i, engine in enumerate(self.engines):
            p = int(presence[i])
            if i == self.active:
                gain = self._rise[p + 1:p + 1 + m]
                engine.process(events, scratch)
                presence[i] = min(F, p + m)
            elif p > 0:
                gain = self._fall[F - p + 1:F - p + 1 + m]
                if before is not None and i == old:      # the block of the switch: then release its keys
                    engine.process(before, scratch)
                    engine.voices.all_notes_off(engine.state.position)
                else:
                    engine.process((), scratch)
                presence[i] = max(0, p - m)
                if presence[i] == 0:
                    engine.reset()
            else:
                continue
            scratch *= gain
            mix += scratch
        # Two engines, each below its limiter's ceiling, can add up to sqrt(2) of it mid-fade (correlated sounds).
        # (ufuncs, not np.clip: its Python wrapper leaves objects behind that the allocation test sees)
        ceiling = self.engines[self.active].limiter_ceiling
        np.minimum(mix, ceiling, out=mix)
        np.maximum(mix, -ceiling, out=out)
