"""Fourier phase retrieval: y = |F(pad(x01))|, the magnitude of the oversampled 2-D Fourier transform (DPS, DAPS).

As the DAPS reference (zhangbingliang2019/DAPS, forward_operator `PhaseRetrieval`, task config
`phase_retrieval.yaml`: oversample 2.0, sigma 0.05): the image is mapped from [-1, 1] to [0, 1] (a non-negative
intensity, as in optics), zero-padded by int(oversample / 8 * H) pixels on the top and bottom and
int(oversample / 8 * W) on the left and right (64 px per side at 256 px with oversample 2, so the transform is
1.5 times the image side), transformed by the orthonormal 2-D FFT and centred (fftshift; the reference's
`fft2c_new`), and the magnitude kept. Measurements are (C, H + 2 pad_h, W + 2 pad_w) with Gaussian noise on the
magnitudes. The orthonormal FFT keeps ||A(x)|| = ||x01||, so noise_sigma means the same at every image size; the
centre (zero-frequency) value is sum(x01) / sqrt(number of padded pixels), far above 1 for real images.

Departure from DPS (Chung et al., ICLR 2023, `PhaseRetrievalOperator`): DPS transforms the [-1, 1] image itself
and pads by oversample / 8 * 256 whatever the image size. We follow DAPS (the [0, 1] map keeps the image
non-negative, which with the known support is what makes the problem well posed up to its trivial ambiguities).

Ambiguities: |F| does not change under a circular shift of the padded image nor under a 180-degree rotation (the
"twin image"), so the data fit the truth and its rotated twin equally well. The bench scores directly against the
truth, as the papers do, with the best of several runs (tasks.py `best_of`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Operator
from .registry import register_operator


@register_operator("phase_retrieval")
class PhaseRetrieval(Operator):
    """|FFT| of the zero-padded [0, 1] image (nonlinear, differentiable; no adjoint, pinv or SVD).

    Args:
        oversample: padding of oversample / 8 times the image side per side (DPS / DAPS: 2.0, the transform
            then 1.5 times the image side); >= 0.

    Example:
        >>> op = get_operator("phase_retrieval", noise_sigma=0.0)
        >>> op(torch.ones(1, 1, 8, 8)).shape  # 2 px of padding per side
        torch.Size([1, 1, 12, 12])
    """

    def __init__(self, oversample: float = 2.0):
        super().__init__()
        if not oversample >= 0:
            raise ValueError(f"oversample must be >= 0, got {oversample}")
        self.oversample = oversample

    def padding(self, height: int, width: int) -> tuple[int, int]:
        """Zero padding (rows, columns) per side for images of height x width (the reference's rounding down)."""
        return int(self.oversample / 8.0 * height), int(self.oversample / 8.0 * width)

    def measurement_shape(self, image_shape):
        self.check_image_shape(image_shape)
        c, h, w = image_shape
        pad_h, pad_w = self.padding(h, w)
        return (c, h + 2 * pad_h, w + 2 * pad_w)

    def image_shape(self, measurement_shape):
        c, mh, mw = measurement_shape
        rows = [h for h in range(1, mh + 1) if h + 2 * self.padding(h, 1)[0] == mh]
        cols = [w for w in range(1, mw + 1) if w + 2 * self.padding(1, w)[1] == mw]
        if not rows or not cols:
            raise ValueError(
                f"no image size gives a {mh}x{mw} phase retrieval measurement with oversample {self.oversample}"
            )
        return (c, rows[0], cols[0])

    def forward(self, x):
        pad_h, pad_w = self.padding(*x.shape[-2:])
        padded = F.pad((x + 1) / 2, (pad_w, pad_w, pad_h, pad_h))
        spectrum = torch.fft.fft2(
            padded.float() if padded.dtype in (torch.float16, torch.bfloat16) else padded, norm="ortho"
        )
        return torch.fft.fftshift(spectrum, dim=(-2, -1)).abs().to(x.dtype)

    def check_measurement_values(self, y):
        """Refuse magnitudes on another scale: none can exceed that of a white image, H W / sqrt(padded pixels) (the
        orthonormal FFT of the [0, 1] image); a larger one is an unnormalised FFT or a [0, 255] image."""
        _, h, w = self.image_shape(tuple(y.shape[1:]))
        bound = h * w / (y.shape[-2] * y.shape[-1]) ** 0.5
        peak = float(y.abs().max()) if y.numel() else 0.0
        if peak > 1.5 * bound + 1:
            raise ValueError(
                f"y has magnitudes up to {peak:.4g} but a {h}x{w} image in [-1, 1] gives at most {bound:.4g}: "
                "phase retrieval measurements are |FFT| (orthonormal, norm='ortho') of the [0, 1] image, padded"
            )
