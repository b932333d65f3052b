"""Are the latents musical controls? Disentanglement, invariance and playing accuracy of a trained model, and the
drivers that train models to measure them (beta table, time to quality, real-instrument quality).

- `mutual_information_gap`: MIG (Chen et al. 2018, as in disentanglement_lib): latents and factors discretised
  into equal-width bins, discrete mutual information, per factor the gap between the two latents that know most
  about it, divided by the factor's entropy; the mean over factors.
- `dci_linear`: DCI (Eastwood & Williams 2018) with a linear importance matrix instead of their gradient-boosted
  trees (no sklearn): |weights| of a least-squares regression of each standardised factor on the standardised
  latents. Disentanglement and completeness are 1 - normalised entropy of the importance rows / columns;
  informativeness is the held-out R^2 of that regression. Linear importance misses non-monotone relations.
- `latent_codes_for_corpus`: posterior means averaged over the loud frames of each segment of a synthetic corpus.
- `invariance_check`, `midi_play_accuracy`: render held notes and measure what comes out (pYIN f0 refined
  below its 10-cent grid, A-weighted loudness, the export's timbre descriptors).
- `beta_table`, `time_to_quality`, `instrument_quality`: train (resumable: a run folder whose summary.json
  exists is not trained again; its evaluation is cached in evaluation.json) and write JSON results that
  `training.report` turns into tables and figures.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .synthetic_corpus import FACTOR_NAMES

__all__ = [
    "INVARIANCE_F0_CENTS", "INVARIANCE_LOUDNESS_DB", "INVARIANCE_DESCRIPTOR_UNITS",
    "mutual_information_matrix", "mutual_information_gap", "dci_linear",
    "load_corpus_audio", "latent_codes_for_corpus", "measure_note", "invariance_check", "velocity_to_loudness_db",
    "midi_play_accuracy", "disentanglement_scores", "evaluate_run", "beta_table", "time_to_quality",
    "instrument_quality", "write_json",
]

INVARIANCE_F0_CENTS = 5.0          # |rendered f0 - input f0| must stay below this at every knob value and pitch
INVARIANCE_LOUDNESS_DB = 1.5       # |loudness(knob) - loudness(knob 0.5)| must stay below this
INVARIANCE_DESCRIPTOR_UNITS = 1.0  # the named descriptor must rise by >= this many export.DESCRIPTORS units 0 -> 1


# ---------------------------------------------------------------------------------------------- disentanglement
def _discretise(x: np.ndarray, n_bins: int) -> np.ndarray:
    """(N,) -> integer codes: the distinct values if there are at most n_bins, else n_bins equal-width bins."""
    x = np.asarray(x, np.float64)
    values, codes = np.unique(x, return_inverse=True)
    if len(values) <= n_bins:
        return codes
    lo, hi = x.min(), x.max()
    return np.digitize(x, np.linspace(lo, hi, n_bins + 1)[1:-1])


def _entropy(codes: np.ndarray) -> float:
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def _check_pairs(latents, factors) -> tuple[np.ndarray, np.ndarray]:
    latents, factors = np.asarray(latents, np.float64), np.asarray(factors, np.float64)
    if latents.ndim != 2 or factors.ndim != 2 or latents.shape[0] != factors.shape[0]:
        raise ValueError(f"need latents (N, D) and factors (N, K) with one N, got {latents.shape}, {factors.shape}")
    if latents.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    return latents, factors


def mutual_information_matrix(latents, factors, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Discrete MI (nats) between every latent and factor (D, K), and every factor's entropy (K,)."""
    latents, factors = _check_pairs(latents, factors)
    zc = [_discretise(latents[:, d], n_bins) for d in range(latents.shape[1])]
    vc = [_discretise(factors[:, k], n_bins) for k in range(factors.shape[1])]
    mi = np.array([[_mutual_information(z, v) for v in vc] for z in zc])
    return mi, np.array([_entropy(v) for v in vc])


def mutual_information_gap(latents, factors, n_bins: int = 20) -> tuple[float, np.ndarray]:
    """MIG of latents (N, D) about factors (N, K): (mean over factors, per-factor gaps (K,)).

    Per factor: (largest MI - second largest MI over latents) / H(factor); NaN for a constant factor. With one
    latent the gap is MI / H. Estimates from few samples are biased low (MI is overestimated for every latent);
    use n_bins well below sqrt(N)."""
    mi, entropy = mutual_information_matrix(latents, factors, n_bins)
    top = -np.sort(-mi, axis=0)
    second = top[1] if mi.shape[0] > 1 else np.zeros(mi.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        per_factor = np.where(entropy > 0, (top[0] - second) / entropy, np.nan)
    mig = float(np.nanmean(per_factor)) if np.isfinite(per_factor).any() else math.nan
    return mig, per_factor


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def _normalised_entropy_score(p: np.ndarray, base: int) -> np.ndarray:
    """1 - entropy (base `base`) of each row of p (rows normalised to sum 1); 0 for all-zero rows."""
    s = p.sum(1, keepdims=True)
    q = np.where(s > 0, p / np.where(s > 0, s, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(1) / math.log(base) if base > 1 else np.zeros(len(q))
    return np.where(s[:, 0] > 0, 1.0 - h, 0.0)


def dci_linear(latents, factors, test_fraction: float = 0.3, seed: int = 0) -> dict:
    """DCI with a linear importance matrix (see the module docstring). Returns disentanglement, completeness,
    informativeness (held-out R^2, mean over factors) and the importance matrix (D, K)."""
    latents, factors = _check_pairs(latents, factors)
    n, d = latents.shape
    k = factors.shape[1]
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction)) if n >= 10 else 0
    test, train = order[:n_test], order[n_test:]
    z_mean, z_sd = latents[train].mean(0), latents[train].std(0)
    z_sd = np.where(z_sd > 0, z_sd, 1.0)
    v_mean, v_sd = factors[train].mean(0), factors[train].std(0)
    v_sd = np.where(v_sd > 0, v_sd, 1.0)
    zs = np.c_[(latents - z_mean) / z_sd, np.ones(n)]
    vs = (factors - v_mean) / v_sd
    weights, *_ = np.linalg.lstsq(zs[train], vs[train], rcond=None)        # (D + 1, K)
    importance = np.abs(weights[:-1])                                       # (D, K)
    rows = importance.sum(1)
    rho = rows / rows.sum() if rows.sum() > 0 else np.full(d, 1.0 / d)
    disentanglement = float((rho * _normalised_entropy_score(importance, k)).sum())
    completeness = float(_normalised_entropy_score(importance.T, d).mean())
    ev = test if n_test else train
    resid = vs[ev] - zs[ev] @ weights
    total = ((vs[ev] - vs[ev].mean(0)) ** 2).sum(0)
    r2 = 1.0 - (resid ** 2).sum(0) / np.where(total > 0, total, 1.0)
    return {"disentanglement": disentanglement, "completeness": completeness,
            "informativeness": float(np.mean(r2)), "r2_per_factor": r2.tolist(),
            "importance": importance.tolist()}


# ---------------------------------------------------------------------------------------------- latent codes
def load_corpus_audio(path: Path | str, sample_rate: int, peak_dbfs: float = -1.0) -> np.ndarray:
    """A file as the corpus loader gives it to training (mono, resampled, peak-normalised), but NOT trimmed, so
    times in a factor table still hold."""
    import soundfile as sf
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(1)
    if sr != sample_rate:
        import librosa
        audio = librosa.resample(audio, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32) if peak > 0 else audio


def latent_codes_for_corpus(bundle, files: Iterable[Path | str], factors: Sequence[dict],
                            factor_names: Sequence[str] = FACTOR_NAMES, margin_s: float = 0.1,
                            loudness_window_db: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means (N, D) (latent index order, z units) and factor values (N, K), one row per segment.

    `factors` holds one dict per segment (``file`` name, ``start_s``, ``end_s`` and the factor values, as
    `synthetic_corpus.load_factors` returns); rows whose file is not in `files` are left out. A segment's code
    is the mean of the encoder's posterior means over its frames at least `margin_s` inside it and within
    `loudness_window_db` of its loudest frame."""
    from instrument.offline import encode_means
    from .features import a_weighted_loudness_db

    if bundle.encoder is None:
        raise ValueError("the model file has no encoder")
    c = bundle.config
    paths = {Path(f).name: Path(f) for f in files}
    per_file: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    latents, values = [], []
    for row in factors:
        name = Path(str(row["file"])).name
        if name not in paths:
            continue
        if name not in per_file:
            audio = load_corpus_audio(paths[name], c.sample_rate)
            f0 = None
            if getattr(c, "encoder_features", "mel") == "harmonic":
                from .features import FeatureSettings, extract_features
                f0 = extract_features(audio, FeatureSettings(sample_rate=c.sample_rate, hop_size=c.hop_size)).f0_hz
            mean, _ = encode_means(bundle.encoder, audio, f0)
            loud = a_weighted_loudness_db(audio, c.sample_rate, c.hop_size, 2048)
            per_file[name] = (mean[: len(loud)], loud)
        mean, loud = per_file[name]
        a = int(math.ceil((float(row["start_s"]) + margin_s) * c.sample_rate / c.hop_size))
        b = int((float(row["end_s"]) - margin_s) * c.sample_rate / c.hop_size)
        a, b = max(0, a), min(len(loud), b)
        if b <= a:
            a = max(0, int(float(row["start_s"]) * c.sample_rate / c.hop_size))
            b = min(len(loud), max(a + 1, int(float(row["end_s"]) * c.sample_rate / c.hop_size)))
        seg_loud = loud[a:b]
        keep = seg_loud >= seg_loud.max() - loudness_window_db
        latents.append(mean[a:b][keep].mean(0))
        values.append([float(row[k]) for k in factor_names])
    if not latents:
        raise ValueError("no segment of the factor table belongs to the given files")
    return np.asarray(latents, np.float64), np.asarray(values, np.float64)


def disentanglement_scores(bundle, files, factors, factor_names: Sequence[str] = FACTOR_NAMES,
                           n_bins: int = 10) -> dict:
    """MIG (over all latents and over the active ones only) and linear DCI of a model on a synthetic corpus."""
    z, v = latent_codes_for_corpus(bundle, files, factors, factor_names)
    mig, per = mutual_information_gap(z, v, n_bins)
    mi, entropy = mutual_information_matrix(z, v, n_bins)
    active = [l.index for l in bundle.latents if l.active]
    mig_active, per_active = (mutual_information_gap(z[:, active], v, n_bins) if active
                              else (math.nan, np.full(v.shape[1], np.nan)))
    dci = dci_linear(z, v)
    best = mi.argmax(0)
    names = {l.index: l.name for l in bundle.latents}
    return {"n_segments": int(len(z)), "n_bins": n_bins, "factor_names": list(factor_names),
            "mig": mig, "mig_per_factor": per.tolist(), "mig_active": mig_active,
            "mig_active_per_factor": np.asarray(per_active).tolist(),
            "mi_nats": mi.tolist(), "factor_entropy_nats": entropy.tolist(),
            "best_latent_per_factor": [{"factor": f, "latent_index": int(best[k]), "latent": names.get(int(best[k])),
                                        "mi_over_entropy": float(mi[best[k], k] / entropy[k]) if entropy[k] else None}
                                       for k, f in enumerate(factor_names)],
            "dci": {k: v for k, v in dci.items() if k != "importance"}, "dci_importance": dci["importance"]}


# ---------------------------------------------------------------------------------------------- rendering probes
def _held_note(f0_hz: float, loudness_db: float, seconds: float, hop_size: int, sample_rate: int,
               attack_s: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    n = int(round(seconds * sample_rate / hop_size)) + 1
    f0 = np.full(n, f0_hz, np.float32)
    ld = np.full(n, loudness_db, np.float32)
    attack = max(2, min(n, int(attack_s * sample_rate / hop_size)))
    ld[:attack] = np.linspace(-80.0, loudness_db, attack)
    return f0, ld


def _render_note(bundle, f0_hz: float, loudness_db: float, z: np.ndarray, seconds: float):
    """(audio, harmonic, noise, harmonic distribution (F, H)) of a held note."""
    import torch
    from instrument.offline import render_controls

    c = bundle.config
    f0, ld = _held_note(f0_hz, loudness_db, seconds, c.hop_size, c.sample_rate)
    harmonic, noise = render_controls(bundle.decoder, f0, ld, z, seed=7, return_parts=True)
    with torch.inference_mode():
        controls, _ = bundle.decoder.controls(torch.as_tensor(f0).view(1, -1), torch.as_tensor(ld).view(1, -1),
                                              torch.as_tensor(np.asarray(z, np.float32)).view(1, 1, -1)
                                              .expand(1, len(f0), -1))
    return harmonic + noise, harmonic, noise, controls.harmonic_distribution[0].numpy()


def _refine_f0(audio: np.ndarray, coarse_hz: float, sample_rate: int, max_harmonic: int = 6) -> float:
    """f0 of a steady tone near `coarse_hz`: the strongest of its first harmonics (each searched within +-50 cents)
    located by parabolic interpolation of a zero-padded Hann spectrum's log magnitude, divided by its number."""
    n = len(audio)
    n_fft = 1 << int(math.ceil(math.log2(n * 8)))
    spec = np.abs(np.fft.rfft(audio * np.hanning(n), n_fft)) + 1e-20
    best = None
    for k in range(1, max_harmonic + 1):
        fk = k * coarse_hz
        if fk * 2 ** (50 / 1200) >= 0.45 * sample_rate:
            break
        i0 = max(1, int(fk * 2 ** (-50 / 1200) * n_fft / sample_rate))
        i1 = min(len(spec) - 1, int(math.ceil(fk * 2 ** (50 / 1200) * n_fft / sample_rate)) + 1)
        i = i0 + int(np.argmax(spec[i0:i1]))
        if best is None or spec[i] > best[0]:
            best = (spec[i], i, k)
    if best is None:
        return coarse_hz
    _, i, k = best
    y0, y1, y2 = np.log(spec[i - 1: i + 2])
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
    return float((i + shift) * sample_rate / n_fft / k)


def measure_note(audio: np.ndarray, f0_ref_hz: float, sample_rate: int, hop_size: int,
                 steady_from_s: float = 0.15, unvoiced_by_peaks: bool = False) -> dict:
    """What a rendered held note measures as, from `steady_from_s` on: pYIN f0 (median over confidently voiced
    frames; its 10-cent grid refined by `_refine_f0`), its error in cents vs `f0_ref_hz`, the voiced fraction,
    and the A-weighted loudness in dB (power mean over frames). With ``unvoiced_by_peaks``, a note pYIN calls
    unvoiced (a breathy one) is measured by its harmonic peaks near `f0_ref_hz` (``f0_from``: "harmonic
    peaks"); otherwise its f0 fields stay NaN."""
    from .features import FeatureSettings, extract_features

    feats = extract_features(np.asarray(audio, np.float32), FeatureSettings(sample_rate=sample_rate, hop_size=hop_size))
    start = int(steady_from_s * sample_rate / hop_size)
    voiced = feats.voiced[start:] & (feats.voiced_prob[start:] >= 0.5)
    ld = feats.loudness_db[start:].astype(np.float64)
    loudness = float(10 * np.log10(np.mean(10 ** (ld / 10)))) if ld.size else math.nan
    frac = float(voiced.mean()) if voiced.size else 0.0
    out = {"f0_hz": math.nan, "f0_cents": math.nan, "f0_cents_pyin": math.nan, "voiced_fraction": frac,
           "loudness_db": loudness}
    if voiced.sum() < 3 or frac < 0.25:
        if not unvoiced_by_peaks:
            return out
        # pYIN calls a breathy note unvoiced: read the pitch of its harmonics near the reference instead (a
        # shift of more than the +-50-cent search lands on its edge and still fails a 5-cent check)
        if not np.isfinite(audio).all() or not np.any(audio):
            return out
        coarse = float(f0_ref_hz)
        fine = _refine_f0(np.asarray(audio[start * hop_size:], np.float64), coarse, sample_rate)
        out.update(f0_hz=fine, f0_cents=float(1200 * np.log2(fine / f0_ref_hz)), f0_from="harmonic peaks")
        return out
    coarse = float(np.median(feats.f0_hz[start:][voiced]))
    fine = _refine_f0(np.asarray(audio[start * hop_size:], np.float64), coarse, sample_rate)
    out.update(f0_hz=fine, f0_cents=float(1200 * np.log2(fine / f0_ref_hz)),
               f0_cents_pyin=float(1200 * np.log2(coarse / f0_ref_hz)))
    return out


def _descriptor_key(name: str) -> str | None:
    from .export import DESCRIPTORS
    base = re.sub(r"\d+$", "", name)
    for key, (label, _unit) in DESCRIPTORS.items():
        if label == base:
            return key
    return None


def _test_pitches(bundle, n_pitches: int) -> list[float]:
    lo, hi = bundle.f0_range_hz()
    if n_pitches == 1:
        return [float(math.sqrt(lo * hi))]
    fractions = np.linspace(0.15, 0.85, n_pitches)
    return [float(lo * (hi / lo) ** f) for f in fractions]


def _corpus_loudness(bundle) -> float:
    corpus = bundle.metadata.get("corpus", {})
    if corpus.get("loudness_median_db") is not None:
        return float(corpus["loudness_median_db"])
    lo, hi = corpus.get("loudness_range_db") or (-60.0, -10.0)
    return 0.5 * (float(lo) + float(hi))


def invariance_check(bundle, n_steps: int = 5, pitches_hz: Sequence[float] | None = None, n_pitches: int = 3,
                     seconds: float = 1.0, loudness_db: float | None = None) -> list[dict]:
    """For every active latent: sweep its knob 0..1 (n_steps values, plus 0.5) on held notes at a few pitches in
    the corpus's f0 range (others at their means) and measure f0 error (cents), loudness change vs knob 0.5 (dB)
    and the named descriptor (export.DESCRIPTORS; for a name without one, the descriptor that moves most).

    Pass: |f0| < INVARIANCE_F0_CENTS everywhere, |loudness change| < INVARIANCE_LOUDNESS_DB everywhere, and the
    descriptor rising by >= INVARIANCE_DESCRIPTOR_UNITS units from knob 0 to 1 (median over pitches; for an
    unnamed latent, whose knob has no orientation, changing by that much either way)."""
    from .export import DESCRIPTORS, describe

    c = bundle.config
    pitches = [float(p) for p in (pitches_hz if pitches_hz is not None else _test_pitches(bundle, n_pitches))]
    loud = _corpus_loudness(bundle) if loudness_db is None else float(loudness_db)
    knobs = sorted(set(np.round(np.linspace(0.0, 1.0, max(2, n_steps)), 6).tolist()) | {0.5})
    steady = slice(int(0.25 * c.sample_rate), None)
    results = []
    for info in bundle.latents:
        if not info.active:
            continue
        rows, descs = [], {}
        for pitch in pitches:
            for knob in knobs:
                z = bundle.default_z().numpy().copy()
                z[info.index] = info.knob_to_z(knob)
                audio, harmonic, noise, dist = _render_note(bundle, pitch, loud, z, seconds)
                m = measure_note(audio, pitch, c.sample_rate, c.hop_size, unvoiced_by_peaks=True)
                d = describe(audio[steady], harmonic[steady], noise[steady], dist[len(dist) // 3:], c.sample_rate)
                descs[(pitch, knob)] = d
                rows.append({"pitch_hz": pitch, "knob": knob, **m})
        mid = {p: next(r["loudness_db"] for r in rows if r["pitch_hz"] == p and r["knob"] == 0.5) for p in pitches}
        for r in rows:
            r["loudness_change_db"] = r["loudness_db"] - mid[r["pitch_hz"]]
        key = _descriptor_key(info.name)
        deltas = {k: float(np.median([descs[(p, 1.0)][k] - descs[(p, 0.0)][k] for p in pitches])) for k in DESCRIPTORS}
        measured = key is None
        if measured:
            key = max(DESCRIPTORS, key=lambda k: abs(deltas[k]) / DESCRIPTORS[k][1])
        unit = DESCRIPTORS[key][1]
        for r in rows:
            r["descriptor"] = descs[(r["pitch_hz"], r["knob"])][key]
        f0_abs = [abs(r["f0_cents"]) for r in rows]
        f0_max = max(f0_abs) if all(np.isfinite(f0_abs)) else math.inf
        ld_max = max(abs(r["loudness_change_db"]) for r in rows)
        delta_units = deltas[key] / unit
        result = {"latent": info.name, "index": info.index, "kl_nats": info.kl_nats, "descriptor": key,
                  "descriptor_from": "measured" if measured else "name", "descriptor_unit": unit,
                  "pitches_hz": pitches, "knobs": knobs, "loudness_db": loud,
                  "f0_cents_max_abs": f0_max, "loudness_db_max_abs": ld_max,
                  "descriptor_delta": deltas[key], "descriptor_delta_units": delta_units,
                  "descriptor_deltas": deltas,
                  "f0_pass": bool(f0_max < INVARIANCE_F0_CENTS), "loudness_pass": bool(ld_max < INVARIANCE_LOUDNESS_DB),
                  # a named knob is oriented so that up = more of its descriptor; an unnamed one is not
                  "descriptor_pass": bool((abs(delta_units) if measured else delta_units) >= INVARIANCE_DESCRIPTOR_UNITS),
                  "rows": rows}
        result["pass"] = result["f0_pass"] and result["loudness_pass"] and result["descriptor_pass"]
        results.append(result)
    return results


def velocity_to_loudness_db(velocity: float, loudness_range_db: Sequence[float]) -> float:
    """Velocity 0..127 linearly onto the corpus loudness range (the voice bank's mapping at sensitivity 1)."""
    lo, hi = float(loudness_range_db[0]), float(loudness_range_db[1])
    return lo + (hi - lo) * min(max(float(velocity) / 127.0, 0.0), 1.0)


def midi_play_accuracy(bundle, notes: Sequence[int] | None = None, velocities: Sequence[int] = (32, 64, 96, 127),
                       seconds: float = 0.5) -> dict:
    """Play every note (default: each MIDI note inside the corpus's f0 range) at every velocity as a held note of
    `seconds` (latents at their means), and measure its pitch error (cents) and loudness.

    Summary: median / 95th percentile / max |cents|, the fraction of renders within INVARIANCE_F0_CENTS, octave
    errors (|cents| > 600) and unvoiced renders; whether measured loudness rises with velocity at every note
    (`loudness_rises`, and the fraction of notes where it does) and the mean slope dB out per dB in."""
    c = bundle.config
    corpus = bundle.metadata.get("corpus", {})
    ld_range = corpus.get("loudness_range_db") or (-60.0, -10.0)
    if notes is None:
        lo, hi = bundle.f0_range_hz()
        notes = list(range(int(math.ceil(69 + 12 * math.log2(lo / 440))), int(math.floor(69 + 12 * math.log2(hi / 440))) + 1))
    velocities = sorted(int(v) for v in velocities)
    z = bundle.default_z().numpy()
    rows = []
    for note in notes:
        f0 = 440.0 * 2 ** ((note - 69) / 12)
        for v in velocities:
            ld_in = velocity_to_loudness_db(v, ld_range)
            audio, *_ = _render_note(bundle, f0, ld_in, z, seconds)
            m = measure_note(audio, f0, c.sample_rate, c.hop_size)
            rows.append({"note": int(note), "velocity": v, "f0_ref_hz": f0, "loudness_in_db": ld_in, **m})
    cents = np.array([r["f0_cents"] for r in rows], np.float64)
    finite = np.abs(cents[np.isfinite(cents)])
    rises, slopes = [], []
    for note in notes:
        r = [x for x in rows if x["note"] == note]
        out = np.array([x["loudness_db"] for x in r])
        rises.append(bool(np.all(np.diff(out) > 0)))
        ins = np.array([x["loudness_in_db"] for x in r])
        if len(r) > 1 and np.ptp(ins) > 0:
            slopes.append(float(np.polyfit(ins, out, 1)[0]))
    return {"notes": [int(n) for n in notes], "velocities": velocities, "seconds": seconds, "rows": rows,
            "renders": len(rows), "unvoiced": int((~np.isfinite(cents)).sum()),
            "f0_cents_median_abs": float(np.median(finite)) if finite.size else math.nan,
            "f0_cents_p95_abs": float(np.percentile(finite, 95)) if finite.size else math.nan,
            "f0_cents_max_abs": float(finite.max()) if finite.size else math.nan,
            "within_tolerance_fraction": float((finite < INVARIANCE_F0_CENTS).sum() / max(1, len(rows))),
            "octave_errors": int((finite > 600).sum()),
            "loudness_rises": bool(all(rises)) if rises else False,
            "loudness_rises_fraction": float(np.mean(rises)) if rises else 0.0,
            "loudness_slope_db_per_db": float(np.mean(slopes)) if slopes else math.nan}


# ---------------------------------------------------------------------------------------------- run evaluation
def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path | str, data) -> Path:
    """Atomic JSON write (NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1))
    tmp.replace(path)
    return path


def _eval_key(run_dir: Path, eval_dir: Path | None, options: dict) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    payload = {"date": summary.get("training", {}).get("date"), "options": options}
    if eval_dir is not None:
        from .synthetic_corpus import FACTORS_JSON
        payload["eval"] = json.loads((Path(eval_dir) / FACTORS_JSON).read_text()).get("settings")
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate_run(run_dir: Path | str, eval_dir: Path | str | None = None, n_bins: int = 10,
                 invariance: bool = True, midi: bool = True, quick: bool = False, log=print) -> dict:
    """Evaluate a finished run folder: its summary, disentanglement on the synthetic corpus in `eval_dir` (if
    given), invariance and MIDI accuracy. Cached in <run_dir>/evaluation.json (recomputed when the run, the
    evaluation corpus or the options change)."""
    from instrument.bundle import load_bundle
    from .synthetic_corpus import load_factors

    run_dir = Path(run_dir)
    options = {"n_bins": n_bins, "invariance": invariance, "midi": midi, "quick": quick}
    key = _eval_key(run_dir, Path(eval_dir) if eval_dir else None, options)
    cache = run_dir / "evaluation.json"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return cached
        except ValueError:
            pass
    t0 = time.time()
    summary = json.loads((run_dir / "summary.json").read_text())
    bundle = load_bundle(summary.get("model_file") or run_dir / "model.sdga")
    out: dict = {"key": key, "run_dir": str(run_dir), "options": options}
    if eval_dir is not None:
        factors = load_factors(eval_dir)
        files = sorted(Path(eval_dir).glob("*.wav"))
        out["disentanglement"] = disentanglement_scores(bundle, files, factors, n_bins=n_bins)
    if invariance:
        out["invariance"] = invariance_check(bundle, n_steps=3 if quick else 5, n_pitches=1 if quick else 3,
                                             seconds=0.6 if quick else 1.0)
    if midi:
        notes = None
        if quick:
            lo, hi = bundle.f0_range_hz()
            notes = sorted({int(round(69 + 12 * math.log2(f / 440))) for f in (lo * 1.05, math.sqrt(lo * hi), hi / 1.05)})
        out["midi"] = midi_play_accuracy(bundle, notes=notes, velocities=(40, 120) if quick else (32, 64, 96, 127))
    out["seconds"] = round(time.time() - t0, 1)
    write_json(cache, out)
    log(f"evaluated {run_dir} in {out['seconds']} s")
    return json.loads(cache.read_text())


def _row_from_run(run_dir: Path, evaluation: dict) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    t, h = summary.get("training", {}), summary.get("heldout", {})
    latents = summary.get("latents", [])
    row = {"run_dir": str(run_dir), "steps": t.get("steps"), "fit_seconds": t.get("fit_seconds"),
           "best_val_loss": t.get("best_val_loss"), "beta": t.get("beta"), "max_time_s": t.get("max_time_s"),
           "attribute_weight": t.get("attribute_weight"), "invariance_weight": t.get("invariance_weight", 0.0),
           "interrupted": t.get("interrupted"),
           "active_latents": sum(1 for l in latents if l.get("active")), "latent_dim": t.get("latent_dim"),
           "latent_names": [l["name"] for l in latents if l.get("active")],
           "spectral_distance": h.get("spectral_distance"), "f0_cents_median": h.get("f0_cents_median"),
           "loudness_db_median": h.get("loudness_db_median")}
    d = evaluation.get("disentanglement")
    if d:
        row.update(mig=d["mig"], mig_active=d["mig_active"], mig_per_factor=d["mig_per_factor"],
                   dci_disentanglement=d["dci"]["disentanglement"], dci_completeness=d["dci"]["completeness"],
                   dci_informativeness=d["dci"]["informativeness"],
                   best_latent_per_factor=d["best_latent_per_factor"])
    inv = evaluation.get("invariance")
    if inv is not None:
        row["invariance_pass"] = sum(1 for r in inv if r["pass"])
        row["invariance_checked"] = len(inv)
    m = evaluation.get("midi")
    if m:
        row.update(midi_f0_cents_median_abs=m["f0_cents_median_abs"], midi_f0_cents_max_abs=m["f0_cents_max_abs"],
                   midi_loudness_rises_fraction=m["loudness_rises_fraction"])
    return row


def _train_if_needed(cfg, log) -> None:
    from .train import run_training
    run_dir = Path(cfg.out_dir)
    if (run_dir / "summary.json").exists():
        log(f"{run_dir}: summary.json exists, not training again")
        return
    log(f"training {run_dir} (beta {cfg.beta}, budget {cfg.max_time_s} s, max steps {cfg.max_steps})")
    run_training(replace(cfg, resume=False, model_file=None), log=log)


def _results(kind: str, settings: dict, rows: list, path: Path) -> dict:
    data = {"kind": kind, "settings": settings, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(path, data)
    return data


def beta_table(base, betas: Sequence[float], out_dir: Path | str, eval_dir: Path | str | None = None,
               n_bins: int = 10, invariance: bool = True, midi: bool = False, quick: bool = False,
               log: Callable = print) -> dict:
    """Train one run per beta from the TrainConfig template `base` (its corpus: normally a synthetic corpus) into
    <out_dir>/beta_<beta>, evaluate each, and write <out_dir>/beta_table.json after every run."""
    out_dir = Path(out_dir)
    settings = {"corpus": str(base.corpus_dir), "eval_corpus": str(eval_dir) if eval_dir else None,
                "max_time_s": base.max_time_s, "max_steps": base.max_steps, "latent_dim": base.latent_dim,
                "n_bins": n_bins, "betas": [float(b) for b in betas]}
    rows: list[dict] = []
    data = _results("beta_table", settings, rows, out_dir / "beta_table.json")
    for beta in betas:
        run_dir = out_dir / f"beta_{beta:g}"
        _train_if_needed(replace(base, out_dir=run_dir, beta=float(beta)), log)
        ev = evaluate_run(run_dir, eval_dir, n_bins=n_bins, invariance=invariance, midi=midi, quick=quick, log=log)
        rows.append(dict(_row_from_run(run_dir, ev), beta=float(beta)))
        data = _results("beta_table", settings, rows, out_dir / "beta_table.json")
    return data


def time_to_quality(base, budgets_s: Sequence[float], out_dir: Path | str, eval_dir: Path | str | None = None,
                    n_bins: int = 10, invariance: bool = True, midi: bool = True, quick: bool = False,
                    log: Callable = print) -> dict:
    """One run per wall-clock budget (seconds) into <out_dir>/budget_<s>s; writes <out_dir>/time_to_quality.json."""
    out_dir = Path(out_dir)
    settings = {"corpus": str(base.corpus_dir), "eval_corpus": str(eval_dir) if eval_dir else None,
                "beta": base.beta, "max_steps": base.max_steps, "latent_dim": base.latent_dim,
                "budgets_s": [float(b) for b in budgets_s]}
    rows: list[dict] = []
    data = _results("time_to_quality", settings, rows, out_dir / "time_to_quality.json")
    for budget in budgets_s:
        run_dir = out_dir / f"budget_{int(round(budget))}s"
        _train_if_needed(replace(base, out_dir=run_dir, max_time_s=float(budget)), log)
        ev = evaluate_run(run_dir, eval_dir, n_bins=n_bins, invariance=invariance, midi=midi, quick=quick, log=log)
        rows.append(dict(_row_from_run(run_dir, ev), budget_s=float(budget)))
        data = _results("time_to_quality", settings, rows, out_dir / "time_to_quality.json")
    return data


def instrument_quality(base, instruments: Sequence[str], out_dir: Path | str, n_files: int = 8,
                       seconds_per_file: float = 12.0, invariance: bool = True, midi: bool = True,
                       quick: bool = False, log: Callable = print) -> dict:
    """Real-instrument quality: a FluidR3 demo corpus per instrument (training.demo_corpus) in
    <out_dir>/corpora/<name>, one run each in <out_dir>/<name>; writes <out_dir>/instrument_quality.json."""
    from .demo_corpus import make_demo_corpus

    out_dir = Path(out_dir)
    settings = {"n_files": n_files, "seconds_per_file": seconds_per_file, "beta": base.beta,
                "max_time_s": base.max_time_s, "max_steps": base.max_steps, "instruments": list(instruments)}
    rows: list[dict] = []
    data = _results("instrument_quality", settings, rows, out_dir / "instrument_quality.json")
    for name in instruments:
        corpus = out_dir / "corpora" / name
        make_demo_corpus(corpus, instrument=name, n_files=n_files, seconds_per_file=seconds_per_file, seed=base.seed)
        run_dir = out_dir / name
        _train_if_needed(replace(base, corpus_dir=corpus, out_dir=run_dir), log)
        ev = evaluate_run(run_dir, None, invariance=invariance, midi=midi, quick=quick, log=log)
        rows.append(dict(_row_from_run(run_dir, ev), instrument=name))
        data = _results("instrument_quality", settings, rows, out_dir / "instrument_quality.json")
    return data
