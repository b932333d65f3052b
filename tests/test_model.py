"""Contract: the networks. The encoder reads timbre, not pitch or level; old model configs still load."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from instrument.model.networks import HARMONIC_INIT_DB_PER_OCTAVE, Decoder, Encoder, ModelConfig
from instrument.model.offline import encode_means


def _tone(f0_hz: float, tilt_db_per_octave: float, config: ModelConfig, seconds: float = 0.6,
          gain: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * config.sample_rate)) / config.sample_rate
    k = np.arange(1, 40)
    amps = 10 ** (tilt_db_per_octave * np.log2(k) / 20) * (k * f0_hz < 0.45 * config.sample_rate)
    return (gain * (amps[:, None] * np.sin(2 * np.pi * f0_hz * k[:, None] * t)).sum(0) / amps.sum()).astype(np.float32)


def _peak_features(encoder: Encoder, audio: np.ndarray, f0_hz: float) -> torch.Tensor:
    c = encoder.config
    f0 = torch.full((1, len(audio) // c.hop_size + 1), f0_hz)
    feats = encoder.features(torch.from_numpy(audio)[None], f0)[0, 3:-3].mean(0)   # steady frames
    return feats[1:16:2]                     # the points at harmonics 1..8 (ratios 1, 2, ..., 8)


HARMONIC = replace(ModelConfig(), encoder_features="harmonic", encoder_n_fft=2048)


def test_harmonic_features_follow_timbre_not_pitch_or_level():
    c = HARMONIC
    enc = Encoder(c)
    base = _peak_features(enc, _tone(220.0, -6.0, c), 220.0)
    other_pitch = _peak_features(enc, _tone(330.0, -6.0, c), 330.0)
    quieter = _peak_features(enc, _tone(220.0, -6.0, c, gain=0.03), 220.0)
    brighter = _peak_features(enc, _tone(220.0, -1.0, c), 220.0)
    rms = lambda a, b: float((a - b).pow(2).mean().sqrt())   # noqa: E731
    assert rms(base, quieter) < 0.05                           # level is removed (it reaches the decoder directly)
    assert rms(base, other_pitch) < 0.1                        # a fifth up: the same input
    assert rms(base, brighter) > 5 * rms(base, other_pitch)    # timbre moves it


def test_harmonic_encoder_needs_f0_and_gives_one_row_per_control_frame():
    c = HARMONIC
    enc = Encoder(c)
    audio = _tone(300.0, -6.0, c, seconds=0.5)
    with pytest.raises(ValueError, match="f0"):
        encode_means(enc, audio)
    n_frames = len(audio) // c.hop_size + 1
    mean, logvar = encode_means(enc, audio, np.full(n_frames, 300.0, np.float32))
    assert mean.shape == logvar.shape == (n_frames, c.latent_dim)
    assert np.isfinite(mean).all()
    short_f0 = np.full(n_frames // 2, 300.0, np.float32)      # a short f0 track is extended with its last value
    assert encode_means(enc, audio, short_f0)[0].shape == mean.shape


def test_configs_without_the_encoder_features_key_load_as_mel_encoders():
    data = ModelConfig().to_dict()
    del data["encoder_features"]
    old = ModelConfig.from_dict(data)
    assert old.encoder_features == "mel"
    enc = Encoder(old, torch.rand(old.encoder_n_mels, old.encoder_n_fft // 2 + 1))
    audio = _tone(250.0, -6.0, old, seconds=0.3)
    mean, _ = encode_means(enc, audio)                         # a mel encoder reads audio alone
    assert mean.shape == (len(audio) // old.hop_size + 1, old.latent_dim)
    with pytest.raises(ValueError, match="encoder_features"):
        replace(ModelConfig(), encoder_features="mfcc")


def test_window_posterior_noise_is_shared_by_a_windows_frames():
    from training.module import SdgaModule
    module = SdgaModule(ModelConfig().to_dict(), {"posterior_noise": "window"})
    eps = module._posterior_eps(torch.zeros(3, 50, 8))
    assert torch.equal(eps, eps[:, :1].expand_as(eps)) and eps[:, 0].std() > 0
    frame = SdgaModule(ModelConfig().to_dict(), {"posterior_noise": "frame"})._posterior_eps(torch.zeros(3, 50, 8))
    assert frame[:, 1:].sub(frame[:, :1]).abs().max() > 0
    with pytest.raises(ValueError, match="posterior_noise"):
        SdgaModule(ModelConfig().to_dict(), {"posterior_noise": "sometimes"})


def test_a_fresh_decoder_starts_from_a_falling_harmonic_spectrum():
    """The untrained decoder's harmonic distribution falls about HARMONIC_INIT_DB_PER_OCTAVE per octave (a flat
    start let the flute's harmonic branch collapse), and the noise bands start quiet."""
    torch.manual_seed(0)
    config = ModelConfig()
    decoder = Decoder(config)
    f0 = torch.full((1, 50), 110.0)
    loudness = torch.full((1, 50), -30.0)
    with torch.no_grad():
        controls, _ = decoder.controls(f0, loudness, torch.zeros(1, 50, config.latent_dim))
    dist = controls.harmonic_distribution[0].mean(0)                      # (H,)
    db = 20 * torch.log10(dist)
    k = torch.arange(1, config.n_harmonics + 1, dtype=torch.float32)
    slope = float(torch.linalg.lstsq(torch.stack([torch.log2(k), torch.ones_like(k)], 1), db[:, None]).solution[0])
    assert HARMONIC_INIT_DB_PER_OCTAVE < 0
    assert abs(slope - HARMONIC_INIT_DB_PER_OCTAVE) < 3.0
    assert float(controls.noise_magnitudes.max()) < 0.01
