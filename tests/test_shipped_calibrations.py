"""calibration="auto" (the default): the shipped calibration made for a run is applied (interval, run.json names
the file), any other run is reported as uncalibrated, a file whose prior weights changed is never applied, and every
file the package ships still matches its prior's weights and, for `auto` files, what sampler="auto" picks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from posterior_diffusion import sample_posterior, shipped_calibrations
from posterior_diffusion.calibration import calibration_from_samples, operator_identity
from posterior_diffusion.operators import get_operator, operator_params
from posterior_diffusion.priors import load_prior
from posterior_diffusion.samplers import get_sampler
from posterior_diffusion.samplers.auto import choose_sampler


def _run(gmm, steps: int, **kwargs):
    op = get_operator("denoise", noise_sigma=0.2)
    y = op.measure(torch.zeros(8, 1, 8, 8), torch.Generator().manual_seed(0))
    return sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=steps, num_samples=4, progress=False, **kwargs)


def test_the_matching_shipped_calibration_is_applied_and_named(gmm, tmp_path, monkeypatch):
    made = _run(gmm, steps=5, calibration=None)
    cal = calibration_from_samples(made.samples, torch.zeros(8, 1, 8, 8), made.config, "test_denoise")
    cal.save(tmp_path / "test_denoise.json")
    monkeypatch.setattr(shipped_calibrations, "FOLDER", tmp_path)
    res = _run(gmm, steps=5)
    assert res.config["calibration"]["shipped_file"] == "test_denoise.json"
    assert torch.allclose(res.upper - res.lower, 2 * cal.factors[0.9] * res.std, atol=1e-6)
    other = _run(gmm, steps=6)  # another sampler setting: no file matches
    assert other.config["calibration"] == "uncalibrated" and other.lower is None
    assert _run(gmm, steps=5, calibration=None).lower is None


def test_a_file_made_for_other_prior_weights_is_never_applied(gmm, tmp_path, monkeypatch):
    made = _run(gmm, steps=5, calibration=None)
    cal = calibration_from_samples(made.samples, torch.zeros(8, 1, 8, 8), made.config, "test_denoise")
    dataclasses.replace(cal, prior_digest="0" * 64).save(tmp_path / "stale.json")
    monkeypatch.setattr(shipped_calibrations, "FOLDER", tmp_path)
    assert _run(gmm, steps=5).config["calibration"] == "uncalibrated"


@pytest.mark.parametrize("path,cal", shipped_calibrations.shipped(), ids=lambda v: getattr(v, "name", ""))
def test_every_shipped_file_matches_its_prior_and_the_auto_table(path, cal):
    assert cal.prior_digest == shipped_calibrations.prior_digest(cal.prior), f"{path.name}: the prior changed"
    if cal.task.startswith("auto/"):  # made for what sampler="auto" runs: still its pick
        prior = load_prior(cal.prior)
        sized = "image_size" in operator_params(cal.operator["name"])  # masks: any size, the identity omits it
        op = get_operator(cal.operator["name"], **({"image_size": 64} if sized else {}))
        assert operator_identity(op.to_config()) == cal.operator, f"{path.name}: made for the operator's defaults"
        budgets = [tag == "cpu" for tag in ("cpu", "gpu") if f"-{tag}" in cal.task] or [True, False]  # none: both
        for on_cpu in budgets:
            name, options = choose_sampler(prior, op, on_cpu=on_cpu)
            assert get_sampler(name, **options).to_config() == cal.sampler, f"{path.name}: auto picks another sampler"


def test_the_package_ships_a_calibration_for_the_readme_first_command():
    names = [path.name for path, _ in shipped_calibrations.shipped()]
    assert "readme_gaussian_blur_ddrm.json" in names


def test_restore_says_uncalibrated_in_one_line_and_names_the_command(tiny_unet_folder, tmp_path, capsys):
    from PIL import Image

    from posterior_diffusion.cli import main

    Image.fromarray(torch.full((16, 16, 3), 120, dtype=torch.uint8).numpy()).save(tmp_path / "clean.png")
    argv = ["restore", str(tmp_path / "clean.png"), "--simulate", "--operator", "denoise", "--prior"]
    argv += [str(tiny_unet_folder), "--steps", "2", "--num-samples", "2", "--device", "cpu", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("uncalibrated:")]
    assert len(lines) == 1 and "posterior-diffusion calibrate" in lines[0]


def test_a_shipped_file_is_named_by_its_file_name_and_checked_on_other_images(tmp_path, capsys):
    """`coverage NAME` reads the shipped file (a path of that name wins; an unknown name is one line), samples with
    its prior, sampler and sample count, and reads images as gray for natural-gray's files."""
    import numpy as np
    from PIL import Image

    from posterior_diffusion.calibration import Calibration
    from posterior_diffusion.cli import main

    shipped = shipped_calibrations.load("auto_denoise_gray.json")
    assert shipped == Calibration.load(shipped_calibrations.FOLDER / "auto_denoise_gray.json")
    with pytest.raises(ValueError, match=r"cannot read calibration file 'no_such_file\.json'"):
        shipped_calibrations.load("no_such_file.json")
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / "a.png")
    argv = ["coverage", "auto_denoise_gray.json", "--images", str(images), "--size", "16", "--device", "cpu"]
    assert main([*argv, "--operator", "denoise", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "(ddrm-20, 4 samples, calibrated on 24 BSD400 images) on 1 image of" in printed
    assert "90%: raw coverage" in printed
    assert main([*argv, "--operator", "denoise", "--channels", "3", "--quiet"]) == 1  # an RGB run: another prior
