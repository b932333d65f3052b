"""Contract: the loudness-invariance term estimates what the synth renders, and penalises a z that changes it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from instrument.model import dsp
from training.features import a_weighted_loudness_db
from training.invariance import a_weighting_db, controls_loudness_db, loudness_invariance_loss, swap_latents

SR, HOP = 48000, 128


# IEC 61672-1:2013 Table 3, A-weighting (dB) at nominal frequencies: the standard's values, rounded to 0.1 dB.
IEC_A_WEIGHTING_DB = {31.5: -39.4, 63.0: -26.2, 125.0: -16.1, 250.0: -8.6, 500.0: -3.2, 1000.0: 0.0,
                      2000.0: 1.2, 4000.0: 1.0, 8000.0: -1.1, 16000.0: -6.6}


def test_a_weighting_matches_the_iec_table():
    """Known answers, not librosa against itself: the standard's table at its nominal frequencies (the table
    gives the exact formula at the exact base-10 frequencies, which differ slightly from the nominal ones)."""
    f = torch.tensor(list(IEC_A_WEIGHTING_DB), dtype=torch.float64)
    got = a_weighting_db(f).numpy()
    np.testing.assert_allclose(got, list(IEC_A_WEIGHTING_DB.values()), atol=0.13)
    assert abs(got[5]) < 1e-3                                          # 0 dB at 1 kHz


def sine_and_noise_controls(f0_hz: float, tilt: float, noise_bias: float, n_frames: int, seed: int = 0):
    """A held random sound: harmonics tilted by ``tilt``, noise bands lifted by ``noise_bias``."""
    g = torch.Generator().manual_seed(seed)
    n_harmonics, n_bands = 32, 65
    raw = torch.randn(1, 1, 1 + n_harmonics + n_bands, generator=g) * 2
    raw = (raw + torch.linspace(3, -3, 1 + n_harmonics + n_bands) * tilt).expand(1, n_frames + 1, -1)
    return dsp.raw_to_controls(raw, torch.full((1, n_frames + 1), f0_hz), n_harmonics, n_bands, SR, noise_bias)


def measured_and_estimated(controls, seed: int = 0) -> tuple[float, float]:
    """(A-weighted loudness of the rendered audio, as training.features measures it; the estimate from the
    controls), both averaged in dB over the frames of the held sound (past the first 40, and before the last 16,
    which the STFT's zero padding past the end reads quieter)."""
    n_frames = controls.n_frames - 1
    noise = torch.rand(1, n_frames * HOP, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    harmonic, filtered, _ = dsp.synthesize(controls.frames(1), noise, dsp.initial_state(controls.frame(0)), HOP, SR)
    measured = float(a_weighted_loudness_db((harmonic + filtered)[0].numpy(), SR, HOP, 2048)[40:-16].mean())
    estimated = float(controls_loudness_db(controls, SR)[0, 40:-16].mean())
    return measured, estimated


@pytest.mark.parametrize("f0_hz,tilt", [(55.0, 0.0), (110.0, 0.0), (440.0, 1.0), (880.0, 2.0), (1760.0, 0.0)])
def test_controls_loudness_of_harmonics_is_exact(f0_hz, tilt):
    """No noise: the estimate is the rendered harmonics' A-weighted loudness (measured: within 0.004 dB)."""
    controls = sine_and_noise_controls(f0_hz, tilt, noise_bias=0.0, n_frames=120)
    controls.noise_magnitudes = torch.zeros_like(controls.noise_magnitudes)
    measured, estimated = measured_and_estimated(controls)
    assert measured > -80.0
    assert abs(measured - estimated) < 0.01, (measured, estimated)


@pytest.mark.parametrize("f0_hz,tilt,noise_bias", [(110.0, 0.0, -5.0), (440.0, 1.0, -1.0), (880.0, 2.0, 3.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_controls_loudness_matches_the_rendered_audio(f0_hz, tilt, noise_bias, seed):
    """Harmonics and noise: the estimate is the noise's expected power, so a render reads it within 0.2 dB
    once it is a few seconds long (4 s here, measured at most 0.09 dB); a 0.3 s render of a noise-dominated
    sound reads up to 0.44 dB off, from the randomness of that stretch of noise alone."""
    measured, estimated = measured_and_estimated(sine_and_noise_controls(f0_hz, tilt, noise_bias, 1500, seed), seed)
    assert abs(measured - estimated) < 0.2, (measured, estimated)


def test_swapped_latents_come_from_other_examples():
    z = torch.arange(4.0).view(4, 1, 1).expand(4, 3, 5).contiguous() + torch.arange(5.0) * 10
    swapped = swap_latents(z, torch.Generator().manual_seed(0))
    assert swapped.shape == z.shape
    for d in range(5):
        column = swapped[:, 0, d] - 10 * d
        assert sorted(column.tolist()) == [0.0, 1.0, 2.0, 3.0] and (column != torch.arange(4.0)).all()


def test_invariance_loss_is_zero_when_z_does_not_matter_and_trains_the_decoder_only():
    from instrument.model.networks import Decoder, ModelConfig

    config = ModelConfig(hidden_size=16, gru_size=16, n_harmonics=8, n_noise_bands=9, latent_dim=3)
    decoder = Decoder(config)
    f0 = torch.full((4, 20), 220.0)
    loud = torch.full((4, 20), -30.0)
    z = torch.randn(4, 20, 3, requires_grad=True)
    controls, _ = decoder.controls(f0, loud, z)
    loss = loudness_invariance_loss(decoder, f0, loud, controls, z, config.sample_rate)
    assert float(loss) > 0
    loss.backward()
    assert z.grad is None                                          # z is detached: the encoder is not pushed
    assert decoder.z_mlp[0].weight.grad.abs().sum() > 0
    same = torch.zeros(4, 20, 3)                                   # identical latents in every example
    controls, _ = decoder.controls(f0, loud, same)
    assert float(loudness_invariance_loss(decoder, f0, loud, controls, same, config.sample_rate)) < 1e-6


def test_training_step_adds_the_invariance_term():
    from instrument.model.networks import ModelConfig
    from training.module import SdgaModule

    config = ModelConfig(hidden_size=32, gru_size=32, encoder_gru_size=16, n_harmonics=16, n_noise_bands=17)
    module = SdgaModule(config.to_dict(), {"attribute_weight": 0.0, "invariance_weight": 1.0})
    module.log = module.log_dict = lambda *a, **k: None
    n_frames = 72
    batch = {"audio": torch.randn(3, n_frames * HOP) * 0.1, "f0_hz": torch.full((3, n_frames + 1), 300.0),
             "loudness_db": torch.full((3, n_frames + 1), -20.0)}
    out = module.forward_batch(batch, sample=True)
    assert "invariance" in out and torch.isfinite(out["invariance"])
    off = SdgaModule(config.to_dict(), {"attribute_weight": 0.0, "invariance_weight": 0.0})
    assert "invariance" not in off.forward_batch(batch, sample=True)
