"""Figures (matplotlib, headless): latent traversal spectrograms (sdga-report), knob descriptor curves and note
expression contours (sdga-info)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from instrument.model.bundle import ModelBundle
from instrument.model.offline import render_controls


def traversal_audio(bundle: ModelBundle, latent_position: int, knobs=(0.0, 0.25, 0.5, 0.75, 1.0),
                    seconds_per_step: float = 0.6) -> np.ndarray:
    """One held note per knob value of a latent (others at their mean), concatenated with short gaps."""
    c = bundle.config
    f0_hz, loud = bundle.corpus.reference_f0_hz, bundle.corpus.reference_loudness_db
    info = bundle.latents[latent_position]
    n = int(seconds_per_step * c.sample_rate / c.hop_size)
    parts = []
    for knob in knobs:
        z = bundle.default_z().numpy().copy()
        z[info.index] = info.knob_to_z(knob)
        ld = np.full(n + 1, loud, np.float32)
        ld[:8] = np.linspace(-80, loud, 8)
        ld[-12:] = np.linspace(loud, -100, 12)
        parts.append(render_controls(bundle.decoder, np.full(n + 1, f0_hz, np.float32), ld, z))
    return np.concatenate(parts)


def plot_latent_traversals(bundle: ModelBundle, path: Path, max_latents: int = 8) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = bundle.config
    shown = bundle.latents[:max_latents]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.9 * len(shown) + 0.6), squeeze=False)
    for row, info in enumerate(shown):
        audio = traversal_audio(bundle, row)
        ax = axes[row, 0]
        ax.specgram(audio + 1e-9, NFFT=2048, Fs=c.sample_rate, noverlap=1536, cmap="magma", vmin=-140)
        ax.set_ylim(0, 12000)
        ax.set_ylabel("Hz")
        state = "active" if info.active else "inactive"
        ax.set_title(f"{info.name} (z{info.index}, {state}, KL {info.kl_nats:.3f}): knob 0 -> 1 left to right",
                     fontsize=9)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


KNOB_PLOT_MIN_PERCENT = 10.0     # the knob panels' axes span at least +-10 % and +-3 dB (or cents)
KNOB_PLOT_MIN_DB = 3.0


def plot_knob_curves(curves, path: Path, title: str = "") -> Path:
    """One panel per knob of a :class:`evaluation.knob_curves.KnobCurves`: every descriptor's change from the
    knob's centre against knob position (median over the notes, the band their lowest..highest), the one the
    knob is named after bold; the corpus's part of the knob shaded where the model says where it ends. Frequency
    descriptors (%) on the left axis, dB and cents on the right one; one legend for all panels."""
    from evaluation.knob_curves import corpus_band

    plt = _pyplot()
    med = curves.median()
    lo, hi = curves.spread()
    n = max(1, len(curves.latents))
    height = 2.3 * n + 1.2
    fig, axes = plt.subplots(n, 1, figsize=(9, height), squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"%": "-", "dB": "--", "cents": ":"}
    if not curves.latents:
        axes[0, 0].text(0.5, 0.5, "this model offers no knob (no active latent)", ha="center", va="center")
        axes[0, 0].set_axis_off()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    legend = {f"{desc.label} ({desc.unit})": Line2D([], [], color=colours[d % len(colours)], lw=1.2,
                                                      ls=styles.get(desc.unit, "-."))
              for d, desc in enumerate(curves.descriptors)}
    for k, info in enumerate(curves.latents):
        ax = axes[k, 0]
        right = ax.twinx()
        low, high = corpus_band(info)
        if (low, high) != (0.0, 1.0):
            ax.axvspan(low, high, color="0.9", zorder=0)
            legend["the corpus's part of the knob"] = Patch(color="0.9")
        for d, desc in enumerate(curves.descriptors):
            target = ax if desc.unit == "%" else right
            bold = curves.named[k] == desc.key
            colour = colours[d % len(colours)]
            target.plot(curves.knobs, med[k, :, d], styles.get(desc.unit, "-."), color=colour,
                                lw=3.0 if bold else 1.2)
            if len(curves.notes_hz) > 1:
                target.fill_between(curves.knobs, lo[k, :, d], hi[k, :, d], color=colour, alpha=0.12, lw=0)
        ax.axhline(0.0, color="0.5", lw=0.6)
        # zero in the middle of both axes, and a floor on the span: a flat line reads as "does not move"
        for axis, floor, unit_is_percent in ((ax, KNOB_PLOT_MIN_PERCENT, True), (right, KNOB_PLOT_MIN_DB, False)):
            cols = [d for d, desc in enumerate(curves.descriptors) if (desc.unit == "%") == unit_is_percent]
            values = np.abs(np.concatenate([lo[k][:, cols].ravel(), hi[k][:, cols].ravel()])) if cols else np.zeros(1)
            top = max(floor, float(np.nanmax(values)) * 1.1 if np.isfinite(values).any() else floor)
            axis.set_ylim(-top, top)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylabel("change, %")
        right.set_ylabel("dB / cents")
        named = next((d.label for d in curves.descriptors if d.key == curves.named[k]), None)
        ax.set_title(f"knob {info.name} (z{info.index})" + (f": named after {named} (bold)" if named else ""),
                     fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("knob position (change from knob 0.5; median of "
                           f"{len(curves.notes_hz)} notes, band: lowest..highest)")
    fig.legend(list(legend.values()), list(legend.keys()), loc="upper center", ncol=4, fontsize=7,
               bbox_to_anchor=(0.5, 1.0 - (0.35 if title else 0.0) / height), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.05 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1.0 - (0.75 if title else 0.45) / height))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_note_expression(played, corpus=(), path: Path = Path("expression.png"), learnt: bool = True,
                         title: str = "", caption: str = "") -> Path:
    """Loudness (top) and pitch in cents (bottom) over time since the onset: the model's notes
    (:func:`evaluation.note_contours.played_contours`, one colour per velocity, released at the dotted line)
    over the corpus's segmented notes (grey, their median black) when given."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    if corpus:
        length = max(len(c.t_ms) for c in corpus)
        grid_ms = next(c.t_ms for c in corpus if len(c.t_ms) == length)
        for ax, field in ((top, "loudness_db"), (bottom, "cents")):
            table = np.full((len(corpus), length), np.nan)
            for i, c in enumerate(corpus):
                values = getattr(c, field)
                table[i, :len(values)] = values
                ax.plot(c.t_ms, values, color="0.7", lw=0.6, alpha=0.6,
                        label=f"corpus notes ({len(corpus)})" if i == 0 else None)
            enough = np.sum(np.isfinite(table), axis=0) >= max(3, len(corpus) // 4)
            with warnings.catch_warnings():               # columns with no note left are NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.where(enough, np.nanmedian(table, axis=0), np.nan)
            ax.plot(grid_ms, median, color="k", lw=1.6, label="corpus median")
    for c in played:
        line, = top.plot(c.t_ms, c.loudness_db, lw=1.8, label=f"model, {c.label}")
        bottom.plot(c.t_ms, c.cents, lw=1.4, color=line.get_color())
    if played and played[0].held_ms is not None:
        for ax in (top, bottom):
            ax.axvline(played[0].held_ms, color="0.4", ls=":", lw=1.0, label="model note-off")
    how = "learnt expression" if learnt else "ADSR envelope (no learnt expression in this model file)"
    top.set_title(f"{title or 'notes as the engine plays them'} ({how})", fontsize=10)
    top.set_ylabel("A-weighted loudness, dB")
    top.set_ylim(bottom=max(-90.0, top.get_ylim()[0]))
    bottom.set_ylabel("pitch from the note, cents")
    bottom.set_ylim(-100.0, 100.0)
    bottom.set_xlabel("ms since the onset")
    top.legend(fontsize=7, loc="upper right")
    bottom.legend(fontsize=7, loc="upper right")
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 if caption else 0, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
