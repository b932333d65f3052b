"""Export: held-out resynthesis and metrics, latent analysis (activity, ranges, measured names), the model file."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from instrument.engine.expression import attack_ms_to_within
from instrument.model.bundle import CorpusInfo, LatentInfo, ModelBundle, save_bundle
from instrument.model.offline import encode_means, render_controls, render_parts

from training.expression import calibrate_levels, corpus_articulation
from training.descriptors import (ACTIVE_KL_NATS, ANCHORED_DESCRIPTORS, DESCRIPTORS, KNOB_PERCENTILES,  # noqa: F401
                                  describe)
from training.features import FeatureSettings
from training.metrics import aggregate_metrics, resynthesis_metrics, spectral_min_n_samples


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


def analyse_latents_raw(module, examples: list, corpus: CorpusInfo, max_seconds: float = 120.0) -> list[LatentInfo]:
    """The raw-latent knobs (before issue 14; ``sdga-train --knobs raw``, and the baseline of
    benchmarks/bench_knobs.py): one knob per latent dimension, KL per latent (activity), its knob range over the
    corpus, and a name from what sweeping it does (``brightness``, ``brightness2``, ... where several do)."""
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
KNOB_ANALYSES = ("intervention", "raw")


def export_model(module, data, training_summary: dict, model_file: Path, heldout_dir: Path,
                 heldout_seconds: float = 30.0, log=print, knobs: str = "intervention") -> dict:
    """Held-out resynthesis and metrics, the knob analysis, the note articulation, the model file.

    ``knobs``: "intervention" (training.knobs: named knob directions, folded into the networks written to the
    file) or "raw" (`analyse_latents_raw`: one knob per latent dimension, networks as trained)."""
    if knobs not in KNOB_ANALYSES:
        raise ValueError(f"knobs must be one of {KNOB_ANALYSES}, got {knobs!r}")
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
    examples = data.train if data.train else data.val
    t0 = time.perf_counter()
    originals = [e for e in list(data.train) + list(data.val) if e.recorded]   # no pedalboard copies
    articulation = corpus_articulation(originals, 1000.0 * c.hop_size / c.sample_rate, log=log)
    expression_s = time.perf_counter() - t0
    decoder, encoder, knob_record = module.decoder, module.encoder, None
    t0 = time.perf_counter()
    if knobs == "raw":
        latents = analyse_latents_raw(module, examples, data.stats)
    else:
        from training.knobs import analyse_knobs, corpus_latents, fold_networks, note_grid
        corpus = corpus_latents(module.encoder, examples)
        # The knobs are checked at the decoder inputs the engine will play (the calibrated note levels at
        # velocities ~64 and ~110), not only at the corpus's loudness: a short training renders quieter.
        levels = calibrate_levels(articulation, module.decoder, data.stats.reference_f0_hz, corpus.centre)
        inputs = levels.level_input_db or levels.level_db
        grid = note_grid(data.stats, levels_db=tuple(float(np.interp(q, levels.level_quantiles, inputs))
                                                     for q in (0.5, 0.87)))
        analysis = analyse_knobs(module.decoder, module.encoder, examples, data.stats, log=log, corpus=corpus,
                                 grid=grid)
        decoder, encoder = fold_networks(module.decoder, module.encoder, analysis.basis)
        latents, knob_record = analysis.latents, analysis.summary()
        knob_record["grid"] = {"pitches_hz": list(grid.pitches_hz), "loudness_db": list(grid.loudness_db)}
    knob_s = time.perf_counter() - t0
    for info in latents:
        band = "" if info.corpus_low is None else f", corpus {info.corpus_low:.2f}..{info.corpus_high:.2f} of the knob"
        log(f"latent z{info.index}: {info.name:<12} {'active' if info.active else 'inactive':8} "
            f"KL {info.kl_nats:.3f} nats, knob {info.low:+.2f}..{info.high:+.2f}{band}")
    log(f"knob analysis ({knobs}): {knob_s:.1f} s")
    t0 = time.perf_counter()
    z_mean = np.array([l.mean for l in sorted(latents, key=lambda l: l.index)], np.float32)
    expression = calibrate_levels(articulation, decoder, data.stats.reference_f0_hz, z_mean,   # folded: z = u
                                  f0_range_hz=data.stats.f0_range_hz)
    expression_s += time.perf_counter() - t0
    inputs = expression.level_input_db or expression.level_db
    log(f"expression: {expression.notes} notes segmented, attack to within 3 dB in "
        f"{attack_ms_to_within(expression):.0f} ms (fast part {expression.attack_fast_fraction:.0%}), release "
        f"{expression.release_db_per_s:.0f} dB/s, vibrato {expression.vibrato_cents:.1f} cents at "
        f"{expression.vibrato_hz:.1f} Hz, tremolo {expression.tremolo_db:.2f} dB, note levels "
        f"{expression.level_db[0]:.1f}..{expression.level_db[-1]:.1f} dB (decoder inputs {inputs[0]:.1f}.."
        f"{inputs[-1]:.1f} dB) ({expression_s:.1f} s)")
    summary = dict(training_summary, heldout=heldout, expression_seconds=round(expression_s, 2),
                   knob_analysis=knobs, knob_seconds=round(knob_s, 2))
    metadata = {"training": summary}
    if knob_record is not None:
        metadata["knob_basis"] = knob_record     # z (as trained) = centre + matrix @ u (the file's latents)
    bundle = ModelBundle(config=c, decoder=decoder, encoder=encoder, latents=latents,
                         metadata=metadata, corpus=data.stats, expression=expression)
    save_bundle(model_file, bundle)
    log(f"model file written: {model_file}")
    return {"heldout": heldout, "latents": [l.to_dict() for l in latents]}
