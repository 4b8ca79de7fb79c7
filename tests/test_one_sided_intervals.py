"""One-sided intervals (`calibrate --one-sided`): where the measurement bounds a pixel's truth on one side only
(hdr's saturated pixels lie at or beyond their clip), the interval reaches the image's bound on that side and its
factor is the conformal quantile of the one-sided scores. It holds at its level on exchangeable pixels and keeps
holding where the truth lies further beyond the clip than on the calibration images, where a two-sided interval
misses; sample_posterior and the command line apply and record it."""

from __future__ import annotations

import json

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.calibration import Calibration, calibration_from_samples, coverages
from posterior_diffusion.cli import main
from posterior_diffusion.metrics import standardised_errors
from posterior_diffusion.operators import get_operator

CONFIG = {"operator": {"name": "high_dynamic_range", "params": {}}, "prior": "p", "sampler": {"name": "s"}}
NAMES = ("unsaturated", "saturated")


def test_one_sided_scores_measure_the_miss_on_the_means_side_only():
    samples = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 1, 3)  # mean 1, std sqrt 2
    truth = torch.tensor([0.0, 0.0, 3.0]).reshape(1, 1, 1, 3)
    sides = torch.tensor([0, 1, -1]).reshape(1, 1, 1, 3)
    scores = standardised_errors(samples, truth, sides)[0] * 2**0.5
    assert scores.tolist() == pytest.approx([1.0, 1.0, 2.0])  # two-sided |x - m|; (m - x) above; (x - m) below
    above = standardised_errors(samples, truth + 2, sides)[0] * 2**0.5  # truths 2, 2, 5
    assert above.tolist() == pytest.approx([1.0, -1.0, 4.0])  # a truth above the mean of a bright clip: no miss
    draws = torch.stack([truth, truth + 2], 1)  # (B, N, C, H, W): the same scores per draw
    assert torch.allclose(standardised_errors(samples, draws, sides)[0] * 2**0.5, torch.stack([scores, above]).double())


def _clipped_run(n: int, seed: int, beyond: float):
    """n images of 64x64 pixels, half of them saturated (side +1 or -1 at random), samples with std 1 around 0:
    truth - mean is N(0, 1) on unsaturated pixels; on saturated ones N(0, 1) on the mean's side and `beyond` |N(0, 1)|
    past it, each half the time (a truth further beyond the clip the larger `beyond`)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, 64, 64)
    strata = (torch.rand(shape, generator=g) < 0.5).long()
    sides = strata * (2 * (torch.rand(shape, generator=g) < 0.5).long() - 1)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    past = torch.rand(shape, generator=g) < 0.5
    error = torch.where((sides != 0) & past, sides * beyond * z.abs(), torch.where(sides != 0, -sides * z.abs(), z))
    spread = 2**-0.5  # two samples at -+ spread around 0: their average 0 and std 1
    samples = torch.stack([torch.full(shape, -spread), torch.full(shape, spread)], 1).double()
    return samples, error, strata, sides


def test_a_one_sided_class_holds_its_level_and_keeps_it_beyond_the_clip_where_two_sided_misses():
    samples, truth, strata, sides = _clipped_run(12, seed=0, beyond=1.0)
    made = dict(strata=strata, names=NAMES, levels=(0.9,))
    cal = calibration_from_samples(samples, truth, CONFIG, "t", sides=sides, one_sided="saturated", **made)
    two = calibration_from_samples(samples, truth, CONFIG, "t", **made)
    assert cal.one_sided == "saturated" and two.one_sided == ""
    assert cal.stratum_coverage[0.9] == pytest.approx([0.9, 0.9], abs=2e-3)
    # the one-sided factor is the 90 % quantile of (m - x) / std on bright pixels, (x - m) / std on dark ones
    one = (-sides * truth)[sides != 0].flatten()
    assert cal.stratum_factors[0.9][1] == pytest.approx(float(one.kthvalue(int(0.9 * (len(one) + 1)) + 1).values))
    same = _clipped_run(12, seed=1, beyond=1.0)  # exchangeable with the calibration pixels
    assert coverages(*same[:2], cal, *same[2:])[2][0.9] == pytest.approx([0.9, 0.9], abs=0.012)
    assert coverages(*same[:2], two, same[2])[2][0.9] == pytest.approx([0.9, 0.9], abs=0.012)
    far = _clipped_run(12, seed=1, beyond=4.0)  # the truth four times further beyond the clip
    assert coverages(*far[:2], cal, *far[2:])[2][0.9][1] == pytest.approx(0.9, abs=0.012)
    assert coverages(*far[:2], two, far[2])[2][0.9][1] < 0.75
    with pytest.raises(ValueError, match="pass the measurement's sides"):
        coverages(*far[:2], cal, far[2])
    with pytest.raises(ValueError, match="need the pixels' sides and classes"):
        calibration_from_samples(samples, truth, CONFIG, "t", one_sided="saturated", **made)


def test_the_interval_reaches_the_image_bound_on_the_open_side_and_the_file_round_trips(tmp_path):
    samples, truth, strata, sides = _clipped_run(4, seed=0, beyond=1.0)
    cal = calibration_from_samples(samples, truth, CONFIG, "t", (0.9,), "pixel", strata, NAMES, sides, "saturated")
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal
    mean, std = samples.mean(1), samples.std(1)
    lower, upper = cal.interval(mean, std, 0.9, strata, sides)
    unsaturated, saturated = cal.stratum_factors[0.9]
    assert torch.all(lower[sides == -1] == -1) and torch.all(upper[sides == 1] == 1)
    assert torch.allclose(lower[sides == 1], -saturated * std[sides == 1])
    assert torch.allclose(upper[sides == -1], saturated * std[sides == -1])
    assert torch.allclose(upper[strata == 0], unsaturated * std[strata == 0])
    with pytest.raises(ValueError, match="saturated pixels have one-sided intervals"):
        cal.interval(mean, std, 0.9, strata)


def test_hdr_tells_the_side_of_each_clip_from_the_measurement():
    hdr = get_operator("high_dynamic_range", noise_sigma=0.05)
    x = torch.tensor([-0.9, -0.2, 0.0, 0.3, 0.6, 0.95]).reshape(1, 1, 1, 6)
    y = hdr.measure(x, torch.Generator().manual_seed(0))
    assert hdr.calibration_sides(y).flatten().tolist() == [-1, 0, 0, 0, 1, 1]
    assert hdr.one_sided_class == "saturated" and get_operator("denoise").calibration_sides(y) is None


def test_sample_posterior_applies_and_records_a_one_sided_calibration(gmm):
    op = get_operator("high_dynamic_range", noise_sigma=0.05)
    x = gmm.sample(6, torch.Generator().manual_seed(0)).float()
    y = op.measure(x, torch.Generator().manual_seed(1))
    settings = dict(prior=gmm, sampler="dps", steps=5, num_samples=4, progress=False)
    made = sample_posterior(y, op, calibration=None, **settings)
    strata, sides = op.calibration_strata(y), op.calibration_sides(y)
    assert sides.ne(0).any() and sides.eq(0).any()
    cal = calibration_from_samples(
        made.samples, x, made.config, "hdr", (0.9,), "pixel", strata, NAMES, sides, "saturated"
    )
    res = sample_posterior(y, op, calibration=cal, level=0.9, **settings)
    assert torch.all(res.upper[sides == 1] == 1) and torch.all(res.lower[sides == -1] == -1)
    assert torch.all(res.lower[sides == 1] < 1) and torch.all(res.upper[sides == 0] < res.upper.new_tensor(2.0))
    assert res.config["calibration"]["one_sided"] == "saturated"
    one = sample_posterior(y[0], op, calibration=cal, level=0.9, **settings)  # an unbatched measurement
    assert torch.all(one.upper[sides[0] == 1] == 1)


def test_calibrate_one_sided_writes_it_and_refuses_an_operator_without_clipped_pixels(
    tmp_path, images, tiny_unet_folder, capsys
):
    common = ["calibrate", "--images", str(images), "--size", "16", "--prior", str(tiny_unet_folder), "--quiet"]
    common += ["--sampler", "dps", "--steps", "2", "--num-samples", "2", "--device", "cpu", "--levels", "0.8"]
    out = tmp_path / "hdr.json"
    assert main([*common, "--operator", "high_dynamic_range", "--one-sided", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["one_sided"] == "saturated"
    assert "one-sided intervals for saturated pixels" in capsys.readouterr().out
    assert main([*common, "--operator", "denoise", "--one-sided", "--out", str(tmp_path / "d.json")]) == 1
    err = capsys.readouterr().err
    assert "operator 'denoise' has no pixels with one-sided intervals" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d.json").exists()


def test_restore_applies_the_shipped_one_sided_hdr_file_and_says_so(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    photo = tmp_path / "bright.png"
    ramp = np.linspace(0, 255, 16 * 16 * 3).reshape(16, 16, 3).astype(np.uint8)  # dark to bright: both clips
    Image.fromarray(ramp).save(photo)
    out = tmp_path / "r"
    assert (
        main(["restore", str(photo), "--simulate", "--operator", "high_dynamic_range", "--quiet", "--out", str(out)])
        == 0
    )
    assert "calibrated by the shipped auto_high_dynamic_range.json (one-sided for saturated pixels)" in (
        capsys.readouterr().out
    )
    assert json.loads((out / "run.json").read_text())["calibration"]["one_sided"] == "saturated"
    saved = load_file(out / "results.safetensors")
    sides = get_operator("high_dynamic_range").calibration_sides(saved["y"][None])[0]
    assert torch.all(saved["upper"][sides == 1] == 1) and torch.all(saved["lower"][sides == -1] == -1)
    assert sides.eq(1).any() and sides.eq(-1).any()
