"""Pixel classes in calibration (Mondrian conformal prediction): operators name the classes they tell apart from the
measurement, a calibration finds a factor per class, each class is then covered at the level whatever its share of
a new image (where one pooled factor is not), and sample_posterior applies each pixel's class's factor."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.calibration import Calibration, calibration_from_samples, coverages
from posterior_diffusion.operators import get_operator


def test_masks_and_hdr_tell_their_pixel_classes_from_the_measurement():
    box = get_operator("inpaint_box", image_size=8, box_size=4, top=2, left=2, noise_sigma=0.05)
    strata = box.calibration_strata(box.measure(torch.zeros(2, 3, 8, 8)))
    assert box.calibration_strata_names == ("observed", "missing")
    assert strata.shape == (2, 3, 8, 8) and strata.dtype == torch.int64
    assert strata[:, :, 2:6, 2:6].eq(1).all() and strata.sum() == 2 * 3 * 16
    hdr = get_operator("high_dynamic_range", noise_sigma=0.05)
    x = torch.tensor([-0.9, -0.2, 0.0, 0.3, 0.6, 0.95]).reshape(1, 1, 1, 6)
    assert hdr.calibration_strata(hdr.measure(x, torch.Generator().manual_seed(0))).flatten().tolist() == [
        1, 0, 0, 0, 1, 1,
    ]  # fmt: skip
    assert get_operator("denoise").calibration_strata(torch.zeros(1, 3, 4, 4)) is None


def _two_class_run(n: int, share: float, seed: int):
    """n images of 64x64 pixels whose errors are N(0, 1) on class 0 and N(0, 5^2) on class 1 (a `share` of the
    pixels), samples with std 1 everywhere: (samples (n, 2, 1, 64, 64), truth 0, strata)."""
    g = torch.Generator().manual_seed(seed)
    strata = (torch.rand(n, 1, 64, 64, generator=g) < share).long()
    error = torch.randn(n, 1, 64, 64, generator=g, dtype=torch.float64) * (1 + 4 * strata)
    spread = 2**-0.5  # two samples at error -+ spread: their average is the error and their std 1
    samples = torch.stack([error - spread, error + spread], 1)
    return samples, torch.zeros(n, 1, 64, 64, dtype=torch.float64), strata


def test_a_factor_per_class_holds_each_class_where_a_pooled_one_misses_a_new_share():
    config = {"operator": {"name": "denoise", "params": {}}, "prior": "p", "sampler": {"name": "s"}}
    samples, truth, strata = _two_class_run(12, share=0.2, seed=0)
    cal = calibration_from_samples(samples, truth, config, "t", (0.9,), strata=strata, names=("observed", "missing"))
    assert cal.strata == ["observed", "missing"] and cal.stratum_factors[0.9][1] > 4 * cal.stratum_factors[0.9][0]
    assert cal.stratum_coverage[0.9] == pytest.approx([0.9, 0.9], abs=2e-3)
    test, truth, test_strata = _two_class_run(12, share=0.6, seed=1)  # three times the share of class 1
    _, calibrated, by_class = coverages(test, truth, cal, test_strata)
    assert calibrated[0.9] == pytest.approx(0.9, abs=0.01) and by_class[0.9] == pytest.approx([0.9, 0.9], abs=0.015)
    pooled = calibration_from_samples(samples, truth, config, "t", (0.9,))
    assert pooled.strata == [] and coverages(test, truth, pooled)[1][0.9] < 0.8  # one factor: far off on the new share
    with pytest.raises(ValueError, match="pass the measurement's classes"):
        cal.interval(test.mean(1), test.std(1), 0.9)
    rare = torch.zeros_like(strata)
    rare[:3, 0, 0, 0] = 1  # 3 missing pixels cannot calibrate 90 % (it needs 9)
    with pytest.raises(ValueError, match=r"have 3 missing pixels, too few to calibrate them at level 0\.9"):
        calibration_from_samples(samples, truth, config, "t", (0.9,), strata=rare, names=("observed", "missing"))


def test_sample_posterior_widens_each_pixel_by_its_class_and_the_file_round_trips(gmm, tmp_path):
    op = get_operator("inpaint_box", image_size=8, box_size=4, top=2, left=2, noise_sigma=0.1)
    x = gmm.sample(6, torch.Generator().manual_seed(0)).float()
    y = op.measure(x, torch.Generator().manual_seed(1))
    settings = dict(prior=gmm, sampler="ddrm", steps=5, num_samples=4, progress=False)
    made = sample_posterior(y, op, calibration=None, **settings)
    cal = calibration_from_samples(
        made.samples, x, made.config, "box", strata=op.calibration_strata(y), names=op.calibration_strata_names
    )
    cal.save(tmp_path / "box.json")
    assert Calibration.load(tmp_path / "box.json") == cal
    res = sample_posterior(y[:1], op, calibration=tmp_path / "box.json", **settings)
    observed, missing = cal.stratum_factors[0.9]
    factor = torch.full((1, 1, 8, 8), observed, dtype=torch.float64)
    factor[..., 2:6, 2:6] = missing
    assert torch.allclose(res.upper - res.lower, (2 * factor * res.std).float(), atol=1e-5)
    assert res.config["calibration"]["factor_per_pixel_class"] == {"observed": observed, "missing": missing}
    one = sample_posterior(y[0], op, calibration=cal, **settings)  # an unbatched measurement
    assert one.lower.shape == (1, 8, 8)
