"""Every registered sampler: against exact Gaussian-mixture posteriors, end to end on a tiny diffusers UNet,
batch-size invariance, and refusal of combinations it cannot handle. A new sampler is tested by being registered
with its `SMOKE_OPTIONS` and `EXACT_OPTIONS`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.exact import evaluate, report_settings, standard_cases
from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import load_prior
from posterior_diffusion.samplers import get_sampler, list_samplers, sampler_class
from posterior_diffusion.samplers.base import SAMPLERS, DivergenceError, DivergenceGuard, NonFiniteError

SMOKE = {name: cls.SMOKE_OPTIONS for name, cls in SAMPLERS.items()}  # each sampler's cheapest full run
REPORT_SETTINGS = report_settings()
CASES = {case.name: case for case in standard_cases(num_measurements=2)}
# the exact posteriors are of pixel-space Gaussian mixtures: samplers that need a latent prior are checked in
# test_latent_samplers.py
NON_BLIND = [name for name in list_samplers() if not sampler_class(name).blind]
EXACT = [name for name in NON_BLIND if sampler_class(name).needs_space != "latent"]


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_declares_its_smoke_and_exact_report_settings(name):
    """Declared on the class itself (not inherited), so a new sampler cannot forget them; EXACT_OPTIONS is None
    exactly where the exact report does not apply (blind or latent-only samplers)."""
    cls = sampler_class(name)
    assert "SMOKE_OPTIONS" in vars(cls) and "EXACT_OPTIONS" in vars(cls), f"{name} lacks SMOKE/EXACT_OPTIONS"
    get_sampler(name, **cls.SMOKE_OPTIONS)
    assert (cls.EXACT_OPTIONS is not None) == (name in EXACT)
    assert "steps" in {f.name for f in dataclasses.fields(cls.Config)}, "the step budget is named `steps`"


@pytest.mark.parametrize("name", list_samplers())
def test_sampler_config_round_trips(name):
    from posterior_diffusion.samplers.base import sampler_from_config

    cls = sampler_class(name)
    for preset in [None, *cls.PRESETS]:
        sampler = get_sampler(name, preset=preset, **cls.SMOKE_OPTIONS)
        rebuilt = sampler_from_config(json.loads(json.dumps(sampler.to_config())))
        assert rebuilt.config == sampler.config and rebuilt.preset == preset and type(rebuilt) is cls


def _supported(name, case_names):
    sampler = get_sampler(name, **REPORT_SETTINGS[name])
    out = []
    for case_name in case_names:
        try:
            sampler.check(CASES[case_name].prior, CASES[case_name].op)
        except ValueError:
            continue
        out.append(pytest.param(name, case_name, id=f"{name}-{case_name}"))
    return out


@pytest.mark.parametrize(
    "name,case_name", [p for n in EXACT for p in _supported(n, ["blur", "inpaint", "sr2", "denoise_rgb"])]
)
def test_samples_match_the_exact_posterior(name, case_name):
    sampler = get_sampler(name, **REPORT_SETTINGS[name])
    case = CASES[case_name]
    r = evaluate(sampler, case, num_samples=32)
    if case.op.noise.sigma > 0.2 and not sampler.weighs_noise_level:
        # strong noise: a data term blind to sigma_y over-trusts y (measured: DPS std ratio 0.24, RED-Diff
        # mean error 0.48 of the prior's 0.77), so only "better than the prior alone" is asserted
        assert r["mean_err"] < r["prior_err"] and r["sw"] < r["sw_prior"], r
        return
    assert r["mean_err"] < 0.6 * r["prior_err"], r
    assert r["sw"] < 0.6 * r["sw_prior"], r
    if sampler.samples_posterior:  # spread checks only for samplers that claim posterior draws
        assert r["mean_err"] < 0.5 * r["prior_err"], r
        assert 0.4 < r["std_ratio"] < 1.6, r
        assert r["coverage90"] > 0.45, r


@pytest.mark.parametrize("name", [n for n in EXACT if sampler_class(n).samples_posterior])
def test_bimodal_posterior_mode_weights(name):
    """Two modes that the measurement cannot tell apart: each sampler must visit both in about the exact
    proportions (0.3 / 0.7), not collapse on one."""
    case = CASES["bimodal"]
    exact = case.prior.posterior(case.op, case.y).weights[:, 0]
    out = get_sampler(name, **REPORT_SETTINGS[name])(case.prior, case.op, case.y, num_samples=128, seed=0)
    fraction = (out.samples[..., 2:].mean((-1, -2, -3)) > 0).float().mean(1)
    assert ((fraction - exact).abs() < 0.15).all(), (fraction, exact)


def test_pnp_ula_with_the_exact_denoiser_matches_closely():
    """Asymptotically exact up to the smoothing eps: long chains on a unimodal posterior are very close."""
    r = evaluate(get_sampler("pnp_ula", steps=4000), CASES["inpaint"], num_samples=32)
    assert r["mean_err"] < 0.08 and 0.85 < r["std_ratio"] < 1.15 and r["coverage90"] > 0.8, r
    out = get_sampler("pnp_ula", steps=300, burn_in=100, thinning=4)(
        CASES["inpaint"].prior, CASES["inpaint"].op, CASES["inpaint"].y, num_samples=2
    )
    assert out.extras["chain_mean"].shape == out.samples.shape == out.extras["chain_std"].shape


def _operator_for(name: str):
    """An operator satisfying the sampler's declared needs (a blur for blind samplers)."""
    cls = sampler_class(name)
    boundary = "circular" if cls.needs_operator == "svd" or cls.blind else "reflect"
    return get_operator("gaussian_blur", kernel_size=3, sigma=0.8, boundary=boundary, noise_sigma=0.05)


def _prior_folder(name: str, request):
    """A tiny pixel UNet folder, or a tiny LDM folder for samplers that need a latent prior (both take 8x8 images)."""
    latent = sampler_class(name).needs_space == "latent"
    return request.getfixturevalue("tiny_ldm_folder" if latent else "tiny_unet_folder")


# How far batch_size 1 and 4 may differ in float32 (README, "Python"): batched convolutions round differently
# (about 1e-6 with a trained network, up to about 2e-4 with these random ones: tested to 1e-3); RED-Diff's first
# Adam steps and ReSample's per-chain stopping rules can turn that rounding into up to one optimiser step
# (measured 1.0e-2 and 6.1e-3 on Kodak crops). bfloat16 networks: 2e-2.
# DiffPIR on an operator without an SVD: its prox is conjugate gradients stopped at PROX_MAX_ITER, and the unconverged
# iterates at tiny rho_t (t near T) amplify that rounding chaotically (measured 3.4e-3 to 2.7e-2 here; 3e-7 with the
# exact FFT prox of a circular blur).
BATCH_TOLERANCE = {"red_diff": 2e-2, "resample": 2e-2, "diffpir": 5e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_end_to_end_on_a_diffusers_unet_batch_invariant(name, dtype, request):
    prior = load_prior(_prior_folder(name, request), dtype=dtype)
    op = _operator_for(name)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1  # not the global RNG: the
    y = op.measure(x, torch.Generator().manual_seed(0))  # same y whatever tests ran before
    kwargs = {"prior": prior, "sampler": name, "num_samples": 2, "seed": 3, "progress": False, **SMOKE[name]}
    whole = sample_posterior(y, op, batch_size=4, **kwargs)
    single = sample_posterior(y, op, batch_size=1, **kwargs)
    assert whole.samples.shape == (2, 2, 3, 8, 8) and torch.isfinite(whole.samples).all()
    tol = BATCH_TOLERANCE.get(name, 1e-3) if dtype == torch.float32 else 2e-2
    diff = float((whole.samples - single.samples).abs().max())
    assert diff < tol, f"batch_size changed the result by {diff}"
    assert whole.nfe == get_sampler(name, **SMOKE[name]).nfe(prior)
    if sampler_class(name).blind:
        assert whole.extras["kernel"].shape == (2, 2, 3, 3)


@pytest.mark.parametrize(
    "name,op,message",
    [
        (
            "ddrm",
            get_operator("gaussian_blur", kernel_size=3),
            "needs a linear operator with an SVD.*Operators that work"
            ".*gaussian_blur \\(boundary='circular'\\).*super_resolution \\(method='average'\\)",
        ),
        ("ddrm", get_operator("denoise", noise="poisson"), "needs Gaussian measurement noise"),
        ("gibbs_ddrm", get_operator("inpaint_random", image_size=8), "needs a blur operator"),
        ("pnp_ula", get_operator("denoise", noise_sigma=0.0), "noise_sigma > 0"),
    ],
)
def test_incompatible_combinations_are_refused_before_work(name, op, message, gmm):
    with pytest.raises(ValueError, match=message):
        get_sampler(name)(gmm, op, torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_restore_command_runs_every_sampler(name, request, tmp_path):
    import numpy as np
    from PIL import Image

    from posterior_diffusion.cli import main

    image = tmp_path / "clean.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(image)
    op = _operator_for(name)
    params = [f"--sampler-param={k}={v}" for k, v in SMOKE[name].items()]
    argv = [
        "restore",
        str(image),
        "--simulate",
        "--operator",
        "gaussian_blur",
        "--op-param",
        "kernel_size=3",
        "--op-param",
        f"boundary={op.boundary}",
        "--sampler",
        name,
        *params,
        "--prior",
        str(_prior_folder(name, request)),
        "--num-samples",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    assert main(argv) == 0
    assert (tmp_path / "out" / "mean.png").exists()
    assert (tmp_path / "out" / "kernel_000.png").exists() == sampler_class(name).blind


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_an_image_of_any_size_restores_with_every_sampler(name, request, tmp_path):
    """A 100 x 75 image (not a multiple of the networks' downsampling, 2 and 8) restores with every sampler and
    comes back 100 x 75: the pixel UNet pads its input, a latent prior its canvas (the operator sees 100 x 75)."""
    import numpy as np
    from PIL import Image

    from posterior_diffusion.cli import main

    image = tmp_path / "clean.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (75, 100, 3), dtype=np.uint8)).save(image)
    op = _operator_for(name)
    params = [f"--sampler-param={k}={v}" for k, v in SMOKE[name].items()]
    argv = ["restore", str(image), "--simulate", "--operator", "gaussian_blur", "--op-param", "kernel_size=3"]
    argv += [f"--op-param=boundary={op.boundary}", "--sampler", name, *params]
    argv += ["--prior", str(_prior_folder(name, request)), "--num-samples", "2", "--out", str(tmp_path / "out")]
    assert main([*argv, "--quiet"]) == 0
    assert Image.open(tmp_path / "out" / "mean.png").size == (100, 75)
    assert Image.open(tmp_path / "out" / "std.png").size == (100, 75)


def test_an_operator_serves_an_inference_mode_sampler_then_a_differentiating_one(tiny_unet_folder):
    """A circular blur caches its spectrum; after DDRM (inference mode) used it, DPS and RED-Diff (autograd through
    the operator) must still run on the same operator object (the bench found this with blind tasks)."""
    from posterior_diffusion import sample_posterior
    from posterior_diffusion.operators.kernels import gaussian_kernel
    from posterior_diffusion.priors import load_prior

    prior = load_prior(tiny_unet_folder, device="cpu")
    truth = get_operator("motion_blur", kernel_size=5, boundary="circular", noise_sigma=0.05)
    op = truth.with_kernel(gaussian_kernel(5, 1.0))
    y = truth.measure(torch.rand(1, 3, 16, 16) * 2 - 1, torch.Generator().manual_seed(0))
    for name in ("ddrm", "red_diff", "dps"):
        res = sample_posterior(y, op, prior=prior, sampler=name, steps=2, progress=False)
        assert torch.isfinite(res.samples).all(), name


def test_divergence_guard_names_the_first_bad_step_and_reads_flags_in_batches():
    guard = DivergenceGuard("dps", "step_size", every=3)
    for i in range(4):
        guard.update(i, torch.full((2, 3), 0.5))
    assert len(guard.pending) == 1  # steps 0-2 were read on the host at step 2; step 3 waits
    guard.update(4, torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(NonFiniteError, match=r"dps produced NaN/Inf at step 4.*float32, a smaller step_size"):
        guard.update(5, torch.tensor([[float("inf")]]))
    guard.update(6, torch.full((1, 2), 0.5))
    guard.check()  # nothing pending is bad


@pytest.mark.parametrize(
    "state, message",
    [
        (torch.full((2, 4), 2e3), r"red_diff diverged at step 7: \|x\| reached 2e\+03.*a smaller lr"),
        (torch.tensor([[0.3, -0.2], [-1.0, 1.0]]), r"red_diff saturated at step 7: every pixel of a sample"),
    ],
)
def test_divergence_guard_stops_exploded_and_saturated_states(state, message):
    guard = DivergenceGuard("red_diff", "lr")
    guard.update(6, torch.zeros(2, 4))
    guard.update(7, state)
    with pytest.raises(DivergenceError, match=message):
        guard.check()


@pytest.mark.parametrize(
    "state",
    [
        torch.full((2, 8), 999.0),  # large, under the bound
        torch.tensor([[-1.0, -1.0, -1.0, -0.99], [-1.0, 1.0, 1.0, 1.0 - 2**-20]]),  # mostly at the clip
        torch.full((2, 16, 16), -1.0).index_put_((torch.tensor([0, 1]), torch.tensor([3, 9])), torch.tensor(-0.9)),
    ],
    ids=["large", "mostly_clipped", "dark_sky"],
)
def test_divergence_guard_passes_large_and_mostly_clipped_states(state):
    guard = DivergenceGuard("red_diff", "lr")
    guard.update(0, state)
    guard.check()


def test_a_step_size_that_explodes_stops_with_the_step_and_the_option(gmm):
    op = get_operator("inpaint_random", image_size=8, missing=0.5, noise_sigma=0.05)
    y = op.measure(gmm.sample(1, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    with pytest.raises(DivergenceError, match=r"dps diverged at step \d+: .*a smaller step_size"):
        sample_posterior(y, op, prior=gmm, sampler="dps", steps=20, step_size=1e6, progress=False)


def test_a_learning_rate_that_saturates_the_box_stops_with_the_step_and_the_option(gmm):
    op = get_operator("inpaint_random", image_size=8, missing=0.5, noise_sigma=0.05)
    y = op.measure(gmm.sample(1, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    with pytest.raises(DivergenceError, match=r"red_diff saturated at step \d+: .*a smaller lr"):
        sample_posterior(y, op, prior=gmm, sampler="red_diff", steps=20, lr=1e6, box=(-1.0, 1.0), progress=False)
