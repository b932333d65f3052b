"""Training faults injected for real (issue 12): corrupt caches and checkpoints, kill -9, NaN features.

Each test breaks something the way it breaks for a user (a truncated file, a NaN written into a cache entry,
SIGKILL of the process) and checks what is reported and what is kept.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from training import features as F
from training.features import FeatureSettings, extract_corpus_features_reported, features_cache_path

SETTINGS = FeatureSettings()


def _tone(f_hz: float, seconds: float, sample_rate: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * f_hz * t) + 0.1 * np.sin(4 * np.pi * f_hz * t)).astype(np.float32)


# -------------------------------------------------------------------------------------------- feature cache


def test_nan_loudness_cache_entry_is_rejected_recomputed_and_reported(tmp_path, monkeypatch):
    audio = _tone(220.0, 0.3)
    (expected,), first = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False,
                                                          names=["a.wav"])
    assert (first.from_cache, first.computed, first.recomputed) == (0, 1, 0)
    path = features_cache_path(tmp_path, audio, SETTINGS)
    loudness = expected.loudness_db.copy()
    loudness[3] = np.nan                                    # the entry a user found: NaN loudness
    F.save_npz_atomic(path, f0_hz=expected.f0_hz, voiced_prob=expected.voiced_prob, voiced=expected.voiced,
                      loudness_db=loudness)

    calls = []
    real = F.pyin_native
    monkeypatch.setattr(F, "pyin_native", lambda *a, **k: calls.append(1) or real(*a, **k))
    (again,), report = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False,
                                                        names=["a.wav"])
    assert calls == [1]                                     # recomputed, not read back
    assert np.isfinite(again.loudness_db).all()
    np.testing.assert_array_equal(again.loudness_db, expected.loudness_db)
    assert (report.from_cache, report.computed, report.recomputed) == (0, 0, 1)
    text = report.describe()
    assert "from cache" not in text and "1 recomputed" in text and "a.wav" in text and "loudness_db" in text
    assert F.load_features(path, expected.n_frames) is not None   # the entry was rewritten, good again
    (_,), third = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    assert third.describe() == "1 from cache"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "inf_f0"])
def test_corrupt_cache_entry_is_reported_as_recomputed(tmp_path, damage):
    audio = _tone(330.0, 0.3)
    (expected,), _ = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    path = features_cache_path(tmp_path, audio, SETTINGS)
    if damage == "truncate":                                # kill -9 of a writer without the atomic rename
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 100)
    else:
        f0 = expected.f0_hz.copy()
        f0[0] = np.inf
        F.save_npz_atomic(path, f0_hz=f0, voiced_prob=expected.voiced_prob, voiced=expected.voiced,
                          loudness_db=expected.loudness_db)
    (again,), report = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    assert report.recomputed == 1 and report.from_cache == 0
    np.testing.assert_array_equal(again.f0_hz, expected.f0_hz)


def test_nan_augmentation_cache_entry_is_rerendered(tmp_path):
    from training.augment import _variant_cache_path, draw_params, make_augmented_variants, variant_rng

    audio = _tone(440.0, 0.5)
    (feats,), _ = extract_corpus_features_reported([audio], SETTINGS, None, n_jobs=1, progress=False)
    ((rendered, rfeats, params, _),) = make_augmented_variants([audio], [feats], 1, 0, SETTINGS, tmp_path,
                                                               progress=False, n_jobs=1)
    path = _variant_cache_path(tmp_path, audio, feats, draw_params(variant_rng(0, 0, 0)), SETTINGS)
    assert path.is_file()
    bad = rfeats.loudness_db.copy()
    bad[:5] = np.nan
    F.save_npz_atomic(path, audio=rendered, f0_hz=rfeats.f0_hz, voiced_prob=rfeats.voiced_prob,
                      voiced=rfeats.voiced, loudness_db=bad)
    ((_, again, _, _),) = make_augmented_variants([audio], [feats], 1, 0, SETTINGS, tmp_path, progress=False,
                                                  n_jobs=1)
    assert np.isfinite(again.loudness_db).all()
    np.testing.assert_allclose(again.loudness_db, rfeats.loudness_db, atol=1e-4)


# -------------------------------------------------------------------------------------- feature workers


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_feature_extraction_leaves_no_worker_behind(tmp_path):
    """kill -9 of the parent while 2 worker processes extract features: the workers die too."""
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from training.features import FeatureSettings, extract_corpus_features
        rng = np.random.default_rng(0)
        audios = [rng.standard_normal(48000 * 40).astype(np.float32) * 0.1 for _ in range(8)]
        print("start", flush=True)
        extract_corpus_features(audios, FeatureSettings(), None, n_jobs=2, progress=False)
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "start"
        deadline = time.time() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) == 2, f"no pool workers seen (exit {proc.poll()})"
        time.sleep(1.0)                                     # the workers are busy with pYIN
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            proc.kill()
    for w in left:                                          # clean up after a failure, then report it
        os.kill(w, signal.SIGKILL)
    assert not left, f"orphaned feature workers still alive after kill -9 of their parent: {left}"
