"""Classical reconstructions, the yardstick every table compares the diffusion samplers with.

Each baseline maps (op, y, **params) to one image estimate (B, C, H, W) and says which operators it handles:

    pinv       A^+ y (minimum-norm least squares)                         any linear operator
    tikhonov   argmin ||y - A x||^2 + reg ||x||^2 (Wiener for blurs)      any linear operator
    bicubic    bicubic upsampling of y                                    super_resolution
    harmonic   missing pixels solve Laplace's equation from the observed  inpainting (masks)

Applications add their own (`register_baseline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from posterior_diffusion.operators import InpaintBox, InpaintRandom, LinearOperator, Operator, SuperResolution
from posterior_diffusion.tensor_utils import conjugate_gradient


def pinv(op: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    return op.pinv(y)


def tikhonov(op: LinearOperator, y: torch.Tensor, reg: float = 1e-2, max_iter: int = 500) -> torch.Tensor:
    """argmin ||y - A x||^2 + reg ||x||^2, i.e. (A^T A + reg I) x = A^T y by conjugate gradients (per sample);
    for a blur this is the Wiener filter for a white signal of power 1 / reg relative to the noise."""
    return conjugate_gradient(lambda v: op.normal(v) + reg * v, op.adjoint(y), max_iter=max_iter)


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
    """A registry entry: the function, whether it applies to an operator, and what it needs (for errors)."""

    fn: Callable
    applies: Callable[[Operator], bool]
    needs: str


BASELINES: dict[str, Baseline] = {
    "pinv": Baseline(pinv, lambda op: op.is_linear, "a linear operator"),
    "tikhonov": Baseline(tikhonov, lambda op: op.is_linear, "a linear operator"),
    "bicubic": Baseline(bicubic, lambda op: isinstance(op, SuperResolution), "super_resolution"),
    "harmonic": Baseline(harmonic, lambda op: isinstance(op, (InpaintBox, InpaintRandom)), "an inpainting mask"),
}


def register_baseline(name: str, fn: Callable, applies: Callable[[Operator], bool], needs: str) -> None:
    """Add a baseline fn(op, y, **params) -> (B, C, H, W), for the operators where `applies(op)` holds."""
    if name in BASELINES:
        raise ValueError(f"baseline {name!r} is registered twice")
    BASELINES[name] = Baseline(fn, applies, needs)


def baseline(name: str, op: Operator, y: torch.Tensor, **params) -> torch.Tensor:
    """Run baseline `name` on y (B, *meas); a clear error when it does not apply to `op`."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    entry = BASELINES[name]
    if not entry.applies(op):
        raise ValueError(f"baseline {name!r} does not apply to operator '{op.name}'; it needs {entry.needs}")
    with torch.no_grad():
        return entry.fn(op, y, **params)
