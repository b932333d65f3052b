"""Contract of training/features.py: loudness calibration, pYIN accuracy, frame alignment, caching."""
from __future__ import annotations

import numpy as np
import pytest

import training.features as F
from training.features import (
    LOUDNESS_FLOOR_DB,
    FeatureSettings,
    a_weighted_loudness_db,
    extract_corpus_features,
    extract_features,
    f0_pyin,
    features_cache_path,
    fill_unvoiced_f0,
)

SR = 48000
HOP = 128
N_FFT = 2048
SETTINGS = FeatureSettings()


def sine(f_hz: float, seconds: float = 0.5, amplitude: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * f_hz * t)).astype(np.float32)


def harmonic(f0_hz: np.ndarray | float, seconds: float, sr: int = SR, n_harmonics: int = 6) -> np.ndarray:
    """Harmonic tone (1/k amplitudes) following f0_hz, which may be a per-sample array."""
    n = int(seconds * sr)
    f0 = np.broadcast_to(np.asarray(f0_hz, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, n_harmonics + 1) if k * f0.max() < sr / 2)
    return (0.3 * y).astype(np.float32)


def cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1200 * np.abs(np.log2(np.asarray(a, np.float64) / np.asarray(b, np.float64)))


def interior(x: np.ndarray, trim: int = 20) -> np.ndarray:
    return x[trim:-trim]


# ------------------------------------------------------------------------------------------ loudness


def test_full_scale_1khz_sine_reads_0_db():
    db = a_weighted_loudness_db(sine(1000.0), SR, HOP, N_FFT)
    assert np.all(np.abs(interior(db) - 0.0) < 0.5)


def test_halving_amplitude_subtracts_6_02_db():
    full = np.median(interior(a_weighted_loudness_db(sine(1000.0), SR, HOP, N_FFT)))
    for halvings in (1, 2, 3):
        quiet = np.median(interior(a_weighted_loudness_db(sine(1000.0, amplitude=0.5**halvings), SR, HOP, N_FFT)))
        assert quiet - full == pytest.approx(-6.0206 * halvings, abs=0.02)


def test_a_weighting_100hz_about_19db_below_1khz():
    at_1k = np.median(interior(a_weighted_loudness_db(sine(1000.0, amplitude=0.5), SR, HOP, N_FFT)))
    at_100 = np.median(interior(a_weighted_loudness_db(sine(100.0, amplitude=0.5), SR, HOP, N_FFT)))
    assert at_1k - at_100 == pytest.approx(19.1, abs=0.5)


# IEC 61672-1:2013 Table 3: A-weighting (dB) at nominal frequencies, rounded to 0.1 dB by the standard.
IEC_A_WEIGHTING_DB = {125.0: -16.1, 250.0: -8.6, 500.0: -3.2, 2000.0: 1.2, 4000.0: 1.0, 8000.0: -1.1, 16000.0: -6.6}


@pytest.mark.parametrize("f_hz", list(IEC_A_WEIGHTING_DB))
def test_a_weighted_loudness_follows_the_iec_table(f_hz):
    """Known answers: a sine reads the standard's A-weighting relative to 1 kHz (measured within 0.11 dB from
    125 Hz up; below, the 2048-point STFT's leakage across steeply weighted bins reads high: +0.8 dB at 63 Hz,
    +4.3 dB at 31.5 Hz)."""
    at_1k = np.median(interior(a_weighted_loudness_db(sine(1000.0, amplitude=0.5), SR, HOP, N_FFT)))
    at_f = np.median(interior(a_weighted_loudness_db(sine(f_hz, amplitude=0.5), SR, HOP, N_FFT)))
    assert at_f - at_1k == pytest.approx(IEC_A_WEIGHTING_DB[f_hz], abs=0.15)


def test_silence_reads_floor_and_is_finite():
    db = a_weighted_loudness_db(np.zeros(SR // 4, np.float32), SR, HOP, N_FFT)
    assert np.all(db == LOUDNESS_FLOOR_DB)
    loud = a_weighted_loudness_db(sine(1000.0, amplitude=1e-9), SR, HOP, N_FFT)
    assert np.all(np.isfinite(loud)) and np.all(loud >= LOUDNESS_FLOOR_DB)


@pytest.mark.parametrize("n_samples", [0, 1, 127, 128, 129, 1000, 2047, 4800, 12345])
def test_exact_frame_count(n_samples):
    rng = np.random.default_rng(n_samples)
    audio = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    n_frames = n_samples // HOP
    assert a_weighted_loudness_db(audio, SR, HOP, N_FFT).shape == (n_frames,)
    features = extract_features(audio, SETTINGS)
    assert features.n_frames == n_frames
    for a, dtype in ((features.f0_hz, np.float32), (features.voiced_prob, np.float32),
                     (features.voiced, np.bool_), (features.loudness_db, np.float32)):
        assert a.shape == (n_frames,) and a.dtype == dtype
    assert np.all(np.isfinite(features.f0_hz)) and np.all(features.f0_hz > 0)


def test_slice():
    features = extract_features(harmonic(220.0, 0.3), SETTINGS)
    part = features.slice(10, 30)
    assert part.n_frames == 20
    np.testing.assert_array_equal(part.loudness_db, features.loudness_db[10:30])
    np.testing.assert_array_equal(part.voiced, features.voiced[10:30])


# ----------------------------------------------------------------------------------------------- pYIN


@pytest.mark.parametrize("f0_hz", [110.0, 440.0, 880.0, 2093.0])   # 2093 Hz: C7, the FluidR3 flute's top note
def test_pyin_steady_tone_within_10_cents(f0_hz):
    features = extract_features(harmonic(f0_hz, 0.6), SETTINGS)
    voiced = interior(features.voiced, 10)
    assert voiced.mean() > 0.95
    assert np.max(cents(interior(features.f0_hz, 10)[voiced], f0_hz)) < 10.0


def test_pyin_glide_within_10_cents():
    seconds = 1.0
    n = int(seconds * SR)
    f0_true = 220.0 * 2.0 ** (np.arange(n) / n)  # one octave up in a second
    features = extract_features(harmonic(f0_true, seconds), SETTINGS)
    frame_f0 = f0_true[np.arange(features.n_frames) * HOP]
    voiced = interior(features.voiced, 15)
    assert voiced.mean() > 0.95
    assert np.max(cents(interior(features.f0_hz, 15)[voiced], interior(frame_f0, 15)[voiced])) < 10.0


def test_silence_is_unvoiced_with_finite_filled_f0():
    features = extract_features(np.zeros(SR // 2, np.float32), SETTINGS)
    assert not features.voiced.any()
    assert np.all(features.voiced_prob < 0.1)
    assert np.all(np.isfinite(features.f0_hz)) and np.all(features.f0_hz > 0)


def test_unvoiced_gap_filled_in_log_frequency():
    f0 = np.array([np.nan, 100.0, np.nan, np.nan, 800.0, np.nan])
    voiced = np.array([False, True, False, False, True, False])
    np.testing.assert_allclose(fill_unvoiced_f0(f0, voiced), [100, 100, 200, 400, 800, 800], rtol=1e-9)
    np.testing.assert_allclose(fill_unvoiced_f0(f0, np.zeros(6, bool)), F.NEUTRAL_F0_HZ)


def test_banded_decode_matches_librosa_pyin():
    """Same model as librosa.pyin (which decodes with a dense, 50x slower Viterbi)."""
    import librosa

    sr = 16000
    n = int(0.8 * sr)
    f0 = np.where(np.arange(n) < n // 2, 196.0, 330.0)
    rng = np.random.default_rng(0)
    y = harmonic(f0, 0.8, sr=sr) * (np.arange(n) % 6000 < 4500) + 0.01 * rng.standard_normal(n)
    y = y.astype(np.float32)
    ours = F.pyin_native(y, sr, 65.0, 1047.0, 1024, 160)
    ref_f0, ref_voiced, ref_prob = librosa.pyin(y, fmin=65.0, fmax=1047.0, sr=sr, frame_length=1024, hop_length=160)
    np.testing.assert_array_equal(ours[2], ref_voiced)
    np.testing.assert_allclose(ours[1], ref_prob, atol=1e-5)
    np.testing.assert_allclose(ours[0][ref_voiced], ref_f0[ref_voiced], rtol=1e-9)


# ------------------------------------------------------------------------------------------ alignment


def test_onset_and_offset_aligned_to_frames():
    n = int(2.0 * SR)
    on, off = int(0.5 * SR), int(1.5 * SR)
    audio = np.zeros(n, np.float32)
    audio[on:off] = harmonic(330.0, (off - on) / SR)
    features = extract_features(audio, SETTINGS)
    on_frame, off_frame = on / HOP, off / HOP

    # Loudness: the frame centred on the edge sees half the tone's energy (-3 dB).
    steady = np.median(features.loudness_db[int(on_frame) + 50 : int(off_frame) - 50])
    above = np.nonzero(features.loudness_db > steady - 3.0)[0]
    assert abs(above[0] - on_frame) <= 2 and abs(above[-1] - off_frame) <= 2

    # voiced_prob rises at the onset (it falls a few frames late: librosa's YIN difference function
    # penalises energy at the end of the window, an asymmetry of the detector, not of the framing).
    prob = np.nonzero(features.voiced_prob > 0.5)[0]
    assert abs(prob[0] - on_frame) <= 2

    # The voiced flag spreads by about half a pYIN window at each edge, symmetrically.
    voiced = np.nonzero(features.voiced)[0]
    assert abs((voiced[0] + voiced[-1]) / 2 - (on_frame + off_frame) / 2) <= 1.0
    assert abs(voiced[0] - on_frame) <= 14 and abs(voiced[-1] - off_frame) <= 14


def _log_midpoint_crossing(f0_hz: np.ndarray, a_hz: float, b_hz: float) -> float:
    """Fractional frame where log f0 passes halfway from a_hz to b_hz."""
    x = np.log(f0_hz) - 0.5 * (np.log(a_hz) + np.log(b_hz))
    x = x if b_hz > a_hz else -x
    i = int(np.nonzero(x > 0)[0][0]) - 1
    return i + (0 - x[i]) / (x[i + 1] - x[i])


def test_f0_pyin_has_no_time_offset():
    """Pitch steps at 0.5 s cross over at frame 0.5 * sr / hop (up and down steps averaged: pYIN's
    transition smoothing delays each by the same amount), i.e. resampling and pYIN framing add no offset."""
    n = SR
    expected = (n // 2) / HOP
    for a_hz, b_hz in ((220.0, 440.0), (300.0, 350.0)):
        crossings = []
        for lo, hi in ((a_hz, b_hz), (b_hz, a_hz)):
            f0 = np.where(np.arange(n) < n // 2, lo, hi)
            f0_hz, _, _ = f0_pyin(harmonic(f0, 1.0), SR, HOP, SETTINGS.f0_min_hz, SETTINGS.f0_max_hz)
            crossings.append(_log_midpoint_crossing(f0_hz, lo, hi))
        assert all(abs(c - expected) <= 2 for c in crossings)
        assert abs(np.mean(crossings) - expected) <= 0.25


# -------------------------------------------------------------------------------------------- caching


def _corpus() -> list[np.ndarray]:
    return [harmonic(220.0, 0.3), harmonic(330.0, 0.25), np.zeros(5000, np.float32)]


def test_cache_hit_runs_no_pyin(tmp_path, monkeypatch):
    audios = _corpus()
    first = extract_corpus_features(audios, SETTINGS, tmp_path, n_jobs=1, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == len(audios)

    def no_pyin(*args, **kwargs):
        raise AssertionError("pyin ran on a cached audio")

    monkeypatch.setattr(F, "pyin_native", no_pyin)
    second = extract_corpus_features(audios, SETTINGS, tmp_path, n_jobs=1, progress=False)
    for a, b in zip(first, second):
        for name in ("f0_hz", "voiced_prob", "voiced", "loudness_db"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not list(tmp_path.glob("*.tmp"))


def test_different_settings_different_key(tmp_path):
    other = FeatureSettings(hop_size=256)
    assert SETTINGS.cache_key() != other.cache_key()
    assert SETTINGS.cache_key() == FeatureSettings().cache_key()
    audio = _corpus()[0]
    assert features_cache_path(tmp_path, audio, SETTINGS) != features_cache_path(tmp_path, audio, other)
    assert features_cache_path(tmp_path, audio, SETTINGS) != features_cache_path(tmp_path, audio * 0.5, SETTINGS)
    extract_corpus_features([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    features = extract_corpus_features([audio], other, tmp_path, n_jobs=1, progress=False)
    assert features[0].n_frames == audio.shape[0] // 256
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_corrupt_cache_file_is_recomputed(tmp_path, monkeypatch):
    audio = _corpus()[0]
    (expected,) = extract_corpus_features([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    path = features_cache_path(tmp_path, audio, SETTINGS)
    path.write_bytes(b"not an npz")

    calls = []
    real = F.pyin_native
    monkeypatch.setattr(F, "pyin_native", lambda *a, **k: calls.append(1) or real(*a, **k))
    (again,) = extract_corpus_features([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    assert calls == [1]
    np.testing.assert_array_equal(again.f0_hz, expected.f0_hz)
    assert F.load_features(path, expected.n_frames) is not None  # rewritten


def test_parallel_equals_serial(tmp_path):
    audios = _corpus()
    serial = extract_corpus_features(audios, SETTINGS, None, n_jobs=1, progress=False)
    parallel = extract_corpus_features(audios, SETTINGS, tmp_path, n_jobs=2, progress=False)
    for a, b in zip(serial, parallel):
        for name in ("f0_hz", "voiced_prob", "voiced", "loudness_db"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
