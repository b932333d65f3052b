"""Contract of the recorder ring: every pushed block reaches the file in order (across wrap-arounds), a full ring
drops whole blocks and counts them, the audio-thread side allocates nothing."""
from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import soundfile as sf

from instrument.io.recording import RingRecorder


def test_blocks_reach_the_file_in_order(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((n, 2)).astype(np.float32) for n in [128] * 50 + [65, 1, 300]]
    with RingRecorder(tmp_path / "take.wav", 48000, channels=1, ring_seconds=0.01, poll_s=0.001) as recorder:
        for block in blocks:          # a 480-frame ring: wraps many times; wait for room like a slow callback
            while block.shape[0] > recorder.capacity - (recorder._written - recorder._read):
                pass
            recorder.push(block)
    audio, rate = sf.read(str(tmp_path / "take.wav"), dtype="float32")
    assert rate == 48000 and recorder.dropped_blocks == 0 and recorder.blocks == len(blocks)
    np.testing.assert_array_equal(audio, np.concatenate([b[:, 0] for b in blocks]))   # float WAV: exact
    assert recorder.seconds == len(audio) / 48000


def test_full_ring_drops_whole_blocks(tmp_path):
    recorder = RingRecorder(tmp_path / "take.flac", 48000, channels=1, ring_seconds=0.01)   # not started: no drain
    block = np.ones(128, dtype=np.float32)
    for _ in range(5):
        recorder.push(block)
    assert (recorder.blocks, recorder.dropped_blocks) == (3, 2)


def test_push_allocates_nothing(tmp_path):
    """Neither kept nor transient: the peak of traced memory during 200 pushes stays within a few Python
    objects of the start (a 2 KB scratch buffer per push, freed at once, would show in the peak)."""
    recorder = RingRecorder(tmp_path / "take.wav", 48000, ring_seconds=1.0)
    block = np.ones((128, 2), dtype=np.float32)
    recorder.push(block)
    tracemalloc.start()
    try:
        recorder.push(block)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            recorder.push(block)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - before < 1024, current - before
    assert peak - before < 1024, peak - before


def test_file_is_complete_before_close(tmp_path):
    """What a killed process leaves (no close, no final header): the file on disk already holds every frame the
    writer took, as a valid WAV."""
    import time

    block = np.linspace(-1, 1, 128, dtype=np.float32)
    recorder = RingRecorder(tmp_path / "take.wav", 48000, poll_s=0.005).start()
    try:
        for _ in range(40):
            recorder.push(block)
        deadline = time.monotonic() + 10.0
        while recorder.frames_written < 40 * 128 and time.monotonic() < deadline:
            time.sleep(0.01)
        data = (tmp_path / "take.wav").read_bytes()       # the writer still has it open
        audio, rate = sf.read(str(tmp_path / "take.wav"), dtype="float32")
    finally:
        recorder.close()
    assert rate == 48000 and len(audio) == 40 * 128
    np.testing.assert_array_equal(audio, np.tile(block, 40))
    # libsndfile forgives wrong sizes; other readers trust the header: RIFF and data chunk sizes must be right
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    at = data.index(b"data")
    assert struct.unpack("<I", data[at + 4:at + 8])[0] == 40 * 128 * 4
