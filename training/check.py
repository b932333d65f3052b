"""Will this corpus work? A report on the material before training (`sdga-train CORPUS --check`, and the start
of every run): files, duration, pitch range, voiced fraction, texture, loudness range, clipping, DC offset,
sample-rate mix, and warnings with figures and advice.

Texture, per sounding analysis frame (16 kHz, 1024-point STFT, 32 ms hop; sounding = within 40 dB of the
file's loudest frame):
- **pitched**: pYIN (the training features, from the feature cache) finds one confident pitch
  (voiced, voiced probability >= 0.5);
- **polyphonic**: no confident pitch, yet the spectrum is tonal (spectral flatness < 0.02: peaks, not noise).
  A chord or several voices have clear partials that no single fundamental explains, so pYIN's voiced
  probability falls while the spectrum stays peaky (measured on FluidR3 renders: a violin phrase 0.88 pitched,
  piano and string chords 0.00-0.02 pitched with flatness 0.0003-0.002; noise 0.40, drums 0.10);
- **noisy**: neither (breath, bow noise, hiss, unpitched percussion).
Percussive is an energy figure: the share of the sounding frames' energy that librosa's harmonic/percussive
separation (median filtering) puts in the percussive part (drums 0.99, white noise 0.5, a violin 0.01).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from training.corpus import Corpus, note_name
from training.features import Features, FeatureSettings, extract_corpus_features_reported

__all__ = ["FileCheck", "CorpusCheck", "WARNINGS", "measure_texture", "check_corpus", "format_check",
           "run_check"]

ANALYSIS_SAMPLE_RATE = 16000
ANALYSIS_N_FFT = 1024
ANALYSIS_HOP = 512
SOUNDING_DB = 40.0            # frames within this of the file's loudest frame are "sounding"
TONAL_FLATNESS = 0.02         # spectral flatness below this: peaks (tonal), above: noise-like
HPSS_KERNEL = 17


@dataclass(frozen=True)
class FileCheck:
    name: str
    duration_s: float
    source_sample_rate: int
    source_channels: int
    pitched_fraction: float       # of sounding frames: one confident pitch
    polyphonic_fraction: float    # of sounding frames: tonal, no single pitch
    noisy_fraction: float         # of sounding frames: neither
    percussive_fraction: float    # of sounding energy: HPSS percussive part
    clipped_samples: int
    dc_offset: float


@dataclass(frozen=True)
class CorpusCheck:
    files: tuple[FileCheck, ...]
    skipped: tuple[tuple[str, str], ...]
    sample_rate: int
    total_s: float
    f0_range_hz: tuple[float, float] | None      # 1st-99th percentile of confident pitch
    voiced_fraction: float                       # of sounding model frames, confident pitch
    loudness_range_db: tuple[float, float] | None  # 5th-99th percentile of sounding frames
    pitched_fraction: float                      # duration-weighted over files
    polyphonic_fraction: float
    noisy_fraction: float
    percussive_fraction: float
    warnings: tuple[str, ...]


def _weighted(files: Sequence[FileCheck], attr: str) -> float:
    total = sum(f.duration_s for f in files)
    return sum(getattr(f, attr) * f.duration_s for f in files) / total if total > 0 else 0.0


def _worst(files: Sequence[FileCheck], attr: str, limit: float, n: int = 3) -> str:
    bad = sorted((f for f in files if getattr(f, attr) > limit), key=lambda f: -getattr(f, attr))
    if not bad:
        return ""
    shown = ", ".join(f"{f.name} {getattr(f, attr):.0%}" for f in bad[:n])
    return f" (most: {shown}{', ...' if len(bad) > n else ''})"


# One row per warning: (name, test on the check, message with figures). The thresholds are the figures that
# separated the FluidR3 test renders (see the module docstring); the advice says what to do about it.
MIN_TOTAL_S = 60.0
POLYPHONIC_LIMIT = 0.25
NOISY_LIMIT = 0.4
PERCUSSIVE_LIMIT = 0.6
DC_LIMIT = 0.01


def _warn_short(c: CorpusCheck) -> str | None:
    if c.total_s >= MIN_TOTAL_S:
        return None
    return (f"too short: {c.total_s:.1f} s of sound after trimming silence, under {MIN_TOTAL_S:.0f} s: too little "
            f"to learn a timbre from (and to hold some out for validation); record at least 1 minute, better 3-10")


def _warn_polyphonic(c: CorpusCheck) -> str | None:
    # drums have tonal hits (toms, cymbal partials) too: percussive material gets the percussive warning only
    if c.polyphonic_fraction <= POLYPHONIC_LIMIT or c.percussive_fraction > PERCUSSIVE_LIMIT:
        return None
    return (f"polyphonic: {c.polyphonic_fraction:.0%} of the sounding time is tonal without one clear pitch "
            f"as chords, several voices or heavy reverb give{_worst(c.files, 'polyphonic_fraction', POLYPHONIC_LIMIT)}; "
            f"sdga learns one voice from its pitch: record one line at a time, or leave chord passages out")


def _warn_unpitched(c: CorpusCheck) -> str | None:
    if c.noisy_fraction <= NOISY_LIMIT:
        return None
    return (f"unpitched: {c.noisy_fraction:.0%} of the sounding time has no pitch and a noise-like spectrum"
            f"{_worst(c.files, 'noisy_fraction', NOISY_LIMIT)}; the model is played by pitch and learns its "
            f"sound from pitched notes: use recordings of a pitched instrument or voice")


def _warn_percussive(c: CorpusCheck) -> str | None:
    if c.percussive_fraction <= PERCUSSIVE_LIMIT:
        return None
    return (f"percussive: {c.percussive_fraction:.0%} of the energy is in transients (harmonic/percussive "
            f"separation){_worst(c.files, 'percussive_fraction', PERCUSSIVE_LIMIT)}; the synth (harmonics + "
            f"filtered noise, one pitch) cannot learn drums: use sustained, pitched material")


def _warn_clipping(c: CorpusCheck) -> str | None:
    clipped = [f for f in c.files if f.clipped_samples > 0]
    if not clipped:
        return None
    shown = ", ".join(f"{f.name} {f.clipped_samples}" for f in sorted(clipped, key=lambda f: -f.clipped_samples)[:3])
    return (f"clipping: {sum(f.clipped_samples for f in clipped)} samples in flat tops in {len(clipped)} "
            f"file{'s' if len(clipped) != 1 else ''} ({shown}{', ...' if len(clipped) > 3 else ''}); the model "
            f"learns the distortion: record again with more headroom, or leave those files out")


def _warn_dc(c: CorpusCheck) -> str | None:
    bad = [f for f in c.files if f.dc_offset > DC_LIMIT]
    if not bad:
        return None
    worst = max(bad, key=lambda f: f.dc_offset)
    return (f"DC offset: {len(bad)} file{'s' if len(bad) != 1 else ''} with a mean above {DC_LIMIT} of full "
            f"scale (largest {worst.name} {worst.dc_offset:+.3f}); it wastes headroom and reads as loudness: "
            f"high-pass the recordings (e.g. 20 Hz) before training")


def _warn_rates(c: CorpusCheck) -> str | None:
    low = Counter(f.source_sample_rate for f in c.files if f.source_sample_rate < c.sample_rate)
    if not low:
        return None
    rates = ", ".join(f"{r} Hz x{n}" for r, n in sorted(low.items()))
    return (f"sample rates: {sum(low.values())} file{'s' if sum(low.values()) != 1 else ''} below the model's "
            f"{c.sample_rate} Hz ({rates}) have nothing above {min(low) / 2000:.1f} kHz, and the model learns "
            f"that dull top: use the original recordings, or train at that rate (--sample-rate)")


WARNINGS: tuple[tuple[str, Callable[[CorpusCheck], str | None]], ...] = (
    ("too short", _warn_short),
    ("polyphonic", _warn_polyphonic),
    ("unpitched", _warn_unpitched),
    ("percussive", _warn_percussive),
    ("clipping", _warn_clipping),
    ("DC offset", _warn_dc),
    ("sample rates", _warn_rates),
)


def measure_texture(audio: np.ndarray, sample_rate: int, features: Features, hop_size: int
                    ) -> tuple[float, float, float, float]:
    """(pitched, polyphonic, noisy fractions of the sounding frames, percussive share of their energy) for
    one mono file and its training features (see the module docstring)."""
    import librosa

    y = audio if sample_rate == ANALYSIS_SAMPLE_RATE else librosa.resample(
        audio, orig_sr=sample_rate, target_sr=ANALYSIS_SAMPLE_RATE, res_type="soxr_hq")
    mag = np.abs(librosa.stft(y, n_fft=ANALYSIS_N_FFT, hop_length=ANALYSIS_HOP))
    power = mag ** 2
    energy = power.sum(axis=0)
    if energy.size == 0 or energy.max() <= 0.0:
        return 0.0, 0.0, 0.0, 0.0
    sounding = energy > energy.max() * 10.0 ** (-SOUNDING_DB / 10.0)
    harmonic, percussive = librosa.decompose.hpss(power, kernel_size=HPSS_KERNEL)
    flatness = librosa.feature.spectral_flatness(S=mag)[0]
    # confident pitch on the model's frames, read at each analysis frame's time
    t_analysis = np.arange(mag.shape[1]) * ANALYSIS_HOP / ANALYSIS_SAMPLE_RATE
    t_model = np.arange(features.n_frames) * hop_size / sample_rate
    confident = (features.voiced & (features.voiced_prob >= 0.5)).astype(np.float64)
    pitched = np.interp(t_analysis, t_model, confident) > 0.5 if features.n_frames else np.zeros_like(sounding)
    tonal = flatness < TONAL_FLATNESS
    n = max(1, int(sounding.sum()))
    frac_pitched = float((pitched & sounding).sum()) / n
    frac_poly = float((~pitched & tonal & sounding).sum()) / n
    frac_noisy = float((~pitched & ~tonal & sounding).sum()) / n
    h, p = float(harmonic[:, sounding].sum()), float(percussive[:, sounding].sum())
    return frac_pitched, frac_poly, frac_noisy, p / (h + p) if h + p > 0 else 0.0


def check_corpus(corpus: Corpus, features: Sequence[Features], hop_size: int) -> CorpusCheck:
    """The figures and warnings for a loaded corpus and its training features (one per file)."""
    from training.spool import release_pages

    files = []
    f0_parts, ld_parts, voiced_n, sounding_n = [], [], 0, 0
    for f, feats in zip(corpus.files, features):
        pitched, poly, noisy, perc = measure_texture(f.audio, f.sample_rate, feats, hop_size)
        release_pages(f.audio)
        files.append(FileCheck(f.path.name, f.duration_s, f.source_sample_rate, f.source_channels, pitched, poly,
                               noisy, perc, f.clipped_samples, f.dc_offset))
        ld = feats.loudness_db
        if ld.size:
            sounding = ld > max(-70.0, float(ld.max()) - SOUNDING_DB)
            confident = feats.voiced & (feats.voiced_prob >= 0.5)
            f0_parts.append(feats.f0_hz[confident & sounding])
            ld_parts.append(ld[sounding])
            voiced_n += int((confident & sounding).sum())
            sounding_n += int(sounding.sum())
    f0 = np.concatenate(f0_parts) if f0_parts else np.zeros(0)
    ld = np.concatenate(ld_parts) if ld_parts else np.zeros(0)
    partial = CorpusCheck(
        files=tuple(files), skipped=tuple((str(s.path), s.reason) for s in corpus.skipped),
        sample_rate=corpus.sample_rate, total_s=corpus.total_seconds,
        f0_range_hz=(float(np.percentile(f0, 1)), float(np.percentile(f0, 99))) if f0.size else None,
        voiced_fraction=voiced_n / sounding_n if sounding_n else 0.0,
        loudness_range_db=(float(np.percentile(ld, 5)), float(np.percentile(ld, 99))) if ld.size else None,
        pitched_fraction=_weighted(files, "pitched_fraction"),
        polyphonic_fraction=_weighted(files, "polyphonic_fraction"),
        noisy_fraction=_weighted(files, "noisy_fraction"),
        percussive_fraction=_weighted(files, "percussive_fraction"), warnings=())
    warnings = tuple(w for _, rule in WARNINGS if (w := rule(partial)) is not None)
    return CorpusCheck(**{**partial.__dict__, "warnings": warnings})


def format_check(c: CorpusCheck) -> str:
    """The report: figures, then one line per warning (or "no warnings")."""
    n = len(c.files)
    rates = ", ".join(f"{r} Hz x{k}" for r, k in sorted(Counter(f.source_sample_rate for f in c.files).items()))
    channels = ", ".join(f"{ {1: 'mono', 2: 'stereo'}.get(ch, f'{ch}-channel')} x{k}"
                         for ch, k in sorted(Counter(f.source_channels for f in c.files).items()))
    lines = [f"corpus check: {n} file{'s' if n != 1 else ''}, {c.total_s / 60.0:.1f} min ({c.total_s:.1f} s) of "
             f"sound at {c.sample_rate} Hz"]
    if n:
        durations = [f.duration_s for f in c.files]
        lines.append(f"  durations: {min(durations):.2f} s to {max(durations):.2f} s")
    lines.append(f"  source rates: {rates or '-'}; channels: {channels or '-'}")
    if c.f0_range_hz:
        lo, hi = c.f0_range_hz
        lines.append(f"  pitch range: {lo:.1f}-{hi:.1f} Hz ({note_name(lo)}-{note_name(hi)}), voiced "
                     f"{c.voiced_fraction:.0%} of the sounding time")
    else:
        lines.append("  pitch range: no confident pitch found")
    lines.append(f"  texture: {c.pitched_fraction:.0%} one clear pitch, {c.polyphonic_fraction:.0%} tonal without "
                 f"one pitch (polyphonic), {c.noisy_fraction:.0%} noise-like; percussive energy "
                 f"{c.percussive_fraction:.0%}")
    if c.loudness_range_db:
        lo, hi = c.loudness_range_db
        lines.append(f"  loudness: {lo:.1f} to {hi:.1f} dB (A-weighted, 5th-99th percentile; {hi - lo:.0f} dB "
                     f"of dynamics)")
    clipped = sum(f.clipped_samples for f in c.files)
    dc = max((f.dc_offset for f in c.files), default=0.0)
    lines.append(f"  clipping: {clipped} samples in flat tops; largest DC offset {dc:.4f} of full scale")
    if c.skipped:
        lines.append(f"  skipped {len(c.skipped)} file{'s' if len(c.skipped) != 1 else ''}:")
        lines.extend(f"    {path}: {reason}" for path, reason in c.skipped)
    if c.warnings:
        lines.extend(f"WARNING {w}" for w in c.warnings)
    else:
        lines.append("no warnings: the material looks learnable")
    return "\n".join(lines)


def run_check(corpus_dir: Path, sample_rate: int, hop_size: int, cache_dir: Path | None,
              progress: bool = True, log: Callable[[str], None] = print) -> CorpusCheck:
    """Load the corpus, its features (through the feature cache), check it and log the report.

    The decoded audio is spooled (training.spool) next to the feature cache (``<cache_dir>/../spool``, or the
    system's temporary folder without a cache) and removed at the end, so memory does not grow with the corpus."""
    import tempfile

    from training.corpus import load_corpus
    from training.spool import audio_spool

    t0 = time.time()
    spool_parent = (Path(cache_dir).parent if cache_dir is not None else Path(tempfile.gettempdir()) / "sdga") / "spool"
    with audio_spool(spool_parent) as spool:
        corpus = load_corpus(corpus_dir, sample_rate=sample_rate, log=log, spool=spool)
        settings = FeatureSettings(sample_rate=sample_rate, hop_size=hop_size)
        features, _ = extract_corpus_features_reported(
            [f.audio for f in corpus.files], settings, cache_dir, progress=progress,
            names=[f.path.name for f in corpus.files])
        check = check_corpus(corpus, features, hop_size)
    log(format_check(check))
    log(f"(checked in {time.time() - t0:.1f} s)")
    return check
