"""DAPS: Decoupled Annealing Posterior Sampling (Zhang, Chu, Berner, Meng, Anandkumar, Song; CVPR 2025;
arXiv:2407.01521), Algorithm 1, as the reference code (zhangbingliang2019/DAPS, `sampler.py` class DAPS,
`cores/mcmc.py` `MCMCSampler` with mc_algo "langevin" and prior_solver "gaussian", `cores/scheduler.py`).

In the variance-exploding variable x_t = x_0 + sigma_t eps, over N decreasing noise levels sigma_0 > ... > sigma_{N-1}
(EDM's poly-7 grid from sigma_max to sigma_min, then 0), starting from x_{t_0} = sigma_0 * N(0, I):

    1. x0_hat = PF-ODE(x_t): `ode_steps` Euler steps of dx/dsigma = (x - D(x, sigma)) / sigma from sigma_i down to
       ode_sigma_min on a poly-7 grid, one network evaluation each, no gradients; x0_hat is the state at
       ode_sigma_min (not denoised further), as the reference.
    2. x0_y ~ p(x_0 | x_t, y) ~ N(x_0; x0_hat, r_t^2 I) p(y | x_0), r_t = sigma_i, by `langevin_steps` steps of
       x <- x + eta_i grad log pi(x) + sqrt(2 eta_i) z from x = x0_hat, with
       log pi(x) = -||y - A(x)||^2 / tau^2 - ||x - x0_hat||^2 / (2 sigma_i^2)
       and eta_i = lr (1 + i / (N + 1) (lr_min_ratio - 1)) (linear decay; the reference's ratio step / (N + 1)).
       The gradient of the data term goes through the operator only, never the network.
    3. x_{t_{i+1}} = x0_y + sigma_{i+1} z (sigma_N = 0: the last x0_y is the sample).

NFE = steps x ode_steps: DAPS-1K is 200 x 5 (reference `configs/sampler/edm_daps.yaml` and `commands/pixel_*.sh`,
"DAPS 1K"), DAPS-4K is 400 x 10 (the paper's nonlinear-task budget, Sec. 5; preset "daps_4k").

VP priors: D(x, sigma) = x0_hat(sqrt(alpha_bar_t) x, t) of the step t whose sigma_t = sqrt(1 - alpha_bar_t) /
sqrt(alpha_bar_t) is nearest sigma (EDM's VP preconditioning: x_VP = sqrt(alpha_bar) x_VE).

Departures from the reference code:
- Every noise level (annealing levels and ODE grid points) is rounded to the nearest step of the prior's discrete
  schedule, so the network always sees a state at the noise level it was trained for (EDM's `round_sigma` for
  discrete-time models). The reference feeds its ADM networks the continuous VP time (M - 1) t(sigma) instead;
  the difference is below one step of the schedule (about 1 % in sigma at large sigma, less below).
- `tau=None` replaces the reference's fixed data weight ||y - A(x)||^2 / tau^2 by the operator's own likelihood,
  -log p(y | x) (||y - A x||^2 / (2 sigma_y^2) for Gaussian noise): the target of step 2 is then the exact
  p(x_0 | x_t, y) of the Gaussian approximation. The exact-posterior report uses it; the reference's tau = 0.01
  weighs the data as if sigma_y were 0.0071 on [-1, 1], 7x less than the papers' 0.05.
- With a linear operator on a pixel prior the Langevin step is capped where it would diverge:
  eta_i <= STABLE_STEP / (L + 1 / sigma_i^2), L the data term's Lipschitz constant (2 ||A||^2 / tau^2, or
  ||A||^2 / sigma_y^2 with tau=None; `Operator.norm_squared`), since x <- x + eta grad log pi grows without bound
  once eta times the largest curvature passes 2. The reference's gaussian_blur setting (lr 1e-4, tau 0.01) has
  eta L = 2 ||A||^2, on that edge; our reflect-padded 61-px Gaussian blur has ||A||^2 = 1.022, and DAPS-1K diverged
  on it in its first level. Steps below the cap are untouched (of the other reference settings here only
  inpainting_rand's, at eta L = 2 exactly, is capped, and only in its first levels).
- Other noise models (Poisson) take the data term from the noise model's residual norm (the reference has only
  Gaussian noise): ||r||^2 / tau^2 with r the noise model's weighted residual.

LatentDAPS (the same paper; reference class `LatentDAPS`): with a latent prior the annealing, the PF-ODE and the
Monte Carlo steps run on latents z, the data term is ||y - A(D(z))||^2 / tau^2 with the gradient through the decoder
D (the reference's `LatentWrapper`, which clips that gradient elementwise to [-1, 1] before dividing by tau^2, as
here; tau=None: the operator's likelihood, unclipped), and the sample is D(z_0). `mc_algo="hmc"` is the
reference's damped Hamiltonian variant (`cores/mcmc.py`: v <- m v + sqrt(eta) grad log pi + sqrt(2 (1 - m)) z,
x <- x + sqrt(eta) v, v_0 ~ N(0, I)), which its LDM and Stable Diffusion configs use; preset `ldm` is its LDM
setting for down_sampling (50 levels from sigma 10 to 0.1, 2 ODE steps, `commands/ldm_ffhq.sh`;
`configs/task/down_sampling.yaml`, group `ldm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.tensor_utils import autograd_gradient, randn_stacked

from .base import Sampler, register_sampler
from .schedule import sigma_of, timestep_of_variance


@dataclass(frozen=True)
class DAPSConfig:
    """DAPS settings (reference `configs/sampler/edm_daps.yaml` and `configs/task/*.yaml`, group `pixel`).

    steps: annealing levels N, 200 (`annealing_scheduler_config.num_steps`; DAPS-1K).
    ode_steps: Euler steps of the PF-ODE per level, 5 (`diffusion_scheduler_config.num_steps`; DAPS-1K).
    sigma_max, sigma_min: the annealing grid's range, 100 and 0.1 (`annealing_scheduler_config`).
    ode_sigma_min: where each PF-ODE stops, 0.01 (`diffusion_scheduler_config.sigma_min`).
    rho: the grids' polynomial order, 7 (`timestep: 'poly-7'`, EDM's rho).
    langevin_steps: Langevin steps per level, 100 (`mcmc_sampler_config.num_steps`, every pixel task but
        nonlinear_blur's 200).
    lr: the Langevin step eta_0, 1e-4 (`mcmc_sampler_config.lr` of down_sampling, gaussian_blur, inpainting_rand;
        5e-5 for box inpainting, motion blur and phase retrieval, 2e-5 for hdr: the presets).
    lr_min_ratio: eta decays linearly to this fraction of lr over the levels, 0.01.
    tau: the data term's scale, ||y - A(x)||^2 / tau^2, 0.01 (every task config); None: the operator's likelihood
        -log p(y | x) (module docstring).
    mc_algo: "langevin" (the pixel task configs) or "hmc" (damped HMC, the reference's LDM / SD configs).
    momentum: HMC's damping m, 0.9 (`MCMCSampler` default; the task configs tune it).
    """

    steps: int = 200
    ode_steps: int = 5
    sigma_max: float = 100.0
    sigma_min: float = 0.1
    ode_sigma_min: float = 0.01
    rho: float = 7.0
    langevin_steps: int = 100
    lr: float = 1e-4
    lr_min_ratio: float = 0.01
    tau: float | None = 0.01
    mc_algo: str = "langevin"
    momentum: float = 0.9

    def __post_init__(self):
        if self.steps < 1 or self.ode_steps < 1 or self.langevin_steps < 0:
            raise ValueError(
                f"need steps >= 1, ode_steps >= 1, langevin_steps >= 0; got {self.steps}, {self.ode_steps}, "
                f"{self.langevin_steps}"
            )
        if not 0 < self.ode_sigma_min <= self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < ode_sigma_min <= sigma_min < sigma_max; got {self.ode_sigma_min}, {self.sigma_min}, "
                f"{self.sigma_max}"
            )
        if not (self.lr > 0 and 0 < self.lr_min_ratio <= 1 and self.rho > 0):
            raise ValueError(f"need lr > 0, 0 < lr_min_ratio <= 1, rho > 0; got {self.lr}, {self.lr_min_ratio}")
        if self.mc_algo not in ("langevin", "hmc") or not 0 <= self.momentum < 1:
            raise ValueError(
                f"need mc_algo 'langevin' or 'hmc' and 0 <= momentum < 1; got {self.mc_algo!r}, {self.momentum}"
            )
        if self.tau is not None and not (isinstance(self.tau, int | float) and self.tau > 0):
            raise ValueError(
                f"tau must be > 0 or None (the operator's likelihood; tau=null on the command line), got {self.tau!r}"
            )


STABLE_STEP = 1.9  # the largest eta x curvature a Langevin step may take (2 diverges; module docstring)


def poly_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> list[float]:
    """n noise levels from sigma_max to sigma_min (both included; n = 1: sigma_max) on EDM's grid
    (sigma_max^(1/rho) + r (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, r evenly spaced in [0, 1]."""
    r = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return ((a + r * (b - a)) ** rho).tolist()


@dataclass
class _Level:
    """One annealing level: its (rounded) sigma and step, the PF-ODE's steps and sigmas (ode_steps + 1 sigmas, the
    last one where the ODE stops), the Langevin step eta and the next level's sigma (0 after the last)."""

    sigma: float
    ode_t: list[int]
    ode_sigma: list[float]
    eta: float
    sigma_next: float


@register_sampler("daps")
class DAPS(Sampler):
    """DAPS for any differentiable operator and a pixel prior; ode_steps network forwards per level, no VJP."""

    Config = DAPSConfig
    PRESETS: ClassVar[dict[str, dict]] = {
        # budgets: annealing levels x ODE steps = NFE
        "daps_1k": {"steps": 200, "ode_steps": 5},  # configs/sampler/edm_daps.yaml, commands/pixel_ffhq.sh
        "daps_4k": {"steps": 400, "ode_steps": 10},  # the paper's budget for nonlinear tasks (Sec. 5)
        # the reference's task configs (configs/task/<name>.yaml, group `pixel`; tau 0.01, lr_min_ratio 0.01)
        "down_sampling": {"lr": 1e-4},
        "inpainting": {"lr": 5e-5},
        "inpainting_rand": {"lr": 1e-4},
        "gaussian_blur": {"lr": 1e-4},
        "motion_blur": {"lr": 5e-5},
        "phase_retrieval": {"lr": 5e-5},
        "hdr": {"lr": 2e-5},
        "nonlinear_blur": {"lr": 1e-5, "langevin_steps": 200},
        # LatentDAPS: commands/ldm_ffhq.sh (50 levels x 2 ODE steps; sigma 10 -> 0.1 as the latent sampler configs),
        # configs/task/down_sampling.yaml group `ldm` (HMC)
        "ldm": {
            "steps": 50,
            "ode_steps": 2,
            "sigma_max": 10.0,
            "mc_algo": "hmc",
            "langevin_steps": 24,
            "lr": 1.35e-4,
            "lr_min_ratio": 0.023,
            "momentum": 0.86,
        },
    }
    needs_space = "any"
    needs_operator = "differentiable"
    step_option = "lr"
    weighs_noise_level = False  # the default tau = 0.01 fixes the data weight whatever sigma_y (tau=None weighs it)
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 3, "ode_steps": 2, "langevin_steps": 2}
    # the operator's likelihood (tau=None); x0_hat from one ODE step (the Tweedie mean: the reference's 5 steps
    # over-disperse, assets/bench/exact_posteriors/README.md); a step that mixes the exact cases' Gaussians in 40
    # steps, 8e-3 -> 8e-5
    EXACT_OPTIONS: ClassVar[dict | None] = {
        "steps": 200,
        "ode_steps": 1,
        "langevin_steps": 40,
        "lr": 8e-3,
        "tau": None,
    }

    def nfe(self, prior) -> int:
        return self.config.steps * self.config.ode_steps

    def own_work(self, prior, op, y, x0):
        """The Langevin steps' data gradients (through the operator), langevin_steps per level."""
        return (
            (lambda v: self.data_gradient(op, y, v, prior)),
            self.config.steps * self.config.langevin_steps,
            "Langevin",
        )

    def check(self, prior, op) -> None:
        super().check(prior, op)
        if self.config.tau is None and not _has_likelihood(op):
            raise ValueError(
                f"daps with tau=None uses the operator's likelihood, which '{op.name}' with noise_sigma=0 does not "
                "have; give tau (e.g. tau=0.01, the reference's)"
            )

    def levels(self, prior, lipschitz: float = 0.0) -> list[_Level]:
        """The annealing levels on this prior's schedule (host floats, computed once per run); `lipschitz`: the data
        term's Lipschitz constant L where known (0: unknown), which caps eta (module docstring)."""
        cfg = self.config
        alphas_cumprod = prior.alphas_cumprod.double().cpu()

        def rounded(sigma: float) -> tuple[int, float]:
            t = timestep_of_variance(alphas_cumprod, sigma**2)
            return t, sigma_of(float(alphas_cumprod[t]))

        # the reference's grid: N + 1 poly-7 points from sigma_max to sigma_min, the last one replaced by 0
        sigmas = [rounded(s)[1] for s in poly_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.steps + 1, cfg.rho)[:-1]]
        out = []
        for i, sigma in enumerate(sigmas):
            grid = [rounded(s) for s in poly_sigmas(sigma, cfg.ode_sigma_min, cfg.ode_steps + 1, cfg.rho)]
            eta = cfg.lr * (1 + i / (cfg.steps + 1) * (cfg.lr_min_ratio - 1))
            if lipschitz:
                eta = min(eta, STABLE_STEP / (lipschitz + 1 / sigma**2))
            sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            out.append(_Level(sigma, [t for t, _ in grid], [s for _, s in grid], eta, sigma_next))
        return out

    def lipschitz(self, prior, op, image_shape) -> float:
        """The data term's Lipschitz constant for Langevin steps on a linear operator with a pixel prior (2 ||A||^2 /
        tau^2, or ||A||^2 / sigma_y^2 for tau=None) with Gaussian noise; 0 where unknown (other cases, HMC)."""
        cfg = self.config
        if not (op.is_linear and isinstance(op.noise, GaussianNoise)) or prior.space == "latent":
            return 0.0
        if cfg.mc_algo != "langevin" or (cfg.tau is None and op.noise.sigma == 0):
            return 0.0
        scale = 2 / cfg.tau**2 if cfg.tau is not None else 1 / op.noise.sigma**2
        return scale * op.norm_squared(tuple(image_shape))

    def data_gradient(self, op, y: torch.Tensor, x: torch.Tensor, prior=None) -> torch.Tensor:
        """grad_x of the data term (n, *state): ||r||^2 / tau^2 (the reference's op.error / tau^2, r the noise
        model's residual), or -log p(y | x) for tau=None; through the operator only (closed form when linear).
        With a latent `prior`, x is a latent and the gradient goes through the decoder (clipped to [-1, 1] before
        the division by tau^2, as the reference's LatentWrapper)."""
        tau = self.config.tau
        if prior is not None and prior.space == "latent":
            if tau is None:
                return autograd_gradient(lambda z: op.noise.neg_log_likelihood(y.clone(), op(prior.to_image(z))), x)
            grad = autograd_gradient(lambda z: op.residual_norm(y.clone(), prior.to_image(z)).square(), x)
            return grad.clamp_(-1, 1).div_(tau**2)
        if tau is not None:
            return op.residual_gradient(y, x).mul_(2 / tau**2)
        if isinstance(op.noise, GaussianNoise):
            return op.residual_gradient(y, x).div_(op.noise.sigma**2)
        return autograd_gradient(lambda v: op.noise.neg_log_likelihood(y.clone(), op(v)), x)

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        shape = prior.state_shape(image_shape)  # latents for a latent prior (LatentDAPS)
        alpha_bar = prior.alphas_cumprod.double().cpu()
        levels = self.levels(prior, self.lipschitz(prior, op, image_shape))
        x_t = randn_stacked(generators, shape, device) * levels[0].sigma
        for i, level in enumerate(levels):
            # 1. x0_hat: Euler steps of the PF-ODE from sigma_i to ode_sigma_min, x <- D + (s_next / s) (x - D)
            x = x_t
            with torch.inference_mode():
                for j, t in enumerate(level.ode_t[:-1]):
                    denoised = prior.predict(x * float(alpha_bar[t]) ** 0.5, t).x0_hat
                    x = denoised + (level.ode_sigma[j + 1] / level.ode_sigma[j]) * (x - denoised)
            x0_hat = x.clone()  # a normal tensor: the Langevin chain updates it in place
            # 2. Langevin dynamics (or damped HMC) on N(x0; x0_hat, sigma_i^2) p(y | x0), from x0_hat
            x0 = x0_hat.clone()
            eta, inv_var = level.eta, 1 / level.sigma**2
            velocity = randn_stacked(generators, shape, device) if cfg.mc_algo == "hmc" else None
            for _ in range(cfg.langevin_steps):
                z = randn_stacked(generators, shape, device)
                grad = self.data_gradient(op, y, x0, prior)
                if velocity is not None:  # v <- m v + sqrt(eta) grad log pi + sqrt(2 (1 - m)) z; x <- x + sqrt(eta) v
                    with torch.no_grad():
                        score = (x0_hat - x0).mul_(inv_var).sub_(grad)
                        velocity.mul_(cfg.momentum).add_(score, alpha=eta**0.5).add_(
                            z, alpha=(2 * (1 - cfg.momentum)) ** 0.5
                        )
                        x0 = x0 + eta**0.5 * velocity
                    continue
                with torch.no_grad():
                    # x0 + eta (-grad + (x0_hat - x0) / sigma^2) + sqrt(2 eta) z
                    x0 = (
                        x0.mul(1 - eta * inv_var)
                        .add_(x0_hat, alpha=eta * inv_var)
                        .add_(grad, alpha=-eta)
                        .add_(z, alpha=(2 * eta) ** 0.5)
                    )
            # 3. re-noise to the next level
            x_t = x0 + level.sigma_next * randn_stacked(generators, shape, device) if level.sigma_next else x0
            step_hook(
                {
                    "i": i,
                    "t": level.ode_t[0],
                    "sigma": level.sigma,
                    "x": x0,
                    "x0_hat": x0_hat,
                    "nfe": len(level.ode_t) - 1,
                }
            )
        with torch.no_grad():
            return prior.to_image(x0), {}


def _has_likelihood(op) -> bool:
    """Whether the operator's noise model gives a proper likelihood (not noiseless Gaussian data)."""
    return not (isinstance(op.noise, GaussianNoise) and op.noise.sigma == 0)
