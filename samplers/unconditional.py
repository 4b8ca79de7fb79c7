"""Unconditional DDPM ancestral sampling from a prior (Ho et al. 2020, Algorithm 2), on a strided schedule.
Used for the sample grids of `train` and for looking at what a prior has learned."""

from __future__ import annotations

import torch

from posterior_diffusion.tensor_utils import make_generators, randn_stacked, seed_for

from .schedule import ddpm_coefficients, ddpm_step, strided_timesteps


@torch.inference_mode()
def sample_unconditional(
    prior, shape: tuple[int, ...], steps: int = 100, seed: int = 0, clip: bool = True, progress: bool = False
) -> torch.Tensor:
    """Draw shape[0] images of shape (C, H, W) = shape[1:]: (N, C, H, W) float32 in [-1, 1] (a tqdm bar over the
    steps with `progress`). 100 strided steps: Nichol & Dhariwal (2021, Sec. 4) find little loss against 1000."""
    from tqdm.auto import tqdm

    generators = make_generators([seed_for(seed, i) for i in range(shape[0])], prior.device)
    coef = ddpm_coefficients(prior.alphas_cumprod, strided_timesteps(prior.num_timesteps, steps))
    x_t = randn_stacked(generators, shape[1:], prior.device)
    steps_bar = tqdm(coef.timesteps, desc="sample", disable=not progress, leave=False)
    for i, t in enumerate(steps_bar):  # 0-d device tensors: no host-device copy per step
        pred = prior.predict(x_t, t)
        x0_hat = pred.x0_hat.clamp(-1, 1) if clip else pred.x0_hat
        x_t = ddpm_step(
            coef,
            i,
            x_t,
            x0_hat,
            randn_stacked(generators, shape[1:], prior.device),
            prior.variance_type,
            pred.variance_values,
        )
    return x_t.clamp(-1, 1) if clip else x_t


def sample_images(
    prior, num: int, image_shape: tuple[int, ...], steps: int = 100, seed: int = 0, progress: bool = False
) -> torch.Tensor:
    """`num` unconditional images of `image_shape` (C, H, W) from a pixel or latent prior: (num, C, H, W) in
    [-1, 1]. A latent prior samples latents (unclipped) and decodes them."""
    if prior.space == "latent":
        latent_shape = (num, *prior.latent_shape(tuple(image_shape)))
        latents = sample_unconditional(prior, latent_shape, steps, seed, clip=False, progress=progress)
        return prior.for_image_shape(tuple(image_shape)).decode(latents).clamp(-1, 1)
    return sample_unconditional(prior, (num, *image_shape), steps, seed, progress=progress)
