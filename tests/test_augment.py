"""Contract of training/augment.py: reproducible draws, aligned renders, exact feature updates, cached variants."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import training.augment as A
from training.augment import (
    AugmentParams,
    apply_effects,
    augment_features,
    draw_params,
    make_augmented_variants,
    random_gain,
    variant_rng,
)
from training.features import LOUDNESS_FLOOR_DB, FeatureSettings, a_weighted_loudness_db, extract_features, pyin_native

SR = 48000
HOP = 128
SETTINGS = FeatureSettings()
NEUTRAL = AugmentParams(
    gain_db=0.0, low_shelf_gain_db=0.0, high_shelf_gain_db=0.0, peak_freq_hz=1000.0, peak_gain_db=0.0,
    compressor_threshold_db=0.0, compressor_ratio=1.0, reverb_room_size=0.1, reverb_wet_level=0.0,
    pitch_shift_semitones=0.0,
)


def tone(f_hz: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * sum(np.sin(2 * np.pi * k * f_hz * t) / k for k in (1, 2, 3))).astype(np.float32)


def bursts(seed: int, seconds: float = 2.0) -> np.ndarray:
    """Harmonic tone bursts with Gaussian envelopes at random pitches: a signal with a clear envelope."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = np.zeros_like(t)
    for c in np.arange(0.3, seconds - 0.2, 0.35):
        f, width = rng.uniform(150.0, 900.0), rng.uniform(0.02, 0.06)
        x += np.exp(-0.5 * ((t - c) / width) ** 2) * sum(np.sin(2 * np.pi * k * f * t) / k for k in (1, 2, 3))
    return (0.3 * x).astype(np.float32)


def envelope_lag(reference: np.ndarray, other: np.ndarray) -> int:
    """Samples by which other's envelope lags reference's (cross-correlation peak)."""
    import scipy.signal

    a, b = A._envelope(reference, SR), A._envelope(other, SR)
    cc = scipy.signal.correlate(b - b.mean(), a - a.mean(), mode="full", method="fft")
    return int(np.argmax(cc)) - (len(reference) - 1)


def test_draw_params_reproducible_and_in_range():
    a = draw_params(np.random.default_rng(7))
    assert a == draw_params(np.random.default_rng(7))
    assert a != draw_params(np.random.default_rng(8))
    assert variant_rng(1, 2, 3).random() == variant_rng(1, 2, 3).random()
    assert variant_rng(1, 2, 3).random() != variant_rng(1, 3, 2).random()
    for seed in range(50):
        p = draw_params(np.random.default_rng(seed), pitch_shift_range_semitones=2.0)
        assert -6 <= p.gain_db <= 6 and -6 <= p.low_shelf_gain_db <= 6 and -6 <= p.high_shelf_gain_db <= 6
        assert 300 <= p.peak_freq_hz <= 4000 and -6 <= p.peak_gain_db <= 6
        assert -30 <= p.compressor_threshold_db <= -10 and 1.5 <= p.compressor_ratio <= 4
        assert 0.1 <= p.reverb_room_size <= 0.6 and 0 <= p.reverb_wet_level <= 0.25
        assert -2 <= p.pitch_shift_semitones <= 2
    assert draw_params(np.random.default_rng(0), 0.0).pitch_shift_semitones == 0.0
    assert AugmentParams(**a.as_dict()) == a


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apply_effects_length_finite_peak(seed):
    audio = bursts(seed, seconds=1.0)
    audio[1000] = 0.99  # a near-full-scale click, pushed over 1.0 by positive gains
    params = dataclasses.replace(draw_params(np.random.default_rng(seed)), gain_db=6.0)
    out = apply_effects(audio, SR, params)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out)) <= 1.0
    for n in (0, 1, 100, 8193):
        assert apply_effects(audio[:n], SR, params).shape == (n,)


@pytest.mark.parametrize("semitones", [-2.0, -1.0, 1.0, 2.0])
def test_pitch_shift_time_aligned(semitones):
    """Rubber Band leaves a shift-dependent offset (~2 ms at 2 st) after pedalboard's latency
    compensation; apply_effects removes it, so the envelope stays within a frame of the input."""
    audio = bursts(5)
    out = apply_effects(audio, SR, dataclasses.replace(NEUTRAL, pitch_shift_semitones=semitones))
    assert abs(envelope_lag(audio, out)) < HOP


def test_full_chain_time_aligned():
    """Onsets and offsets of a tone stay put through the whole chain (the compressor reshapes envelopes, so
    this compares edges, not envelope correlation)."""
    on, off = int(0.5 * SR), int(1.0 * SR)
    audio = np.zeros(int(1.5 * SR), np.float32)
    audio[on:off] = tone(330.0, (off - on) / SR)

    def edges(x: np.ndarray) -> tuple[int, int]:
        loudness = a_weighted_loudness_db(x, SR, HOP, SETTINGS.loudness_n_fft)
        above = np.nonzero(loudness > np.max(loudness) - 20.0)[0]
        return above[0], above[-1]

    first, _ = edges(audio)
    for seed in range(4):
        params = draw_params(np.random.default_rng(seed))
        out_first, out_last = edges(apply_effects(audio, SR, params))
        assert abs(out_first - first) <= 2
        assert out_last >= off // HOP - 2  # the tail (compressor release, reverb) may only lengthen it


def test_pitch_shift_two_semitones_and_features():
    audio = tone(440.0, 1.0)
    params = dataclasses.replace(NEUTRAL, pitch_shift_semitones=2.0)
    shifted = apply_effects(audio, SR, params)
    f0, _, voiced = pyin_native(shifted[::3].copy(), 16000, 65.0, 2093.0, 1024, 160)
    measured = np.median(f0[voiced][10:-10])
    expected = 440.0 * 2 ** (2 / 12)  # 493.88 Hz
    assert abs(1200 * np.log2(measured / expected)) < 15

    features = extract_features(audio, SETTINGS)
    augmented = augment_features(features, shifted, params, SETTINGS)
    np.testing.assert_allclose(augmented.f0_hz, features.f0_hz * 2 ** (2 / 12), rtol=1e-6)
    np.testing.assert_array_equal(augmented.voiced, features.voiced)
    np.testing.assert_array_equal(augmented.voiced_prob, features.voiced_prob)
    np.testing.assert_array_equal(
        augmented.loudness_db, a_weighted_loudness_db(shifted, SR, HOP, SETTINGS.loudness_n_fft)
    )
    inner = slice(30, -30)
    assert abs(1200 * np.log2(np.median(augmented.f0_hz[inner]) / measured)) < 15


def test_gain_changes_loudness_by_gain():
    audio = np.concatenate([np.zeros(SR // 4, np.float32), tone(440.0, 0.5), np.zeros(SR // 4, np.float32)])
    loudness = a_weighted_loudness_db(audio, SR, HOP, SETTINGS.loudness_n_fft)
    rendered = apply_effects(audio, SR, dataclasses.replace(NEUTRAL, gain_db=4.0))
    rendered_loudness = a_weighted_loudness_db(rendered, SR, HOP, SETTINGS.loudness_n_fft)
    sounding = loudness > -60
    np.testing.assert_allclose(rendered_loudness[sounding] - loudness[sounding], 4.0, atol=0.05)

    features = extract_features(audio, SETTINGS)
    for gain_db in (-9.0, 5.0):
        scaled, shifted = random_gain(audio, features, gain_db)
        np.testing.assert_allclose(scaled, audio * 10 ** (gain_db / 20), rtol=1e-6)
        recomputed = a_weighted_loudness_db(scaled, SR, HOP, SETTINGS.loudness_n_fft)
        sounding = features.loudness_db > LOUDNESS_FLOOR_DB + 20
        np.testing.assert_allclose(shifted.loudness_db[sounding], features.loudness_db[sounding] + gain_db, atol=1e-4)
        np.testing.assert_allclose(recomputed[sounding], shifted.loudness_db[sounding], atol=0.01)
        floor = features.loudness_db <= LOUDNESS_FLOOR_DB
        assert floor.any() and np.all(shifted.loudness_db[floor] == LOUDNESS_FLOOR_DB)
        assert np.all(shifted.loudness_db >= LOUDNESS_FLOOR_DB)
        np.testing.assert_array_equal(shifted.f0_hz, features.f0_hz)


def test_variants_reproducible_and_cached(tmp_path, monkeypatch):
    audios = [tone(220.0, 0.4), bursts(1, seconds=0.6)]
    features = [extract_features(a, SETTINGS) for a in audios]
    first = make_augmented_variants(audios, features, 2, seed=3, settings=SETTINGS, cache_dir=tmp_path, progress=False)
    assert [source for *_, source in first] == [0, 0, 1, 1]
    assert [p for _, _, p, _ in first] == [draw_params(variant_rng(3, i, v)) for i in range(2) for v in range(2)]
    assert len(set(p for _, _, p, _ in first)) == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4
    for (audio, feats, params, source) in first:
        assert audio.shape == audios[source].shape and feats.n_frames == features[source].n_frames

    def no_render(*args, **kwargs):
        raise AssertionError("re-rendered a cached variant")

    monkeypatch.setattr(A, "apply_effects", no_render)
    second = make_augmented_variants(audios, features, 2, seed=3, settings=SETTINGS, cache_dir=tmp_path, progress=False)
    for (a1, f1, p1, s1), (a2, f2, p2, s2) in zip(first, second):
        assert p1 == p2 and s1 == s2
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(f1.loudness_db, f2.loudness_db)
        np.testing.assert_array_equal(f1.f0_hz, f2.f0_hz)

    monkeypatch.undo()
    other_seed = make_augmented_variants(audios[:1], features[:1], 1, seed=4, settings=SETTINGS, cache_dir=None,
                                         progress=False)
    assert other_seed[0][2] != first[0][2]
