"""A procedural model of black-hole images (a training set for the built-in interferometry prior).

Each image is a bright ring around a dark shadow, as in the EHT images of M87* and Sgr A*: a Gaussian ring
profile of radius `radius_uas` and width `width_uas`, made a crescent by a brightness asymmetry
(1 + a cos(theta - phi)), optionally thickened on the bright side, plus faint extended emission (a broad
Gaussian, and sometimes an elongated jet-like Gaussian), shifted off centre, blurred by a Gaussian and scaled to
peak 1. Parameters are drawn uniformly from the ranges of `BlackHoleModel`.

    python -m posterior_diffusion.eht.black_holes --out black_holes/ --num 5000     # 64x64 8-bit PNGs
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class BlackHoleModel:
    """Parameter ranges (uniform), in microarcseconds on a `fov_uas` field of view. Ring radii around 20 uas
    and widths of a few uas bracket the EHT 2017 M87* and Sgr A* images (ring diameters ~42 and ~52 uas)."""

    fov_uas: float = 160.0
    radius_uas: tuple[float, float] = (15.0, 28.0)
    width_uas: tuple[float, float] = (1.5, 6.0)
    asymmetry: tuple[float, float] = (0.0, 0.95)
    thickening: tuple[float, float] = (0.0, 0.5)  # extra width on the bright side, as a fraction
    offset_uas: float = 8.0  # centre shift up to this, in each direction
    extended_flux: tuple[float, float] = (0.0, 0.15)  # broad emission, peak relative to the ring
    extended_width_uas: tuple[float, float] = (15.0, 40.0)
    jet_probability: float = 0.3
    blur_uas: tuple[float, float] = (0.0, 4.0)


def _uniform(bounds: tuple[float, float], n: int, g: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def black_hole_images(num: int, size: int = 64, seed: int = 0, model: BlackHoleModel = BlackHoleModel()):
    """(num, 1, size, size) float32 images in [0, 1] (peak 1), drawn from `model` with `seed`."""
    g = torch.Generator().manual_seed(seed)
    pixel = model.fov_uas / size
    coords = (torch.arange(size, dtype=torch.float64) - size / 2 + 0.5) * pixel
    y, x = torch.meshgrid(-coords, coords, indexing="ij")  # north up, east to the right on the array
    y, x = y[None], x[None]
    r_ring = _uniform(model.radius_uas, num, g)[:, None, None]
    width = _uniform(model.width_uas, num, g)[:, None, None]
    asym = _uniform(model.asymmetry, num, g)[:, None, None]
    thick = _uniform(model.thickening, num, g)[:, None, None]
    phi = _uniform((0.0, 2 * math.pi), num, g)[:, None, None]
    cx = _uniform((-model.offset_uas, model.offset_uas), num, g)[:, None, None]
    cy = _uniform((-model.offset_uas, model.offset_uas), num, g)[:, None, None]
    dx, dy = x - cx, y - cy
    r, theta = torch.hypot(dx, dy), torch.atan2(dy, dx)
    bright_side = (1 + torch.cos(theta - phi)) / 2
    local_width = width * (1 + thick * bright_side)
    image = torch.exp(-0.5 * ((r - r_ring) / local_width) ** 2) * (1 + asym * torch.cos(theta - phi))
    ext_width = _uniform(model.extended_width_uas, num, g)[:, None, None]
    ext_flux = _uniform(model.extended_flux, num, g)[:, None, None]
    image = image + ext_flux * torch.exp(-0.5 * (r / ext_width) ** 2)
    jet = (torch.rand(num, generator=g) < model.jet_probability).double()[:, None, None]
    jet_angle = _uniform((0.0, 2 * math.pi), num, g)[:, None, None]
    along = dx * torch.cos(jet_angle) + dy * torch.sin(jet_angle)
    across = -dx * torch.sin(jet_angle) + dy * torch.cos(jet_angle)
    jet_profile = torch.exp(-0.5 * (across / (0.3 * ext_width)) ** 2 - 0.5 * (along / (1.5 * ext_width)) ** 2)
    image = image + jet * ext_flux * jet_profile * (along > 0)
    image = _blur(image, _uniform(model.blur_uas, num, g) / pixel)
    image = image / image.flatten(1).max(1).values[:, None, None]
    return image.clamp(0, 1).float()[:, None]


def _blur(images: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Per-image circular Gaussian blur (std sigma_px pixels; 0 leaves the image unchanged) via the FFT."""
    n = images.shape[-1]
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    f2 = f[None, :, None] ** 2 + f[None, None, :] ** 2
    transfer = torch.exp(-2 * math.pi**2 * sigma_px[:, None, None] ** 2 * f2)
    return torch.fft.ifft2(torch.fft.fft2(images) * transfer).real


def write_black_hole_folder(folder: str | Path, num: int, size: int = 64, seed: int = 0) -> Path:
    """Write `num` images as 8-bit grayscale PNGs bh_00000.png, ... into `folder` (a `train --data` folder)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, num, 1000):
        batch = black_hole_images(min(1000, num - start), size, seed=seed + start)
        for k, image in enumerate(batch):
            pixels = (image[0] * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"bh_{start + k:05d}.png")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posterior_diffusion.eht.black_holes", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_black_hole_folder(args.out, args.num, args.size, args.seed)
    print(f"wrote {args.num} images to {args.out}")


if __name__ == "__main__":
    main()


__all__ = ["BlackHoleModel", "black_hole_images", "write_black_hole_folder"]
