"""GibbsDDRM: blind deblurring by partially collapsed Gibbs sampling (Murata, Saito, Lai, Takida, Uesaka, Mitsufuji,
Ermon; ICML 2023; arXiv:2301.12686), Algorithm 1.

The joint p(x, k, y) is sampled by alternating
  (i)  a DDRM step for x_{t-1} given (x_t, k, y), in the FFT basis of the circular blur with kernel k;
  (ii) for t <= kernel_update_start * T, `kernel_updates` rounds of: x0_hat of the fresh x_{t-1} (one NFE),
       Langevin dynamics on the kernel for U(k) = ||y - k * x0_hat||^2 / (2 sigma_k^2) + gamma ||k||_1,
       renormalisation k <- k / sum(k), then x_{t-1} redrawn from x_t with the new kernel
(reference code sony/gibbsddrm, `functions/denoising.py` and `svd_replacement.py` `update_H_langevin`).

Departures, each measured on natural images with the built-in prior (assets/bench/blind_deblur/README.md):
- The blur is circular (the reference embeds the "same" blur in a larger FFT canvas, `same_interp`).
- The Langevin dynamics are preconditioned by the inverse Hessian of the data term (exact: U is quadratic in k
  up to the L1 term), k <- k - (delta / 2) M grad U + sqrt(delta) M^(1/2) xi with M = (H / sigma_k^2)^-1. Same
  target distribution; it mixes in tens of iterations at any image size, where the reference's plain Langevin
  (delta = 1e-11, tuned to 256 x 256 images) only moves the kernel along the image's dominant frequencies.
- `nonnegative` (default on) projects each Langevin iterate onto k >= 0 (projected Langevin, Bubeck, Eldan and
  Lehec 2018): a blur kernel is a non-negative PSF, and without the constraint the directions the image does not
  determine fill the kernel with noise.
- `sweeps` > 1 repeats the whole DDRM trajectory from x_T with the kernel estimate of the previous sweep (an
  outer Gibbs sweep over (x, k)), and `model_sigma` adds, in quadrature, the error of a wrong kernel to the noise
  level the DDRM steps assume. Without them, DDRM with a wrong kernel deconvolves y with it (eta_b of y / s on
  every coordinate with s sigma_t > sigma_y), x0_hat then explains y with that kernel, and the kernel
  conditional stays at the initial guess. Both default to the paper (1 and 0); the `natural` preset sets them.
The initial kernel is the operator's kernel (pass e.g. gaussian_blur with a guess of the width); the estimate
comes back in extras["kernel"] (B, S, kh, kw).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from posterior_diffusion.operators.blur import Blur
from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.tensor_utils import make_generators, randn_stacked

from .base import Sampler, register_sampler
from .schedule import ddrm_timesteps, host_alpha_bars, sigma_of
from .spectral import SpectralPosterior, spectral_noise

REFERENCE_PIXELS = 3 * 256 * 256


@dataclass(frozen=True)
class GibbsDDRMConfig:
    """GibbsDDRM settings (reference `configs/ffhq_256_deblur.yml` unless marked as ours).

    steps: 100 DDRM steps (skip 10 of T = 1000).
    eta: eta_C = eta_D = 0.8 (observed-residual weight and unobserved noise share); eta_b: eta_B = 0.9 (eta_A = 0).
    kernel_update_start: kernel updates for t <= 0.7 T (`Hupdate_start`).
    kernel_updates: 3 rounds per step (`iter_Hupdate`, with `resample_after_Hupdate`).
    langevin_iters: 50 Langevin iterations per round (ours; the reference's `iter_optim` = 500 is for plain
        Langevin: the preconditioned chain contracts by 1 - langevin_step / 2 per iteration, 6e-7 after 50).
    langevin_step: delta of the preconditioned Langevin dynamics (ours; see the module docstring).
    l1_weight: gamma = 1000 for 3 x 256 x 256 images (Laplace kernel prior), scaled by the pixel count.
    kernel_sigma: sigma_k of the kernel likelihood; None uses the operator's noise_sigma (reference: 0.04 on [-1, 1]).
    kernel_damping: Tikhonov term added to the kernel Hessian, as a fraction of its mean diagonal (ours): a weak
        Gaussian prior on the directions x0_hat does not determine.
    nonnegative: project the kernel onto k >= 0 (ours; the reference only renormalises).
    sweeps: whole DDRM trajectories, each starting from the previous sweep's kernel (ours; 1 = the paper).
    model_sigma: std added in quadrature to sigma_y in the DDRM steps (ours; 0 = the paper).
    """

    steps: int = 100
    eta: float = 0.8
    eta_b: float = 0.9
    kernel_update_start: float = 0.7
    kernel_updates: int = 3
    langevin_iters: int = 50
    langevin_step: float = 0.5
    l1_weight: float = 1000.0
    kernel_sigma: float | None = None
    kernel_damping: float = 1e-2
    nonnegative: bool = True
    sweeps: int = 1
    model_sigma: float = 0.0

    def __post_init__(self):
        if self.steps < 1 or self.sweeps < 1 or self.kernel_updates < 0 or self.langevin_iters < 0:
            raise ValueError("steps and sweeps must be >= 1 and kernel_updates, langevin_iters >= 0")
        if not (0 <= self.eta <= 1 and 0 <= self.eta_b <= 1 and 0 <= self.kernel_update_start <= 1):
            raise ValueError("eta, eta_b and kernel_update_start must be in [0, 1]")
        if not (0 < self.langevin_step <= 1):
            raise ValueError(f"langevin_step must be in (0, 1], got {self.langevin_step}")
        if self.l1_weight < 0 or self.kernel_damping <= 0 or self.model_sigma < 0:
            raise ValueError("l1_weight and model_sigma must be >= 0 and kernel_damping > 0")


@functools.lru_cache(maxsize=16)
def _system_indices(kh: int, kw: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Indices (K + 2, K + 2), K = kh * kw, into [autocorrelation (h * w), cross-correlation (h * w), 1, 0] that lay
    out `kernel_normal_equations`' bordered matrix; tap (i, j) sits at offset ((kh - 1) // 2 - i, (kw - 1) // 2 - j)
    of the h x w correlations (`kernel_spectrum`'s layout)."""
    i = torch.arange(kh, device=device).repeat_interleave(kw)
    j = torch.arange(kw, device=device).repeat(kh)
    taps, one, zero = kh * kw, 2 * h * w, 2 * h * w + 1
    index = torch.full((taps + 2, taps + 2), zero, device=device)
    index[:taps, :taps] = ((i[:, None] - i[None]) % h) * w + (j[:, None] - j[None]) % w  # tap differences
    index[:taps, taps] = index[taps, :taps] = h * w + (((kh - 1) // 2 - i) % h) * w + ((kw - 1) // 2 - j) % w
    index[:taps, taps + 1] = index[taps + 1, :taps] = one
    return index


def kernel_normal_equations(x0: torch.Tensor, y: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The normal equations of the circular blur y = A k = k * x0 of x0 (n, C, H, W) in the kernel k (K = kh * kw
    taps), bordered by the two right-hand sides the kernel update needs: (n, K + 2, K + 2) float64 matrices
    [[A^T A, A^T y, 1], [(A^T y)^T, 0, 0], [1^T, 0, 0]].

    Column (i, j) of A is x0 rolled by the offset of kernel tap (i, j) (`kernel_spectrum`'s layout), so A^T A is
    the circular autocorrelation of x0 at the differences of tap offsets and A^T y the cross-correlation of y and
    x0 at the tap offsets; both come from FFTs and are laid out by one gather.
    """
    h, w = x0.shape[-2:]
    x_spec = torch.fft.rfft2(x0.double())
    autocorr = torch.fft.irfft2(x_spec.abs().square().sum(1), s=(h, w))
    crosscorr = torch.fft.irfft2((torch.fft.rfft2(y.double()) * x_spec.conj()).sum(1), s=(h, w))
    constants = autocorr.new_tensor([1.0, 0.0]).expand(len(autocorr), 2)
    source = torch.cat([autocorr.flatten(1), crosscorr.flatten(1), constants], 1)
    return source[:, _system_indices(kh, kw, h, w, x0.device)]


def cholesky_factors(matrices: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors (n, K, K) of symmetric positive definite matrices (n, K, K), with no host sync
    (cholesky_ex does not check the factorisation: the damping keeps the matrices positive definite, and a failed
    factor would surface as NaN in the chain, which the sampler's guard names).

    On CUDA one call per matrix, which is faster there than torch's batched path; on CPUs the batched call is the
    faster (`bench speed`, assets/bench/speed/README.md).
    """
    if matrices.device.type != "cuda":
        return torch.linalg.cholesky_ex(matrices).L
    return torch.stack([torch.linalg.cholesky_ex(matrix).L for matrix in matrices])


def kernel_gaussian(
    x0: torch.Tensor, y: torch.Tensor, kh: int, kw: int, damping: float, generators: list[torch.Generator], draws: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gaussian part of the kernel conditional, with G = A^T A + d I (d = `damping` times the mean of
    diag(A^T A); `kernel_normal_equations`' A): its mean G^-1 A^T y (n, K, 1), G^-1 1 (n, K, 1), `draws` columns
    L^-T xi of covariance G^-1 (n, K, draws), and G's Cholesky factor L (n, K, K).

    One factorisation and one triangular solve: the Cholesky factor of the bordered [[G, B], [B^T, D]] is
    [[L, 0], [(L^-1 B)^T, *]], so it brings L^-1 B for B = [A^T y, 1] without a solve (a triangular solve costs
    about half a factorisation on a GPU, whatever the number of right-hand sides).
    D = B^T B / d + I keeps the bordered matrix positive definite (B^T G^-1 B <= B^T B / d since G >= d I).
    """
    system = kernel_normal_equations(x0, y, kh, kw)
    taps = kh * kw
    gram_diagonal = system.diagonal(dim1=1, dim2=2)[:, :taps]
    d = damping * gram_diagonal.mean(-1, keepdim=True)
    gram_diagonal.add_(d)
    border = system[:, :taps, taps:]
    system[:, taps:, taps:] = border.mT @ border / d[..., None] + torch.eye(2, dtype=system.dtype, device=x0.device)
    chol = cholesky_factors(system)
    factor, border_solved = chol[:, :taps, :taps], chol[:, taps:, :taps].mT  # L and L^-1 B
    xi = randn_stacked(generators, (taps, draws), x0.device, torch.float64)
    solved = torch.linalg.solve_triangular(factor.mT, torch.cat([border_solved, xi], -1), upper=True)
    mean, g_ones, noise = solved.split([1, 1, draws], -1)
    return mean, g_ones, noise, factor


def langevin_kernel_update(
    kernel: torch.Tensor,
    x0: torch.Tensor,
    y: torch.Tensor,
    config: GibbsDDRMConfig,
    sigma_k: float,
    l1_weight: float,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """`config.langevin_iters` preconditioned Langevin iterations on per-chain kernels (n, kh, kw) given x0_hat
    (n, C, H, W) and the circularly blurred y; returns kernels that sum to 1 (non-negative if configured)."""
    n, kh, kw = kernel.shape
    iters = config.langevin_iters
    # U's quadratic part has precision P = G / sigma_k^2 (G = A^T A + d I) and minimiser G^-1 A^T y; the
    # preconditioner is M = P^-1 = sigma_k^2 G^-1, whose square root sigma_k L^-T turns xi into the chain's noise.
    mean, g_ones, noise, factor = kernel_gaussian(x0, y, kh, kw, config.kernel_damping, generators, iters)
    # M grad U = k - mean + gamma M sign(k). On k >= 0 the L1 term is the linear gamma 1^T k, so with the projection
    # its preconditioned gradient is the constant gamma M 1.
    cov = None if config.nonnegative else sigma_k**2 * torch.cholesky_inverse(factor)
    if config.nonnegative:
        mean = mean - l1_weight * sigma_k**2 * g_ones
    # k <- (1 - delta / 2) k + [delta / 2 mean + sqrt(delta) noise_i] (- delta / 2 gamma M sign(k)), the bracket
    # precomputed for all iterations
    delta = config.langevin_step
    offsets = delta / 2 * mean + delta**0.5 * sigma_k * noise
    k = kernel.reshape(n, -1, 1).double()
    for i in range(iters):
        step = offsets[..., i : i + 1]
        if cov is not None and l1_weight:
            step = torch.baddbmm(step, cov, k.sign(), alpha=-delta / 2 * l1_weight)
        k = step.add_(k, alpha=1 - delta / 2)
        if config.nonnegative:
            k.clamp_(min=0)
    k = k.reshape(n, kh, kw).to(kernel.dtype)
    return k / k.sum(dim=(-2, -1), keepdim=True)


@register_sampler("gibbs_ddrm")
class GibbsDDRM(Sampler):
    """GibbsDDRM blind deblurring: a blur operator (any kernel as the initial guess), Gaussian noise, pixel prior."""

    Config = GibbsDDRMConfig
    PRESETS: ClassVar[dict[str, dict]] = {
        "ffhq": {},  # configs/ffhq_256_deblur.yml
        "afhq": {"langevin_step": 1.0},  # configs/afhq_256_deblur.yml: lr_Hupdate twice FFHQ's
        # Ours, for the small built-in natural-image priors (chosen on McMaster crops;
        # assets/bench/blind_deblur/README.md): 5 sweeps of 20 DDRM steps, one kernel update at the end of each (from
        # the t = 0 prediction).
        "natural": {
            "steps": 20,
            "sweeps": 5,
            "kernel_update_start": 0.05,
            "kernel_updates": 1,
            "model_sigma": 0.1,
        },
    }
    needs_operator = "linear"
    blind = True
    SMOKE_OPTIONS: ClassVar[dict] = {
        "steps": 2,
        "sweeps": 2,
        "model_sigma": 0.1,
        "kernel_update_start": 1.0,
        "kernel_updates": 1,
        "langevin_iters": 2,
    }
    EXACT_OPTIONS: ClassVar[dict | None] = None  # blind: the exact posteriors are for a known operator

    def _update_steps(self, num_timesteps: int) -> list[bool]:
        pairs = ddrm_timesteps(num_timesteps, self.config.steps)
        start = self.config.kernel_update_start * num_timesteps
        return [t <= start and t_next >= 0 for t, t_next in pairs]

    def kernel_draws(self, prior) -> int:
        """Kernel-conditional draws per chain in one run (each after one extra network evaluation)."""
        return self.config.sweeps * self.config.kernel_updates * sum(self._update_steps(prior.num_timesteps))

    def nfe(self, prior) -> int:
        return self.config.sweeps * self.config.steps + self.kernel_draws(prior)

    @staticmethod
    def initial_kernels(op, n: int, device) -> torch.Tensor:
        """The operator's kernel, the chains' initial guess: (n, kh, kw) float32 on `device`, one copy per chain."""
        return op.kernel.to(device, torch.float32).expand(n, *op.kernel.shape[-2:]).clone()

    def own_work(self, prior, op, y, x0):
        """The kernel-conditional draws of one run, each a bare `kernel_update` from op's kernel."""
        kernel = self.initial_kernels(op, len(x0), x0.device)
        generators = make_generators(range(len(x0)), x0.device)

        def draw(v: torch.Tensor) -> torch.Tensor:
            return self.kernel_update(kernel, v, y, op.noise.sigma, generators)

        return draw, self.kernel_draws(prior), "kernel conditional"

    def kernel_update(self, kernel, x0, y, sigma_y, generators):
        """One draw from the kernel conditional (`langevin_kernel_update`) for kernels (n, kh, kw) given x0_hat
        (n, C, H, W), y and the measurement noise sigma_y, with this config's sigma_k and pixel-scaled gamma."""
        cfg = self.config
        l1_weight = cfg.l1_weight * x0[0].numel() / REFERENCE_PIXELS
        return langevin_kernel_update(kernel, x0, y, cfg, cfg.kernel_sigma or sigma_y, l1_weight, generators)

    def check(self, prior, op):
        super().check(prior, op)
        if not isinstance(op, Blur):
            raise ValueError(
                f"{self.name} is blind deblurring and needs a blur operator (blur, gaussian_blur, motion_blur, "
                f"uniform_blur), got '{op.name}'"
            )
        if not isinstance(op.noise, GaussianNoise) or op.noise.sigma <= 0:
            raise ValueError(f"{self.name} needs Gaussian measurement noise with noise_sigma > 0")

    @torch.no_grad()  # not inference_mode: Blur caches its spectrum by the kernel's version counter
    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        kernel = self.initial_kernels(op, y.shape[0], prior.device)
        for sweep in range(self.config.sweeps):
            x, kernel = self._sweep(prior, op.noise.sigma, y, image_shape, kernel, generators, step_hook, sweep)
        return x, {"kernel": kernel}

    def _sweep(self, prior, sigma_y, y, image_shape, kernel, generators, step_hook, sweep):
        """One DDRM trajectory from x_T with kernel updates; returns (x_0, kernel)."""
        cfg = self.config
        device = prior.device
        sigma_ddrm = (sigma_y**2 + cfg.model_sigma**2) ** 0.5
        pairs = ddrm_timesteps(prior.num_timesteps, cfg.steps)
        updates = self._update_steps(prior.num_timesteps)
        alpha_bar = host_alpha_bars(prior.alphas_cumprod)  # index -1 -> alpha_bar = 1

        def ddrm_update(blur, spec, pred, sigma_next):
            z = spectral_noise(blur, generators, image_shape, device)
            return spec.step(blur.V_t(pred.x0_hat), blur.V_t(pred.eps), z, sigma_next, cfg.eta, cfg.eta, cfg.eta_b)

        blur = Blur(kernel.clone(), boundary="circular").to(device)  # its own kernel buffer: updated in place below
        spec = SpectralPosterior(blur, y, image_shape, sigma_ddrm)
        t_first = pairs[0][0]
        c = spec.init(spectral_noise(blur, generators, image_shape, device), sigma_of(alpha_bar[t_first]))
        x_t = alpha_bar[t_first] ** 0.5 * blur.V(c)
        for i, ((t, t_next), update) in enumerate(zip(pairs, updates, strict=True)):
            with torch.inference_mode():  # the network only (the operator's spectrum cache needs version counters)
                pred = prior.predict(x_t, t)
            x_next = alpha_bar[t_next] ** 0.5 * blur.V(ddrm_update(blur, spec, pred, sigma_of(alpha_bar[t_next])))
            for _ in range(cfg.kernel_updates if update else 0):
                with torch.inference_mode():
                    x0_next = prior.predict(x_next, t_next).x0_hat
                kernel = self.kernel_update(kernel, x0_next, y, sigma_y, generators)
                blur.kernel.copy_(kernel)  # in place (the spectrum cache follows): no new operator, no host sync
                spec = SpectralPosterior(blur, y, image_shape, sigma_ddrm)
                c = ddrm_update(blur, spec, pred, sigma_of(alpha_bar[t_next]))
                x_next = alpha_bar[t_next] ** 0.5 * blur.V(c)
            x_t = x_next
            nfe = 1 + (cfg.kernel_updates if update else 0)
            step = sweep * len(pairs) + i
            step_hook({"i": step, "t": t, "x": x_t, "x0_hat": pred.x0_hat, "kernel": kernel, "nfe": nfe})
        return x_t, kernel
