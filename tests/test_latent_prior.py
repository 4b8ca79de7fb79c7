"""Latent priors: LDM-style folders (autoencoder + latent UNet) made by the tests load offline and round-trip."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import UNet2DModel

from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import LatentPrior, load_prior
from posterior_diffusion.samplers import get_sampler
from posterior_diffusion.train import TrainConfig, build_scheduler, build_unet


def _autoencoder(kind: str):
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


def _ldm_folder(tmp_path, kind: str, class_name: str = "LDMPipeline", extra: dict | None = None):
    folder = tmp_path / f"ldm_{kind}"
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


@pytest.mark.parametrize("kind", ["vqvae", "vae"])
def test_ldm_folder_loads_as_a_latent_prior(tmp_path, kind):
    prior = load_prior(_ldm_folder(tmp_path, kind))
    assert isinstance(prior, LatentPrior) and prior.space == "latent" and prior.factor == 4
    assert prior.scaling_factor == 1.0  # LDMPipeline: unscaled latents (CompVis convention)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = prior.encode(x)
    assert z.shape == (2, 4, 8, 8) == (2, *prior.latent_shape((3, 32, 32)))
    assert prior.decode(z).shape == x.shape
    assert prior.predict(z, 10).x0_hat.shape == z.shape


def test_scaling_factor_order(tmp_path):
    folder = _ldm_folder(tmp_path, "vae", class_name="LatentDiffusionPrior", extra={"scaling_factor": 0.5})
    assert load_prior(folder).scaling_factor == 0.5
    assert load_prior(folder, scaling_factor=0.25).scaling_factor == 0.25
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(load_prior(folder, scaling_factor=0.25).encode(x), 0.5 * load_prior(folder).encode(x))


def test_missing_component_and_pixel_samplers_are_clear_errors(tmp_path, tiny_unet_folder):
    folder = _ldm_folder(tmp_path, "vqvae")
    prior = load_prior(folder)
    with pytest.raises(ValueError, match="ddrm needs a pixel-space prior; this prior is latent"):
        get_sampler("ddrm").check(prior, get_operator("denoise"))
    shutil.rmtree(folder / "vqvae")
    with pytest.raises(ValueError, match="lists a 'vqvae' component but has no vqvae/ folder"):
        load_prior(folder)
    with pytest.raises(ValueError, match="is a pixel prior"):
        load_prior(tiny_unet_folder, scaling_factor=0.5)
