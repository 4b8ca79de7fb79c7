"""DPS against exact Gaussian-mixture posteriors, and its batching/seeding guarantees."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion.metrics import sliced_wasserstein
from posterior_diffusion.operators import get_operator
from posterior_diffusion.samplers import get_sampler

CASES = [
    ("gaussian_blur", {"kernel_size": 5, "sigma": 1.0}),
    ("inpaint_random", {"image_size": 8, "missing": 0.5}),
]


def _exact_setting(gmm, name, params, n_meas=4, noise_sigma=0.1):
    op = get_operator(name, noise_sigma=noise_sigma, **params)
    x = gmm.sample(n_meas, torch.Generator().manual_seed(11))
    y = op.measure(x, torch.Generator().manual_seed(12))
    return op, y, gmm.posterior(op, y)


@pytest.mark.parametrize("name,params", CASES)
def test_dps_moves_samples_to_the_exact_posterior(gmm, name, params):
    op, y, post = _exact_setting(gmm, name, params)
    out = get_sampler("dps", steps=200, step_size=0.3)(gmm, op, y, num_samples=64, seed=0)
    assert out.samples.shape == (4, 64, 1, 8, 8) and out.nfe == 200
    exact = post.sample(64, torch.Generator().manual_seed(1))
    prior_draws = gmm.sample(64, torch.Generator().manual_seed(2))
    mean_err = (out.samples.mean(1) - post.mean).norm() / post.mean.norm()
    prior_err = (gmm.mean - post.mean).norm() / post.mean.norm()
    # measured (see the issue note): DPS ~0.17-0.21, the prior mean ~0.8
    assert mean_err < 0.35 * prior_err, (float(mean_err), float(prior_err))
    sw_dps = torch.stack(
        [sliced_wasserstein(out.samples[b], exact[b], generator=torch.Generator().manual_seed(b)) for b in range(4)]
    ).mean()
    sw_prior = torch.stack(
        [sliced_wasserstein(prior_draws, exact[b], generator=torch.Generator().manual_seed(b)) for b in range(4)]
    ).mean()
    assert sw_dps < 0.4 * sw_prior, (float(sw_dps), float(sw_prior))
    ratio = (out.samples.std(1) / post.std).mean()
    assert 0.4 < ratio < 1.6  # neither collapsed nor prior-wide


def test_unguided_sampling_fails_the_same_threshold(gmm):
    """The accuracy check is not vacuous: without the likelihood step (step_size 0) the samples stay prior draws."""
    op, y, post = _exact_setting(gmm, *CASES[0])
    guided = get_sampler("dps", steps=200, step_size=0.3)(gmm, op, y, num_samples=16, seed=0)
    unguided = get_sampler("dps", steps=200, step_size=0.0)(gmm, op, y, num_samples=16, seed=0)
    prior_err = (gmm.mean - post.mean).norm() / post.mean.norm()
    guided_err = (guided.samples.mean(1) - post.mean).norm() / post.mean.norm()
    unguided_err = (unguided.samples.mean(1) - post.mean).norm() / post.mean.norm()
    assert guided_err < 0.5 * prior_err < unguided_err


def test_dps_poisson_variant_improves_on_the_prior(gmm):
    op = get_operator("gaussian_blur", kernel_size=3, sigma=0.8, noise="poisson", poisson_rate=2.0)
    x = gmm.sample(4, torch.Generator().manual_seed(3)).clamp(-1, 1)
    y = op.measure(x, torch.Generator().manual_seed(4))
    out = get_sampler("dps", steps=100, step_size=0.3)(gmm, op, y, num_samples=16, seed=0)
    assert (out.samples.mean(1) - x).norm() < 0.7 * (gmm.mean - x).norm()


def test_result_for_one_image_does_not_depend_on_batching(gmm):
    op, y, _ = _exact_setting(gmm, *CASES[1], n_meas=3)
    sampler = get_sampler("dps", steps=20, step_size=0.3)
    full = sampler(gmm, op, y, num_samples=2, seed=5).samples
    chunked = sampler(gmm, op, y, num_samples=2, seed=5, batch_size=1).samples
    assert torch.allclose(full, chunked, atol=1e-5)
    alone = sampler(gmm, op, y[:1], num_samples=2, seed=5).samples  # seeds are per (seed, image index, sample)
    assert torch.allclose(alone[0], full[0], atol=1e-5), "the other images of the batch changed image 0"
    more = sampler(gmm, op, y, num_samples=3, seed=5).samples
    assert torch.allclose(more[:, :2], full, atol=1e-5), "adding samples must not change the first ones"
    assert not torch.allclose(sampler(gmm, op, y, num_samples=2, seed=6).samples, full)


def test_strided_schedule_and_presets():
    from posterior_diffusion.samplers.schedule import strided_timesteps

    t = strided_timesteps(1000, 50)
    assert t[0] == 999 and t[-1] == 0 and len(t.unique()) == 50 and (t[:-1] > t[1:]).all()
    assert get_sampler("dps", preset="gaussian_deblur").config.step_size == 0.3
    assert get_sampler("dps", preset="inpainting", step_size=0.7).config.step_size == 0.7
    with pytest.raises(ValueError, match=r"unknown preset 'deblur'.*gaussian_deblur"):
        get_sampler("dps", preset="deblur")
    with pytest.raises(ValueError, match=r"unknown option.*stepsize.*valid: clip_x0, final_fit_.*, step_size, steps"):
        get_sampler("dps", stepsize=1)
    with pytest.raises(ValueError, match=r"unknown sampler 'dsp'; valid: .*dps"):
        get_sampler("dsp")


def test_nan_during_sampling_names_the_step(gmm):
    from posterior_diffusion.samplers import NonFiniteError

    op, y, _ = _exact_setting(gmm, *CASES[0], n_meas=1)
    with pytest.raises(NonFiniteError, match=r"NaN/Inf at step 0.*float32"):
        get_sampler("dps", steps=10, step_size=float("inf"))(gmm, op, y)
