"""Control features for training: f0 (pYIN), voicing and A-weighted loudness.

Frame convention (the synth depends on it): for audio of ``n_samples`` at ``sample_rate``, every feature has
exactly ``n_frames = n_samples // hop_size`` frames, and frame ``k`` describes the audio centred at sample
``k * hop_size`` (librosa ``center=True``, extra trailing frame dropped, zero-padded if short).

pYIN runs at ``pyin_sample_rate`` (16 kHz, 10 ms hop) and is interpolated onto the model's frames. Its
observation model is librosa's (same CMND, trough priors, thresholds and transition matrix), but the Viterbi
decode (numba) exploits the banded pitch-transition matrix: ~1.4 s per audio-minute instead of ~60 s for
``librosa.pyin`` over C1-C7, whose dense decode costs 1442^2 per frame. Results equal librosa.pyin's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numba
import numpy as np

# Bump when the feature computation changes, so old caches are not reused.
FEATURES_VERSION = 1

LOUDNESS_FLOOR_DB = -100.0
NEUTRAL_F0_HZ = 220.0

# pYIN model constants (librosa defaults). Changing any of them needs a FEATURES_VERSION bump.
PYIN_N_THRESHOLDS = 100
PYIN_BETA_PARAMETERS = (2.0, 18.0)
PYIN_BOLTZMANN_PARAMETER = 2.0
PYIN_RESOLUTION_SEMITONES = 0.1
PYIN_MAX_TRANSITION_RATE = 35.92  # octaves per second
PYIN_SWITCH_PROB = 0.01
PYIN_NO_TROUGH_PROB = 0.01


@dataclass(frozen=True)
class FeatureSettings:
    sample_rate: int = 48000
    hop_size: int = 128
    loudness_n_fft: int = 2048
    f0_min_hz: float = 32.7  # C1
    f0_max_hz: float = 2637.0  # E7: a ceiling at a played note (C7 = 2093 Hz) read it an octave low
    pyin_sample_rate: int = 16000
    pyin_frame_length: int = 1024
    pyin_hop_size: int = 160  # 10 ms at 16 kHz

    def cache_key(self) -> str:
        """Stable short hash of every field and FEATURES_VERSION."""
        payload = json.dumps(
            {"version": FEATURES_VERSION, **dataclasses.asdict(self)}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Features:
    """Per-frame controls; all arrays have shape (n_frames,)."""

    f0_hz: np.ndarray  # float32, always finite and > 0 (unvoiced gaps filled)
    voiced_prob: np.ndarray  # float32 in [0, 1]
    voiced: np.ndarray  # bool
    loudness_db: np.ndarray  # float32, >= LOUDNESS_FLOOR_DB

    @property
    def n_frames(self) -> int:
        return int(self.f0_hz.shape[0])

    def slice(self, start_frame: int, stop_frame: int) -> "Features":
        s = slice(start_frame, stop_frame)
        return Features(
            f0_hz=self.f0_hz[s],
            voiced_prob=self.voiced_prob[s],
            voiced=self.voiced[s],
            loudness_db=self.loudness_db[s],
        )


# --------------------------------------------------------------------------------------------- helpers


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def hz_to_midi(f_hz: np.ndarray | float) -> np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(f_hz, dtype=np.float64) / 440.0)


def _fit_frames(x: np.ndarray, n_frames: int) -> np.ndarray:
    """Drop extra trailing frames or zero-pad to exactly n_frames."""
    if x.shape[0] >= n_frames:
        return x[:n_frames]
    return np.concatenate([x, np.zeros(n_frames - x.shape[0], dtype=x.dtype)])


def _check_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {audio.shape}")
    return audio


def fill_unvoiced_f0(f0_hz: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Fill unvoiced frames by log-frequency interpolation between voiced neighbours, held at the ends.

    All-unvoiced input is filled with NEUTRAL_F0_HZ. Returns float64, finite and > 0.
    """
    f0_hz = np.asarray(f0_hz, dtype=np.float64)
    ok = np.asarray(voiced, dtype=bool) & np.isfinite(f0_hz) & (f0_hz > 0)
    if not ok.any():
        return np.full(f0_hz.shape, NEUTRAL_F0_HZ)
    idx = np.arange(f0_hz.shape[0])
    return np.exp(np.interp(idx, idx[ok], np.log(f0_hz[ok])))


# -------------------------------------------------------------------------------------------- loudness


def a_weighted_loudness_db(
    audio: np.ndarray, sample_rate: int, hop_size: int, n_fft: int
) -> np.ndarray:
    """A-weighted power per frame in dB, shape (n_samples // hop_size,), float32.

    Hann-windowed STFT (center=True, zero padding). Power is the Parseval mean-square of the windowed frame,
    referenced to a full-scale sine: an amplitude-1 1 kHz sine reads 0 dB. Floored at LOUDNESS_FLOOR_DB.
    """
    import librosa

    audio = _check_mono(audio).astype(np.float32, copy=False)
    n_frames = audio.shape[0] // hop_size
    if n_frames == 0:
        return np.zeros(0, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # n_fft longer than a short input: zero padding is fine
        spec = librosa.stft(
            audio, n_fft=n_fft, hop_length=hop_size, window="hann", center=True, pad_mode="constant"
        )  # (1 + n_fft // 2, frames)
    power = spec.real**2 + spec.imag**2  # float32
    mean_square = _loudness_weights(sample_rate, n_fft) @ power
    # Full-scale sine has mean square 0.5 -> reference it to 0 dB.
    db = 10.0 * np.log10(np.maximum(2.0 * mean_square, 1e-30))
    db = np.maximum(db, LOUDNESS_FLOOR_DB).astype(np.float32)
    return _fit_frames(db, n_frames)


@functools.lru_cache(maxsize=16)
def _loudness_weights(sample_rate: int, n_fft: int) -> np.ndarray:
    """Per-bin weights turning |STFT|^2 into A-weighted mean square (Parseval, Hann window), float32."""
    import librosa

    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    with np.errstate(divide="ignore"):
        weight = 10.0 ** (librosa.A_weighting(freqs, min_db=-150.0) / 10.0)
    # One-sided spectrum: bins other than DC and Nyquist count twice.
    weight[1 : (n_fft + 1) // 2] *= 2.0
    window = librosa.filters.get_window("hann", n_fft, fftbins=True)
    weight /= n_fft * np.sum(window**2)
    weight = weight.astype(np.float32)
    weight.flags.writeable = False
    return weight


# ------------------------------------------------------------------------------------------------ pYIN


def _frames_centered(y: np.ndarray, frame_length: int, hop_size: int) -> np.ndarray:
    """(n_frames, frame_length) view of zero-padded y, frame i centred at sample i * hop_size."""
    pad = frame_length // 2
    y = np.pad(y, (pad, pad))
    n = 1 + (y.shape[0] - frame_length) // hop_size
    return np.lib.stride_tricks.as_strided(
        y, shape=(n, frame_length), strides=(y.strides[0] * hop_size, y.strides[0]), writeable=False
    )


def _cmnd(frames: np.ndarray, min_period: int, max_period: int) -> np.ndarray:
    """YIN cumulative mean normalised difference, (n_frames, max_period - min_period + 1)."""
    import scipy.fft

    frame_length = frames.shape[1]
    n_fft = 1 << int(np.ceil(np.log2(2 * frame_length - 1)))
    # float32 FFTs (as librosa.pyin on float32 audio); the rest in float64.
    spec = scipy.fft.rfft(frames.astype(np.float32), n=n_fft, axis=1)
    acf = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=n_fft, axis=1)[:, : max_period + 1]
    acf = acf.astype(np.float64)
    energy = np.cumsum(frames.astype(np.float64) ** 2, axis=1)
    diff = np.zeros((frames.shape[0], max_period + 1))
    # d(k) = 2 * (acf(0) - acf(k)) - sum_{m<k} y(m)^2
    diff[:, 1:] = 2.0 * (acf[:, :1] - acf[:, 1:]) - energy[:, :max_period]
    k = np.arange(1, max_period + 1)
    cumulative_mean = np.cumsum(diff[:, 1:], axis=1) / k
    numerator = diff[:, min_period : max_period + 1]
    denominator = cumulative_mean[:, min_period - 1 : max_period]
    return numerator / (denominator + np.finfo(np.float64).tiny)


def _parabolic_shifts(x: np.ndarray) -> np.ndarray:
    """Sub-bin offset of the parabola through each point and its neighbours (along axis 1); 0 at edges."""
    shifts = np.zeros_like(x)
    a = x[:, 2:] + x[:, :-2] - 2.0 * x[:, 1:-1]
    b = (x[:, 2:] - x[:, :-2]) / 2.0
    ok = np.abs(b) < np.abs(a)
    shifts[:, 1:-1] = np.where(ok, -b / np.where(ok, a, 1.0), 0.0)
    return shifts


@numba.njit(cache=True)
def _trough_probs(yin, is_trough, thresholds, beta_probs, cum_beta, lam, no_trough_prob, out):  # pragma: no cover
    """pYIN trough probabilities (librosa's __pyin_helper loop): writes out[frame, lag]."""
    n_frames, n_lags = yin.shape
    n_thresholds = beta_probs.shape[0]
    lags = np.empty(n_lags, dtype=np.int64)
    heights = np.empty(n_lags)
    probs = np.empty(n_lags)
    norm0 = 1.0 - np.exp(-lam)
    for i in range(n_frames):
        n_tr = 0
        for lag in range(n_lags):
            if is_trough[i, lag]:
                lags[n_tr] = lag
                heights[n_tr] = yin[i, lag]
                n_tr += 1
        if n_tr == 0:
            continue
        probs[:n_tr] = 0.0
        for th in range(n_thresholds):
            thr = thresholds[th + 1]
            n_below = 0
            for t in range(n_tr):
                if heights[t] < thr:
                    n_below += 1
            if n_below == 0:
                continue
            # scipy.stats.boltzmann.pmf(position, lam, n_below)
            scale = beta_probs[th] * norm0 / (1.0 - np.exp(-lam * n_below))
            position = 0
            for t in range(n_tr):
                if heights[t] < thr:
                    probs[t] += scale * np.exp(-lam * position)
                    position += 1
        g = 0
        for t in range(1, n_tr):
            if heights[t] < heights[g]:
                g = t
        n_not_below = 0
        for th in range(n_thresholds):
            if not heights[g] < thresholds[th + 1]:
                n_not_below += 1
        probs[g] += no_trough_prob * cum_beta[n_not_below]
        for t in range(n_tr):
            out[i, lags[t]] = probs[t]


@numba.njit(cache=True)
def _viterbi_banded(log_obs, band, log_switch, log_jump, half):  # pragma: no cover
    """Viterbi with transitions log_switch[a, b] + band[j, k] (source pitch j + k - half, target pitch j) and
    any other transition at log_jump. States: voicing a * n_pitch + pitch. Returns the state path."""
    n_frames, n_states = log_obs.shape
    n_pitch = n_states // 2
    width = 2 * half + 1
    ptr = np.empty((n_frames, n_states), dtype=np.int32)
    value = log_obs[0] - np.log(n_states)
    new = np.empty(n_states)
    m = np.empty((2, n_pitch))
    m_src = np.empty((2, n_pitch), dtype=np.int32)
    for t in range(1, n_frames):
        g = 0
        for s in range(1, n_states):
            if value[s] > value[g]:
                g = s
        jump = value[g] + log_jump
        for a in range(2):
            base = a * n_pitch
            for j in range(n_pitch):
                best = -np.inf
                best_i = j
                for k in range(width):
                    i = j + k - half
                    if i >= 0 and i < n_pitch:
                        v = value[base + i] + band[j, k]
                        if v > best:
                            best = v
                            best_i = i
                m[a, j] = best
                m_src[a, j] = base + best_i
        for b in range(2):
            for j in range(n_pitch):
                v0 = m[0, j] + log_switch[0, b]
                v1 = m[1, j] + log_switch[1, b]
                if v1 > v0:
                    best = v1
                    src = m_src[1, j]
                else:
                    best = v0
                    src = m_src[0, j]
                if jump > best:
                    best = jump
                    src = g
                new[b * n_pitch + j] = best + log_obs[t, b * n_pitch + j]
                ptr[t, b * n_pitch + j] = src
        value[:] = new
    states = np.empty(n_frames, dtype=np.int64)
    best_s = 0
    for s in range(1, n_states):
        if value[s] > value[best_s]:
            best_s = s
    states[n_frames - 1] = best_s
    for t in range(n_frames - 1, 0, -1):
        states[t - 1] = ptr[t, states[t]]
    return states


def _pyin_observations(
    yin: np.ndarray, shifts: np.ndarray, sr: int, min_period: int, fmin: float, n_pitch_bins: int,
    n_bins_per_semitone: int,
) -> tuple[np.ndarray, np.ndarray]:
    """pYIN observation probabilities (n_frames, 2 * n_pitch_bins) and voiced probability (n_frames,)."""
    import scipy.stats

    thresholds = np.linspace(0.0, 1.0, PYIN_N_THRESHOLDS + 1)
    beta_probs = np.diff(scipy.stats.beta.cdf(thresholds, *PYIN_BETA_PARAMETERS))
    cum_beta = np.concatenate([[0.0], np.cumsum(beta_probs)])
    lam = PYIN_BOLTZMANN_PARAMETER
    n_frames = yin.shape[0]

    # Troughs: librosa.util.localmin plus pYIN's special case for the first lag.
    is_trough = np.zeros_like(yin, dtype=bool)
    is_trough[:, 1:-1] = (yin[:, 1:-1] < yin[:, :-2]) & (yin[:, 1:-1] <= yin[:, 2:])
    is_trough[:, -1] = yin[:, -1] < yin[:, -2]
    is_trough[:, 0] = yin[:, 0] < yin[:, 1]

    trough_probs = np.zeros_like(yin)
    _trough_probs(yin, is_trough, thresholds, beta_probs, cum_beta, lam, PYIN_NO_TROUGH_PROB, trough_probs)
    frame_of, lag_of = np.nonzero(trough_probs)
    probs_flat = trough_probs[frame_of, lag_of]
    period = min_period + lag_of + shifts[frame_of, lag_of]
    f0_candidates = sr / period
    bins = 12 * n_bins_per_semitone * np.log2(f0_candidates / fmin)
    bins = np.clip(np.round(bins), 0, n_pitch_bins).astype(int)

    obs = np.zeros((n_frames, 2 * n_pitch_bins))
    obs[frame_of, bins] = probs_flat  # last write wins, as in librosa
    voiced_prob = np.clip(obs[:, :n_pitch_bins].sum(axis=1), 0.0, 1.0)
    obs[:, n_pitch_bins:] = ((1.0 - voiced_prob) / n_pitch_bins)[:, None]
    return obs, voiced_prob


def _banded_viterbi(obs: np.ndarray, n_pitch_bins: int, transition_width: int) -> np.ndarray:
    """Viterbi over pYIN's states: kron(switch 2x2, triangular local band) transitions.

    Equivalent to librosa.sequence.viterbi on the dense matrix (out-of-band transitions there cost log(tiny);
    here they are allowed at the same cost through a global-max candidate), O(states * width) per frame.
    """
    import librosa

    tiny = np.finfo(np.float64).tiny
    P = n_pitch_bins
    half = transition_width // 2
    local = librosa.sequence.transition_local(P, transition_width, window="triangle", wrap=False)
    log_switch = np.log(librosa.sequence.transition_loop(2, 1.0 - PYIN_SWITCH_PROB) + tiny)

    # band[j, k] = log local[j + k - half, j] (source j + k - half -> target j), -inf outside the matrix.
    src = np.arange(P)[:, None] + np.arange(-half, half + 1)[None, :]
    valid = (src >= 0) & (src < P)
    band = np.full((P, 2 * half + 1), -np.inf)
    band[valid] = np.log(local[src[valid], np.broadcast_to(np.arange(P)[:, None], src.shape)[valid]] + tiny)

    log_obs = np.log(obs + tiny)
    return _viterbi_banded(log_obs, band, log_switch, np.log(tiny), half)


def pyin_native(
    y: np.ndarray, sr: int, f0_min_hz: float, f0_max_hz: float, frame_length: int, hop_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pYIN at the input rate: (f0_hz, voiced_prob, voiced) per centred frame (1 + len(y) // hop_size frames).

    Same model as librosa.pyin (center=True, constant padding); f0 of unvoiced frames is NaN.
    """
    if f0_max_hz > sr / 2 or f0_min_hz <= 0 or f0_min_hz >= f0_max_hz:
        raise ValueError(f"invalid f0 range {f0_min_hz}..{f0_max_hz} Hz at {sr} Hz")
    if sr / f0_min_hz >= frame_length - 1:
        raise ValueError(f"f0_min_hz={f0_min_hz} needs frame_length > {int(np.ceil(sr / f0_min_hz)) + 1}")
    frames = _frames_centered(np.asarray(y, dtype=np.float32), frame_length, hop_size)
    min_period = int(np.floor(sr / f0_max_hz))
    max_period = min(int(np.ceil(sr / f0_min_hz)), frame_length - 1)
    yin = _cmnd(frames, min_period, max_period)
    shifts = _parabolic_shifts(yin)

    n_bins_per_semitone = int(np.ceil(1.0 / PYIN_RESOLUTION_SEMITONES))
    n_pitch_bins = int(np.floor(12 * n_bins_per_semitone * np.log2(f0_max_hz / f0_min_hz))) + 1
    obs, voiced_prob = _pyin_observations(
        yin, shifts, sr, min_period, f0_min_hz, n_pitch_bins, n_bins_per_semitone
    )
    max_semitones_per_frame = round(PYIN_MAX_TRANSITION_RATE * 12 * hop_size / sr)
    transition_width = max_semitones_per_frame * n_bins_per_semitone + 1
    states = _banded_viterbi(obs, n_pitch_bins, transition_width)

    freqs = f0_min_hz * 2.0 ** (np.arange(n_pitch_bins) / (12 * n_bins_per_semitone))
    f0 = freqs[states % n_pitch_bins]
    voiced = states < n_pitch_bins
    f0[~voiced] = np.nan
    return f0, voiced_prob, voiced


def f0_pyin(
    audio: np.ndarray,
    sample_rate: int,
    hop_size: int,
    f0_min_hz: float,
    f0_max_hz: float,
    pyin_sample_rate: int = 16000,
    pyin_frame_length: int = 1024,
    pyin_hop_size: int = 160,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pYIN f0 on the model's frames: (f0_hz float32 filled & >0, voiced_prob float32, voiced bool).

    Runs at pyin_sample_rate, then maps pYIN frame i (time i * pyin_hop_size / pyin_sample_rate) onto model
    frame k (time k * hop_size / sample_rate): log-f0 and probability linearly, the voiced flag by nearest.
    No time offset (tested with pitch steps); voiced_prob does fall a few frames after a note ends, because
    librosa's YIN difference function penalises energy at the end of its window.
    """
    import librosa

    audio = _check_mono(audio).astype(np.float32, copy=False)
    n_frames = audio.shape[0] // hop_size
    if n_frames == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, bool)
    if pyin_sample_rate != sample_rate:
        y = librosa.resample(audio, orig_sr=sample_rate, target_sr=pyin_sample_rate)
    else:
        y = audio
    f0, prob, voiced = pyin_native(y, pyin_sample_rate, f0_min_hz, f0_max_hz, pyin_frame_length, pyin_hop_size)
    log_f0 = np.log(fill_unvoiced_f0(f0, voiced))

    position = np.arange(n_frames) * (hop_size / sample_rate) * (pyin_sample_rate / pyin_hop_size)
    src = np.arange(f0.shape[0])
    f0_hz = np.exp(np.interp(position, src, log_f0)).astype(np.float32)
    voiced_prob = np.interp(position, src, prob).astype(np.float32)
    nearest = np.clip(np.rint(position).astype(int), 0, f0.shape[0] - 1)
    return f0_hz, voiced_prob, voiced[nearest].copy()


# ---------------------------------------------------------------------------------------------- corpus


def extract_features(audio: np.ndarray, settings: FeatureSettings) -> Features:
    audio = _check_mono(audio).astype(np.float32, copy=False)
    f0_hz, voiced_prob, voiced = f0_pyin(
        audio,
        settings.sample_rate,
        settings.hop_size,
        settings.f0_min_hz,
        settings.f0_max_hz,
        settings.pyin_sample_rate,
        settings.pyin_frame_length,
        settings.pyin_hop_size,
    )
    loudness_db = a_weighted_loudness_db(
        audio, settings.sample_rate, settings.hop_size, settings.loudness_n_fft
    )
    return Features(f0_hz=f0_hz, voiced_prob=voiced_prob, voiced=voiced, loudness_db=loudness_db)


def audio_hash(audio: np.ndarray) -> str:
    """sha256 of the audio's float32 bytes (read in place: a contiguous float32 array or memmap is not copied)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(audio, dtype=np.float32))).hexdigest()


def features_cache_path(cache_dir: Path, audio: np.ndarray, settings: FeatureSettings) -> Path:
    key = hashlib.sha256(f"{audio_hash(audio)}:{settings.cache_key()}".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"features-{key}.npz"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz via a temporary file in the same folder and os.replace (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_features(path: Path, features: Features) -> None:
    save_npz_atomic(
        path,
        f0_hz=features.f0_hz,
        voiced_prob=features.voiced_prob,
        voiced=features.voiced,
        loudness_db=features.loudness_db,
    )


def check_features(features: Features, n_frames: int) -> str | None:
    """Why these features cannot be trained on (wrong length, NaN/inf, out-of-range values), or None if fine."""
    arrays = {"f0_hz": features.f0_hz, "voiced_prob": features.voiced_prob, "voiced": features.voiced,
              "loudness_db": features.loudness_db}
    for name, a in arrays.items():
        if a.shape != (n_frames,):
            return f"{name} has shape {a.shape}, expected ({n_frames},)"
    for name in ("f0_hz", "voiced_prob", "loudness_db"):
        bad = int(np.count_nonzero(~np.isfinite(arrays[name])))
        if bad:
            return f"{name} has {bad} non-finite value(s)"
    if np.any(features.f0_hz <= 0):
        return "f0_hz has values <= 0"
    if np.any((features.voiced_prob < 0) | (features.voiced_prob > 1)):
        return "voiced_prob outside 0..1"
    return None


def read_cached_features(path: Path, n_frames: int) -> tuple[Features | None, str | None]:
    """(features, None) for a good cache file; (None, None) when there is none; (None, why) when it is unusable
    (unreadable, truncated, wrong shape, non-finite values): the caller recomputes it and says so."""
    try:
        with np.load(path, allow_pickle=False) as data:
            features = Features(
                f0_hz=data["f0_hz"].astype(np.float32),
                voiced_prob=data["voiced_prob"].astype(np.float32),
                voiced=data["voiced"].astype(bool),
                loudness_db=data["loudness_db"].astype(np.float32),
            )
    except FileNotFoundError:
        return None, None
    except Exception as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    why = check_features(features, n_frames)
    return (None, why) if why else (features, None)


def load_features(path: Path, n_frames: int) -> Features | None:
    """Cached Features, or None when the file is missing, unreadable, has the wrong shape or non-finite values."""
    return read_cached_features(path, n_frames)[0]


@dataclass
class FeatureCacheReport:
    """What extract_corpus_features did per file: loaded from cache, computed (no entry), or recomputed
    (the entry was corrupt; `rejected` holds "label: reason")."""

    from_cache: int = 0
    computed: int = 0
    rejected: list[str] = field(default_factory=list)

    @property
    def recomputed(self) -> int:
        return len(self.rejected)

    def describe(self) -> str:
        parts = [f"{self.from_cache} from cache"] if self.from_cache or not (self.computed or self.rejected) else []
        if self.computed:
            parts.append(f"{self.computed} computed")
        if self.rejected:
            parts.append(f"{self.recomputed} recomputed: corrupt cache entry ({'; '.join(self.rejected)})")
        return ", ".join(parts)


# ------------------------------------------------------------------------------------- worker processes


def _die_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: the worker dies with the process that started it, even on kill -9 of that parent
    (an orphaned worker would otherwise sit blocked on its task queue, holding its memory, forever).

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL). Elsewhere: a daemon thread that polls getppid() once a second.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    else:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)
        threading.Thread(target=watch, daemon=True, name="die-with-parent").start()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def extract_corpus_features(*args, **kwargs) -> list[Features]:
    """The features alone of :func:`extract_corpus_features_reported` (same arguments)."""
    return extract_corpus_features_reported(*args, **kwargs)[0]


def extract_corpus_features_reported(
    audios: Sequence[np.ndarray],
    settings: FeatureSettings,
    cache_dir: Path | None,
    n_jobs: int | None = None,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> tuple[list[Features], FeatureCacheReport]:
    """Features for every audio, loaded from cache_dir when present, else computed (in parallel) and cached;
    and a report of what came from the cache and what was (re)computed. n_jobs: worker processes (default
    os.cpu_count()); 1 runs in this process. names label errors.

    A corrupt cache entry (unreadable, truncated, wrong shape, NaN/inf) is never used: it is recomputed and
    rewritten (atomically), and listed in the report. Freshly computed features are checked the same way.
    Worker processes die with this process (see _die_with_parent). Spooled audios (memmaps) are read one at a
    time and their pages let go of after each (training.spool.release_pages).
    """
    from tqdm import tqdm

    from training.spool import release_pages

    if names is not None and len(names) != len(audios):
        raise ValueError(f"{len(names)} names for {len(audios)} audios")
    labels = list(names) if names is not None else [f"audio {i}" for i in range(len(audios))]
    audios = [_check_mono(a).astype(np.float32, copy=False) for a in audios]
    results: list[Features | None] = [None] * len(audios)
    paths: list[Path | None] = [None] * len(audios)
    report = FeatureCacheReport()

    todo = []
    for i, audio in enumerate(audios):
        if cache_dir is not None:
            paths[i] = features_cache_path(Path(cache_dir), audio, settings)
            results[i], why = read_cached_features(paths[i], audio.shape[0] // settings.hop_size)
            release_pages(audio)
            if why is not None:
                report.rejected.append(f"{labels[i]}: {why}")
        if results[i] is None:
            todo.append(i)
    report.from_cache = len(audios) - len(todo)
    report.computed = len(todo) - report.recomputed

    def done(i: int, features: Features) -> None:
        why = check_features(features, audios[i].shape[0] // settings.hop_size)
        if why is not None:
            raise ValueError(f"computed features are unusable: {why}")
        results[i] = features
        release_pages(audios[i])
        if paths[i] is not None:
            save_features(paths[i], features)

    n_jobs = (os.cpu_count() or 1) if n_jobs is None else max(1, n_jobs)
    bar = tqdm(total=len(todo), desc="features", unit="file", disable=not progress or not todo)
    try:
        if n_jobs == 1 or len(todo) <= 1:
            for i in todo:
                try:
                    done(i, extract_features(audios[i], settings))
                except Exception as e:
                    raise RuntimeError(f"feature extraction failed for {labels[i]}") from e
                bar.update(1)
        else:
            # Import librosa and load the numba kernels here once, so forked workers inherit them.
            extract_features(np.zeros(4 * settings.hop_size, np.float32), settings)
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
            pool = ProcessPoolExecutor(max_workers=min(n_jobs, len(todo)), mp_context=context,
                                       initializer=_die_with_parent, initargs=(os.getpid(),))
            try:
                futures = {pool.submit(extract_features, audios[i], settings): i for i in todo}
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        done(i, future.result())
                    except Exception as e:
                        raise RuntimeError(f"feature extraction failed for {labels[i]}") from e
                    bar.update(1)
            finally:
                # On an error or Ctrl-C, queued files are dropped instead of computed first.
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results, report  # type: ignore[return-value]
