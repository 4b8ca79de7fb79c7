"""Classical baselines: each against a case with a known answer."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion.baselines import baseline
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
        ValueError, match="unknown baseline 'wiener'; valid: pinv, tikhonov, bicubic, harmonic, dirty, rml"
    ):
        baseline("wiener", op, torch.zeros(1, 3, 4, 4))


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
