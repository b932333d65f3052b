"""Contract: the knob-response term reads the descriptors the knob analysis measures, and asks each anchored
latent to move its own one by its gain (training.response)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from instrument.model import dsp
from training.descriptors import describe
from training.response import RESPONSE_GAINS, controls_attributes, knob_response_loss

SR, HOP = 48000, 128


def held_controls(f0_hz: float, tilt: float, noise_bias: float, n_frames: int, seed: int = 0) -> dsp.SynthControls:
    g = torch.Generator().manual_seed(seed)
    n_harmonics, n_bands = 32, 65
    raw = torch.randn(1, 1, 1 + n_harmonics + n_bands, generator=g)
    raw = (raw + torch.linspace(3, -3, 1 + n_harmonics + n_bands) * tilt).expand(1, n_frames + 1, -1)
    return dsp.raw_to_controls(raw, torch.full((1, n_frames + 1), f0_hz), n_harmonics, n_bands, SR, noise_bias)


def rendered_descriptors(controls: dsp.SynthControls) -> dict:
    n_frames = controls.n_frames - 1
    noise = torch.rand(1, n_frames * HOP, generator=torch.Generator().manual_seed(1)) * 2 - 1
    harmonic, filtered, _ = dsp.synthesize(controls.frames(1), noise, dsp.initial_state(controls.frame(0)), HOP, SR)
    h, n = harmonic[0].numpy(), filtered[0].numpy()
    return describe(h + n, h, n, controls.harmonic_distribution[0].numpy(), SR)


@pytest.mark.parametrize("f0_hz,tilt,noise_bias", [(110.0, 0.0, -4.0), (330.0, 1.0, -2.0), (660.0, 2.0, 0.0)])
def test_controls_attributes_are_what_the_render_measures(f0_hz, tilt, noise_bias):
    """The centroid of harmonics and noise together is the render's (within 0.05 octaves; within 0.03 without
    noise); the noise ratio is the render's within 0.5 dB; odd/even is describe's own formula."""
    controls = held_controls(f0_hz, tilt, noise_bias, 400)
    attrs = controls_attributes(controls, SR)[0, 1:].mean(0).numpy()
    measured = rendered_descriptors(controls)
    assert abs(attrs[1] - measured["noise_ratio_db"]) < 0.5, (attrs, measured)
    assert abs(attrs[0] - measured["centroid_octaves"]) < 0.05, (attrs, measured)       # harmonics and noise
    assert abs(attrs[2] - measured["odd_even_db"]) < 0.05
    quiet = held_controls(f0_hz, tilt, noise_bias, 400)
    quiet.noise_magnitudes = torch.zeros_like(quiet.noise_magnitudes)
    q = controls_attributes(quiet, SR)[0, 1:].mean(0).numpy()
    assert abs(q[0] - rendered_descriptors(quiet)["centroid_octaves"]) < 0.03


def test_response_loss_is_zero_for_the_asked_response_and_not_for_another_latent():
    """A swap that moves odd/even by gain_2 * dz_2 (and nothing else) costs nothing; the same change of sound
    paired with a change of latent 0 instead costs."""
    base = held_controls(220.0, 1.0, -3.0, 50)
    odd_db = 6.0
    boosted = held_controls(220.0, 1.0, -3.0, 50)         # a copy, changed below
    own = controls_attributes(base, SR)
    # the odd harmonics scaled so that odd/even rises by odd_db, at the same harmonic power
    ratio = 10 ** (odd_db / 10)
    dist = base.harmonic_distribution.clone()
    odd, even = dist[..., 0::2].sum(-1, keepdim=True), dist[..., 1::2].sum(-1, keepdim=True)
    dist[..., 0::2] *= ratio
    boosted.harmonic_distribution = dist / (odd * ratio + even)
    boosted.amplitude = base.amplitude * torch.sqrt((base.harmonic_distribution ** 2).sum(-1)
                                                    / (boosted.harmonic_distribution ** 2).sum(-1))
    moved = controls_attributes(boosted, SR)
    np.testing.assert_allclose((moved - own)[..., 2].numpy(), odd_db, atol=1e-3)
    centroid_change = float((moved - own)[..., 0].mean())
    noise_change = float((moved - own)[..., 1].mean())
    z = torch.zeros(1, 51, 3)
    dz = torch.zeros(1, 51, 3)
    dz[..., 2] = odd_db / RESPONSE_GAINS[2]
    dz[..., 0] = centroid_change / RESPONSE_GAINS[0]
    dz[..., 1] = noise_change / RESPONSE_GAINS[1]
    loud = torch.full((1, 51), -20.0)
    assert float(knob_response_loss(base, boosted, z, z + dz, loud, SR)) < 1e-6
    wrong = dz.clone()
    wrong[..., 0], wrong[..., 2] = dz[..., 0] + odd_db / RESPONSE_GAINS[2], 0.0
    assert float(knob_response_loss(base, boosted, z, z + wrong, loud, SR)) > 0.5


def test_response_term_trains_the_decoder_only_and_is_in_the_training_step():
    from instrument.model.networks import Decoder, ModelConfig
    from training.module import SdgaModule

    config = ModelConfig(hidden_size=16, gru_size=16, n_harmonics=8, n_noise_bands=9, latent_dim=3)
    decoder = Decoder(config)
    f0, loud = torch.full((4, 20), 220.0), torch.full((4, 20), -30.0)
    z = torch.randn(4, 20, 3, requires_grad=True)
    z2 = torch.randn(4, 20, 3, requires_grad=True)
    controls, _ = decoder.controls(f0, loud, z)
    swapped, _ = decoder.controls(f0, loud, z2.detach())
    loss = knob_response_loss(controls, swapped, z, z2, loud, config.sample_rate)
    assert float(loss.detach()) > 0
    loss.backward()
    assert z.grad is None and z2.grad is None
    assert decoder.z_mlp[0].weight.grad.abs().sum() > 0

    config = ModelConfig(hidden_size=32, gru_size=32, encoder_gru_size=16, n_harmonics=16, n_noise_bands=17)
    batch = {"audio": torch.randn(3, 72 * HOP) * 0.1, "f0_hz": torch.full((3, 73), 300.0),
             "loudness_db": torch.full((3, 73), -20.0)}
    module = SdgaModule(config.to_dict(), {"attribute_weight": 0.0, "invariance_weight": 0.0})
    out = module.forward_batch(batch, sample=True)
    assert "response" in out and torch.isfinite(out["response"]) and "invariance" not in out
    off = SdgaModule(config.to_dict(), {"attribute_weight": 0.0, "response_weight": 0.0})
    assert "response" not in off.forward_batch(batch, sample=True)
