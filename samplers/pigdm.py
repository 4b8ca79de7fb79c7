"""ΠGDM: Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani, Kautz; ICLR 2023; openreview 9_gsMA8MRKQ),
Algorithm 1, for noisy linear problems.

p(x0 | x_t) is approximated by N(x0_hat, r_t^2 I), so that p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I) and
its score is a vector-Jacobian product through the network:

    x0_hat = E[x0 | x_t]                                            (the network)
    g      = ((y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^-1 A  d x0_hat / d x_t)^T
    r_t^2  = sigma_t^2 / (1 + sigma_t^2) = 1 - alpha_bar_t           (sigma_t^2 = (1 - alpha_bar_t) / alpha_bar_t)
    x_s    = sqrt(alpha_bar_s) (x0_hat + w_t g) + c1 z + c2 eps_hat  (DDIM, Song, Meng, Ermon 2021, Eq. 12)
    c1     = eta sqrt((1 - alpha_bar_t / alpha_bar_s) (1 - alpha_bar_s) / (1 - alpha_bar_t)),  c2 = sqrt(1 -
             alpha_bar_s - c1^2)

with the adaptive weight w_t = guidance_scale * sqrt(alpha_bar_t) r_t^2 of the authors' code (NVlabs/RED-diff,
`algos/pgdm.py` with `_configs/algo/pgdm.yaml`: awd true, grad_term_weight 1). There the noise-free guidance
(A^+ y - A^+ A x0_hat)^T d x0_hat / d x_t enters x_s with sqrt(alpha_bar_s) sqrt(alpha_bar_t); as sigma_y -> 0,
r_t^2 g tends to exactly that term (A^T (A A^T)^-1 = A^+ for an A of full row rank), so this is the same step for
noise-free data and the paper's (r_t^2 A A^T + sigma_y^2 I)^-1 for noisy data. eps_hat is the network's, not
recomputed from the guided x0 (as the reference), so each step moves x0_hat part of the way towards consistency
with y, like DDNM's projection but through the Jacobian, which keeps it on the prior's manifold.

The inverse is exact through the operator's SVD A = U diag(s) V^T: A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0) =
V diag(s / (r^2 s^2 + sigma_y^2)) (U^T y - s V^T x0), zero on unobserved coordinates (`spectral.SpectralPosterior`
gives s and U^T y).

Departures from the reference code:
- Operators with an SVD only; the reference's degradations are all DDRM-style SVD operators too. (An operator
  without one would need an iterative solve of r^2 A A^T + sigma_y^2 I at every step.)
- The noisy-data guidance uses the paper's (r_t^2 A A^T + sigma_y^2 I)^-1 (the reference code implements the
  noise-free A^+ form only: its `sigma_y` is not used by `pgdm.py`), weighted by r_t^2 so that it reduces to the
  reference's step at sigma_y = 0 (above).
- The first state is sqrt(alpha_bar_T) A^+ y + sqrt(1 - alpha_bar_T) z as the reference's `initialize` (A^+ with
  the exact SVD; alpha_bar_T ~ 4e-5 makes it pure noise in practice), noise per chain from its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.tensor_utils import randn_stacked

from .base import Sampler, register_sampler
from .schedule import ddrm_timesteps
from .spectral import SpectralPosterior


@dataclass(frozen=True)
class PiGDMConfig:
    """ΠGDM settings (paper Sec. 4; the authors' NVlabs/RED-diff `_configs/algo/pgdm.yaml`).

    steps: 100 DDIM steps on the grid range(0, T, T // steps) (the paper's 100 NFE; RED-diff `exp.num_steps`).
    eta: 0.0, DDIM's eta: deterministic steps after x_T (`pgdm.yaml` eta 0.0); 1.0 gives DDPM-like fresh noise.
    guidance_scale: 1.0, the guidance weight multiplying w_t (`pgdm.yaml` grad_term_weight 1).
    """

    steps: int = 100
    eta: float = 0.0
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


@register_sampler("pigdm")
class PiGDM(Sampler):
    """ΠGDM for linear operators with an SVD and Gaussian noise; one network VJP per step."""

    Config = PiGDMConfig
    # the authors' code runs every task with one config (`pgdm.yaml`); the presets name the paper's tasks
    PRESETS: ClassVar[dict[str, dict]] = {
        "super_resolution": {},
        "inpainting": {},
        "deblur": {},
        "denoise": {},
    }
    needs_operator = "svd"
    network_gradient = True  # d x0_hat / d x_t through the network (a VJP per step)
    step_option = "guidance_scale"
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 4}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 100, "eta": 1.0}

    def nfe(self, prior) -> int:
        return self.config.steps

    def check(self, prior, op):
        super().check(prior, op)
        if not isinstance(op.noise, GaussianNoise):
            raise ValueError(f"{self.name} needs Gaussian measurement noise (noise='gaussian'), got '{op.noise.name}'")

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        svd = op.svd()
        spec = SpectralPosterior(svd, y, image_shape, op.noise.sigma)
        pairs = ddrm_timesteps(prior.num_timesteps, cfg.steps)
        alpha_bar = [*prior.alphas_cumprod.double().cpu().tolist(), 1.0]  # index -1 -> alpha_bar = 1
        with torch.no_grad():
            a_first = alpha_bar[pairs[0][0]]
            x0_init = op.pinv(y).float()
            x_t = a_first**0.5 * x0_init + (1 - a_first) ** 0.5 * randn_stacked(generators, image_shape, device)
        for i, (t, s) in enumerate(pairs):
            a_t, a_s = alpha_bar[t], alpha_bar[s]
            r2 = 1 - a_t  # r_t^2 = sigma_t^2 / (1 + sigma_t^2) in VP terms
            pred, g = self._guidance(prior, spec, svd, x_t, t, r2)
            with torch.no_grad():
                c1 = cfg.eta * ((1 - a_t / a_s) * (1 - a_s) / (1 - a_t)) ** 0.5
                c2 = max(1 - a_s - c1**2, 0.0) ** 0.5
                x0_guided = pred.x0_hat.detach() + cfg.guidance_scale * a_t**0.5 * r2 * g
                z = randn_stacked(generators, image_shape, device)
                x_t = a_s**0.5 * x0_guided + c1 * z + c2 * pred.eps.detach()
            step_hook({"i": i, "t": t, "x": x_t, "x0_hat": pred.x0_hat.detach()})
        return x_t.detach(), {}

    def _guidance(self, prior, spec: SpectralPosterior, svd, x_t: torch.Tensor, t: int, r2: float):
        """The prediction at (x_t, t) and g = (d x0_hat / d x_t)^T A^T (r2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat):
        (n, C, H, W), one VJP through the network (per chain: each x0_hat depends on its own x_t only)."""
        x_t = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            pred = prior.predict(x_t, t)
            with torch.no_grad():
                v = self._weighted_residual(spec, svd, pred.x0_hat, r2)
            (g,) = torch.autograd.grad(pred.x0_hat, x_t, grad_outputs=v)
        return pred, g

    @staticmethod
    def _weighted_residual(spec: SpectralPosterior, svd, x0_hat: torch.Tensor, r2: float) -> torch.Tensor:
        """A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat): (n, C, H, W), through the SVD (0 where s = 0)."""
        s = spec.s
        weight = torch.where(spec.observed, s / (r2 * s.square() + spec.sigma_y**2), torch.zeros_like(s))
        return svd.V(weight * (spec.u_t_y - s * svd.V_t(x0_hat)))
