"""Inpainting: y = m * x (+ noise on the observed pixels) with a binary pixel mask m (1 = observed).

A mask is its own SVD (U = V = I, singular values m). Masks cover all channels of a pixel, as in DPS.
Measurements have the image's shape; unobserved pixels of y are 0.
"""

from __future__ import annotations

import torch

from .base import DiagonalOperator
from .registry import register_operator


def _size(image_size) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return int(h), int(w)


class Masked(DiagonalOperator):
    """Base class: a fixed mask (1, H, W) for images of size `image_size`."""

    calibration_strata_names = ("observed", "missing")

    def _set_mask(self, mask: torch.Tensor) -> None:
        self.register_buffer("mask", mask.float().reshape(1, *mask.shape[-2:]))  # broadcasts over (B,) C, H, W

    def check_image_shape(self, image_shape):
        super().check_image_shape(image_shape)
        if tuple(image_shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise ValueError(
                f"the {self.name} mask is {tuple(self.mask.shape[-2:])} but the image is {tuple(image_shape[-2:])}; "
                f"build the operator with image_size={list(image_shape[-2:])}"
            )

    def restrict(self, y):
        return y * self.mask.to(y.dtype)

    def measure(self, x, generator=None):
        return self.restrict(super().measure(x, generator))

    def calibration_strata(self, y):
        return (self.mask == 0).long().expand_as(y).to(y.device)

    def singular_values(self, image_shape):
        return self.mask


@register_operator("inpaint_box")
class InpaintBox(Masked):
    """A missing rectangle (DPS App. C: a 128x128 box in a 256x256 image).

    Args:
        image_size: H (square) or (H, W).
        box_size: side of the box (int or (h, w)); default half of the image size.
        top, left: box position; None draws it from `seed`, uniformly with a margin of 1/16 of the
            image size (the DPS `mask_generator`: 16 px at 256).
    """

    def __init__(self, image_size=256, box_size=None, top: int | None = None, left: int | None = None, seed: int = 0):
        super().__init__()
        h, w = _size(image_size)
        bh, bw = (h // 2, w // 2) if box_size is None else _size(box_size)
        if bh > h or bw > w:
            raise ValueError(f"box {bh}x{bw} does not fit in a {h}x{w} image")
        g = torch.Generator().manual_seed(int(seed))
        margin_h, margin_w = h // 16, w // 16

        def draw(n_free: int, margin: int) -> int:
            lo, hi = min(margin, n_free), max(min(margin, n_free), n_free - margin)
            return int(torch.randint(lo, hi + 1, (1,), generator=g))

        t = draw(h - bh, margin_h) if top is None else int(top)
        l_ = draw(w - bw, margin_w) if left is None else int(left)
        if not (0 <= t <= h - bh and 0 <= l_ <= w - bw):
            raise ValueError(f"box at ({t}, {l_}) of size {bh}x{bw} leaves the {h}x{w} image")
        mask = torch.ones(h, w)
        mask[t : t + bh, l_ : l_ + bw] = 0
        self._set_mask(mask)
        self.image_size, self.box_size, self.top, self.left, self.seed = [h, w], [bh, bw], t, l_, seed

    @classmethod
    def task_params(cls, params: dict) -> dict:
        """The box as a share of the image side (to one decimal: the default half at any size), without its
        position (drawn per seed): a calibration made at one size applies at every size."""
        (h, w), (bh, bw) = params["image_size"], params["box_size"]
        return {"box_share": [round(bh / h, 1), round(bw / w, 1)]}


@register_operator("inpaint_random")
class InpaintRandom(Masked):
    """Randomly missing pixels, drawn once from `seed`.

    Args:
        image_size: H (square) or (H, W).
        missing: fraction of missing pixels (DPS paper: 0.92; DAPS/ReSample: 0.70).
        seed: seed of the mask.
    """

    def __init__(self, image_size=256, missing: float = 0.92, seed: int = 0):
        super().__init__()
        if not 0 <= missing < 1:
            raise ValueError(f"missing must be in [0, 1), got {missing}")
        h, w = _size(image_size)
        g = torch.Generator().manual_seed(int(seed))
        self._set_mask(torch.rand(h, w, generator=g) >= missing)
        self.image_size, self.missing, self.seed = [h, w], missing, seed
