"""Image-quality metrics, per image, on images mapped from [-1, 1] to [0, 1]."""

from __future__ import annotations

import functools
import math

import torch


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image: x, ref (..., C, H, W) in [-1, 1] (clipped) -> (...,), with peak 1 on [0, 1]."""
    x01 = ((x.float() + 1) / 2).clamp(0, 1)
    ref01 = ((ref.float() + 1) / 2).clamp(0, 1)
    mse = (x01 - ref01).square().flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp(min=1e-12))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM per image (torchmetrics, Gaussian window 11, sigma 1.5) on images mapped to [0, 1]: (B, C, H, W) -> (B,).

    Needs the optional `torchmetrics` package (`pip install posterior_diffusion[metrics]`).
    """
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        raise ImportError("SSIM needs torchmetrics: pip install 'posterior_diffusion[metrics]'") from None
    x01 = ((x.float() + 1) / 2).clamp(0, 1)
    ref01 = ((ref.float() + 1) / 2).clamp(0, 1)
    return structural_similarity_index_measure(x01, ref01, data_range=1.0, reduction="none")


def lpips(x: torch.Tensor, ref: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS v0.1 per image (AlexNet or VGG16 backbone): (B, C, H, W) x (B, C, H, W) in [-1, 1] -> (B,).
    Weights from local files only (see `posterior_diffusion.perceptual`); raises `LPIPSUnavailable`, whose
    message names the file to provide, when none is found."""
    model = _lpips_model(net, str(x.device))
    with torch.inference_mode():
        return model(x.clamp(-1, 1), ref.clamp(-1, 1))


def kernel_errors(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Blur-kernel estimates (..., kh, kw) against the true kernel (kh, kw): L2 distance and normalised
    cross-correlation (1 = the same shape up to scale and offset), each of shape estimate.shape[:-2]."""
    e = estimate.flatten(-2).double()
    t = truth.flatten().double().to(e.device)
    ec, tc = e - e.mean(-1, keepdim=True), t - t.mean()
    ncc = (ec * tc).sum(-1) / (ec.norm(dim=-1) * tc.norm()).clamp(min=1e-30)
    return {"kernel_l2": (e - t).norm(dim=-1), "kernel_ncc": ncc}


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, device: str):
    from posterior_diffusion.perceptual import LPIPS

    return LPIPS(net).to(device)


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between two equal-size point clouds a, b (N, ...) (flattened per point).

    Mean over random unit directions of the 1-D W2 between the projections (sorted matching), then sqrt.
    """
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    directions = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ directions, dim=0)
    pb, _ = torch.sort(b @ directions, dim=0)
    return (pa - pb).square().mean().sqrt()


COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
Z_STD_FLOOR = 1 / 255  # on [-1, 1]: half an 8-bit step
COVERAGE_COLUMNS = tuple(f"coverage{round(100 * level)}" for level in COVERAGE_LEVELS)  # rows' names, by level
CALIBRATION_COLUMNS = ("psnr_sample", "psnr_average", *COVERAGE_COLUMNS, "spearman", "z_spread")


def standardised_errors(samples: torch.Tensor, truth: torch.Tensor, sides: torch.Tensor | None = None) -> torch.Tensor:
    """|truth - mean| / std per pixel, float64: samples (B, S, C, H, W) with S >= 2; truth (B, C, H, W) -> (B, C H W),
    or (B, N, C, H, W) for N draws -> (B, N, C H W). A pixel with zero std scores 0 where the mean is exact and +inf
    elsewhere (no interval around the mean covers it).

    sides (B, C, H, W) in {-1, 0, 1} (`Operator.calibration_sides`): where +1 the one-sided score (mean - truth) /
    std, the smallest factor with truth in [mean - factor std, 1] (negative where the truth lies above the mean);
    where -1, (truth - mean) / std, that of [-1, mean + factor std]; where 0, the two-sided score above."""
    if samples.shape[1] < 2:
        raise ValueError(f"intervals from samples need at least 2 samples per measurement, got {samples.shape[1]}")
    samples, truth = samples.double(), truth.double()
    draws = truth.ndim == samples.ndim
    mean, std = samples.mean(1, keepdim=draws), samples.std(1, keepdim=draws)
    error = (truth - mean).flatten(-3)
    if sides is None:
        signed = error.abs()
    else:
        side = sides.to(error.device).flatten(-3)
        side = side[:, None] if draws else side
        signed = torch.where(side == 0, error.abs(), -side * error)
    return torch.where(error == 0, 0.0, signed / std.flatten(-3))


def interval_coverage(samples: torch.Tensor, truth: torch.Tensor, levels=COVERAGE_LEVELS) -> torch.Tensor:
    """Empirical coverage of pixelwise central intervals from posterior samples: (B, len(levels)) fractions of the
    truth's pixels inside mean +- z std at each level.

    samples (B, S, C, H, W) with S >= 2; truth (B, C, H, W), or (B, N, C, H, W) for N draws to test (the exact
    suite passes exact posterior samples). The intervals are Gaussian prediction intervals: z is the Student-t
    factor t_{S-1}((1 + level) / 2) sqrt(1 + 1 / S), so that a new draw from a Gaussian posterior falls inside with
    probability exactly `level` whatever S. Sample quantiles cannot do that at the few samples a sampler affords:
    the min and max of 4 samples cover 3/5 of a new draw, and the 5-95 % quantiles of 64 cover 0.87 (measured on
    the exact suite's posteriors, where these intervals cover 0.89-0.90)."""
    scores = standardised_errors(samples, truth).flatten(1)
    factors = [predictive_factor(level, samples.shape[1]) for level in levels]
    factors = torch.tensor(factors, dtype=scores.dtype, device=scores.device)
    return (scores[:, None, :] <= factors[None, :, None]).float().mean(-1)


@functools.lru_cache(maxsize=64)
def predictive_factor(level: float, samples: int) -> float:
    """z of the Gaussian prediction interval mean +- z std from `samples` draws at coverage `level` in (0, 1):
    the Student-t quantile t_{samples-1}((1 + level) / 2) times sqrt(1 + 1 / samples)."""
    if not 0 < level < 1:
        raise ValueError(f"coverage level must be in (0, 1), got {level}")
    return _student_t_quantile((1 + level) / 2, samples - 1) * math.sqrt(1 + 1 / samples)


def _student_t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t (p in (0.5, 1)) by bisection on its CDF, integrated numerically in float64 (accurate to
    about 1e-6; torch has no t inverse CDF and scipy is not a dependency)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # 1/2 + the integral of the density from 0 to x (Simpson's rule)
        t = torch.linspace(0, x, 4001, dtype=torch.float64)
        f = torch.exp(log_norm - (df + 1) / 2 * torch.log1p(t.square() / df))
        h = x / 4000
        return 0.5 + float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def calibration_metrics(samples: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far to trust the spread of posterior samples (B, S, C, H, W), S >= 2, against the truth (B, C, H, W) in
    [-1, 1]; each value is (B,):

        psnr_sample      mean PSNR of the single samples (the mean's PSNR flatters a sampler whose samples are poor)
        psnr_average     PSNR of the samples' average (what the intervals are centred on; a run's `mean` may be a
                         better estimate, `posterior_mean`)
        coverage50 ..95  `interval_coverage` at COVERAGE_LEVELS (ideal: the level)
        spearman         Spearman rank correlation over pixels between the std map and |truth - mean| (1: the std
                         orders the errors perfectly; 0: it says nothing about them)
        z_spread         std over pixels of (truth - mean) / std; for samples of a Gaussian posterior it is
                         sqrt((1 + 1 / S) (S - 1) / (S - 3)) for S > 3 (1.94 at S = 4, 1.02 at S = 64): above that,
                         the std is too small; below, too large. The std is floored at Z_STD_FLOOR (half an 8-bit
                         step): samples that agree exactly (clipped at +-1) would otherwise divide by zero, and the
                         spread would hang on the rounding of near-zero stds
    """
    samples, truth = samples.float(), truth.float()
    mean, std = samples.mean(1), samples.std(1)
    error = (truth - mean).flatten(1)
    out = {"psnr_sample": psnr(samples, truth[:, None]).mean(1), "psnr_average": psnr(mean, truth)}
    coverage = interval_coverage(samples, truth)
    out |= {column: coverage[:, i] for i, column in enumerate(COVERAGE_COLUMNS)}
    out["spearman"] = _pearson(_ranks(std.flatten(1)), _ranks(error.abs()))
    out["z_spread"] = (error / std.flatten(1).clamp(min=Z_STD_FLOOR)).std(1)
    return out


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0 .. N-1 along the last axis (ties broken by position), as float."""
    ranks = torch.empty_like(v)
    ranks.scatter_(-1, v.argsort(-1), torch.arange(v.shape[-1], dtype=v.dtype, device=v.device).expand_as(v))
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-12)
