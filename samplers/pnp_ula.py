"""PnP-ULA: plug-and-play unadjusted Langevin (Laumont, De Bortoli, Almansa, Delon, Durmus, Pereyra; SIIMS 2022;
arXiv:2103.04715), Algorithm 1, with a diffusion model as the denoiser.

    x_{k+1} = x_k + delta grad log p(y | x_k) + (alpha delta / eps) (D_eps(x_k) - x_k)
                  + (delta / lam) (Pi_C(x_k) - x_k) + sqrt(2 delta) z_k

D_eps is the MMSE denoiser at noise variance eps: with a diffusion prior, D_eps(x) = x0_hat(sqrt(a*) x, t*) at the
step t* whose variance (1 - a*) / a* is nearest to eps (and eps is then that exact value), one NFE per iteration,
no VJP. Pi_C is the projection on the box C; lam the Moreau-Yosida parameter. Defaults follow the reference
code (Marien-RENAUD/PnP_ULA_posterior_law_sensivity, `pnpula`) converted from [0, 1] to the [-1, 1] scale:
eps = (2 * 5/255)^2, alpha = 1, C = [-3, 3] (= [-1, 2] on [0, 1]),
lam = 0.5 / (2 L_y + alpha / eps), delta = (1/3) / (L_y + 1/lam + alpha / eps), with L_y = ||A||^2 / sigma^2.
The chain starts at y when y is an image of x's shape (the reference), else at A^+ y (option `init`, one of
`samplers.inits`).
Each requested sample is an independent chain: its last state is the sample, and the chain's mean and
per-pixel std after burn-in are returned in extras["chain_mean"] and extras["chain_std"].

Preconditioning (option `preconditioner="gauss_newton"`, not in the paper): a stiff likelihood (interferometric
closures: L_y ~ 3e5 on [-1, 1] images) forces delta ~ 1e-6, far too small to mix. The chain then runs the
constant-metric (preconditioned) ULA of the same target (Roberts & Stramer 2002, Methodol. Comput. Appl.
Probab. 4:337; Girolami & Calderhead 2011, JRSS B 73:123, with a position-independent metric),

    x_{k+1} = x_k + delta P grad log pi(x_k) + sqrt(2 delta) P^(1/2) z_k,   P = (J^T J + (alpha / eps) I)^-1,

with J the Jacobian of the whitened residuals r(x) (-log p(y | x) = ||r||^2 / 2) at the initial state: P^-1 is
the Gauss-Newton Hessian of -log pi there (the prior's part bounded by alpha / eps), so every direction has
curvature <= ~1 in the metric and delta is a fraction of 1. P and P^(1/2) are applied through the eigenpairs
(V, h) of J^T J: P = (I - V diag(h / (h + c)) V^T) / c, P^(1/2) = (I - V diag(1 - sqrt(c / (h + c))) V^T) / sqrt(c),
c = alpha / eps. The Moreau-Yosida term uses lam = eps / alpha. The target p_eps(x | y) is unchanged; only the
discretisation differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.tensor_utils import autograd_gradient, randn_stacked

from .base import Sampler, check_box, register_sampler
from .inits import check_init, initial_state
from .schedule import timestep_of_variance


@dataclass(frozen=True)
class PnPULAConfig:
    """PnP-ULA settings (reference code `pnpula`; Laumont et al. Sec. 4).

    steps: 10_000 Langevin iterations (the reference's default n_iter; its demos use 3e4-1e5).
    burn_in: iterations left out of the chain statistics; default steps // 10 (declared in the reference).
    thinning: every thinning-th state after burn-in enters the chain mean and std (the reference averages all).
    eps: the denoiser's noise variance on [-1, 1]; default (2 * 5/255)^2 (std 5/255 on [0, 1]).
    alpha: prior weight, 1 (the paper also uses 0.3).
    box: (low, high) of the convex set C on [-1, 1]; (-3, 3) is the reference's [-1, 2] on [0, 1].
    step_fraction: delta as this fraction of the stability bound (L_y + 1/lam + alpha/eps)^-1; reference 1/3.
    step_size: an explicit delta (overrides step_fraction).
    lipschitz: the likelihood gradient's Lipschitz constant L_y; None: ||A||^2 / sigma^2 (`norm_squared`) for
        Gaussian noise, 1 / sigma^2 for nonlinear operators; likelihoods without a sigma (Poisson, interferometric
        closures) need it given.
    init: a registered initial estimate (`samplers.inits`): "measurement" (the reference: x_0 = y when y is an
        image of x's shape, else A^+ y), "pinv" (A^+ y, singular values below 3e-2 of the largest discarded),
        "zeros", or one that an application registers.
    preconditioner: "none" (the paper) or "gauss_newton": the constant metric P of the module docstring, from
        the whitened residuals of Gaussian or interferometric likelihoods; delta = step_fraction then (the
        metric makes the drift's Lipschitz constant ~1), unless step_size is given.
    anneal_iterations: 0 (the reference). An optional warm start of this many iterations whose denoiser
        variance decreases geometrically from anneal_eps to eps (annealed Langevin, Song & Ermon 2019), so
        that chains started far away settle in the posterior's modes in the right proportions instead of the
        nearest one. Not counted in burn_in or the chain statistics.
    """

    steps: int = 10_000
    burn_in: int | None = None
    thinning: int = 1
    eps: float = (2 * 5 / 255) ** 2
    alpha: float = 1.0
    box: tuple[float, float] = (-3.0, 3.0)
    step_fraction: float = 1 / 3
    step_size: float | None = None
    lipschitz: float | None = None
    init: str = "measurement"
    preconditioner: str = "none"
    anneal_iterations: int = 0
    anneal_eps: float = 1.0

    def __post_init__(self):
        if self.steps < 1 or self.eps <= 0 or self.alpha <= 0:
            raise ValueError(f"need steps >= 1, eps > 0, alpha > 0; got {self.steps}, {self.eps}, {self.alpha}")
        if self.anneal_iterations < 0 or self.anneal_eps <= self.eps:
            raise ValueError("anneal_iterations must be >= 0 and anneal_eps > eps")
        if self.thinning < 1:
            raise ValueError(f"thinning must be >= 1, got {self.thinning}")
        if self.burn_in is not None and not 0 <= self.burn_in < self.steps:
            raise ValueError(f"burn_in must be in [0, steps), got {self.burn_in}")
        check_init(self.init)
        check_box(self.box)
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(f"unknown preconditioner {self.preconditioner!r}; valid: {', '.join(PRECONDITIONERS)}")
        if not 0 < self.step_fraction <= 1 or (self.step_size is not None and self.step_size <= 0):
            raise ValueError("step_fraction must be in (0, 1] and step_size > 0")
        if self.lipschitz is not None and self.lipschitz <= 0:
            raise ValueError(f"lipschitz must be > 0, got {self.lipschitz}")


PRECONDITIONERS = ("none", "gauss_newton")


def _gaussian_sigma(op) -> float | None:
    """The operator's Gaussian noise sigma when it is one and > 0, else None."""
    return op.noise.sigma if isinstance(op.noise, GaussianNoise) and op.noise.sigma > 0 else None


def _whitened_residuals(op, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """r(x) (B, D) with -log p(y | x) = ||r||^2 / 2 + const: the likelihood's weighted residuals (interferometry)
    or (y - A(x)) / sigma (Gaussian noise)."""
    if hasattr(op.noise, "weighted_residuals"):
        return op.noise.weighted_residuals(y, op(x))
    return ((y - op(x)) / _gaussian_sigma(op)).flatten(1)


def _gauss_newton_metric(op, y: torch.Tensor, x: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of J^T J, J = dr/dx (D, d) at x (B, *image_shape): eigenvectors V (B, d, k) and eigenvalues
    h (B, k) > 1e-3 c (the others change P by less than 0.1 %), zero-padded to a common k; computed once per
    distinct (y, x) pair, in float64 from the smaller of J J^T and J^T J."""
    pairs = torch.cat([y.flatten(1).double(), x.flatten(1).double()], dim=1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    found = []
    for k in range(len(unique)):
        i = int((inverse == k).nonzero()[0])

        def residuals(v, i=i):
            return _whitened_residuals(op, y[i : i + 1], v.view(1, *x.shape[1:])).flatten()

        with torch.enable_grad():
            jac = torch.func.jacrev(residuals)(x[i].flatten().detach()).double()
        if jac.shape[0] <= jac.shape[1]:  # J J^T = U h U^T, V = J^T U / sqrt(h)
            h, u = torch.linalg.eigh(jac @ jac.T)
            keep = h > 1e-3 * c
            h, v = h[keep], jac.T @ u[:, keep] / h[keep].sqrt()
        else:
            h, v = torch.linalg.eigh(jac.T @ jac)
            keep = h > 1e-3 * c
            h, v = h[keep], v[:, keep]
        found.append((v.float(), h.float()))
    rank = max(len(h) for _, h in found)
    vecs = torch.stack([torch.nn.functional.pad(v, (0, rank - v.shape[1])) for v, _ in found])
    vals = torch.stack([torch.nn.functional.pad(h, (0, rank - len(h))) for _, h in found])
    return vecs[inverse], vals[inverse]


@register_sampler("pnp_ula")
class PnPULA(Sampler):
    """PnP-ULA for differentiable operators, Gaussian noise (others with `lipschitz`); one forward per step."""

    Config = PnPULAConfig
    PRESETS: ClassVar[dict[str, dict]] = {
        "deblur": {"alpha": 1.0},  # pnpula_experiment: alpha 1
        "deblur_strong_prior": {"alpha": 0.3},  # Laumont et al. also report alpha 0.3
    }
    step_option = "step_fraction"
    needs_operator = "differentiable"
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 4, "anneal_iterations": 2}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 2000, "anneal_iterations": 1000}

    def nfe(self, prior) -> int:
        return self.config.anneal_iterations + self.config.steps

    def check(self, prior, op):
        super().check(prior, op)
        self.check_noise(op)
        check_init(self.config.init, op)

    def check_noise(self, op) -> None:
        """The step needs L_y: from a Gaussian sigma, or given as `lipschitz` for any other likelihood; the
        Gauss-Newton metric needs whitened residuals (Gaussian or interferometric likelihoods)."""
        if self.config.preconditioner == "gauss_newton":
            if _gaussian_sigma(op) is None and not hasattr(op.noise, "weighted_residuals"):
                raise ValueError(
                    f"preconditioner='gauss_newton' needs Gaussian noise with noise_sigma > 0 or an interferometric "
                    f"likelihood; '{op.name}' has {op.noise.name} noise"
                )
            return
        if self.config.lipschitz is None and _gaussian_sigma(op) is None:
            raise ValueError(
                f"{self.name} derives its step from Gaussian measurement noise with noise_sigma > 0; for '{op.name}' "
                f"with {op.noise.name} noise pass lipschitz=... (the likelihood gradient's Lipschitz constant)"
            )

    def step_sizes(self, prior, op, image_shape, eps: float | None = None) -> dict[str, float]:
        """t*, eps (exact at t*), L_y, lam and delta for this problem at noise variance eps (default cfg.eps)."""
        return self._parameters(prior, self._likelihood_lipschitz(op, image_shape), eps)

    def _likelihood_lipschitz(self, op, image_shape) -> float:
        """L_y: the config's, else ||A||^2 / sigma^2 (exact with an SVD, else power iteration; 1 / sigma^2 for
        nonlinear operators)."""
        if self.config.lipschitz is not None:
            return self.config.lipschitz
        self.check_noise(op)
        if self.config.preconditioner == "gauss_newton":
            return 0.0  # the metric absorbs the likelihood's curvature
        return (op.norm_squared(tuple(image_shape)) if op.is_linear else 1.0) / op.noise.sigma**2

    def _parameters(self, prior, l_y: float, eps: float | None = None) -> dict[str, float]:
        cfg = self.config
        t_star = timestep_of_variance(prior.alphas_cumprod, cfg.eps if eps is None else eps)
        a = float(prior.alphas_cumprod[t_star])
        eps = (1 - a) / a
        if cfg.preconditioner == "gauss_newton":  # curvature ~1 in the metric (module docstring)
            lam, delta = eps / cfg.alpha, cfg.step_size or cfg.step_fraction
        else:
            lam = 0.5 / (2 * l_y + cfg.alpha / eps)
            delta = cfg.step_size or cfg.step_fraction / (l_y + 1 / lam + cfg.alpha / eps)
        return {"t_star": t_star, "alpha_bar": a, "eps": eps, "L_y": l_y, "lam": lam, "delta": delta}

    def _schedule(self, prior, op, image_shape) -> list[dict[str, float]]:
        """Per-iteration parameters: the annealing phase (eps geometric from anneal_eps down), then the chain.
        ||A||^2 is computed once for all of them."""
        cfg = self.config
        l_y = self._likelihood_lipschitz(op, image_shape)
        target = self._parameters(prior, l_y)
        ramp = torch.logspace(math.log10(cfg.anneal_eps), math.log10(target["eps"]), cfg.anneal_iterations).tolist()
        return [self._parameters(prior, l_y, e) for e in ramp] + [target] * cfg.steps

    @staticmethod
    def _likelihood_gradient(op, y: torch.Tensor, x: torch.Tensor, sigma: float | None) -> torch.Tensor:
        """grad_x -log p(y | x) (n, C, H, W): the operator's residual gradient over sigma^2 for Gaussian noise
        (closed form for linear operators: A^T (A x - y) / sigma^2), else autograd of the likelihood."""
        if sigma is not None:
            return op.residual_gradient(y, x) / sigma**2
        return autograd_gradient(lambda v: op.noise.neg_log_likelihood(y, op(v)), x)

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        schedule = self._schedule(prior, op, image_shape)
        burn_in = cfg.anneal_iterations + (cfg.steps // 10 if cfg.burn_in is None else cfg.burn_in)
        with torch.no_grad():
            x = initial_state(cfg.init, op, y, image_shape)
        metric = None
        if cfg.preconditioner == "gauss_newton":  # P = (V h V^T + c I)^-1 at x_0, c = alpha / eps
            c = cfg.alpha / schedule[-1]["eps"]
            vecs, vals = _gauss_newton_metric(op, y, x, c)
            w = (vals / (vals + c))[..., None]  # P g = (g - V (w V^T g)) / c
            s = (1 - (c / (vals + c)).sqrt())[..., None]  # P^(1/2) z = (z - V (s V^T z)) / sqrt(c)

            def metric(v, coef, scale):
                flat = v.flatten(1)[..., None]
                return ((flat - vecs @ (coef * (vecs.mT @ flat))) / scale).view_as(v)

        total = torch.zeros_like(x)
        total_sq = torch.zeros_like(x)
        low, high = cfg.box
        sigma = _gaussian_sigma(op)
        for k, p in enumerate(schedule):
            delta, lam, eps = p["delta"], p["lam"], p["eps"]
            grad_nll = self._likelihood_gradient(op, y, x, sigma)
            with torch.no_grad():
                with torch.inference_mode():  # fewer dispatch layers than no_grad: the network is host-bound at batch 1
                    denoised = prior.predict(p["alpha_bar"] ** 0.5 * x, p["t_star"]).x0_hat
                z = randn_stacked(generators, image_shape, device)
                if metric is None:  # Algorithm 1, its terms in x gathered into one coefficient (fewer kernels)
                    prior_weight, box_weight = cfg.alpha * delta / eps, delta / lam
                    x = (
                        x.clamp(low, high)
                        .mul_(box_weight)
                        .add_(x, alpha=1 - prior_weight - box_weight)
                        .add_(grad_nll, alpha=-delta)
                        .add_(denoised, alpha=prior_weight)
                        .add_(z, alpha=(2 * delta) ** 0.5)
                    )
                else:  # the same drift times P, noise P^(1/2) z (covariance P)
                    drift = -grad_nll + (cfg.alpha / eps) * (denoised - x) + (x.clamp(low, high) - x) / lam
                    x = x + delta * metric(drift, w, c) + (2 * delta) ** 0.5 * metric(z, s, c**0.5)
                if k >= burn_in and (k - burn_in) % cfg.thinning == 0:
                    total += x
                    total_sq.addcmul_(x, x)
            step_hook({"i": k, "t": p["t_star"], "x": x, "x0_hat": denoised})
        count = len(range(burn_in, len(schedule), cfg.thinning))
        mean = total / count
        std = (total_sq / count - mean.square()).clamp(min=0).sqrt()
        return x, {"chain_mean": mean, "chain_std": std}
