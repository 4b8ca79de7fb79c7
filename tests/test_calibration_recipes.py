"""Every shipped calibration file has a recipe that remakes it (the same task, operator, prior and image count),
and the recipes' command lists them and refuses a pattern that matches none."""

from __future__ import annotations

from pathlib import Path

import pytest

from posterior_diffusion import calibration_recipes, shipped_calibrations
from posterior_diffusion.calibration import operator_identity
from posterior_diffusion.cli import build_parser
from posterior_diffusion.cli_inputs import build_operator

RECIPES = {recipe.file: recipe for recipe in calibration_recipes.recipes()}


@pytest.mark.parametrize("path,cal", shipped_calibrations.shipped(), ids=lambda v: getattr(v, "name", ""))
def test_every_shipped_file_is_made_by_its_recipe(path, cal):
    assert path.name in RECIPES, f"{path.name} has no recipe in calibration_recipes.RECIPES"
    args = build_parser().parse_args(RECIPES[path.name].command("DATA", path))
    channels = args.channels or 3
    assert cal.prior == f"builtin:natural-{'rgb' if channels == 3 else 'gray'}"
    assert cal.task == (args.name or args.operator) and cal.images == args.num_images
    assert cal.folder in ("", Path(args.images).name)  # files made before folders were recorded hold ""
    assert cal.num_samples == args.num_samples and cal.held_out["images"] == args.num_test_images
    op = build_operator(args, (channels, args.size, args.size))
    assert operator_identity(op.to_config()) == cal.operator
    assert cal.one_sided == (op.one_sided_class if args.one_sided else "")


def test_recipes_are_one_per_file_and_auto_files_name_their_budget():
    assert len(RECIPES) == len(calibration_recipes.recipes())
    for name, recipe in RECIPES.items():
        if name.startswith("auto_"):
            args = build_parser().parse_args(recipe.command("DATA", Path(name)))
            budget = dict(p.split("=") for p in args.sampler_param or []).get("budget", "any")
            assert args.sampler == "auto" and f"-{budget}" in args.name + "-any"


def test_a_budget_gets_its_own_file_only_where_auto_runs_differently_there():
    # DDRM's own steps for denoising are the CPU budget's; hdr is nonlinear (no CPU budget); box inpainting switches
    # sampler (DiffPIR on a CPU, PiGDM at the GPU budget); the other linear operators change their steps
    for operator in ("denoise", "high_dynamic_range"):
        assert f"auto_{operator}.json" in RECIPES and f"auto_{operator}_gray.json" in RECIPES
        assert not any(name.startswith(f"auto_{operator}_cpu") for name in RECIPES)
    for operator in ("inpaint_box", "gaussian_blur", "super_resolution"):
        assert {f"auto_{operator}_cpu.json", f"auto_{operator}_gpu_gray.json"} <= set(RECIPES)
        assert f"auto_{operator}.json" not in RECIPES


def test_list_prints_every_command_and_a_pattern_must_match(capsys, tmp_path):
    assert calibration_recipes.main(["--list", "--data", "D", "--only", "auto_denoise*"]) == 0
    out = capsys.readouterr().out
    assert "auto_denoise.json" in out and "auto_denoise_gray.json" in out and "auto_inpaint" not in out
    assert calibration_recipes.main(["--list", "--data", "D", "--only", "auto_motion_blur_gpu*"]) == 0
    out = capsys.readouterr().out
    assert "--images D/testsets/Kodak24" in out and "--sampler-param budget=gpu" in out
    assert calibration_recipes.main(["--list", "--data", "D", "--only", "auto_motion_blur_gpu_gray.json"]) == 0
    assert "--images D/trainsets/BSD400 " in capsys.readouterr().out  # natural-gray: its own training photos
    assert calibration_recipes.main(["--list", "--missing", "--out", str(tmp_path), "--only", "readme*"]) == 0
    assert "readme_gaussian_blur_ddrm.json" in capsys.readouterr().out
    (tmp_path / "readme_gaussian_blur_ddrm.json").touch()
    assert calibration_recipes.main(["--list", "--missing", "--out", str(tmp_path), "--only", "readme*"]) == 0
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="no shipped calibration matches"):
        calibration_recipes.select(["nothing*"])
