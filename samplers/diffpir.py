"""DiffPIR: Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu, Zhang, Liang, Cao, Wen, Timofte,
Van Gool; CVPRW (NTIRE) 2023; arXiv:2305.08995), Algorithm 1, as the reference code (yuanzhi-zhu/DiffPIR,
`main_ddpir_deblur.py`, `main_ddpir_sisr.py`, `main_ddpir_inpainting.py`, `configs/*.yaml`).

Half-quadratic splitting inside a DDPM chain, over `steps` timesteps t_0 > t_1 > ... > 0 on the reference's
"quad" grid (t = T - 1 - floor(sqrt(s)), s evenly spaced in [0, T^2], the last one T - 1), from x_T ~ N(0, I):

    1. x0_hat = clip(E[x_0 | x_t], -1, 1)                 (the prior's denoiser; clip_denoised=True in `model_fn`)
    2. x0 = argmin_x ||y - A x||^2 / (2 sigma_y^2) + rho_t / 2 ||x - x0_hat||^2        (`op.prox`, linear A)
       rho_t = lambda / (4 sigma_bar_t^2),  sigma_bar_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t).
       The reference solves argmin ||y - H x||^2 + rho'_t ||x - x0_hat||^2 on [0, 1] images with
       rho'_t = lambda sigma_n^2 / sigma_bar_t^2 and sigma_n its noise std on [0, 1] (sigma_y / 2): the same
       problem, rho'_t = rho_t sigma_y^2. sigma_n is floored at 0.001 (sigma_y at 0.002), as the reference.
       Nonlinear A (the paper's Sec. 3.3, the reference's `sub_1_analytic=False`): one gradient step
       x0 = x0_hat - grad ||y - A(x0_hat)||^2 / (2 sigma_y^2) / (4 rho_t), the reference's step (its residual on
       the [0, 1] scale makes it a quarter of the closed form's linearisation), through the operator only.
    3. eps_hat = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)
       x_{t-1} = sqrt(alpha_bar_{t-1}) x0 + sqrt(1 - alpha_bar_{t-1}) (sqrt(1 - zeta) eps_hat + sqrt(zeta) z).
On the last step (t = 0) only step 1 runs. NFE = steps (100 in the paper's tables), no VJP.

Departures from the reference code:
- x_T is pure noise; the reference starts from sqrt(alpha_bar_T) A^T-ish upsampled y + noise, whose y part is
  scaled by 0.006 at T - 1.
- The result is the last step's x0_hat; the reference returns the state x_0 itself, which differs from it by the
  noise sqrt(1 - alpha_bar_0) = 0.01 (its last network call is unused).
- Gaussian noise only (the data step is the Gaussian likelihood's proximal map, as the paper).
- The nonlinear gradient step is clipped to [-1, 1]: at large t its length sigma_bar_t^2 / (lambda sigma_y^2)
  reaches 1e6 and throws x0 far out of range; the reference carries that x0 into x_{t-1} (|x| ~ 1e4) and relies
  on the next denoiser output being clipped, which our divergence guard stops instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.tensor_utils import randn_stacked

from .base import Sampler, register_sampler

SIGMA_N_FLOOR = 0.002  # the reference's max(0.001, noise_level_img) on [0, 1], on [-1, 1]


@dataclass(frozen=True)
class DiffPIRConfig:
    """DiffPIR settings (reference `main_ddpir_*.py` experiment loops and `configs/*.yaml`).

    steps: network evaluations, 100 (`iter_num`; the paper's tables use NFE 100).
    lam: lambda, 7 (`main_ddpir_deblur.py`: lambda_ 1 x range(7, 8)); the presets hold the other tasks'.
    zeta: the fresh-noise share of the re-noising, 0.3 (`main_ddpir_deblur.py`: zeta 0.1 x range(3, 4)).
    prox_iters: conjugate-gradient iterations of the data step on operators without an SVD (ours; the reference has
        closed forms only); None: `Operator.prox`'s own budget (PROX_MAX_ITER = 50, or its tolerance). Fewer
        iterations stop the solve early, which regularises it where rho_t is small
        (assets/bench/quality_per_second/README.md).
    """

    steps: int = 100
    lam: float = 7.0
    zeta: float = 0.3
    prox_iters: int | None = None

    def __post_init__(self):
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (the quad grid ends at t = 0), got {self.steps}")
        if not self.lam > 0 or not 0 <= self.zeta <= 1:
            raise ValueError(f"need lam > 0 and zeta in [0, 1]; got {self.lam}, {self.zeta}")
        if self.prox_iters is not None and self.prox_iters < 1:
            raise ValueError(f"prox_iters must be >= 1 or None, got {self.prox_iters}")


def quad_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The reference's "quad" grid, descending: T - 1 - floor(sqrt(s)) for s = linspace(0, T^2, steps), the last
    one 0 (long steps at large t, short ones near 0)."""
    s = torch.linspace(0, num_train_timesteps**2, steps, dtype=torch.float64).sqrt().floor().long().tolist()
    s[-1] = num_train_timesteps - 1
    return [num_train_timesteps - 1 - v for v in s]


@register_sampler("diffpir")
class DiffPIR(Sampler):
    """DiffPIR for any differentiable operator with Gaussian noise (prox for linear ones), pixel prior; one network
    forward per step, no VJP."""

    Config = DiffPIRConfig
    PRESETS: ClassVar[dict[str, dict]] = {
        "deblur": {"lam": 7.0, "zeta": 0.3},  # main_ddpir_deblur.py (Gaussian and motion blur)
        "sisr": {"lam": 7.0, "zeta": 0.25},  # main_ddpir.py's SR loop: lambda 7, zeta 0.25
        "inpaint": {"lam": 1.0, "zeta": 1.0},  # configs/inpaint.yaml
    }
    needs_space = "pixel"
    needs_operator = "differentiable"
    needs_gaussian_noise = True
    samples_posterior = False  # a plug-and-play (HQS) restoration: its spread is not calibrated
    reports_tail_mean = True  # its last data step amplifies noise that the denoiser's late estimates do not carry
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 3}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 100}
    # the paper tunes lambda and zeta per task and network (Sec. 4.1); the bench's "diffpir:tuned" does so on other
    # images, around the reference values (lambda 7; zeta 0.25-0.3 for SR and deblurring, 1 for inpainting)
    TUNE_GRID: ClassVar[dict[str, tuple]] = {"lam": (2.0, 7.0, 20.0), "zeta": (0.3, 0.6, 1.0)}

    def nfe(self, prior) -> int:
        return self.config.steps

    def own_work(self, prior, op, y, x0):
        """The data step of every step but the last (a proximal solve, conjugate gradients without an SVD)."""
        return (lambda v: self.data_step(op, y, v, self.rho(0.5))), self.config.steps - 1, "data step"

    def rho(self, alpha_bar: float) -> float:
        """rho_t = lambda / (4 sigma_bar_t^2) of the step whose alpha_bar_t is `alpha_bar` (module docstring)."""
        return self.config.lam * alpha_bar / (4 * (1 - alpha_bar))

    def data_step(self, op, y: torch.Tensor, x0_hat: torch.Tensor, rho: float) -> torch.Tensor:
        """Step 2: the proximal map for a linear operator, the reference's gradient step otherwise (n, C, H, W)."""
        sigma_y = max(op.noise.sigma, SIGMA_N_FLOOR)
        if op.is_linear:
            budget = {"max_iter": self.config.prox_iters} if self.config.prox_iters else {}
            return op.prox(x0_hat, y, rho, sigma_y=sigma_y, **budget)
        return (x0_hat - op.residual_gradient(y, x0_hat) / (4 * rho * sigma_y**2)).clamp_(-1, 1)

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        timesteps = quad_timesteps(prior.num_timesteps, cfg.steps)
        alpha_bar = prior.alphas_cumprod.double().cpu()[timesteps].tolist()
        x_t = randn_stacked(generators, image_shape, device)
        for i, t in enumerate(timesteps):
            # 1. the denoiser
            with torch.inference_mode():
                x0_hat = prior.predict(x_t, t).x0_hat.clamp(-1, 1)
            x0_hat = x0_hat.clone()  # a normal tensor (the data step may differentiate the operator at it)
            if i == len(timesteps) - 1:
                step_hook({"i": i, "t": t, "x": x0_hat, "x0_hat": x0_hat})
                return x0_hat, {}
            # 2. the data step, rho_t = lambda / (4 sigma_bar_t^2)
            a, a_prev = alpha_bar[i], alpha_bar[i + 1]
            x0 = self.data_step(op, y, x0_hat, self.rho(a))
            # 3. re-noise with eps_hat of the corrected x0 and a zeta share of fresh noise
            with torch.no_grad():
                eps_hat = (x_t - a**0.5 * x0) / (1 - a) ** 0.5
                z = randn_stacked(generators, image_shape, device)
                noise = eps_hat.mul_((1 - cfg.zeta) ** 0.5).add_(z, alpha=cfg.zeta**0.5)
                x_t = noise.mul_((1 - a_prev) ** 0.5).add_(x0, alpha=a_prev**0.5)
            step_hook({"i": i, "t": t, "x": x_t, "x0_hat": x0_hat})
        raise AssertionError("unreachable: the grid ends at t = 0")
