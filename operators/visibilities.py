"""The visibility measurement equation on a pixel grid (ehtim conventions; shared reference interferometry.md 1.1-1.2).

An N x N image of `fov_uas` microarcseconds, pixel p = fov / N radians; pixel (row i, column j) sits at
l_j = (N/2 - 1/2 - j) p (east to the left) and m_i = (N/2 - 1/2 - i) p (north up). A visibility is

    V(u, v) = P(u, v) sum_ij x_ij exp(+2 pi i (u l_j + v m_i)),

with the triangle pixel pulse P = sinc^2(p u) sinc^2(p v) (ehtim's default; "delta" gives P = 1). The phases are
computed in float64 (u ~ 1e10 wavelengths times l ~ 1e-10 rad) and the matrix is then cast to complex64.
"""

from __future__ import annotations

import math

import torch

RAD_PER_UAS = math.pi / 180 / 3600 / 1e6
PULSES = ("triangle", "delta")


def pixel_offsets(image_size: int, fov_uas: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(l, m): sky offsets in radians of the pixel columns (east to the left) and rows (north up), float64."""
    p = fov_uas * RAD_PER_UAS / image_size
    k = torch.arange(image_size, dtype=torch.float64)
    offsets = (image_size / 2 - 0.5 - k) * p
    return offsets, offsets.clone()


def pulse(u: torch.Tensor, v: torch.Tensor, pixel_rad: float, kind: str = "triangle") -> torch.Tensor:
    """Fourier transform of the pixel interpolation kernel at (u, v): (M,) float64."""
    if kind not in PULSES:
        raise ValueError(f"pulse must be one of {PULSES}, got {kind!r}")
    if kind == "delta":
        return torch.ones_like(u)
    return torch.sinc(pixel_rad * u) ** 2 * torch.sinc(pixel_rad * v) ** 2


def dft_matrix(
    u: torch.Tensor,
    v: torch.Tensor,
    image_size: int,
    fov_uas: float,
    pulse_kind: str = "triangle",
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    """A (M, N*N) with V = A @ x.flatten() for images x (N, N) in Jy per pixel (row-major), in `dtype`."""
    east, north = pixel_offsets(image_size, fov_uas)
    u, v = u.double(), v.double()
    phase = 2 * math.pi * (u[:, None, None] * east[None, None, :] + v[:, None, None] * north[None, :, None])
    weight = pulse(u, v, fov_uas * RAD_PER_UAS / image_size, pulse_kind)[:, None, None]
    return (weight * torch.polar(torch.ones_like(phase), phase)).reshape(len(u), -1).to(dtype)
