"""GibbsDDRM: blind deblurring by partially collapsed Gibbs sampling (Murata, Saito, Lai, Takida, Uesaka, Mitsufuji,
Ermon; ICML 2023; arXiv:2301.12686), Algorithm 1.

The joint p(x, k, y) is sampled by alternating
  (i)  a DDRM step for x_{t-1} given (x_t, k, y), in the FFT basis of the circular blur with kernel k;
  (ii) for t <= kernel_update_start * T, `kernel_updates` rounds of: x0_hat of the fresh x_{t-1} (one NFE),
       Langevin dynamics on the kernel for U(k) = ||y - k * x0_hat||^2 / (2 sigma_k^2) + gamma ||k||_1,
           k <- k - (delta / 2) grad U(k) + sqrt(delta) xi,
       renormalisation k <- k / sum(k), then x_{t-1} redrawn from x_t with the new kernel
(reference code sony/gibbsddrm, `functions/denoising.py` and `svd_replacement.py` `update_H_langevin`).

Departures, both for working at any image size: the blur is circular (the reference embeds the "same" blur in
a larger FFT canvas, `same_interp`); delta is `langevin_step` / L with L the Lipschitz constant of grad U's data
term (the reference's delta = 1e-11 is tuned to 256x256 images), and gamma is scaled by the number of pixels
relative to 3 x 256 x 256.
The initial kernel is the operator's kernel (pass e.g. gaussian_blur with a guess of the width); the estimate
comes back in extras["kernel"] (B, S, kh, kw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.operators.blur import Blur, kernel_spectrum
from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.tensor_utils import randn_stacked

from .base import NonFiniteGuard, Sampler, register_sampler
from .ddrm import SpectralPosterior, ddrm_timesteps, sigma_of, spectral_noise

REFERENCE_PIXELS = 3 * 256 * 256


@dataclass(frozen=True)
class GibbsDDRMConfig:
    """GibbsDDRM settings (reference `configs/ffhq_256_deblur.yml`).

    steps: 100 DDRM steps (skip 10 of T = 1000).
    eta: eta_C = eta_D = 0.8 (observed-residual weight and unobserved noise share); eta_b: eta_B = 0.9 (eta_A = 0).
    kernel_update_start: kernel updates for t <= 0.7 T (`Hupdate_start`).
    kernel_updates: 3 rounds per step (`iter_Hupdate`, with `resample_after_Hupdate`).
    langevin_iters: 500 Langevin iterations per round (`iter_optim`).
    langevin_step: delta as a fraction of 1 / L (see the module docstring).
    l1_weight: gamma = 1000 for 3 x 256 x 256 images (Laplace kernel prior), scaled by the pixel count.
    kernel_sigma: sigma_k of the kernel likelihood; None uses the operator's noise_sigma (reference: 0.04 on [-1, 1]).
    kernel_likelihood: "pixel" (default) is the paper's ||y - k * x0_hat||^2. "gradient" compares image
        gradients instead (the classical blind-deblurring trick of Cho & Lee 2009 / Levin et al. 2011): natural
        images put most energy at low frequencies, which makes pixel-domain Langevin ill-conditioned. Measured
        with the true image as x0_hat on a 64x64 Kodak crop, 9x9 motion kernel: kernel L2 error 0.164 ->
        0.148 (pixel) vs 0.031 (gradient) after 100 iterations; inside the sampler it only helps once x0_hat
        is good, so it is not the default.
    """

    steps: int = 100
    eta: float = 0.8
    eta_b: float = 0.9
    kernel_update_start: float = 0.7
    kernel_updates: int = 3
    langevin_iters: int = 500
    langevin_step: float = 0.5
    l1_weight: float = 1000.0
    kernel_sigma: float | None = None
    kernel_likelihood: str = "pixel"

    def __post_init__(self):
        if self.steps < 1 or self.kernel_updates < 0 or self.langevin_iters < 0:
            raise ValueError("steps must be >= 1 and kernel_updates, langevin_iters >= 0")
        if not (0 <= self.eta <= 1 and 0 <= self.eta_b <= 1 and 0 <= self.kernel_update_start <= 1):
            raise ValueError("eta, eta_b and kernel_update_start must be in [0, 1]")
        if self.kernel_likelihood not in KERNEL_LIKELIHOODS:
            raise ValueError(f"kernel_likelihood must be one of {', '.join(KERNEL_LIKELIHOODS)}")
        if self.langevin_step <= 0 or self.l1_weight < 0:
            raise ValueError("langevin_step must be > 0 and l1_weight >= 0")


KERNEL_LIKELIHOODS = ("gradient", "pixel")


def image_gradients(v: torch.Tensor) -> torch.Tensor:
    """Circular horizontal and vertical differences, stacked on the channel axis: (n, C, H, W) -> (n, 2C, H, W).
    Blur commutes with them, so d * y = k * (d * x) + d * n, with noise std sqrt(2) sigma."""
    return torch.cat([v - v.roll(1, -1), v - v.roll(1, -2)], 1)


def langevin_kernel_update(
    kernel: torch.Tensor,
    x0: torch.Tensor,
    y: torch.Tensor,
    sigma_k: float,
    l1_weight: float,
    iters: int,
    step_fraction: float,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Langevin dynamics on per-chain kernels (n, kh, kw) given x0_hat (n, C, H, W) and circularly blurred y
    (pass `image_gradients` of both, and sigma_k * sqrt(2), for the gradient-domain likelihood)."""
    h, w = x0.shape[-2:]
    x_spec = torch.fft.fft2(x0)
    # The kernel keeps its sum (gradient and noise are projected to zero-sum), so the step is set by the largest
    # non-DC frequency: natural images put most energy at DC, which would otherwise make delta needlessly small.
    power = x_spec.abs().square().sum(1)
    power[:, 0, 0] = 0
    delta = (step_fraction * sigma_k**2 / power.amax(dim=(-2, -1))).view(-1, 1, 1)
    k = kernel.clone()
    for _ in range(iters):
        with torch.enable_grad():
            k_req = k.detach().requires_grad_(True)
            y_hat = torch.fft.ifft2(kernel_spectrum(k_req, h, w) * x_spec).real
            data = (y - y_hat).square().flatten(1).sum(1) / (2 * sigma_k**2)
            energy = data + l1_weight * k_req.abs().flatten(1).sum(1)
            (grad,) = torch.autograd.grad(energy.sum(), k_req)
        xi = randn_stacked(generators, k.shape[1:], k.device)
        step = -delta / 2 * grad + delta.sqrt() * xi
        k = k + step - step.mean(dim=(-2, -1), keepdim=True)
    return k / k.sum(dim=(-2, -1), keepdim=True)


@register_sampler("gibbs_ddrm")
class GibbsDDRM(Sampler):
    """GibbsDDRM blind deblurring: a blur operator (any kernel as the initial guess), Gaussian noise, pixel prior."""

    Config = GibbsDDRMConfig
    PRESETS: ClassVar[dict[str, dict]] = {
        "ffhq": {},  # configs/ffhq_256_deblur.yml
        "afhq": {"langevin_step": 1.0},  # configs/afhq_256_deblur.yml: lr_Hupdate twice FFHQ's
    }
    needs_operator = "linear"
    blind = True

    def _update_steps(self, num_timesteps: int) -> list[bool]:
        pairs = ddrm_timesteps(num_timesteps, self.config.steps)
        start = self.config.kernel_update_start * num_timesteps
        return [t <= start and t_next >= 0 for t, t_next in pairs]

    def nfe(self, prior) -> int:
        return self.config.steps + self.config.kernel_updates * sum(self._update_steps(prior.num_timesteps))

    def check(self, prior, op):
        super().check(prior, op)
        if not isinstance(op, Blur):
            raise ValueError(
                f"{self.name} is blind deblurring and needs a blur operator (blur, gaussian_blur, motion_blur, "
                f"uniform_blur), got '{op.name}'"
            )
        if not isinstance(op.noise, GaussianNoise) or op.noise.sigma <= 0:
            raise ValueError(f"{self.name} needs Gaussian measurement noise with noise_sigma > 0")

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        n = y.shape[0]
        sigma_y = op.noise.sigma
        sigma_k = cfg.kernel_sigma or sigma_y
        l1_weight = cfg.l1_weight * (image_shape[0] * image_shape[1] * image_shape[2]) / REFERENCE_PIXELS
        kernel = op.kernel.to(device, torch.float32).expand(n, *op.kernel.shape[-2:]).clone()
        blur = Blur(kernel, boundary="circular").to(device)
        spec = SpectralPosterior(blur, y, image_shape, sigma_y)
        pairs = ddrm_timesteps(prior.num_timesteps, cfg.steps)
        updates = self._update_steps(prior.num_timesteps)
        alpha_bar = [*prior.alphas_cumprod.double().cpu().tolist(), 1.0]
        guard = NonFiniteGuard(device)

        def likelihood(x0):
            if cfg.kernel_likelihood == "gradient":
                return image_gradients(x0), y_gradients, sigma_k * 2**0.5
            return x0, y, sigma_k

        y_gradients = image_gradients(y)

        def ddrm_update(blur, spec, pred, sigma_next):
            z = spectral_noise(blur, generators, image_shape, device)
            return spec.step(blur.V_t(pred.x0_hat), blur.V_t(pred.eps), z, sigma_next, cfg.eta, cfg.eta, cfg.eta_b)

        with torch.no_grad():
            t_first = pairs[0][0]
            c = spec.init(spectral_noise(blur, generators, image_shape, device), sigma_of(alpha_bar[t_first]))
            x_t = alpha_bar[t_first] ** 0.5 * blur.V(c)
            for i, ((t, t_next), update) in enumerate(zip(pairs, updates, strict=True)):
                pred = prior.predict(x_t, t)
                x_next = alpha_bar[t_next] ** 0.5 * blur.V(ddrm_update(blur, spec, pred, sigma_of(alpha_bar[t_next])))
                for _ in range(cfg.kernel_updates if update else 0):
                    x0_next = prior.predict(x_next, t_next).x0_hat
                    kernel = langevin_kernel_update(
                        kernel, *likelihood(x0_next), l1_weight, cfg.langevin_iters, cfg.langevin_step, generators
                    )
                    blur = Blur(kernel, boundary="circular").to(device)
                    spec = SpectralPosterior(blur, y, image_shape, sigma_y)
                    c = ddrm_update(blur, spec, pred, sigma_of(alpha_bar[t_next]))
                    x_next = alpha_bar[t_next] ** 0.5 * blur.V(c)
                x_t = x_next
                guard.update(i, x_t)
                nfe = 1 + (cfg.kernel_updates if update else 0)
                step_hook({"i": i, "t": t, "x": x_t, "x0_hat": pred.x0_hat, "kernel": kernel, "nfe": nfe})
        guard.check()
        return x_t, {"kernel": kernel}
