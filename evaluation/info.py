"""sdga-info: a model file's card (corpus, training, held-out figures, the latent table) and its traversal plot."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def format_card(path: Path, bundle) -> str:
    c = bundle.config
    corpus = bundle.corpus
    training = bundle.metadata.get("training", {})
    heldout = training.get("heldout", {}) or {}
    lines = [f"sdga model: {path}",
             f"  sample rate {c.sample_rate} Hz, control frame {c.hop_size} samples "
             f"({1000 * c.hop_size / c.sample_rate:.2f} ms), {c.n_harmonics} harmonics, {c.n_noise_bands} noise bands, "
             f"{c.latent_dim} latents"]
    f0r, ldr = corpus.f0_range_hz, corpus.loudness_range_db
    lines.append(f"  corpus: {corpus.files} files, {corpus.minutes:.1f} min"
                 + (f", pitch {f0r[0]:.0f}-{f0r[1]:.0f} Hz" if f0r else "")
                 + f", loudness {ldr[0]:.0f}..{ldr[1]:.0f} dB")
    if training:
        lines.append(f"  training: {training.get('steps', '?')} steps in {training.get('fit_seconds', '?')} s, "
                     f"beta {training.get('beta', '?')}, augmentation {'on' if training.get('augment') else 'off'}, "
                     f"seed {training.get('seed', '?')}")
    if heldout.get("f0_cents_median") is not None:
        lines.append(f"  held-out: f0 error {heldout['f0_cents_median']:.1f} cents, loudness error "
                     f"{heldout['loudness_db_median']:.2f} dB, spectral distance {heldout['spectral_distance']:.3f}")
    lines.append("  latents (most important first; knob 0..1 maps onto the corpus's range):")
    for i, l in enumerate(bundle.latents):
        line = (f"    {i}: {l.name:<12} z{l.index:<2} {'active  ' if l.active else 'inactive'} "
                f"KL {l.kl_nats:6.3f} nats  z {l.low:+.2f} .. {l.high:+.2f}")
        if l.active and getattr(l, "corpus_low", None) is not None:
            line += f"  corpus {l.corpus_low:.2f}..{l.corpus_high:.2f} of the knob (beyond: past the recordings)"
        if l.active and getattr(l, "descriptor", None) and l.descriptor in l.descriptor_deltas:
            line += f"  moves {l.descriptor} {l.descriptor_deltas[l.descriptor]:+.2f}"
        lines.append(line)
    if "knob_basis" in bundle.metadata:
        lines.append("  knobs found by intervention (training.knobs): each moves its named descriptor, not the "
                     "others, pitch or loudness")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdga-info", description="Print a model file's card.")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write latent traversal spectrograms to this PNG")
    args = p.parse_args(argv)
    from instrument.model.bundle import load_bundle
    from instrument.model.modelfile import ModelFileError
    try:
        bundle = load_bundle(args.model)
    except ModelFileError as exc:
        print(f"sdga-info: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        meta = dict(bundle.metadata, model_config=bundle.config.to_dict(), latents=[l.to_dict() for l in bundle.latents],
                    corpus=bundle.corpus.to_dict())
        print(json.dumps(meta, indent=2))
    else:
        print(format_card(args.model, bundle))
    if args.plot:
        from evaluation.plots import plot_latent_traversals
        plot_latent_traversals(bundle, args.plot)
        print(f"latent traversals written to {args.plot}")
    return 0
