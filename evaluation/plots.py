"""Figures (matplotlib, headless): latent traversal spectrograms."""
from __future__ import annotations

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
