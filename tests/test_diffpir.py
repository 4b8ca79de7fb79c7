"""DiffPIR (samplers/diffpir.py): the reference's quad grid, its data step's rho convention against a dense solve of
the reference's [0, 1]-scale problem, the nonlinear gradient step, exact Gaussian-mixture posteriors (what a
plug-and-play restoration should reach) and the refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from posterior_diffusion.exact import evaluate, standard_cases
from posterior_diffusion.operators import get_operator
from posterior_diffusion.samplers import get_sampler, sampler_class
from posterior_diffusion.samplers.diffpir import quad_timesteps

CASES = {case.name: case for case in standard_cases(num_measurements=2)}
EXACT = sampler_class("diffpir").EXACT_OPTIONS


def test_quad_grid_is_the_references():
    """seq = [int(s) for s in sqrt(linspace(0, T^2, N))], seq[-1] -= 1, t = T - 1 - seq (main_ddpir_*.py)."""
    for steps in (3, 20, 100):
        seq = [int(math.sqrt(v)) for v in torch.linspace(0, 1000**2, steps, dtype=torch.float64).tolist()]
        seq[-1] -= 1
        assert quad_timesteps(1000, steps) == [999 - s for s in seq]
    grid = quad_timesteps(1000, 100)
    assert grid[0] == 999 and grid[-1] == 0 and all(a > b for a, b in itertools.pairwise(grid))


@pytest.mark.parametrize(
    "op",
    [
        get_operator("gaussian_blur", kernel_size=5, sigma=1.0, boundary="circular", noise_sigma=0.1),
        get_operator("gaussian_blur", kernel_size=3, sigma=0.8, boundary="reflect", noise_sigma=0.05),
        get_operator("inpaint_random", image_size=8, missing=0.5, noise_sigma=0.0),
    ],
    ids=["fft", "cg", "noiseless"],
)
@pytest.mark.parametrize("t", [200, 30])
def test_data_step_solves_the_references_problem(op, t):
    """The reference solves argmin ||y01 - H x01||^2 + rho' ||x01 - z01||^2 on [0, 1] images with rho' = lambda
    sigma_n^2 / sigma_bar_t^2, sigma_n = max(0.001, its noise std on [0, 1]) = sigma_y / 2: on [-1, 1] images the
    same x solves (A^T A + rho' I) x = A^T y + rho' z (dense solve here)."""
    from posterior_diffusion.priors.base import linear_alphas_cumprod

    sampler = get_sampler("diffpir", lam=7.0)
    a = float(linear_alphas_cumprod().double()[t])
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    y = op.measure(torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1, g)
    got = sampler.data_step(op, y, z, sampler.rho(a))
    sigma_n = max(0.001, op.noise.sigma / 2)
    rho_ref = 7.0 * sigma_n**2 / ((1 - a) / a)
    m = op.matrix((1, 8, 8))
    lhs = m.T @ m + rho_ref * torch.eye(64, dtype=torch.float64)
    expected = torch.linalg.solve(lhs, (m.T @ y.flatten(1).T + rho_ref * z.flatten(1).T)).T.reshape(z.shape)
    tol = 1e-3 if op.has_svd else 2e-2  # conjugate gradients, PROX_MAX_ITER iterations
    assert float((got - expected).abs().max()) < tol * float(expected.abs().max())


def test_nonlinear_data_step_is_the_references_gradient_step():
    """x0 = x0_hat - grad ||y - A(x)||^2 / (2 sigma_y^2) / (4 rho_t), through the operator only, clipped to [-1, 1]."""
    op = get_operator("high_dynamic_range", noise_sigma=0.05)
    g = torch.Generator().manual_seed(0)
    x0_hat = torch.rand(2, 1, 8, 8, generator=g) - 0.5
    y = op.measure(torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, g)
    sampler = get_sampler("diffpir")
    rho = sampler.rho(0.5)
    v = x0_hat.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((op(v) - y).square().sum() / (2 * 0.05**2), v)
    assert torch.allclose(sampler.data_step(op, y, x0_hat, rho), (x0_hat - grad / (4 * rho)).clamp(-1, 1), atol=1e-6)
    far = sampler.data_step(op, y, x0_hat, sampler.rho(4e-5))  # t near T: a step of ~1e6, clipped to the image range
    assert far.abs().max() <= 1


@pytest.mark.parametrize("case_name", ["blur", "inpaint", "sr2"])
def test_exact_posterior_restoration(case_name):
    """Not a calibrated sampler, but its mean must be a good restoration and its spread of the right order
    (measured at 100 steps: mean error 0.24 / 0.26 / 0.29 of the prior's 0.80, SW 0.15 / 0.15 / 0.20 of 0.54,
    std ratio 0.86 / 0.93 / 1.22). Checked by mutation: dropping the zeta noise, flipping eps_hat or skipping the
    data step fails here."""
    r = evaluate(get_sampler("diffpir", **EXACT), CASES[case_name], num_samples=32)
    assert r["mean_err"] < 0.45 * r["prior_err"], r
    assert r["sw"] < 0.5 * r["sw_prior"], r
    assert 0.6 < r["std_ratio"] < 1.5, r


def test_result_is_the_last_denoised_estimate_in_range(gmm):
    case = CASES["blur"]
    out = get_sampler("diffpir", steps=10)(case.prior, case.op, case.y, num_samples=2, seed=0)
    assert out.nfe == 10 and out.samples.abs().max() <= 1


def test_prox_iters_stops_the_data_steps_conjugate_gradients_early():
    """prox_iters=k: the data step is k CG iterations from x0_hat (as op.prox with max_iter=k); an operator with an
    SVD keeps its exact step."""
    from posterior_diffusion.priors.base import linear_alphas_cumprod

    rho = get_sampler("diffpir").rho(float(linear_alphas_cumprod()[200]))
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    reflect = get_operator("gaussian_blur", kernel_size=3, sigma=0.8, noise_sigma=0.05)
    y = reflect.measure(torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1, g)
    early = get_sampler("diffpir", prox_iters=2).data_step(reflect, y, z, rho)
    assert torch.equal(early, reflect.prox(z, y, rho, sigma_y=0.05, max_iter=2))
    assert not torch.allclose(early, get_sampler("diffpir").data_step(reflect, y, z, rho), atol=1e-4)
    circular = get_operator("gaussian_blur", kernel_size=3, sigma=0.8, boundary="circular", noise_sigma=0.05)
    exact = [get_sampler("diffpir", **o).data_step(circular, y, z, rho) for o in ({}, {"prox_iters": 2})]
    assert torch.equal(*exact)


def test_non_gaussian_noise_and_invalid_options_are_refused(gmm):
    op = get_operator("inpaint_random", image_size=8, missing=0.5, noise="poisson", poisson_rate=2.0)
    with pytest.raises(ValueError, match="diffpir needs Gaussian measurement noise"):
        get_sampler("diffpir")(gmm, op, torch.zeros(1, 1, 8, 8))
    for options in ({"steps": 1}, {"zeta": 1.5}, {"lam": 0.0}, {"prox_iters": 0}):
        with pytest.raises(ValueError):
            get_sampler("diffpir", **options)
