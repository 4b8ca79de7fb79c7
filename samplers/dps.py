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

Latent priors (latent DPS, the baseline of PSLD and ReSample): the chain runs on latents z_t, the data term is
||y - A(D(z0_hat))|| with the gradient through the UNet and the decoder D, z0_hat is not clipped, and the result
is D(z_0). `gluing_weight` gamma > 0 adds PSLD's "gluing" term (Rout, Raoof, Daras, Caramanis, Dimakis,
Shakkottai; NeurIPS 2023; arXiv:2307.00619; code LituRout/PSLD, `ddim.py`, with un-squared norms as there):

    z_prev = z'_prev - grad_{z_t} [ zeta ||y - A(D(z0_hat))|| + gamma ||z0_hat - E(A^T y + (I - A^T A) D(z0_hat))|| ]

for linear operators (A^T is the exact adjoint).

Departure from the paper (off by default): `final_fit_iterations` > 0 adds a
data-consistency phase after the chain, in the spirit of ReSample's hard data consistency (Song, Kwon, Zhang,
Hu, Qu, Shen; ICLR 2024; arXiv:2307.08123), here once at t = 0. Each sample x_dps is replaced by

    argmin_x  -log p(y | x) + (mu / 2) ||x - x_dps||^2,   x = 2 sigmoid(u) - 1 in (-1, 1),

by L-BFGS (strong Wolfe line search) from x_dps, one sample at a time. Stiff likelihoods (interferometric
closures), which DPS's small stable step cannot fit to the noise level, are fitted there; the proximity weight
mu keeps the result near the sample, so the structure the prior gave it stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.tensor_utils import per_sample_norm, randn_stacked

from .base import Sampler, register_sampler
from .schedule import ddpm_coefficients, ddpm_step, strided_timesteps


@dataclass(frozen=True)
class DPSConfig:
    """DPS settings.

    steps: DDPM steps; 1000 = no respacing (DPS App. C; configs/diffusion_config.yaml `timestep_respacing: 1000`).
    step_size: zeta, the reference code's `scale` (configs/*_config.yaml: 0.3 SR/deblur, 0.5 inpainting).
    clip_x0: clip x0_hat to [-1, 1] before the step and the residual (diffusion_config.yaml `clip_denoised: true`);
        pixel priors only (latents have no fixed range).
    gluing_weight: gamma of PSLD's gluing term; 0 = off (latent DPS). Latent priors and linear operators only;
        PSLD's Stable Diffusion runs use about 0.1 (reference spec, unverified).
    """

    steps: int = 1000
    step_size: float = 0.5
    clip_x0: bool = True
    gluing_weight: float = 0.0
    # not in the paper (module docstring): L-BFGS iterations of the final data-consistency fit (0: off) and its
    # proximity weight mu on [-1, 1] images; it needs a likelihood (op.noise.neg_log_likelihood)
    final_fit_iterations: int = 0
    final_fit_proximity: float = 100.0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {self.step_size}")
        if not self.gluing_weight >= 0:
            raise ValueError(f"gluing_weight must be >= 0, got {self.gluing_weight}")
        if self.final_fit_iterations < 0 or not self.final_fit_proximity >= 0:
            raise ValueError(
                f"need final_fit_iterations >= 0 and final_fit_proximity >= 0; got {self.final_fit_iterations}, "
                f"{self.final_fit_proximity}"
            )


@register_sampler("dps")
class DPS(Sampler):
    """DPS for any differentiable operator, pixel or latent prior (+ PSLD gluing); one network VJP per step."""

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
    needs_space = "any"
    needs_operator = "differentiable"
    step_option = "step_size"
    network_gradient = True  # the gradient of ||y - A(x0_hat(x_t))|| with respect to x_t
    weighs_noise_level = False  # the step uses ||y - A(x0_hat)||, not its sigma_y-weighted square
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 4}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 200, "step_size": 0.3}

    def nfe(self, prior) -> int:
        return self.config.steps

    def check(self, prior, op) -> None:
        super().check(prior, op)
        if self.config.gluing_weight > 0 and not (prior.space == "latent" and op.is_linear):
            raise ValueError(
                f"gluing_weight > 0 (PSLD) needs a latent prior and a linear operator; got a {prior.space} prior "
                f"and '{op.name}' ({'linear' if op.is_linear else 'nonlinear'}). Use gluing_weight=0 (latent DPS)"
            )

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        shape = prior.state_shape(image_shape)  # latents for a latent prior
        clip = cfg.clip_x0 and prior.space == "pixel"
        coef = ddpm_coefficients(prior.alphas_cumprod, strided_timesteps(prior.num_timesteps, cfg.steps))
        x_t = randn_stacked(generators, shape, device)
        for i, t in enumerate(coef.timesteps):  # 0-d device tensors: no host-device copy per step
            x_t.requires_grad_(True)
            with torch.enable_grad():
                pred = prior.predict(x_t, t)
                x0_hat = pred.x0_hat.clamp(-1, 1) if clip else pred.x0_hat
                norm, guidance = self._guidance(prior, op, y, x0_hat)
                (grad,) = torch.autograd.grad(guidance.sum(), x_t)
            noise = randn_stacked(generators, shape, device)
            with torch.no_grad():
                x_prev = ddpm_step(coef, i, x_t, x0_hat, noise, prior.variance_type, pred.variance_values)
                x_t = (x_prev - grad).detach()
            step_hook(
                {
                    "i": i,
                    "t": coef.timesteps_host[i],
                    "x": x_t,
                    "x0_hat": x0_hat.detach(),
                    "residual_norm": norm.detach(),
                }
            )
        with torch.no_grad():
            x = prior.to_image(x_t)
        if cfg.final_fit_iterations:
            x = torch.cat([self._final_fit(op, y[k : k + 1], x[k : k + 1]) for k in range(len(x))])
        return x, {}

    def _final_fit(self, op, y, x_dps) -> torch.Tensor:
        """argmin_x -log p(y | x) + (mu / 2) ||x - x_dps||^2, x = 2 sigmoid(u) - 1, by L-BFGS from x_dps (1, ...)."""
        cfg = self.config
        x_dps = x_dps.float()
        u = torch.logit(((x_dps + 1) / 2).clamp(1e-3, 1 - 1e-3)).requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [u], max_iter=cfg.final_fit_iterations, history_size=50, line_search_fn="strong_wolfe"
        )

        def objective():
            optimizer.zero_grad()
            x = 2 * torch.sigmoid(u) - 1
            loss = op.noise.neg_log_likelihood(y, op(x)).sum()
            loss = loss + cfg.final_fit_proximity / 2 * (x - x_dps).square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        return (2 * torch.sigmoid(u) - 1).detach()

    def _guidance(self, prior, op, y, x0_hat) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ||y - A(x0)|| (n,) and the objective whose gradient in x_t is the step (n,):
        zeta ||y - A(x0)|| (+ gamma * PSLD's gluing norm), with x0 = x0_hat or D(z0_hat)."""
        cfg = self.config
        x0 = prior.to_image(x0_hat)
        norm = op.residual_norm(y, x0)  # (n,) per-sample ||y - A(x0_hat)||
        guidance = cfg.step_size * norm
        if cfg.gluing_weight > 0:  # PSLD gluing: z0_hat against E(A^T y + (I - A^T A) D(z0_hat))
            glued = op.adjoint(y) + x0 - op.adjoint(op(x0))
            guidance = guidance + cfg.gluing_weight * per_sample_norm(x0_hat - prior.encode(glued))
        return norm, guidance
