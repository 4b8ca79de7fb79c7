"""Blur kernels (kh, kw), float32, summing to 1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(kernel_size: int = 61, sigma: float = 3.0) -> torch.Tensor:
    """Isotropic Gaussian, as DPS builds it: scipy `gaussian_filter` of a centred delta (truncate = 4 sigma).

    The 1-D profile exp(-x^2 / (2 sigma^2)) is cut at radius int(4 sigma + 0.5) (and at the kernel
    border), normalised, and the 2-D kernel is its outer product.
    """
    if kernel_size < 1 or not sigma > 0:
        raise ValueError(f"need kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    center = (kernel_size - 1) / 2
    radius = min(int(4 * sigma + 0.5), kernel_size // 2)
    x = torch.arange(kernel_size, dtype=torch.float64) - center
    profile = torch.exp(-(x**2) / (2 * sigma**2)) * (x.abs() <= radius + 0.5)
    profile = profile / profile.sum()
    return torch.outer(profile, profile).float()


def uniform_kernel(kernel_size: int = 9) -> torch.Tensor:
    """Box kernel of side `kernel_size` (DDRM's `deblur_uni` uses 9 taps per axis)."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    return torch.full((kernel_size, kernel_size), 1.0 / kernel_size**2)


def motion_kernel(
    kernel_size: int = 61, intensity: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random camera-shake kernel from a smooth random trajectory.

    Follows the idea of the `motionblur` package that DPS draws its kernels from (size 61, intensity 0.5)
    and of Boracchi & Foi (2012): a path whose heading performs a random walk; `intensity` in [0, 1]
    scales the heading increments (0: a straight streak; 1: a strongly curved, shaky path) and the
    path's length. The path is splatted bilinearly onto the grid, smoothed by a Gaussian of 0.5 px
    and normalised; it is centred on its centroid, so the kernel does not shift the image on average.
    """
    if kernel_size < 3 or not 0 <= intensity <= 1:
        raise ValueError(f"need kernel_size >= 3 and 0 <= intensity <= 1, got {kernel_size}, {intensity}")
    n = 8 * kernel_size
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    length = kernel_size * (0.35 + 0.4 * intensity) * (0.6 + 0.4 * u[0])
    turn = (0.01 + 0.15 * intensity) * torch.randn(n, generator=generator, dtype=torch.float64)
    heading = 2 * math.pi * u[1] + torch.cumsum(turn, 0)
    steps = torch.stack([torch.cos(heading), torch.sin(heading)], 1) * (length / n)
    path = torch.cumsum(steps, 0)
    path = path - path.mean(0)
    half = (kernel_size - 3) / 2
    path = path * min(1.0, half / float(path.abs().max().clamp(min=1e-12)))
    path = path + (kernel_size - 1) / 2
    kernel = torch.zeros(kernel_size, kernel_size, dtype=torch.float64)
    base = path.floor().long()
    frac = path - base
    for dy in (0, 1):
        for dx in (0, 1):
            w = (frac[:, 1] if dy else 1 - frac[:, 1]) * (frac[:, 0] if dx else 1 - frac[:, 0])
            kernel.index_put_((base[:, 1] + dy, base[:, 0] + dx), w, accumulate=True)
    smooth = gaussian_kernel(3, 0.5).double()[None, None]
    kernel = F.conv2d(kernel[None, None], smooth, padding=1)[0, 0]
    return (kernel / kernel.sum()).float()
