"""Write a prior folder that `load_prior` reads: diffusers' DDPMPipeline layout, or the latent-prior layout.

folder/model_index.json       {"_class_name": "DDPMPipeline" | "LatentDiffusionPrior", component: [library, class]}
folder/unet/                  UNet2DModel (config.json + safetensors)
folder/scheduler/             DDPMScheduler config
folder/vae/ or folder/vqvae/  latent priors only: AutoencoderKL or VQModel, config scaling_factor = latent scale
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_prior(folder: str | Path, unet, scheduler, autoencoder=None, scaling_factor: float | None = None) -> None:
    """Write `unet` (a diffusers UNet2DModel) and `scheduler` (a DDPMScheduler) as a prior folder.

    Args:
        folder: the output folder (created; existing components are overwritten).
        unet: the denoising network, saved in its dtype as safetensors.
        scheduler: its DDPMScheduler (the training schedule and prediction type).
        autoencoder: an AutoencoderKL or VQModel for a latent prior (None: a pixel prior).
        scaling_factor: the latent scale (latents are multiplied by it before the UNet); required with
            `autoencoder`, stored as the autoencoder config's `scaling_factor`.
    """
    folder = Path(folder)
    if autoencoder is not None and scaling_factor is None:
        raise ValueError("a latent prior needs scaling_factor (the scale of the autoencoder's latents)")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if autoencoder is not None:
        key = "vqvae" if type(autoencoder).__name__ == "VQModel" else "vae"
        autoencoder.register_to_config(scaling_factor=float(scaling_factor))
        autoencoder.save_pretrained(folder / key, safe_serialization=True)
        index = {**index, "_class_name": "LatentDiffusionPrior", key: ["diffusers", type(autoencoder).__name__]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def export_prior(source: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy the prior in folder `source` (e.g. a training run's output: its EMA weights) to `dest`, weights cast
    to `dtype` (float16 halves the files; `load_prior` still runs them in float32 unless asked otherwise)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel, VQModel

    source, dest = Path(source), Path(dest)
    unet = UNet2DModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    index = json.loads((source / "model_index.json").read_text())
    key = next((k for k in ("vae", "vqvae") if k in index), None)
    if key is None:
        save_prior(dest, unet, scheduler)
    else:
        autoencoder = {"vae": AutoencoderKL, "vqvae": VQModel}[key].from_pretrained(source / key, torch_dtype=dtype)
        save_prior(dest, unet, scheduler, autoencoder, autoencoder.config.scaling_factor)
    return dest


__all__ = ["export_prior", "save_prior"]
