"""Train the autoencoder of a latent prior: a diffusers AutoencoderKL with downsampling factor
2^(len(block_out_channels) - 1), on random crops of a folder of images.

Loss: L1 reconstruction + kl_weight * KL(q(z | x) || N(0, I)) (the KL-regularised autoencoder of Rombach et al.,
CVPR 2022, Sec. 3 and App. G, without its perceptual and adversarial terms, which need pretrained networks).
The loop is `training_loop.fit` (EMA, checkpoints, exact resume). Output: autoencoder/ (EMA weights, a folder
`train --autoencoder` and `AutoencoderKL.from_pretrained` read), loss.png and reconstructions.png.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from posterior_diffusion.train import CropDataset
from posterior_diffusion.training_loop import LoopConfig, TrainingJob, fit


@dataclass
class AutoencoderConfig(LoopConfig):
    """Autoencoder training.

    block_out_channels (64, 128, 128): three levels, factor 4, like the LDM f4 autoencoders.
    latent_channels 3: LDM's kl-f4 / vq-f4 models use 3 latent channels (Rombach et al. Table 8).
    kl_weight 1e-6: LDM `autoencoder_kl_*` configs.
    lr 1e-4 with AdamW, batch 16, 5000 steps; EMA max decay 0.999 (the EMA weights are exported).
    init_from: an AutoencoderKL folder whose weights start the run (fine-tune or continue with other settings).
    """

    batch_size: int = 16
    steps: int = 5000
    lr: float = 1e-4
    warmup_steps: int = 100
    ema_max_decay: float = 0.999
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    latent_channels: int = field(default=3, metadata={"help": "channels of the latents"})
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per network level"})
    norm_num_groups: int = field(default=32, metadata={"help": "groups of the group norms"})
    kl_weight: float = field(default=1e-6, metadata={"help": "weight of the KL term against the L1 loss"})
    init_from: str | None = field(default=None, metadata={"help": "AutoencoderKL folder whose weights start the run"})


def build_autoencoder(cfg: AutoencoderConfig):
    """A fully convolutional AutoencoderKL (no attention in the middle block)."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.crop_size,
        mid_block_add_attention=False,
    )


class _WithKL(torch.nn.Module):
    """Wraps the autoencoder so that one forward (what DDP synchronises) returns the reconstruction and the KL."""

    def __init__(self, autoencoder):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.autoencoder.encode(x).latent_dist
        recon = self.autoencoder.decode(posterior.mean + posterior.std * eps).sample
        return recon, posterior.kl()


def _load_initial_weights(autoencoder, folder: str) -> None:
    """Copy the weights of the AutoencoderKL in `folder` into `autoencoder`; a clear error when they differ."""
    from diffusers import AutoencoderKL

    source = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    try:
        autoencoder.load_state_dict(source.state_dict())
    except RuntimeError as err:
        detail = str(err).splitlines()[0]
        raise ValueError(
            f"init_from '{folder}': its autoencoder does not match this run's network ({detail})"
        ) from None


def train_autoencoder(
    cfg: AutoencoderConfig,
    max_steps_this_run: int | None = None,
    progress: bool = True,
    time_limit: float | None = None,
) -> Path:
    """Train (or resume) an autoencoder; returns the output folder (the model is in its autoencoder/).
    `max_steps_this_run` and `time_limit` (seconds) end this sitting early (see `training_loop.fit`)."""
    out = Path(cfg.output)
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    latent_size = cfg.crop_size // factor

    def build(accelerator) -> TrainingJob:
        data = CropDataset(cfg.data, cfg.channels, cfg.crop_size)

        def loss(model, randomness, accelerator):
            x = data.batch(randomness.host, cfg.batch_size, accelerator.device)
            shape = (cfg.batch_size, cfg.latent_channels, latent_size, latent_size)
            eps = torch.randn(shape, generator=randomness.device, device=x.device)
            with accelerator.autocast():
                recon, kl = model(x, eps)
            return F.l1_loss(recon.float(), x) + cfg.kl_weight * kl.float().mean() / x[0].numel()

        def export(model) -> None:
            model.autoencoder.save_pretrained(out / "autoencoder", safe_serialization=True)

        def finish(losses) -> None:
            from diffusers import AutoencoderKL

            from posterior_diffusion.figures import save_grid

            x = data.batch(torch.Generator().manual_seed(cfg.seed), 8, accelerator.device)
            autoencoder = AutoencoderKL.from_pretrained(out / "autoencoder").to(accelerator.device)
            with torch.no_grad():
                recon = autoencoder.decode(autoencoder.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            save_grid(torch.cat([x, recon]), out / "reconstructions.png", nrow=8)

        autoencoder = build_autoencoder(cfg)
        if cfg.init_from:
            _load_initial_weights(autoencoder, cfg.init_from)
        return TrainingJob(_WithKL(autoencoder), loss, export, finish)

    return fit(cfg, build, max_steps_this_run, progress, time_limit)
