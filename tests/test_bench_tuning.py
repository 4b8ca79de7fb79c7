"""The bench's tuning on other images: baselines' weights and "SAMPLER:tuned" grids chosen on tune crops, kept in
tuned.json, refused without tune images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import posterior_diffusion.bench as bench
from posterior_diffusion.api import sample_posterior
from posterior_diffusion.bench import run_bench
from posterior_diffusion.images import load_center_crops
from posterior_diffusion.metrics import psnr
from posterior_diffusion.samplers import sampler_class
from posterior_diffusion.tasks import TASKS
from posterior_diffusion.tensor_utils import measurement_generator
from tests.bench_helpers import bench_config


def test_baseline_weights_are_tuned_on_other_images_and_kept(tmp_path, images, capsys):
    """--tune-images: the weight is the one `baselines.tune` picks on seeded crops of the other folder, the rows
    are those of the baseline at that weight, out/tuned.json keeps it for reruns; without it, a note says so."""
    from posterior_diffusion.baselines import baseline, tune
    from posterior_diffusion.images import random_crops

    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):  # mid-gray images: x = 0 is right, so the strongest weight of the grid wins
        Image.fromarray(np.full((20, 24, 3), 127 + i, dtype=np.uint8)).save(other / f"{i}.png")
    cfg = bench_config(images, tmp_path / "out", tmp_path, tasks=("gaussian_deblur",), methods=("tikhonov",))
    cfg.tune_images = str(other)
    rows = run_bench(cfg, progress=True)
    op = TASKS["gaussian_deblur"].build(16)
    crops = random_crops([str(other)], bench.TUNE_CROPS, 16, 3, seed=bench.TUNE_SEED)
    expected = tune("tikhonov", op, crops, op.measure(crops, torch.Generator().manual_seed(bench.TUNE_SEED)))
    kept = json.loads((tmp_path / "out" / "tuned.json").read_text())
    assert kept["params"]["gaussian_deblur/tikhonov"] == expected and expected["reg"] != 1e-2
    assert f"tuned: tikhonov on gaussian_deblur: reg={expected['reg']:g}" in capsys.readouterr().out
    x = load_center_crops(sorted(images.iterdir()), 3, 16)
    y = torch.cat([op.measure(x[i : i + 1], measurement_generator(0, i)) for i in range(len(x))])

    scores = psnr(baseline("tikhonov", op, y, reg=expected["reg"]), x)
    assert sorted(r["psnr"] for r in rows) == pytest.approx(sorted(scores.tolist()), abs=1e-3)
    run_bench(bench_config(images, tmp_path / "untuned", tmp_path, tasks=("gaussian_deblur",), methods=("tikhonov",)))
    assert "note: tikhonov on gaussian_deblur runs with untuned default reg" in capsys.readouterr().out


def test_a_tuned_sampler_takes_the_grid_values_best_on_other_images(
    tmp_path, images, tiny_unet_folder, monkeypatch, capsys
):
    """ "diffpir:tuned": the TUNE_GRID combination whose posterior mean scores best on the tune crops (here a lambda
    so small that the data are ignored loses to one that reads them), kept in tuned.json; its rows are those of
    DiffPIR at that value, beside the untuned DiffPIR's; a fixed "diffpir.K" option is left out of the grid."""
    from posterior_diffusion.images import random_crops
    from posterior_diffusion.priors import load_prior

    monkeypatch.setattr(sampler_class("diffpir"), "TUNE_GRID", {"lam": (7.0, 1e10), "zeta": (0.3,)})
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(other / f"{i}.png")
    methods = ("diffpir", "diffpir:tuned")
    cfg = bench_config(images, tmp_path / "out", tiny_unet_folder, tasks=("random_inpaint",), methods=methods)
    cfg.tune_images, cfg.num_samples = str(other), 2
    rows = run_bench(cfg, progress=True)
    prior = load_prior(tiny_unet_folder, device="cpu")
    op = TASKS["random_inpaint"].build(16)
    crops = random_crops([str(other)], bench.TUNE_CROPS, 16, 3, seed=bench.TUNE_SEED)
    y = op.measure(crops, torch.Generator().manual_seed(bench.TUNE_SEED))
    scores = {
        lam: float(
            psnr(
                sample_posterior(
                    y,
                    op,
                    prior,
                    "diffpir",
                    2,
                    seed=bench.TUNE_SEED,
                    progress=False,
                    steps=2,
                    preset="inpaint",
                    lam=lam,
                    zeta=0.3,
                ).mean,
                crops,
            ).mean()
        )
        for lam in (7.0, 1e10)
    }
    best = max(scores, key=scores.get)
    assert abs(scores[7.0] - scores[1e10]) > 1, scores  # the data are ignored at 1e10
    kept = json.loads((tmp_path / "out" / "tuned.json").read_text())
    assert kept["params"]["random_inpaint/diffpir:tuned"] == {"lam": best, "zeta": 0.3}
    assert (
        f"tuned: diffpir on random_inpaint: lam={best:g}, zeta=0.3 (best PSNR of the mean of 2"
        in capsys.readouterr().out
    )
    tuned = sorted(r["psnr"] for r in rows if r["method"] == "diffpir:tuned")
    x = load_center_crops(sorted(images.iterdir()), 3, 16)
    y_test = torch.cat([op.measure(x[i : i + 1], measurement_generator(0, i)) for i in range(len(x))])
    direct = sample_posterior(
        y_test,
        op,
        prior,
        "diffpir",
        2,
        seed=0,
        progress=False,
        steps=2,
        preset="inpaint",
        lam=7.0,
        zeta=0.3,
        measurement_ids=list(range(len(x))),
    )
    assert tuned == pytest.approx(sorted(psnr(direct.mean, x).tolist()), abs=1e-3)
    assert len([r for r in rows if r["method"] == "diffpir"]) == len(tuned)
    assert (tmp_path / "out" / "figures" / "random_inpaint_diffpir-tuned.png").exists()
    fixed = bench_config(images, tmp_path / "fixed", tiny_unet_folder, tasks=("random_inpaint",), methods=methods[1:])
    fixed.tune_images, fixed.sampler_options = str(other), {"diffpir.lam": 3.0}
    run_bench(fixed, progress=False)
    kept = json.loads((tmp_path / "fixed" / "tuned.json").read_text())
    assert kept["params"]["random_inpaint/diffpir:tuned"] == {"zeta": 0.3}


def test_tuned_methods_are_refused_without_tune_images_or_a_grid(tmp_path, images, tiny_unet_folder):
    with pytest.raises(ValueError, match=r"'diffpir:tuned' tunes diffpir on other images: give --tune-images"):
        run_bench(bench_config(images, tmp_path / "out", tiny_unet_folder, methods=("diffpir:tuned",)))
    with pytest.raises(ValueError, match=r"sampler 'dps' has no options to tune; tunable: diffpir"):
        run_bench(bench_config(images, tmp_path / "out", tiny_unet_folder, methods=("dps:tuned",)))
    with pytest.raises(ValueError, match=r"unknown method 'nope:tuned'"):
        run_bench(bench_config(images, tmp_path / "out", tiny_unet_folder, methods=("nope:tuned",)))
