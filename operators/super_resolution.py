"""Super-resolution: y = D(x), a downsampling by an integer `factor`.

- method "bicubic": antialiased bicubic resize (torch `interpolate(..., antialias=True)`, Keys a = -0.5),
  the kind of Resizer DPS uses for SR x4. Linear; adjoint by autograd, pinv by CGLS (`svd()` is None).
  Output pixel i is centred at input coordinate factor * i + (factor - 1) / 2, the centre of its block (as
  Pillow's resize and "average"); DeepInverse's `Downsampling` filters and keeps x[::factor], a grid one pixel
  off at factor 4 (tests/test_operator_conventions.py).
- method "average": block averaging (DDRM/RED-Diff `sr4`). Exact SVD: inside each factor x factor block
  an orthonormal basis whose first vector is constant; that coordinate has singular value 1/factor and
  all others 0.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange

from .base import LinearOperator
from .registry import register_operator

METHODS = ("bicubic", "average")


def _block_basis(n: int) -> torch.Tensor:
    """Orthonormal (n, n) matrix whose first column is constant 1/sqrt(n)."""
    m = torch.eye(n, dtype=torch.float64)
    m[:, 0] = 1.0
    q, _ = torch.linalg.qr(m)
    return (q * q[0, 0].sign()).float() if n > 1 else torch.ones(1, 1)


@register_operator("super_resolution")
class SuperResolution(LinearOperator):
    """Downsample by `factor` (any integer >= 1) with `method` "bicubic" (DPS) or "average" (DDRM)."""

    svd_settings: ClassVar[dict[str, object] | None] = {"method": "average"}

    def __init__(self, factor: int = 4, method: str = "bicubic"):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        self.factor, self.method = int(factor), method
        self.register_buffer("basis", _block_basis(self.factor**2))

    def check_image_shape(self, image_shape):
        super().check_image_shape(image_shape)
        if image_shape[1] % self.factor or image_shape[2] % self.factor:
            raise ValueError(f"image size {tuple(image_shape[1:])} is not divisible by the SR factor {self.factor}")

    def measurement_shape(self, image_shape):
        self.check_image_shape(image_shape)
        c, h, w = image_shape
        return (c, h // self.factor, w // self.factor)

    def image_shape(self, measurement_shape):
        c, h, w = measurement_shape
        return (c, h * self.factor, w * self.factor)

    def forward(self, x):
        if self.method == "average":
            return F.avg_pool2d(x, self.factor)
        size = (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)

    # SVD of block averaging --------------------------------------------------------------------------
    def singular_values(self, image_shape):
        s = torch.zeros(self.factor**2, device=self.basis.device)
        s[0] = 1.0 / self.factor
        return s

    def V_t(self, x):
        blocks = rearrange(x, "b c (h i) (w j) -> b c h w (i j)", i=self.factor, j=self.factor)
        return blocks @ self.basis.to(x.dtype)

    def V(self, c):
        blocks = c @ self.basis.to(c.dtype).T
        return rearrange(blocks, "b c h w (i j) -> b c (h i) (w j)", i=self.factor, j=self.factor)

    def U_t(self, y):
        return F.pad(y[..., None], (0, self.factor**2 - 1))

    def U(self, c):
        return c[..., 0]
