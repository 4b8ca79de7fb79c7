"""Analytic Gaussian-mixture priors: the exact denoiser at every noise level and the exact posterior for a
linear operator with Gaussian noise. These are the ground truth every sampler is checked against.

Prior:  p(x0) = sum_k w_k N(x0; mu_k, Sigma_k) over flattened images of `image_shape` (d = C*H*W).
Noisy marginal (VP):  p(x_t) = sum_k w_k N(x_t; a mu_k, a^2 Sigma_k + s^2 I),  a = sqrt(alpha_bar_t), s^2 = 1 - a^2.
Exact denoiser (Tweedie):  E[x0 | x_t] = sum_k r_k(x_t) (mu_k + a Sigma_k (a^2 Sigma_k + s^2 I)^-1 (x_t - a mu_k)),
with responsibilities r_k proportional to w_k N(x_t; a mu_k, a^2 Sigma_k + s^2 I). With Sigma_k = Q_k diag(lam_k) Q_k^T
every noise level is diagonal in the basis Q_k, so nothing is inverted per step.

Posterior for y = A x0 + n, n ~ N(0, sigma^2 I) (Kalman / Gaussian conditioning, no Sigma^-1 needed):
    S_k = A Sigma_k A^T + sigma^2 I,  G_k = Sigma_k A^T S_k^-1,
    mean_k = mu_k + G_k (y - A mu_k),  Cov_k = Sigma_k - G_k A Sigma_k,
    w_k(y) proportional to w_k N(y; A mu_k, S_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from posterior_diffusion.operators.base import LinearOperator, Operator
from posterior_diffusion.operators.noise import GaussianNoise

from .base import DiffusionPrior, Prediction, linear_alphas_cumprod


def _sample_mixture(weights, means, cov_sqrt, n, generator, image_shape) -> torch.Tensor:
    """n draws per row of weights (B, K), means (B, K, d), cov_sqrt (K, d, d) -> (B, n, *image_shape)."""
    b, _, d = means.shape
    k = torch.multinomial(weights, n, replacement=True, generator=generator)  # (B, n)
    z = torch.randn(b, n, d, generator=generator, dtype=means.dtype)
    x = torch.gather(means, 1, k[..., None].expand(b, n, d)) + torch.einsum("bnij,bnj->bni", cov_sqrt[k], z)
    return x.reshape(b, n, *image_shape).float()


def _float64(value) -> torch.Tensor:
    """A tensor, array or (nested) list, or a list of tensors, as a float64 tensor."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        value = torch.stack(list(value))
    return torch.as_tensor(value, dtype=torch.float64)


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of PSD matrices (..., d, d), robust to zero eigenvalues."""
    lam, q = torch.linalg.eigh(cov)
    return q @ torch.diag_embed(lam.clamp(min=0).sqrt()) @ q.transpose(-1, -2)


@dataclass
class GaussianMixturePosterior:
    """The exact posterior of a batch of measurements: for each of B measurements a K-component mixture.

    weights (B, K), means (B, K, d), covariances (K, d, d) (float64); image_shape (C, H, W).
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    image_shape: tuple[int, ...]

    @property
    def mean(self) -> torch.Tensor:
        """Posterior mean (B, C, H, W), float32."""
        return torch.einsum("bk,bkd->bd", self.weights, self.means).reshape(-1, *self.image_shape).float()

    @property
    def std(self) -> torch.Tensor:
        """Per-pixel posterior standard deviation (B, C, H, W), float32."""
        diag = torch.diagonal(self.covariances, dim1=-2, dim2=-1)  # (K, d)
        second = torch.einsum("bk,bkd->bd", self.weights, diag[None] + self.means**2)
        mean = torch.einsum("bk,bkd->bd", self.weights, self.means)
        return (second - mean**2).clamp(min=0).sqrt().reshape(-1, *self.image_shape).float()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact posterior samples per measurement: (B, n, C, H, W) float32."""
        return _sample_mixture(self.weights, self.means, _psd_sqrt(self.covariances), n, generator, self.image_shape)


class GaussianMixturePrior(DiffusionPrior):
    """p(x0) = sum_k w_k N(mu_k, Sigma_k) over images of `image_shape`, on a VP schedule.

    Args:
        weights: (K,) positive (normalised here).
        means: (K, d) or (K, C, H, W) with d = C*H*W.
        covariances: (K, d, d) symmetric positive semi-definite.
        image_shape: (C, H, W); inferred from 4-D means.
        alphas_cumprod: (T,) schedule; default the DDPM linear schedule with T = 1000.
    """

    def __init__(self, weights, means, covariances, image_shape=None, alphas_cumprod=None):
        super().__init__(linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod)
        means = _float64(means)
        if image_shape is None:
            if means.ndim != 4:
                raise ValueError("give image_shape, or means of shape (K, C, H, W)")
            image_shape = tuple(means.shape[1:])
        self.image_shape = tuple(int(s) for s in image_shape)
        d = math.prod(self.image_shape)
        means = means.reshape(means.shape[0], -1)
        weights = _float64(weights)
        covariances = _float64(covariances)
        k = means.shape[0]
        if means.shape[1] != d or weights.shape != (k,) or covariances.shape != (k, d, d):
            raise ValueError(
                f"inconsistent shapes: weights {tuple(weights.shape)}, means {tuple(means.shape)}, covariances "
                f"{tuple(covariances.shape)} for K={k} components over d={d} = prod{self.image_shape}"
            )
        if not (weights > 0).all():
            raise ValueError("mixture weights must be positive")
        if not torch.allclose(covariances, covariances.transpose(1, 2), atol=1e-10):
            raise ValueError("covariances must be symmetric")
        lam, q = torch.linalg.eigh(covariances)
        if lam.min() < -1e-8 * lam.max().clamp(min=1):
            raise ValueError("covariances must be positive semi-definite")
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("covariances", covariances)
        self.register_buffer("eigvals", lam.clamp(min=0))
        self.register_buffer("eigvecs", q)

    def check_image_shape(self, image_shape):
        if tuple(image_shape) != self.image_shape:
            raise ValueError(
                f"this Gaussian-mixture prior models images of shape {self.image_shape}, got {tuple(image_shape)}"
            )

    def default_image_shape(self):
        return self.image_shape

    def predict(self, x_t, t) -> Prediction:
        """Exact eps_hat and x0_hat = E[x0 | x_t] (computed in float64, returned as float32)."""
        t = self._timesteps(t, x_t.shape[0])
        b = x_t.shape[0]
        alpha_bar = self.alphas_cumprod[t].double()[:, None, None]  # (B, 1, 1)
        a, s2 = alpha_bar.sqrt(), 1 - alpha_bar
        x = x_t.reshape(b, 1, -1).double()
        z = torch.einsum("kdj,bkd->bkj", self.eigvecs, x - a * self.means[None])  # (B, K, d) in eigenbases
        var = alpha_bar * self.eigvals[None] + s2  # (B, K, d)
        log_r = self.weights.log()[None] - 0.5 * ((z**2 / var) + var.log()).sum(-1)
        r = torch.softmax(log_r, dim=1)  # (B, K)
        x0_k = self.means[None] + torch.einsum("kdj,bkj->bkd", self.eigvecs, a * self.eigvals[None] * z / var)
        x0_hat = torch.einsum("bk,bkd->bd", r, x0_k)
        eps = (x.squeeze(1) - a[:, 0] * x0_hat) / s2[:, 0].sqrt()
        shape = (b, *self.image_shape)
        return Prediction(eps=eps.reshape(shape).float(), x0_hat=x0_hat.reshape(shape).float())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact prior samples: (n, C, H, W) float32."""
        cov_sqrt = self.eigvecs @ torch.diag_embed(self.eigvals.sqrt()) @ self.eigvecs.transpose(1, 2)
        return _sample_mixture(self.weights[None], self.means[None], cov_sqrt, n, generator, self.image_shape)[0]

    @property
    def mean(self) -> torch.Tensor:
        """Prior mean (C, H, W) float32."""
        return (self.weights @ self.means).reshape(self.image_shape).float()

    def posterior(self, op: Operator, y: torch.Tensor) -> GaussianMixturePosterior:
        """The exact posterior p(x0 | y) for a linear `op` with Gaussian noise; y: (B, *meas) or unbatched."""
        if not isinstance(op, LinearOperator) or not isinstance(op.noise, GaussianNoise) or op.noise.sigma <= 0:
            raise ValueError("the exact posterior needs a linear operator with Gaussian noise of sigma > 0")
        op.check_image_shape(self.image_shape)
        meas_shape = op.measurement_shape(self.image_shape)
        y = y.reshape(-1, math.prod(meas_shape)).to(self.means.device, torch.float64)
        A = op.matrix(self.image_shape).to(self.means.device)  # (m, d)
        sigma2 = op.noise.sigma**2
        eye = torch.eye(A.shape[0], dtype=torch.float64, device=A.device)
        S = A @ self.covariances @ A.T + sigma2 * eye  # (K, m, m)
        L = torch.linalg.cholesky(S)
        G = torch.linalg.solve(S, A @ self.covariances).transpose(1, 2)  # (K, d, m) = Sigma A^T S^-1
        resid = y[:, None, :] - (self.means @ A.T)[None]  # (B, K, m)
        means = self.means[None] + torch.einsum("kdm,bkm->bkd", G, resid)
        covs = self.covariances - G @ A @ self.covariances
        covs = 0.5 * (covs + covs.transpose(1, 2))
        white = torch.linalg.solve_triangular(L[None], resid[..., None], upper=False)[..., 0]  # (B, K, m)
        log_det = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        log_w = self.weights.log()[None] - 0.5 * (white**2).sum(-1) - 0.5 * log_det[None]
        return GaussianMixturePosterior(torch.softmax(log_w, 1), means, covs, self.image_shape)
