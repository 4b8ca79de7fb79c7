"""Latent priors: LDM-style folders (autoencoder + latent UNet) made by the tests load offline and round-trip."""

from __future__ import annotations

import shutil

import pytest
import torch

from posterior_diffusion.images import load_image
from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import LatentPrior, load_prior
from posterior_diffusion.priors.loading import ASSETS
from posterior_diffusion.samplers import get_sampler
from tests.conftest import build_ldm_folder


@pytest.mark.parametrize("kind", ["vqvae", "vae"])
def test_ldm_folder_loads_as_a_latent_prior(tmp_path, kind):
    prior = load_prior(build_ldm_folder(tmp_path / "ldm", kind))
    assert isinstance(prior, LatentPrior) and prior.space == "latent" and prior.factor == 4
    assert prior.scaling_factor == 1.0  # LDMPipeline: unscaled latents (CompVis convention)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = prior.encode(x)
    assert z.shape == (2, 4, 8, 8) == (2, *prior.latent_shape((3, 32, 32)))
    assert prior.decode(z).shape == x.shape
    assert prior.predict(z, 10).x0_hat.shape == z.shape


def test_sizes_that_are_not_multiples_of_the_autoencoder_factor_are_padded_and_cropped(tiny_ldm_folder):
    """A 30 x 21 image (factor 4): encoded from its reflect-padded 32 x 24 canvas (1 row above, 1 below, 1 column
    left, 2 right) into 8 x 6 latents; the view for that size decodes to the canvas's centre 30 x 21 crop; the prior
    itself and sizes that are multiples of f are untouched."""
    prior = load_prior(tiny_ldm_folder)
    x = torch.rand(2, 3, 30, 21) * 2 - 1
    z = prior.encode(x)
    canvas = torch.nn.functional.pad(x, (1, 2, 1, 1), mode="reflect")
    assert z.shape == (2, 4, 8, 6) == (2, *prior.latent_shape((3, 30, 21)))
    assert torch.equal(z, prior.encode(canvas))
    view = prior.for_image_shape((3, 30, 21))
    assert view is not prior and view.net is prior.net and prior.image_size is None
    assert torch.equal(view.decode(z), prior.decode(z)[..., 1:31, 1:22])
    assert prior.for_image_shape((3, 32, 24)) is prior
    with pytest.raises(ValueError, match=r"image size 4x21 is below the prior's downsampling factor 8"):
        prior.check_image_shape((3, 4, 21))


def test_scaling_factor_order(tmp_path):
    folder = build_ldm_folder(tmp_path / "ldm", "vae", class_name="LatentDiffusionPrior", extra={"scaling_factor": 4.0})
    assert load_prior(folder).scaling_factor == 4.0
    assert load_prior(folder, scaling_factor=2.0).scaling_factor == 2.0
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(load_prior(folder, scaling_factor=2.0).encode(x), 0.5 * load_prior(folder).encode(x))


def test_implausible_scaling_factor_is_refused(tmp_path):
    """A factor that leaves a natural image's latents far from unit variance (e.g. SD's 0.18215 applied twice, or
    forgotten) is an error that names the measured std and suggests the factor."""
    folder = build_ldm_folder(tmp_path / "ldm", "vae")
    std = float(load_prior(folder).encode(load_image(ASSETS / "images" / "kodim23_crop128.png", 3)[None]).std())
    with pytest.raises(ValueError, match=r"latents have std .* far from 1; .* about"):
        load_prior(folder, scaling_factor=20 / std)
    with pytest.raises(ValueError, match="latents have std"):
        load_prior(folder, scaling_factor=0.05 / std)


def test_missing_component_and_pixel_samplers_are_clear_errors(tmp_path, tiny_unet_folder):
    folder = build_ldm_folder(tmp_path / "ldm", "vqvae")
    prior = load_prior(folder)
    with pytest.raises(ValueError, match="ddrm needs a pixel-space prior; this prior is latent"):
        get_sampler("ddrm").check(prior, get_operator("denoise"))
    shutil.rmtree(folder / "vqvae")
    with pytest.raises(ValueError, match="lists a 'vqvae' component but has no vqvae/ folder"):
        load_prior(folder)
    with pytest.raises(ValueError, match="is a pixel prior"):
        load_prior(tiny_unet_folder, scaling_factor=0.5)
