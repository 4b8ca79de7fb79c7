"""High dynamic range reconstruction: y = clip(scale x, -1, 1), an over-exposed image (DAPS, RED-Diff).

As the DAPS reference (zhangbingliang2019/DAPS, forward_operator `HighDynamicRange`, task config `hdr.yaml`:
scale 2, sigma 0.05): the [-1, 1] image multiplied by `scale` and clipped back to [-1, 1], so every pixel beyond
1 / scale in magnitude saturates and only the prior can say what it was. Nonlinear; differentiable almost
everywhere (autograd's gradient is 0 on saturated pixels, as in the reference).
"""

from __future__ import annotations

from .base import Operator
from .registry import register_operator


@register_operator("high_dynamic_range")
class HighDynamicRange(Operator):
    """clip(scale * x, -1, 1) (nonlinear; no adjoint, pinv or SVD).

    Args:
        scale: the exposure factor (DAPS: 2); > 0 (scale <= 1 saturates nothing).

    Example:
        >>> op = get_operator("high_dynamic_range", noise_sigma=0.0)
        >>> op(torch.tensor([[[[-0.8, 0.25, 0.6]]]]))
        tensor([[[[-1.0000,  0.5000,  1.0000]]]])
    """

    calibration_strata_names = ("unsaturated", "saturated")
    one_sided_class = "saturated"

    def __init__(self, scale: float = 2.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = scale

    def forward(self, x):
        return (self.scale * x).clamp(-1, 1)

    def calibration_strata(self, y):
        """Saturated: |y| within two noise stds of 1 (a saturated pixel is +-1 plus the noise)."""
        return (y.abs() >= 1 - 2 * getattr(self.noise, "sigma", 0.0)).long()

    def calibration_sides(self, y):
        """Saturated pixels: the sign of their clip (+1 bright, -1 dark); the truth lies at or beyond it, so only the
        image range [-1, 1] bounds it on that side. 0 elsewhere."""
        return self.calibration_strata(y) * y.sign().long()
