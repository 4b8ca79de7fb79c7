"""Denoising: A = I, so y = x + noise."""

from __future__ import annotations

import torch

from .base import SVDOperator
from .registry import register_operator


@register_operator("denoise")
class Denoise(SVDOperator):
    """The identity operator (its SVD is trivial: U = V = I, s = 1)."""

    def __init__(self):
        super().__init__()

    def singular_values(self, image_shape):
        return torch.ones(1)

    def V_t(self, x):
        return x

    def V(self, c):
        return c

    def U_t(self, y):
        return y

    def U(self, c):
        return c

    def forward(self, x):
        return x
