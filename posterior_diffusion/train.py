"""Train a pixel diffusion prior (diffusers UNet2DModel + DDPM schedule) on a folder of images.

The objective is the DDPM epsilon loss (Ho et al., 2020, Algorithm 1) on random crops with random flips,
with accelerate for the device, mixed precision and multi-process data parallelism, and an EMA copy of
the weights (the weights that are saved as the prior).

Output folder (read by `load_prior`; nothing else is needed to use it):
    model_index.json, unet/ (EMA weights, safetensors + config.json), scheduler/ (DDPMScheduler config),
    checkpoint/ (latest raw weights, EMA, optimizer and step, for exact resume), train_log.jsonl,
    loss.png and samples.png at the end.

Exact resume: the crops, flips, timesteps and noise of step k come from generators seeded by
(seed, k, process index), so a resumed run repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from posterior_diffusion.images import list_images, read_image_uint8, uint8_to_float


@dataclass
class TrainConfig:
    """Training settings. Defaults size a ~7M-parameter fully convolutional UNet for a 2-core CPU.

    Schedule: linear betas 1e-4..0.02 over 1000 steps (DDPM, Ho et al. 2020, Sec. 4).
    Optimiser: AdamW, lr 2e-4 (DDPM Sec. B, CIFAR10), with a short warm-up.
    EMA: diffusers' EMAModel with warm-up (power 3/4, max decay 0.9999), as in diffusers'
    train_unconditional example.
    """

    data: str
    output: str
    channels: int = 3
    crop_size: int = 64
    batch_size: int = 32
    steps: int = 10000
    lr: float = 2e-4
    warmup_steps: int = 200
    ema_max_decay: float = 0.9999
    ema_power: float = 0.75
    block_out_channels: tuple[int, ...] = (48, 96, 128, 192)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    mixed_precision: str = "bf16"
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.crop_size % factor:
            raise ValueError(f"crop_size {self.crop_size} must be divisible by {factor} (the UNet's downsampling)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")


def build_unet(cfg: TrainConfig):
    """A fully convolutional UNet2DModel (no attention), usable at any size divisible by its downsampling."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.crop_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
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

    def batch(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """(n, C, crop, crop) float32 in [-1, 1]."""
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
        return uint8_to_float(torch.stack(crops))


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _save_checkpoint(folder: Path, model, ema, optimizer, step: int, losses: list[float]) -> None:
    """Atomically replace folder/checkpoint with the current training state."""
    tmp = folder / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    ema_state = ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    save_file({f"{i}": p.detach().cpu().contiguous() for i, p in enumerate(shadow)}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "ema": ema_state, "losses": losses}))
    final = folder / "checkpoint"
    old = folder / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, model, ema, optimizer) -> tuple[int, list[float]]:
    ckpt = folder / "checkpoint"
    if not (ckpt / "state.json").exists():
        return 0, []
    state = json.loads((ckpt / "state.json").read_text())
    model.load_state_dict(load_file(ckpt / "model.safetensors"))
    shadow = load_file(ckpt / "ema.safetensors")
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[f"{i}"] for i in range(len(shadow))]})
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    return state["step"], state["losses"]


def save_prior(folder: str | Path, unet, scheduler) -> None:
    """Write a DDPMPipeline-layout folder (model_index.json, unet/, scheduler/) that `load_prior` reads."""
    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def export_prior(source: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy the prior of a training folder (EMA weights) to `dest`, weights cast to `dtype` to halve the size;
    `load_prior` runs it in float32 unless asked otherwise."""
    from diffusers import DDPMScheduler, UNet2DModel

    source, dest = Path(source), Path(dest)
    unet = UNet2DModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    save_prior(dest, unet, DDPMScheduler.from_pretrained(source, subfolder="scheduler"))
    return dest


def train(cfg: TrainConfig, max_steps_this_run: int | None = None, progress: bool = True) -> Path:
    """Train (or resume) a pixel prior; returns the output folder. `max_steps_this_run` stops early (tests)."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    out = Path(cfg.output)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    config_file = out / "train_config.json"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if config_file.exists():
            previous = json.loads(config_file.read_text())
            if previous != json.loads(json.dumps(asdict(cfg))):
                raise ValueError(f"'{out}' holds a run with other settings ({config_file}); use a new output folder")
        config_file.write_text(json.dumps(asdict(cfg), indent=2))
    accelerator.wait_for_everyone()

    data = CropDataset(cfg.data, cfg.channels, cfg.crop_size)
    with torch.random.fork_rng():  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = build_unet(cfg)
    scheduler = build_scheduler(cfg)
    ema = EMAModel(
        model.parameters(),
        decay=cfg.ema_max_decay,
        use_ema_warmup=True,
        power=cfg.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, losses = _load_checkpoint(out, model, ema, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)

    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, start + max_steps_this_run)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=cfg.steps,
        disable=not (progress and accelerator.is_main_process),
        desc="train",
    )
    tic = time.time()
    with open(out / "train_log.jsonl", "a") if accelerator.is_main_process else contextlib.nullcontext() as log:
        for step in bar:
            loss_value = _train_step(cfg, step, data, model, optimizer, ema, alphas_cumprod, accelerator)
            losses.append(loss_value)
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            done = step + 1
            if log is not None:
                log.write(json.dumps({"step": done, "loss": loss_value, "seconds": round(time.time() - tic, 3)}) + "\n")
                log.flush()
            if accelerator.is_main_process and (done % cfg.checkpoint_every == 0 or done == end):
                _save_checkpoint(out, accelerator.unwrap_model(model), ema, optimizer, done, losses)
                _export(out, accelerator.unwrap_model(model), ema, scheduler)
            accelerator.wait_for_everyone()
    if accelerator.is_main_process and end == cfg.steps:
        _final_figures(out, losses, accelerator.device)
    return out


def _train_step(
    cfg: TrainConfig, step: int, data: CropDataset, model, optimizer, ema, alphas_cumprod, accelerator
) -> float:
    """One optimisation step of the epsilon loss (DDPM Algorithm 1); returns the loss averaged over processes."""
    g = _step_generator(cfg.seed, step, accelerator.process_index)
    x0 = data.batch(g, cfg.batch_size).to(accelerator.device)
    t = torch.randint(cfg.num_train_timesteps, (cfg.batch_size,), generator=g).to(accelerator.device)
    noise = torch.randn(x0.shape, generator=g).to(accelerator.device)
    alpha_bar = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    with accelerator.autocast():
        eps_hat = model(x_t, t).sample
    loss = F.mse_loss(eps_hat.float(), noise)
    accelerator.backward(loss)
    for group in optimizer.param_groups:  # linear warm-up, then constant
        group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(accelerator.unwrap_model(model).parameters())
    return accelerator.gather(loss.detach()[None]).mean().item()


def _export(out: Path, model, ema, scheduler) -> None:
    """Save the EMA weights as the prior (keeps the training weights untouched)."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    save_prior(out, model, scheduler)
    ema.restore(model.parameters())


def _final_figures(out: Path, losses: list[float], device) -> None:
    """loss.png (smoothed loss curve) and samples.png (unconditional DDPM samples of the EMA prior)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    window = max(1, len(losses) // 100)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.semilogy(np.arange(len(smooth)) + window, smooth)
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon MSE (moving average)")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)

    from posterior_diffusion.figures import save_grid
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.samplers.unconditional import sample_unconditional

    prior = load_prior(str(out), device=device)
    cfg = json.loads((out / "train_config.json").read_text())
    size = cfg["crop_size"] * 2
    samples = sample_unconditional(prior, (16, cfg["channels"], size, size), steps=250, seed=0)
    save_grid(samples, out / "samples.png", nrow=4)


def default_threads() -> None:
    """Use every core for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


__all__ = ["CropDataset", "TrainConfig", "build_scheduler", "build_unet", "save_prior", "train"]
