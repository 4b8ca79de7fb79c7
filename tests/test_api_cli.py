"""sample_posterior input validation and the command line, end to end on a tiny UNet."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from posterior_diffusion import sample_posterior
from posterior_diffusion.cli import build_parser, main
from posterior_diffusion.operators import get_operator


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "clean.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_result_object(gmm):
    op = get_operator("inpaint_box", image_size=8, noise_sigma=0.1)
    y = op.measure(gmm.sample(2, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    res = sample_posterior(y, op, prior=gmm, num_samples=3, steps=20, progress=False, seed=4)
    assert res.samples.shape == (2, 3, 1, 8, 8) and res.mean.shape == res.std.shape == (2, 1, 8, 8)
    assert torch.allclose(res.std, res.samples.std(1)) and (res.std > 0).any()
    assert res.config["mean_estimate"] == "tail_average"  # auto's DiffPIR: its chains' tail means averaged
    assert res.nfe == 20 and res.seconds > 0 and res.config["seed"] == 4
    assert res.config["operator"] == op.to_config() and res.config["sampler"]["steps"] == 20
    single = sample_posterior(y[0], op, prior=gmm, num_samples=3, steps=20, progress=False, seed=4)
    assert single.samples.shape == (3, 1, 8, 8) and torch.allclose(single.samples, res.samples[0], atol=1e-5)
    assert torch.allclose(single.mean, res.mean[0], atol=1e-5)


@pytest.mark.parametrize(
    "y_shape,value,message",
    [
        ((2, 1, 8, 9), 0.0, r"mask is \(8, 8\) but the image is \(8, 9\)"),
        ((1, 8), 0.0, "y must have 3 dims"),
        ((1, 1, 8, 8), float("nan"), "y contains NaN or Inf"),
        ((1, 1, 8, 8), 200.0, "must be scaled to"),
    ],
)
def test_bad_measurements_are_refused_before_work(gmm, y_shape, value, message):
    op = get_operator("inpaint_random", image_size=8)
    with pytest.raises(ValueError, match=message):
        sample_posterior(torch.full(y_shape, value), op, prior=gmm, progress=False)


def test_measurement_shape_must_match_the_image_shape(gmm):
    op = get_operator("super_resolution", factor=2)
    with pytest.raises(ValueError, match=r"y has shape \(1, 4, 5\) per measurement but the operator gives \(1, 4, 4\)"):
        sample_posterior(torch.zeros(1, 4, 5), op, prior=gmm, image_shape=(1, 8, 8), progress=False)


def test_prior_image_shape_mismatch_is_refused(gmm):
    with pytest.raises(ValueError, match=r"models images of shape \(1, 8, 8\), got \(1, 4, 4\)"):
        sample_posterior(torch.zeros(1, 4, 4), "denoise", prior=gmm, progress=False)


def test_unknown_names_are_refused(gmm):
    with pytest.raises(ValueError, match="unknown sampler 'ddpm'"):
        sample_posterior(torch.zeros(1, 8, 8), "denoise", prior=gmm, sampler="ddpm", progress=False)
    with pytest.raises(ValueError, match="unknown operator 'deblur'"):
        sample_posterior(torch.zeros(1, 8, 8), "deblur", prior=gmm, progress=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cli_restore_simulate_end_to_end(tmp_path, image_file, tiny_unet_folder, capsys, dtype):
    out = tmp_path / "run"
    code = main(
        [
            "restore",
            str(image_file),
            "--simulate",
            "--operator",
            "gaussian_blur",
            "--op-param",
            "kernel_size=5",
            "--op-param",
            "sigma=1.0",
            "--prior",
            str(tiny_unet_folder),
            "--steps",
            "5",
            "--num-samples",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--seed",
            "3",
            "--dtype",
            dtype,
        ]
    )
    assert code == 0
    for name in (
        "mean.png",
        "std.png",
        "figure.png",
        "measurement.png",
        "run.json",
        "results.safetensors",
        "samples/sample_000.png",
        "samples/sample_001.png",
    ):
        assert (out / name).exists(), name
    run = json.loads((out / "run.json").read_text())
    assert run["nfe"] == 5 and run["seed"] == 3 and run["operator"]["params"]["kernel_size"] == 5
    assert run["dtype"] == dtype
    assert np.isfinite(run["psnr_mean"]) and len(run["psnr_samples"]) == 2
    assert run["peak_memory_of"] == "process resident" and run["peak_memory_mb"] > 50  # torch alone takes more
    printed = capsys.readouterr().out
    assert "PSNR of the mean" in printed and f"peak memory {run['peak_memory_mb']} MiB" in printed
    # never overwrites silently
    assert (
        main(
            [
                "restore",
                str(image_file),
                "--simulate",
                "--operator",
                "denoise",
                "--prior",
                str(tiny_unet_folder),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 1
    )
    assert "pass --overwrite" in capsys.readouterr().err


def test_cli_degrade_then_restore_with_the_saved_operator(tmp_path, image_file, tiny_unet_folder):
    y_file = tmp_path / "y.pt"
    assert (
        main(
            [
                "degrade",
                str(image_file),
                "--operator",
                "inpaint_random",
                "--op-param",
                "missing=0.7",
                "--out",
                str(y_file),
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "y.pt.json").read_text())
    assert config["params"]["image_size"] == [16, 16]
    out = tmp_path / "restored"
    assert (
        main(
            [
                "restore",
                str(y_file),
                "--operator-config",
                str(tmp_path / "y.pt.json"),
                "--prior",
                str(tiny_unet_folder),
                "--steps",
                "3",
                "--num-samples",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "mean.png").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["restore", "{img}", "--simulate", "--operator", "blurr", "--out", "{tmp}/o"], "unknown operator 'blurr'"),
        (["restore", "{tmp}/missing.png", "--simulate", "--operator", "denoise", "--out", "{tmp}/o"], "does not exist"),
        (
            ["restore", "{tmp}/broken.png", "--simulate", "--operator", "denoise", "--out", "{tmp}/o"],
            "cannot read image",
        ),
        (
            ["restore", "{img}", "--simulate", "--operator", "denoise", "--prior", "{tmp}", "--out", "{tmp}/o"],
            "is not a diffusion model folder",
        ),
        (
            ["restore", "{img}", "--simulate", "--operator", "denoise", "--sampler", "nope", "--out", "{tmp}/o"],
            "unknown sampler 'nope'",
        ),
        (
            ["degrade", "{img}", "--operator", "gaussian_blur", "--op-param", "sigma", "--out", "{tmp}/y.png"],
            "must look like name=value",
        ),
    ],
)
def test_cli_errors_are_one_line_with_exit_code(tmp_path, image_file, argv, message, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    argv = [a.format(img=image_file, tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_list_fits_the_terminal(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gaussian_blur" in out and "dps" in out and "built-in priors:" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    entries = [re.match(r"  \S+ +", line) for line in out.splitlines() if re.match(r"  \S", line)]
    continued = [len(line) - len(line.lstrip()) for line in out.splitlines() if line.startswith("   ")]
    assert len({m.end() for m in entries} | set(continued)) == 1  # every description starts in the same column


def test_every_command_line_option_has_a_description():
    def undescribed(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from undescribed(sub, f"{path} {name}")
            elif not action.help:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(undescribed(build_parser(), "posterior-diffusion")) == []


def test_cli_sample_writes_a_grid_and_keeps_existing_files(tmp_path, tiny_unet_folder, capsys):
    out = tmp_path / "grid.png"
    argv = ["sample", "--prior", str(tiny_unet_folder), "--num", "6", "--nrow", "3", "--size", "16", "--steps", "3"]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] < grid.shape[1] and grid.std() > 0  # 2 rows of 3 distinct samples
    assert "sample" in capsys.readouterr().err  # the progress bar over the steps
    assert main([*argv, "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "quiet.png"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["gaussian_blur", "inpaint_random", "super_resolution", "interferometry"])
def test_sampling_on_another_device_leaves_the_callers_operator_where_it_was(name):
    from posterior_diffusion.api import on_device

    op = get_operator(name)
    assert on_device(op, torch.device("cpu")) is op
    moved = on_device(op, torch.device("meta"))
    assert moved is not op and all(b.device.type == "meta" for b in moved.buffers())
    assert all(b.device.type == "cpu" for b in op.buffers())  # the user keeps measuring on the CPU


def test_write_restoration_from_python_and_overwrite_leaves_no_stale_files(tmp_path, gmm):
    """The library function behind `restore`: a Python run writes the same files; an overwrite with fewer samples
    leaves exactly the new run's samples, and files that are not a restoration's are kept."""
    from posterior_diffusion.outputs import write_restoration

    op = get_operator("inpaint_random", image_size=8, missing=0.5, noise_sigma=0.1)
    x = gmm.sample(1, torch.Generator().manual_seed(0))[0]
    y = op.measure(x, torch.Generator().manual_seed(1))
    out = tmp_path / "restored"
    res = sample_posterior(y, op, prior=gmm, sampler="ddrm", num_samples=3, steps=5, progress=False)
    written = write_restoration(out, res, y, truth=x)
    assert {p.relative_to(out).as_posix() for p in written} == {
        *(f"samples/sample_{i:03d}.png" for i in range(3)),
        *("mean.png", "std.png", "measurement.png", "figure.png", "results.safetensors", "run.json"),
    }
    assert json.loads((out / "run.json").read_text())["sampler"]["name"] == "ddrm"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_restoration(out, res, y)
    fewer = sample_posterior(y, op, prior=gmm, sampler="ddrm", num_samples=1, steps=5, progress=False)
    write_restoration(out, fewer, y, overwrite=True)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["sample_000.png"]
    assert (out / "notes.txt").read_text() == "mine" and "psnr_mean" not in json.loads((out / "run.json").read_text())
    with pytest.raises(ValueError, match="one measurement"):
        write_restoration(tmp_path / "batched", sample_posterior(y[None], op, prior=gmm, sampler="ddrm", steps=2), y)
