"""The priors shipped in assets/: they load offline, denoise a natural image, and are the default prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posterior_diffusion import get_operator, sample_posterior
from posterior_diffusion.images import load_image
from posterior_diffusion.metrics import psnr
from posterior_diffusion.priors import builtin_priors, load_prior

IMAGE = Path(__file__).resolve().parents[1] / "assets" / "images" / "kodim23_crop128.png"


def test_the_package_ships_a_default_rgb_prior():
    assert "natural-rgb" in builtin_priors()


NATURAL_PIXEL_PRIORS = ["natural-gray", "natural-rgb"]


def test_the_package_ships_every_builtin_prior():
    assert set(builtin_priors()) == {"natural-rgb", "natural-gray", "natural-rgb-latent", "black-hole"}


def _tweedie_gain(prior, x: torch.Tensor, sigma255: float = 25) -> float:
    """PSNR gain (dB) of the one-step Tweedie denoiser on x (B, C, H, W) with Gaussian noise sigma255 / 255."""
    sigma = 2 * sigma255 / 255  # on [-1, 1]
    variance = (1 - prior.alphas_cumprod) / prior.alphas_cumprod
    t = int((variance - sigma**2).abs().argmin())
    noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x0_hat = prior.denoise(prior.alphas_cumprod[t].sqrt() * noisy, t)
    return float((psnr(x0_hat, x) - psnr(noisy, x)).mean())


@pytest.mark.parametrize("name", NATURAL_PIXEL_PRIORS)
def test_builtin_prior_denoises_a_natural_image(name):
    prior = load_prior(f"builtin:{name}")
    x = load_image(IMAGE, prior.net.config.in_channels)[None, :, :64, :64]
    gain = _tweedie_gain(prior, x)
    assert gain > 6.0, f"Tweedie denoising gains only {gain:.1f} dB"


def test_black_hole_prior_denoises_held_out_black_holes_and_is_the_interferometry_default():
    from posterior_diffusion.eht.black_holes import black_hole_images

    prior = load_prior("builtin:black-hole")
    x = black_hole_images(4, seed=4242) * 2 - 1  # in [0, 1]; not the training seed 0
    gain = _tweedie_gain(prior, x)
    assert gain > 10.0, f"Tweedie denoising gains only {gain:.1f} dB"
    assert _tweedie_gain(prior, x) > _tweedie_gain(load_prior("builtin:natural-gray"), x)
    op = get_operator("interferometry", stop_gmst=1.0)
    res = sample_posterior(op.measure(x[:1]), op, sampler="red_diff", steps=2, progress=False)
    assert res.config["prior"] == "builtin:black-hole" and res.samples.shape == (1, 1, 1, 64, 64)


def test_builtin_latent_prior_reconstructs_and_denoises_latents():
    prior = load_prior("builtin:natural-rgb-latent")
    x = load_image(IMAGE)[None, :, :64, :64]
    with torch.inference_mode():
        z = prior.encode(x)
        assert z.shape == (1, 3, 16, 16) and 0.3 < float(z.std()) < 3  # latents scaled to about unit variance
        recon = psnr(prior.decode(z), x)
        t = 200
        a = prior.alphas_cumprod[t]
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
        z0_hat = prior.denoise(a.sqrt() * z + (1 - a).sqrt() * noise, t)
    assert float(recon) > 24.0, f"autoencoder reconstruction only {float(recon):.1f} dB"
    noisy_error = float(((1 - a).sqrt() / a.sqrt() * noise).square().mean())
    assert float((z0_hat - z).square().mean()) < 0.5 * noisy_error


def test_prior_none_uses_the_builtin_prior_for_the_channel_count():
    x = load_image(IMAGE)[:, :16, :16]
    op = get_operator("inpaint_random", image_size=16, missing=0.5)
    res = sample_posterior(op.measure(x), op, steps=2, progress=False)
    assert res.config["prior"] == "builtin:natural-rgb" and res.samples.shape == (1, 3, 16, 16)


def test_prior_benchmark_denoise_rows(tmp_path, tiny_unet_folder):
    from PIL import Image

    from posterior_diffusion.prior_benchmark import denoise_table, tweedie_denoise_psnr

    for i in range(2):
        Image.open(IMAGE).crop((0, 0, 33 + i, 40)).save(tmp_path / f"{i}.png")  # odd sizes get cropped to /2
    rows = tweedie_denoise_psnr(load_prior(tiny_unet_folder), sorted(tmp_path.glob("*.png")), sigma255=25, bm3d=True)
    assert [r["image"] for r in rows] == ["0.png", "1.png"]
    assert all(19.5 < r["psnr_noisy"] < 21.5 and r["psnr"] > 0 for r in rows)  # 20 log10(255 / 25) = 20.17
    assert all(r["psnr_bm3d"] > r["psnr_noisy"] + 2 for r in rows)  # BM3D given the true sigma denoises
    more = tweedie_denoise_psnr(load_prior(tiny_unet_folder), sorted(tmp_path.glob("*.png")), sigma255=10)
    table = denoise_table("tiny", str(tmp_path), rows + more).splitlines()
    assert table[0] == "| prior | images | sigma 10 | sigma 25 |"
    mean = lambda rs, key: f"{sum(r[key] for r in rs) / len(rs):.2f}"  # noqa: E731
    assert table[2].endswith(f"| {mean(more, 'psnr')} | {mean(rows, 'psnr')} ({mean(rows, 'psnr_bm3d')}) |")


def test_prior_benchmark_denoise_command_writes_rows_table_and_curve(tmp_path, tiny_unet_folder, capsys):
    from PIL import Image

    from posterior_diffusion.prior_benchmark import main

    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.open(IMAGE).crop((0, 0, 32, 32 + 2 * i)).save(tmp_path / "images" / f"{i}.png")
    argv = ["denoise", "--prior", str(tiny_unet_folder), "--images", str(tmp_path / "images"), "--sigma", "10", "25"]
    main([*argv, "--bm3d", "--out", str(tmp_path / "rows.json")])
    printed = capsys.readouterr().out
    assert "| prior | images | sigma 10 | sigma 25 |" in printed
    main(["denoise-table", str(tmp_path / "rows.json")])  # the table again, from the saved rows alone
    table = capsys.readouterr().out
    assert table.strip() and table in printed
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["image"], r["sigma"]) for r in rows] == [("0.png", 10), ("1.png", 10), ("0.png", 25), ("1.png", 25)]
    assert all("psnr_bm3d" in r for r in rows)
    assert Image.open(tmp_path / "rows.png").size[0] > 100
    # the same run split by sigma: its two records read as the one run (noise is seeded per image, not per level)
    for sigma in ("10", "25"):
        main([*argv[:-3], "--sigma", sigma, "--bm3d", "--out", str(tmp_path / f"rows_{sigma}.json")])
    capsys.readouterr()
    halves = [str(tmp_path / "rows_25.json"), str(tmp_path / "rows_10.json")]
    main(["denoise-table", *halves, "--curve", str(tmp_path / "joined.png")])
    assert capsys.readouterr().out == table
    assert Image.open(tmp_path / "joined.png").size == Image.open(tmp_path / "rows.png").size
    with pytest.raises(SystemExit, match="one prior on one image folder"):
        other = json.loads((tmp_path / "rows_10.json").read_text()) | {"prior": "another"}
        (tmp_path / "other.json").write_text(json.dumps(other))
        main(["denoise-table", halves[0], str(tmp_path / "other.json"), "--curve", str(tmp_path / "x.png")])


def test_gibbs_ddrm_natural_preset_recovers_a_motion_kernel_on_a_natural_image():
    """Blind deblurring with the built-in prior (issue 4): from a Gaussian guess, the kernel estimate is closer to
    the true motion kernel (NCC and L2) and the image beats non-blind DDRM with the guess by a wide margin."""
    from posterior_diffusion.metrics import kernel_errors

    x = load_image(IMAGE)[None, :, 32:96, 32:96]
    truth = get_operator("motion_blur", kernel_size=9, seed=1, boundary="circular", noise_sigma=0.02)
    guess = get_operator("gaussian_blur", kernel_size=9, sigma=9 / 8, boundary="circular", noise_sigma=0.02)
    y = truth.measure(x, torch.Generator().manual_seed(0))
    blind = sample_posterior(y, guess, sampler="gibbs_ddrm", preset="natural", seed=0, progress=False)
    nonblind = sample_posterior(y, guess, sampler="ddrm", seed=0, progress=False)
    before, after = kernel_errors(guess.kernel, truth.kernel), kernel_errors(blind.extras["kernel"], truth.kernel)
    # measured: NCC 0.889 -> 0.958, L2 0.171 -> 0.150, PSNR 29.1 vs 24.3 dB (y: 28.5)
    assert float(after["kernel_ncc"]) > float(before["kernel_ncc"]) + 0.05
    assert float(after["kernel_l2"]) < 0.95 * float(before["kernel_l2"])
    assert float(psnr(blind.mean, x)) > float(psnr(nonblind.mean, x)) + 3
