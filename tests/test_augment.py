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


# ------------------------------------------------------------------ the table; stretch, distortion, noise
def test_table_drives_draws_and_names():
    fields = {f.name for f in dataclasses.fields(AugmentParams)}
    drawn = [d.field for a in A.AUGMENTATIONS for d in a.draws]
    assert len(drawn) == len(set(drawn)) and set(drawn) == fields
    assert A.DEFAULT_AUGMENTATIONS == ("gain", "eq", "compress", "reverb", "pitch", "tilt", "breath", "hollow")
    all_on = [draw_params(np.random.default_rng(s), enabled=A.AUGMENTATION_NAMES) for s in range(40)]
    for aug in A.AUGMENTATIONS:
        for d in aug.draws:
            values = [getattr(p, d.field) for p in all_on]
            assert min(values) >= d.low and max(values) <= d.high, d
            assert len(set(values)) > 1, d
        # off: its identity values, and every other parameter as drawn with it on
        others = tuple(n for n in A.AUGMENTATION_NAMES if n != aug.name)
        off = draw_params(np.random.default_rng(3), enabled=others)
        on = draw_params(np.random.default_rng(3), enabled=A.AUGMENTATION_NAMES)
        assert off == dataclasses.replace(on, **dict(aug.off))
    assert A.parse_augmentations("default") == A.DEFAULT_AUGMENTATIONS
    assert A.parse_augmentations("noise, default") == ("gain", "eq", "compress", "reverb", "pitch", "noise", "tilt",
                                                       "breath", "hollow")
    assert A.parse_augmentations("all,-reverb,-noise,-breath") == ("gain", "eq", "compress", "pitch", "stretch",
                                                                   "distort", "tilt", "hollow")
    assert A.parse_augmentations("none") == () == A.parse_augmentations("")
    with pytest.raises(ValueError, match="unknown augmentation 'strech'.*stretch"):
        A.parse_augmentations("default,strech")


def test_cli_rejects_unknown_augmentation(tmp_path, capsys):
    from training.cli import EXIT_BAD_INPUT, train_main

    assert train_main([str(tmp_path), "--augment", "eq,fuzz"]) == EXIT_BAD_INPUT
    assert "--augment: unknown augmentation 'fuzz'" in capsys.readouterr().err


def median_f0(audio: np.ndarray) -> float:
    f0, _, voiced = pyin_native(audio[::3].copy(), 16000, 65.0, 2093.0, 1024, 160)
    return float(np.median(f0[voiced][5:-5]))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_stretch_keeps_pitch_and_scales_duration(factor):
    on, off = int(0.3 * SR), int(0.9 * SR)
    audio = np.zeros(int(1.2 * SR), np.float32)
    audio[on:off] = tone(330.0, (off - on) / SR)
    out = apply_effects(audio, SR, dataclasses.replace(NEUTRAL, duration_factor=factor))
    assert out.shape == (A.stretched_length(audio.shape[0], factor),) == (int(round(audio.shape[0] * factor)),)
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0
    assert abs(1200 * np.log2(median_f0(out) / median_f0(audio))) < 3

    def edges(x: np.ndarray) -> np.ndarray:
        loudness = a_weighted_loudness_db(x, SR, HOP, SETTINGS.loudness_n_fft)
        above = np.nonzero(loudness > np.max(loudness) - 20.0)[0]
        return np.array([above[0], above[-1]])

    # the onset and the end move to factor x their times (the loudness window's smear is the same in both)
    moved = edges(out) - edges(audio)
    expected = (np.array([on, off]) * (factor - 1.0)) / HOP
    assert np.all(np.abs(moved - expected) <= 2), (moved, expected)


@pytest.mark.parametrize("amplitude", [0.1, 0.5, 0.95])
def test_distortion_is_subtle_but_there(amplitude):
    """At the table's strongest settings a sine's THD stays under 3% and its level within 2 dB; at the
    weakest it is still measurable (> 0.05%)."""
    (drive, mix) = [d for a in A.AUGMENTATIONS if a.name == "distort" for d in a.draws]
    n = SR // 2
    x = (amplitude * np.sin(2 * np.pi * 375.0 * np.arange(n) / SR)).astype(np.float32)  # 375 Hz: whole cycles

    def thd_and_gain_db(params):
        y = apply_effects(x, SR, params)[SR // 10:]
        spectrum = np.abs(np.fft.rfft(y[: (len(y) // 128) * 128]))
        k = round(375.0 * (len(y) // 128) * 128 / SR)
        harmonics = np.sqrt(sum(spectrum[h * k] ** 2 for h in range(2, 20)))
        gain_db = 20 * np.log10(np.sqrt(np.mean(y ** 2)) / np.sqrt(np.mean(x[SR // 10:] ** 2)))
        return harmonics / spectrum[k], gain_db

    strong, gain_db = thd_and_gain_db(dataclasses.replace(NEUTRAL, distortion_drive_db=drive.high,
                                                          distortion_mix=mix.high))
    assert strong < 0.03 and abs(gain_db) < 2.0   # tanh squashes a full-scale sine by up to ~1.6 dB
    weak, _ = thd_and_gain_db(dataclasses.replace(NEUTRAL, distortion_drive_db=drive.low, distortion_mix=mix.low))
    assert weak > (5e-4 if amplitude >= 0.5 else 5e-5)  # level-dependent, like any saturation
    clean, _ = thd_and_gain_db(NEUTRAL)
    assert clean < 1e-4


@pytest.mark.parametrize("slope", [0.0, 1.0, 2.0])
def test_noise_level_colour_and_seed(slope):
    audio = np.concatenate([np.zeros(SR // 4, np.float32), tone(440.0, 0.75), np.zeros(SR // 2, np.float32)])
    clean = apply_effects(audio, SR, NEUTRAL)
    params = dataclasses.replace(NEUTRAL, noise_slope=slope, noise_level_db=-37.5, noise_seed=11)
    noisy = apply_effects(audio, SR, params)
    noise = noisy - clean
    level_db = 20 * np.log10(np.sqrt(np.mean(noise.astype(np.float64) ** 2)) / A.active_rms(clean, SR))
    assert abs(level_db - (-37.5)) < 0.1
    playing_rms = np.sqrt(np.mean(audio[SR // 4: SR] ** 2))     # the silences (half the audio) left out
    assert abs(A.active_rms(clean, SR) / playing_rms - 1.0) < 0.02
    # the colour: power falls by `slope` decades per decade between 100 Hz and 10 kHz
    freqs = np.fft.rfftfreq(len(noise), 1 / SR)
    power = np.abs(np.fft.rfft(noise)) ** 2
    band = (freqs > 100) & (freqs < 10000)
    fitted = -np.polyfit(np.log10(freqs[band]), np.log10(power[band]), 1)[0]
    assert abs(fitted - slope) < 0.15
    np.testing.assert_array_equal(apply_effects(audio, SR, params), noisy)
    assert not np.array_equal(apply_effects(audio, SR, dataclasses.replace(params, noise_seed=12)), noisy)


def test_stretched_variant_features_are_the_stretched_audio(tmp_path):
    """Two notes, A3 then E4: in a stretched variant the change of note is where the stretched audio has it,
    and every feature frame belongs to the stretched length."""
    audio = np.concatenate([tone(220.0, 0.5), tone(330.0, 0.5)])
    features = extract_features(audio, SETTINGS)
    (v_audio, v_feats, params, _), = make_augmented_variants(
        [audio], [features], 1, seed=6, settings=SETTINGS, cache_dir=tmp_path, progress=False,
        enabled=("stretch",))
    factor = params.duration_factor
    assert abs(factor - 1.0) > 0.05 and params.pitch_shift_semitones == 0.0   # seed 6: 0.91, 17 frames early
    assert v_audio.shape == (A.stretched_length(len(audio), factor),)
    assert v_feats.n_frames == len(v_audio) // HOP
    change = np.argmax(v_feats.f0_hz > 275.0)
    assert abs(change - 0.5 * SR * factor / HOP) <= 4
    np.testing.assert_array_equal(v_feats.loudness_db,
                                  a_weighted_loudness_db(v_audio, SR, HOP, SETTINGS.loudness_n_fft))


def test_all_variants_deterministic_and_cache_keyed_on_settings(tmp_path, monkeypatch):
    audios = [tone(220.0, 0.5)]
    features = [extract_features(audios[0], SETTINGS)]

    def make(enabled, cache_dir=tmp_path):
        return A.make_augmented_variants_reported(audios, features, 2, seed=5, settings=SETTINGS,
                                                  cache_dir=cache_dir, progress=False, enabled=enabled)

    first, report = make(A.AUGMENTATION_NAMES)
    assert report.computed == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    again, _ = make(A.AUGMENTATION_NAMES, cache_dir=None)      # rendered afresh: the same audio
    for (a1, f1, p1, _), (a2, f2, p2, _) in zip(first, again):
        assert p1 == p2
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(f1.f0_hz, f2.f0_hz)
    defaults, report = make(A.DEFAULT_AUGMENTATIONS)          # other settings: other keys, rendered
    assert report.computed == 2 and len(list(tmp_path.glob("*.npz"))) == 4
    monkeypatch.setattr(A, "apply_effects", lambda *a, **k: pytest.fail("re-rendered a cached variant"))
    cached, report = make(A.AUGMENTATION_NAMES)                # stretched lengths read back from the cache
    assert report.from_cache == 2 and not report.rejected
    for (a1, f1, _, _), (a2, f2, _, _) in zip(first, cached):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(f1.loudness_db, f2.loudness_db)
    monkeypatch.setattr(A, "AUGMENT_VERSION", A.AUGMENT_VERSION + 1)
    with pytest.raises(pytest.fail.Exception):
        make(A.AUGMENTATION_NAMES)


def harmonic_levels_db(audio: np.ndarray, f0_hz: float, n: int = 8) -> np.ndarray:
    """dB of harmonics 1..n of a steady tone (1 s Hann window in the middle of ``audio``, 1 Hz bins)."""
    mid = audio[len(audio) // 2 - SR // 2: len(audio) // 2 + SR // 2]
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    return 20 * np.log10(np.array([spec[int(round(k * f0_hz))] for k in range(1, n + 1)]) + 1e-12)


def test_timbre_factors_move_their_own_attribute():
    """hollow moves odd against even harmonics by (1 -+ g), tilt turns the spectrum around its pivot, breath adds
    noise at its level relative to the playing and only while it plays; at their identity they change nothing."""
    f0 = 220.0
    t = np.arange(int(2.0 * SR)) / SR
    x = (0.3 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 11))).astype(np.float32)
    frames = len(x) // HOP
    f0s, voiced = np.full(frames, f0, np.float32), np.ones(frames, np.float32)
    off = draw_params(np.random.default_rng(0), enabled=())
    assert np.array_equal(A.apply_timbre_factors(x, f0s, voiced, HOP, SR, off), x)
    base = harmonic_levels_db(x, f0)

    for g in (-0.6, 0.6):
        y = A.apply_timbre_factors(x, f0s, voiced, HOP, SR, dataclasses.replace(off, hollow_gain=g))
        change = harmonic_levels_db(y, f0) - base
        np.testing.assert_allclose(change[0::2], 20 * np.log10(1 - g), atol=0.3)     # odd harmonics 1, 3, ...
        np.testing.assert_allclose(change[1::2], 20 * np.log10(1 + g), atol=0.3)     # even harmonics 2, 4, ...
    unvoiced = A.apply_timbre_factors(x, f0s, np.zeros_like(voiced), HOP, SR,
                                      dataclasses.replace(off, hollow_gain=0.6))
    np.testing.assert_allclose(unvoiced, x, atol=1e-6)                              # the comb needs a pitch

    for tilt in (-12.0, 12.0):
        y = A.apply_timbre_factors(x, f0s, voiced, HOP, SR, dataclasses.replace(off, tilt_db=tilt))
        change = harmonic_levels_db(y, f0, 10) - harmonic_levels_db(x, f0, 10)
        assert np.sign(tilt) * (change[-1] - change[0]) > 9.0                       # harmonic 10 vs the fundamental

    silence = np.zeros(SR // 2, np.float32)
    gapped = np.concatenate([x[:SR], silence])
    for level in (-40.0, -10.0):
        y = A.apply_timbre_factors(gapped, f0s[: len(gapped) // HOP], voiced[: len(gapped) // HOP], HOP, SR,
                                   dataclasses.replace(off, breath_level_db=level))
        added = (y - gapped)[int(0.1 * SR): int(0.9 * SR)]
        ratio_db = 10 * np.log10(np.mean(added.astype(np.float64) ** 2) / np.mean(x[int(0.1 * SR): int(0.9 * SR)] ** 2))
        assert abs(ratio_db - level) < 0.5
        assert np.max(np.abs(y[SR + int(0.05 * SR):])) < 1e-4                       # gone in the silence
