"""The audio spool (issue 12, the top of the promise): training keeps a corpus's audio on disk as memmaps, so its
memory does not grow with the corpus; the spool folder is the run's own and is removed however the run ends."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import training.augment  # noqa: F401  (imported by the datasets' random gain: imported here, not traced)
from training.corpus import load_corpus
from training.data import Example, RandomWindows, TiledWindows, split_examples
from training.features import Features
from training.spool import SPOOL_PREFIX, _host_tag, audio_spool, release_pages, remove_stale_spools

SR = 48000
HOP = 128


def _write_tones(folder: Path, n_files: int, seconds: float) -> int:
    """n_files harmonic tones with a little noise (distinct per file); returns the total samples written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n_files):
        t = np.arange(int(seconds * SR)) / SR
        f0 = 180.0 * 2 ** (i / 12)
        y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5)) * 0.2 + 0.01 * rng.standard_normal(t.size)
        sf.write(str(folder / f"tone{i:02d}.wav"), y.astype(np.float32), SR, subtype="FLOAT")
        total += t.size
    return total


def _spooled_in(array: np.ndarray, folder: Path) -> bool:
    a = array
    while a is not None and not isinstance(a, np.memmap):
        a = a.base
    return isinstance(a, np.memmap) and Path(a.filename).parent == folder


# ---------------------------------------------------------------------------------------------- the spool


def test_spool_writes_read_only_memmaps_and_is_removed_at_the_end(tmp_path):
    audio = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)
    with audio_spool(tmp_path / "spool") as spool:
        folder = spool.folder
        assert folder.parent == tmp_path / "spool" and folder.name.startswith(SPOOL_PREFIX)
        m = spool.write(audio, "a name/with odd chars")
        assert isinstance(m, np.memmap) and Path(m.filename).parent == folder and m.dtype == np.float32
        assert not m.flags.writeable
        assert m.tobytes() == audio.tobytes()                  # bit-identical
        release_pages(m[100:200])                              # a view: the mapping behind it; values unchanged
        assert m.tobytes() == audio.tobytes()
        release_pages(audio)                                   # an in-memory array: nothing to do
    assert not folder.exists()
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_spool_is_removed_on_an_error_or_ctrl_c(tmp_path, error):
    with pytest.raises(error):
        with audio_spool(tmp_path) as spool:
            spool.write(np.zeros(100, np.float32))
            folder = spool.folder
            raise error()
    assert not folder.exists()


def test_spools_left_by_killed_runs_are_removed_by_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host_tag()
    stale = tmp_path / f"{SPOOL_PREFIX}{host}-{dead.pid}-abc_1"
    alive = tmp_path / f"{SPOOL_PREFIX}{host}-{os.getppid()}-def_2"      # a run still going
    other_host = tmp_path / f"{SPOOL_PREFIX}not-{socket.gethostname()}x-{dead.pid}-ghi"
    for folder in (stale, alive, other_host):
        folder.mkdir()
        (folder / "000000-a.npy").write_bytes(b"x")
    with audio_spool(tmp_path):
        assert not stale.exists() and alive.exists() and other_host.exists()
    assert remove_stale_spools(tmp_path / "missing") == []


# ----------------------------------------------------------------------------------- corpus and examples


def test_spooled_corpus_is_memmaps_with_the_same_values(tmp_path):
    _write_tones(tmp_path / "c", 3, 0.5)
    in_memory = load_corpus(tmp_path / "c", log=None)
    with audio_spool(tmp_path / "spool") as spool:
        spooled = load_corpus(tmp_path / "c", log=None, spool=spool)
        for a, b in zip(in_memory.files, spooled.files):
            assert isinstance(b.audio, np.memmap) and _spooled_in(b.audio, spool.folder)
            assert b.audio.tobytes() == a.audio.tobytes() and b.duration_s == a.duration_s


def test_building_training_data_from_a_spooled_corpus_holds_no_audio_in_memory(tmp_path):
    """Loading a spooled corpus holds one file at a time; making examples, splitting (by file and by segment),
    joining and the windowed datasets take views of the memmaps, never copies of the audio."""
    n_files, seconds = 12, 2.0
    total_bytes = 4 * _write_tones(tmp_path / "c", n_files, seconds)
    load_corpus(tmp_path / "c", log=None)             # once untraced: librosa's lazy imports are not the corpus
    with audio_spool(tmp_path / "spool") as spool:
        tracemalloc.start()
        try:
            corpus = load_corpus(tmp_path / "c", log=None, spool=spool)
            load_current, load_peak = tracemalloc.get_traced_memory()
            examples = []
            for f in corpus.files:
                n = len(f.audio) // HOP
                feats = Features(np.full(n, 220.0, np.float32), np.ones(n, np.float32), np.ones(n, bool),
                                 np.full(n, -20.0, np.float32))
                examples.append(Example(f.path.stem, f.audio, feats))
            tracemalloc.reset_peak()
            before_build = tracemalloc.get_traced_memory()[0]
            datasets = []
            for n_examples in (len(examples), 2):                    # by file, then by segment
                train, val, _ = split_examples(examples[:n_examples], 0.2, 0, HOP)
                datasets += [RandomWindows(train, 64, HOP, 16, seed=0, gain_db_range=6.0),
                             TiledWindows(val, 64, HOP)]
            for ds in datasets:
                for i in range(len(ds)):
                    ds[i]
            build_current, build_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert all(_spooled_in(e.audio, spool.folder) for ds in datasets[:1] for e in ds.examples)
    one_file = total_bytes / n_files
    assert load_current < 0.05 * total_bytes, (load_current, total_bytes)     # nothing kept in memory
    assert load_peak < 8 * one_file, (load_peak, one_file)                    # one file in flight at a time
    assert build_peak - before_build < 0.05 * total_bytes, (build_peak - before_build, total_bytes)  # windows only


def test_training_data_from_a_spool_is_bit_identical(tmp_path):
    """prepare_data with a spool (what run_training does) gives the examples, variants and windows it gives
    with the audio in memory, bit for bit; and every example's audio is a memmap of the spool."""
    from training.train import TrainConfig, prepare_data

    _write_tones(tmp_path / "c", 3, 1.0)
    cfg = TrainConfig(corpus_dir=tmp_path / "c", cache_dir=tmp_path / "cache", progress=False, augment=True,
                      augment_variants=1, window_seconds=0.25, val_fraction=0.3)
    in_memory = prepare_data(cfg, log=lambda *_: None)
    with audio_spool(tmp_path / "spool") as spool:
        spooled = prepare_data(cfg, log=lambda *_: None, spool=spool)
        assert spooled.split == in_memory.split and "~aug" in spooled.train[-1].name
        for a_list, b_list in ((in_memory.train, spooled.train), (in_memory.val, spooled.val)):
            assert [e.name for e in a_list] == [e.name for e in b_list]
            for a, b in zip(a_list, b_list):
                assert _spooled_in(b.audio, spool.folder), b.name
                assert b.audio.tobytes() == a.audio.tobytes(), b.name
                assert b.features.loudness_db.tobytes() == a.features.loudness_db.tobytes()
        frames = cfg.window_frames
        for make in (lambda d: RandomWindows(d.train, frames, HOP, 8, seed=3, gain_db_range=6.0),
                     lambda d: TiledWindows(d.val, frames, HOP)):
            da, db = make(in_memory), make(spooled)
            for i in range(len(da)):
                wa, wb = da[i], db[i]
                assert all(wa[k].numpy().tobytes() == wb[k].numpy().tobytes() for k in wa)


def test_a_training_run_removes_its_spool_even_when_it_fails(tmp_path, monkeypatch):
    import training.train as train

    seen = []

    def failing_run(cfg, log, spool):
        seen.append(spool.folder)
        assert spool.folder.parent == tmp_path / "cache" / "spool" and spool.folder.is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_run_training", failing_run)
    with pytest.raises(KeyboardInterrupt):
        train.run_training(train.TrainConfig(corpus_dir=tmp_path, cache_dir=tmp_path / "cache"))
    assert seen and not seen[0].exists() and list((tmp_path / "cache" / "spool").iterdir()) == []
