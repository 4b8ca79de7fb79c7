"""Classical baselines: each against a case with a known answer."""

from __future__ import annotations

import sys

import pytest
import torch

from posterior_diffusion.baselines import BASELINES, _gradient, _gradient_adjoint, baseline, register_baseline, tune
from posterior_diffusion.metrics import psnr
from posterior_diffusion.operators import get_operator


def test_harmonic_fill_reproduces_a_harmonic_image():
    op = get_operator("inpaint_box", image_size=16, box_size=8, top=4, left=4)
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = ((0.05 * i - 0.03 * j) - 0.2).expand(2, 3, 16, 16)  # linear, so harmonic
    filled = baseline("harmonic", op, op(ramp))
    assert torch.allclose(filled, ramp, atol=1e-4)


def test_tikhonov_is_the_closed_form_for_the_identity_and_tends_to_pinv():
    y = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(baseline("tikhonov", get_operator("denoise"), y, reg=0.25), y / 1.25, atol=1e-5)
    op = get_operator("super_resolution", factor=2)
    assert torch.allclose(baseline("tikhonov", op, y, reg=1e-8), baseline("pinv", op, y), atol=1e-3)


def test_bicubic_keeps_constants_and_errors_name_the_problem():
    op = get_operator("super_resolution", factor=4)
    assert torch.allclose(baseline("bicubic", op, torch.full((1, 3, 4, 4), 0.3)), torch.full((1, 3, 16, 16), 0.3))
    with pytest.raises(ValueError, match="baseline 'harmonic' does not apply to operator 'super_resolution'"):
        baseline("harmonic", op, torch.zeros(1, 3, 4, 4))
    with pytest.raises(
        ValueError,
        match="unknown baseline 'wiener'; valid: pinv, tikhonov, tv, bm3d, pnp_admm, unclip, hio, bicubic, harmonic, "
        "dirty, rml",
    ):
        baseline("wiener", op, torch.zeros(1, 3, 4, 4))


def _blocks(n: int = 2, size: int = 24) -> torch.Tensor:
    """Piecewise-constant test images (n, 3, size, size) in [-1, 1]: a bright square on a dark ground."""
    x = torch.full((n, 3, size, size), -0.6)
    x[..., size // 4 : 3 * size // 4, size // 3 : 5 * size // 6] = 0.5
    return x


def test_tv_gradient_and_its_adjoint_agree():
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(2, 3, 7, 9, generator=g), torch.randn(2, 2, 3, 7, 9, generator=g)
    assert torch.allclose((_gradient(x) * q).sum(), (x * _gradient_adjoint(q)).sum(), rtol=1e-5)


def test_tv_solves_its_problem_and_denoises_edges():
    """The TV estimate has a lower objective than small perturbations of itself (a minimiser) and than Tikhonov's
    estimate, and restores a piecewise-constant image far better than the noisy measurement."""
    op = get_operator("gaussian_blur", kernel_size=5, sigma=1.0, boundary="circular", noise_sigma=0.05)
    x = _blocks()
    y = op.measure(x, torch.Generator().manual_seed(1))
    weight = 0.01
    estimate = baseline("tv", op, y, weight=weight, iters=1000)

    def objective(v):
        return 0.5 * ((op(v) - y) ** 2).sum() + weight * _gradient(v).norm(dim=0).sum()

    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        assert objective(estimate) <= objective(estimate + 1e-2 * torch.randn(x.shape, generator=g))
    assert objective(estimate) < objective(baseline("tikhonov", op, y, reg=1e-2))
    assert psnr(estimate, x).mean() > psnr(baseline("tikhonov", op, y, reg=1e-2), x).mean() + 3


def test_bm3d_denoises_and_its_absence_is_one_clear_error(monkeypatch):
    op = get_operator("denoise", noise_sigma=0.2)
    x = _blocks(1)
    y = op.measure(x, torch.Generator().manual_seed(0))
    assert psnr(baseline("bm3d", op, y), x).mean() > psnr(y, x).mean() + 8
    monkeypatch.setitem(sys.modules, "bm3d", None)  # as when the package is not installed
    with pytest.raises(
        ImportError, match=r'bm3d baselines need the bm3d package: pip install "posterior_diffusion\[bm3d\]"'
    ):
        baseline("bm3d", op, y)
    with pytest.raises(ValueError, match="baseline 'bm3d' does not apply to operator 'gaussian_blur'"):
        baseline("bm3d", get_operator("gaussian_blur"), y)


def test_pnp_admm_with_bm3d_deblurs_better_than_tuned_tikhonov():
    op = get_operator("gaussian_blur", kernel_size=5, sigma=1.0, boundary="circular", noise_sigma=0.05)
    x = _blocks(1)
    y = op.measure(x, torch.Generator().manual_seed(1))
    best_tikhonov = max(float(psnr(baseline("tikhonov", op, y, reg=r), x)) for r in BASELINES["tikhonov"].grid["reg"])
    assert float(psnr(baseline("pnp_admm", op, y, sigma_d=0.1, iters=3), x)) > best_tikhonov + 2


def test_unclip_inverts_the_unsaturated_pixels():
    op = get_operator("high_dynamic_range", noise_sigma=0.0)
    x = _blocks(1) * 0.8  # -0.48 and 0.4: below 1 / scale = 0.5 in magnitude, so nothing saturates
    assert torch.allclose(baseline("unclip", op, op(x)), x, atol=1e-6)
    saturated = baseline("unclip", op, op(_blocks(1)))  # -0.6 saturates: its best guess is -1 / scale
    assert torch.allclose(saturated.amin(), torch.tensor(-0.5))


def test_hio_fits_the_magnitudes_from_a_random_phase():
    """Noiseless Fourier magnitudes of a 16x16 image: HIO's estimate reproduces them (to 5 %), from a random-phase
    start whose magnitudes are far off; the seed makes it repeatable."""
    op = get_operator("phase_retrieval", noise_sigma=0.0)
    x = _blocks(1, 16)
    y = op(x)
    estimate = baseline("hio", op, y, seed=3)
    assert float((op(estimate) - y).norm() / y.norm()) < 0.05
    start = baseline("hio", op, y, iters=0, seed=3)  # the random-phase start, constraints applied once
    assert float((op(start) - y).norm() / y.norm()) > 0.2
    assert torch.equal(estimate, baseline("hio", op, y, seed=3))


def test_tune_takes_the_best_combination_of_the_grid_and_keeps_fixed_weights():
    calls = []

    def shrink(op, y, a: float = 1.0, b: float = 0.0):
        calls.append((a, b))
        return a * y + b

    register_baseline("shrink", shrink, lambda op: True, "anything", {"a": (0.5, 1.0, 2.0), "b": (0.0, 0.1)})
    try:
        clean = torch.full((2, 1, 4, 4), 0.3)
        y = torch.full((2, 1, 4, 4), 0.1)  # 2 * y + 0.1 = clean exactly
        assert tune("shrink", get_operator("denoise"), clean, y) == {"a": 2.0, "b": 0.1}
        assert len(calls) == 6
        assert tune("shrink", get_operator("denoise"), clean, y, fixed={"a": 1.0}) == {"b": 0.1}
        assert tune("pinv", get_operator("denoise"), clean, y) == {}
    finally:
        del BASELINES["shrink"]


@pytest.fixture(scope="module")
def black_hole_measurement():
    """Two procedural black holes (32x32, [-1, 1]) and their closure data under the black_hole task's gains."""
    from posterior_diffusion.eht.black_holes import black_hole_images

    x = torch.cat([black_hole_images(1, size=32, seed=seed) for seed in (7, 1)]) * 2 - 1
    op = get_operator("interferometry", image_size=32, gain_std=0.1)
    return op, x, torch.cat([op.measure(x[k : k + 1], torch.Generator().manual_seed(0)) for k in range(2)])


def test_dirty_image_of_a_point_source_peaks_at_its_pixel():
    op = get_operator("interferometry", image_size=32, data="vis")
    x = -torch.ones(1, 1, 32, 32)
    x[0, 0, 9, 21] = 1
    estimate = baseline("dirty", op, op(x))
    assert estimate.shape == x.shape and int(estimate.flatten().argmax()) == 9 * 32 + 21
    assert float(estimate.min()) == -1.0 and float(estimate.max()) <= 1.0  # negative sidelobes clipped to sky


def test_rml_fits_the_closures_better_than_its_initial_gaussian(black_hole_measurement):
    from posterior_diffusion.eht.metrics import aligned_psnr, closure_chi_squares

    op, x, y = black_hole_measurement
    initial = baseline("rml", op, y[:1], rounds=0)  # no iterations: the centred Gaussian of the measured flux
    fitted = baseline("rml", op, y[:1], rounds=1, max_iter=60)
    chi2_initial, chi2_fitted = closure_chi_squares(op, y[:1], initial), closure_chi_squares(op, y[:1], fitted)
    for term in ("cphase", "logcamp"):
        assert float(chi2_fitted[term]) < 0.1 * float(chi2_initial[term]), term
    assert float(aligned_psnr(fitted, x[:1])) > float(aligned_psnr(initial, x[:1])) + 2


def test_rml_is_independent_of_the_batch(black_hole_measurement):
    op, _, y = black_hole_measurement
    both = baseline("rml", op, y, rounds=1, max_iter=8)
    assert torch.equal(both[1:], baseline("rml", op, y[1:], rounds=1, max_iter=8))


def test_interferometry_baselines_refuse_what_they_cannot_use(black_hole_measurement):
    op, _, y = black_hole_measurement
    with pytest.raises(
        ValueError, match="baseline 'rml' does not apply to operator 'denoise'; it needs interferometry"
    ):
        baseline("rml", get_operator("denoise"), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"needs interferometry with data='vis' \(closure data have no visibility"):
        baseline("dirty", op, y)
