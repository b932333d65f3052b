"""Audio output: a sounddevice OutputStream whose callback only drains the event queue, renders and copies.

The engine must be prepared (its sample rate and block size are the stream's). The callback never raises
(Engine.process catches everything) and counts underflows and callbacks that overran their time budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .engine import Engine
from .events import EventQueue

__all__ = ["AudioOutput", "AudioStats", "rescan_audio_devices"]


def rescan_audio_devices() -> None:
    """Re-initialise PortAudio so devices of a sound server started after import (e.g. JACK) appear."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@dataclass
class AudioStats:
    callbacks: int = 0
    underflows: int = 0             # PortAudio reported an output underflow (a gap was heard)
    late: int = 0                   # callbacks whose compute time exceeded the block's duration
    max_callback_ms: float = 0.0


class AudioOutput:
    """Plays ``engine`` on an output device; events come from ``queue`` (MIDI/OSC threads push to it)."""

    def __init__(self, engine: Engine, queue: EventQueue, *, device=None, channels: int = 2,
                 latency: str | float = "low"):
        if engine.state is None:
            raise ValueError("prepare the engine first")
        self.engine = engine
        self.queue = queue
        self.device = device
        self.channels = int(channels)
        self.latency = latency
        self.stats = AudioStats()
        self._stream = None
        self._budget_s = engine.block_size / engine.sample_rate

    def _callback(self, outdata, frames, time_info, status) -> None:
        started = time.perf_counter()
        stats = self.stats
        if status.output_underflow:
            stats.underflows += 1
        self.engine.process(self.queue.drain(), outdata)
        elapsed = time.perf_counter() - started
        stats.callbacks += 1
        if elapsed > self._budget_s:
            stats.late += 1
        if elapsed * 1000.0 > stats.max_callback_ms:
            stats.max_callback_ms = elapsed * 1000.0

    def start(self) -> "AudioOutput":
        import sounddevice as sd

        if self._stream is None:
            self._stream = sd.OutputStream(samplerate=self.engine.sample_rate, blocksize=self.engine.block_size,
                                           device=self.device, channels=self.channels, dtype="float32",
                                           latency=self.latency, callback=self._callback)
            self._stream.start()
        return self

    @property
    def output_latency_s(self) -> float:
        """The device's reported output latency plus the engine's control delay."""
        device = self._stream.latency if self._stream is not None else 0.0
        return float(device) + self.engine.control_delay_samples / self.engine.sample_rate

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
            finally:
                self._stream.close()
                self._stream = None

    def __enter__(self) -> "AudioOutput":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
