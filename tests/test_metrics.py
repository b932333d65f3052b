"""Held-out resynthesis metrics: known answers on tones, the spectral loss as module and as function."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training.features import FeatureSettings, a_weighted_loudness_db, extract_features
from training.metrics import (
    DDSP_FFT_SIZES_16K,
    ResynthesisMetrics,
    aggregate_metrics,
    f0_error_cents,
    loudness_error_db,
    loudness_mask,
    multires_spectral_distance,
    resynthesis_metrics,
    scaled_fft_sizes,
    spectral_loss_module,
    spectral_min_n_samples,
)

SETTINGS = FeatureSettings()
SAMPLE_RATE = SETTINGS.sample_rate


def harmonic_tone(f0_hz: float, seconds: float = 0.6, amplitude: float = 0.3, sample_rate: int = SAMPLE_RATE,
                  n_harmonics: int = 4) -> np.ndarray:
    """A harmonic tone with 5 ms fades, float32."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = sum(np.sin(2 * np.pi * f0_hz * k * t) / k for k in range(1, n_harmonics + 1))
    tone = amplitude * tone / np.max(np.abs(tone))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)
    return (tone * fade).astype(np.float32)


@pytest.fixture(scope="module")
def ref_tone() -> np.ndarray:
    return harmonic_tone(220.0)


@pytest.fixture(scope="module")
def ref_features(ref_tone):
    return extract_features(ref_tone, SETTINGS)


# --- FFT sizes ----------------------------------------------------------------------------------------------


def test_fft_sizes_scale_with_sample_rate_to_powers_of_two() -> None:
    assert scaled_fft_sizes(16000) == DDSP_FFT_SIZES_16K
    assert scaled_fft_sizes(48000) == (8192, 4096, 2048, 1024, 512, 256)
    assert scaled_fft_sizes(44100) == (4096, 2048, 1024, 512, 256, 128)
    assert scaled_fft_sizes(32000) == tuple(2 * size for size in DDSP_FFT_SIZES_16K)
    for sample_rate in (8000, 22050, 24000, 96000):
        for size, ddsp_size in zip(scaled_fft_sizes(sample_rate), DDSP_FFT_SIZES_16K):
            assert size & (size - 1) == 0
            ratio = size / (ddsp_size * sample_rate / 16000)
            assert 2**-0.5 <= ratio <= 2**0.5
    with pytest.raises(ValueError):
        scaled_fft_sizes(0)


# --- spectral distance --------------------------------------------------------------------------------------


def test_identical_signals_have_zero_spectral_distance(ref_tone) -> None:
    assert multires_spectral_distance(ref_tone, ref_tone.copy(), SAMPLE_RATE) == 0.0
    assert multires_spectral_distance(torch.from_numpy(ref_tone), ref_tone, SAMPLE_RATE) == 0.0


def test_spectral_distance_grows_with_added_noise(ref_tone) -> None:
    noise = np.random.default_rng(0).standard_normal(ref_tone.shape).astype(np.float32)
    distances = [multires_spectral_distance(ref_tone, ref_tone + level * noise, SAMPLE_RATE)
                 for level in (0.0, 1e-3, 1e-2, 1e-1)]
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_spectral_distance_is_symmetric(ref_tone) -> None:
    other = harmonic_tone(330.0)
    assert multires_spectral_distance(ref_tone, other, SAMPLE_RATE) == pytest.approx(
        multires_spectral_distance(other, ref_tone, SAMPLE_RATE), rel=1e-6)


def test_spectral_distance_matches_ddsp_form_computed_by_hand() -> None:
    """mean over resolutions of mean|ΔS| + mean|Δ log S|, Hann, 75% overlap, centred, unnormalised STFT."""
    rng = np.random.default_rng(3)
    sample_rate = 16000
    ref = rng.standard_normal(4000).astype(np.float32)
    est = (0.5 * ref + 0.1 * rng.standard_normal(4000)).astype(np.float32)
    terms = []
    for fft_size in scaled_fft_sizes(sample_rate):
        def magnitude(x: np.ndarray) -> torch.Tensor:
            spectrum = torch.stft(torch.from_numpy(x), fft_size, fft_size // 4, fft_size,
                                  torch.hann_window(fft_size), center=True, return_complex=True)
            return spectrum.abs().clamp(min=1e-4)
        mag_ref, mag_est = magnitude(ref), magnitude(est)
        terms.append(float((mag_ref - mag_est).abs().mean() + (mag_ref.log() - mag_est.log()).abs().mean()))
    assert multires_spectral_distance(ref, est, sample_rate) == pytest.approx(np.mean(terms), rel=1e-4)


def test_spectral_module_is_differentiable_and_agrees_with_function(ref_tone) -> None:
    module = spectral_loss_module(SAMPLE_RATE)
    rng = np.random.default_rng(1)
    ref_batch = np.stack([ref_tone, harmonic_tone(330.0)])
    est_batch = (ref_batch + 0.01 * rng.standard_normal(ref_batch.shape)).astype(np.float32)

    est = torch.tensor(est_batch, requires_grad=True)
    loss = module(est, torch.from_numpy(ref_batch))
    assert loss.dim() == 0
    loss.backward()
    assert est.grad is not None and torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    assert float(loss.detach()) == pytest.approx(multires_spectral_distance(ref_batch, est_batch, SAMPLE_RATE), rel=1e-5)

    # silence on both sides: magnitudes sit at the floor, gradients stay finite
    silent = torch.zeros(1, ref_tone.size, requires_grad=True)
    module(silent, torch.zeros(1, ref_tone.size)).backward()
    assert torch.isfinite(silent.grad).all()


def test_spectral_module_rejects_bad_shapes(ref_tone) -> None:
    module = spectral_loss_module(SAMPLE_RATE)
    audio = torch.from_numpy(ref_tone)[None]
    with pytest.raises(ValueError, match="equal shapes"):
        module(audio, audio[:, :-1])
    with pytest.raises(ValueError, match="batch, n_samples"):
        module(audio[None], audio[None])
    too_short = torch.zeros(1, spectral_min_n_samples(SAMPLE_RATE) - 1)
    with pytest.raises(ValueError, match="at least"):
        module(too_short, too_short)
    module(torch.zeros(spectral_min_n_samples(SAMPLE_RATE)), torch.zeros(spectral_min_n_samples(SAMPLE_RATE)))


def test_mismatched_lengths_are_trimmed_to_the_shorter(ref_tone) -> None:
    assert multires_spectral_distance(ref_tone, ref_tone[:-37], SAMPLE_RATE) == 0.0
    assert multires_spectral_distance(ref_tone[:-200], ref_tone, SAMPLE_RATE) == 0.0


# --- frame errors -------------------------------------------------------------------------------------------


def test_f0_error_cents_known_values() -> None:
    ref = np.array([100.0, 200.0, 440.0, np.nan, 300.0, 0.0])
    est = np.array([200.0, 100.0, 440.0 * 2 ** (25 / 1200), 300.0, np.nan, 100.0])
    mask = np.array([True, True, True, True, True, True])
    np.testing.assert_allclose(f0_error_cents(ref, est, mask), [1200.0, 1200.0, 25.0])
    np.testing.assert_allclose(f0_error_cents(ref, est, np.array([False, True, False, True, True, True])), [1200.0])
    with pytest.raises(ValueError, match="shape"):
        f0_error_cents(ref, est[:-1], mask)


def test_loudness_error_and_mask() -> None:
    ref = np.array([-10.0, -20.0, -49.0, -51.0, -100.0])
    est = np.array([-12.0, -20.0, -40.0, -50.0, -60.0])
    mask = loudness_mask(ref)
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    np.testing.assert_allclose(loudness_error_db(ref, est, mask), [2.0, 0.0, 9.0])
    # quiet clip: the -70 dB floor applies even within 40 dB of the max
    np.testing.assert_array_equal(loudness_mask(np.array([-60.0, -75.0, -90.0])), [True, False, False])
    with pytest.raises(ValueError, match="shape"):
        loudness_error_db(ref, est[:2], mask)


# --- whole-clip metrics -------------------------------------------------------------------------------------


def test_identical_clips_give_zero_errors(ref_tone, ref_features) -> None:
    metrics = resynthesis_metrics(ref_tone, ref_tone.copy(), SETTINGS, ref_features=ref_features)
    assert metrics.spectral_distance == 0.0
    assert metrics.f0_frames > 0.8 * (ref_tone.size // SETTINGS.hop_size)
    assert metrics.f0_cents_median == 0.0 and metrics.f0_cents_mean == 0.0
    assert metrics.loudness_frames > 0.8 * (ref_tone.size // SETTINGS.hop_size)
    assert metrics.loudness_db_median == 0.0 and metrics.loudness_db_mean == 0.0
    assert metrics.n_samples == ref_tone.size


def test_tone_50_cents_sharp_gives_50_cents(ref_tone, ref_features) -> None:
    sharp = harmonic_tone(220.0 * 2 ** (50 / 1200))
    metrics = resynthesis_metrics(ref_tone, sharp, SETTINGS, ref_features=ref_features)
    assert metrics.f0_frames > 0.8 * (ref_tone.size // SETTINGS.hop_size)
    assert metrics.f0_cents_median == pytest.approx(50.0, abs=3.0)
    assert metrics.loudness_db_median < 0.5
    assert metrics.spectral_distance > 0.0


def test_gain_of_minus_6_db_gives_6_db_loudness_error(ref_tone, ref_features) -> None:
    quieter = ref_tone * np.float32(10 ** (-6 / 20))
    metrics = resynthesis_metrics(ref_tone, quieter, SETTINGS, ref_features=ref_features)
    assert metrics.loudness_db_median == pytest.approx(6.0, abs=0.05)
    assert metrics.loudness_db_mean == pytest.approx(6.0, abs=0.05)
    assert metrics.f0_cents_median == pytest.approx(0.0, abs=1.0)


def test_unvoiced_estimate_counts_no_f0_frames(ref_tone, ref_features) -> None:
    noise = 0.1 * np.random.default_rng(4).standard_normal(ref_tone.size).astype(np.float32)
    metrics = resynthesis_metrics(ref_tone, noise, SETTINGS, ref_features=ref_features)
    assert metrics.f0_frames < 0.2 * ref_features.n_frames
    silence = np.zeros_like(ref_tone)
    metrics = resynthesis_metrics(ref_tone, silence, SETTINGS, ref_features=ref_features)
    assert metrics.f0_frames == 0 and math.isnan(metrics.f0_cents_median)
    assert metrics.loudness_frames > 0 and metrics.loudness_db_median > 40.0


def test_resynthesis_trims_to_the_shorter_clip(ref_tone, ref_features) -> None:
    est = ref_tone[: ref_tone.size - 3 * SETTINGS.hop_size - 17]
    metrics = resynthesis_metrics(ref_tone, est, SETTINGS, ref_features=ref_features)
    assert metrics.n_samples == est.size
    assert metrics.spectral_distance == 0.0
    assert metrics.loudness_frames <= est.size // SETTINGS.hop_size
    # the last frames see the cut, everything before matches
    assert metrics.loudness_db_median == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="mono"):
        resynthesis_metrics(np.stack([ref_tone, ref_tone]), ref_tone, SETTINGS)


def test_resynthesis_without_cached_ref_features(ref_tone) -> None:
    short = ref_tone[: SAMPLE_RATE // 4]
    metrics = resynthesis_metrics(short, short * np.float32(0.5), SETTINGS)
    assert metrics.loudness_db_median == pytest.approx(20 * math.log10(2), abs=0.05)


def test_loudness_function_agrees_with_metric_gain() -> None:
    """The 6 dB above is the features' A-weighted loudness, not a metric-specific measure."""
    tone = harmonic_tone(440.0, seconds=0.2)
    difference = (a_weighted_loudness_db(tone, SAMPLE_RATE, SETTINGS.hop_size, SETTINGS.loudness_n_fft)
                  - a_weighted_loudness_db(tone * 0.5, SAMPLE_RATE, SETTINGS.hop_size, SETTINGS.loudness_n_fft))
    assert np.median(difference) == pytest.approx(6.02, abs=0.01)


# --- pooling ------------------------------------------------------------------------------------------------


def test_aggregate_pools_frames_not_medians() -> None:
    first = ResynthesisMetrics.from_frame_errors(1.0, 1000, np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    second = ResynthesisMetrics.from_frame_errors(4.0, 3000, np.array([100.0]), np.array([]))
    pooled = aggregate_metrics([first, second])
    assert pooled.f0_frames == 4 and pooled.loudness_frames == 3
    assert pooled.f0_cents_median == pytest.approx(2.5)  # median of medians would be 51
    assert pooled.f0_cents_mean == pytest.approx(106 / 4)
    assert pooled.loudness_db_median == 1.0
    assert pooled.spectral_distance == pytest.approx((1.0 * 1000 + 4.0 * 3000) / 4000)
    assert pooled.n_samples == 4000
    assert math.isnan(second.loudness_db_median) and second.loudness_frames == 0
    assert aggregate_metrics([first]).as_dict() == first.as_dict()


def test_aggregate_refuses_empty_or_summary_only_items() -> None:
    with pytest.raises(ValueError, match="at least one"):
        aggregate_metrics([])
    summary_only = ResynthesisMetrics(0.1, 5.0, 6.0, 10, 1.0, 1.5, 20, 48000)
    with pytest.raises(ValueError, match="per-frame"):
        aggregate_metrics([summary_only])


def test_as_dict_is_json_ready_without_frame_arrays(ref_tone, ref_features) -> None:
    metrics = resynthesis_metrics(ref_tone, ref_tone * np.float32(0.9), SETTINGS, ref_features=ref_features)
    summary = metrics.as_dict()
    assert set(summary) == {"spectral_distance", "f0_cents_median", "f0_cents_mean", "f0_frames",
                            "loudness_db_median", "loudness_db_mean", "loudness_frames", "n_samples"}
    assert json.loads(json.dumps(summary)) == summary
