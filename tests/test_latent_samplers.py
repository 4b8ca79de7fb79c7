"""Samplers on latent priors: latent DPS (+ PSLD gluing), latent RED-Diff and ReSample, end to end on a tiny LDM
folder made by the tests (AutoencoderKL + latent UNet), ReSample's parts against hand computations, and the
refusal of pixel-only samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from posterior_diffusion import sample_posterior
from posterior_diffusion.cli import main
from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import load_prior
from posterior_diffusion.samplers import get_sampler
from posterior_diffusion.samplers.resample import (
    adamw_fit,
    consistency_steps,
    resampling_variance,
    stochastic_resample,
)

RESAMPLE = {"steps": 9, "skip": 1, "pixel_max_iters": 20, "latent_max_iters": 20, "patience": 5, "check_every": 5}
RUNS = {  # id: (sampler, options); 9 steps, small inner iteration counts
    "dps": ("dps", {"steps": 9}),
    "psld": ("dps", {"steps": 9, "gluing_weight": 0.1}),
    "red_diff": ("red_diff", {"steps": 9}),
    "resample": ("resample", RESAMPLE),
}
OPERATORS = {
    "box": lambda: get_operator("inpaint_box", image_size=16, box_size=8, noise_sigma=0.05),
    "sr2": lambda: get_operator("super_resolution", factor=2, noise_sigma=0.05),
}


@pytest.fixture(scope="module")
def latent_prior(tiny_ldm_folder):
    return load_prior(tiny_ldm_folder)


def _measure(prior, op):
    """Two 16x16 images in the decoder's range (decoded random latents) and their measurements."""
    with torch.no_grad():
        x = prior.decode(torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return x, op.measure(x, torch.Generator().manual_seed(1))


def _residual(op, y, samples):
    """Mean over samples of ||y - A(x)||: samples (B, S, C, H, W), y (B, ...)."""
    b, s = samples.shape[:2]
    a_x = op(samples.flatten(0, 1)).reshape(b, s, *y.shape[1:])
    return float((y[:, None] - a_x).flatten(2).norm(dim=-1).mean())


@pytest.mark.parametrize("op_name", sorted(OPERATORS))
@pytest.mark.parametrize("run", sorted(RUNS))
def test_end_to_end_batch_invariant_with_counted_nfe(latent_prior, run, op_name):
    name, options = RUNS[run]
    op = OPERATORS[op_name]()
    _, y = _measure(latent_prior, op)
    counted = []
    kwargs = {"prior": latent_prior, "sampler": name, "num_samples": 2, "seed": 3, "progress": False, **options}
    whole = sample_posterior(y, op, batch_size=4, callback=lambda info: counted.append(info.get("nfe", 1)), **kwargs)
    single = sample_posterior(y, op, batch_size=1, **kwargs)
    assert whole.samples.shape == (2, 2, 3, 16, 16) and torch.isfinite(whole.samples).all()
    diff = float((whole.samples - single.samples).abs().max())
    assert diff < 2e-4, f"batch_size changed the result by {diff}"  # float rounding differs between batch shapes
    # ReSample: 9 steps + time travel min(5, index) at the consistency indices 1..6 (skip 1): 9 + 20
    assert (
        whole.nfe == sum(counted) == get_sampler(name, **options).nfe(latent_prior) == (29 if run == "resample" else 9)
    )


def test_red_diff_fused_adam_matches_the_plain_update_on_channels_last_latents(latent_prior, monkeypatch):
    """The encoder returns channels-last latents; fused Adam reads mu and its gradient as dense arrays, so
    RED-Diff keeps both in the default layout (a layout mismatch scrambled the update)."""
    x, y = _measure(latent_prior, OPERATORS["sr2"]())
    assert not latent_prior.from_image(x).is_contiguous()  # what this test is about
    op = OPERATORS["sr2"]()
    kwargs = {"prior": latent_prior, "sampler": "red_diff", "seed": 3, "progress": False, "steps": 9}
    fused = sample_posterior(y, op, **kwargs).samples
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *args, **kw: adam(*args, **{**kw, "fused": False}))
    assert torch.allclose(fused, sample_posterior(y, op, **kwargs).samples, atol=1e-4)


@pytest.mark.parametrize("run", ["dps", "red_diff", "resample"])
def test_bfloat16_runs_are_finite(tiny_ldm_folder, run):
    name, options = RUNS[run]
    prior = load_prior(tiny_ldm_folder, dtype=torch.bfloat16)
    op = OPERATORS["box"]()
    _, y = _measure(prior, op)
    res = sample_posterior(y, op, prior=prior, sampler=name, num_samples=1, seed=0, progress=False, **options)
    assert res.samples.dtype == torch.float32 and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("op_name", sorted(OPERATORS))
def test_hard_data_consistency_fits_the_measurement_better_than_latent_dps(latent_prior, op_name):
    op = OPERATORS[op_name]()
    _, y = _measure(latent_prior, op)
    common = {"prior": latent_prior, "num_samples": 2, "seed": 5, "progress": False}
    dps = sample_posterior(y, op, sampler="dps", steps=9, **common)
    resample = sample_posterior(y, op, sampler="resample", **{**RESAMPLE, "latent_max_iters": 40}, **common)
    # measured: box 9.8 (DPS) vs 4.9, SR x2 4.7 vs 2.0; the noise alone gives 1.2 and 0.7
    assert _residual(op, y, resample.samples) < 0.7 * _residual(op, y, dps.samples)


def test_stochastic_resampling_matches_the_hand_computed_gaussian():
    # a = 0.64, sigma^2 = 0.5, z0* = 1, z'_prev = 2:
    # mean = (0.5 * 0.8 * 1 + 0.36 * 2) / (0.5 + 0.36) = 1.12 / 0.86, var = 0.5 * 0.36 / 0.86 = 0.18 / 0.86
    n = 200_000
    noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    draws = stochastic_resample(
        torch.ones(n, 1, 1, 1), 2 * torch.ones(n, 1, 1, 1), torch.tensor(0.64), torch.tensor(0.5), noise
    )
    assert abs(float(draws.mean()) - 1.12 / 0.86) < 5e-3
    assert abs(float(draws.var()) - 0.18 / 0.86) < 5e-3  # = 1 / (1 / sigma^2 + 1 / (1 - a)), the code's form
    # sigma^2 = gamma (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev) = 40 * 0.36 / 0.5 * (1 - 0.5 / 0.64) = 6.3
    assert abs(float(resampling_variance(torch.tensor(0.5), torch.tensor(0.64), 40.0)) - 6.3) < 1e-5


def test_consistency_schedule_of_the_reference(latent_prior):
    """S = 500, skip 10: indices 10 ... 330 (<= S - S // 3 = 334), 33 events of 5 time-travel steps."""
    events = consistency_steps(500, 10, 5)
    assert sorted(events) == list(range(10, 331, 10)) and set(events.values()) == {5}
    assert latent_prior.num_timesteps == 1000 and get_sampler("resample").nfe(latent_prior) == 500 + 33 * 5
    assert consistency_steps(9, 1, 5) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 5}


def test_inner_optimisation_stops_per_chain():
    """Each chain stops on its own rule, so its result does not depend on the others or on check_every."""
    target = torch.tensor([[0.0, 0.0], [3.0, -2.0]])
    v0 = torch.tensor([[1e-4, 0.0], [0.0, 0.0]])  # chain 0 starts below tol = 1e-6: frozen after its first step

    def fit(rows, max_iters=50, check_every=1):
        def loss(v):
            return (v - target[rows]).square().mean(1)

        return adamw_fit(v0[rows], loss, 0.1, max_iters, 1e-6, 5, 0.01, check_every), loss

    both, loss = fit(slice(0, 2), check_every=7)
    assert torch.equal(both[:1], fit(slice(0, 1), max_iters=1)[0])
    assert torch.equal(both[1:], fit(slice(1, 2), check_every=3)[0])
    assert torch.equal(both, fit(slice(0, 2))[0])
    assert float(loss(both)[1]) < 0.1 * float(loss(v0)[1])


def test_gluing_term_differentiates_through_the_adjoint():
    """A^T of a reflect-padded blur is an autograd VJP; it must stay differentiable in y for PSLD's gluing term:
    d/dx <w, A^T A x> = A^T A w."""
    op = get_operator("gaussian_blur", kernel_size=5, sigma=1.0)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    w = torch.randn(1, 3, 8, 8)
    (grad,) = torch.autograd.grad((op.adjoint(op(x)) * w).sum(), x)
    assert torch.allclose(grad, op.normal(w), atol=1e-5)


@pytest.mark.parametrize("name", ["ddrm", "gibbs_ddrm", "pnp_ula"])
def test_pixel_samplers_refuse_a_latent_prior_and_list_those_that_work(latent_prior, name):
    op = get_operator("gaussian_blur", kernel_size=3, boundary="circular")
    with pytest.raises(
        ValueError,
        match=f"{name} needs a pixel-space prior; this prior is latent. Samplers that "
        "work with a latent prior: daps, dps, red_diff, resample$",
    ):
        get_sampler(name)(latent_prior, op, torch.zeros(1, 3, 16, 16))


def test_latent_only_options_refuse_a_pixel_prior(gmm):
    op = get_operator("denoise")
    with pytest.raises(
        ValueError, match=r"resample needs a latent-space prior; this prior is pixel\. .*: .*ddrm, .*dps"
    ):
        get_sampler("resample")(gmm, op, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"gluing_weight > 0 \(PSLD\) needs a latent prior and a linear operator"):
        get_sampler("dps", gluing_weight=0.1)(gmm, op, torch.zeros(1, 1, 8, 8))


def test_cli_restore_with_resample_on_a_latent_prior_folder(tmp_path, tiny_ldm_folder):
    image = tmp_path / "clean.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "run"
    options = [f"--sampler-param={k}={v}" for k, v in RESAMPLE.items() if k != "steps"]
    argv = ["restore", str(image), "--simulate", "--operator", "inpaint_box", "--op-param", "box_size=8"]
    argv += ["--sampler", "resample", "--preset", "inpainting", "--steps", "9", *options]
    argv += ["--prior", str(tiny_ldm_folder), "--num-samples", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["nfe"] == 29 and run["sampler"]["name"] == "resample" and run["sampler"]["preset"] == "inpainting"
    assert (out / "mean.png").exists() and np.isfinite(run["psnr_mean"])


@pytest.mark.parametrize("run", ["dps", "resample"])
def test_compvis_style_vq_ldm_folder_runs_end_to_end(tmp_path, run, monkeypatch):
    """A CompVis-layout LDMPipeline (VQModel, unscaled latents, quantised in the decoder) works as well."""
    from posterior_diffusion.samplers.base import DivergenceGuard
    from tests.conftest import build_ldm_folder

    # the random UNet's noise predictions, divided by sqrt(alpha_bar_T) = 0.006, put these latents at ~1e4: a
    # divergence that a trained network does not have; the run is checked for its shapes and plumbing only
    monkeypatch.setattr(DivergenceGuard, "bound", float("inf"))

    prior = load_prior(build_ldm_folder(tmp_path / "vq_ldm", "vqvae"))
    op = OPERATORS["box"]()
    _, y = _measure(prior, op)
    sampler, options = RUNS[run]
    res = sample_posterior(y, op, prior=prior, sampler=sampler, num_samples=2, seed=0, progress=False, **options)
    assert res.samples.shape == (2, 2, 3, 16, 16) and torch.isfinite(res.samples).all()
    assert prior.scaling_factor == 1.0
