"""Record what the instrument plays: the audio callback copies each block into a preallocated ring buffer (no
lock, no allocation), a writer thread drains it to a sound file.

One producer (the callback, :meth:`RingRecorder.push`) and one consumer (the writer thread) share two
monotonically increasing frame counters; each only ever assigns its own (an atomic store under the GIL), so a
stale read is only ever conservative. When the writer falls behind by more than the ring holds, whole blocks
are dropped and counted (``dropped_blocks``): the callback never waits for the disk.

After each write the writer has libsndfile rewrite the file's header (``SFC_UPDATE_HEADER_NOW``), so the file on
disk is a valid sound file holding everything written so far even if the process is killed (``kill -9``, a
crash) before :meth:`RingRecorder.close`: a recording never loses more than the last ``poll_s`` of audio.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

__all__ = ["RingRecorder"]

SFC_UPDATE_HEADER_NOW = 0x1060           # libsndfile's sf_command: write the header for the frames so far


class RingRecorder:
    """Records ``channels`` channels at ``sample_rate`` to ``path`` (WAV: 32-bit float, so nothing is clipped
    or hidden; other formats: soundfile's default subtype). Call :meth:`start` before the stream starts and
    :meth:`close` after it stopped."""

    def __init__(self, path: Path | str, sample_rate: int, channels: int = 1, ring_seconds: float = 4.0,
                 poll_s: float = 0.05):
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.capacity = max(1, int(ring_seconds * self.sample_rate))
        self.poll_s = float(poll_s)
        self._ring = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._written = 0          # frames the producer has put in the ring (producer assigns)
        self._read = 0             # frames the writer has taken out (writer assigns)
        self.blocks = 0
        self.dropped_blocks = 0
        self.error = ""
        self._file = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ audio thread
    def push(self, block: np.ndarray) -> None:
        """Copy a block (frames,) or (frames, >= channels) into the ring; drop it whole when there is no room."""
        frames = block.shape[0]
        if frames > self.capacity - (self._written - self._read) or self.error:
            self.dropped_blocks += 1
            return
        start = self._written % self.capacity
        first = min(frames, self.capacity - start)
        if block.ndim == 1:
            self._ring[start:start + first, 0] = block[:first]
            if first < frames:
                self._ring[:frames - first, 0] = block[first:]
        else:
            self._ring[start:start + first] = block[:first, :self.channels]
            if first < frames:
                self._ring[:frames - first] = block[first:, :self.channels]
        self.blocks += 1
        self._written += frames

    # ------------------------------------------------------------------------------------------ writer
    @property
    def frames_written(self) -> int:
        return self._read

    def start(self) -> "RingRecorder":
        import soundfile as sf

        if self._thread is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            subtype = "FLOAT" if self.path.suffix.lower() == ".wav" else None
            self._file = sf.SoundFile(str(self.path), "w", self.sample_rate, self.channels, subtype=subtype)
            self._thread = threading.Thread(target=self._run, name="sdga-record", daemon=True)
            self._thread.start()
        return self

    def _drain(self) -> None:
        available = self._written - self._read
        if available <= 0 or self._file is None:
            return
        start = self._read % self.capacity
        first = min(available, self.capacity - start)
        try:
            self._file.write(self._ring[start:start + first])
            if first < available:
                self._file.write(self._ring[:available - first])
            _update_header(self._file)
        except Exception as exc:              # disk full, file removed: stop recording, keep playing
            self.error = str(exc) or type(exc).__name__
        self._read += available

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._drain()
            if self.error:
                return

    def close(self) -> None:
        """Stop the writer after writing everything pushed so far, and close the file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        if self._file is not None:
            if not self.error:
                self._drain()
            self._file.close()
            self._file = None

    @property
    def seconds(self) -> float:
        return self._read / self.sample_rate

    def __enter__(self) -> "RingRecorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _update_header(file) -> None:
    """Make the file on disk complete for what was written so far (soundfile has no public call for it)."""
    import soundfile as sf

    sf._snd.sf_command(file._file, SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)
