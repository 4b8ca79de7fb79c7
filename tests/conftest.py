"""Shared fixtures: small Gaussian-mixture priors with exact posteriors and a tiny diffusers UNet prior."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion.priors import GaussianMixturePrior


def make_gmm(shape=(1, 8, 8), components: int = 3, seed: int = 0, spread: float = 0.5) -> GaussianMixturePrior:
    """A K-component mixture over images of `shape` with random means and smooth-ish random covariances."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    means = spread * torch.randn(components, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(components):
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        covs.append(0.05 * a @ a.T / d + 0.01 * torch.eye(d, dtype=torch.float64))
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixturePrior(weights, means, torch.stack(covs), image_shape=shape)


@pytest.fixture(scope="session")
def gmm() -> GaussianMixturePrior:
    return make_gmm()


@pytest.fixture(scope="session")
def tiny_unet_folder(tmp_path_factory):
    """A DDPMPipeline-layout folder with a tiny random UNet2DModel (3 channels, downsampling 2)."""
    from posterior_diffusion.train import TrainConfig, build_scheduler, build_unet, save_prior

    torch.manual_seed(0)
    cfg = TrainConfig(data=".", output=".", block_out_channels=(8, 16), norm_num_groups=4, crop_size=16)
    folder = tmp_path_factory.mktemp("tiny_prior")
    save_prior(folder, build_unet(cfg), build_scheduler(cfg))
    return folder
