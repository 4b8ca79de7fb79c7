"""The classical reconstructions of radio interferometry: the dirty image and regularised maximum likelihood.

dirty      A^H V, positive part scaled to the measured flux            interferometry, data="vis"
rml        argmin NLL(y, A(x)) + tv_weight TV (L-BFGS; ehtim-style)    interferometry, any data layout
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from posterior_diffusion.operators.interferometry import Interferometry
from posterior_diffusion.operators.kernels import gaussian_kernel

# the starts of the samplers' "rml" initialisation: the default 50 uas plus a wider 70 uas one (the closure-phase
# objective has local minima; the fit of lower objective is kept)
RML_STARTS = (50.0, 70.0)


def dirty(op: Interferometry, y: torch.Tensor) -> torch.Tensor:
    """The dirty image A^H V / M of "vis" measurements y (B, 2M) as an image (B, 1, N, N) in [-1, 1]: negative
    sidelobes clipped to 0, the rest scaled to the measured total flux (`op.measured_flux`, the shortest
    baseline's median amplitude), then x = 2 b / peak_jy - 1 clipped. Closure data have no visibility phases,
    hence no dirty image: it applies to data="vis" only."""
    b = op.dirty_image(y).clamp(min=0)
    b = b * (op.measured_flux(y) / b.flatten(1).sum(-1).clamp(min=1e-30)).view(-1, 1, 1, 1)
    return (2 * b / op.peak_jy - 1).clamp(-1, 1)


def rml(
    op: Interferometry,
    y: torch.Tensor,
    tv_weight: float = 3.0,
    init_fwhm_uas: float | Sequence[float] = 50.0,
    rounds: int = 4,
    max_iter: int = 300,
) -> torch.Tensor:
    """Regularised maximum likelihood, as ehtim (InverseBench's "eht-imaging" baseline) images: the brightness
    b = sigmoid(u) in [0, 1] (x = 2 b - 1) minimises op.noise.neg_log_likelihood(y, op(x)) + tv_weight TV(b)
    (smoothed isotropic TV, sum sqrt(dx^2 + dy^2 + 1e-8)) on any data layout, from a centred circular Gaussian
    of FWHM `init_fwhm_uas` carrying the measured flux, by L-BFGS (strong Wolfe, history 50) in `rounds` calls of
    up to `max_iter` iterations (rounds=0: the initial Gaussian). y (B, D) -> x (B, 1, N, N) in [-1, 1]. One
    image at a time: line searches on a batch would couple its problems, so each result is independent of the batch.
    Several `init_fwhm_uas`: one fit from each start, the one of lowest objective kept (restarts, as ehtim users
    re-image from several initial Gaussians; the closure-phase objective has local minima). The default
    tv_weight is the one assets/bench/black_hole/README.md chose on validation images.
    """
    starts = [float(init_fwhm_uas)] if isinstance(init_fwhm_uas, (int, float)) else [float(f) for f in init_fwhm_uas]
    if tv_weight < 0 or not starts or min(starts) <= 0 or rounds < 0 or max_iter < 1:
        raise ValueError(
            f"need tv_weight >= 0, init_fwhm_uas > 0, rounds >= 0, max_iter >= 1; got {tv_weight}, "
            f"{init_fwhm_uas}, {rounds}, {max_iter}"
        )
    with torch.enable_grad():
        fits = [[_rml_one(op, y[k : k + 1], tv_weight, f, rounds, max_iter) for f in starts] for k in range(len(y))]
    return torch.cat([min(candidates, key=lambda fit: fit[1])[0] for candidates in fits])


def _rml_one(op: Interferometry, y, tv_weight, init_fwhm_uas, rounds, max_iter) -> tuple[torch.Tensor, float]:
    """`rml` of one measurement y (1, D) from one start -> (x (1, 1, N, N), its final objective)."""
    u = torch.logit(gaussian_brightness(op, op.measured_flux(y), init_fwhm_uas).clamp(1e-3, 1 - 1e-3))
    u.requires_grad_(True)
    optimizer = torch.optim.LBFGS([u], max_iter=max_iter, history_size=50, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        b = torch.sigmoid(u)
        loss = op.noise.neg_log_likelihood(y, op(2 * b - 1)).sum() + tv_weight * _total_variation(b)
        loss.backward()
        return loss

    for _ in range(rounds):
        optimizer.step(objective)
    with torch.no_grad():
        b = torch.sigmoid(u)
        loss = op.noise.neg_log_likelihood(y, op(2 * b - 1)).sum() + tv_weight * _total_variation(b)
    return (2 * b - 1).detach(), float(loss)


def gaussian_brightness(op: Interferometry, flux: torch.Tensor, fwhm_uas: float) -> torch.Tensor:
    """A centred circular Gaussian of FWHM `fwhm_uas` and total flux `flux` (B,) Jy, as brightness (B, 1, N, N)
    in units of peak_jy."""
    fwhm_px = fwhm_uas * op.image_size / op.fov_uas
    kernel = gaussian_kernel(op.image_size, fwhm_px / (2 * math.sqrt(2 * math.log(2)))).to(flux)
    return kernel * (flux / op.peak_jy).view(-1, 1, 1, 1)


def _total_variation(b: torch.Tensor) -> torch.Tensor:
    """Smoothed isotropic total variation sum sqrt(dx^2 + dy^2 + 1e-8) of (B, 1, H, W) images (a scalar)."""
    dx = b[..., :-1, 1:] - b[..., :-1, :-1]
    dy = b[..., 1:, :-1] - b[..., :-1, :-1]
    return (dx.square() + dy.square() + 1e-8).sqrt().sum()
