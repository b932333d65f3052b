"""Offline audio augmentation with pedalboard: parameters are drawn from a seed, then applied.

Each (source, variant) gets its own generator seeded with (seed, source_index, variant_index), so a variant is
reproducible and loggable (AugmentParams.as_dict). Variants are rendered once and cached on disk; the only
per-training-step augmentation is random_gain, which is exact and costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.features import (
    LOUDNESS_FLOOR_DB,
    FeatureSettings,
    Features,
    a_weighted_loudness_db,
    audio_hash,
    FeatureCacheReport,
    read_cached_features,
    save_npz_atomic,
)

# Bump when the effect chain or its fixed settings change, so old cached renders are not reused.
AUGMENT_VERSION = 1

LOW_SHELF_CUTOFF_HZ = 200.0
HIGH_SHELF_CUTOFF_HZ = 4000.0
PEAK_Q = 1.0
COMPRESSOR_ATTACK_MS = 10.0
COMPRESSOR_RELEASE_MS = 100.0
REVERB_DRY_LEVEL = 0.5  # JUCE's reverb scales dry by 2: 0.5 is unity gain


@dataclass(frozen=True)
class AugmentParams:
    gain_db: float
    low_shelf_gain_db: float
    high_shelf_gain_db: float
    peak_freq_hz: float
    peak_gain_db: float
    compressor_threshold_db: float
    compressor_ratio: float
    reverb_room_size: float
    reverb_wet_level: float
    pitch_shift_semitones: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def draw_params(rng: np.random.Generator, pitch_shift_range_semitones: float = 2.0) -> AugmentParams:
    """Mild random settings; the order of draws is part of the format (changing it changes every variant)."""
    return AugmentParams(
        gain_db=float(rng.uniform(-6.0, 6.0)),
        low_shelf_gain_db=float(rng.uniform(-6.0, 6.0)),
        high_shelf_gain_db=float(rng.uniform(-6.0, 6.0)),
        peak_freq_hz=float(np.exp(rng.uniform(np.log(300.0), np.log(4000.0)))),
        peak_gain_db=float(rng.uniform(-6.0, 6.0)),
        compressor_threshold_db=float(rng.uniform(-30.0, -10.0)),
        compressor_ratio=float(rng.uniform(1.5, 4.0)),
        reverb_room_size=float(rng.uniform(0.1, 0.6)),
        reverb_wet_level=float(rng.uniform(0.0, 0.25)),
        pitch_shift_semitones=float(
            rng.uniform(-pitch_shift_range_semitones, pitch_shift_range_semitones)
        ),
    )


# ------------------------------------------------------------------------------------------ rendering


def _envelope(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import scipy.signal

    smooth = int(sample_rate * 0.005) | 1
    window = np.hanning(smooth)
    return scipy.signal.fftconvolve(np.abs(scipy.signal.hilbert(audio)), window / window.sum(), mode="same")


@functools.lru_cache(maxsize=256)
def pitch_shift_delay_samples(sample_rate: int, semitones: float) -> int:
    """Delay (samples, >0 = late) that pedalboard's PitchShift leaves after its own latency compensation.

    Rubber Band's residual offset grows with the shift (about -1.3 ms at +2 st, +1.6 ms at -2 st at 48 kHz),
    so it is measured on a fixed probe (harmonic tone bursts with smooth envelopes): the median shift of
    the bursts' envelope centroids.
    """
    import pedalboard

    if semitones == 0.0:
        return 0
    centres_s = np.arange(0.25, 2.01, 0.25)
    t = np.arange(int(2.25 * sample_rate)) / sample_rate
    rng = np.random.default_rng(0)
    probe = np.zeros_like(t)
    for c in centres_s:
        f = rng.uniform(100.0, 800.0)
        tone = sum(np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 4))
        probe += np.exp(-0.5 * ((t - c) / 0.03) ** 2) * tone
    probe = (0.3 * probe).astype(np.float32)
    shifted = pedalboard.PitchShift(semitones=semitones)(probe[None], sample_rate)[0]
    env_in, env_out = _envelope(probe, sample_rate), _envelope(shifted, sample_rate)
    half = int(0.1 * sample_rate)
    delays = []
    for c in centres_s:
        sl = slice(int(c * sample_rate) - half, int(c * sample_rate) + half)
        idx = np.arange(2 * half)
        delays.append(
            (idx * env_out[sl]).sum() / env_out[sl].sum() - (idx * env_in[sl]).sum() / env_in[sl].sum()
        )
    return int(round(float(np.median(delays))))


def _advance(audio: np.ndarray, n: int) -> np.ndarray:
    """Shift audio earlier by n samples (later if n < 0), keeping its length, zero-filling."""
    if n == 0:
        return audio
    out = np.zeros_like(audio)
    if abs(n) >= audio.shape[0]:
        return out
    if n > 0:
        out[: audio.shape[0] - n] = audio[n:]
    else:
        out[-n:] = audio[: audio.shape[0] + n]
    return out


def apply_effects(audio: np.ndarray, sample_rate: int, params: AugmentParams) -> np.ndarray:
    """Render params onto mono audio: same length, time-aligned, finite float32, peak <= 1.0."""
    import pedalboard

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {audio.shape}")
    if audio.shape[0] == 0:
        return audio.copy()
    board = pedalboard.Pedalboard(
        [
            pedalboard.Gain(gain_db=params.gain_db),
            pedalboard.LowShelfFilter(cutoff_frequency_hz=LOW_SHELF_CUTOFF_HZ, gain_db=params.low_shelf_gain_db),
            pedalboard.HighShelfFilter(
                cutoff_frequency_hz=HIGH_SHELF_CUTOFF_HZ, gain_db=params.high_shelf_gain_db
            ),
            pedalboard.PeakFilter(cutoff_frequency_hz=params.peak_freq_hz, gain_db=params.peak_gain_db, q=PEAK_Q),
            pedalboard.Compressor(
                threshold_db=params.compressor_threshold_db,
                ratio=params.compressor_ratio,
                attack_ms=COMPRESSOR_ATTACK_MS,
                release_ms=COMPRESSOR_RELEASE_MS,
            ),
            pedalboard.Reverb(
                room_size=params.reverb_room_size, wet_level=params.reverb_wet_level, dry_level=REVERB_DRY_LEVEL
            ),
        ]
    )
    out = board(audio[None], sample_rate)[0]
    if params.pitch_shift_semitones != 0.0:
        shifted = pedalboard.PitchShift(semitones=params.pitch_shift_semitones)(out[None], sample_rate)[0]
        out = _advance(shifted, pitch_shift_delay_samples(sample_rate, params.pitch_shift_semitones))
    out = np.nan_to_num(out[: audio.shape[0]], nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    if out.shape[0] < audio.shape[0]:
        out = np.concatenate([out, np.zeros(audio.shape[0] - out.shape[0], np.float32)])
    peak = float(np.max(np.abs(out)))
    if peak > 1.0:
        out *= np.float32(1.0 / peak)
        np.clip(out, -1.0, 1.0, out=out)
    return out


def augment_features(
    features: Features, augmented_audio: np.ndarray, params: AugmentParams, settings: FeatureSettings
) -> Features:
    """Features of a render: f0 scaled by the pitch shift (no pYIN rerun), voicing kept, loudness recomputed."""
    ratio = 2.0 ** (params.pitch_shift_semitones / 12.0)
    return Features(
        f0_hz=(features.f0_hz * ratio).astype(np.float32),
        voiced_prob=features.voiced_prob.copy(),
        voiced=features.voiced.copy(),
        loudness_db=a_weighted_loudness_db(
            augmented_audio, settings.sample_rate, settings.hop_size, settings.loudness_n_fft
        ),
    )


def random_gain(audio: np.ndarray, features: Features, gain_db: float) -> tuple[np.ndarray, Features]:
    """Scale audio by gain_db and shift loudness_db by exactly gain_db; floor frames stay at the floor."""
    scaled = (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(audio.dtype, copy=False)
    loudness = features.loudness_db
    shifted = np.where(
        loudness <= LOUDNESS_FLOOR_DB, LOUDNESS_FLOOR_DB, np.maximum(loudness + gain_db, LOUDNESS_FLOOR_DB)
    ).astype(np.float32)
    return scaled, dataclasses.replace(features, loudness_db=shifted)


# ---------------------------------------------------------------------------------------------- variants


def variant_rng(seed: int, source_index: int, variant_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, source_index, variant_index])


def _variant_cache_path(
    cache_dir: Path, audio: np.ndarray, features: Features, params: AugmentParams, settings: FeatureSettings
) -> Path:
    import pedalboard

    h = hashlib.sha256()
    h.update(audio_hash(audio).encode())
    for a in (features.f0_hz, features.voiced_prob, features.voiced, features.loudness_db):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(params.as_dict(), sort_keys=True).encode())
    h.update(f"{settings.cache_key()}:{AUGMENT_VERSION}:{pedalboard.__version__}".encode())
    return Path(cache_dir) / f"variant-{h.hexdigest()[:32]}.npz"


def _load_variant(path: Path, n_samples: int, n_frames: int) -> tuple[tuple[np.ndarray, Features] | None, str | None]:
    """((audio, features), None) for a good cache entry, (None, None) for none, (None, why) for a corrupt one."""
    features, why = read_cached_features(path, n_frames)
    if features is None:
        return None, why
    try:
        with np.load(path, allow_pickle=False) as data:
            audio = data["audio"].astype(np.float32)
    except Exception as exc:
        return None, f"unreadable audio ({type(exc).__name__}: {exc})"
    if audio.shape != (n_samples,):
        return None, f"audio has shape {audio.shape}, expected ({n_samples},)"
    if not np.all(np.isfinite(audio)):
        return None, "audio has non-finite samples"
    return (audio, features), None


def make_augmented_variants(*args, **kwargs) -> list[tuple[np.ndarray, Features, AugmentParams, int]]:
    """The variants alone of :func:`make_augmented_variants_reported` (same arguments)."""
    return make_augmented_variants_reported(*args, **kwargs)[0]


def make_augmented_variants_reported(
    audios: Sequence[np.ndarray],
    features: Sequence[Features],
    n_variants: int,
    seed: int,
    settings: FeatureSettings,
    cache_dir: Path | None,
    progress: bool = True,
    pitch_shift_range_semitones: float = 2.0,
    n_jobs: int | None = None,
) -> tuple[list[tuple[np.ndarray, Features, AugmentParams, int]], FeatureCacheReport]:
    """(audio, features, params, source_index) for every source x variant, source-major, and what came from the
    cache, was rendered, or was re-rendered because its cache entry was corrupt (unreadable, truncated, NaN/inf).

    Params come from variant_rng(seed, source, variant). Renders are cached in cache_dir (key: audio, source
    features, params, settings, AUGMENT_VERSION, pedalboard version). n_jobs threads (pedalboard releases
    the GIL; default os.cpu_count()).
    """
    from tqdm import tqdm

    if len(audios) != len(features):
        raise ValueError(f"{len(audios)} audios but {len(features)} feature sets")
    jobs = [
        (i, v, draw_params(variant_rng(seed, i, v), pitch_shift_range_semitones))
        for i in range(len(audios))
        for v in range(n_variants)
    ]

    report = FeatureCacheReport()
    report_lock = threading.Lock()          # `one` runs in worker threads

    def one(job: tuple[int, int, AugmentParams]) -> tuple[np.ndarray, Features, AugmentParams, int]:
        i, v, params = job
        audio = np.asarray(audios[i], dtype=np.float32)
        n_frames = audio.shape[0] // settings.hop_size
        path, cached, why = None, None, None
        if cache_dir is not None:
            path = _variant_cache_path(Path(cache_dir), audio, features[i], params, settings)
            cached, why = _load_variant(path, audio.shape[0], n_frames)
        with report_lock:
            if cached is not None:
                report.from_cache += 1
            elif why is not None:
                report.rejected.append(f"source {i} variant {v}: {why}")
            else:
                report.computed += 1
        if cached is not None:
            return cached[0], cached[1], params, i
        rendered = apply_effects(audio, settings.sample_rate, params)
        rendered_features = augment_features(features[i], rendered, params, settings)
        if path is not None:
            save_npz_atomic(
                path,
                audio=rendered,
                f0_hz=rendered_features.f0_hz,
                voiced_prob=rendered_features.voiced_prob,
                voiced=rendered_features.voiced,
                loudness_db=rendered_features.loudness_db,
            )
        return rendered, rendered_features, params, i

    n_jobs = (os.cpu_count() or 1) if n_jobs is None else max(1, n_jobs)
    with tqdm(total=len(jobs), desc="augment", unit="variant", disable=not progress or not jobs) as bar:
        if n_jobs == 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(one(job))
                bar.update(1)
            return results, report
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for future in futures:
                future.result()
                bar.update(1)
            return [future.result() for future in futures], report
