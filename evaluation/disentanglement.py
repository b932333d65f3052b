"""Are the latents disentangled? MIG and DCI against known factors, and the latent codes of a synthetic corpus.

- `mutual_information_gap`: MIG (Chen et al. 2018, as in disentanglement_lib): latents and factors discretised
  into equal-width bins, discrete mutual information, per factor the gap between the two latents that know most
  about it, divided by the factor's entropy; the mean over factors.
- `dci_linear`: DCI (Eastwood & Williams 2018) with a linear importance matrix instead of their gradient-boosted
  trees (no sklearn): |weights| of a least-squares regression of each standardised factor on the standardised
  latents. Disentanglement and completeness are 1 - normalised entropy of the importance rows / columns;
  informativeness is the held-out R^2 of that regression. Linear importance misses non-monotone relations.
- `latent_codes_for_corpus`: posterior means averaged over the loud frames of each segment of a synthetic corpus.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from evaluation.synthetic_corpus import FACTOR_NAMES

__all__ = ["mutual_information_matrix", "mutual_information_gap", "dci_linear", "load_corpus_audio",
           "latent_codes_for_corpus", "disentanglement_scores"]


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
    from instrument.model.offline import encode_means
    from training.features import a_weighted_loudness_db

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
                from training.features import FeatureSettings, extract_features
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
