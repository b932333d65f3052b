"""Timbre transfer: f0 and loudness of any recording (the training feature code), rendered by a model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from instrument.engine.expression import output_input_db
from instrument.model.bundle import ModelBundle
from instrument.model.offline import render_controls

from training.corpus import load_audio_file, note_name
from training.features import FeatureSettings, extract_corpus_features, hz_to_midi


class TransferError(Exception):
    pass


FIT_FRACTION = 0.9          # the input fits when this share of its voiced frames lies inside the model's range
MAX_OCTAVES = 3


def _range_text(lo_hz: float, hi_hz: float) -> str:
    return f"{note_name(lo_hz)}-{note_name(hi_hz)} ({lo_hz:.0f}-{hi_hz:.0f} Hz)"


def calibrated_loudness_db(bundle: ModelBundle, loudness_db: np.ndarray, f0_hz: np.ndarray) -> np.ndarray:
    """Each frame's loudness through the model's level calibration (the decoder input that sounds at it, at the
    frame's pitch), as the engine does to played notes: a model that renders under its input then still
    sounds at the input's loudness (measured: resynthesis loudness-contour L1 2.5-4.2 dB -> 0.2-0.8 dB on
    four 10-minute models). A file without a learnt expression: unchanged."""
    art = bundle.expression
    if art is None or not (art.level_input_db or art.calibration_midi):
        return loudness_db
    midi = hz_to_midi(np.maximum(np.asarray(f0_hz, np.float64), 1.0))
    return np.array([output_input_db(art, float(x), float(m)) for x, m in zip(loudness_db, midi)],
                    np.asarray(loudness_db).dtype)


def choose_octave_shift(f0_hz: np.ndarray, model_range_hz: tuple[float, float] | None) -> tuple[float, str]:
    """(pitch shift in semitones, why) for an input's confidently voiced f0: none when at least FIT_FRACTION of
    the frames lie inside the model's pitch range (its corpus's 1st-99th percentile); otherwise the whole number
    of octaves (up to MAX_OCTAVES) that puts the most frames inside it (the smaller shift on a tie)."""
    f0_hz = np.asarray(f0_hz, dtype=np.float64)
    if f0_hz.size == 0:
        return 0.0, "no shift: the input has no confidently voiced pitch"
    if model_range_hz is None:
        return 0.0, "no shift: the model file has no measured pitch range"
    lo, hi = model_range_hz
    p5, p95 = np.percentile(f0_hz, [5, 95])
    inside = {k: float(np.mean((f0_hz * 2.0 ** k >= lo) & (f0_hz * 2.0 ** k <= hi)))
              for k in range(-MAX_OCTAVES, MAX_OCTAVES + 1)}
    where = f"the input's pitch {_range_text(p5, p95)} (5th-95th percentile)"
    if inside[0] >= FIT_FRACTION:
        return 0.0, (f"no shift: {where} fits the model's range {_range_text(lo, hi)} ({inside[0]:.0%} of its "
                     f"voiced frames inside)")
    best = max(inside, key=lambda k: (inside[k], -abs(k)))
    if inside[best] <= inside[0]:
        return 0.0, (f"no shift: {where} lies {inside[0]:.0%} inside the model's range {_range_text(lo, hi)} and no "
                     f"octave shift does better")
    word = "up" if best > 0 else "down"
    return 12.0 * best, (f"shifted {abs(best)} octave{'s' if abs(best) > 1 else ''} {word}: {where} lies only "
                         f"{inside[0]:.0%} inside the model's range {_range_text(lo, hi)}, {inside[best]:.0%} after "
                         f"the shift (--pitch-shift 0 keeps it where it is)")


def latent_vector(bundle: ModelBundle, knobs: dict) -> np.ndarray:
    """z at the corpus means, with the given knobs (name or importance position -> 0..1) applied."""
    z = bundle.default_z().numpy().copy()
    for key, knob in knobs.items():
        info = bundle.latent(key)
        z[info.index] = info.knob_to_z(knob)
    return z


def timbre_transfer(bundle: ModelBundle, input_path: Path, output_path: Path, pitch_shift: float | None = None,
                    loudness_shift: float | None = None, knobs: dict | None = None,
                    cache_dir: Path | None = None) -> str:
    c = bundle.config
    try:
        audio, _, _ = load_audio_file(Path(input_path), c.sample_rate)
    except (ValueError, OSError) as exc:
        raise TransferError(f"cannot read {input_path}: {exc}") from exc
    if len(audio) < c.hop_size * 4:
        raise TransferError(f"{input_path} is too short ({len(audio)} samples)")
    settings = FeatureSettings(sample_rate=c.sample_rate, hop_size=c.hop_size)
    feats = extract_corpus_features([audio], settings, cache_dir / "features" if cache_dir else None,
                                    n_jobs=1, progress=False)[0]
    confident = feats.voiced & (feats.voiced_prob >= 0.5)
    corpus = bundle.corpus
    if pitch_shift is None:
        pitch_shift, why = choose_octave_shift(feats.f0_hz[confident], corpus.f0_range_hz)
    else:
        why = "as asked"
    if loudness_shift is None:
        loudness_shift = 0.0
        target = corpus.loudness_median_db
        ld = feats.loudness_db
        active = ld[ld > max(-70.0, ld.max() - 50.0)]
        if target is not None and active.size:
            loudness_shift = float(target - np.median(active))
    f0 = feats.f0_hz * 2.0 ** (pitch_shift / 12.0)
    ld = np.maximum(feats.loudness_db + loudness_shift, -100.0)
    ld = calibrated_loudness_db(bundle, ld, f0)
    z = latent_vector(bundle, knobs or {})
    out = render_controls(bundle.decoder, np.append(f0, f0[-1]), np.append(ld, ld[-1]), z)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:
        out = out * (0.99 / peak)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    # 24-bit like sdga-render (the peak is scaled to at most 0.99 above: nothing clips)
    sf.write(output_path, out.astype(np.float32), c.sample_rate,
             subtype="PCM_24" if Path(output_path).suffix.lower() in (".wav", ".flac") else None)
    knob_text = ", ".join(f"{k}={v}" for k, v in (knobs or {}).items()) or "corpus means"
    return (f"wrote {output_path}: {len(out) / c.sample_rate:.2f} s, pitch shift {pitch_shift:+.1f} st "
            f"({why}), loudness shift {loudness_shift:+.1f} dB, latents: {knob_text}")
