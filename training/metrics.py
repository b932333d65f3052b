"""Held-out resynthesis metrics: one definition shared by training, benchmarks and evaluation.

- Spectral distance: DDSP's multi-resolution spectral loss (Engel et al. 2020), computed by
  ``auraloss.freq.MultiResolutionSTFTLoss`` configured into that form (see `spectral_loss_module`).
- f0 error in cents on frames confidently voiced in both signals.
- Loudness error in dB on frames where the reference is audible.

Medians and means are pooled over frames, so `aggregate_metrics` over clips weights every frame equally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np
import torch
from auraloss.freq import MultiResolutionSTFTLoss, STFTLoss

from training.features import FeatureSettings, Features, extract_features

DDSP_FFT_SIZES_16K: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64)
DDSP_SAMPLE_RATE = 16000
STFT_OVERLAP = 0.75

VOICED_PROB_MIN = 0.5
LOUDNESS_RANGE_DB = 40.0
LOUDNESS_FLOOR_DB = -70.0


def scaled_fft_sizes(sample_rate: int) -> tuple[int, ...]:
    """DDSP's FFT sizes scaled by sample_rate / 16000 so each window spans the same duration.

    Each size is rounded to the nearest power of two in log2 (ties upward): 16 kHz gives DDSP's
    (2048 ... 64), 48 kHz gives (8192, 4096, 2048, 1024, 512, 256), 44.1 kHz gives (4096 ... 128).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    scale = sample_rate / DDSP_SAMPLE_RATE
    return tuple(2 ** int(math.floor(math.log2(size * scale) + 0.5)) for size in DDSP_FFT_SIZES_16K)


def spectral_min_n_samples(sample_rate: int) -> int:
    """Shortest signal the spectral loss accepts: centred STFT reflect-pads by fft_size // 2 < n_samples."""
    return max(scaled_fft_sizes(sample_rate)) // 2 + 1


class _MagnitudeOnlySTFTLoss(STFTLoss):
    """auraloss's STFTLoss without the phase spectrum it computes unconditionally (torch.angle on every STFT,
    unused with w_phs=0): measured at ~13% of a training step on CPU. Everything else is auraloss's."""

    def stft(self, x):
        x_stft = torch.stft(x, self.fft_size, self.hop_size, self.win_length, self.window, return_complex=True)
        return torch.sqrt(torch.clamp((x_stft.real ** 2) + (x_stft.imag ** 2), min=self.eps)), None


class MultiResolutionSpectralLoss(torch.nn.Module):
    """DDSP's spectral loss over (batch, n_samples) tensors, returning a scalar tensor.

    Per resolution (Hann window = FFT size, hop = FFT size / 4, i.e. 75% overlap):
        mean|  |S_est| -  |S_ref| | + mean| log|S_est| - log|S_ref| |
    then the mean over resolutions. What auraloss 0.4 does (read from auraloss/freq.py):
    - ``torch.stft`` with ``center=True`` (reflect padding by fft_size // 2), ``normalized=False``:
      magnitudes are raw sums over the window, not divided by the window length or its sum; the
      same scale as DDSP's ``tf.signal.stft``.
    - magnitude = sqrt(clamp(re^2 + im^2, min=1e-8)), so the magnitude floor is 1e-4 and the log
      is natural log of that (DDSP: log(max(|S|, 1e-5))).
    - each L1 term is ``torch.nn.L1Loss(reduction="mean")``: mean over batch, frequency bins and
      frames (the L1 term's units are those of the unnormalised magnitude).
    - terms are summed per resolution and the sum over resolutions is divided by their count
      (DDSP sums over resolutions: this value is DDSP's divided by the number of resolutions).
    Differences from DDSP otherwise: centred frames instead of DDSP's end padding.
    """

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.fft_sizes = scaled_fft_sizes(sample_rate)
        self.min_n_samples = spectral_min_n_samples(sample_rate)
        hop_sizes = [int(size * (1.0 - STFT_OVERLAP)) for size in self.fft_sizes]
        self.stft_loss = MultiResolutionSTFTLoss(
            fft_sizes=list(self.fft_sizes),
            hop_sizes=hop_sizes,
            win_lengths=list(self.fft_sizes),
            window="hann_window",
            w_sc=0.0,
            w_log_mag=1.0,
            w_lin_mag=1.0,
            w_phs=0.0,
            mag_distance="L1",
            reduction="mean",
        )
        for loss in self.stft_loss.stft_losses:
            loss.__class__ = _MagnitudeOnlySTFTLoss

    def forward(self, audio_est: torch.Tensor, audio_ref: torch.Tensor) -> torch.Tensor:
        """audio_est, audio_ref: (batch, n_samples) or (n_samples,), same shape; returns a scalar."""
        if audio_est.shape != audio_ref.shape:
            raise ValueError(
                f"spectral loss needs equal shapes, got est {tuple(audio_est.shape)} and ref {tuple(audio_ref.shape)}"
            )
        if audio_est.dim() == 1:
            audio_est, audio_ref = audio_est[None], audio_ref[None]
        if audio_est.dim() != 2:
            raise ValueError(f"spectral loss takes (batch, n_samples) audio, got shape {tuple(audio_est.shape)}")
        n_samples = audio_est.shape[-1]
        if n_samples < self.min_n_samples:
            raise ValueError(
                f"spectral loss at {self.sample_rate} Hz needs at least {self.min_n_samples} samples "
                f"(largest FFT {max(self.fft_sizes)}), got {n_samples}"
            )
        # auraloss expects (batch, channels, n_samples)
        return self.stft_loss(audio_est[:, None, :], audio_ref[:, None, :])


def spectral_loss_module(sample_rate: int) -> torch.nn.Module:
    """The differentiable spectral loss used for training: module(audio_est, audio_ref) -> scalar."""
    return MultiResolutionSpectralLoss(sample_rate)


def _as_float32_tensor(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(audio, torch.Tensor):
        return audio.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.require(audio, np.float32, ["C", "W"]))   # copies a read-only (memmap) input


def multires_spectral_distance(
    ref: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor, sample_rate: int
) -> float:
    """DDSP spectral distance between two signals (n_samples,) or (batch, n_samples).

    Signals of unequal length are trimmed to the shorter (a decoder renders whole hops, so
    resynthesis can differ from the reference by up to a hop). 0.0 for identical signals.
    """
    ref_tensor, est_tensor = _as_float32_tensor(ref), _as_float32_tensor(est)
    if ref_tensor.shape[:-1] != est_tensor.shape[:-1]:
        raise ValueError(f"batch shapes differ: ref {tuple(ref_tensor.shape)}, est {tuple(est_tensor.shape)}")
    n_samples = min(ref_tensor.shape[-1], est_tensor.shape[-1])
    with torch.no_grad():
        distance = spectral_loss_module(sample_rate)(est_tensor[..., :n_samples], ref_tensor[..., :n_samples])
    return float(distance)


def _check_frame_arrays(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray, mask: np.ndarray) -> None:
    if not (a.shape == b.shape == mask.shape):
        raise ValueError(f"{name_a} {a.shape}, {name_b} {b.shape} and mask {mask.shape} must have one shape")


def f0_error_cents(f0_ref_hz: np.ndarray, f0_est_hz: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """|1200 * log2(est / ref)| on frames where mask is true and both f0 are finite and positive.

    Returns a 1-D array, one value per counted frame.
    """
    f0_ref_hz, f0_est_hz = np.asarray(f0_ref_hz, dtype=np.float64), np.asarray(f0_est_hz, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    _check_frame_arrays("f0_ref_hz", f0_ref_hz, "f0_est_hz", f0_est_hz, mask)
    with np.errstate(invalid="ignore"):
        valid = mask & np.isfinite(f0_ref_hz) & np.isfinite(f0_est_hz) & (f0_ref_hz > 0) & (f0_est_hz > 0)
    return np.abs(1200.0 * np.log2(f0_est_hz[valid] / f0_ref_hz[valid]))


def loudness_error_db(ref_db: np.ndarray, est_db: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """|est - ref| in dB on frames where mask is true; a 1-D array, one value per counted frame."""
    ref_db, est_db = np.asarray(ref_db, dtype=np.float64), np.asarray(est_db, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    _check_frame_arrays("ref_db", ref_db, "est_db", est_db, mask)
    return np.abs(est_db[mask] - ref_db[mask])


def loudness_mask(ref_db: np.ndarray) -> np.ndarray:
    """Frames within LOUDNESS_RANGE_DB of the reference's loudest frame and above LOUDNESS_FLOOR_DB."""
    ref_db = np.asarray(ref_db, dtype=np.float64)
    if ref_db.size == 0:
        return np.zeros(0, dtype=bool)
    return (ref_db >= np.max(ref_db) - LOUDNESS_RANGE_DB) & (ref_db > LOUDNESS_FLOOR_DB)


def f0_mask(ref_voiced: np.ndarray, ref_voiced_prob: np.ndarray, est_voiced: np.ndarray) -> np.ndarray:
    """Frames confidently voiced in the reference (voiced and voiced_prob >= 0.5) and voiced in the estimate."""
    return (
        np.asarray(ref_voiced, dtype=bool)
        & (np.asarray(ref_voiced_prob) >= VOICED_PROB_MIN)
        & np.asarray(est_voiced, dtype=bool)
    )


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


@dataclass
class ResynthesisMetrics:
    """Resynthesis quality of one clip or a pool of clips; NaN statistics where no frame counted.

    The per-frame error arrays are kept so that `aggregate_metrics` pools frames; `as_dict` leaves
    them out.
    """

    spectral_distance: float
    f0_cents_median: float
    f0_cents_mean: float
    f0_frames: int
    loudness_db_median: float
    loudness_db_mean: float
    loudness_frames: int
    n_samples: int  # samples compared; weights spectral_distance when pooling
    f0_cents_per_frame: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    loudness_db_per_frame: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @classmethod
    def from_frame_errors(
        cls, spectral_distance: float, n_samples: int, f0_cents_per_frame: np.ndarray, loudness_db_per_frame: np.ndarray
    ) -> "ResynthesisMetrics":
        f0_cents_per_frame = np.asarray(f0_cents_per_frame, dtype=np.float64).reshape(-1)
        loudness_db_per_frame = np.asarray(loudness_db_per_frame, dtype=np.float64).reshape(-1)
        return cls(
            spectral_distance=float(spectral_distance),
            f0_cents_median=_median(f0_cents_per_frame),
            f0_cents_mean=_mean(f0_cents_per_frame),
            f0_frames=int(f0_cents_per_frame.size),
            loudness_db_median=_median(loudness_db_per_frame),
            loudness_db_mean=_mean(loudness_db_per_frame),
            loudness_frames=int(loudness_db_per_frame.size),
            n_samples=int(n_samples),
            f0_cents_per_frame=f0_cents_per_frame,
            loudness_db_per_frame=loudness_db_per_frame,
        )

    def as_dict(self) -> dict:
        """The summary numbers as plain Python scalars (JSON-ready), without the per-frame arrays."""
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name not in ("f0_cents_per_frame", "loudness_db_per_frame")
        }


def _check_mono(name: str, audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"{name} must be mono (n_samples,), got shape {audio.shape}")
    return audio


def resynthesis_metrics(
    ref_audio: np.ndarray,
    est_audio: np.ndarray,
    settings: FeatureSettings,
    ref_features: Features | None = None,
) -> ResynthesisMetrics:
    """Compare a resynthesis `est_audio` with its reference `ref_audio`, both mono at settings.sample_rate.

    Signals are trimmed to the shorter length; `ref_features` (e.g. cached by the dataset) skips the
    reference's feature extraction and is trimmed to the common number of frames.
    """
    ref_audio, est_audio = _check_mono("ref_audio", ref_audio), _check_mono("est_audio", est_audio)
    n_samples = min(ref_audio.size, est_audio.size)
    ref_audio, est_audio = ref_audio[:n_samples], est_audio[:n_samples]

    spectral_distance = multires_spectral_distance(ref_audio, est_audio, settings.sample_rate)
    if ref_features is None:
        ref_features = extract_features(ref_audio, settings)
    est_features = extract_features(est_audio, settings)

    n_frames = min(len(ref_features.f0_hz), len(est_features.f0_hz))
    ref_f0_hz, est_f0_hz = np.asarray(ref_features.f0_hz)[:n_frames], np.asarray(est_features.f0_hz)[:n_frames]
    ref_loudness_db = np.asarray(ref_features.loudness_db)[:n_frames]
    est_loudness_db = np.asarray(est_features.loudness_db)[:n_frames]
    mask_f0 = f0_mask(
        np.asarray(ref_features.voiced)[:n_frames],
        np.asarray(ref_features.voiced_prob)[:n_frames],
        np.asarray(est_features.voiced)[:n_frames],
    )

    f0_cents = f0_error_cents(ref_f0_hz, est_f0_hz, mask_f0)
    loudness_db = loudness_error_db(ref_loudness_db, est_loudness_db, loudness_mask(ref_loudness_db))
    return ResynthesisMetrics.from_frame_errors(spectral_distance, n_samples, f0_cents, loudness_db)


def aggregate_metrics(items: Sequence[ResynthesisMetrics]) -> ResynthesisMetrics:
    """Pool clips: f0/loudness medians and means over all their frames together, spectral distance
    weighted by each clip's n_samples."""
    if not items:
        raise ValueError("aggregate_metrics needs at least one ResynthesisMetrics")
    for item in items:
        if item.f0_cents_per_frame.size != item.f0_frames or item.loudness_db_per_frame.size != item.loudness_frames:
            raise ValueError("aggregate_metrics needs the per-frame arrays (build items with resynthesis_metrics)")
    total_n_samples = sum(item.n_samples for item in items)
    if total_n_samples > 0:
        spectral_distance = sum(item.spectral_distance * item.n_samples for item in items) / total_n_samples
    else:
        spectral_distance = math.nan
    return ResynthesisMetrics.from_frame_errors(
        spectral_distance,
        total_n_samples,
        np.concatenate([item.f0_cents_per_frame for item in items]),
        np.concatenate([item.loudness_db_per_frame for item in items]),
    )
