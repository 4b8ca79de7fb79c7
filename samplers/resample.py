"""ReSample: latent diffusion posterior sampling with hard data consistency (Song, Kwon, Zhang, Hu, Qu, Shen;
ICLR 2024; arXiv:2307.08123), Algorithm 1, as the reference code runs it (soominkwon/resample,
`ldm/models/diffusion/ddim.py` `resample_sampling`, `pixel_optimization`, `latent_optimization`,
`stochastic_resample`).

DDIM (eta = 0) on the latents z of a latent prior (encoder E, decoder D) over S steps t_0 > ... > t_{S-1};
a_t = alpha_bar_{t_i}, a_prev = alpha_bar_{t_{i+1}}, index = S - 1 - i counts down:

    eps_hat, z0_hat = prior(z_t, t_i)                                            (Tweedie)
    z'_prev = sqrt(a_prev) z0_hat + sqrt(1 - a_prev) eps_hat - s_t grad_{z_t} ||y - A(D(z0_hat))||
              s_t = 0.5 a_t                          (DDIM + latent DPS step through the UNet and D, every step)
    if 0 < index <= S - S // 3 and index % skip == 0:                            (hard data consistency)
        z0_tt = z0_hat after `inter_timesteps` unconditional DDIM steps from z'_prev       ("time travel")
        index >= S // 3 (middle third):  x* = argmin_x ||y - A(x)||^2 from D(z0_tt), z0* = E(x*)    (AdamW)
        index <  S // 3 (last third):    z0* = argmin_z ||y - A(D(z))||^2 from z0_tt               (AdamW)
        z_prev ~ N((sigma^2 sqrt(a_prev) z0* + (1 - a_prev) z'_prev) / (sigma^2 + 1 - a_prev),
                   sigma^2 (1 - a_prev) / (sigma^2 + 1 - a_prev) I),                (stochastic resampling)
        sigma^2 = gamma (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)
    otherwise z_prev = z'_prev
    finally z_0 <- argmin_z ||y - A(D(z))||^2 from z_0 (latent optimisation) and x = D(z_0).

The inner optimisations run on all chains at once: one AdamW over the (n, ...) tensor with the per-chain mean
squared residuals summed, so each chain's gradient and Adam moments are its own. The stopping rules are
evaluated per chain on the device (a chain whose rule fires is frozen from then on), so a chain's result does not
depend on the others in its batch; the host checks only every `check_every` iterations whether all have stopped.

Departures from the reference code, each for correctness or batching:
- Tweedie: z0_hat = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t) (the paper's formula). The code uses
  (z_t - (1 - a_t) eps_hat) / sqrt(a_t) for the DPS residual and the time-travel z0_hat; `reference_tweedie=True`
  reproduces that.
- Time travel: the code evaluates the network at t_{k+1} but takes alpha_bar at t_k (an off-by-one); here the m =
  min(inter_timesteps, index) steps from z'_prev evaluate the network at t_{i+1}, ..., t_{i+m} with matching
  alpha_bar, and z0_tt is the Tweedie estimate of the last.
- Timesteps: the shared strided grid (T - 1 ... 0, evenly spread) instead of LDM's range(0, T, T // S) + 1, and
  the last step goes to alpha_bar = 1 (LDM: alpha_bar_0).
- Norms and losses are per chain (the code's are over its batch of one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.tensor_utils import append_dims, per_sample_mean_square, randn_stacked

from .base import Sampler, register_sampler
from .schedule import ddim_step, ddpm_coefficients, strided_timesteps

SPLITS = 3  # the steps fall into thirds: no consistency, pixel optimisation, latent optimisation (`splits = 3`)


@dataclass(frozen=True)
class ReSampleConfig:
    """ReSample settings; defaults from the reference code (soominkwon/resample).

    steps: DDIM steps S = 500 (sample_condition.py `--ddim_steps 500`, `--ddim_eta 0.0`).
    dps_scale: the latent DPS step is s_t = dps_scale * alpha_bar_t, 0.5 (ddim.py `scale=a_t*.5`; the task configs'
        `scale` is not used by this sampler).
    skip: hard data consistency every `skip` steps, 10 (ddim.py `index % 10 == 0`).
    inter_timesteps: time-travel DDIM steps before each consistency step, 5 (ddim.py `inter_timesteps = 5`).
    gamma: the resampling weight, 40 (ddim.py `sigma = 40*...`, "change the 40 value for each task").
    pixel_lr, pixel_max_iters: AdamW on x in the middle third, 1e-2 and 2000 (`pixel_optimization`).
    latent_lr, latent_max_iters: AdamW on z in the last third and at the end, 5e-3 and 500 (`latent_optimization`;
        its docstring: "around 500 steps, 200 steps for inpainting").
    loss_tol: stop an optimisation when the mean squared residual is below it, eps^2 = (1e-3)^2.
    patience: latent optimisation also stops once the loss exceeds its value `patience` iterations earlier, 200
        (`if itr < 200 ... if losses[0] < cur_loss: break`); 0 disables the rule.
    weight_decay: AdamW's, 0.01 (torch's default, which the code uses).
    reference_tweedie: use the code's (1 - alpha_bar) Tweedie variant (see the module docstring); default False.
    check_every: iterations between host checks of the stopping rules (speed only; results do not depend on it).
    """

    steps: int = 500
    dps_scale: float = 0.5
    skip: int = 10
    inter_timesteps: int = 5
    gamma: float = 40.0
    pixel_lr: float = 1e-2
    pixel_max_iters: int = 2000
    latent_lr: float = 5e-3
    latent_max_iters: int = 500
    loss_tol: float = 1e-6
    patience: int = 200
    weight_decay: float = 1e-2
    reference_tweedie: bool = False
    check_every: int = 20

    def __post_init__(self):
        if self.steps < 1 or self.skip < 1 or self.inter_timesteps < 1 or self.check_every < 1:
            raise ValueError(
                f"steps, skip, inter_timesteps and check_every must be >= 1; got {self.steps}, {self.skip}, "
                f"{self.inter_timesteps}, {self.check_every}"
            )
        if min(self.pixel_max_iters, self.latent_max_iters, self.patience) < 0:
            raise ValueError("pixel_max_iters, latent_max_iters and patience must be >= 0")
        if not (self.pixel_lr > 0 and self.latent_lr > 0 and self.gamma > 0):
            raise ValueError(
                f"need pixel_lr, latent_lr, gamma > 0; got {self.pixel_lr}, {self.latent_lr}, {self.gamma}"
            )
        if not (self.dps_scale >= 0 and self.loss_tol >= 0 and self.weight_decay >= 0):
            raise ValueError("dps_scale, loss_tol and weight_decay must be >= 0")


def consistency_steps(steps: int, skip: int, inter_timesteps: int) -> dict[int, int]:
    """{index: time-travel steps} of the hard data consistency events of an S-step run (index = S - 1 - i):
    0 < index <= S - S // 3 and index % skip == 0, each with min(inter_timesteps, index) DDIM steps."""
    last = steps - steps // SPLITS
    return {index: min(inter_timesteps, index) for index in range(1, last + 1) if index % skip == 0}


def resampling_variance(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, gamma: float) -> torch.Tensor:
    """sigma^2 = gamma (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev): gamma times the DDPM posterior variance."""
    return gamma * (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)


def stochastic_resample(
    z0: torch.Tensor, z_prev: torch.Tensor, alpha_bar_prev: torch.Tensor, sigma2: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """A draw of N(mean, var I), the product of N(z_prev, sigma^2) and N(sqrt(a) z0, 1 - a) (ReSample Sec. 3.2):

        mean = (sigma^2 sqrt(a) z0 + (1 - a) z_prev) / (sigma^2 + 1 - a),  var = sigma^2 (1 - a) / (sigma^2 + 1 - a)

    z0, z_prev, noise: (n, c, h, w) float32 (noise standard normal); a = alpha_bar_prev, sigma2: 0-d tensors.
    """
    a = alpha_bar_prev
    mean = (sigma2 * a.sqrt() * z0 + (1 - a) * z_prev) / (sigma2 + 1 - a)
    return mean + (sigma2 * (1 - a) / (sigma2 + 1 - a)).sqrt() * noise


def adamw_fit(
    v0: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    lr: float,
    max_iters: int,
    tol: float,
    patience: int,
    weight_decay: float,
    check_every: int,
) -> torch.Tensor:
    """argmin_v of per-chain losses by AdamW from v0 (n, ...): the reference's inner loops, batched.

    loss_fn maps v (n, ...) to per-chain losses (n,); their sum is minimised, so each chain's gradient is its
    own. Chain j is frozen after the iteration whose (pre-step) loss is below `tol`, or, with patience > 0 and
    at least `patience` iterations done, exceeds its value `patience` iterations earlier (the reference's
    rules, evaluated per chain with masks on the device). Returns the optimised v (n, ...), detached.
    """
    v = v0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([v], lr=lr, weight_decay=weight_decay)
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    history = torch.zeros((max(patience, 1), v.shape[0]), device=v.device)  # losses of the last `patience` iters
    for it in range(max_iters):
        with torch.enable_grad():
            loss = loss_fn(v)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
        before = v.detach().clone()
        optimizer.step()
        with torch.no_grad():
            v.copy_(torch.where(append_dims(active, v.ndim), v, before))  # frozen chains keep their value
            loss = loss.detach()
            stop = loss < tol
            if patience:
                slot = it % patience
                if it >= patience:
                    stop |= history[slot] < loss
                history[slot] = loss
            active &= ~stop
        if (it + 1) % check_every == 0 and not bool(active.any()):  # the only host sync
            break
    return v.detach()


@register_sampler("resample")
class ReSample(Sampler):
    """ReSample (latent priors): latent DPS on DDIM plus hard data consistency by optimisation and resampling."""

    Config = ReSampleConfig
    PRESETS: ClassVar[dict[str, dict]] = {  # configs/tasks/*_config.yaml; only the latent iterations differ
        "super_resolution": {},
        "inpainting": {"latent_max_iters": 200},  # `latent_optimization` docstring: "200 steps for inpainting"
        "gaussian_deblur": {},
        "motion_deblur": {},
    }
    needs_space = "latent"
    needs_operator = "differentiable"
    step_option = "latent_lr"
    network_gradient = True  # the latent DPS step backpropagates through the UNet and the decoder
    weighs_noise_level = False  # ||y - A(D(z0_hat))|| and mean squared residuals, not sigma_y-weighted
    SMOKE_OPTIONS: ClassVar[dict] = {
        "steps": 6,
        "skip": 1,
        "pixel_max_iters": 2,
        "latent_max_iters": 2,
        "patience": 1,
    }
    EXACT_OPTIONS: ClassVar[dict | None] = None  # latent priors only: the exact posteriors are pixel mixtures

    def nfe(self, prior) -> int:
        cfg = self.config
        steps = len(strided_timesteps(prior.num_timesteps, cfg.steps))
        return steps + sum(consistency_steps(steps, cfg.skip, cfg.inter_timesteps).values())

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        shape = prior.latent_shape(image_shape)
        coef = ddpm_coefficients(prior.alphas_cumprod, strided_timesteps(prior.num_timesteps, cfg.steps))
        steps = len(coef.timesteps)
        events = consistency_steps(steps, cfg.skip, cfg.inter_timesteps)
        z_t = randn_stacked(generators, shape, device)
        for i in range(steps):
            index = steps - 1 - i
            z_prev, z0_hat, norm = self._guided_step(prior, op, y, coef, i, z_t)
            if index in events:  # hard data consistency
                z0_tt = self._time_travel(prior, coef, i, z_prev, events[index])
                fit = self._pixel_fit if index >= steps // SPLITS else self._latent_fit  # middle / last third
                z0_star = fit(prior, op, y, z0_tt)
                sigma2 = resampling_variance(coef.alpha_bar[i], coef.alpha_bar_prev[i], cfg.gamma)
                noise = randn_stacked(generators, shape, device)
                z_prev = stochastic_resample(z0_star, z_prev, coef.alpha_bar_prev[i], sigma2, noise)
            z_t = z_prev
            step_hook(
                {
                    "i": i,
                    "t": coef.timesteps_host[i],
                    "x": z_t,
                    "x0_hat": z0_hat,
                    "residual_norm": norm,
                    "nfe": 1 + events.get(index, 0),
                }
            )
        z_0 = self._latent_fit(prior, op, y, z_t)
        step_hook({"i": steps, "t": 0, "x": z_0, "x0_hat": z_0, "nfe": 0})  # the final optimisation, as step S
        with torch.no_grad():
            return prior.decode(z_0), {}

    def _tweedie(self, pred, z_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """z0_hat (n, c, h, w): the prior's Tweedie estimate, or the reference code's (1 - alpha_bar) variant."""
        if not self.config.reference_tweedie:
            return pred.x0_hat
        return (z_t - (1 - alpha_bar) * pred.eps) / alpha_bar.sqrt()

    def _guided_step(self, prior, op, y, coef, i, z_t):
        """DDIM step t_i -> t_{i+1} minus the latent DPS step 0.5 a_t grad ||y - A(D(z0_hat))||.
        Returns z'_prev, z0_hat (n, c, h, w) and the residual norms (n,), detached."""
        z_t = z_t.detach().requires_grad_(True)
        with torch.enable_grad():
            pred = prior.predict(z_t, coef.timesteps[i])
            z0_hat = self._tweedie(pred, z_t, coef.alpha_bar[i])
            norm = op.residual_norm(y, prior.decode(z0_hat))  # (n,) per-sample ||y - A(D(z0_hat))||
            (grad,) = torch.autograd.grad(norm.sum(), z_t)
        with torch.no_grad():
            step = self.config.dps_scale * coef.alpha_bar[i]
            z_prev = ddim_step(coef, i, pred.x0_hat, pred.eps) - step * grad
        return z_prev, z0_hat.detach(), norm.detach()

    @torch.no_grad()
    def _time_travel(self, prior, coef, i, z, m: int) -> torch.Tensor:
        """z0_hat after m unconditional DDIM steps from z at t_{i+1} (network at t_{i+1} ... t_{i+m})."""
        for k in range(i + 1, i + 1 + m):
            pred = prior.predict(z, coef.timesteps[k])
            if k < i + m:
                z = ddim_step(coef, k, pred.x0_hat, pred.eps)
        return self._tweedie(pred, z, coef.alpha_bar[i + m])

    def _pixel_fit(self, prior, op, y, z0):
        """Middle third: x* = argmin_x ||y - A(x)||^2 from D(z0), returned encoded, E(x*) (n, c, h, w)."""
        cfg = self.config
        with torch.no_grad():
            x0 = prior.decode(z0)
        x = adamw_fit(
            x0,
            lambda x: per_sample_mean_square(y - op(x)),
            cfg.pixel_lr,
            cfg.pixel_max_iters,
            cfg.loss_tol,
            0,
            cfg.weight_decay,
            cfg.check_every,
        )
        with torch.no_grad():
            return prior.encode(x)

    def _latent_fit(self, prior, op, y, z0):
        """Last third and the end: z* = argmin_z ||y - A(D(z))||^2 from z0 (n, c, h, w)."""
        cfg = self.config
        return adamw_fit(
            z0,
            lambda z: per_sample_mean_square(y - op(prior.decode(z))),
            cfg.latent_lr,
            cfg.latent_max_iters,
            cfg.loss_tol,
            cfg.patience,
            cfg.weight_decay,
            cfg.check_every,
        )
