"""The Gaussian-mixture prior is exact: denoiser, posterior, samples."""

from __future__ import annotations

import math

import torch

from posterior_diffusion.exact import random_gaussian_mixture
from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import GaussianMixturePrior


def _single_gaussian(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return GaussianMixturePrior([1.0], mu[None], cov[None], image_shape=(1, 2, 3)), mu, cov


def test_single_gaussian_posterior_is_the_kalman_update():
    prior, mu, cov = _single_gaussian()
    op = get_operator("blur", kernel=[[0.5, 0.3], [0.1, 0.1]], boundary="circular", noise_sigma=0.3).double()
    a = op.matrix((1, 2, 3))
    y = torch.randn(2, 1, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    post = prior.posterior(op, y)
    # information form, written independently of the implementation's Kalman form
    precision = torch.linalg.inv(cov) + a.T @ a / 0.09
    cov_ref = torch.linalg.inv(precision)
    mean_ref = (cov_ref @ (torch.linalg.solve(cov, mu)[:, None] + a.T @ y.reshape(2, -1).T / 0.09)).T
    assert torch.allclose(post.mean.reshape(2, -1).double(), mean_ref, atol=1e-5)
    assert torch.allclose(post.covariances[0], cov_ref, atol=1e-10)
    assert torch.allclose(post.std.reshape(2, -1).double(), cov_ref.diagonal().sqrt().expand(2, -1), atol=1e-5)


def test_posterior_samples_match_their_moments():
    prior = random_gaussian_mixture(shape=(1, 2, 2), components=2, seed=3)
    op = get_operator("inpaint_random", image_size=2, missing=0.5, seed=1, noise_sigma=0.2)
    y = op.measure(prior.sample(1, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    post = prior.posterior(op, y)
    samples = post.sample(40000, torch.Generator().manual_seed(2))
    assert samples.shape == (1, 40000, 1, 2, 2)
    assert torch.allclose(samples.mean(1), post.mean, atol=0.01)
    assert torch.allclose(samples.std(1), post.std, atol=0.01)


def test_multimodal_posterior_weights_match_brute_force_bayes():
    """Two far-apart components in 1-D: the posterior weights equal a numerical integration of Bayes' rule."""
    prior = GaussianMixturePrior([0.3, 0.7], [[-1.0], [1.0]], [[[0.04]], [[0.09]]], image_shape=(1, 1, 1))
    op = get_operator("denoise", noise_sigma=0.8)
    y = torch.tensor([[[[0.2]]]])
    post = prior.posterior(op, y)
    grid = torch.linspace(-4, 4, 200001, dtype=torch.float64)
    dens = 0.3 * torch.exp(-((grid + 1) ** 2) / 0.08) / math.sqrt(0.08 * math.pi) + 0.7 * torch.exp(
        -((grid - 1) ** 2) / 0.18
    ) / math.sqrt(0.18 * math.pi)
    like = torch.exp(-((0.2 - grid) ** 2) / (2 * 0.64))
    post_dens = dens * like
    mean_ref = (grid * post_dens).sum() / post_dens.sum()
    assert abs(float(post.mean) - float(mean_ref)) < 1e-4
    mass_left = post_dens[grid < 0].sum() / post_dens.sum()
    assert abs(float(post.weights[0, 0]) - float(mass_left)) < 1e-3


def test_denoiser_is_tweedie_of_the_exact_marginal():
    """eps_hat = -sqrt(1 - alpha_bar) * grad log p_t(x_t), with log p_t written out independently."""
    prior = random_gaussian_mixture(shape=(1, 2, 2), components=3, seed=5)
    t = 300
    ab = prior.alphas_cumprod[t].double()
    x_t = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    log_p = 0
    comps = []
    for w, mu, cov in zip(prior.weights, prior.means, prior.covariances, strict=False):
        dist = torch.distributions.MultivariateNormal(
            ab.sqrt() * mu, ab * cov + (1 - ab) * torch.eye(4, dtype=torch.float64)
        )
        comps.append(w.log() + dist.log_prob(x_t.reshape(4, -1)))
    log_p = torch.logsumexp(torch.stack(comps), 0).sum()
    (score,) = torch.autograd.grad(log_p, x_t)
    eps_ref = -(1 - ab).sqrt() * score
    assert torch.allclose(prior.eps(x_t.detach(), t).double(), eps_ref, atol=1e-5)
    x0_ref = (x_t.detach() - (1 - ab).sqrt() * eps_ref) / ab.sqrt()
    assert torch.allclose(prior.denoise(x_t.detach(), t).double(), x0_ref, atol=1e-5)


def test_prior_samples_match_prior_moments():
    prior = random_gaussian_mixture(shape=(1, 2, 2), components=2, seed=7)
    x = prior.sample(40000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), prior.mean, atol=0.01)
