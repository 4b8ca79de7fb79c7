"""DDRM's spectral machinery, shared by DDRM and GibbsDDRM (Kawar, Elad, Ermon, Song; NeurIPS 2022; arXiv:2201.11793,
Eq. (7)-(8)).

For a linear operator with an SVD A = U diag(s) V^T and Gaussian noise sigma_y, DDRM works in the scaled variable
x_bar = x_t / sqrt(alpha_bar_t), whose noise level is sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), one
spectral coordinate i of V^T x_bar at a time (reference code `efficient_generalized_steps`):

    s_i = 0 (unobserved):      x0_i + sqrt(1 - eta^2) sigma_{t-1} eps_i + eta sigma_{t-1} z
    s_i sigma_{t-1} < sigma_y:  x0_i + eta_d sigma_{t-1} (U^T y - s x0)_i / sigma_y + sqrt(1 - eta_d^2) sigma_{t-1} z
    s_i sigma_{t-1} > sigma_y:  eta_b y_bar_i + (1 - eta_b) x0_i + sqrt(sigma_{t-1}^2 - eta_b^2 sigma_y^2 / s_i^2) z

with y_bar = U^T y / s, x0 = V^T x0_hat, eps = V^T eps_hat, and eta_d = sqrt(1 - eta^2) in DDRM (GibbsDDRM's
eta_C). Complex spectral bases (the FFT of circular blurs) draw their noise as V^T of real white noise, so every
update stays the spectrum of a real image.
"""

from __future__ import annotations

import torch

from posterior_diffusion.tensor_utils import randn_stacked


def spectral_noise(svd, generators, image_shape, device) -> torch.Tensor:
    """V^T z for real white noise z (n, C, H, W), one generator per chain: white noise in the spectral basis."""
    return svd.V_t(randn_stacked(generators, image_shape, device))


class SpectralPosterior:
    """The per-coordinate quantities of one DDRM problem: singular values, U^T y and y_bar = U^T y / s.

    svd: the operator's decomposition (`op.svd()`); y: (n, *measurement_shape); sigma_y: the noise std DDRM assumes.
    """

    def __init__(self, svd, y: torch.Tensor, image_shape, sigma_y: float):
        self.svd = svd
        self.s = svd.singular_values(tuple(image_shape)).to(y.device, y.real.dtype)
        self.observed = self.s > 0
        self.s_safe = torch.where(self.observed, self.s, torch.ones_like(self.s))
        self.u_t_y = svd.U_t(y)
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
