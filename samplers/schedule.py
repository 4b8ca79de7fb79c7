"""Every timestep grid and noise-level conversion the samplers use, and the DDPM / DDIM step coefficients.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): alpha_bar_t = prod(1 - beta); on a strided subsequence
t_0 > t_1 > ... the step t_i -> t_{i+1} has beta_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_{i+1}} (the respacing
of guided-diffusion's `SpacedDiffusion`), and q(x_prev | x_t, x0) = N(c0 x0 + ct x_t, beta_tilde).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posterior_diffusion.tensor_utils import append_dims


def strided_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """`steps` integer timesteps evenly spread over [0, T-1], descending, always including T-1 and 0 (long)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if steps == 1:
        return torch.tensor([num_train_timesteps - 1])
    t = torch.linspace(0, num_train_timesteps - 1, steps, dtype=torch.float64).round().long()
    return t.flip(0)


def ddrm_timesteps(num_train_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_next) pairs, descending, on DDRM's uniform skip grid range(0, T, T // steps); t_next = -1 is x_0."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    seq = list(range(0, num_train_timesteps, num_train_timesteps // steps))[:steps]
    return list(zip(reversed(seq), reversed([-1, *seq[:-1]]), strict=False))


def red_diff_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """range(0, T, T / steps) traversed in descending order (RED-Diff's reference `ts`)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    skip = num_train_timesteps / steps
    return [int(i * skip) for i in range(steps)][::-1]


def host_alpha_bars(alphas_cumprod: torch.Tensor) -> list[float]:
    """alpha_bar_t for t = 0..T-1 as host floats (float64 precision), plus alpha_bar = 1 at index -1: the clean end
    that grids such as `ddrm_timesteps` reach with their last step to t = -1."""
    return [*alphas_cumprod.double().cpu().tolist(), 1.0]


def sigma_of(alpha_bar: float) -> float:
    """sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), the noise level of x_t / sqrt(alpha_bar_t)."""
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def timestep_of_variance(alphas_cumprod: torch.Tensor, variance: float) -> int:
    """The step t whose variance sigma_t^2 = (1 - alpha_bar_t) / alpha_bar_t is nearest to `variance`."""
    variances = (1 - alphas_cumprod.double()) / alphas_cumprod.double()
    return int((variances - variance).abs().argmin())


@dataclass
class DDPMCoefficients:
    """Per-step coefficients (n,) float32 for the descending `timesteps` (n,) long."""

    timesteps: torch.Tensor  # on the prior's device
    timesteps_host: list[int]
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    beta: torch.Tensor
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    log_var_small: torch.Tensor  # log beta_tilde; last step (0 variance) clipped to its neighbour's
    log_var_large: torch.Tensor  # log beta; last step replaced by beta_tilde of its neighbour

    def log_variance(self, i: int, variance_type: str, variance_values: torch.Tensor | None) -> torch.Tensor:
        """log variance of step i: "fixed_small", "fixed_large", "learned" (the network's log variance) or
        "learned_range" (interpolation between log beta and log beta_tilde; Nichol & Dhariwal 2021, Eq. 15)."""
        if variance_type == "learned":
            return variance_values
        if variance_type == "learned_range":
            frac = (variance_values + 1) / 2
            return frac * self.beta[i].log() + (1 - frac) * self.log_var_small[i]
        return (self.log_var_large if variance_type == "fixed_large" else self.log_var_small)[i]


def ddpm_coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> DDPMCoefficients:
    """DDPM posterior coefficients along a (possibly strided) descending timestep sequence.

    The log variances follow guided-diffusion's `posterior_log_variance_clipped` and fixed-large choices.
    """
    ab = alphas_cumprod.double()[timesteps.to(alphas_cumprod.device)]
    ab_prev = torch.cat([ab[1:], ab.new_ones(1)])
    beta = 1 - ab / ab_prev
    var_small = beta * (1 - ab_prev) / (1 - ab)
    neighbour = var_small[-2:-1] if len(ab) > 1 else beta[-1:]

    def f(v):
        return v.float()

    return DDPMCoefficients(
        timesteps=timesteps.to(alphas_cumprod.device),
        timesteps_host=timesteps.tolist(),
        alpha_bar=f(ab),
        alpha_bar_prev=f(ab_prev),
        beta=f(beta),
        coef_x0=f(ab_prev.sqrt() * beta / (1 - ab)),
        coef_xt=f((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)),
        log_var_small=f(torch.cat([var_small[:-1], neighbour]).log()),
        log_var_large=f(torch.cat([beta[:-1], neighbour]).log()),
    )


def ddpm_step(
    coef: DDPMCoefficients,
    i: int,
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    noise: torch.Tensor,
    variance_type: str = "fixed_small",
    variance_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t_{i+1}} ~ N(c0 x0_hat + ct x_t, var); no noise on the last step."""
    mean = coef.coef_x0[i] * x0_hat + coef.coef_xt[i] * x_t
    if i == len(coef.timesteps) - 1:
        return mean
    log_var = coef.log_variance(i, variance_type, variance_values)
    std = torch.exp(0.5 * log_var)
    return mean + (append_dims(std, x_t.ndim) if std.ndim == 1 else std) * noise


def ddim_step(coef: DDPMCoefficients, i: int, x0_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step (Song, Meng, Ermon 2021, Eq. 12 with eta = 0) from t_i to t_{i+1}:
    sqrt(alpha_bar_{i+1}) x0_hat + sqrt(1 - alpha_bar_{i+1}) eps (x0_hat on the last step)."""
    alpha_bar_prev = coef.alpha_bar_prev[i]
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps
