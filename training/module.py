"""The LightningModule: encoder -> z -> decoder -> DDSP synth, trained with a multi-resolution spectral loss
plus an annealed beta-weighted KL."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pytorch_lightning as pl
import torch

from instrument.model import dsp
from instrument.model.networks import Decoder, Encoder, ModelConfig, kl_divergence

from training.attributes import attribute_loss, frame_attributes
from training.invariance import loudness_change_loss, swap_latents
from training.response import RESPONSE_GAINS, knob_response_loss
from training.metrics import spectral_loss_module


@dataclass(frozen=True)
class LossConfig:
    beta: float = 4.0                 # weight of the KL term once annealed in
    beta_warmup_steps: int = 500      # beta rises linearly from 0 over these steps (after beta_delay_steps)
    beta_delay_steps: int = 0         # steps with beta = 0 before the ramp starts
    kl_scale: float = 0.01            # KL (nats per frame, summed over latents) to the spectral loss's scale
    learning_rate: float = 2e-3
    lr_decay_steps: int = 4000        # exponential decay by 10x over this many steps
    grad_clip: float = 2.0
    # Posterior sampling noise: "frame" draws eps per frame; "window" draws one eps per latent per training
    # window, shared by all its frames (z_t = mean_t + std_t * eps), so that the decoder's GRU cannot average
    # it away (experimental: no measured gain in disentanglement yet, see README).
    posterior_noise: str = "frame"
    # Attribute regularisation (training.attributes, AR-VAE): latents 0, 1, 2 ordered like the brightness,
    # breath and hollowness measured from the audio; 0 = off. Chosen from the runs in
    # benchmarks/results/latents_experiments_16k.txt (weight 1 / delta 10 disentangled less).
    attribute_weight: float = 0.3
    attribute_delta: float = 1.0
    # Loudness invariance (training.invariance): smooth-L1 in dB between the loudness of the batch's controls
    # and of the batch decoded with latents swapped between examples; 0 = off. Without it the FluidR3
    # flute's brightness and noisiness knobs move loudness by 2.1 dB (limit 1.5); with it at most 0.9 dB (README).
    invariance_weight: float = 0.1
    # Knob response (training.response): on the same swapped decode, latents 0, 1, 2 must move the rendered
    # brightness, breath and odd/even balance by a fixed gain each, and only their own; 0 = off.
    response_weight: float = 1.0
    response_gain: float = 1.0        # multiplies training.response.RESPONSE_GAINS


class SdgaModule(pl.LightningModule):
    def __init__(self, model_config: dict, loss_config: dict, mel_basis: torch.Tensor | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["mel_basis"])
        self.model_config = ModelConfig.from_dict(model_config)
        self.loss_config = LossConfig(**loss_config)
        if self.loss_config.posterior_noise not in ("window", "frame"):
            raise ValueError(f"posterior_noise must be 'window' or 'frame', got {self.loss_config.posterior_noise!r}")
        self.decoder = Decoder(self.model_config)
        self.encoder = Encoder(self.model_config, mel_basis)
        self.spectral_loss = spectral_loss_module(self.model_config.sample_rate)
        self._fit_started = time.monotonic()

    # ------------------------------------------------------------------------------------------ model
    def beta_at(self, step: int) -> float:
        c = self.loss_config
        ramp = (step - c.beta_delay_steps) / max(1, c.beta_warmup_steps)
        return c.beta * min(1.0, max(0.0, ramp))

    def render(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, z: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, dsp.SynthControls]:
        """Frames (B, F + 1) -> (harmonic, noise) audio (B, F * hop) each, from a fresh synth state, and the
        controls."""
        c = self.model_config
        controls, _ = self.decoder.controls(f0_hz, loudness_db, z)
        state = dsp.initial_state(controls.frame(0))
        harmonic, filtered, _ = dsp.synthesize(controls.frames(1), noise, state, c.hop_size, c.sample_rate)
        return harmonic, filtered, controls

    def forward_batch(self, batch: dict, sample: bool, noise_generator: torch.Generator | None = None) -> dict:
        audio, f0_hz, loudness_db = batch["audio"], batch["f0_hz"], batch["loudness_db"]
        mean, logvar = self.encoder(audio, f0_hz)          # (B, F + 1, D)
        z = mean + self._posterior_eps(mean) * torch.exp(0.5 * logvar) if sample else mean
        noise = torch.rand(audio.shape, generator=noise_generator, device=audio.device) * 2.0 - 1.0
        harmonic, filtered, controls = self.render(f0_hz, loudness_db, z, noise)
        output = harmonic + filtered
        spectral = self.spectral_loss(output, audio)
        kl_per_dim = kl_divergence(mean, logvar).mean(dim=(0, 1))   # (D,) nats per frame
        out = {"output": output, "harmonic": harmonic, "noise": filtered, "spectral": spectral,
               "kl_per_dim": kl_per_dim, "kl": kl_per_dim.sum()}
        if self.loss_config.attribute_weight > 0:
            c = self.model_config
            attributes, mask = frame_attributes(audio, f0_hz, loudness_db, c.hop_size, c.encoder_stride,
                                                c.sample_rate)
            z_frames = mean[:, ::c.encoder_stride][:, :attributes.shape[1]]   # the encoder's own frames
            out["attributes"] = attribute_loss(z_frames, attributes[:, :z_frames.shape[1]],
                                               mask[:, :z_frames.shape[1]], self.loss_config.attribute_delta,
                                               noise_generator)
        lc = self.loss_config
        if lc.invariance_weight > 0 or lc.response_weight > 0:
            # one decode with the latents swapped between examples serves both terms (only the decoder learns)
            z_swapped = swap_latents(z.detach(), noise_generator)
            swapped, _ = self.decoder.controls(f0_hz, loudness_db, z_swapped)
            if lc.invariance_weight > 0:
                out["invariance"] = loudness_change_loss(controls, swapped, loudness_db, self.model_config.sample_rate)
            if lc.response_weight > 0:
                out["response"] = knob_response_loss(controls, swapped, z, z_swapped, loudness_db,
                                                     self.model_config.sample_rate,
                                                     tuple(lc.response_gain * g for g in RESPONSE_GAINS))
        return out

    def _posterior_eps(self, mean: torch.Tensor) -> torch.Tensor:
        if self.loss_config.posterior_noise == "frame":
            return torch.randn_like(mean)
        return torch.randn(mean.shape[0], 1, mean.shape[2], dtype=mean.dtype, device=mean.device).expand_as(mean)

    # ------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.forward_batch(batch, sample=True)
        beta = self.beta_at(self.global_step)
        loss = out["spectral"] + beta * self.loss_config.kl_scale * out["kl"]
        bs = batch["audio"].shape[0]
        if "attributes" in out:
            loss = loss + self.loss_config.attribute_weight * out["attributes"]
            self.log("train/attributes", out["attributes"], batch_size=bs)
        if "invariance" in out:
            loss = loss + self.loss_config.invariance_weight * out["invariance"]
            self.log("train/invariance_db", out["invariance"], batch_size=bs)
        if "response" in out:
            loss = loss + self.loss_config.response_weight * out["response"]
            self.log("train/response", out["response"], batch_size=bs)
        self.log_dict({"train/loss": loss, "train/spectral": out["spectral"], "train/kl": out["kl"],
                       "train/beta": beta}, prog_bar=False, batch_size=bs)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=bs)
        # Field note: log harmonic vs noise energy, the sign of a noise branch taking over.
        self.log_dict({"train/harmonic_db": _energy_db(out["harmonic"]), "train/noise_db": _energy_db(out["noise"])},
                      batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(1234 + batch_idx)
        out = self.forward_batch(batch, sample=False, noise_generator=generator)
        bs = batch["audio"].shape[0]
        val_loss = out["spectral"] + self.loss_config.beta * self.loss_config.kl_scale * out["kl"]
        active = (out["kl_per_dim"] > 0.01).sum().float()
        if "attributes" in out:
            self.log("val/attributes", out["attributes"], batch_size=bs, sync_dist=True)
        if "invariance" in out:
            self.log("val/invariance_db", out["invariance"], batch_size=bs, sync_dist=True)
        if "response" in out:
            self.log("val/response", out["response"], batch_size=bs, sync_dist=True)
        self.log_dict({"val/loss": val_loss, "val/spectral": out["spectral"], "val/kl": out["kl"],
                       "val/active_latents": active,
                       "val/harmonic_db": _energy_db(out["harmonic"]), "val/noise_db": _energy_db(out["noise"])},
                      batch_size=bs, sync_dist=True)
        self.log("val_loss", val_loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("val/elapsed_s", time.monotonic() - self._fit_started, batch_size=bs, sync_dist=True)

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()

    def configure_optimizers(self):
        c = self.loss_config
        optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate)
        gamma = math.exp(math.log(0.1) / max(1, c.lr_decay_steps))
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)


def _energy_db(x: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(x.detach().pow(2).mean() + 1e-12)


def loss_config_dict(config: LossConfig) -> dict:
    return asdict(config)
