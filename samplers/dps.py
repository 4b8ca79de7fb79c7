"""DPS: Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky, Ye; ICLR 2023; arXiv:2209.14687), Algorithm 1.

Ancestral DDPM over the prior's schedule with a gradient step on the un-squared residual norm through the
network, as in the reference code (DPS2022/diffusion-posterior-sampling, condition_methods.py `PosteriorSampling`):

    x0_hat  = clip(E[x0 | x_t])                        (Tweedie; clip_denoised: true)
    x'_prev = mu(x_t, x0_hat) + sigma_t z              (DDPM ancestral step, learned or fixed variance)
    x_prev  = x'_prev - zeta * grad_{x_t} ||y - A(x0_hat)||      (Gaussian noise)
              x'_prev - zeta * grad_{x_t} ||y - A(x0_hat)||_Lambda   (Poisson noise, Lambda = 1 / (2 y), Eq. 18)

Because grad ||r|| = grad ||r||^2 / (2 ||r||), zeta here equals twice the paper's zeta' (zeta_t = zeta'/||r||).
The norm is per sample, so a result does not depend on the other samples in its batch.
`steps` < T uses a strided (respaced) schedule, as guided-diffusion's `SpacedDiffusion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.tensor_utils import randn_stacked

from .base import NonFiniteGuard, Sampler, register_sampler
from .schedule import ddpm_coefficients, ddpm_step, strided_timesteps


@dataclass(frozen=True)
class DPSConfig:
    """DPS settings.

    steps: DDPM steps; 1000 = no respacing (DPS App. C; configs/diffusion_config.yaml `timestep_respacing: 1000`).
    step_size: zeta, the reference code's `scale` (configs/*_config.yaml: 0.3 SR/deblur, 0.5 inpainting).
    clip_x0: clip x0_hat to [-1, 1] before the step and the residual (diffusion_config.yaml `clip_denoised: true`).
    """

    steps: int = 1000
    step_size: float = 0.5
    clip_x0: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {self.step_size}")


@register_sampler("dps")
class DPS(Sampler):
    """DPS for any differentiable operator and pixel prior; one network VJP per step."""

    Config = DPSConfig
    PRESETS: ClassVar[
        dict[str, dict]
    ] = {  # the `scale` of each FFHQ task config in the reference repository (configs/*_config.yaml)
        "super_resolution": {"step_size": 0.3},
        "inpainting": {"step_size": 0.5},
        "gaussian_deblur": {"step_size": 0.3},
        "motion_deblur": {"step_size": 0.3},
        "phase_retrieval": {"step_size": 0.4},
    }
    needs_operator = "differentiable"
    network_gradient = True  # the gradient of ||y - A(x0_hat(x_t))|| with respect to x_t
    weighs_noise_level = False  # the step uses ||y - A(x0_hat)||, not its sigma_y-weighted square

    def nfe(self, prior) -> int:
        return self.config.steps

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        coef = ddpm_coefficients(prior.alphas_cumprod, strided_timesteps(prior.num_timesteps, cfg.steps))
        guard = NonFiniteGuard(device)
        x_t = randn_stacked(generators, image_shape, device)
        for i, t in enumerate(coef.timesteps):  # 0-d device tensors: no host-device copy per step
            x_t.requires_grad_(True)
            with torch.enable_grad():
                pred = prior.predict(x_t, t)
                x0_hat = pred.x0_hat.clamp(-1, 1) if cfg.clip_x0 else pred.x0_hat
                norm = op.residual_norm(y, x0_hat)  # (n,) per-sample ||y - A(x0_hat)||
                (grad,) = torch.autograd.grad(norm.sum(), x_t)
            noise = randn_stacked(generators, image_shape, device)
            with torch.no_grad():
                x_prev = ddpm_step(coef, i, x_t, x0_hat, noise, prior.variance_type, pred.variance_values)
                x_t = (x_prev - cfg.step_size * grad).detach()
            guard.update(i, x_t)
            step_hook(
                {
                    "i": i,
                    "t": coef.timesteps_host[i],
                    "x": x_t,
                    "x0_hat": x0_hat.detach(),
                    "residual_norm": norm.detach(),
                }
            )
        guard.check()
        return x_t, {}
