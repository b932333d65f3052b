"""What a knob is measured by: the timbre descriptors of a rendered held note, their units, and when a latent
counts as active. Shared by the export's analyses (training.export, training.knobs) and evaluation."""
from __future__ import annotations

import numpy as np

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
