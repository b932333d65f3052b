"""Offline audio augmentation with pedalboard: parameters are drawn from a seed, then applied.

AUGMENTATIONS is the one table of what a variant may do (name, what, parameter ranges, on by default);
draw_params, sdga-train --augment and its help, and the tests read it. Each (source, variant) gets its own
generator seeded with (seed, source_index, variant_index), so a variant is reproducible and loggable
(AugmentParams.as_dict). Variants are rendered once and cached on disk (keyed on every parameter); a stretched
variant is longer or shorter than its source and its f0 is measured again on the stretched audio. The only
per-training-step augmentation is random_gain, which is exact and costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from training.features import (
    LOUDNESS_FLOOR_DB,
    FeatureSettings,
    Features,
    a_weighted_loudness_db,
    audio_hash,
    extract_features,
    FeatureCacheReport,
    read_cached_features,
    save_npz_atomic,
)

if TYPE_CHECKING:
    from training.spool import AudioSpool

# Bump when the effect chain or its fixed settings change, so old cached renders are not reused.
AUGMENT_VERSION = 2

LOW_SHELF_CUTOFF_HZ = 200.0
HIGH_SHELF_CUTOFF_HZ = 4000.0
PEAK_Q = 1.0
COMPRESSOR_ATTACK_MS = 10.0
COMPRESSOR_RELEASE_MS = 100.0
REVERB_DRY_LEVEL = 0.5  # JUCE's reverb scales dry by 2: 0.5 is unity gain
NOISE_LOW_CUTOFF_HZ = 20.0  # coloured noise is flat below this (no DC, no rumble that swamps the render)
TILT_PIVOT_HZ = 1000.0  # the tilt: a high shelf up and a low shelf down by half the tilt each, here
BREATH_HIGHPASS_HZ = 300.0  # breath noise is coloured noise above this, following the playing's envelope ...
BREATH_ENVELOPE_S = 0.02  # ... its RMS over this window
HOLLOW_F0_RANGE_HZ = (30.0, 4000.0)  # the half-period comb follows f0 clipped to this
ACTIVE_BLOCK_S = 0.02  # active RMS: 20 ms blocks ...
ACTIVE_RANGE_DB = 40.0  # ... within this of the loudest block


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
    duration_factor: float = 1.0        # stretched length / original length (pitch unchanged)
    distortion_drive_db: float = 0.0
    distortion_mix: float = 0.0         # 0 = off
    noise_slope: float = 0.0            # noise power ~ 1/f^slope: 0 white, 1 pink, 2 brown
    noise_level_db: float = -math.inf   # noise RMS relative to the render's active RMS; -inf = off
    noise_seed: int = 0
    tilt_db: float = 0.0                # high shelf +tilt/2, low shelf -tilt/2 at TILT_PIVOT_HZ
    breath_level_db: float = -math.inf  # envelope-following noise power relative to the playing; -inf = off
    breath_slope: float = 1.0
    breath_seed: int = 0
    hollow_gain: float = 0.0            # x(t) + g x(t - T/2): g < 0 raises odd over even harmonics, g > 0 even

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Draw:
    """One parameter drawn for a variant: uniform in [low, high] ("linear"), log-uniform ("log"), or an
    integer in [low, high) ("int")."""
    field: str
    low: float
    high: float
    scale: str = "linear"

    def describe(self) -> str:
        if self.scale == "int":
            return f"{self.field} (seed)"
        return f"{self.field} {self.low:g}..{self.high:g}" + (" (log)" if self.scale == "log" else "")


@dataclass(frozen=True)
class Augmentation:
    name: str
    does: str
    draws: tuple[Draw, ...]
    off: tuple[tuple[str, float], ...]   # parameter values that make it the identity (used when it is off)
    default: bool

    def ranges(self) -> str:
        return ", ".join(d.describe() for d in self.draws)


# The augmentations, in the order their parameters are drawn (part of the format: reordering rows or draws
# changes every variant). Every variant draws every row's parameters, then sets the rows that are off to
# their identity values, so turning one on or off leaves the others' settings unchanged.
AUGMENTATIONS: tuple[Augmentation, ...] = (
    Augmentation("gain", "level change of each render, and of each training window", (
        Draw("gain_db", -6.0, 6.0),), (("gain_db", 0.0),), True),
    Augmentation("eq", f"low shelf at {LOW_SHELF_CUTOFF_HZ:g} Hz, high shelf at {HIGH_SHELF_CUTOFF_HZ:g} Hz, "
                 f"one peak (Q {PEAK_Q:g})", (
        Draw("low_shelf_gain_db", -6.0, 6.0), Draw("high_shelf_gain_db", -6.0, 6.0),
        Draw("peak_freq_hz", 300.0, 4000.0, "log"), Draw("peak_gain_db", -6.0, 6.0)),
        (("low_shelf_gain_db", 0.0), ("high_shelf_gain_db", 0.0), ("peak_gain_db", 0.0)), True),
    Augmentation("compress", f"compressor ({COMPRESSOR_ATTACK_MS:g} ms attack, {COMPRESSOR_RELEASE_MS:g} ms "
                 "release)", (
        Draw("compressor_threshold_db", -30.0, -10.0), Draw("compressor_ratio", 1.5, 4.0)),
        (("compressor_ratio", 1.0),), True),
    Augmentation("reverb", "room reverb under the dry signal", (
        Draw("reverb_room_size", 0.1, 0.6), Draw("reverb_wet_level", 0.0, 0.25)),
        (("reverb_wet_level", 0.0),), True),
    Augmentation("pitch", "pitch shift (Rubber Band), time-aligned; f0 scaled to match", (
        Draw("pitch_shift_semitones", -2.0, 2.0),), (("pitch_shift_semitones", 0.0),), True),
    Augmentation("stretch", "time stretch without pitch change (Rubber Band); f0 and loudness re-measured "
                 "on the stretched audio", (
        Draw("duration_factor", 0.9, 1.1),), (("duration_factor", 1.0),), False),
    Augmentation("distort", "tanh drive mixed under the dry signal at unity small-signal gain (THD below 3%)", (
        Draw("distortion_drive_db", 6.0, 18.0), Draw("distortion_mix", 0.05, 0.2)),
        (("distortion_mix", 0.0),), False),
    Augmentation("noise", "coloured noise (white to brown) generated from the variant's seed, "
                 "mixed under the render's active RMS", (
        Draw("noise_slope", 0.0, 2.0), Draw("noise_level_db", -45.0, -30.0), Draw("noise_seed", 0, 2**31, "int")),
        (("noise_level_db", -math.inf),), False),
    # Timbre factors (issue 14): independent, wide changes of brightness, breath and odd/even balance, each
    # drawn per variant, so that a small corpus of one instrument varies along more than one timbre direction
    # and the attribute-regularised latents (training.attributes: brightness, breath, hollowness) have
    # something to order. The decoder learns to render them; the knob analysis finds them as knobs.
    Augmentation("tilt", f"spectral tilt around {TILT_PIVOT_HZ:g} Hz (shelves up and down by half each)", (
        Draw("tilt_db", -12.0, 12.0),), (("tilt_db", 0.0),), True),
    Augmentation("breath", f"breath: coloured noise above {BREATH_HIGHPASS_HZ:g} Hz following the playing's "
                 f"{BREATH_ENVELOPE_S * 1000:g} ms RMS envelope", (
        Draw("breath_level_db", -40.0, -10.0), Draw("breath_slope", 0.0, 1.5), Draw("breath_seed", 0, 2**31, "int")),
        (("breath_level_db", -math.inf),), True),
    Augmentation("hollow", "odd/even balance: the signal plus itself half a period (from f0) later, scaled "
                 "(a comb that moves odd and even harmonics apart by up to +-12 dB)", (
        Draw("hollow_gain", -0.6, 0.6),), (("hollow_gain", 0.0),), True),
)
AUGMENTATION_NAMES = tuple(a.name for a in AUGMENTATIONS)
DEFAULT_AUGMENTATIONS = tuple(a.name for a in AUGMENTATIONS if a.default)


def parse_augmentations(text: str) -> tuple[str, ...]:
    """A comma list of names from AUGMENTATIONS, 'default', 'all' or 'none'; '-name' removes one
    ('default,stretch', 'all,-reverb'). Returns the chosen names in table order; ValueError if unknown."""
    chosen: set[str] = set()
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        remove = item.startswith("-")
        name = item[1:] if remove else item
        names = {"default": DEFAULT_AUGMENTATIONS, "all": AUGMENTATION_NAMES, "none": ()}.get(name, (name,))
        unknown = [n for n in names if n not in AUGMENTATION_NAMES]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}: choose from {', '.join(AUGMENTATION_NAMES)}, "
                             f"default, all, none (a leading '-' removes one)")
        chosen = chosen - set(names) if remove else chosen | set(names)
    return tuple(n for n in AUGMENTATION_NAMES if n in chosen)


def draw_params(rng: np.random.Generator, pitch_shift_range_semitones: float = 2.0,
                enabled: Sequence[str] = DEFAULT_AUGMENTATIONS) -> AugmentParams:
    """Mild random settings from the AUGMENTATIONS table; rows not in enabled are set to their identity."""
    values: dict = {}
    for aug in AUGMENTATIONS:
        for d in aug.draws:
            low, high = d.low, d.high
            if d.field == "pitch_shift_semitones":
                low, high = -pitch_shift_range_semitones, pitch_shift_range_semitones
            if d.scale == "log":
                values[d.field] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            elif d.scale == "int":
                values[d.field] = int(rng.integers(int(low), int(high)))
            else:
                values[d.field] = float(rng.uniform(low, high))
        if aug.name not in enabled:
            values.update(aug.off)
    return AugmentParams(**values)


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


def stretched_length(n_samples: int, duration_factor: float) -> int:
    """Length of a render of n_samples: the stretch's factor, rounded (the same as Rubber Band's output)."""
    return n_samples if duration_factor == 1.0 else int(round(n_samples * duration_factor))


def time_stretch(audio: np.ndarray, sample_rate: int, duration_factor: float) -> np.ndarray:
    """Mono audio made duration_factor times as long without changing its pitch (pedalboard's Rubber Band
    time_stretch, which keeps the start aligned); exactly stretched_length samples."""
    import pedalboard

    audio = np.asarray(audio, dtype=np.float32)
    n_out = stretched_length(audio.shape[0], duration_factor)
    if duration_factor == 1.0 or audio.shape[0] == 0:
        return audio.copy()
    out = pedalboard.time_stretch(audio[None], float(sample_rate), stretch_factor=1.0 / duration_factor)[0]
    out = np.nan_to_num(out[:n_out], nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return np.pad(out, (0, n_out - out.shape[0])) if out.shape[0] < n_out else out


def coloured_noise(n_samples: int, sample_rate: int, slope: float, seed: int) -> np.ndarray:
    """Gaussian noise of unit RMS whose power falls as 1/f^slope (0 white, 1 pink, 2 brown) above
    NOISE_LOW_CUTOFF_HZ and is flat below it (no DC); the same for the same seed."""
    if n_samples == 0:
        return np.zeros(0, np.float32)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n_samples))
    freqs_hz = np.fft.rfftfreq(n_samples, 1.0 / sample_rate)
    spectrum *= np.maximum(freqs_hz, NOISE_LOW_CUTOFF_HZ) ** (-slope / 2.0)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n_samples)
    rms = float(np.sqrt(np.mean(noise ** 2)))
    return (noise / rms if rms > 0 else noise).astype(np.float32)


def active_rms(audio: np.ndarray, sample_rate: int) -> float:
    """RMS over the 20 ms blocks within ACTIVE_RANGE_DB of the loudest block (the level of the playing,
    not of the silences between phrases); 0.0 for silence."""
    block = max(1, int(ACTIVE_BLOCK_S * sample_rate))
    n = audio.shape[0] // block * block
    if n == 0:
        return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    power = np.mean(np.square(audio[:n].reshape(-1, block), dtype=np.float64), axis=1)
    if power.max() <= 0.0:
        return 0.0
    active = power[power >= power.max() * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)]
    return float(np.sqrt(active.mean()))


def _moving_rms(audio: np.ndarray, n: int) -> np.ndarray:
    import scipy.signal

    window = np.ones(max(1, n), np.float64) / max(1, n)
    return np.sqrt(np.maximum(scipy.signal.fftconvolve(np.square(audio, dtype=np.float64), window, mode="same"),
                              0.0))


def apply_timbre_factors(audio: np.ndarray, f0_hz: np.ndarray, voiced_prob: np.ndarray, hop_size: int,
                         sample_rate: int, params: AugmentParams) -> np.ndarray:
    """The timbre-factor rows (hollow, tilt, breath) on mono audio whose control frames (``hop_size`` apart)
    carry ``f0_hz`` and ``voiced_prob``: same length, finite float32. Stages at their identity are skipped.

    - hollow: ``x(t) + g v(t) x(t - 1 / (2 f0(t)))`` with v the voicing; half a period flips the sign of the odd
      harmonics only, so the even ones are scaled by ``1 + g``, the odd ones by ``1 - g``.
    - tilt: pedalboard shelves at TILT_PIVOT_HZ, +tilt/2 above and -tilt/2 below.
    - breath: noise power ``breath_level_db`` relative to the playing, following its RMS envelope (so it is
      there while a note sounds and gone in the silences), coloured 1/f^slope and high-passed."""
    import pedalboard

    audio = np.asarray(audio, dtype=np.float32)
    n = audio.shape[0]
    if n == 0:
        return audio.copy()
    out = audio.astype(np.float64)
    if params.hollow_gain != 0.0 and len(f0_hz):
        t = np.arange(n, dtype=np.float64)
        frames_t = np.arange(len(f0_hz), dtype=np.float64) * hop_size
        f0 = np.clip(np.interp(t, frames_t, np.nan_to_num(f0_hz, nan=100.0)), *HOLLOW_F0_RANGE_HZ)
        voiced = np.clip(np.interp(t, frames_t, np.nan_to_num(voiced_prob, nan=0.0)), 0.0, 1.0)
        delayed = np.interp(t - 0.5 * sample_rate / f0, t, out, left=0.0)
        out = out + params.hollow_gain * voiced * delayed
    if params.tilt_db != 0.0:
        half = params.tilt_db / 2.0
        out = pedalboard.Pedalboard([
            pedalboard.HighShelfFilter(cutoff_frequency_hz=TILT_PIVOT_HZ, gain_db=half),
            pedalboard.LowShelfFilter(cutoff_frequency_hz=TILT_PIVOT_HZ, gain_db=-half),
        ])(out.astype(np.float32)[None], sample_rate)[0].astype(np.float64)
    if math.isfinite(params.breath_level_db):
        import scipy.signal

        noise = coloured_noise(n, sample_rate, params.breath_slope, params.breath_seed).astype(np.float64)
        sos = scipy.signal.butter(2, BREATH_HIGHPASS_HZ, "highpass", fs=sample_rate, output="sos")
        noise = scipy.signal.sosfilt(sos, noise)
        noise /= max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)
        envelope = _moving_rms(out, int(BREATH_ENVELOPE_S * sample_rate))
        out = out + 10.0 ** (params.breath_level_db / 20.0) * envelope * noise
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def apply_effects(audio: np.ndarray, sample_rate: int, params: AugmentParams) -> np.ndarray:
    """Render params onto mono audio: stretch, gain, EQ, compressor, distortion, reverb, pitch shift, noise.
    Finite float32, peak <= 1.0, time-aligned, stretched_length(len(audio), params.duration_factor) samples.
    Stages at their identity settings (an augmentation that is off) are skipped."""
    import pedalboard

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {audio.shape}")
    if audio.shape[0] == 0:
        return audio.copy()
    audio = time_stretch(audio, sample_rate, params.duration_factor)
    plugins = [
        pedalboard.Gain(gain_db=params.gain_db),
        pedalboard.LowShelfFilter(cutoff_frequency_hz=LOW_SHELF_CUTOFF_HZ, gain_db=params.low_shelf_gain_db),
        pedalboard.HighShelfFilter(cutoff_frequency_hz=HIGH_SHELF_CUTOFF_HZ, gain_db=params.high_shelf_gain_db),
        pedalboard.PeakFilter(cutoff_frequency_hz=params.peak_freq_hz, gain_db=params.peak_gain_db, q=PEAK_Q),
    ]
    if params.compressor_ratio != 1.0:
        plugins.append(pedalboard.Compressor(threshold_db=params.compressor_threshold_db,
                                             ratio=params.compressor_ratio, attack_ms=COMPRESSOR_ATTACK_MS,
                                             release_ms=COMPRESSOR_RELEASE_MS))
    if params.distortion_mix > 0.0:
        # dry (1 - mix) + mix * tanh(g x) / g: unity gain for small signals, soft saturation of the peaks
        plugins.append(pedalboard.Mix([
            pedalboard.Gain(gain_db=20.0 * math.log10(1.0 - params.distortion_mix)),
            pedalboard.Pedalboard([
                pedalboard.Distortion(drive_db=params.distortion_drive_db),
                pedalboard.Gain(gain_db=20.0 * math.log10(params.distortion_mix) - params.distortion_drive_db)]),
        ]))
    if params.reverb_wet_level > 0.0:
        plugins.append(pedalboard.Reverb(room_size=params.reverb_room_size, wet_level=params.reverb_wet_level,
                                         dry_level=REVERB_DRY_LEVEL))
    out = pedalboard.Pedalboard(plugins)(audio[None], sample_rate)[0]
    if params.pitch_shift_semitones != 0.0:
        shifted = pedalboard.PitchShift(semitones=params.pitch_shift_semitones)(out[None], sample_rate)[0]
        out = _advance(shifted, pitch_shift_delay_samples(sample_rate, params.pitch_shift_semitones))
    out = np.nan_to_num(out[: audio.shape[0]], nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    if out.shape[0] < audio.shape[0]:
        out = np.concatenate([out, np.zeros(audio.shape[0] - out.shape[0], np.float32)])
    if math.isfinite(params.noise_level_db):
        level = active_rms(out, sample_rate) * 10.0 ** (params.noise_level_db / 20.0)
        out = out + np.float32(level) * coloured_noise(out.shape[0], sample_rate, params.noise_slope,
                                                       params.noise_seed)
    peak = float(np.max(np.abs(out)))
    if peak > 1.0:
        out *= np.float32(1.0 / peak)
        np.clip(out, -1.0, 1.0, out=out)
    return out


def augment_features(
    features: Features, augmented_audio: np.ndarray, params: AugmentParams, settings: FeatureSettings
) -> Features:
    """Features of a render of audio whose (unstretched) features are given: f0 scaled by the pitch shift
    (no pYIN rerun), voicing kept, loudness recomputed. A stretched render needs the stretched audio's
    features (render_variant measures them)."""
    ratio = 2.0 ** (params.pitch_shift_semitones / 12.0)
    loudness_db = a_weighted_loudness_db(augmented_audio, settings.sample_rate, settings.hop_size,
                                         settings.loudness_n_fft)
    if loudness_db.shape[0] != features.n_frames:
        raise ValueError(f"render has {loudness_db.shape[0]} frames but its source features {features.n_frames}: "
                         "a stretched render needs the stretched audio's features")
    return Features(
        f0_hz=(features.f0_hz * ratio).astype(np.float32),
        voiced_prob=features.voiced_prob.copy(),
        voiced=features.voiced.copy(),
        loudness_db=loudness_db,
    )


def render_variant(audio: np.ndarray, features: Features, params: AugmentParams,
                   settings: FeatureSettings) -> tuple[np.ndarray, Features]:
    """A variant's audio and features. Unstretched: the source's f0 and voicing (pitch-scaled) and the render's
    loudness. Stretched: f0 and voicing measured (pYIN) on the stretched clean source, loudness on the render,
    so every feature frame describes the stretched audio."""
    if params.duration_factor != 1.0:
        audio = time_stretch(audio, settings.sample_rate, params.duration_factor)
        features = extract_features(audio, settings)
        params = dataclasses.replace(params, duration_factor=1.0)
    audio = apply_timbre_factors(audio, features.f0_hz, features.voiced_prob, settings.hop_size,
                                 settings.sample_rate, params)
    rendered = apply_effects(audio, settings.sample_rate, params)
    return rendered, augment_features(features, rendered, params, settings)


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
    enabled: Sequence[str] = DEFAULT_AUGMENTATIONS,
    spool: AudioSpool | None = None,
) -> tuple[list[tuple[np.ndarray, Features, AugmentParams, int]], FeatureCacheReport]:
    """(audio, features, params, source_index) for every source x variant, source-major, and what came from the
    cache, was rendered, or was re-rendered because its cache entry was corrupt (unreadable, truncated, NaN/inf).

    Params come from variant_rng(seed, source, variant) with the augmentations in enabled (AUGMENTATIONS
    names; the others at their identity). A stretched variant's length differs from its source's. Renders are cached in cache_dir (key: audio, source
    features, params, settings, AUGMENT_VERSION, pedalboard version). n_jobs threads (pedalboard releases
    the GIL; default os.cpu_count()).

    With a ``spool`` (training.spool.AudioSpool) each variant's audio is written to it as soon as it is rendered
    (or read from the cache) and returned as a read-only memmap, so memory holds the variants in flight (one per
    thread), not all of them; the sources' spooled pages are let go of after each variant.
    """
    from tqdm import tqdm

    from training.spool import release_pages

    if len(audios) != len(features):
        raise ValueError(f"{len(audios)} audios but {len(features)} feature sets")
    jobs = [
        (i, v, draw_params(variant_rng(seed, i, v), pitch_shift_range_semitones, enabled))
        for i in range(len(audios))
        for v in range(n_variants)
    ]

    report = FeatureCacheReport()
    report_lock = threading.Lock()          # `one` runs in worker threads

    def one(job: tuple[int, int, AugmentParams]) -> tuple[np.ndarray, Features, AugmentParams, int]:
        i, v, params = job
        audio = np.asarray(audios[i], dtype=np.float32)
        n_samples = stretched_length(audio.shape[0], params.duration_factor)
        n_frames = n_samples // settings.hop_size
        path, cached, why = None, None, None
        if cache_dir is not None:
            path = _variant_cache_path(Path(cache_dir), audio, features[i], params, settings)
            cached, why = _load_variant(path, n_samples, n_frames)
        with report_lock:
            if cached is not None:
                report.from_cache += 1
            elif why is not None:
                report.rejected.append(f"source {i} variant {v}: {why}")
            else:
                report.computed += 1
        if cached is not None:
            rendered, rendered_features = cached
        else:
            rendered, rendered_features = render_variant(audio, features[i], params, settings)
            if path is not None:
                save_npz_atomic(
                    path,
                    audio=rendered,
                    f0_hz=rendered_features.f0_hz,
                    voiced_prob=rendered_features.voiced_prob,
                    voiced=rendered_features.voiced,
                    loudness_db=rendered_features.loudness_db,
                )
        release_pages(audios[i])
        if spool is not None:
            rendered = spool.write(rendered, f"source{i}-variant{v}")
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
