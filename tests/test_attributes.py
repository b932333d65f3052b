"""Contract: timbre attributes measured from audio follow the timbre, and the attribute loss orders latents."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from instrument.model.bundle import CorpusInfo
from training.attributes import ATTRIBUTES, attribute_loss, attribute_n_fft, frame_attributes
from evaluation.synthetic_corpus import synthesize_segment

SR, HOP, STRIDE = 48000, 128, 4


def _attributes(f0_hz: float, brightness: float, breath: float, hollowness: float, seconds: float = 0.8,
                envelope: np.ndarray | None = None):
    n = int(seconds * SR)
    env = np.full(n, 0.3) if envelope is None else envelope
    audio = synthesize_segment(np.full(n, f0_hz), env, brightness, breath, hollowness, SR, np.random.default_rng(0))
    frames = n // HOP + 1
    loud = torch.from_numpy(20 * np.log10(np.maximum(env[::HOP][:frames], 1e-6))).float()[None]
    if loud.shape[1] < frames:
        loud = torch.cat([loud, loud[:, -1:].expand(1, frames - loud.shape[1])], 1)
    attrs, mask = frame_attributes(torch.from_numpy(audio).float()[None], torch.full((1, frames), f0_hz), loud,
                                   HOP, STRIDE, SR)
    return attrs[0], mask[0]


def _median(f0_hz, *factors):
    attrs, mask = _attributes(f0_hz, *factors)
    return attrs[mask][2:-2].median(0).values           # steady frames


@pytest.mark.parametrize("index,low,high", [(0, (0.2, 0.3, 0.5), (0.8, 0.3, 0.5)),
                                            (1, (0.5, 0.1, 0.5), (0.5, 0.9, 0.5)),
                                            (2, (0.5, 0.1, 0.2), (0.5, 0.1, 0.8))])
def test_each_attribute_rises_with_its_factor_at_several_pitches(index, low, high):
    assert ATTRIBUTES == ("brightness", "breath", "hollowness")
    for f0 in (200.0, 330.0, 600.0):
        a, b = _median(f0, *low), _median(f0, *high)
        assert b[index] > a[index], (ATTRIBUTES[index], f0, a, b)


def test_quiet_frames_and_frames_without_ten_harmonics_do_not_count():
    n = int(0.8 * SR)
    env = np.full(n, 0.3)
    env[: n // 2] = 0.3 * 10 ** (-50 / 20)                   # the first half 50 dB down
    attrs, mask = _attributes(300.0, 0.5, 0.3, 0.5, envelope=env)
    half = mask.shape[0] // 2
    assert not mask[: half - 2].any() and mask[half + 2:].all()
    _, high_mask = _attributes(3000.0, 0.5, 0.3, 0.5)        # harmonic 10 at 30 kHz: above Nyquist
    assert not high_mask.any()
    assert attribute_n_fft(48000) == 2048 and attribute_n_fft(16000) == 1024


def test_attribute_loss_is_low_for_ordered_latents_and_high_for_reversed_ones():
    g = torch.Generator().manual_seed(0)
    attributes = torch.randn(2, 40, 3, generator=g)
    mask = torch.ones(2, 40, dtype=torch.bool)
    z = torch.cat([attributes, torch.randn(2, 40, 5, generator=g)], -1)  # latents 0..2 = the attributes
    ordered = attribute_loss(z, attributes, mask)
    reversed_ = attribute_loss(-z, attributes, mask)
    assert float(ordered) < 0.1 and float(reversed_) > 1.8
    z_free = torch.zeros(2, 40, 8, requires_grad=True)
    loss = attribute_loss(z_free, attributes, mask)
    loss.backward()
    assert torch.isfinite(z_free.grad).all() and z_free.grad[..., :3].abs().sum() > 0
    assert float(z_free.grad[..., 3:].abs().sum()) == 0.0      # the other latents are free
    none = attribute_loss(z_free, attributes, torch.zeros_like(mask))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_training_step_adds_the_attribute_term():
    from instrument.model.networks import ModelConfig
    from training.module import SdgaModule

    config = ModelConfig(hidden_size=32, gru_size=32, encoder_gru_size=16, n_harmonics=16, n_noise_bands=17)
    module = SdgaModule(config.to_dict(), {"attribute_weight": 1.0})
    module.log = module.log_dict = lambda *a, **k: None      # no trainer attached
    n_frames = 64
    audio = torch.from_numpy(synthesize_segment(np.full(n_frames * HOP, 300.0), np.full(n_frames * HOP, 0.3),
                                                0.5, 0.3, 0.5, SR, np.random.default_rng(1))).float()[None]
    batch = {"audio": audio.repeat(2, 1), "f0_hz": torch.full((2, n_frames + 1), 300.0),
             "loudness_db": torch.full((2, n_frames + 1), -20.0)}
    out = module.forward_batch(batch, sample=False)
    assert "attributes" in out and torch.isfinite(out["attributes"])
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and float(loss) > float(out["spectral"])


def test_anchored_latents_are_named_after_their_attributes_when_they_move_them(monkeypatch):
    from types import SimpleNamespace

    from instrument.model.networks import ModelConfig
    from training import export
    from training.module import SdgaModule

    config = ModelConfig(hidden_size=32, gru_size=32, encoder_gru_size=16, n_harmonics=16, n_noise_bands=17)
    rng = np.random.default_rng(0)

    def fake_encode_means(encoder, audio, f0_hz=None):     # latents 0..2 carry information, the rest none
        n = len(audio) // HOP + 1
        mean = rng.standard_normal((n, 8)).astype(np.float32)
        mean[:, 3:] *= 0.01
        logvar = np.zeros((n, 8), np.float32)
        logvar[:, :3] = -2.0
        return mean, logvar

    def fake_sweep(decoder, f0, ld, z, sample_rate):      # what sweeping each latent does, in descriptor units
        values = dict.fromkeys(export.DESCRIPTORS, 0.0)
        values["centroid_octaves"] = 0.25 * 2 * z[0]
        values["noise_ratio_db"] = 6.0 * 2 * z[1]
        values["odd_even_db"] = 4.0 * 0.1 * z[2]           # latent 2 hardly moves hollowness ...
        values["spread_octaves"] = 0.25 * 4 * (z[0] + z[1] + z[2])   # ... and every latent moves the spread most
        return values

    monkeypatch.setattr(export, "encode_means", fake_encode_means)
    monkeypatch.setattr(export, "sweep_descriptors", fake_sweep)
    example = SimpleNamespace(audio=np.zeros(SR, np.float32), features=SimpleNamespace(f0_hz=np.full(376, 300.0)))
    stats = CorpusInfo(f0_median_hz=300.0, loudness_median_db=-30.0)
    names = {}
    for weight in (0.3, 0.0):
        module = SdgaModule(config.to_dict(), {"attribute_weight": weight})
        infos = export.analyse_latents_raw(module, [example], stats)
        names[weight] = {i.index: i.name for i in infos if i.active}
    assert names[0.3][0] == "brightness" and names[0.3][1] == "breath"
    assert names[0.3][2].startswith("richness")              # does not move hollowness: named by its sweep
    assert all(n.startswith("richness") for n in names[0.0].values()) and sorted(names[0.0]) == [0, 1, 2]
