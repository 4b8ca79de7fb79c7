"""Train a diffusion prior (diffusers UNet2DModel + DDPM schedule) on a folder of images: on pixels, or on the
latents of a trained autoencoder (`autoencoder=`, see `train_autoencoder`).

The objective is the DDPM epsilon loss (Ho et al., 2020, Algorithm 1) on random crops with random flips; the
loop (accelerate, EMA, checkpoints, exact resume) is `training_loop.fit`.

Output folder (written by `priors.save_prior`, read by `load_prior`; nothing else is needed to use it):
    model_index.json, unet/ (EMA weights, safetensors + config.json), scheduler/ (DDPMScheduler config),
    [vae/ or vqvae/: the autoencoder, its config's scaling_factor set], checkpoint/ (for exact resume),
    train_log.jsonl, train_config.json, and loss.png and samples.png at the end.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from posterior_diffusion.images import list_images, read_image_uint8, uint8_to_float
from posterior_diffusion.priors.saving import save_prior
from posterior_diffusion.training_loop import LoopConfig, TrainingJob, fit

SAMPLE_GRID = 16  # unconditional samples drawn into samples.png at the end of a run
SAMPLE_STEPS = 100  # their strided DDPM steps (16 x 64 px x 100 steps: about 2 min on one CPU core)


@dataclass
class TrainConfig(LoopConfig):
    """Diffusion-prior training. The default network is a ~7M-parameter fully convolutional UNet (CPU-sized).

    Schedule: linear betas 1e-4..0.02 over 1000 steps (DDPM, Ho et al. 2020, Sec. 4).
    Optimiser: AdamW, lr 2e-4 (DDPM Sec. B, CIFAR10), with a short warm-up.
    EMA: max decay 0.9999 with warm-up power 3/4, as in diffusers' train_unconditional example.
    autoencoder: a trained autoencoder folder (AutoencoderKL or VQModel): the UNet then learns its latents,
    scaled to unit variance (latent diffusion, Rombach et al. 2022, Sec. 4.3.2).
    init_from: a prior (`load_prior` spec: folder, hub id or builtin:NAME) whose UNet weights start the run, to
    fine-tune it on other images or continue it with other settings; its UNet must match this run's network.
    low_t_fraction / low_t_max: the timestep distribution (`sample_timesteps`). DDPM draws t uniformly (0);
    restoration spends most of its network calls and all of its final estimate at low noise, so a fine-tune may
    spend more of its draws there. Each t's optimum is unchanged (the loss is a sum of per-t terms), only
    where the capacity and the training time go.
    """

    block_out_channels: tuple[int, ...] = (48, 96, 128, 192)
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per network level"})
    norm_num_groups: int = field(default=16, metadata={"help": "groups of the group norms"})
    num_train_timesteps: int = field(default=1000, metadata={"help": "diffusion steps of the DDPM schedule"})
    beta_start: float = field(default=1e-4, metadata={"help": "first beta of the linear schedule"})
    beta_end: float = field(default=0.02, metadata={"help": "last beta of the linear schedule"})
    autoencoder: str | None = field(
        default=None, metadata={"help": "autoencoder folder: train a latent prior on its latents"}
    )
    init_from: str | None = field(default=None, metadata={"help": "prior whose UNet weights start the run"})
    low_t_fraction: float = field(
        default=0.0, metadata={"help": "fraction of the timestep draws taken uniformly below --low-t-max"}
    )
    low_t_max: int = field(default=100, metadata={"help": "the low timesteps' bound (1000 steps: t=100 is sigma 0.35)"})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.low_t_fraction <= 1.0:
            raise ValueError(f"low_t_fraction must be in [0, 1], got {self.low_t_fraction}")
        if not 1 <= self.low_t_max <= self.num_train_timesteps:
            raise ValueError(f"low_t_max must be in [1, {self.num_train_timesteps}], got {self.low_t_max}")


def build_unet(cfg: TrainConfig, channels: int | None = None, sample_size: int | None = None):
    """A fully convolutional UNet2DModel (no attention), usable at any size divisible by its downsampling.
    `channels`/`sample_size` default to the image's (pass the latent ones for a latent prior)."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    channels = channels or cfg.channels
    return UNet2DModel(
        sample_size=sample_size or cfg.crop_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        add_attention=False,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="linear",
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
    )


class CropDataset:
    """All training images in memory (uint8); `batch(generator, n)` draws n random crops with random flips."""

    def __init__(self, folder: str | Path, channels: int, crop_size: int):
        self.images = [read_image_uint8(p, channels) for p in list_images(folder)]
        small = [i for i, im in enumerate(self.images) if min(im.shape[1:]) < crop_size]
        if small:
            raise ValueError(f"{len(small)} training images are smaller than crop_size={crop_size}")
        self.crop_size = crop_size

    def batch(self, generator: torch.Generator, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n, C, crop, crop) float32 in [-1, 1] on `device` (cropped on the host with the CPU `generator`, sent
        as uint8 without waiting for the transfer)."""
        s = self.crop_size
        idx = torch.randint(len(self.images), (n,), generator=generator).tolist()
        u = torch.rand(n, 4, generator=generator)
        crops = []
        for i, (a, b, flip_h, flip_v) in zip(idx, u.tolist(), strict=False):
            im = self.images[i]
            top = int(a * (im.shape[1] - s + 1))
            left = int(b * (im.shape[2] - s + 1))
            crop = im[:, top : top + s, left : left + s]
            if flip_h < 0.5:
                crop = crop.flip(-1)
            if flip_v < 0.5:
                crop = crop.flip(-2)
            crops.append(crop)
        batch = torch.stack(crops)
        if torch.device(device).type == "cuda":
            batch = batch.pin_memory()
        return uint8_to_float(batch.to(device, non_blocking=True))


def train(
    cfg: TrainConfig,
    max_steps_this_run: int | None = None,
    progress: bool = True,
    time_limit: float | None = None,
    sample_grid: int = SAMPLE_GRID,
) -> Path:
    """Train (or resume) a prior; returns the output folder. `max_steps_this_run` stops early (tests);
    `time_limit` (seconds) ends this sitting with a checkpoint and figures (see `training_loop.fit`);
    `sample_grid` unconditional samples go into samples.png at the end (0: none)."""
    out = Path(cfg.output)

    def build(accelerator) -> TrainingJob:
        device = accelerator.device
        data = CropDataset(cfg.data, cfg.channels, cfg.crop_size)
        scheduler = build_scheduler(cfg)
        encoder = LatentEncoder(cfg.autoencoder, data, cfg.seed, device) if cfg.autoencoder else None
        if encoder is None:
            unet = build_unet(cfg)
        else:
            unet = build_unet(cfg, encoder.channels, cfg.crop_size // encoder.factor)
        if cfg.init_from:
            _load_initial_weights(unet, cfg.init_from)

        def loss(model, randomness, accelerator):
            x0 = data.batch(randomness.host, cfg.batch_size, device)
            if encoder is not None:
                x0 = encoder(x0)
            g = randomness.device
            t = sample_timesteps(cfg, cfg.batch_size, g, device)
            noise = torch.randn(x0.shape, generator=g, device=device)
            x_t = scheduler.add_noise(x0, noise, t)  # sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4)
            with accelerator.autocast():
                eps_hat = model(x_t, t).sample
            return F.mse_loss(eps_hat.float(), noise)

        def export(model) -> None:
            if encoder is None:
                save_prior(out, model, scheduler)
            else:
                save_prior(out, model, scheduler, encoder.autoencoder, encoder.scaling_factor)

        def finish(losses) -> None:
            if sample_grid > 0:
                _sample_grid(out, cfg, device, sample_grid, progress)

        return TrainingJob(unet, loss, export, finish)

    return fit(cfg, build, max_steps_this_run, progress, time_limit)


def sample_timesteps(cfg: TrainConfig, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """n training timesteps (int64 in [0, num_train_timesteps)): each one, with probability cfg.low_t_fraction,
    uniform on [0, low_t_max), else uniform on all steps (DDPM's uniform draw when low_t_fraction is 0)."""
    t = torch.randint(cfg.num_train_timesteps, (n,), generator=generator, device=device)
    if cfg.low_t_fraction == 0.0:
        return t
    low = torch.randint(cfg.low_t_max, (n,), generator=generator, device=device)
    pick = torch.rand(n, generator=generator, device=device) < cfg.low_t_fraction
    return torch.where(pick, low, t)


def _load_initial_weights(unet, spec: str) -> None:
    """Copy the UNet weights of prior `spec` into `unet` (float32); a clear error when the networks differ."""
    from posterior_diffusion.priors import load_prior

    prior = load_prior(spec, device="cpu", dtype=torch.float32)
    source = getattr(prior, "latent", prior).net
    try:
        unet.load_state_dict(source.state_dict())
    except RuntimeError as err:
        detail = str(err).splitlines()[0]
        raise ValueError(f"init_from '{spec}': its UNet does not match this run's network ({detail})") from None


class LatentEncoder:
    """A frozen autoencoder that maps image crops to latents scaled to unit variance.

    The scale is 1 / std of the latents of 4 batches of 16 crops drawn with a generator seeded by `seed`
    (the same on every process and on resume), as Stable Diffusion's scaling_factor was chosen.
    """

    def __init__(self, folder: str, data: CropDataset, seed: int, device):
        from diffusers import AutoencoderKL, VQModel

        config = json.loads((Path(folder) / "config.json").read_text())
        classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
        if config.get("_class_name") not in classes:
            raise ValueError(f"'{folder}' is not an AutoencoderKL or VQModel folder")
        self.autoencoder = (
            classes[config["_class_name"]].from_pretrained(folder).to(device).eval().requires_grad_(False)
        )
        self.factor = 2 ** (len(self.autoencoder.config.block_out_channels) - 1)
        self.channels = self.autoencoder.config.latent_channels
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = torch.cat([self._encode(data.batch(g, 16, device)) for _ in range(4)])
        self.scaling_factor = float(1.0 / z.std())

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.autoencoder.encode(x)
        return enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x) * self.scaling_factor


def _sample_grid(out: Path, cfg: TrainConfig, device, num: int, progress: bool) -> None:
    """samples.png: `num` unconditional DDPM samples (SAMPLE_STEPS strided steps) of the exported prior at the
    crop size."""
    from tqdm.auto import tqdm

    from posterior_diffusion.figures import save_grid
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.samplers.unconditional import sample_images

    if progress:
        tqdm.write(f"drawing {num} samples of the prior for samples.png ({SAMPLE_STEPS} steps; --sample-grid 0 skips)")
    prior = load_prior(str(out), device=device)
    shape = (cfg.channels, cfg.crop_size, cfg.crop_size)
    images = sample_images(prior, num, shape, SAMPLE_STEPS, progress=progress)
    save_grid(images, out / "samples.png", nrow=math.ceil(math.sqrt(num)))


def default_threads() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


__all__ = [
    "CropDataset",
    "LatentEncoder",
    "TrainConfig",
    "build_scheduler",
    "build_unet",
    "sample_timesteps",
    "train",
]
