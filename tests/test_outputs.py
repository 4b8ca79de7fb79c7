"""What `restore` writes: every file with the mode of an ordinary file, and all of them named in its last line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from posterior_diffusion.api import sample_posterior
from posterior_diffusion.cli import main
from posterior_diffusion.images import save_image
from posterior_diffusion.operators import get_operator
from posterior_diffusion.outputs import describe_files, write_restoration

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_output_has_the_mode_of_an_ordinary_file(tmp_path, gmm, umask_022):
    """safetensors' save_file made results.safetensors 0600 beside 0644 images."""
    op = get_operator("denoise", noise_sigma=0.1)
    x = gmm.sample(1, torch.Generator().manual_seed(0))[0]
    y = op.measure(x, torch.Generator().manual_seed(1))
    res = sample_posterior(y, op, prior=gmm, sampler="ddrm", num_samples=2, steps=3, progress=False)
    written = write_restoration(tmp_path / "out", res, y, truth=x)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes["results.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_describe_files_collapses_numbered_runs(tmp_path):
    names = ["samples/sample_000.png", "samples/sample_001.png", "samples/sample_002.png", "mean.png"]
    names += ["kernel_000.png", "run.json"]
    text = describe_files(tmp_path, [tmp_path / n for n in names])
    assert text == "samples/sample_000..002.png, mean.png, kernel_000.png, run.json"


def test_restore_names_every_file_it_wrote(tmp_path, tiny_unet_folder, capsys):
    """The last line listed mean.png, samples/, ... but not measurement.png or each sample."""
    clean = tmp_path / "clean.png"
    save_image(torch.rand(3, 16, 16) * 2 - 1, clean)
    out = tmp_path / "restored"
    argv = ["restore", str(clean), "--simulate", "--operator", "denoise", "--prior", str(tiny_unet_folder)]
    argv += ["--sampler", "ddrm", "--steps", "2", "--out", str(out), "--quiet"]
    assert main([*argv, "--num-samples", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) == 9
    assert "samples/sample_000..002.png" in line
    for name in files:
        if not name.startswith("samples/"):
            assert name in line, (name, line)
    # --overwrite with fewer samples: exactly the new run's samples (the fix is tested in test_api_cli too)
    assert main([*argv, "--num-samples", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["sample_000.png"]
    assert "samples/sample_000.png," in capsys.readouterr().out


def test_the_readme_first_command_output_is_ignored_by_git():
    assert "/restored/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_error_map_of_the_mean_sits_beside_the_std_on_its_scale():
    """With a truth, the figure shows |truth - mean| next to the std, both channel-averaged on one colour scale."""
    from posterior_diffusion.figures import posterior_panels

    mean, truth = torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5)
    std, samples = torch.full((3, 4, 4), 0.1), torch.zeros(2, 3, 4, 4)
    titles = [t for t, _, _ in posterior_panels(mean, std, samples, 2)]
    assert titles == ["posterior mean", "posterior std", "sample 1", "sample 2"]
    panels = posterior_panels(mean, std, samples, 2, truth)
    assert [t for t, _, _ in panels][:3] == ["posterior mean", "|error| of the mean", "posterior std"]
    (_, error, error_scale), (_, std_map, std_scale) = panels[1], panels[2]
    assert error.shape == std_map.shape == (1, 4, 4) and float(error.max()) == 0.5
    assert error_scale == std_scale and error_scale["vmax"] == 0.5
