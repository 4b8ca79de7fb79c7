"""sampler="auto": the task table names real samplers and presets (an unknown one is refused as a task registers),
the first sampler that applies runs."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.cli import main
from posterior_diffusion.operators import get_operator, list_operators
from posterior_diffusion.priors import load_prior
from posterior_diffusion.samplers import list_samplers, sampler_class
from posterior_diffusion.samplers.auto import FALLBACK, auto_order, check_task, choose_sampler
from posterior_diffusion.samplers.budgets import CPU_STEPS
from posterior_diffusion.tasks import TASKS, Task, auto_task, register_task


def test_every_task_names_registered_samplers_and_existing_presets():
    for name, task in TASKS.items():
        check_task(name, task)
        for sampler in (*task.presets, *task.auto, *task.cpu_auto):
            assert sampler in list_samplers(), (name, sampler)
    assert set(FALLBACK) <= set(list_samplers())
    for operator in list_operators():  # every operator has an order; its presets exist
        for sampler, preset in auto_order(operator):
            assert preset is None or preset in sampler_class(sampler).PRESETS, (operator, sampler, preset)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"presets": {"red_diff": "deblurr"}}, "sampler 'red_diff' has no preset 'deblurr'"),
        ({"auto": ("diffpirr",)}, "names sampler 'diffpirr', which is not registered"),
        ({"presets": {"dpss": "x"}}, "names sampler 'dpss'"),
    ],
)
def test_a_task_with_an_unknown_sampler_or_preset_is_refused_as_it_registers(fields, message):
    with pytest.raises(ValueError, match=message):
        register_task("typo", Task("gaussian_blur", **fields))
    assert "typo" not in TASKS


def test_auto_follows_the_tasks_order_and_presets():
    sr4 = TASKS["sr4"]
    assert auto_task("super_resolution") is sr4
    assert auto_order("super_resolution") == [(name, sr4.presets.get(name)) for name in sr4.auto]
    assert auto_order("inpaint_box", on_cpu=True)[0] == ("diffpir", "inpaint")  # its CPU order
    assert auto_order("uniform_blur") == auto_order("gaussian_blur")  # blurs without a task follow gaussian_blur
    assert auto_order("interferometry")[0] == ("dps", "black_hole")  # registered by the application


@pytest.mark.parametrize(
    "operator,params,expected",
    [
        ("gaussian_blur", {"boundary": "circular"}, ("diffpir", {"preset": "deblur"})),
        ("gaussian_blur", {"noise": "poisson"}, ("red_diff", {"preset": "deblur"})),  # DiffPIR, PiGDM: Gaussian
        ("super_resolution", {"factor": 2}, ("diffpir", {"preset": "sisr"})),
        ("inpaint_box", {"image_size": [16, 16], "box_size": 4}, ("pigdm", {"preset": "inpainting"})),
        ("high_dynamic_range", {}, ("diffpir", {})),
        ("denoise", {}, ("ddrm", {"preset": "denoise"})),
    ],
)
def test_the_first_sampler_that_applies_is_chosen(tiny_unet_folder, operator, params, expected):
    prior = load_prior(str(tiny_unet_folder))
    assert choose_sampler(prior, get_operator(operator, **params)) == expected


@pytest.mark.parametrize(
    "operator,params,expected",
    [
        ("gaussian_blur", {}, ("diffpir", {"preset": "deblur", "steps": CPU_STEPS, "prox_iters": 5})),
        (
            "inpaint_box",
            {"image_size": [16, 16], "box_size": 4},
            ("diffpir", {"preset": "inpaint", "steps": 20, "prox_iters": 5}),
        ),
        ("denoise", {}, ("ddrm", {"preset": "denoise", "steps": CPU_STEPS})),
        ("high_dynamic_range", {}, ("diffpir", {})),  # nonlinear: the sampler's own steps
    ],
)
def test_on_a_cpu_linear_operators_get_the_cpu_budget(tiny_unet_folder, operator, params, expected):
    assert CPU_STEPS == 20
    assert choose_sampler(load_prior(str(tiny_unet_folder)), get_operator(operator, **params), on_cpu=True) == expected


def test_a_cpu_run_uses_the_cpu_budget_unless_steps_are_given(tiny_unet_folder):
    op = get_operator("gaussian_blur", kernel_size=5, boundary="circular")
    y = op.measure(torch.zeros(1, 3, 16, 16), torch.Generator().manual_seed(0))
    res = sample_posterior(y, op, prior=str(tiny_unet_folder), device="cpu", progress=False)
    assert res.config["sampler"]["steps"] == CPU_STEPS and res.nfe == CPU_STEPS
    assert res.config["sampler"]["prox_iters"] == 5
    assert sample_posterior(y, op, prior=str(tiny_unet_folder), device="cpu", steps=3, progress=False).nfe == 3


def test_restore_and_preset_none_keep_autos_preset(tiny_unet_folder, tmp_path):
    """`restore` without --preset (and preset=None in Python) leaves auto's preset for the task in place: box
    inpainting on a CPU runs DiffPIR's inpaint preset (lambda 1, zeta 1), not its deblurring defaults."""
    import json

    import numpy as np
    from PIL import Image

    image = tmp_path / "clean.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    argv = ["restore", str(image), "--simulate", "--operator", "inpaint_box", "--op-param", "box_size=4"]
    argv += ["--prior", str(tiny_unet_folder), "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, "--steps", "2", "--num-samples", "1"]) == 0
    sampler = json.loads((tmp_path / "out" / "run.json").read_text())["sampler"]
    assert (sampler["name"], sampler["preset"], sampler["lam"], sampler["zeta"]) == ("diffpir", "inpaint", 1.0, 1.0)
    op = get_operator("inpaint_box", image_size=[16, 16], box_size=4)
    y = op.measure(torch.zeros(1, 3, 16, 16), torch.Generator().manual_seed(0))
    res = sample_posterior(y, op, prior=str(tiny_unet_folder), device="cpu", preset=None, steps=2, progress=False)
    assert res.config["sampler"]["preset"] == "inpaint"


def test_a_latent_prior_falls_through_to_the_samplers_that_take_it(tiny_ldm_folder):
    prior = load_prior(str(tiny_ldm_folder))  # DiffPIR and PiGDM need a pixel prior
    assert choose_sampler(prior, get_operator("gaussian_blur", kernel_size=5)) == ("red_diff", {"preset": "deblur"})


def test_sample_posterior_defaults_to_auto_and_records_the_choice(tiny_unet_folder):
    op = get_operator("gaussian_blur", kernel_size=5, boundary="circular")
    y = op.measure(torch.zeros(1, 3, 16, 16), torch.Generator().manual_seed(0))
    res = sample_posterior(y, op, prior=str(tiny_unet_folder), steps=2, progress=False)
    assert res.config["sampler"]["name"] == "diffpir" and res.config["sampler"]["preset"] == "deblur"
    assert res.nfe == 2
    explicit = sample_posterior(y, op, prior=str(tiny_unet_folder), sampler="diffpir", preset="deblur", steps=2)
    assert torch.equal(res.samples, explicit.samples)


def test_no_sampler_that_applies_is_one_line(tiny_unet_folder, monkeypatch):
    monkeypatch.setitem(TASKS, "hdr", Task("high_dynamic_range", auto=("ddrm",)))  # DDRM needs an SVD
    with pytest.raises(ValueError, match="sampler='auto' found no sampler for operator 'high_dynamic_range'"):
        choose_sampler(load_prior(str(tiny_unet_folder)), get_operator("high_dynamic_range"))


def test_list_shows_the_auto_order(capsys):
    assert main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "(auto: diffpir > pigdm > red_diff" in out and "on a CPU: 20 steps)" in out
    assert "on a CPU: diffpir > pigdm > red_diff > ddrm > resample, 20 steps)" in out  # box inpainting
