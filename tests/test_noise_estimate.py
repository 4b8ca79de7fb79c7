"""noise_sigma="auto": the noise level estimated from the measurement on synthetic images of known noise, unmasked
and masked, and used (recorded in run.json) by sample_posterior and restore; what it cannot do is refused."""

from __future__ import annotations

import json

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.cli import main
from posterior_diffusion.operators import get_operator
from posterior_diffusion.operators.noise_estimate import estimate_noise_sigma, with_noise_sigma


def _smooth(batch: int, size: int) -> torch.Tensor:
    """Smooth images in [-1, 1]: ramps and a low-frequency wave, different per image and channel."""
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    images = [
        torch.stack([0.5 * torch.sin(2 * xx + k + c) * torch.cos(yy - c) + 0.2 * yy for c in range(3)])
        for k in range(batch)
    ]
    return torch.stack(images)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_the_estimate_of_gaussian_noise_on_smooth_images_is_within_ten_percent(sigma):
    x = _smooth(4, 128)
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    estimate, method = estimate_noise_sigma(y)
    assert method == "flat-tiles" and estimate.shape == (4,)
    assert torch.allclose(estimate, torch.full((4,), sigma), rtol=0.1)


def test_pure_noise_is_estimated_without_bias_with_and_without_masks():
    y = 0.1 * torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert float(estimate_noise_sigma(y)[0].mean()) == pytest.approx(0.1, rel=0.03)
    box = torch.ones(1, 64, 64)
    box[:, 16:48, 16:48] = 0
    estimate, method = estimate_noise_sigma(y * box, box)
    assert method == "masked-mad" and float(estimate.mean()) == pytest.approx(0.1, rel=0.04)
    sparse = (torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.7).float()
    estimate, method = estimate_noise_sigma(y * sparse, sparse)  # 70 % missing: too few full 2x2 blocks
    assert method == "neighbour-differences" and float(estimate.mean()) == pytest.approx(0.1, rel=0.06)


def test_sample_posterior_uses_and_records_the_estimate(gmm):
    op = get_operator("denoise", noise_sigma=0.3)
    x = torch.zeros(2, *gmm.default_image_shape())  # a flat image: the measurement's variation is all noise
    y = op.measure(x, torch.Generator().manual_seed(1))
    given = get_operator("denoise", noise_sigma=0.01)  # the wrong level: "auto" replaces it
    res = sample_posterior(y, given, prior=gmm, sampler="ddrm", steps=3, noise_sigma="auto", progress=False)
    noise = res.config["noise"]
    assert noise["estimated"] and noise["noise_sigma"] == pytest.approx(0.3, rel=0.25)
    assert res.config["operator"]["noise_sigma"] == pytest.approx(noise["noise_sigma"])
    fixed = sample_posterior(y, given, prior=gmm, sampler="ddrm", steps=3, noise_sigma=0.3, progress=False)
    assert fixed.config["operator"]["noise_sigma"] == 0.3 and not fixed.config["noise"]["estimated"]


def test_what_the_estimate_cannot_do_is_refused_in_one_line():
    y = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="applies to Gaussian noise"):
        with_noise_sigma(get_operator("denoise", noise="poisson", poisson_rate=10.0), y, "auto")
    with pytest.raises(ValueError, match="needs image-like measurements"):
        with_noise_sigma(get_operator("phase_retrieval"), torch.rand(1, 3, 32, 32).flatten(1), "auto")
    with pytest.raises(ValueError, match="a number >= 0 or 'auto'"):
        with_noise_sigma(get_operator("denoise"), y, "automatic")


def test_restore_prints_and_records_the_estimate_and_degrade_refuses_auto(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(torch.full((32, 32, 3), 120, dtype=torch.uint8).numpy()).save(tmp_path / "clean.png")
    argv = ["restore", str(tmp_path / "clean.png"), "--simulate", "--operator", "denoise", "--noise-sigma", "auto"]
    argv += ["--sampler", "ddrm", "--steps", "2", "--num-samples", "1", "--device", "cpu", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert "noise sigma estimated from the measurement: 0.05" in capsys.readouterr().out
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["noise"]["estimated"] and run["noise"]["noise_sigma"] == pytest.approx(0.05, rel=0.2)
    degrade = ["degrade", str(tmp_path / "clean.png"), "--operator", "denoise", "--out", str(tmp_path / "y.png")]
    assert main([*degrade, "--noise-sigma", "auto"]) == 1
    assert main([*degrade, "--noise-sigma", "loud"]) == 1
    err = capsys.readouterr().err
    assert "auto is for restore" in err and "must be a number" in err and err.count("\n") == 2
