"""The conventions the README's operator table states, pinned so that a switch would fail: blurs correlate with
the kernel (DeepInverse's blurs convolve: equal with the kernel flipped), and bicubic SR keeps the centres of the
factor x factor blocks (DeepInverse's `Downsampling` filters and keeps x[::factor], a grid one pixel off at x4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from posterior_diffusion.operators import get_operator

# one off-centre tap: correlation gives y[i, j] = x[i - 1, j + 1], convolution x[i + 1, j - 1]
ASYMMETRIC = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("boundary", ["reflect", "circular"])
def test_blur_correlates_with_its_kernel(boundary):
    op = get_operator("blur", kernel=ASYMMETRIC, boundary=boundary).double()
    x = torch.randn(1, 2, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op(x)
    assert torch.allclose(y[..., 1:-1, 1:-1], x[..., :-2, 2:], atol=1e-12)  # y[i, j] = x[i - 1, j + 1]
    padded = F.pad(x, (1, 1, 1, 1), mode=boundary)
    kernel = ASYMMETRIC.double().expand(2, 1, 3, 3)
    assert torch.allclose(y, F.conv2d(padded, kernel, groups=2), atol=1e-12)  # conv2d is a correlation
    assert not torch.allclose(y, F.conv2d(padded, kernel.flip(-2, -1), groups=2), atol=1e-3)  # not a convolution


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_sr_keeps_the_centres_of_the_blocks(factor):
    """On a linear ramp (which a symmetric, normalised filter reproduces) output pixel i reads the input at
    factor * i + (factor - 1) / 2, the centre of block i, as the block average does."""
    n = 16 * factor
    ramp = torch.arange(n, dtype=torch.float64).expand(1, 1, n, n)
    sr = get_operator("super_resolution", factor=factor).double()
    average = get_operator("super_resolution", factor=factor, method="average").double()
    centres = factor * torch.arange(16, dtype=torch.float64) + (factor - 1) / 2
    inside = slice(2, -2)  # away from the border, where the filter is truncated
    assert torch.allclose(sr(ramp)[0, 0, 0, inside], centres[inside], atol=1e-9)
    assert torch.allclose(average(ramp)[0, 0, 0], centres, atol=1e-9)
