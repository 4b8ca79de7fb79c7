"""Classical reconstructions, the yardstick every table compares the diffusion samplers with.

Each baseline maps (op, y, **params) to one image estimate (B, C, H, W) and says which operators it handles:

    pinv       A^+ y (minimum-norm least squares)                         any linear operator
    tikhonov   argmin ||y - A x||^2 + reg ||x||^2 (Wiener for blurs)      any linear operator
    tv         argmin ||y - A x||^2 / 2 + weight TV(x) (Chambolle-Pock)   any linear operator
    bm3d       BM3D (Dabov et al. 2007; the `bm3d` package, an extra)     denoise, Gaussian noise
    pnp_admm   plug-and-play ADMM with BM3D as the denoiser (op.prox)     linear, Gaussian noise
    unclip     y / scale (exact where nothing saturated)                  high_dynamic_range
    hio        Fienup's hybrid input-output from Fourier magnitudes       phase_retrieval
    bicubic    bicubic upsampling of y                                    super_resolution
    harmonic   missing pixels solve Laplace's equation from the observed  inpainting (masks)

A baseline's weight is only fair when tuned: `Baseline.grid` lists the candidate values of its weights, and
`tune` picks the best on images other than the test images (the bench's --tune-images).
Applications add their own (`register_baseline`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from posterior_diffusion.operators import (
    Denoise,
    GaussianNoise,
    HighDynamicRange,
    InpaintBox,
    InpaintRandom,
    LinearOperator,
    Operator,
    PhaseRetrieval,
    SuperResolution,
)
from posterior_diffusion.tensor_utils import conjugate_gradient


def pinv(op: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    return op.pinv(y)


def tikhonov(op: LinearOperator, y: torch.Tensor, reg: float = 1e-2, max_iter: int = 500) -> torch.Tensor:
    """argmin ||y - A x||^2 + reg ||x||^2, i.e. (A^T A + reg I) x = A^T y by conjugate gradients (per sample);
    for a blur this is the Wiener filter for a white signal of power 1 / reg relative to the noise."""
    return conjugate_gradient(lambda v: op.normal(v) + reg * v, op.adjoint(y), max_iter=max_iter)


def tv(op: LinearOperator, y: torch.Tensor, weight: float = 0.02, iters: int = 300) -> torch.Tensor:
    """Total-variation reconstruction argmin_x ||A x - y||^2 / 2 + weight sum |grad x| (isotropic, per channel,
    forward differences with a zero-flux border) by `iters` Chambolle-Pock primal-dual iterations (Chambolle &
    Pock 2011, Alg. 1) on K = (A, grad), with step sizes tau = sigma = 0.99 / ||K|| and ||K||^2 <= ||A||^2 + 8.
    y: (B, *meas); returns (B, C, H, W) clamped to [-1, 1]."""
    x = op.adjoint(y)
    step = 0.99 / math.sqrt(op.norm_squared(tuple(x.shape[1:])) + 8.0)
    dual_y, dual_grad, x_bar = torch.zeros_like(y), torch.zeros_like(_gradient(x)), x
    for _ in range(iters):
        dual_y = (dual_y + step * (op.forward(x_bar) - y)) / (1 + step)  # prox of the conjugate of ||. - y||^2 / 2
        dual_grad = dual_grad + step * _gradient(x_bar)
        dual_grad = dual_grad / (dual_grad.norm(dim=0, keepdim=True) / weight).clamp(min=1)  # onto |q| <= weight
        x_next = x - step * (op.adjoint(dual_y) + _gradient_adjoint(dual_grad))
        x, x_bar = x_next, 2 * x_next - x
    return x.clamp(-1, 1)


def _gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences (2, B, C, H, W): horizontal then vertical, 0 across the last column / row."""
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return torch.stack([dx, dy])


def _gradient_adjoint(g: torch.Tensor) -> torch.Tensor:
    """The adjoint of `_gradient` (minus the divergence): (2, B, C, H, W) -> (B, C, H, W)."""
    dx, dy = g[0][..., :, :-1], g[1][..., :-1, :]
    return F.pad(dx, (1, 0)) - F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 1, 0)) - F.pad(dy, (0, 0, 0, 1))


def bm3d(op: Denoise, y: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """BM3D (Dabov et al., IEEE TIP 2007) of a noisy image y (B, C, H, W) in [-1, 1]; sigma: the noise std on
    the [-1, 1] scale (default the operator's). Returns the same shape."""
    return _bm3d_denoise(y, op.noise.sigma if sigma is None else sigma)


def pnp_admm(op: LinearOperator, y: torch.Tensor, sigma_d: float = 0.05, iters: int = 8) -> torch.Tensor:
    """Plug-and-play ADMM (Venkatakrishnan, Bouman, Wohlberg 2013) with BM3D as the prior's proximal map and the
    penalty increased geometrically (Chan, Wang, Elgendy 2017, Alg. 1): at iteration k, with the denoiser
    strength sigma_k falling geometrically from SIGMA_START to `sigma_d` (rho_k = 1 / sigma_k^2),
    x = op.prox(z - u, y, rho_k), z = BM3D(x + u, sigma_k), u += x - z; from z = A^T y.
    y: (B, *meas); returns z (B, C, H, W) in [-1, 1]."""
    z = op.adjoint(y).clamp(-1, 1)
    u = torch.zeros_like(z)
    for sigma in np.geomspace(max(SIGMA_START, sigma_d), sigma_d, iters).tolist():
        x = op.prox(z - u, y, 1.0 / sigma**2)
        z = _bm3d_denoise(x + u, sigma)
        u = u + x - z
    return z


def _bm3d_denoise(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """BM3D of (B, C, H, W) images in [-1, 1] with noise std `sigma` on that scale, through the `bm3d` package
    (an extra: pip install "posterior_diffusion[bm3d]"), one image at a time on the host (the package is CPU
    only). Returns the same shape, dtype and device, clamped to [-1, 1]."""
    try:
        import bm3d as bm3d_package
    except ImportError:
        raise ImportError('the bm3d baselines need the bm3d package: pip install "posterior_diffusion[bm3d]"') from None
    run = bm3d_package.bm3d_rgb if images.shape[1] == 3 else bm3d_package.bm3d
    unit = ((images.detach().float().cpu() + 1) / 2).permute(0, 2, 3, 1).numpy()  # (B, H, W, C) on [0, 1]
    denoised = [np.asarray(run(im if im.shape[-1] == 3 else im[..., 0], sigma / 2)) for im in unit]
    out = torch.from_numpy(np.stack(denoised).astype(np.float32)).reshape(unit.shape).permute(0, 3, 1, 2)
    return (out.to(images) * 2 - 1).clamp(-1, 1)


def unclip(op: HighDynamicRange, y: torch.Tensor) -> torch.Tensor:
    """y / scale: the exact inverse wherever a pixel did not saturate (and the value 1 / scale where it did)."""
    return (y / op.scale).clamp(-1, 1)


def hio(op: PhaseRetrieval, y: torch.Tensor, iters: int = 300, beta: float = 0.9, seed: int = 0) -> torch.Tensor:
    """Fienup's hybrid input-output (Fienup, Appl. Opt. 1982): from Fourier magnitudes y (B, C, Mh, Mw) and a
    random phase (seeded), alternate the measured magnitudes with the object constraints (zero outside the
    image's support in the padded frame, values in [0, 1]): HIO steps (pixels that break a constraint move by
    -beta times the new estimate) for `iters`, then `iters` // 5 error-reduction steps (they are set to the
    nearest allowed value). Like the samplers it can land on the 180-degree twin. Returns (B, C, H, W) in [-1, 1]."""
    _, height, width = op.image_shape(tuple(y.shape[1:]))
    pad_h, pad_w = op.padding(height, width)
    magnitude = torch.fft.ifftshift(y.float().clamp(min=0), dim=(-2, -1))
    support = torch.zeros(y.shape[-2:], dtype=torch.bool, device=y.device)
    support[pad_h : pad_h + height, pad_w : pad_w + width] = True
    generator = torch.Generator(device=y.device).manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, device=y.device) * (2 * math.pi)
    g = torch.fft.ifft2(torch.polar(magnitude, phase), norm="ortho").real

    def project_magnitude(v: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft2(v, norm="ortho")
        return torch.fft.ifft2(torch.polar(magnitude, spectrum.angle()), norm="ortho").real

    for _ in range(iters):
        new = project_magnitude(g)
        allowed = support & (new >= 0) & (new <= 1)
        g = torch.where(allowed, new, g - beta * new)
    for _ in range(iters // 5):
        g = torch.where(support, project_magnitude(g).clamp(0, 1), torch.zeros_like(g))
    image = g[..., pad_h : pad_h + height, pad_w : pad_w + width]
    return (image * 2 - 1).clamp(-1, 1).to(y.dtype)


def bicubic(op: SuperResolution, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(y, scale_factor=op.factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def harmonic(op: InpaintBox | InpaintRandom, y: torch.Tensor, max_iter: int = 2000) -> torch.Tensor:
    """Harmonic fill: observed pixels fixed, missing ones minimise the Dirichlet energy sum |grad x|^2
    (conjugate gradients on the 5-point graph Laplacian; replicate padding = zero flux at the image border)."""
    known = op.mask.to(y.dtype).expand_as(y)
    unknown = 1 - known
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=y.dtype, device=y.device)
    weight = kernel.expand(y.shape[1], 1, 3, 3)

    def neg_laplacian(v):  # on the unknown pixels only (a symmetric positive definite operator there)
        return -unknown * F.conv2d(F.pad(v * unknown, (1, 1, 1, 1), mode="replicate"), weight, groups=y.shape[1])

    fixed = y * known
    b = unknown * F.conv2d(F.pad(fixed, (1, 1, 1, 1), mode="replicate"), weight, groups=y.shape[1])
    return fixed + unknown * conjugate_gradient(neg_laplacian, b, max_iter=max_iter)


class Baseline(NamedTuple):
    """A registry entry: the function, whether it applies to an operator, what it needs (for errors), and the
    candidate values of its weights for `tune` ({} when it has none)."""

    fn: Callable
    applies: Callable[[Operator], bool]
    needs: str
    grid: dict[str, tuple] = {}  # noqa: RUF012  (a NamedTuple default, never mutated)


HALF_DECADES = tuple(10.0**e for e in (-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0))


SIGMA_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # pnp_admm's final denoiser strengths on the [-1, 1] scale
SIGMA_START = 0.4  # its first (about 50 / 255 on [0, 1], DPIR's sigma_1, Zhang et al. 2021 Sec. 4.1)


def _gaussian_denoising(op: Operator) -> bool:
    return isinstance(op, Denoise) and _linear_gaussian(op) and op.noise.sigma > 0


def _linear_gaussian(op: Operator) -> bool:
    return op.is_linear and isinstance(op.noise, GaussianNoise)


BASELINES: dict[str, Baseline] = {
    "pinv": Baseline(pinv, lambda op: op.is_linear, "a linear operator"),
    "tikhonov": Baseline(tikhonov, lambda op: op.is_linear, "a linear operator", {"reg": HALF_DECADES}),
    "tv": Baseline(tv, lambda op: op.is_linear, "a linear operator", {"weight": HALF_DECADES[2:]}),
    "bm3d": Baseline(bm3d, _gaussian_denoising, "denoise with Gaussian noise"),
    "pnp_admm": Baseline(pnp_admm, _linear_gaussian, "a linear operator with Gaussian noise", {"sigma_d": SIGMA_GRID}),
    "unclip": Baseline(unclip, lambda op: isinstance(op, HighDynamicRange), "high_dynamic_range"),
    "hio": Baseline(hio, lambda op: isinstance(op, PhaseRetrieval), "phase_retrieval"),
    "bicubic": Baseline(bicubic, lambda op: isinstance(op, SuperResolution), "super_resolution"),
    "harmonic": Baseline(harmonic, lambda op: isinstance(op, (InpaintBox, InpaintRandom)), "an inpainting mask"),
}


def register_baseline(
    name: str, fn: Callable, applies: Callable[[Operator], bool], needs: str, grid: dict | None = None
) -> None:
    """Add a baseline fn(op, y, **params) -> (B, C, H, W), for the operators where `applies(op)` holds; `grid`:
    candidate values of its weights for `tune`."""
    if name in BASELINES:
        raise ValueError(f"baseline {name!r} is registered twice")
    BASELINES[name] = Baseline(fn, applies, needs, grid or {})


def tune(name: str, op: Operator, clean: torch.Tensor, y: torch.Tensor, fixed: dict | None = None) -> dict:
    """The values of baseline `name`'s grid weights (those not in `fixed`) whose estimates of `clean` (B, C, H, W)
    from its measurement y have the best mean PSNR, every combination of the grid tried; {} when none is free.
    `clean` must not be the images the baseline is then scored on."""
    from posterior_diffusion.metrics import psnr

    fixed = fixed or {}

    def score(candidate: dict) -> float:
        return float(psnr(baseline(name, op, y, **fixed, **candidate), clean).mean())

    return grid_search(BASELINES[name].grid, fixed, score)


def grid_search(grid: dict[str, tuple], fixed: dict, score: Callable[[dict], float]) -> dict:
    """The combination of the `grid` values (those of keys not in `fixed`) with the highest score(combination),
    every combination tried in grid order (the first of equal scores wins); {} when no key is free."""
    free = {k: v for k, v in grid.items() if k not in fixed}
    if not free:
        return {}
    candidates = [dict(zip(free, values, strict=True)) for values in itertools.product(*free.values())]
    scores = [score(c) for c in candidates]
    return candidates[scores.index(max(scores))]


def baseline(name: str, op: Operator, y: torch.Tensor, **params) -> torch.Tensor:
    """Run baseline `name` on y (B, *meas); a clear error when it does not apply to `op`."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    entry = BASELINES[name]
    if not entry.applies(op):
        raise ValueError(f"baseline {name!r} does not apply to operator '{op.name}'; it needs {entry.needs}")
    with torch.no_grad():
        return entry.fn(op, y, **params)
