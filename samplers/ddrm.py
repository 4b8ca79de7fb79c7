"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song; NeurIPS 2022; arXiv:2201.11793), Eq. (7)-(8).

A DDIM-like sampler in the spectral domain of A = U diag(s) V^T, with no gradients. In the scaled variable
x_bar = x_t / sqrt(alpha_bar_t) with noise level sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), each
spectral coordinate i of V^T x_bar_{t-1} is drawn as (reference code `efficient_generalized_steps`):

    s_i = 0 (unobserved):          x0_i + sqrt(1 - eta^2) sigma_{t-1} eps_i + eta sigma_{t-1} z
    s_i sigma_{t-1} < sigma_y:      x0_i + sqrt(1 - eta^2) sigma_{t-1} (U^T y - s x0)_i / sigma_y + eta sigma_{t-1} z
    s_i sigma_{t-1} > sigma_y:      eta_b y_bar_i + (1 - eta_b) x0_i + sqrt(sigma_{t-1}^2 - eta_b^2 sigma_y^2 / s_i^2) z

with y_bar = U^T y / s, x0 = V^T x0_hat, eps = V^T eps_hat. x_T is drawn from q(x_T | y) (DDRM Eq. 7), and
x_{t-1} = sqrt(alpha_bar_{t-1}) V x_bar_{t-1}. Complex spectral bases (the FFT of circular blurs) draw their
noise as V^T of real white noise, so every update stays the spectrum of a real image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.tensor_utils import randn_stacked

from .base import NonFiniteGuard, Sampler, register_sampler


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


def ddrm_timesteps(num_train_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_next) pairs, descending, on DDRM's uniform skip grid range(0, T, T // steps); t_next = -1 is x_0."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    seq = list(range(0, num_train_timesteps, num_train_timesteps // steps))[:steps]
    return list(zip(reversed(seq), reversed([-1, *seq[:-1]]), strict=False))


def spectral_noise(op, generators, image_shape, device) -> torch.Tensor:
    """V^T z for real white noise z (n, C, H, W), one generator per chain: white noise in the spectral basis."""
    return op.V_t(randn_stacked(generators, image_shape, device))


class SpectralPosterior:
    """The per-coordinate quantities of one DDRM problem: singular values, U^T y and y_bar = U^T y / s."""

    def __init__(self, op, y: torch.Tensor, image_shape, sigma_y: float):
        self.op = op
        self.s = op.singular_values(tuple(image_shape)).to(y.device, y.real.dtype)
        self.observed = self.s > 0
        self.s_safe = torch.where(self.observed, self.s, torch.ones_like(self.s))
        self.u_t_y = op.U_t(y)
        self.y_bar = torch.where(self.observed, self.u_t_y / self.s_safe, torch.zeros_like(self.u_t_y))
        self.sigma_y = sigma_y

    def init(self, z: torch.Tensor, sigma_T: float) -> torch.Tensor:
        """x_bar_T ~ q(x_T | y) in the spectral domain (DDRM Eq. 7)."""
        large = self.s * sigma_T > self.sigma_y
        resid = (sigma_T**2 - (self.sigma_y / self.s_safe) ** 2).clamp(min=0).sqrt()
        return torch.where(large, self.y_bar + resid * z, sigma_T * z)

    def step(
        self,
        c0: torch.Tensor,
        c_eps: torch.Tensor,
        z: torch.Tensor,
        sigma_next: float,
        eta: float,
        eta_data: float,
        eta_b: float,
    ) -> torch.Tensor:
        """V^T x_bar_{t-1} from V^T x0_hat, V^T eps_hat and white spectral noise z (DDRM Eq. 8).

        eta: noise share on unobserved coordinates; eta_data: weight of the measurement residual on observed
        coordinates less noisy than y (DDRM: sqrt(1 - eta^2); GibbsDDRM's eta_C); eta_b: weight of y_bar on
        coordinates noisier than y.
        """
        std = sigma_next * eta
        missing = c0 + (sigma_next**2 - std**2) ** 0.5 * c_eps + std * z
        after = self.observed & (self.s * sigma_next < self.sigma_y)
        residual = (self.u_t_y - self.s * c0) / max(self.sigma_y, 1e-12)
        less_noisy = c0 + eta_data * sigma_next * residual + (1 - eta_data**2) ** 0.5 * sigma_next * z
        before = self.observed & (self.s * sigma_next > self.sigma_y)
        resid = (sigma_next**2 - (eta_b * self.sigma_y / self.s_safe) ** 2).clamp(min=0).sqrt()
        noisier = eta_b * self.y_bar + (1 - eta_b) * c0 + resid * z
        return torch.where(after, less_noisy, torch.where(before, noisier, missing))


def sigma_of(alpha_bar: float) -> float:
    """sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), the noise level of x_t / sqrt(alpha_bar_t)."""
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


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

    def nfe(self, prior) -> int:
        return self.config.steps

    def check(self, prior, op):
        super().check(prior, op)
        if not isinstance(op.noise, GaussianNoise):
            raise ValueError(f"{self.name} needs Gaussian measurement noise (noise='gaussian'), got '{op.noise.name}'")

    @torch.inference_mode()
    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        spec = SpectralPosterior(op, y, image_shape, op.noise.sigma)
        pairs = ddrm_timesteps(prior.num_timesteps, cfg.steps)
        alpha_bar = [*prior.alphas_cumprod.double().cpu().tolist(), 1.0]  # index -1 -> alpha_bar = 1
        guard = NonFiniteGuard(device)
        t_first = pairs[0][0]
        c = spec.init(spectral_noise(op, generators, image_shape, device), sigma_of(alpha_bar[t_first]))
        x_t = alpha_bar[t_first] ** 0.5 * op.V(c)
        for i, (t, t_next) in enumerate(pairs):
            pred = prior.predict(x_t, t)
            z = spectral_noise(op, generators, image_shape, device)
            c = spec.step(
                op.V_t(pred.x0_hat),
                op.V_t(pred.eps),
                z,
                sigma_of(alpha_bar[t_next]),
                cfg.eta,
                (1 - cfg.eta**2) ** 0.5,
                cfg.eta_b,
            )
            x_t = alpha_bar[t_next] ** 0.5 * op.V(c)
            guard.update(i, x_t)
            step_hook({"i": i, "t": t, "x": x_t, "x0_hat": pred.x0_hat})
        guard.check()
        return x_t, {}
