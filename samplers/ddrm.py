"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song; NeurIPS 2022; arXiv:2201.11793), Eq. (7)-(8).

A DDIM-like sampler in the spectral domain of A = U diag(s) V^T, with no gradients: x_T is drawn from q(x_T | y)
(DDRM Eq. 7), then each step draws V^T x_bar_{t-1} coordinate by coordinate (`spectral.SpectralPosterior`, DDRM
Eq. 8) and maps back, x_{t-1} = sqrt(alpha_bar_{t-1}) V x_bar_{t-1}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Sampler, register_sampler
from .schedule import ddrm_timesteps, host_alpha_bars, sigma_of
from .spectral import SpectralPosterior, spectral_noise


@dataclass(frozen=True)
class DDRMConfig:
    """DDRM settings (DDRM Sec. 5 and its configs; RED-diff `_configs/algo/ddrm.yaml`).

    steps: 20 uniformly skipped DDIM steps (DDRM Sec. 5: "20 steps").
    eta: eta_A = eta_C = 0.85 (DDRM Sec. 5).
    eta_b: 1.0 (DDRM Sec. 5).
    """

    steps: int = 20
    eta: float = 0.85
    eta_b: float = 1.0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (0 <= self.eta <= 1 and 0 <= self.eta_b <= 1):
            raise ValueError(f"eta and eta_b must be in [0, 1], got {self.eta}, {self.eta_b}")


@register_sampler("ddrm")
class DDRM(Sampler):
    """DDRM for linear operators with an SVD and Gaussian noise; one network forward per step, no gradients."""

    Config = DDRMConfig
    PRESETS: ClassVar[dict[str, dict]] = {  # DDRM Sec. 5 (noisy tasks): eta 0.85, eta_b 1, 20 steps throughout
        "super_resolution": {},
        "deblur": {},
        "inpainting": {},
        "denoise": {},
    }
    needs_operator = "svd"
    needs_gaussian_noise = True
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 4}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 100}

    def nfe(self, prior) -> int:
        return self.config.steps

    @torch.inference_mode()
    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        svd = op.svd()
        spec = SpectralPosterior(svd, y, image_shape, op.noise.sigma)
        pairs = ddrm_timesteps(prior.num_timesteps, cfg.steps)
        alpha_bar = host_alpha_bars(prior.alphas_cumprod)  # index -1 -> alpha_bar = 1
        t_first = pairs[0][0]
        c = spec.init(spectral_noise(svd, generators, image_shape, device), sigma_of(alpha_bar[t_first]))
        x_t = alpha_bar[t_first] ** 0.5 * svd.V(c)
        for i, (t, t_next) in enumerate(pairs):
            pred = prior.predict(x_t, t)
            z = spectral_noise(svd, generators, image_shape, device)
            c = spec.step(
                svd.V_t(pred.x0_hat),
                svd.V_t(pred.eps),
                z,
                sigma_of(alpha_bar[t_next]),
                cfg.eta,
                (1 - cfg.eta**2) ** 0.5,
                cfg.eta_b,
            )
            x_t = alpha_bar[t_next] ** 0.5 * svd.V(c)
            step_hook({"i": i, "t": t, "x": x_t, "x0_hat": pred.x0_hat})
        return x_t, {}
