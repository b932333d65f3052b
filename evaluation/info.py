"""sdga-info: a model file's card (corpus, training, held-out figures, the latent table, the note expression),
what its knobs do (``--plot``: measured descriptor curves; ``--audition``: a swept phrase per knob) and how it
plays a note (``--expression-plot``, over notes of ``--corpus``)."""
from __future__ import annotations

import argparse
import json
import os
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
    from evaluation.note_contours import expression_summary
    lines += expression_summary(bundle)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdga-info", description="Print a model file's card; show and play what its "
                                "knobs and its note expression do.")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write each knob's measured descriptor curves "
                   "(change from the knob's centre against knob position) to this PNG")
    p.add_argument("--steps", type=int, default=11, help="knob positions 0..1 the --plot measures [11]")
    p.add_argument("--audition", type=Path, metavar="DIR", help="write a phrase per knob, swept 0 -> 1 -> 0, a "
                   "reference phrase and index.txt into DIR")
    p.add_argument("--expression-plot", type=Path, metavar="PNG", help="write notes played at velocities "
                   "32/64/96/127 (loudness and pitch over time) to this PNG")
    p.add_argument("--corpus", type=Path, metavar="DIR", help="with --expression-plot: overlay notes segmented "
                   "from this corpus (the recordings the model was trained on)")
    p.add_argument("--cache-dir", type=Path, help="feature cache for --corpus [~/.cache/sdga, as sdga-train]")
    return p


def _fail(message: str) -> int:
    print(f"sdga-info: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check_output_file(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be written (before any work is done), else None."""
    if path.is_dir():
        return f"{flag} {path}: is a folder, not a file name"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"{flag} {path}: no folder {parent}"
    if not os.access(parent, os.W_OK):
        return f"{flag} {path}: folder {parent} is not writable"
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase
    kinds = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in kinds:
        return f"{flag} {path}: not an image file name (use one of .{', .'.join(sorted(kinds))})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from instrument.model.bundle import load_bundle
    from instrument.model.modelfile import ModelFileError
    try:
        bundle = load_bundle(args.model)
    except (ModelFileError, OSError) as exc:
        return _fail(str(exc))
    for path, flag in ((args.plot, "--plot"), (args.expression_plot, "--expression-plot")):
        if path is not None and (why := _check_output_file(path, flag)) is not None:
            return _fail(why)
    if args.steps < 2:
        return _fail(f"--steps must be >= 2, got {args.steps}")
    if args.corpus is not None and args.expression_plot is None:
        return _fail("--corpus is for --expression-plot (the notes it overlays)")
    if args.corpus is not None and not args.corpus.exists():
        return _fail(f"--corpus {args.corpus}: no such file or folder")
    import torch
    torch.set_num_threads(1)          # a small decoder: one thread renders as fast, and shares the machine
    if args.json:
        meta = dict(bundle.metadata, model_config=bundle.config.to_dict(), latents=[l.to_dict() for l in bundle.latents],
                    corpus=bundle.corpus.to_dict(),
                    expression=None if bundle.expression is None else bundle.expression.to_dict())
        print(json.dumps(meta, indent=2))
    else:
        print(format_card(args.model, bundle))
    if args.audition is not None:
        from evaluation.audition import write_audition
        print(f"audition: rendering into {args.audition}")
        try:
            audition = write_audition(bundle, args.audition, model_name=str(args.model))
        except OSError as exc:
            return _fail(str(exc))
        print(f"audition written: {len(audition.files)} phrases and {audition.index}")
    if args.plot is not None:
        from evaluation.knob_curves import knob_curves, offered_knobs
        from evaluation.plots import plot_knob_curves
        print(f"measuring {len(offered_knobs(bundle))} knobs at {args.steps} positions on 3 notes ...")
        curves = knob_curves(bundle, steps=args.steps)
        print(format_knob_table(curves))
        plot_knob_curves(curves, args.plot, title=f"{args.model.name}: what each knob moves")
        print(f"knob curves written to {args.plot}")
    if args.expression_plot is not None:
        from evaluation.note_contours import corpus_contours, played_contours
        from instrument.engine.expression import attack_ms_to_within
        from evaluation.plots import plot_note_expression
        corpus = []
        if args.corpus is not None:
            from training.corpus import CorpusError
            try:
                corpus = corpus_contours(args.corpus, bundle.config.sample_rate, bundle.config.hop_size,
                                         args.cache_dir)
            except CorpusError as exc:
                return _fail(f"--corpus: {exc}")
        played = played_contours(bundle)
        art = bundle.expression
        caption = ("no learnt expression in this file: the ADSR envelope" if art is None else
                   f"learnt from {art.notes} notes: attack to within 3 dB in {attack_ms_to_within(art):.0f} ms, "
                   f"release {art.release_db_per_s:.0f} dB/s, "
                   f"vibrato {art.vibrato_cents:.1f} cents at {art.vibrato_hz:.2f} Hz (from ~{art.vibrato_delay_ms:.0f} ms), "
                   f"tremolo {art.tremolo_db:.2f} dB at {art.tremolo_hz:.2f} Hz")
        plot_note_expression(played, corpus, args.expression_plot, learnt=art is not None,
                             title=f"{args.model.name}: notes as the engine plays them", caption=caption)
        print(f"note expression written to {args.expression_plot}")
    return 0


def format_knob_table(curves) -> str:
    """The full sweep of every knob (largest |median change| from its centre), one row per knob."""
    sweep = curves.full_sweep()
    head = "  knob          " + "".join(f"{d.label[:14]:>16}" for d in curves.descriptors)
    units = "  (full sweep)  " + "".join(f"{'(' + d.unit + ')':>16}" for d in curves.descriptors)
    rows = [head, units]
    for k, info in enumerate(curves.latents):
        cells = "".join(f"{sweep[k, d]:>15.1f}{'*' if curves.named[k] == desc.key else ' '}"
                        for d, desc in enumerate(curves.descriptors))
        rows.append(f"  {info.name:<14}{cells}")
    rows.append("  (* the descriptor the knob is named after)")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
