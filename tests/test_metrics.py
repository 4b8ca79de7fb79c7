"""Metrics against hand-computed values and LPIPS against the reference distances of the LPIPS authors' examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posterior_diffusion.images import load_image
from posterior_diffusion.metrics import calibration_metrics, interval_coverage, lpips, predictive_factor, psnr, ssim
from posterior_diffusion.perceptual import LPIPS, LPIPSUnavailable, find_weights

SHARED_LPIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lpips"
needs_lpips_data = pytest.mark.skipif(not SHARED_LPIPS.is_dir(), reason="needs ../shared/data/lpips (CI data)")


def test_psnr_is_per_image_on_the_unit_scale():
    ref = torch.zeros(2, 1, 4, 4)  # 0.5 on [0, 1]
    x = ref.clone()
    x[0] += 0.2  # error 0.1 on [0, 1] everywhere -> MSE 0.01 -> 20 dB
    x[1, :, :2] += 0.2  # half the pixels -> MSE 0.005 -> 23.01 dB
    assert torch.allclose(psnr(x, ref), torch.tensor([20.0, 10 * torch.log10(torch.tensor(200.0))]), atol=1e-4)


def test_ssim_is_one_for_equal_images_and_per_image():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    x = ref.clone()
    x[1] = x[1] + 0.3 * torch.randn(3, 32, 32, generator=g)
    scores = ssim(x, ref)
    assert scores.shape == (3,) and torch.allclose(scores[[0, 2]], torch.ones(2), atol=1e-5) and scores[1] < 0.9


@needs_lpips_data
@pytest.mark.parametrize(("net", "expected"), [("alex", (0.721881, 0.137566)), ("vgg", (0.568613, 0.421664))])
def test_lpips_matches_the_reference_distances(net, expected):
    """shared/data/lpips/README.md: distances of ex_p0 and ex_p1 to ex_ref (the lpips package's v0.1 heads)."""
    ref, p0, p1 = (load_image(SHARED_LPIPS / "examples" / f"ex_{n}.png")[None] for n in ("ref", "p0", "p1"))
    d = lpips(torch.cat([p0, p1, ref]), torch.cat([ref, ref, ref]), net=net)
    assert torch.allclose(d, torch.tensor([*expected, 0.0]), atol=1e-5), d


def test_lpips_without_weights_names_the_file_to_provide(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTERIOR_DIFFUSION_LPIPS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("posterior_diffusion.perceptual._shared_folders", lambda: [tmp_path])
    with pytest.raises(LPIPSUnavailable, match=r"alexnet_lpips_v0\.1\.safetensors"):
        find_weights("alex")
    with pytest.raises(ValueError, match="unknown LPIPS network"):
        find_weights("resnet")


@needs_lpips_data
def test_lpips_weights_from_the_environment_folder_come_first(monkeypatch, tmp_path):
    """A weights file in $POSTERIOR_DIFFUSION_LPIPS_DIR is used before the shared data (zeroed heads -> 0)."""
    from safetensors.torch import load_file, save_file

    state = load_file(SHARED_LPIPS / "alexnet_lpips_v0.1.safetensors")
    save_file(
        {k: v * 0 if k.startswith("lin") else v for k, v in state.items()}, tmp_path / "alexnet_lpips_v0.1.safetensors"
    )
    monkeypatch.setenv("POSTERIOR_DIFFUSION_LPIPS_DIR", str(tmp_path))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(LPIPS("alex")(x, -x)) == 0.0


def test_kernel_errors_l2_and_normalised_cross_correlation():
    from posterior_diffusion.metrics import kernel_errors

    truth = torch.zeros(5, 5)
    truth[2, 1:4] = 1 / 3
    other = torch.zeros(5, 5)
    other[1:4, 2] = 1 / 3  # the same line, turned by 90 degrees: only the centre tap is shared
    e = kernel_errors(torch.stack([truth, 2 * truth + 0.1, other])[None], truth)
    assert e["kernel_l2"].shape == (1, 3)
    assert float(e["kernel_l2"][0, 0]) == 0 and abs(float(e["kernel_ncc"][0, 0]) - 1) < 1e-12
    assert abs(float(e["kernel_ncc"][0, 1]) - 1) < 1e-12  # NCC ignores scale and offset, L2 does not
    assert float(e["kernel_l2"][0, 1]) > 0.5
    # by hand, in units of 1/75: centred taps are 22 on the line and -3 elsewhere; the inner product is
    # 22^2 (centre) - 4 * 66 (taps on one line only) + 20 * 9 = 400 and each squared norm 3 * 22^2 + 22 * 9 = 1650
    assert abs(float(e["kernel_ncc"][0, 2]) - 400 / 1650) < 1e-9


def test_lpips_weights_command_without_a_network_says_how_to_get_them(monkeypatch, tmp_path, capsys):
    """The explicit download; here only its offline path (the download is replaced: tests never touch a network)."""
    from urllib.error import URLError

    from posterior_diffusion.cli import main

    def offline(url, dst, hash_prefix=None, progress=True):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("posterior_diffusion.perceptual.download_url_to_file", offline)
    assert main(["lpips-weights", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot download https://download.pytorch.org/models/alex")
    assert "Temporary failure in name resolution" in err and "alexnet_lpips_v0.1.safetensors from a machine" in err
    assert list(tmp_path.iterdir()) == []


@needs_lpips_data
def test_lpips_weights_are_converted_from_torchvision_and_the_lpips_heads(monkeypatch, tmp_path):
    """The conversion, fed local files shaped like the downloads (torchvision's full AlexNet, the lpips heads):
    the result is the reference weights file."""
    from safetensors.torch import load_file

    from posterior_diffusion.perceptual import fetch_weights

    reference = load_file(SHARED_LPIPS / "alexnet_lpips_v0.1.safetensors")
    trunk = {k: v for k, v in reference.items() if k.startswith("features.")} | {"classifier.1.weight": torch.ones(3)}
    heads = {k: v for k, v in reference.items() if k.startswith("lin")}
    served = {"alexnet-owt-7be5be79.pth": trunk, "alex.pth": heads}
    monkeypatch.setattr(
        "posterior_diffusion.perceptual.download_url_to_file",
        lambda url, dst, hash_prefix=None: torch.save(served[url.rsplit("/", 1)[1]], dst),
    )
    path = fetch_weights("alex", tmp_path)
    converted = load_file(path)
    assert path.name == "alexnet_lpips_v0.1.safetensors" and converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_interval_coverage_by_hand():
    """Samples -1, 1 (mean 0, std sqrt(2)); S = 2 gives z = t_1((1 + level) / 2) sqrt(3 / 2): 1.0 * 1.2247 at 50 %
    (pixel error 1.7 / sqrt(2) = 1.20 inside, 2.0 / sqrt(2) = 1.41 outside) and 6.314 * 1.2247 = 7.73 at 90 %
    (both inside)."""
    samples = torch.tensor([-1.0, 1.0]).reshape(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 2)
    truth = torch.tensor([1.7, -2.0]).reshape(1, 1, 1, 2)
    cov = interval_coverage(samples, truth, levels=(0.5, 0.9))
    assert cov.shape == (1, 2) and cov.tolist() == [[0.5, 1.0]]
    assert predictive_factor(0.5, 2) == pytest.approx(1.5**0.5, rel=1e-6)
    assert predictive_factor(0.9, 2) == pytest.approx(6.313752 * 1.5**0.5, rel=1e-6)


def test_predictive_factor_matches_scipy_and_gaussian_samples_are_covered_at_the_level():
    """The Student-t factor against scipy; draws from N(0, 1) fall inside the interval of 4 other draws at the
    level (20000 repetitions: Monte Carlo error about 0.003)."""
    stats = pytest.importorskip("scipy.stats")
    for s in (2, 4, 64):
        for level in (0.5, 0.8, 0.9, 0.95):
            expected = stats.t.ppf((1 + level) / 2, s - 1) * (1 + 1 / s) ** 0.5
            assert predictive_factor(level, s) == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    samples, truth = torch.randn(20000, 4, 1, 1, 1, generator=g), torch.randn(20000, 1, 1, 1, generator=g)
    cov = interval_coverage(samples, truth).mean(0)
    assert torch.allclose(cov, torch.tensor([0.5, 0.8, 0.9, 0.95]), atol=0.012), cov


def test_interval_coverage_refuses_a_single_sample():
    with pytest.raises(ValueError, match="at least 2 samples"):
        interval_coverage(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_calibration_metrics_by_hand():
    """Two samples -d, +d (std sqrt(2) d) about a zero mean, d = 0.1, 0.2, 0.3, 0.4, and a truth of d, d, 3d, 3d:
    standardised errors 0.71, 0.71, 2.12, 2.12; the 50 % interval (z = 1.22 at S = 2) holds half of them, the
    80 % one (z = 3.77) all; the std orders the errors exactly (Spearman 1); their spread is sqrt(4 x 0.5 / 3)."""
    d = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 2, 2)
    samples = torch.stack([-d, d], dim=1)
    truth = d * torch.tensor([1.0, 1.0, 3.0, 3.0]).reshape(1, 1, 2, 2)
    m = calibration_metrics(samples, truth)
    assert m["coverage50"].tolist() == [0.5] and m["coverage80"].tolist() == [1.0]
    assert m["spearman"].item() == pytest.approx(1.0) and m["z_spread"].item() == pytest.approx((2 / 3) ** 0.5)
    assert m["psnr_sample"].item() == pytest.approx(psnr(samples[0], truth.expand(2, 1, 2, 2)).mean().item())
    reversed_std = torch.stack([-d.flip(-1).flip(-2), d.flip(-1).flip(-2)], dim=1)  # std now 0.4, 0.3, 0.2, 0.1
    assert calibration_metrics(reversed_std, truth)["spearman"].item() < -0.8
