"""RED-Diff's own mechanics: its closed-form gradient against autograd of its loss, per chain whatever the chunk,
fused Adam, the box projection and the dark start."""

from __future__ import annotations

import pytest
import torch

from posterior_diffusion.exact import standard_cases
from posterior_diffusion.operators import get_operator
from posterior_diffusion.samplers import get_sampler

CASES = {case.name: case for case in standard_cases(num_measurements=2)}


def test_red_diff_box_and_dark_init(gmm):
    """box projects mu after every step (results inside it); "dark" starts from the empty image -1; both are
    refused where they do not apply."""
    case = CASES["inpaint"]
    free = get_sampler("red_diff", steps=20, lr=0.5)(case.prior, case.op, case.y, seed=0).samples
    boxed = get_sampler("red_diff", steps=20, lr=0.5, box=(-0.2, 0.2))(case.prior, case.op, case.y, seed=0).samples
    assert free.abs().max() > 0.2 and boxed.abs().max() <= 0.2 + 1e-6
    one_step = get_sampler("red_diff", steps=1, lr=1e-6, init="dark")(case.prior, case.op, case.y, seed=0).samples
    assert torch.allclose(one_step, torch.full_like(one_step, -1.0), atol=1e-4)
    with pytest.raises(ValueError, match="unknown init"):
        get_sampler("red_diff", init="bright")


@pytest.mark.parametrize(
    "op",
    [
        get_operator("gaussian_blur", kernel_size=5, sigma=1.0, boundary="circular", noise_sigma=0.1),
        get_operator("inpaint_random", image_size=8, missing=0.5, noise="poisson", poisson_rate=2.0),
    ],
    ids=["blur", "poisson-inpaint"],
)
def test_red_diff_gradient_is_the_gradient_of_its_loss(op):
    """RED-Diff steps Adam with the closed-form gradient of its loss v ||r(y, A mu)||^2 / (2 D) + w_t mean(res mu)
    (the noise model's residual: weighted for Poisson data), checked against autograd of that loss."""
    prior = CASES["blur"].prior
    g = torch.Generator().manual_seed(0)
    mu, residual = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    y = op.measure(torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, g)
    got = get_sampler("red_diff", obs_weight=0.7)._gradient(prior, op, y, mu, residual, 0.3)
    m = mu.clone().requires_grad_(True)
    loss = 0.7 * op.residual_norm(y, m).square() / (2 * y[0].numel()) + 0.3 * (residual * m).flatten(1).mean(1)
    (expected,) = torch.autograd.grad(loss.sum(), m)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_red_diff_gradient_of_a_chain_does_not_depend_on_its_chunk():
    """Adam is blind to a gradient scaled by the chunk size (a loss mean over the chunk), so this is checked on the
    gradient itself: each chain's is the same alone as among four."""
    case = CASES["blur"]
    g = torch.Generator().manual_seed(0)
    mu, residual = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    y = case.op.measure(torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, g)
    sampler = get_sampler("red_diff")
    together = sampler._gradient(case.prior, case.op, y, mu, residual, 0.3)
    alone = torch.cat(
        [
            sampler._gradient(case.prior, case.op, y[k : k + 1], mu[k : k + 1], residual[k : k + 1], 0.3)
            for k in range(4)
        ]
    )
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-9)


def test_red_diff_fused_adam_matches_the_plain_update(monkeypatch):
    """Fused Adam reads gradients as dense arrays: a circular blur's adjoint (an FFT's .real, strided) must be
    made contiguous first (found when RED-Diff moved to closed-form gradients: every other pixel froze)."""
    case = CASES["blur"]
    run = lambda: get_sampler("red_diff", steps=10)(case.prior, case.op, case.y, seed=0).samples  # noqa: E731
    fused = run()
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *args, **kw: adam(*args, **{**kw, "fused": False}))
    assert torch.allclose(fused, run(), atol=1e-5)
