"""Shared fixtures: small Gaussian-mixture priors with exact posteriors and a tiny diffusers UNet prior."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion.exact import random_gaussian_mixture


@pytest.fixture(scope="session")
def gmm():
    return random_gaussian_mixture()


@pytest.fixture(scope="session")
def tiny_unet_folder(tmp_path_factory):
    """A DDPMPipeline-layout folder with a tiny random UNet2DModel (3 channels, downsampling 2)."""
    from posterior_diffusion.train import TrainConfig, build_scheduler, build_unet, save_prior

    torch.manual_seed(0)
    cfg = TrainConfig(data=".", output=".", block_out_channels=(8, 16), norm_num_groups=4, crop_size=16)
    folder = tmp_path_factory.mktemp("tiny_prior")
    save_prior(folder, build_unet(cfg), build_scheduler(cfg))
    return folder
