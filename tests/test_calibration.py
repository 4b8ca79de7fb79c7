"""Conformal calibration of the posterior's intervals: the two guarantees, calibration files, refusals, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from posterior_diffusion import sample_posterior
from posterior_diffusion.api import SamplingSettings
from posterior_diffusion.calibration import Calibration, calibration_from_samples, conformal_factor
from posterior_diffusion.cli import main
from posterior_diffusion.metrics import interval_coverage, standardised_errors
from posterior_diffusion.operators import get_operator

TRIALS = 400


def test_the_factors_by_hand():
    """Two images of 4 pixels, scores 1..8. Pixel: ceil(9 x 0.8) = 8th smallest = 8, ceil(9 x 0.5) = 5th = 5.
    Image (n = 2, alpha = 0.5): R_n must be <= (0.5 x 3 - 1) / 2 = 0.25, i.e. at most 2 of the 8 scores above
    lambda: lambda = 6."""
    scores = torch.arange(1.0, 9.0, dtype=torch.float64).reshape(2, 4)
    assert conformal_factor(scores, 0.2, "pixel") == 8.0 and conformal_factor(scores, 0.5, "pixel") == 5.0
    assert conformal_factor(scores, 0.5, "image") == 6.0
    with pytest.raises(ValueError, match=r"2 calibration scores .* cannot certify coverage 0.8: it needs at least 4"):
        conformal_factor(scores, 0.2, "image")
    with pytest.raises(ValueError, match="unknown guarantee 'pixels'; valid: pixel, image"):
        conformal_factor(scores, 0.2, "pixels")


def test_standardised_errors_treat_a_zero_std_by_its_error():
    samples = torch.tensor([[[0.0, 1.0, 1.0]], [[2.0, 1.0, 1.0]]]).reshape(1, 2, 1, 1, 3)  # std sqrt 2, 0, 0
    truth = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 1, 1, 3)
    scores = standardised_errors(samples, truth)
    assert scores[0, 0] == pytest.approx(1 / 2**0.5) and scores[0, 1] == 0 and scores[0, 2] == float("inf")


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_pixel_guarantee_holds_on_exchangeable_pixels(level):
    """Independent pixel scores (exchangeable): over 400 random calibration / test draws, a test pixel is covered
    with probability in [level, level + 1 / (N + 1)], within Monte Carlo error (3 standard errors)."""
    g = torch.Generator().manual_seed(1)
    n, pixels = 5, 4  # N = 20 scores: the finite-sample correction matters
    covered = []
    for _ in range(TRIALS):
        scores = torch.randn(n + 1, pixels, generator=g, dtype=torch.float64).abs() * 0.3
        factor = conformal_factor(scores[:n], 1 - level, "pixel")
        covered.append((scores[n] <= factor).double().mean())
    coverage, error = float(torch.stack(covered).mean()), 3 * (level * (1 - level) / (TRIALS * pixels)) ** 0.5
    assert level - error <= coverage <= level + 1 / (n * pixels + 1) + error, coverage


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_image_guarantee_holds_when_pixels_share_their_image(level):
    """Each image's pixels share a random scale (log-normal), so pixels are not exchangeable across images; the
    per-image guarantee still holds: a new image's expected coverage is at least the level (3 standard errors of
    the 400 draws). The pooled-pixel factor has no such guarantee here (not asserted)."""
    g = torch.Generator().manual_seed(2)
    n, pixels = 24, 50
    coverage = []
    for _ in range(TRIALS):
        scale = torch.exp(0.7 * torch.randn(n + 1, 1, generator=g, dtype=torch.float64))
        scores = scale * torch.randn(n + 1, pixels, generator=g, dtype=torch.float64).abs()
        factor = conformal_factor(scores[:n], 1 - level, "image")
        coverage.append((scores[n] <= factor).double().mean())
    coverage = torch.stack(coverage)
    assert float(coverage.mean()) >= level - 3 * float(coverage.std()) / TRIALS**0.5, float(coverage.mean())


def _calibration(**changes) -> Calibration:
    op = get_operator("denoise", noise_sigma=0.1)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(20, 1, 4, 4, generator=g) * 2 - 1
    samples = truth[:, None] + 0.1 * torch.randn(20, 4, 1, 4, 4, generator=g)
    config = {"operator": op.to_config(), "prior": "GaussianMixturePrior", "num_samples": 4}
    config["sampler"] = {"name": "ddrm", "preset": None, "steps": 5, "eta": 0.85, "eta_b": 1.0} | changes
    return calibration_from_samples(samples, truth, config, "denoise_test")


def test_a_calibration_file_round_trips_and_refuses_what_it_is_not(tmp_path):
    cal = _calibration()
    path = cal.save(tmp_path / "c.json")
    assert Calibration.load(path) == cal and set(cal.factors) == {0.8, 0.9, 0.95}
    assert cal.calibrated_coverage[0.9] == pytest.approx(0.9, abs=0.01)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ValueError, match=r"'.*other.json' is not a calibration file"):
        Calibration.load(other)
    (tmp_path / "bad.json").write_bytes(b"\x89PNG\x00")
    with pytest.raises(ValueError, match="cannot read calibration file"):
        Calibration.load(tmp_path / "bad.json")


def test_sample_posterior_returns_the_calibrated_interval_and_refuses_another_run(gmm):
    """lower / upper = average -+ factor std at the level; a calibration made with another sampler setting or for
    another operator is refused before any work, naming both."""
    op = get_operator("denoise", noise_sigma=0.1)
    y = op.measure(gmm.sample(1, torch.Generator().manual_seed(0)))
    run = sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=5, num_samples=4, progress=False)
    cal = _calibration()
    cal = Calibration(**{**cal.__dict__, "prior": run.config["prior"], "operator": run.config["operator"]})
    res = sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=5, num_samples=4, progress=False, calibration=cal)
    half, average = cal.factors[0.9] * res.std, res.samples.mean(1)  # around the samples' average, as calibrated
    assert torch.allclose(res.lower, average - half) and torch.allclose(res.upper, average + half)
    assert res.config["calibration"] == {"task": "denoise_test", "level": 0.9, "factor": cal.factors[0.9]}
    with pytest.raises(ValueError, match=r"made for task 'denoise_test' with sampler 'ddrm'.*\"steps\": 6"):
        sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=6, num_samples=4, calibration=cal)
    blur = get_operator("gaussian_blur", kernel_size=3, sigma=1.0, boundary="circular", noise_sigma=0.1)
    with pytest.raises(ValueError, match="this run uses operator 'gaussian_blur' with sampler 'ddrm'"):
        sample_posterior(
            blur.measure(gmm.sample(1)), blur, prior=gmm, sampler="ddrm", steps=5, num_samples=4, calibration=cal
        )
    with pytest.raises(ValueError, match=r"level 0.5 was not calibrated; calibrated levels: \[0.8, 0.9, 0.95\]"):
        sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=5, num_samples=4, calibration=cal, level=0.5)


def test_calibrate_then_restore_writes_the_interval_maps(tmp_path, tiny_unet_folder, capsys):
    """The command line end to end: `calibrate` on 20 images writes a file (and measures the coverage on 4 test
    images); `restore --calibration` writes
    interval_lo / hi / width and records the level; another sampler setting is refused naming both; `coverage`
    measures the file on the test images again and gets the numbers kept in it."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    common = ["--prior", str(tiny_unet_folder), "--sampler", "ddrm", "--steps", "2", "--device", "cpu", "--quiet"]
    cal = tmp_path / "c.json"
    argv = ["calibrate", "--images", str(images), "--size", "16", "--task", "random_inpaint", "--out", str(cal)]
    assert main([*argv, *common, "--test-images", str(images), "--num-test-images", "4"]) == 0
    assert Calibration.load(cal).images == 20 and Calibration.load(cal).task == "random_inpaint"
    assert Calibration.load(cal).folder == "images"  # where the calibration images came from
    printed = capsys.readouterr().out
    assert "test images (4," in printed and "90%: raw coverage" in printed
    held_out = Calibration.load(cal).held_out  # kept in the file, as printed
    assert held_out["images"] == 4 and f"calibrated {held_out['calibrated_coverage'][0.9]:.3f}" in printed
    made = Calibration.load(cal)  # inpainting: a factor for the observed and one for the missing pixels
    assert made.strata == ["observed", "missing"] and len(held_out["stratum_coverage"][0.9]) == 2
    assert f"per pixel class: observed {held_out['stratum_coverage'][0.9][0]:.3f}" in printed
    restore = ["restore", str(images / "00.png"), "--simulate", "--operator", "inpaint_random"]
    restore += ["--op-param", "missing=0.7", "--calibration", str(cal), "--level", "0.8", *common]
    assert main([*restore, "--out", str(tmp_path / "r")]) == 0
    for name in ("interval_lo.png", "interval_hi.png", "interval_width.png"):
        assert (tmp_path / "r" / name).exists()
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["calibration"]["level"] == 0.8 and run["calibration"]["factor"] == Calibration.load(cal).factors[0.8]
    assert list(run["calibration"]["factor_per_pixel_class"].values()) == made.stratum_factors[0.8]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "r" / "results.safetensors")
    inside = (saved["truth"] >= saved["lower"]) & (saved["truth"] <= saved["upper"])
    assert run["calibration"]["coverage"] == pytest.approx(float(inside.float().mean()), abs=1e-5)
    assert main([*restore, "--out", str(tmp_path / "r2"), "--steps", "3"]) == 1
    assert not (tmp_path / "r2").exists()
    check = ["coverage", str(cal), "--images", str(images), "--num-images", "4", "--size", "16", "--device", "cpu"]
    rows = tmp_path / "study" / "coverage.jsonl"
    rows.parent.mkdir()
    check += ["--out", str(rows)]
    assert main([*check, "--task", "random_inpaint", "--quiet"]) == 0  # the test images again: the same numbers
    printed = capsys.readouterr().out
    assert "(ddrm-2, 4 samples, calibrated on 20 images images) on 4 images of" in printed
    for level in (0.8, 0.9, 0.95):
        assert f"{level:.0%}: raw coverage {held_out['raw_coverage'][level]:.3f}, calibrated " in printed
        assert f"calibrated {held_out['calibrated_coverage'][level]:.3f}; per pixel class" in printed
    assert main([*check, "--task", "box_inpaint", "--quiet"]) == 1  # another operator: refused, naming both
    assert "this calibration was made for task 'random_inpaint'" in capsys.readouterr().err
    assert len(rows.read_text().splitlines()) == 1  # nothing appended for the refused run
    from posterior_diffusion.bench.studies import render_report

    (rows.parent / "study.toml").write_text('[[tables]]\nkind = "coverage"\nrows = ["coverage.jsonl"]\nlevel = 0.9\n')
    line = render_report(rows.parent).splitlines()[-1]
    here, by_class = held_out["calibrated_coverage"][0.9], held_out["stratum_coverage"][0.9]
    assert line.startswith("| c.json | ") and f"| {here:.3f} (4 images) | {here:.3f} (4 images) |" in line
    assert f"| {100 * (here - 0.9):+.1f} | observed {by_class[0]:.3f}, missing {by_class[1]:.3f} |" in line


def test_held_out_coverage_is_the_share_of_pixels_inside(gmm, monkeypatch):
    """On held-out images the calibrated coverage is the share of pixels with |x - mean| <= factor std, and the raw
    one `interval_coverage`'s (checked against the same samples)."""
    import posterior_diffusion.calibrate_run as calibration

    op = get_operator("denoise", noise_sigma=0.1)
    x = gmm.sample(3, torch.Generator().manual_seed(0)).float()
    seen = {}
    original = calibration.posterior_samples

    def recording(*args, **kwargs):
        seen["out"] = original(*args, **kwargs)
        return seen["out"]

    monkeypatch.setattr(calibration, "posterior_samples", recording)
    settings = SamplingSettings(prior=gmm, sampler="ddrm", num_samples=4, options={"steps": 5})
    samples, config, strata, sides = original(x, op, settings, 0, 8)
    assert strata is None and sides is None  # denoising: one pixel class, every interval two-sided
    cal = calibration_from_samples(samples, x, config, "denoise_test", levels=(0.5, 0.9))
    raw, calibrated, by_class = calibration.held_out_coverage(cal, x, op, settings)
    held, _, _, _ = seen["out"]
    assert by_class == {}
    scores = standardised_errors(held, x)
    assert calibrated[0.9] == pytest.approx(float((scores <= cal.factors[0.9]).double().mean()))
    assert raw[0.5] == pytest.approx(float(interval_coverage(held, x, (0.5,)).mean()))
    assert not torch.equal(held, samples)  # other measurement noise and chains than the calibration run's


def test_an_operator_identity_keeps_the_task_and_leaves_out_the_image():
    """What a calibration must share with a run: not the image size nor the seed of per-image draws; a box as its
    share of the image, so a file made for the default half-size box at 128 px holds at 256 px and 257x300."""
    from posterior_diffusion.calibration import operator_identity

    def identity(name, **params):
        return operator_identity(get_operator(name, **params).to_config())

    assert identity("inpaint_random", image_size=64, seed=1) == identity("inpaint_random", image_size=128, seed=7)
    assert identity("inpaint_random", missing=0.5) != identity("inpaint_random", missing=0.9)
    half = identity("inpaint_box", image_size=128)
    assert half["params"] == {"box_share": [0.5, 0.5]}
    assert half == identity("inpaint_box", image_size=256, seed=3) == identity("inpaint_box", image_size=(257, 300))
    assert half != identity("inpaint_box", image_size=128, box_size=32)  # a quarter of the side
    assert identity("gaussian_blur", sigma=1.0) != identity("gaussian_blur", sigma=3.0)
