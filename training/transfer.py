"""Timbre transfer: f0 and loudness of any recording (the training feature code), rendered by a model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from instrument.model.bundle import ModelBundle
from instrument.model.offline import render_controls

from training.corpus import load_audio_file
from training.features import FeatureSettings, extract_corpus_features


class TransferError(Exception):
    pass


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
        pitch_shift = 0.0
        target = corpus.f0_median_hz
        if target and confident.any():
            octaves = np.log2(target / np.median(feats.f0_hz[confident]))
            pitch_shift = 12.0 * float(np.round(octaves))
    if loudness_shift is None:
        loudness_shift = 0.0
        target = corpus.loudness_median_db
        ld = feats.loudness_db
        active = ld[ld > max(-70.0, ld.max() - 50.0)]
        if target is not None and active.size:
            loudness_shift = float(target - np.median(active))
    f0 = feats.f0_hz * 2.0 ** (pitch_shift / 12.0)
    ld = np.maximum(feats.loudness_db + loudness_shift, -100.0)
    z = latent_vector(bundle, knobs or {})
    out = render_controls(bundle.decoder, np.append(f0, f0[-1]), np.append(ld, ld[-1]), z)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:
        out = out * (0.99 / peak)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(output_path, out.astype(np.float32), c.sample_rate)
    knob_text = ", ".join(f"{k}={v}" for k, v in (knobs or {}).items()) or "corpus means"
    return (f"wrote {output_path}: {len(out) / c.sample_rate:.2f} s, pitch shift {pitch_shift:+.1f} st, "
            f"loudness shift {loudness_shift:+.1f} dB, latents: {knob_text}")
