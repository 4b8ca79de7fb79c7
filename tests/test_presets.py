"""Which preset each sampler runs with on each task: mapped explicitly by the task (preset names are the
reference codes' and differ between samplers: RED-Diff's `deblur` is DPS's `gaussian_deblur`), checked for every
(task, sampler) pair, and said by the bench where a sampler has none."""

from __future__ import annotations

import pytest

from posterior_diffusion.bench import BenchConfig, get_method
from posterior_diffusion.bench.plan import plan
from posterior_diffusion.samplers import get_sampler, list_samplers, sampler_class
from posterior_diffusion.samplers.base import sampler_applies
from posterior_diffusion.tasks import TASKS, load_tasks_file

# every (task, sampler) pair with a preset; every other pair runs with the sampler's defaults
EXPECTED = {
    **{("sr4", s): "super_resolution" for s in ("dps", "red_diff", "ddrm", "resample", "pigdm")},
    **{
        (t, s): "inpainting"
        for t in ("box_inpaint", "random_inpaint")
        for s in ("dps", "red_diff", "ddrm", "resample", "ddnm", "pigdm")
    },
    **{
        (t, s): "deblur" for t in ("gaussian_deblur", "motion_deblur") for s in ("red_diff", "ddrm", "pnp_ula", "pigdm")
    },
    **{(t, s): t for t in ("gaussian_deblur", "motion_deblur") for s in ("dps", "resample")},
    ("blind_motion_deblur", "gibbs_ddrm"): "ffhq",
    ("denoise", "ddrm"): "denoise",
    ("phase_retrieval", "dps"): "phase_retrieval",
    **{(t, "red_diff"): "nonlinear" for t in ("phase_retrieval", "hdr")},
    ("denoise", "pigdm"): "denoise",
    # DDNM's presets are the reference's task names (`evaluation.sh --deg`)
    ("sr4", "ddnm"): "sr_bicubic",
    ("gaussian_deblur", "ddnm"): "deblur_gauss",
    ("denoise", "ddnm"): "denoising",
    # DAPS's and DiffPIR's presets are their reference configs' task names (configs/task/*.yaml; main_ddpir_*.py)
    ("sr4", "daps"): "down_sampling",
    ("box_inpaint", "daps"): "inpainting",
    ("random_inpaint", "daps"): "inpainting_rand",
    ("gaussian_deblur", "daps"): "gaussian_blur",
    ("motion_deblur", "daps"): "motion_blur",
    # MCGdiff's presets are its reference's task configs (scripts/configs/task/*.yaml)
    ("sr4", "mcgdiff"): "super_resolution",
    **{(t, "mcgdiff"): "inpainting" for t in ("box_inpaint", "random_inpaint")},
    ("gaussian_deblur", "mcgdiff"): "deblur_2d",
    ("motion_deblur", "mcgdiff"): "motion_blur",
    ("phase_retrieval", "daps"): "phase_retrieval",
    ("hdr", "daps"): "hdr",
    ("sr4", "diffpir"): "sisr",
    **{(t, "diffpir"): "inpaint" for t in ("box_inpaint", "random_inpaint")},
    **{(t, "diffpir"): "deblur" for t in ("gaussian_deblur", "motion_deblur")},
    **{("black_hole", s): "black_hole" for s in ("dps", "red_diff", "pnp_ula")},
}


@pytest.mark.parametrize("sampler", list_samplers())
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_and_sampler_pair_has_its_decided_preset(task, sampler):
    preset = TASKS[task].presets.get(sampler)
    assert preset == EXPECTED.get((task, sampler))
    if preset is not None:
        assert preset in sampler_class(sampler).PRESETS
        get_sampler(sampler, preset=preset)


def test_red_diff_runs_its_deblur_preset_on_the_bench_deblurring_tasks():
    cfg, red_diff = BenchConfig(images=".", out="."), get_method("red_diff")
    for task in ("gaussian_deblur", "motion_deblur"):
        options = red_diff.options(cfg, TASKS[task].presets.get("red_diff"))
        assert get_sampler("red_diff", **options).config.lr == sampler_class("red_diff").PRESETS["deblur"]["lr"]
    own = BenchConfig(images=".", out=".", sampler_options={"red_diff.preset": "nonlinear"})
    assert red_diff.options(own, "deblur")["preset"] == "nonlinear"  # the bench's own option wins


def test_the_bench_says_which_sampler_has_no_preset_for_a_task(gmm, capsys):
    cfg = BenchConfig(images=".", out=".", size=8, tasks=("denoise", "sr4"), methods=("dps", "ddrm"))
    methods = [get_method(name) for name in cfg.methods]
    plan(cfg, TASKS, methods, gmm, announce=True)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: dps has no preset for denoise; it runs with its default options"]


def test_a_tasks_file_maps_presets_and_an_unknown_one_is_refused(tmp_path, gmm):
    path = tmp_path / "tasks.toml"
    path.write_text(
        '[tasks.light]\noperator = "gaussian_blur"\nparams = { kernel_size = 5, sigma = 1.0 }\n'
        'presets = { red_diff = "deblur", dps = "gaussian_deblur" }\n'
        '[tasks.typo]\noperator = "gaussian_blur"\nparams = { kernel_size = 5, sigma = 1.0 }\n'
        'presets = { red_diff = "gaussian_deblur" }\n'
    )
    tasks = load_tasks_file(path)
    assert tasks["light"].presets == {"red_diff": "deblur", "dps": "gaussian_deblur"}
    op = tasks["typo"].build(8)
    with pytest.raises(ValueError, match=r"unknown preset 'gaussian_deblur' for red_diff; valid: .*deblur"):
        sampler_applies("red_diff", gmm, op, tasks["typo"].presets["red_diff"])
