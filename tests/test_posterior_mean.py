"""`mean` is the best posterior-mean estimate: the exact Tweedie mean for denoising, the samples' average elsewhere."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion.api import sample_posterior
from posterior_diffusion.calibration import Calibration
from posterior_diffusion.exact import random_gaussian_mixture
from posterior_diffusion.operators import get_operator
from posterior_diffusion.posterior_mean import tweedie_step
from posterior_diffusion.priors.base import noise_levels

SHAPE = (1, 4, 4)


def _denoising(sigma: float, seed: int = 0):
    prior = random_gaussian_mixture(shape=SHAPE, components=3, seed=seed, spread=0.3)
    op = get_operator("denoise", noise_sigma=sigma)
    x = prior.sample(3, torch.Generator().manual_seed(seed + 1))
    y = op.measure(x, torch.Generator().manual_seed(seed + 2))
    return prior, op, y


@pytest.mark.parametrize("step", [30, 200])
def test_denoising_mean_is_the_exact_posterior_mean(step):
    """At a noise level of the prior's schedule the Gaussian mixture's Tweedie denoiser is its exact posterior mean
    (Kalman form, `GaussianMixturePrior.posterior`): res.mean must equal it, not the samples' average."""
    prior = random_gaussian_mixture(shape=SHAPE, components=3, seed=0, spread=0.3)
    sigma = float(noise_levels(prior.alphas_cumprod)[step])
    prior, op, y = _denoising(sigma)
    res = sample_posterior(y, op, prior=prior, sampler="ddrm", steps=4, num_samples=2, progress=False, device="cpu")
    exact = prior.posterior(op, y).mean.float().clamp(-1, 1)
    assert res.config["mean_estimate"] == "tweedie"
    assert torch.allclose(res.mean, exact, atol=1e-4)
    assert not torch.allclose(res.samples.mean(1), exact, atol=1e-2)  # the 2-sample average is not
    assert torch.equal(res.std, res.samples.std(1))


def test_the_nearest_step_is_taken_and_far_levels_fall_back_to_the_sample_average():
    prior = random_gaussian_mixture(shape=SHAPE, seed=0)
    levels = noise_levels(prior.alphas_cumprod)
    assert tweedie_step(prior.alphas_cumprod, float(levels[57]) * 1.001) == 57
    # below the schedule's first level by more than the tolerance: no step matches, so the samples' average
    prior, op, y = _denoising(float(levels[0]) / 3)
    res = sample_posterior(y, op, prior=prior, sampler="ddrm", steps=4, num_samples=2, progress=False, device="cpu")
    assert res.config["mean_estimate"] == "sample_average"
    assert torch.equal(res.mean, res.samples.mean(1))


def test_other_operators_report_the_sample_average():
    prior = random_gaussian_mixture(shape=SHAPE, seed=0)
    op = get_operator("inpaint_random", image_size=4, missing=0.5, seed=1, noise_sigma=0.1)
    y = op.measure(prior.sample(2, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    res = sample_posterior(y, op, prior=prior, sampler="ddrm", steps=4, num_samples=3, progress=False, device="cpu")
    assert res.config["mean_estimate"] == "sample_average"
    assert torch.equal(res.mean, res.samples.mean(1))


def test_calibrated_intervals_stay_around_the_samples_average():
    """The calibration factors were measured around the samples' average, so the interval is centred there even
    when `mean` is the Tweedie mean."""
    prior = random_gaussian_mixture(shape=SHAPE, seed=0)
    prior, op, y = _denoising(float(noise_levels(prior.alphas_cumprod)[100]))
    options = {"prior": prior, "sampler": "ddrm", "steps": 4, "num_samples": 2, "progress": False, "device": "cpu"}
    config = sample_posterior(y, op, **options).config
    cal = Calibration(
        factors={0.9: 2.0},
        task="denoise",
        operator=config["operator"],
        prior=config["prior"],
        sampler=config["sampler"],
        num_samples=2,
        images=10,
    )
    res = sample_posterior(y, op, calibration=cal, level=0.9, **options)
    assert torch.allclose((res.lower + res.upper) / 2, res.samples.mean(1), atol=1e-6)
    assert torch.allclose(res.upper - res.lower, 4.0 * res.std, atol=1e-6)


def test_diffpir_reports_the_average_of_its_chains_last_denoiser_estimates():
    """DiffPIR opts in to the tail mean: `mean` is x0_hat of the last TAIL_STEPS steps, averaged per chain and then
    over the chains (recomputed here from the callback), in any batching; on an exact posterior it is about as close
    to the posterior mean as the samples' average."""
    from posterior_diffusion.samplers.tail_mean import TAIL_LEVEL, TAIL_STEPS

    prior = random_gaussian_mixture(shape=(1, 8, 8), components=3, seed=0, spread=0.3)
    op = get_operator("inpaint_random", image_size=8, missing=0.5, seed=1, noise_sigma=0.05)
    y = op.measure(prior.sample(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    steps = []
    options = {"prior": prior, "sampler": "diffpir", "steps": 20, "num_samples": 3, "progress": False, "device": "cpu"}
    res = sample_posterior(y, op, callback=lambda info: steps.append((info["t"], info["x0_hat"].clone())), **options)
    levels = noise_levels(prior.alphas_cumprod)
    late = [x0_hat for t, x0_hat in steps[-TAIL_STEPS:] if levels[t] <= TAIL_LEVEL]
    assert res.config["mean_estimate"] == "tail_average" and len(steps) == 20 and len(late) == TAIL_STEPS >= 2
    expected = torch.stack(late).mean(0).reshape(4, 3, 1, 8, 8).mean(1)
    assert torch.allclose(res.mean, expected, atol=1e-6)
    assert not torch.allclose(res.mean, res.samples.mean(1), atol=1e-3)  # not the final draws' average
    assert torch.allclose(sample_posterior(y, op, batch_size=5, **options).mean, res.mean, atol=1e-6)
    exact = prior.posterior(op, y).mean.float()
    assert (res.mean - exact).pow(2).mean() <= 1.2 * (res.samples.mean(1) - exact).pow(2).mean()


def test_the_tail_keeps_the_last_steps():
    from posterior_diffusion.samplers.tail_mean import TailMean

    tail = TailMean([0.01, 0.05, 0.08, 1.0], steps=2, level=0.1)
    assert tail.mean() is None
    for t, value in ((3, 100.0), (2, 50.0), (1, 2.0), (0, 4.0)):
        tail.add({"t": t, "x0_hat": torch.full((2, 1, 2, 2), value)})
    assert torch.equal(tail.mean(), torch.full((2, 1, 2, 2), 3.0))
    few = TailMean([0.01, 0.5, 1.0], steps=2, level=0.1)  # a short run: its second-to-last step is too noisy
    for t, value in ((2, 100.0), (0, 4.0)):
        few.add({"t": t, "x0_hat": torch.full((1, 1, 2, 2), value)})
    assert torch.equal(few.mean(), torch.full((1, 1, 2, 2), 4.0))
