"""What each knob of a model moves, against issue 14's targets, and what sdga-info's measuring and audition cost.

    python benchmarks/bench_knob_curves.py MODEL [--steps 11] [--notes 3] [--seconds 1.0] [--repeats 3]
        [--threads 1] [--json out.json]

Prints, per offered knob: the full sweep (largest |median change from knob 0.5| over the steps, median over a
note grid across the corpus's pitch range) of every descriptor (evaluation.knob_curves), the descriptor it is
named after, how that change compares with the largest change any other knob makes to the same descriptor,
and the invariance figures (pitch cents, loudness dB); the targets are printed beside them. Then the cost:
seconds per measured note for the curves and the audition's render speed (median and spread over --repeats).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Issue 14's targets for a full sweep (the baseline printed beside each figure).
TARGET_PERCENT = 30.0          # a frequency descriptor (centroid, spread)
TARGET_DB = 4.0                # a ratio (noise/harmonic, odd/even)
TARGET_DOMINANCE = 3.0         # x what any other knob's sweep moves the same descriptor
TARGET_PITCH_CENTS = 5.0
TARGET_LOUDNESS_DB = 1.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--steps", type=int, default=11)
    p.add_argument("--notes", type=int, default=3, help="pitches across the corpus's range")
    p.add_argument("--seconds", type=float, default=1.0, help="held note length")
    p.add_argument("--repeats", type=int, default=3, help="audition renders timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from evaluation.audition import PHRASE_SECONDS, render_phrase
    from evaluation.info import format_knob_table
    from evaluation.knob_curves import knob_curves, offered_knobs
    from evaluation.playing import _test_pitches
    from instrument.model.bundle import load_bundle

    bundle = load_bundle(args.model)
    knobs = offered_knobs(bundle)
    notes = _test_pitches(bundle, args.notes)
    render_phrase(bundle, knobs[0] if knobs else None, 1.0)           # compile the kernels before timing
    started = time.perf_counter()
    curves = knob_curves(bundle, steps=args.steps, notes=notes, seconds=args.seconds)
    curve_s = time.perf_counter() - started
    measured = len(knobs) * len(notes) * (args.steps + (0 if args.steps % 2 else 1))
    print(f"model {args.model}: {len(knobs)} offered knobs of {len(bundle.latents)} latents; notes "
          f"{', '.join(f'{f:.0f}' for f in notes)} Hz at {curves.loudness_db:.1f} dB; {args.steps} knob steps")
    print(format_knob_table(curves))

    sweep = curves.full_sweep()
    pitch, loud = curves.column("f0_cents"), curves.column("loudness_db")
    print(f"\nper knob against issue 14 (targets: named descriptor >= {TARGET_PERCENT:.0f} % or >= {TARGET_DB:.0f} dB, "
          f">= {TARGET_DOMINANCE:.0f}x any other knob; pitch < {TARGET_PITCH_CENTS:.0f} cents, loudness < "
          f"{TARGET_LOUDNESS_DB} dB over every note and step)")
    rows = []
    for k, info in enumerate(curves.latents):
        named = curves.named[k]
        row = {"knob": info.name, "index": info.index, "named": named,
               "pitch_cents_max": float(np.nanmax(np.abs(curves.changes[k, :, :, pitch]))),
               "loudness_db_max": float(np.nanmax(np.abs(curves.changes[k, :, :, loud]))),
               "full_sweep": {d.key: round(float(sweep[k, j]), 3) for j, d in enumerate(curves.descriptors)}}
        if named is not None:
            j = curves.column(named)
            others = [sweep[o, j] for o in range(len(curves.latents)) if o != k]
            row["named_change"] = float(sweep[k, j])
            row["named_unit"] = curves.descriptors[j].unit
            row["dominance"] = float(sweep[k, j] / max(max(others, default=0.0), 1e-9))
            target = TARGET_PERCENT if row["named_unit"] == "%" else TARGET_DB
            row["named_pass"] = bool(row["named_change"] >= target and row["dominance"] >= TARGET_DOMINANCE)
        row["invariance_pass"] = bool(row["pitch_cents_max"] < TARGET_PITCH_CENTS
                                      and row["loudness_db_max"] < TARGET_LOUDNESS_DB)
        rows.append(row)
        named_text = ("no descriptor in its name" if named is None else
                      f"{named}: {row['named_change']:.1f} {row['named_unit']} (target {target:g}), "
                      f"{row['dominance']:.1f}x the next knob (target {TARGET_DOMINANCE:g}x) "
                      f"{'PASS' if row['named_pass'] else 'fail'}")
        print(f"  {info.name:<14} {named_text}; pitch {row['pitch_cents_max']:.2f} cents, loudness "
              f"{row['loudness_db_max']:.2f} dB {'PASS' if row['invariance_pass'] else 'fail'}")

    phrase_s = []
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        render_phrase(bundle, knobs[0] if knobs else None, PHRASE_SECONDS)
        phrase_s.append(time.perf_counter() - t)
    med = float(np.median(phrase_s))
    print(f"\ncost: knob curves {curve_s:.1f} s for {measured} measured notes ({curve_s / max(1, measured):.2f} s "
          f"each: render + pYIN + descriptors); audition phrase of {PHRASE_SECONDS:g} s rendered in median "
          f"{med:.2f} s (min {min(phrase_s):.2f}, max {max(phrase_s):.2f}, {len(phrase_s)} runs): "
          f"{PHRASE_SECONDS / med:.1f}x real time; a whole audition ~{med * (len(knobs) + 1):.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(args.model), "steps": args.steps, "notes_hz": notes,
                                         "curves": curves.to_dict(), "knobs": rows, "curve_seconds": curve_s,
                                         "measured_notes": measured, "phrase_seconds": phrase_s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
