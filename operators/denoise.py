"""Denoising: A = I, so y = x + noise."""

from __future__ import annotations

import torch

from .base import DiagonalOperator
from .registry import register_operator


@register_operator("denoise")
class Denoise(DiagonalOperator):
    """The identity operator (its SVD is trivial: U = V = I, s = 1)."""

    def __init__(self):
        super().__init__()

    def singular_values(self, image_shape):
        return torch.ones(1)

    def forward(self, x):
        return x
