"""Export: held-out resynthesis and metrics, latent analysis (activity, ranges, measured names), the model file."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from instrument.model.bundle import CorpusInfo, LatentInfo, ModelBundle, save_bundle
from instrument.model.offline import encode_means, render_controls, render_parts

from training.expression import calibrate_levels, corpus_articulation
from training.features import FeatureSettings
from training.metrics import aggregate_metrics, resynthesis_metrics, spectral_min_n_samples

ACTIVE_KL_NATS = 0.02   # a latent whose average KL is below this carries (almost) nothing: inactive
KNOB_PERCENTILES = (5.0, 95.0)

# Descriptor -> (name given to a latent that moves it most, the change that counts as "one unit").
DESCRIPTORS = {
    "centroid_octaves": ("brightness", 0.25),
    "flatness_log10": ("noisiness", 0.3),
    "noise_ratio_db": ("breath", 6.0),
    "odd_even_db": ("hollowness", 4.0),
    "spread_octaves": ("richness", 0.25),
    "loudness_db": ("level", 3.0),
}

# Latents 0, 1, 2 of a model trained with the attribute regularisation (training.attributes.ATTRIBUTES) are
# named after these descriptors, whatever else their sweep moves most, if the sweep moves that descriptor by at
# least one unit (else the knob would not do what its name says, and it is named by its sweep like the others).
ANCHORED_DESCRIPTORS = ("centroid_octaves", "noise_ratio_db", "odd_even_db")


def pad_last_frame(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, x[-1:]], axis=0)


def resynthesise(module, example, seed: int = 0) -> np.ndarray:
    """Resynthesis of a (held-out) example: its f0 and loudness, its own posterior-mean z."""
    mean, _ = encode_means(module.encoder, example.audio, example.features.f0_hz)
    n = example.n_frames
    z = mean[: n + 1]
    if z.shape[0] < n + 1:
        z = np.concatenate([z, np.repeat(z[-1:], n + 1 - z.shape[0], axis=0)])
    f0 = pad_last_frame(example.features.f0_hz)
    ld = pad_last_frame(example.features.loudness_db)
    return render_controls(module.decoder, f0, ld, z, seed=seed)


# ---------------------------------------------------------------------------------------------- descriptors
def describe(audio: np.ndarray, harmonic: np.ndarray, noise: np.ndarray, distribution: np.ndarray,
             sample_rate: int) -> dict:
    """Timbre descriptors of a rendered steady tone (NumPy only)."""
    n_fft = 4096
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[:: n_fft // 4] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2 + 1e-12
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    p = power.mean(0)
    centroid = float((freqs * p).sum() / p.sum())
    spread = float(np.sqrt(((freqs - centroid) ** 2 * p).sum() / p.sum()))
    flatness = float(np.exp(np.mean(np.log(power), axis=-1)).mean() / power.mean(-1).mean())
    odd = distribution[..., 0::2].sum() + 1e-9
    even = distribution[..., 1::2].sum() + 1e-9
    return {
        "centroid_octaves": float(np.log2(max(centroid, 1.0))),
        "spread_octaves": float(np.log2(max(spread, 1.0))),
        "flatness_log10": float(np.log10(flatness + 1e-12)),
        "noise_ratio_db": float(10 * np.log10((noise ** 2).mean() + 1e-12) - 10 * np.log10((harmonic ** 2).mean() + 1e-12)),
        "odd_even_db": float(10 * np.log10(odd / even)),
        "loudness_db": float(10 * np.log10((audio ** 2).mean() + 1e-12)),
    }


def reference_controls(corpus: CorpusInfo, hop_size: int, sample_rate: int, seconds: float = 1.0):
    """A held note at the corpus's median pitch and loudness, with a short attack from silence."""
    n = int(seconds * sample_rate / hop_size) + 1
    f0 = np.full(n, corpus.reference_f0_hz, np.float32)
    ld = np.full(n, corpus.reference_loudness_db, np.float32)
    attack = min(n, int(0.05 * sample_rate / hop_size))
    ld[:attack] = np.linspace(-80.0, ld[attack - 1] if attack else ld[0], attack)
    return f0, ld


@torch.inference_mode()
def sweep_descriptors(decoder, f0: np.ndarray, ld: np.ndarray, z: np.ndarray, sample_rate: int) -> dict:
    harmonic, noise = render_parts(decoder, f0, ld, z, seed=7)
    controls, _ = decoder.controls(torch.as_tensor(f0).view(1, -1), torch.as_tensor(ld).view(1, -1),
                                   torch.as_tensor(z, dtype=torch.float32).view(1, 1, -1).expand(1, len(f0), -1))
    steady = slice(len(harmonic) // 3, None)
    dist = controls.harmonic_distribution[0, len(f0) // 3:].numpy()
    return describe(harmonic[steady] + noise[steady], harmonic[steady], noise[steady], dist, sample_rate)


def analyse_latents(module, examples: list, corpus: CorpusInfo, max_seconds: float = 120.0) -> list[LatentInfo]:
    """KL per latent (activity), its knob range over the corpus, and a name from what sweeping it does."""
    c = module.model_config
    means, kls, seconds = [], [], 0.0
    for ex in examples:
        m, lv = encode_means(module.encoder, ex.audio, ex.features.f0_hz)
        means.append(m)
        kls.append(0.5 * (m ** 2 + np.exp(lv) - 1.0 - lv))
        seconds += len(ex.audio) / c.sample_rate
        if seconds >= max_seconds:
            break
    mean_all = np.concatenate(means)
    kl = np.concatenate(kls).mean(0)
    lo_p, hi_p = np.percentile(mean_all, KNOB_PERCENTILES, axis=0)
    centre = mean_all.mean(0)
    f0, ld = reference_controls(corpus, c.hop_size, c.sample_rate)
    infos: list[tuple[float, LatentInfo]] = []
    used: dict[str, int] = {}
    anchors = ANCHORED_DESCRIPTORS if getattr(module.loss_config, "attribute_weight", 0.0) > 0 else ()
    order = np.argsort(-kl)
    for rank, d in enumerate(order):
        d = int(d)
        active = bool(kl[d] >= ACTIVE_KL_NATS)
        low, high = float(lo_p[d]), float(hi_p[d])
        deltas: dict = {}
        name = f"inactive{d}"
        if active and high > low:
            z_low, z_high = centre.copy(), centre.copy()
            z_low[d], z_high[d] = low, high
            a = sweep_descriptors(module.decoder, f0, ld, z_low, c.sample_rate)
            b = sweep_descriptors(module.decoder, f0, ld, z_high, c.sample_rate)
            deltas = {k: round(b[k] - a[k], 4) for k in a}
            key = max(DESCRIPTORS, key=lambda k: abs(deltas[k]) / DESCRIPTORS[k][1])
            if d < len(anchors) and abs(deltas[anchors[d]]) >= DESCRIPTORS[anchors[d]][1]:
                key = anchors[d]                     # tied to an attribute in training, and it moves it
            if deltas[key] < 0:                      # knob up = more of the named quality
                low, high = high, low
                deltas = {k: -v for k, v in deltas.items()}
            base = DESCRIPTORS[key][0]
            used[base] = used.get(base, 0) + 1
            name = base if used[base] == 1 else f"{base}{used[base]}"
        infos.append((rank, LatentInfo(index=d, name=name, active=active, kl_nats=round(float(kl[d]), 5),
                                       low=low, high=high, mean=float(centre[d]), std=float(mean_all[:, d].std()),
                                       descriptor_deltas=deltas)))
    return [info for _, info in sorted(infos, key=lambda t: t[0])]


# ---------------------------------------------------------------------------------------------- export
def export_model(module, data, training_summary: dict, model_file: Path, heldout_dir: Path,
                 heldout_seconds: float = 30.0, log=print) -> dict:
    c = module.model_config
    settings = FeatureSettings(sample_rate=c.sample_rate, hop_size=c.hop_size)
    heldout_dir.mkdir(parents=True, exist_ok=True)
    metrics, seconds = [], 0.0
    for i, ex in enumerate(data.val):
        if seconds >= heldout_seconds:
            break
        seconds += len(ex.audio) / c.sample_rate
        est = resynthesise(module, ex, seed=i)[: len(ex.audio)]
        ref = ex.audio[: len(est)]
        stem = ex.name.replace("#", "_").replace("/", "_")
        sf.write(heldout_dir / f"{stem}.original.wav", ref, c.sample_rate, subtype="FLOAT")
        sf.write(heldout_dir / f"{stem}.resynth.wav", np.clip(est, -1, 1), c.sample_rate, subtype="FLOAT")
        if len(ref) >= spectral_min_n_samples(c.sample_rate):
            metrics.append(resynthesis_metrics(ref, est, settings, ref_features=ex.features.slice(0, len(ref) // c.hop_size)))
    heldout = aggregate_metrics(metrics).as_dict() if metrics else {}
    heldout["seconds"] = round(seconds, 2)
    if metrics:
        log(f"held-out resynthesis ({seconds:.1f} s, WAVs in {heldout_dir}): "
            f"f0 error median {heldout['f0_cents_median']:.1f} cents, loudness error median "
            f"{heldout['loudness_db_median']:.2f} dB (mean {heldout['loudness_db_mean']:.2f}), "
            f"spectral distance {heldout['spectral_distance']:.3f}")
    else:
        log(f"held-out audio too short for metrics ({seconds:.2f} s); resyntheses written to {heldout_dir}")
    latents = analyse_latents(module, data.train if data.train else data.val, data.stats)
    for info in latents:
        log(f"latent z{info.index}: {info.name:<12} {'active' if info.active else 'inactive':8} "
            f"KL {info.kl_nats:.3f} nats, knob {info.low:+.2f}..{info.high:+.2f}")
    t0 = time.perf_counter()
    originals = [e for e in list(data.train) + list(data.val) if "~aug" not in e.name]   # no pedalboard copies
    expression = corpus_articulation(originals, 1000.0 * c.hop_size / c.sample_rate, log=log)
    z_mean = np.array([l.mean for l in sorted(latents, key=lambda l: l.index)], np.float32)
    expression = calibrate_levels(expression, module.decoder, data.stats.reference_f0_hz, z_mean)
    expression_s = time.perf_counter() - t0
    inputs = expression.level_input_db or expression.level_db
    log(f"expression: {expression.notes} notes segmented, attack {expression.attack_ms:.0f} ms, release "
        f"{expression.release_db_per_s:.0f} dB/s, vibrato {expression.vibrato_cents:.1f} cents at "
        f"{expression.vibrato_hz:.1f} Hz, tremolo {expression.tremolo_db:.2f} dB, note levels "
        f"{expression.level_db[0]:.1f}..{expression.level_db[-1]:.1f} dB (decoder inputs {inputs[0]:.1f}.."
        f"{inputs[-1]:.1f} dB) ({expression_s:.1f} s)")
    summary = dict(training_summary, heldout=heldout, expression_seconds=round(expression_s, 2))
    bundle = ModelBundle(config=c, decoder=module.decoder, encoder=module.encoder, latents=latents,
                         metadata={"training": summary}, corpus=data.stats, expression=expression)
    save_bundle(model_file, bundle)
    log(f"model file written: {model_file}")
    return {"heldout": heldout, "latents": [l.to_dict() for l in latents]}
