"""The Gaussian noise level of an image-like measurement, estimated from the measurement alone.

`estimate_noise_sigma(y, mask)` works on the finest diagonal Haar wavelet coefficients: that of a 2x2 block
[[a, b], [c, d]] is (a - b - c + d) / 2, orthonormal, so white noise of std sigma gives coefficients of std sigma,
while the smooth parts of an image (and every blurred image) give almost none.
- Fully observed measurements ("flat-tiles"): the coefficients are cut into TILE x TILE tiles (all channels); the
  TILE_QUANTILE quantile of the tiles' mean squares, divided by that quantile of a chi-square / n (Wilson-Hilferty),
  is sigma^2: the flattest tenth of the image, where texture adds least. Chosen on the first 12 CBSD68 photos (the
  estimator's tune split; assets/bench/noise_estimate reports other images): the median absolute value of all
  coefficients / 0.6745 (Donoho & Johnstone 1994, Biometrika 81, Sec. 4.2) read 3.5x too high at sigma 1/255 and
  1.4x at 5/255 on the full photos (8x8 tiles: 2.0x, 1.14x); on 64 px crops 4x4 tiles read 1.25x at 5/255 where
  8x8 read 1.33x (at 256 px the two agree within 0.01).
- With a mask of observed pixels (inpainting), "masked-mad": the median absolute value / 0.6745 of the coefficients
  of fully observed blocks; where fewer than MIN_BLOCKS per image are (a random mask with most pixels missing),
  "neighbour-differences": that of the horizontal and vertical differences (a - b) / sqrt(2) of observed
  neighbours (more image content: they read high on textured images at low noise).
"""

from __future__ import annotations

import copy

import torch

MAD_TO_SIGMA = 0.6745  # the median of |N(0, 1)|
MIN_BLOCKS = 64  # fully observed 2x2 blocks per image below which a masked estimate uses neighbour differences
TILE = 4  # tile side, in Haar coefficients, of the flat-tiles estimate
TILE_QUANTILE = 0.1
_Z = {0.1: -1.2816}  # standard normal quantiles


def estimate_noise_sigma(y: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """(per-measurement noise std (B,), the method: "flat-tiles", "mad" (images too small for tiles), "masked-mad" or
    "neighbour-differences").

    y: (B, C, h, w) image-like measurements (any scale: the estimate is on y's scale, [-1, 1] for this package);
    mask: None, or (1 or B, h, w) / (1 or B, 1, h, w) with 1 where a pixel is observed. Sides are cropped to even.
    """
    if y.ndim != 4:
        raise ValueError(f"noise estimation needs image-like measurements (B, C, h, w); got shape {tuple(y.shape)}")
    y = y.float()
    h, w = y.shape[-2] // 2 * 2, y.shape[-1] // 2 * 2
    if h < 2 or w < 2:
        raise ValueError(f"noise estimation needs measurements of at least 2x2 pixels; got {tuple(y.shape[-2:])}")
    observed = None if mask is None else mask.float().reshape(-1, 1, *mask.shape[-2:]).expand(y.shape[0], 1, -1, -1)
    a, b, c, d = (y[..., i:h:2, j:w:2] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    hh = (a - b - c + d) / 2  # (B, C, h/2, w/2)
    if observed is None:
        if hh.shape[-1] < TILE or hh.shape[-2] < TILE:
            return _mad(hh.flatten(1)) / MAD_TO_SIGMA, "mad"  # too small for tiles: all coefficients
        return _flat_tiles(hh), "flat-tiles"
    o = [observed[..., i:h:2, j:w:2] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
    full = (o[0] * o[1] * o[2] * o[3]).expand_as(hh) > 0
    if int(full[:, 0].flatten(1).sum(1).min()) >= MIN_BLOCKS:
        return torch.stack([_mad(hh[i][full[i]]) for i in range(len(y))]) / MAD_TO_SIGMA, "masked-mad"
    ok = observed.expand_as(y) > 0
    sigmas = []
    for i in range(len(y)):
        pairs = []
        for dim in (-1, -2):  # horizontal, vertical neighbours
            first, second = y[i].narrow(dim, 0, y.shape[dim] - 1), y[i].narrow(dim, 1, y.shape[dim] - 1)
            both = ok[i].narrow(dim, 0, y.shape[dim] - 1) & ok[i].narrow(dim, 1, y.shape[dim] - 1)
            pairs.append(((first - second) / 2**0.5)[both])
        values = torch.cat(pairs)
        if values.numel() < MIN_BLOCKS:
            raise ValueError(
                f"too few observed neighbouring pixels ({values.numel()}) to estimate the noise; give --noise-sigma"
            )
        sigmas.append(_mad(values) / MAD_TO_SIGMA)
    return torch.stack(sigmas), "neighbour-differences"


def _flat_tiles(hh: torch.Tensor) -> torch.Tensor:
    """sigma (B,) from the TILE_QUANTILE quantile of the mean squares of TILE x TILE tiles of coefficients hh
    (B, C, h, w), each a chi-square with n = C * TILE^2 degrees of freedom times sigma^2 / n where it is all noise."""
    h, w = hh.shape[-2] // TILE * TILE, hh.shape[-1] // TILE * TILE
    tiles = hh[..., :h, :w].unfold(-2, TILE, TILE).unfold(-2, TILE, TILE)  # (B, C, h/T, w/T, T, T)
    mean_squares = tiles.pow(2).mean(dim=(1, -2, -1)).flatten(1)
    n = hh.shape[1] * TILE * TILE
    chi_quantile = (1 - 2 / (9 * n) + _Z[TILE_QUANTILE] * (2 / (9 * n)) ** 0.5) ** 3  # Wilson-Hilferty, over n
    return (mean_squares.quantile(TILE_QUANTILE, dim=1) / chi_quantile).sqrt()


def _mad(values: torch.Tensor) -> torch.Tensor:
    """Median absolute value (about zero: wavelet coefficients and differences have mean zero), along the last
    dimension."""
    return values.abs().median(dim=-1).values


def with_noise_sigma(op, y: torch.Tensor, noise_sigma: float | str) -> tuple[object, dict]:
    """A copy of operator `op` whose Gaussian noise has std `noise_sigma` (a number on the [-1, 1] scale), or the
    std estimated from the measurements y (B, *op.measurement_shape) for "auto" (`estimate_noise_sigma`, on the
    observed pixels of a masked operator; one std for the batch: the median of the per-measurement estimates), and
    the record {"noise_sigma", "estimated", "method", "per_measurement"} that run.json keeps. A one-line ValueError
    for an operator without Gaussian noise or, with "auto", without image-like measurements."""
    from .noise import GaussianNoise

    if op.own_noise or not isinstance(op.noise, GaussianNoise):
        raise ValueError(f"noise_sigma applies to Gaussian noise; operator '{op.name}' has {op.noise.to_config()}")
    record = {"estimated": noise_sigma == "auto"}
    if noise_sigma == "auto":
        if op.measurement_ndim != 3:
            raise ValueError(
                f"noise_sigma='auto' needs image-like measurements; '{op.name}' measurements are not: give a number"
            )
        per_measurement, method = estimate_noise_sigma(y, getattr(op, "mask", None))
        value = float(per_measurement.median())
        record |= {"method": method, "per_measurement": [round(float(v), 6) for v in per_measurement]}
    elif isinstance(noise_sigma, (int, float)) and not isinstance(noise_sigma, bool) and noise_sigma >= 0:
        value = float(noise_sigma)
    else:
        raise ValueError(f"noise_sigma must be a number >= 0 or 'auto', got {noise_sigma!r}")
    new = copy.deepcopy(op)
    new.noise = GaussianNoise(value)
    return new, {"noise_sigma": round(value, 6)} | record
