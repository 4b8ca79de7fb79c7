"""Blurs and super-resolution against independent references (scipy's correlate and gaussian_filter, Pillow's
bicubic resize, explicit padding and block means), the FFT path of large blurs against the direct one, and the
motion kernels' draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posterior_diffusion.operators import gaussian_kernel, get_operator, motion_kernel


def rand(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gaussian_kernel_matches_scipy_gaussian_filter_of_a_delta():
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((61, 61))
    delta[30, 30] = 1.0
    reference = ndimage.gaussian_filter(delta, sigma=3.0)  # how DPS builds its kernel
    assert np.allclose(gaussian_kernel(61, 3.0).numpy(), reference, atol=1e-7)


def test_reflect_blur_matches_scipy_correlate():
    ndimage = pytest.importorskip("scipy.ndimage")
    op = get_operator("motion_blur", kernel_size=7, seed=3).double()
    x = rand((1, 1, 16, 16), 10)
    ref = ndimage.correlate(x[0, 0].numpy(), op.kernel.double().numpy(), mode="mirror")
    assert np.allclose(op(x)[0, 0].numpy(), ref, atol=1e-10)


def test_large_reflect_blurs_go_through_the_fft_with_the_same_values(monkeypatch):
    """Kernels above FFT_TAPS (the papers' 61x61) correlate the reflect-padded image through the FFT (on a grid of
    fast lengths): the same as scipy and as the direct convolution, for odd, even and per-image kernels, with an
    exact adjoint."""
    from posterior_diffusion.operators import blur

    ndimage = pytest.importorskip("scipy.ndimage")
    op = get_operator("motion_blur", kernel_size=17, seed=3).double()
    x = rand((2, 3, 24, 20), 14)
    ref = [
        [ndimage.correlate(x[b, c].numpy(), op.kernel.double().numpy(), mode="mirror") for c in range(3)]
        for b in (0, 1)
    ]
    assert np.allclose(op(x).numpy(), np.array(ref), atol=1e-12)
    kernels = [rand((16, 18), 15).abs(), rand((2, 17, 15), 16).abs(), rand((2, 3, 4), 18).abs()]  # even, per image
    fast = [get_operator("blur", kernel=k).double() for k in kernels]
    values = [b(x) for b in fast]
    y = rand((2, 3, 24, 20), 17)
    for b in fast:
        assert abs(float((b(x) * y).sum() - (x * b.adjoint(y)).sum())) <= 1e-10 * float(b(x).abs().sum())
    adjoints = [b.adjoint(y) for b in fast]
    assert all(b._through_fft(torch.float64) for b in [*fast, get_operator("gaussian_blur", kernel_size=5)])
    assert not get_operator("gaussian_blur", kernel_size=5)._through_fft(torch.float32)
    # the FFT grid: the padded side rounded up to 2^a 3^b 5^c (39 x 37 -> 40 x 40 for the 16 x 18 kernel)
    assert [blur.fast_fft_length(n) for n in (1, 7, 37, 39, 40, 316)] == [1, 8, 40, 40, 40, 320]
    monkeypatch.setattr(blur, "FFT_TAPS", 10**6)  # the direct depthwise convolution
    monkeypatch.setattr(blur, "FFT_TAPS_FLOAT64", 10**6)
    for b, value, adjoint in zip(fast, values, adjoints, strict=True):
        assert torch.allclose(b(x), value, atol=1e-12)
        assert torch.allclose(b.adjoint(y), adjoint, atol=1e-12)


def test_circular_blur_matches_circular_padding_convolution():
    op = get_operator("motion_blur", kernel_size=5, seed=1, boundary="circular").double()
    x = rand((2, 3, 12, 12), 11)
    padded = F.pad(x, (2, 2, 2, 2), mode="circular")
    ref = F.conv2d(padded, op.kernel.double().expand(3, 1, 5, 5), groups=3)
    assert torch.allclose(op(x), ref, atol=1e-10)


def test_average_pool_sr_matches_block_means():
    op = get_operator("super_resolution", factor=4, method="average")
    x = rand((1, 3, 16, 16), 12).float()
    ref = x.numpy().reshape(1, 3, 4, 4, 4, 4).mean(axis=(3, 5))
    assert np.allclose(op(x).numpy(), ref, atol=1e-6)


def test_bicubic_sr_matches_pillow():
    Image = pytest.importorskip("PIL.Image")
    op = get_operator("super_resolution", factor=4)
    g = torch.Generator().manual_seed(0)
    x01 = F.interpolate(torch.rand(1, 1, 16, 16, generator=g), size=64, mode="bilinear")  # smooth-ish image
    pil = Image.fromarray(x01[0, 0].numpy().astype(np.float32), mode="F").resize((16, 16), Image.BICUBIC)
    assert np.abs(op(x01)[0, 0].numpy() - np.asarray(pil)).max() < 2e-3


def test_motion_kernels_are_normalised_seeded_and_vary_with_intensity():
    k1 = motion_kernel(61, 0.5, torch.Generator().manual_seed(0))
    k2 = motion_kernel(61, 0.5, torch.Generator().manual_seed(0))
    k3 = motion_kernel(61, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(k1, k2) and not torch.equal(k1, k3)
    assert abs(float(k1.sum()) - 1) < 1e-6 and (k1 >= 0).all()
    support = (k1 > 1e-3).sum()
    assert 20 < support < 61 * 61 / 2  # a streak, neither a dot nor a flat field


def test_blind_with_kernel_keeps_noise_and_boundary():
    op = get_operator("gaussian_blur", kernel_size=5, sigma=1.0, noise_sigma=0.02, boundary="circular")
    k = torch.zeros(3, 3)
    k[1, 1] = 1
    twin = op.with_kernel(k)
    assert twin.noise.sigma == 0.02 and twin.boundary == "circular"
    x = rand((1, 1, 8, 8), 13).float()
    assert torch.allclose(twin(x), x, atol=1e-6)
