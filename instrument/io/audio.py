"""Audio output: a sounddevice OutputStream whose callback only drains the event queue, renders and copies.

The engine must be prepared (its sample rate and block size are the stream's). The callback never raises
(Engine.process catches everything) and counts underflows and callbacks that overran their time budget. It
measures its own load (compute time / block duration) with time.perf_counter into preallocated arrays: a ring
of the latest values (:meth:`AudioOutput.recent_loads`, for a status display) and a histogram of every value
(:meth:`AudioOutput.load_percentiles`). An optional ``tap`` (e.g. a recorder's ``push``) sees every rendered
block; it must not block or allocate. An optional ``block_events(queued, n_frames) -> events`` (a mapping
router's smoothing ramps) may add events to each block. An optional ``effects`` chain
(:class:`~instrument.engine.effects.EffectsChain`, prepared at the stream's rate, block size and channels) processes
each block in place after the engine and before the tap, so recordings include the effects; if it raises, the
error is counted in ``hook_errors`` and the dry block plays.

A dead audio server (jackd killed, a device unplugged) stops the callbacks without an exception, and PortAudio's
``Pa_StopStream`` / ``Pa_AbortStream`` then never return. :meth:`AudioOutput.server_lost` tells it (PortAudio
marks the stream inactive, or no callback arrived for ``stall_s``); :meth:`AudioOutput.close` stops the stream
in a daemon thread and gives up after a timeout, so the caller can still write what it has and exit.
"""
from __future__ import annotations

import atexit
import gc
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from instrument.engine.engine import Engine
from instrument.engine.events import EventQueue

try:                                     # per-thread context switches for ``diagnose``: Linux only
    import resource
    RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)      # macOS has no per-thread usage
except ImportError:                      # Windows has no resource module
    resource, RUSAGE_THREAD = None, None

__all__ = ["AudioOutput", "AudioStats", "rescan_audio_devices", "thread_scheduling"]


def thread_scheduling() -> str:
    """The calling thread's scheduling in words: "real-time (SCHED_FIFO 65)", "normal (not real-time)", or
    "unknown" where the platform does not say."""
    try:
        policy = os.sched_getscheduler(0)
        names = {getattr(os, name): name for name in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, name)}
        if policy in names:
            return f"real-time ({names[policy]} {os.sched_getparam(0).sched_priority})"
        return "normal (not real-time)"
    except (AttributeError, OSError):
        return "unknown"


def rescan_audio_devices() -> None:
    """Re-initialise PortAudio so devices of a sound server started after import (e.g. JACK) appear."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@dataclass
class AudioStats:
    callbacks: int = 0
    underflows: int = 0             # PortAudio reported an output underflow (a gap was heard)
    startup_underflows: int = 0     # of those, in the first second of callbacks (stream start-up)
    late: int = 0                   # callbacks whose compute time exceeded the block's duration
    hook_errors: int = 0            # block_events raised (queued events only) or effects raised (dry block)
    max_callback_ms: float = 0.0
    # How much later than one block after the previous one a callback began (waiting for the CPU, the GIL or the
    # host's clock): time that the load figures do not see. Measured with perf_counter alone: sounddevice's C
    # calls (stream.time) release the GIL, and getting it back inside the callback can cost a switch interval.
    max_start_delay_ms: float = 0.0
    late_starts: int = 0            # callbacks that began more than half a block late


LOAD_BINS_PER_UNIT = 200           # load histogram: 0.5 % bins ...
LOAD_MAX = 4.0                     # ... up to 400 % of the block budget (the last bin collects the rest)
# What --diagnose-callbacks records of each notable callback (times in ms; perf_counter in s at its entry).
SWITCH_FIELDS = ("voluntary_before", "involuntary_before", "voluntary_during", "involuntary_during")
CLOCK_FIELDS = ("cpu_ms",                   # the thread's run time during it (compute_ms less time off the CPU)
                "run_queue_before_ms",      # runnable but not running since the previous callback's end
                "run_queue_during_ms")      # runnable but not running during it (preempted by another thread)
DIAGNOSTIC_FIELDS = ("perf_counter", "compute_ms", "start_delay_ms", "underflow", *SWITCH_FIELDS, *CLOCK_FIELDS)
LOGGED_CALLBACKS = 4096            # underflow times and diagnosed callbacks kept (preallocated; 64: 11 s at block 64)


class AudioOutput:
    """Plays ``engine`` on an output device; events come from ``queue`` (MIDI/OSC threads push to it)."""

    def __init__(self, engine: Engine, queue: EventQueue, *, device=None, channels: int = 2,
                 latency: str | float = "low", tap: Callable[[np.ndarray], None] | None = None,
                 block_events: Callable[[Iterable, int], Iterable] | None = None, effects=None,
                 load_history: int = 8192, diagnose: bool = False, stall_s: float = 3.0):
        if engine.state is None:
            raise ValueError("prepare the engine first")
        self.engine = engine
        self.queue = queue
        self.device = device
        self.channels = int(channels)
        self.latency = latency
        self.stats = AudioStats()
        self._stream = None
        self.tap = tap
        self.block_events = block_events
        self.effects = effects
        self._dry = np.zeros((engine.block_size, max(1, self.channels)), dtype=np.float32)   # effects fallback
        self._budget_s = engine.block_size / engine.sample_rate
        self._previous_start = math.nan                      # perf_counter at the previous callback's entry
        self._late_log = np.zeros((16, 2))                   # (stream seconds, compute ms) of the first late ones
        self._underflow_log = np.zeros(LOGGED_CALLBACKS)     # perf_counter at the first underflows (after start-up)
        # diagnose (benchmarks only: getrusage and the schedstat read allocate small objects per callback): for
        # the first 4096 callbacks that overran, began > half a block late or reported an underflow, the callback
        # thread's context switches before (since the previous callback ended) and during it: voluntary ones mean
        # it waited (for the GIL or a lock), involuntary ones that the kernel took the CPU away; and, from the
        # kernel's per-thread schedstat, the CPU time it ran during the callback (on a VM with steal-time
        # accounting, time the hypervisor took the vCPU away is not counted) and the time it sat runnable on a
        # run queue, before (woken, not yet running) and during the callback.
        self.diagnose = bool(diagnose) and RUSAGE_THREAD is not None     # benchmarks on Linux only
        self._diag = np.zeros((LOGGED_CALLBACKS, len(DIAGNOSTIC_FIELDS)))
        self._diag_count = 0
        self._switches = (0, 0)                              # (voluntary, involuntary) at the previous callback's end
        self._schedstat_fd = -1                              # /proc/thread-self/schedstat of the callback thread
        self._run_queue_ns = 0                               # its run-queue wait at the previous callback's end
        # and every garbage collection while the stream runs (the first 4096): when, how long, which generation,
        # and whether it ran in the callback thread (a collection runs in whichever thread's allocation set it off)
        self._gc_log = np.zeros((LOGGED_CALLBACKS, 4))
        self._gc_count = 0
        self._gc_started = 0.0
        self._callback_thread = -1
        self._blocks_per_second = max(1, math.ceil(engine.sample_rate / engine.block_size))
        self._loads = np.zeros(int(load_history))          # ring of the latest loads (fraction of the budget)
        self._load_count = 0
        self._load_hist = np.zeros(int(LOAD_MAX * LOAD_BINS_PER_UNIT) + 1, dtype=np.int64)
        # watchdog (main thread): the callback count and when it last moved
        self.stall_s = max(float(stall_s), 20.0 * self._budget_s)
        self._watch = (-1, math.inf)
        self.lost = ""                  # why the stream stopped on its own ("" while it plays)
        self.thread_scheduling = ""     # the callback thread's scheduling, read at its first callback

    def _callback(self, outdata, frames, time_info, status) -> None:
        started = time.perf_counter()
        if not self.thread_scheduling:                   # the first callback only (start-up)
            self.thread_scheduling = thread_scheduling()
        usage = resource.getrusage(RUSAGE_THREAD) if self.diagnose else None
        if usage is not None and self._callback_thread == -1:
            self._callback_thread = threading.get_ident()
            gc.callbacks.append(self._log_collection)
        sched = self._thread_clocks() if usage is not None else None
        stats = self.stats
        notable = False                  # began late, overran, or reported an underflow after start-up
        delay = started - self._previous_start - self._budget_s          # nan at the first callback
        self._previous_start = started
        if delay > 0.0:
            if delay * 1000.0 > stats.max_start_delay_ms:
                stats.max_start_delay_ms = delay * 1000.0
            if delay > 0.5 * self._budget_s:
                stats.late_starts += 1
                notable = True
        if status.output_underflow:
            if stats.callbacks < self._blocks_per_second:
                stats.startup_underflows += 1
            else:
                notable = True
                if stats.underflows - stats.startup_underflows < self._underflow_log.shape[0]:
                    self._underflow_log[stats.underflows - stats.startup_underflows] = started
            stats.underflows += 1
        events = self.queue.drain()
        if self.block_events is not None:
            try:
                events = self.block_events(events, frames)
            except Exception:
                stats.hook_errors += 1
                events = self.queue.drain()
        self.engine.process(events, outdata)
        if self.effects is not None:
            self._run_effects(outdata, frames)
        if self.tap is not None:
            self.tap(outdata)
        elapsed = time.perf_counter() - started
        budget = frames / self.engine.sample_rate if frames else self._budget_s
        load = elapsed / budget
        self._loads[self._load_count % self._loads.shape[0]] = load
        self._load_hist[min(int(load * LOAD_BINS_PER_UNIT), self._load_hist.shape[0] - 1)] += 1
        self._load_count += 1
        stats.callbacks += 1
        if elapsed > budget:
            notable = True
            if stats.late < self._late_log.shape[0]:          # when the first late callbacks happened, and how long
                self._late_log[stats.late, 0] = stats.callbacks * self._budget_s
                self._late_log[stats.late, 1] = elapsed * 1000.0
            stats.late += 1
        elif delay + elapsed > budget:     # began a little late and ran a little long: done past its cycle
            notable = True
        if elapsed * 1000.0 > stats.max_callback_ms:
            stats.max_callback_ms = elapsed * 1000.0
        if usage is not None:
            self._record_diagnostics(started, elapsed, delay, bool(status.output_underflow), notable, usage, sched)

    def _log_collection(self, phase: str, info: dict) -> None:
        """gc.callbacks hook (diagnose only): logs each collection's start, duration, generation and thread."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_count < self._gc_log.shape[0]:
            self._gc_log[self._gc_count] = (self._gc_started, (time.perf_counter() - self._gc_started) * 1000.0,
                                            info.get("generation", -1),
                                            threading.get_ident() == self._callback_thread)
            self._gc_count += 1

    def collections(self) -> list[dict]:
        """With ``diagnose``: the garbage collections since the first callback (the first 4096)."""
        return [{"perf_counter": round(float(t), 6), "ms": round(float(ms), 3), "generation": int(g),
                 "in_callback_thread": bool(mine)} for t, ms, g, mine in self._gc_log[:self._gc_count]]

    def _thread_clocks(self) -> tuple[int, int]:
        """(ns run, ns waited on a run queue) of the calling thread so far. The run time is the thread's CPU
        clock (schedstat's own run time only moves at scheduler ticks and switches); the wait is schedstat's (it
        grows when a wait ends, at the switch that runs the thread); 0 where unreadable."""
        run_ns = time.thread_time_ns()
        try:
            if self._schedstat_fd < 0:                   # opened by the callback thread itself: thread-self is it
                self._schedstat_fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            return run_ns, int(os.pread(self._schedstat_fd, 96, 0).split()[1])
        except (OSError, ValueError, IndexError):
            return run_ns, 0

    def _record_diagnostics(self, started: float, elapsed: float, delay: float, underflow: bool, notable: bool,
                         usage, sched: tuple[int, int]) -> None:
        end = resource.getrusage(RUSAGE_THREAD)
        end_sched = self._thread_clocks()
        before = (usage.ru_nvcsw - self._switches[0], usage.ru_nivcsw - self._switches[1])
        self._switches = (end.ru_nvcsw, end.ru_nivcsw)
        queued_before_ns = sched[1] - self._run_queue_ns
        self._run_queue_ns = end_sched[1]
        if notable and self._diag_count < self._diag.shape[0] and self.stats.callbacks > 1:
            self._diag[self._diag_count] = (started, elapsed * 1000.0, delay * 1000.0, underflow, *before,
                                            end.ru_nvcsw - usage.ru_nvcsw, end.ru_nivcsw - usage.ru_nivcsw,
                                            (end_sched[0] - sched[0]) / 1e6, queued_before_ns / 1e6,
                                            (end_sched[1] - sched[1]) / 1e6)
            self._diag_count += 1

    def _run_effects(self, outdata: np.ndarray, frames: int) -> None:
        dry = self._dry
        keep = frames <= dry.shape[0] and outdata.ndim == 2 and outdata.shape[1] == dry.shape[1]
        if keep:
            np.copyto(dry[:frames], outdata)
        try:
            self.effects.process(outdata)
        except Exception:
            self.stats.hook_errors += 1
            if keep:
                np.copyto(outdata, dry[:frames])

    def late_callbacks(self) -> list[tuple[float, float]]:
        """(seconds into the stream, compute ms) of the first 16 callbacks that took longer than their block."""
        n = min(self.stats.late, self._late_log.shape[0])
        return [(round(float(t), 3), round(float(ms), 2)) for t, ms in self._late_log[:n]]

    def underflow_times(self) -> list[float]:
        """time.perf_counter() (CLOCK_MONOTONIC on Linux: comparable across processes) of the callbacks that
        reported the first LOGGED_CALLBACKS underflows after the first second; for matching them with other
        events."""
        n = min(self.stats.underflows - self.stats.startup_underflows, self._underflow_log.shape[0])
        return [round(float(t), 6) for t in self._underflow_log[:n]]

    def callback_diagnostics(self) -> list[dict]:
        """With ``diagnose``: the notable callbacks (overran, began late, or reported an underflow), each with the
        callback thread's context switches, CPU time and run-queue wait (DIAGNOSTIC_FIELDS)."""
        def value(key: str, v: float):
            if key in SWITCH_FIELDS:
                return int(v)
            if key == "underflow":
                return bool(v)
            return round(float(v), 6 if key == "perf_counter" else 3)

        return [{key: value(key, v) for key, v in zip(DIAGNOSTIC_FIELDS, values)}
                for values in self._diag[:self._diag_count]]

    def summary(self) -> dict:
        """The stream's figures for an exit summary (``sdga-play --stats-json``, the soak's null player): counts,
        load percentiles, the logged underflows and late callbacks, and with ``diagnose`` the diagnosed callbacks
        and collections; the audio thread's scheduling."""
        stats = self.stats
        median, p99 = self.load_percentiles(50, 99)
        return {"callbacks": stats.callbacks, "underflows": stats.underflows,
                "startup_underflows": stats.startup_underflows, "late_callbacks": stats.late,
                "late_callback_log": self.late_callbacks(), "underflow_times": self.underflow_times(),
                "callback_diagnostics": self.callback_diagnostics(), "collections": self.collections(),
                "audio_thread": self.thread_scheduling,
                "late_starts": stats.late_starts, "max_start_delay_ms": stats.max_start_delay_ms,
                "load_median": median, "load_p99": p99, "max_callback_ms": stats.max_callback_ms}

    def recent_loads(self, seconds: float = 1.0) -> np.ndarray:
        """Callback loads (compute time / block duration) of about the last ``seconds`` (a copy; any thread)."""
        count = self._load_count
        n = min(count, self._loads.shape[0], max(1, int(round(seconds * self._blocks_per_second))))
        if n == 0:
            return np.zeros(0)
        index = (np.arange(count - n, count) % self._loads.shape[0])
        return self._loads[index].copy()

    def load_percentiles(self, *percentiles: float) -> list[float]:
        """Percentiles of every callback's load so far (0.5 % resolution; nan before the first callback)."""
        hist = self._load_hist.copy()
        total = int(hist.sum())
        if total == 0:
            return [math.nan] * len(percentiles)
        cumulative = np.cumsum(hist)
        return [float(np.searchsorted(cumulative, total * p / 100.0) + 0.5) / LOAD_BINS_PER_UNIT for p in percentiles]

    def start(self) -> "AudioOutput":
        import sounddevice as sd

        if self._stream is None:
            self._previous_start = math.nan
            self._stream = sd.OutputStream(samplerate=self.engine.sample_rate, blocksize=self.engine.block_size,
                                           device=self.device, channels=self.channels, dtype="float32",
                                           latency=self.latency, callback=self._callback)
            self._stream.start()
        return self

    @property
    def device_latency_s(self) -> float:
        """What PortAudio reports as the stream's output latency (0 before start)."""
        return float(self._stream.latency) if self._stream is not None else 0.0

    @property
    def output_latency_s(self) -> float:
        """The device's reported output latency plus the engine's control delay."""
        device = self._stream.latency if self._stream is not None else 0.0
        return float(device) + self.engine.control_delay_samples / self.engine.sample_rate

    def server_lost(self, now: float | None = None) -> str:
        """Main thread, every few hundred ms while playing: "" while the stream plays, else why it stopped on its
        own (PortAudio marked it inactive: the server shut down; or no callback for ``stall_s``). Sticky."""
        if self.lost or self._stream is None:
            return self.lost
        now = time.monotonic() if now is None else now
        count = self.stats.callbacks
        if count != self._watch[0]:
            self._watch = (count, now)
        if not self._stream.active:
            self.lost = "the audio server stopped the stream (was it shut down or killed?)"
        elif now - self._watch[1] > self.stall_s:
            self.lost = f"no audio callback for {now - self._watch[1]:.1f} s (the audio server hangs or died)"
        return self.lost

    def close(self, timeout_s: float = 3.0) -> bool:
        """Stop and close the stream; False when PortAudio did not return within ``timeout_s`` (a dead server):
        the stream is then abandoned to a daemon thread, and sounddevice's exit handler (which would stop it
        again and hang, or abort in Pa_Terminate) is unregistered so the process can exit."""
        if self._log_collection in gc.callbacks:
            gc.callbacks.remove(self._log_collection)
        stream, self._stream = self._stream, None
        if stream is None:
            self._close_schedstat()
            return True
        lost = bool(self.lost) or not stream.active

        def stop() -> None:
            for call in (stream.abort if lost else stream.stop, stream.close):
                try:
                    call()
                except Exception:       # PortAudioError from a server that is gone: nothing left to stop
                    pass

        thread = threading.Thread(target=stop, name="sdga-audio-close", daemon=True)
        thread.start()
        thread.join(min(timeout_s, 0.5) if lost else timeout_s)      # a dead server's abort hangs: wait little
        if thread.is_alive():
            import sounddevice as sd

            atexit.unregister(sd._exit_handler)
            self.lost = self.lost or "the audio stream did not stop (the audio server hangs or died)"
            return False
        self._close_schedstat()
        return True

    def _close_schedstat(self) -> None:
        """Once no callback runs: the fd belongs to the stopped stream's callback thread; a new one opens its own."""
        if self._schedstat_fd >= 0:
            fd, self._schedstat_fd = self._schedstat_fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "AudioOutput":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
