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
    with pytest.raises(ValueError, match="unknown baseline 'wiener'; valid: pinv, tikhonov, bicubic, harmonic"):
        baseline("wiener", op, torch.zeros(1, 3, 4, 4))
