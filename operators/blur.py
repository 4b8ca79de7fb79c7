"""Blur operators y = k (*) x, applied to each channel.

Boundary handling, chosen per operator with `boundary`:
- "reflect" (default; the DPS convention, measurements.py): reflect-pad the image by the kernel
  radius, then a depthwise `conv2d` (a correlation with k), so y has the image's size. Linear; the
  adjoint is exact (closed form: the transposed convolution, then the padding folded back) and pinv is
  CGLS; no closed-form SVD (`svd()` is None). Kernels with more than FFT_TAPS taps (the papers' 61x61)
  correlate the padded image through the FFT instead (the same values to rounding: the kernel never wraps
  around the padded image), 9x faster at 256 px on a CPU; in float64 (the conjugate-gradient solves of
  `prox` and `pinv`) every kernel above 3x3 does (FFT_TAPS_FLOAT64: 50-90x faster at 15x15).
- "circular": periodic boundary, computed with the FFT. Same interior values as "reflect" but wraps
  around at the border; it has the exact SVD A = F^* diag(K) F (`svd()` is the operator) used by DDRM/GibbsDDRM.

Both are correlations, y[i, j] = sum_{a, b} k[a, b] x[i + a - r, j + b - r] (r the kernel radius), as DPS and
scipy's `ndimage.correlate`; DeepInverse's `Blur` / `BlurFFT` convolve, so they equal ours with the kernel
flipped (tests/test_operator_conventions.py).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import LinearOperator
from .kernels import gaussian_kernel, motion_kernel, uniform_kernel
from .params import ParameterTypeError
from .registry import register_operator

BOUNDARIES = ("reflect", "circular")
FFT_TAPS = 225  # reflect-padded blurs with larger kernels (more than 15x15) correlate through the FFT
# ... and in float64 (conjugate-gradient solves) those above 3x3: a CPU has no fast float64 convolution (a 15x15
# kernel on 16 x 3 x 64 x 64: conv2d 0.29 s, its transpose 0.46 s, the FFT 5 ms; one thread)
FFT_TAPS_FLOAT64 = 9


def fast_fft_length(n: int) -> int:
    """The smallest length >= n whose prime factors are 2, 3 and 5, where FFTs are fastest (a 316-px padded
    image, 4 x 79, took 3.7x longer than a 320-px one on a CPU: 65 ms against 18 ms, 12 x 316^2 rfft2 + irfft2)."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def kernel_spectrum(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """FFT2 of a kernel (kh, kw) or (B, kh, kw) wrapped onto the h x w torus: (1 or B, 1, h, w) complex.

    Built so that circular convolution with it equals the "reflect" mode's padded correlation in the
    interior of the image. Differentiable in the kernel (blind deblurring takes gradients through it).
    """
    k = kernel[None] if kernel.ndim == 2 else kernel
    kh, kw = k.shape[-2:]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    rows = (top - torch.arange(kh, device=k.device)) % h
    cols = (left - torch.arange(kw, device=k.device)) % w
    index = (rows[:, None] * w + cols[None, :]).reshape(-1)
    wrapped = torch.zeros(k.shape[0], h * w, dtype=k.dtype, device=k.device).index_add(
        1, index, k.reshape(k.shape[0], -1)
    )
    return torch.fft.fft2(wrapped.reshape(-1, h, w))[:, None]


@register_operator("blur")
class Blur(LinearOperator):
    """Blur with a given kernel (a measured PSF, or a kernel estimate in blind deblurring).

    Args:
        kernel: (kh, kw), or (B, kh, kw) for one kernel per image of the batch; float, usually summing to 1.
        boundary: "reflect" (DPS) or "circular" (FFT, exact SVD); see the module docstring.

    Example:
        >>> op = get_operator("blur", kernel=[[0.25, 0.25], [0.25, 0.25]], boundary="circular")
        >>> op(torch.ones(1, 1, 4, 4)).flatten()[:3]
        tensor([1., 1., 1.])
    """

    svd_settings: ClassVar[dict[str, object] | None] = {"boundary": "circular"}

    def __init__(self, kernel, boundary: str = "reflect"):
        super().__init__()
        try:
            kernel = torch.as_tensor(kernel, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ParameterTypeError(
                f"kernel must be a (kh, kw) or (B, kh, kw) array of numbers, got {str(kernel)[:40]}"
            ) from None
        if kernel.ndim not in (2, 3) or not torch.isfinite(kernel).all():
            raise ValueError(f"kernel must be a finite (kh, kw) or (B, kh, kw) tensor, got shape {tuple(kernel.shape)}")
        if (kernel.flatten(-2).abs().amax(-1) == 0).any():
            raise ValueError("the blur kernel is all zeros (it would erase the image); a kernel usually sums to 1")
        if boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")
        self.register_buffer("kernel", kernel)
        self.boundary = boundary
        self._transfer_cache: tuple | None = None

    def with_kernel(self, kernel: torch.Tensor) -> Blur:
        """The same blur (boundary, noise) with another kernel: (kh, kw) or (B, kh, kw)."""
        op = Blur(kernel.detach(), self.boundary).to(kernel.device)
        op.noise = self.noise
        return op

    def _pads(self) -> tuple[int, int, int, int]:
        kh, kw = self.kernel.shape[-2:]
        return (kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2  # left, right, top, bottom

    def check_image_shape(self, image_shape):
        super().check_image_shape(image_shape)
        left, right, top, bottom = self._pads()
        if self.boundary == "reflect" and (max(top, bottom) >= image_shape[1] or max(left, right) >= image_shape[2]):
            raise ValueError(
                f"kernel {tuple(self.kernel.shape[-2:])} is too large for reflect padding of a "
                f"{image_shape[1]}x{image_shape[2]} image; use a smaller kernel or boundary='circular'"
            )

    def check_batch(self, batch: int) -> None:
        if self.kernel.ndim == 3 and self.kernel.shape[0] not in (1, batch):
            raise ValueError(
                f"the blur has {self.kernel.shape[0]} kernels (one per image) but the batch has {batch} images; "
                "give one kernel (kh, kw) for all, or one per image"
            )

    # "reflect": padded depthwise correlation ------------------------------------------------------
    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.kernel.to(x.dtype)
        x = F.pad(x, self._pads(), mode="reflect")
        if self._through_fft(x.dtype):  # the circular correlation of the padded image (zero-extended), cropped
            left, _, top, _ = self._pads()
            work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            size = self._fft_size(tuple(work.shape[-2:]))
            transfer = self.transfer_function(size, work.dtype)[..., : size[1] // 2 + 1]
            full = torch.fft.irfft2(transfer * torch.fft.rfft2(work, s=size), s=size)
            return full[..., top : top + h, left : left + w].to(x.dtype)
        if k.ndim == 2:
            return F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)
        weight = k.expand(b, *k.shape[-2:]).repeat_interleave(c, 0)[:, None]
        return F.conv2d(x.reshape(1, b * c, *x.shape[-2:]), weight, groups=b * c).reshape(b, c, h, w)

    @staticmethod
    def _fft_size(padded: tuple[int, int]) -> tuple[int, int]:
        """The FFT grid of a padded image: each side rounded up to a fast length; the kernel never wraps around
        into the cropped output, so the zeros added beyond the padding change nothing."""
        return fast_fft_length(padded[0]), fast_fft_length(padded[1])

    def _through_fft(self, dtype: torch.dtype) -> bool:
        """Whether the reflect-padded correlation in `dtype` goes through the FFT (see FFT_TAPS)."""
        taps = self.kernel.shape[-1] * self.kernel.shape[-2]
        return taps > (FFT_TAPS_FLOAT64 if dtype == torch.float64 else FFT_TAPS)

    def _reflect_indices(self, n: int, before: int, after: int, device) -> torch.Tensor:
        """The source index of each of the n + before + after entries of a reflect-padded axis of length n."""
        i = torch.arange(-before, n + after, device=device).abs()
        return torch.where(i < n, i, 2 * (n - 1) - i)

    def _conv_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of `_conv` in closed form (twice as fast as its autograd VJP, and differentiable in y): the
        full convolution of y with the kernel on the padded grid, then the padding's adjoint (each padded pixel
        added back onto the pixel it reflects)."""
        b, c, h, w = y.shape
        left, right, top, bottom = self._pads()
        size = (h + top + bottom, w + left + right)
        k = self.kernel.to(y.dtype)
        if self._through_fft(y.dtype):
            work = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
            embedded = F.pad(work, (left, right, top, bottom))
            grid = self._fft_size(size)
            transfer = self.transfer_function(grid, work.dtype)[..., : grid[1] // 2 + 1]
            full = torch.fft.irfft2(transfer.conj() * torch.fft.rfft2(embedded, s=grid), s=grid)
            padded = full[..., : size[0], : size[1]].to(y.dtype)
        elif k.ndim == 2:
            padded = F.conv_transpose2d(y, k.expand(c, 1, *k.shape), groups=c)
        else:
            weight = k.expand(b, *k.shape[-2:]).repeat_interleave(c, 0)[:, None]
            padded = F.conv_transpose2d(y.reshape(1, b * c, h, w), weight, groups=b * c).reshape(b, c, *size)
        rows = self._reflect_indices(h, top, bottom, y.device)
        cols = self._reflect_indices(w, left, right, y.device)
        folded = padded.new_zeros(b, c, h, size[1]).index_add(2, rows, padded)
        return folded.new_zeros(b, c, h, w).index_add(3, cols, folded)

    # "circular": FFT ------------------------------------------------------------------------------
    def transfer_function(self, image_shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        """K = `kernel_spectrum` of the kernel for H x W images: (1 or B, 1, H, W) complex, cached. Always a normal
        tensor (built outside inference mode), so a spectrum cached by an inference-mode sampler (DDRM) can still be
        used by one that differentiates through the operator (DPS, RED-Diff) on the same operator object."""
        h, w = image_shape[-2:]
        dtype = dtype or self.kernel.dtype
        key = (h, w, self.kernel.device, dtype, self.kernel.data_ptr(), self.kernel._version)
        if self._transfer_cache is None or self._transfer_cache[0] != key:
            with torch.inference_mode(False):
                self._transfer_cache = (key, kernel_spectrum(self.kernel.to(dtype), h, w))
        return self._transfer_cache[1]

    def _phase(self, image_shape, dtype):
        transfer = self.transfer_function(image_shape, dtype)
        magnitude = transfer.abs()
        return torch.where(magnitude > 0, transfer / magnitude.clamp(min=1e-30), torch.ones_like(transfer))

    def singular_values(self, image_shape):
        return self.transfer_function(image_shape).abs()

    def V_t(self, x):
        return torch.fft.fft2(x, norm="ortho")

    def V(self, c):
        return torch.fft.ifft2(c, norm="ortho").real

    def U_t(self, y):
        return self._phase(tuple(y.shape[1:]), y.dtype).conj() * torch.fft.fft2(y, norm="ortho")

    def U(self, c):
        return torch.fft.ifft2(self._phase(tuple(c.shape[1:]), c.real.dtype) * c, norm="ortho").real

    def forward(self, x):
        self.check_batch(x.shape[0])
        if self.boundary == "reflect":
            return self._conv(x)
        return torch.fft.ifft2(self.transfer_function(tuple(x.shape[1:]), x.dtype) * torch.fft.fft2(x)).real

    def adjoint(self, y):
        if self.boundary == "reflect":
            self.check_batch(y.shape[0])
            return self._conv_adjoint(y)
        return torch.fft.ifft2(self.transfer_function(tuple(y.shape[1:]), y.dtype).conj() * torch.fft.fft2(y)).real


@register_operator("gaussian_blur")
class GaussianBlur(Blur):
    """Gaussian blur; defaults are the DPS task (61x61 kernel, std 3.0 px at 256x256; DPS App. C)."""

    def __init__(self, kernel_size: int = 61, sigma: float = 3.0, boundary: str = "reflect"):
        super().__init__(gaussian_kernel(kernel_size, sigma), boundary)
        self.kernel_size, self.sigma = kernel_size, sigma


@register_operator("motion_blur")
class MotionBlur(Blur):
    """Random camera-shake blur drawn once from `seed` (DPS App. C: 61x61 kernels, intensity 0.5)."""

    def __init__(self, kernel_size: int = 61, intensity: float = 0.5, seed: int = 0, boundary: str = "reflect"):
        g = torch.Generator().manual_seed(int(seed))
        super().__init__(motion_kernel(kernel_size, intensity, generator=g), boundary)
        self.kernel_size, self.intensity, self.seed = kernel_size, intensity, seed


@register_operator("uniform_blur")
class UniformBlur(Blur):
    """Box blur (DDRM/RED-Diff `deblur_uni`: 9x9)."""

    def __init__(self, kernel_size: int = 9, boundary: str = "reflect"):
        super().__init__(uniform_kernel(kernel_size), boundary)
        self.kernel_size = kernel_size
