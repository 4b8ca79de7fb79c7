"""The estimate that `sample_posterior` reports as `mean`: the best posterior-mean estimate a run affords.

An average of S posterior samples misses the posterior mean by the samples' own spread: its expected squared
error is the posterior mean's plus the posterior variance / S (a quarter of it at the default S = 4). Where the
posterior mean has a closed form in the prior's network, `mean` is that instead. `ESTIMATES` lists the estimates
in order of preference; the first that applies to the run is used and its name is recorded in the run's config
as "mean_estimate":

    tweedie         denoising (identity operator, Gaussian noise sigma_y) with a pixel diffusion prior: y is a
                    noisy state of the diffusion at the noise level sigma_y, so E[x | y] is the prior's one-call
                    Tweedie denoiser (Efron 2011, "Tweedie's formula and selection bias"; Kadkhodaie & Simoncelli,
                    NeurIPS 2021) at the step t whose noise level sqrt((1 - a_t) / a_t) is nearest sigma_y,
                    applied to sqrt(a_t) y and clipped to [-1, 1]: exact up to that rounding and the network's
                    own error, with no sampling error, for one more network call per measurement (counted
                    in the run's seconds, not in its NFE per sample). Used when the nearest step's level is
                    within `TWEEDIE_TOLERANCE` of sigma_y.
    tail_average    a sampler that reports its chains' tail means (`samplers.tail_mean`: each chain's last
                    denoiser estimates, averaged; a Rao-Blackwellised mean): their average over the S chains.
                    DiffPIR, `sampler="auto"`'s pick for the linear image tasks on a CPU.
    sample_average  the average of the S samples (every other case).

The samples, their std and the (calibrated) intervals are unchanged: intervals are Gaussian prediction intervals
around the samples' average, which is what their calibration measures (`calibration`, `metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from posterior_diffusion.operators.base import Operator
from posterior_diffusion.operators.denoise import Denoise
from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.priors.base import noise_levels
from posterior_diffusion.tensor_utils import chunk_slices

TWEEDIE_TOLERANCE = 0.1  # largest relative gap between sigma_y and the nearest step's noise level


def tweedie_step(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The step t whose noise level (`noise_levels`, on the [-1, 1] scale of x) is nearest `sigma`."""
    return int((noise_levels(alphas_cumprod) - sigma).abs().argmin())


def tweedie_mean(prior, y: torch.Tensor, sigma: float, batch_size: int | None = None) -> torch.Tensor:
    """E[x | y] for y = x + sigma n (n standard normal) under the pixel prior: its denoiser at `tweedie_step`,
    float32 (B, C, H, W) in [-1, 1], `batch_size` images per network call (default all)."""
    t = tweedie_step(prior.alphas_cumprod, sigma)
    scale = prior.alphas_cumprod[t].sqrt()
    with torch.inference_mode():
        parts = [prior.denoise(scale * y[s], t).clamp(-1, 1) for s in chunk_slices(y.shape[0], batch_size)]
    return torch.cat(parts)


def _denoising_sigma(prior, op: Operator) -> float | None:
    """sigma_y when (prior, op) is pixel-space denoising with Gaussian noise close to one of the prior's noise
    levels, else None."""
    if not isinstance(op, Denoise) or not isinstance(op.noise, GaussianNoise) or prior.space != "pixel":
        return None
    sigma = op.noise.sigma
    if sigma <= 0:
        return None
    nearest = float(noise_levels(prior.alphas_cumprod)[tweedie_step(prior.alphas_cumprod, sigma)])
    return sigma if abs(nearest - sigma) <= TWEEDIE_TOLERANCE * sigma else None


@dataclass(frozen=True)
class MeanEstimate:
    """name; applies(prior, op, run) -> bool; compute(prior, op, run) -> mean (B, C, H, W) on the CPU, float32
    (`RunOutput` holds what the run made)."""

    name: str
    applies: Callable[..., bool]
    compute: Callable[..., torch.Tensor]


@dataclass(frozen=True)
class RunOutput:
    """y (B, *meas) on the prior's device; average (B, C, H, W), the samples' mean, on the CPU; tail (B, C, H, W),
    the chains' tail means averaged (`samplers.tail_mean`), or None; batch_size: images per network call."""

    y: torch.Tensor
    average: torch.Tensor
    tail: torch.Tensor | None = None
    batch_size: int | None = None


ESTIMATES = (
    MeanEstimate(
        "tweedie",
        lambda prior, op, run: _denoising_sigma(prior, op) is not None,
        lambda prior, op, run: tweedie_mean(prior, run.y, op.noise.sigma, run.batch_size).float().cpu(),
    ),
    MeanEstimate("tail_average", lambda prior, op, run: run.tail is not None, lambda prior, op, run: run.tail),
    MeanEstimate("sample_average", lambda prior, op, run: True, lambda prior, op, run: run.average),
)


def posterior_mean(prior, op: Operator, run: RunOutput) -> tuple[torch.Tensor, str]:
    """(mean (B, C, H, W) float32 on the CPU, the estimate's name): the first of `ESTIMATES` that applies."""
    estimate = next(e for e in ESTIMATES if e.applies(prior, op, run))
    return estimate.compute(prior, op, run), estimate.name


__all__ = [
    "ESTIMATES",
    "TWEEDIE_TOLERANCE",
    "RunOutput",
    "posterior_mean",
    "tweedie_mean",
    "tweedie_step",
]
