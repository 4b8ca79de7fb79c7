"""Shared fixtures: small Gaussian-mixture priors with exact posteriors, a tiny diffusers UNet prior and tiny
LDM-style latent priors (autoencoder + latent UNet)."""

from __future__ import annotations

import json

import pytest
import torch

from posterior_diffusion import guards
from posterior_diffusion.exact import random_gaussian_mixture


@pytest.fixture(autouse=True)
def _auto_dtype_is_float32(monkeypatch):
    """dtype="auto" (the default of `sample_posterior` and `restore`) runs float32 in every test, whatever the CPU
    the tests run on; tests of other dtypes ask for them, and tests of `auto_dtype` import the real one."""
    monkeypatch.setattr(guards, "auto_dtype", lambda device: torch.float32)


@pytest.fixture(scope="session")
def gmm():
    return random_gaussian_mixture()


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A folder of five random 20x24 RGB PNGs: the photos of the bench and training tests."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("bench_images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_unet_folder(tmp_path_factory):
    """A DDPMPipeline-layout folder with a tiny random UNet2DModel (3 channels, downsampling 2)."""
    from posterior_diffusion.priors import save_prior
    from posterior_diffusion.train import TrainConfig, build_scheduler, build_unet

    torch.manual_seed(0)
    cfg = TrainConfig(data=".", output=".", block_out_channels=(8, 16), norm_num_groups=4, crop_size=16)
    folder = tmp_path_factory.mktemp("tiny_prior")
    save_prior(folder, build_unet(cfg), build_scheduler(cfg))
    return folder


def _autoencoder(kind: str):
    """A tiny random VQModel ("vqvae") or AutoencoderKL ("vae"): 3 channels, 4-channel latents, downsampling 4."""
    from diffusers import AutoencoderKL, VQModel

    common = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    torch.manual_seed(0)
    return VQModel(**common, num_vq_embeddings=32, vq_embed_dim=4) if kind == "vqvae" else AutoencoderKL(**common)


def build_ldm_folder(folder, kind: str = "vqvae", class_name: str = "LDMPipeline", extra: dict | None = None):
    """Write an LDM-style folder (autoencoder `kind` + random latent UNet2DModel, downsampling 2) to `folder`."""
    from diffusers import UNet2DModel

    from posterior_diffusion.train import TrainConfig, build_scheduler, build_unet

    cfg = TrainConfig(data=".", output=".", channels=3, block_out_channels=(8, 16), norm_num_groups=4, crop_size=16)
    unet = UNet2DModel.from_config({**build_unet(cfg).config, "in_channels": 4, "out_channels": 4})
    unet.save_pretrained(folder / "unet")
    build_scheduler(cfg).save_pretrained(folder / "scheduler")
    _autoencoder(kind).save_pretrained(folder / kind)
    ae_class = "VQModel" if kind == "vqvae" else "AutoencoderKL"
    index = {
        "_class_name": class_name,
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        kind: ["diffusers", ae_class],
        **(extra or {}),
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def tiny_ldm_folder(tmp_path_factory):
    """A tiny latent prior folder (AutoencoderKL, as the built-in latent prior; images: multiples of 8 px)."""
    return build_ldm_folder(tmp_path_factory.mktemp("tiny_ldm") / "ldm_vae", "vae")
