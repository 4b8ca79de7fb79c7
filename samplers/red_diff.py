"""RED-Diff: variational diffusion sampling (Mardani, Song, Kautz, Vahdat; ICLR 2024; arXiv:2305.04391), Algorithm 1.

q(x0 | y) = N(mu, sigma^2 I) with sigma -> 0: Adam on mu minimises, over descending timesteps t,

    loss(mu) = v * mean((y - A(mu))^2) / 2 + lambda * w_t * mean(sg(eps_hat(x_t, t) - eps) * mu),
    x_t = sqrt(alpha_bar_t) mu + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I),

the score-distillation form of the regulariser: the denoiser residual is a stop-gradient, so there is no
backpropagation through the network (reference code NVlabs/RED-diff `algos/reddiff.py`). w_t is the inverse
SNR weighting sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t) ("linear", the default) or one of its variants.
mu starts at A^+ y for linear operators (the reference's `H_pinv`), otherwise at 0.
The means are per sample (summed over samples), so Adam sees the same gradients whatever the batch.

Latent priors (not in the paper; its variational argument carries over to q(z0 | y) = N(mu, sigma^2 I) on the
latents): mu is a latent, the data term is v * mean((y - A(D(mu)))^2) / 2 with the gradient through the decoder
D, the regulariser is the same score-distillation term on latents, mu starts at E(A^+ y) (E(0) for nonlinear
operators) and the result is D(mu).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.tensor_utils import autograd_gradient, randn_stacked

from .base import Sampler, check_box, register_sampler
from .inits import check_init, initial_state
from .schedule import red_diff_timesteps

WEIGHTINGS = {  # functions of the inverse SNR r = sqrt(1 - alpha_bar) / sqrt(alpha_bar) (reddiff.yaml options)
    "linear": lambda r: r,
    "sqrt": lambda r: r.sqrt(),
    "square": lambda r: r.square(),
    "log": lambda r: torch.log1p(r),
    "clip": lambda r: r.clamp(max=1.0),
    "power2over3": lambda r: r.pow(2 / 3),
    "const": lambda r: torch.ones_like(r),
}


@dataclass(frozen=True)
class REDDiffConfig:
    """RED-Diff settings (reference repository `_configs/algo/reddiff.yaml`, `sample_test.sh`).

    steps: 1000 (sample_test.sh and the paper's runs; `exp.num_steps` defaults to 50).
    lam: lambda, the regulariser weight `grad_term_weight` = 0.25.
    lr: Adam learning rate 0.1 (README examples use 0.25-0.5; nonlinear tasks 0.5), the same at any `steps` as in
        the reference: each step moves mu by about lr, so many steps need a smaller one (scale it by 100 / steps
        beyond about 100 steps).
    obs_weight: v = 1.
    weighting: `denoise_term_weight` = "linear" (w_t = inverse SNR).
    sigma_x0: 0 (q's std; > 0 adds sigma_x0 * noise to mu inside each step).
    init_rcond: 3e-2, the initial A^+ y discards singular values below this fraction of the largest, as the
        reference's SVD operators do (`utils/degredations.py`: singular values < ZERO = 3e-2 are set to 0).
    box: None (the paper); (low, high) projects mu onto the box after every Adam step, a projected-gradient
        variant for pixel priors whose data leave directions unconstrained (e.g. closure-only interferometry,
        where unprojected mu grows fringes far outside the image range that the weak regulariser cannot undo).
    init: a registered initial estimate (`samplers.inits`): "pinv" (A^+ y for linear operators, zeros
        otherwise: the reference), "zeros", "dark" (-1, an empty sky for non-negative images), or one that an
        application registers.
    """

    steps: int = 1000
    lam: float = 0.25
    lr: float = 0.1
    obs_weight: float = 1.0
    weighting: str = "linear"
    sigma_x0: float = 0.0
    init_rcond: float = 3e-2
    box: tuple[float, float] | None = None
    init: str = "pinv"

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.lam < 0:
            raise ValueError(f"need steps >= 1, lr > 0, lam >= 0; got {self.steps}, {self.lr}, {self.lam}")
        check_init(self.init)
        if self.box is not None:
            check_box(self.box)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")


@register_sampler("red_diff")
class REDDiff(Sampler):
    """RED-Diff for any differentiable operator, pixel or latent prior; one network forward per step, no VJP."""

    Config = REDDiffConfig
    PRESETS: ClassVar[dict[str, dict]] = {  # README / sample_test.sh of the reference repository
        "inpainting": {"lam": 0.25, "lr": 0.25},
        "super_resolution": {"lam": 0.25, "lr": 0.25},
        "deblur": {"lam": 0.25, "lr": 0.25},
        "nonlinear": {"lam": 0.25, "lr": 0.5},
    }
    step_option = "lr"
    needs_space = "any"
    needs_operator = "differentiable"
    weighs_noise_level = False  # Gaussian noise: the data term is mean((y - A mu)^2) / 2, not divided by sigma_y^2
    samples_posterior = False  # q(x0 | y) with sigma -> 0: samples differ only through the noise draws
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 4}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 1000}

    def nfe(self, prior) -> int:
        return self.config.steps

    def check(self, prior, op) -> None:
        super().check(prior, op)
        if self.config.box is not None and prior.space == "latent":
            raise ValueError("box projects images in [-1, 1]; it does not apply to a latent prior (use box=None)")
        check_init(self.config.init, op)

    def _gradient(self, prior, op, y, x0_pred, residual, w_t: float) -> torch.Tensor:
        """d loss / d mu at mu = x0_pred (n, *state): the data term's gradient plus w_t * residual / numel.

        The data term is the per-sample mean square of the noise model's residual norm, as the reference, so
        that data with their own weights (Poisson, interferometric closures) are compared in their own units.
        Pixel priors take the operator's residual gradient (closed form for linear operators, no autograd
        graph); latent priors differentiate through the decoder.
        """
        data_scale, reg_scale = self.config.obs_weight / y[0].numel(), w_t / x0_pred[0].numel()
        if prior.space == "pixel":
            grad = op.residual_gradient(y, x0_pred)
        else:
            grad = autograd_gradient(lambda z: op.residual_norm(y, prior.to_image(z)).square() / 2, x0_pred)
        return grad.mul_(data_scale).add_(residual, alpha=reg_scale)

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        shape = prior.state_shape(image_shape)  # latents for a latent prior
        with torch.no_grad():
            init = prior.from_image(initial_state(cfg.init, op, y, image_shape, cfg.init_rcond))
        # dense layouts for mu and its gradient (below): fused Adam reads both as plain arrays
        mu = init.float().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        # fused: one kernel per update instead of a dozen (the update is host-bound on a GPU at small batches)
        optimizer = torch.optim.Adam([mu], lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
        timesteps = red_diff_timesteps(prior.num_timesteps, cfg.steps)
        # the schedule's scalars as host floats, computed once: no per-step tensor arithmetic on them
        alpha_bar = prior.alphas_cumprod.double().cpu()[timesteps]
        inverse_snr = ((1 - alpha_bar) / alpha_bar).sqrt()
        scalars = zip(
            timesteps,
            alpha_bar.sqrt().tolist(),
            (1 - alpha_bar).sqrt().tolist(),
            WEIGHTINGS[cfg.weighting](inverse_snr).tolist(),
            strict=True,
        )
        for i, (t, sqrt_a, sqrt_one_minus_a, weight) in enumerate(scalars):
            with torch.no_grad():
                eps = randn_stacked(generators, shape, device)
                x0_pred = mu.detach()
                if cfg.sigma_x0:
                    x0_pred = x0_pred + cfg.sigma_x0 * randn_stacked(generators, shape, device)
                x_t = sqrt_a * x0_pred + sqrt_one_minus_a * eps
                with torch.inference_mode():  # fewer dispatch layers than no_grad: the network is host-bound at batch 1
                    pred = prior.predict(x_t, t)
                residual = pred.eps - eps  # sg(eps_hat - eps)
                # contiguous: fused Adam reads a strided gradient (an FFT's .real, a convolution's channels-last
                # output) as if it were dense (torch 2.13)
                mu.grad = self._gradient(prior, op, y, x0_pred, residual, cfg.lam * weight).contiguous()
            optimizer.step()
            if cfg.box is not None:
                with torch.no_grad():
                    mu.clamp_(*cfg.box)
            step_hook({"i": i, "t": t, "x": mu.detach(), "x0_hat": pred.x0_hat})
        with torch.no_grad():
            return prior.to_image(mu.detach()), {}
