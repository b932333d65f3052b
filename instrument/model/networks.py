"""The networks: a decoder (f0, loudness, z) -> synth controls, and an encoder audio -> posterior over z.

Plain nn.Modules with typed constructors; recurrent state is passed in and returned, never kept inside.
Only the decoder runs live; the encoder is used by training, latent analysis and timbre transfer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from instrument.model import dsp


@dataclass(frozen=True)
class ModelConfig:
    """Architecture arguments; stored in the model file and enough to rebuild the networks."""

    sample_rate: int = 48000
    hop_size: int = 128
    n_harmonics: int = 64
    n_noise_bands: int = 65
    latent_dim: int = 8
    hidden_size: int = 192
    gru_size: int = 192
    # Encoder input: "mel" (a log-mel spectrogram) or "harmonic" (the spectrum sampled at fixed multiples of
    # f0: pitch-normalised, so the same timbre gives the same input at every pitch; experimental, see README).
    encoder_features: str = "mel"
    encoder_n_points: int = 64        # harmonic: points at 0.5, 1.0, ..., n_points / 2 times f0
    encoder_n_fft: int = 1024
    encoder_n_mels: int = 64
    encoder_gru_size: int = 96
    encoder_stride: int = 4   # the encoder sees frames every encoder_stride * hop_size samples; z is interpolated
    noise_bias: float = -5.0
    # Input scaling: (midi - f0_center_midi) / f0_scale_midi and (dB - loudness_center_db) / loudness_scale_db.
    f0_center_midi: float = 60.0
    f0_scale_midi: float = 24.0
    loudness_center_db: float = -40.0
    loudness_scale_db: float = 20.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        data = dict(data)
        data.setdefault("encoder_features", "mel")       # files written before the key existed
        return cls(**data)

    def __post_init__(self) -> None:
        if self.encoder_features not in ("harmonic", "mel"):
            raise ValueError(f"encoder_features must be 'harmonic' or 'mel', got {self.encoder_features!r}")

    @property
    def n_outputs(self) -> int:
        return 1 + self.n_harmonics + self.n_noise_bands

    def f0_input(self, midi, out: np.ndarray | None = None):
        """The decoder's pitch input from MIDI note numbers (tensor or array; with a NumPy ``out``, in place)."""
        return _scale_input(midi, self.f0_center_midi, self.f0_scale_midi, out)

    def loudness_input(self, loudness_db, out: np.ndarray | None = None):
        """The decoder's loudness input from dB (tensor or array; with a NumPy ``out``, in place)."""
        return _scale_input(loudness_db, self.loudness_center_db, self.loudness_scale_db, out)

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop_size


def _scale_input(x, center: float, scale: float, out: np.ndarray | None):
    if out is None:
        return (x - center) / scale
    np.subtract(x, center, out=out)
    out /= scale
    return out


# The decoder's initial harmonic distribution falls by this much per octave (its output bias; training moves
# it). With a flat start (DDSP's), the first optimiser steps on a corpus whose upper harmonics are weak (the
# FluidR3 flute) cut the overall amplitude instead, by 70 dB in 10 steps, and exp_sigmoid's vanishing gradient
# then keeps the harmonic branch silent for good: the model plays only noise.
HARMONIC_INIT_DB_PER_OCTAVE = -12.0


def harmonic_tilt_bias(n_harmonics: int, db_per_octave: float) -> torch.Tensor:
    """Raw decoder outputs whose exp_sigmoid falls by ``db_per_octave`` per octave of harmonic number from
    exp_sigmoid(0) at the fundamental (the harmonic distribution is normalised afterwards, so only the slope
    counts)."""
    k = torch.arange(1, n_harmonics + 1, dtype=torch.float32)
    target = dsp.exp_sigmoid(torch.zeros(())) * 10.0 ** (db_per_octave * torch.log2(k) / 20.0)   # amplitude
    p = (target / 2.0).clamp(1e-6, 1 - 1e-6) ** (1.0 / math.log(10.0))                            # sigmoid value
    return torch.log(p / (1.0 - p))


def _mlp(n_in: int, n_hidden: int, n_layers: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else n_hidden, n_hidden), nn.LayerNorm(n_hidden), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """(f0_hz, loudness_db, z) per frame -> raw outputs (B, F, 1 + H + N), via MLPs and a GRU (ddsp's RnnFcDecoder)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.f0_mlp = _mlp(1, h)
        self.loudness_mlp = _mlp(1, h)
        self.z_mlp = _mlp(config.latent_dim, h)
        self.gru = nn.GRU(3 * h, config.gru_size, batch_first=True)
        self.out_mlp = _mlp(config.gru_size + 2 * h, h)
        self.out = nn.Linear(h, config.n_outputs)
        with torch.no_grad():       # start from a natural spectral tilt, not a flat one (HARMONIC_INIT_DB_PER_OCTAVE)
            self.out.bias[1:1 + config.n_harmonics] = harmonic_tilt_bias(config.n_harmonics, HARMONIC_INIT_DB_PER_OCTAVE)

    def scale_inputs(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        return c.f0_input(dsp.hz_to_midi(f0_hz)).unsqueeze(-1), c.loudness_input(loudness_db).unsqueeze(-1)

    def initial_gru_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(1, batch, self.config.gru_size)

    def forward(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, z: torch.Tensor,
                gru_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """f0_hz, loudness_db (B, F); z (B, F, D); gru_state (1, B, G) or None -> (raw (B, F, outputs), gru_state)."""
        f0, loudness = self.scale_inputs(f0_hz, loudness_db)
        f0_h, loudness_h = self.f0_mlp(f0), self.loudness_mlp(loudness)
        x = torch.cat([f0_h, loudness_h, self.z_mlp(z)], dim=-1)
        x, gru_state = self.gru(x, gru_state)
        x = self.out_mlp(torch.cat([x, f0_h, loudness_h], dim=-1))
        return self.out(x), gru_state

    def controls(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, z: torch.Tensor,
                 gru_state: torch.Tensor | None = None) -> tuple[dsp.SynthControls, torch.Tensor]:
        raw, gru_state = self(f0_hz, loudness_db, z, gru_state)
        c = self.config
        return dsp.raw_to_controls(raw, f0_hz, c.n_harmonics, c.n_noise_bands, c.sample_rate, c.noise_bias), gru_state


class Encoder(nn.Module):
    """Audio (B, S) and f0_hz (B, S // hop + 1) -> per-frame posterior mean and log-variance of z
    (B, S // hop + 1, D).

    The encoder runs at 1 / encoder_stride of the control frame rate (timbre moves slower than pitch and
    loudness, and training is 4x cheaper for it); its outputs are linearly interpolated to the control frames.

    Input, per encoder frame, with a mean removed so that overall level (which reaches the decoder
    directly as loudness) is not what z encodes:
    - "harmonic": the log magnitude spectrum sampled at 0.5, 1, 1.5, ... times the frame's f0 (the harmonic
      peaks and the noise floor between them), by linear interpolation between STFT bins, minus the mean of
      the harmonics' points; points above Nyquist are set to the frame's lowest value. The same timbre at another pitch is the same
      input, so the latents need not (and, under the KL, do not) carry pitch.
    - "mel": a log-mel spectrogram; ``mel_basis`` (n_mels, n_fft // 2 + 1) is made by training (librosa) and
      stored as a buffer, so the instrument never needs librosa to load it.
    """

    def __init__(self, config: ModelConfig, mel_basis: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        n_bins = config.encoder_n_fft // 2 + 1
        if config.encoder_features == "mel":
            if mel_basis is None:
                mel_basis = torch.zeros(config.encoder_n_mels, n_bins)
            if tuple(mel_basis.shape) != (config.encoder_n_mels, n_bins):
                raise ValueError(f"mel_basis shape {tuple(mel_basis.shape)} != {(config.encoder_n_mels, n_bins)}")
            self.register_buffer("mel_basis", mel_basis.float())
            n_in = config.encoder_n_mels
        else:
            self.register_buffer("ratios", 0.5 * torch.arange(1, config.encoder_n_points + 1, dtype=torch.float32),
                                 persistent=False)
            n_in = config.encoder_n_points
        self.register_buffer("window", torch.hann_window(config.encoder_n_fft))
        self.proj = _mlp(n_in, config.hidden_size, n_layers=1)
        self.gru = nn.GRU(config.hidden_size, config.encoder_gru_size, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * config.encoder_gru_size, 2 * config.latent_dim)

    def features(self, audio: torch.Tensor, f0_hz: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        spec = torch.stft(audio, n_fft=c.encoder_n_fft, hop_length=c.hop_size * c.encoder_stride, window=self.window,
                          center=True, return_complex=True).abs()                     # (B, bins, F)
        if c.encoder_features == "mel":
            mel = torch.log(torch.matmul(self.mel_basis, spec) + 1e-5).transpose(1, 2)  # (B, F, mels)
            return mel - mel.mean(-1, keepdim=True)
        if f0_hz is None:
            raise ValueError("this encoder reads the spectrum at multiples of f0: pass f0_hz")
        n_enc = spec.shape[2]
        f0 = f0_hz[:, ::c.encoder_stride]                                           # control -> encoder frames
        if f0.shape[1] < n_enc:
            f0 = torch.cat([f0, f0[:, -1:].expand(-1, n_enc - f0.shape[1])], dim=1)
        mag, valid = sample_at_multiples(spec, f0[:, :n_enc], self.ratios, c.encoder_n_fft, c.sample_rate)
        log_mag = torch.log(mag + 1e-5)
        peaks = valid & (self.ratios == self.ratios.round())                         # the harmonics' points
        count = peaks.sum(-1, keepdim=True).clamp_min(1)
        mean = (log_mag * peaks).sum(-1, keepdim=True) / count
        floor = torch.where(valid, log_mag, torch.full_like(log_mag, math.inf)).amin(-1, keepdim=True)
        floor = torch.where(torch.isfinite(floor), floor, mean)
        return torch.where(valid, log_mag, floor) - mean

    def forward(self, audio: torch.Tensor, f0_hz: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S); f0_hz (B, S // hop + 1) at the control frames (needed by the "harmonic" encoder)."""
        n_frames = audio.shape[-1] // self.config.hop_size + 1
        x, _ = self.gru(self.proj(self.features(audio, f0_hz)))
        x = self.out(x)                                                   # (B, F_coarse, 2D)
        x = nn.functional.interpolate(x.transpose(1, 2), size=n_frames, mode="linear", align_corners=True)
        mean, logvar = x.transpose(1, 2).chunk(2, dim=-1)
        return mean, logvar.clamp(-12.0, 6.0)


def sample_at_multiples(spec: torch.Tensor, f0_hz: torch.Tensor, ratios: torch.Tensor, n_fft: int,
                        sample_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A magnitude spectrogram (B, bins, F) read at ratios (P,) times f0_hz (B, F), by linear interpolation
    between bins: (values (B, F, P), valid (B, F, P): below the last bin, i.e. below Nyquist)."""
    n_bins = spec.shape[1]
    position = f0_hz.clamp_min(20.0).unsqueeze(-1) * ratios * (n_fft / sample_rate)     # (B, F, P) in bins
    valid = position < n_bins - 1
    position = position.clamp(max=n_bins - 1.001)
    low = position.floor().long()
    frac = position - low
    spec = spec.transpose(1, 2)                                                      # (B, F, bins)
    return spec.gather(-1, low) * (1.0 - frac) + spec.gather(-1, low + 1) * frac, valid


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) per element (nats), same shape as mean."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
