"""DDNM / DDNM+: Denoising Diffusion Null-Space Model (Wang, Yu, Zhang; ICLR 2023; arXiv:2212.00490), Algorithm 1
(DDNM), Eq. (17)-(19) (DDNM+, noisy y) and Sec. 3.3 (time travel).

A DDIM-like sampler over a uniformly skipped grid whose Tweedie estimate is corrected by range/null-space
decomposition before every step, with no gradients:

    x0_hat   = E[x0 | x_t]                                    (the network, Eq. 12)
    x0_corr  = x0_hat - Sigma_t A^+ (A x0_hat - y)            (Eq. 17; DDNM: Sigma_t = I, i.e.
                                                               A^+ y + (I - A^+ A) x0_hat, Eq. 13)
    x_{t-1}  = sqrt(alpha_bar_{t-1}) x0_corr + noise with covariance Phi_t   (Eq. 18, as a DDIM step)

A^+ is exact through the operator's SVD A = U diag(s) V^T, so everything is one coordinate of V^T x at a time
(`spectral.SpectralPosterior`): the correction is lambda_i (c0_i - y_bar_i) on observed coordinates (y_bar = U^T y
/ s), nothing on unobserved ones. With a = sqrt(alpha_bar_{t-1}) and sigma_t = sqrt(1 - alpha_bar_{t-1}) (the
noise std of x_{t-1}), the reference code (wyhuai/DDNM, `functions/svd_operators.py` `Lambda`, `Lambda_noise`,
`functions/svd_ddnm.py` `ddnm_plus_diffusion`) takes, per coordinate,

    s_i = 0 (null space):        lambda = -, noise sigma_t eta z + sigma_t sqrt(1 - eta^2) eps_hat   (DDIM)
    s_i sigma_t >= a sigma_y:     lambda = 1, noise sqrt(sigma_t^2 - (a sigma_y / s_i)^2) z
    s_i sigma_t <  a sigma_y:     lambda = s_i sigma_t sqrt(1 - eta^2) / (a sigma_y), noise sigma_t eta z

so that the noise y brings in through the correction (a lambda sigma_y / s_i) plus the fresh noise is exactly
sigma_t on every coordinate. Divided by a, this table is DDRM's Eq. 8 coordinate by coordinate (DDRM's sigma =
sigma_t / a, eta_data = sqrt(1 - eta^2), eta_b = 1), so the step reuses `SpectralPosterior.step`; DDNM+ and DDRM
with eta 0.85, eta_b 1 differ only in x_T (DDRM draws it from q(x_T | y)) and by time travel. With sigma_y = 0 the
reference skips the table (lambda = 1 and DDIM noise on every coordinate): that is DDNM, Eq. 13, which keeps
DDIM's eps_hat on the observed coordinates where DDRM would draw fresh noise. DDNM and DDNM+ are therefore one
sampler here, as in the reference, which runs DDNM+ whenever sigma_y > 0 (`plus=False` forces the noise-free
projection on noisy data: the paper's ablation, which copies the noise of y into the result).

Time travel (Sec. 3.3; RePaint's jump schedule, the reference's `get_schedule_jump`): every `travel_length` steps
of the grid the chain goes back `travel_length` steps, x_{t+l} = sqrt(alpha_bar_{t+l}) x0_hat + sqrt(1 -
alpha_bar_{t+l}) z with the last step's uncorrected x0_hat (as the reference), and denoises them again,
`travel_repeat` - 1 times. The reference configs (`time_travel: T_sampling 100, travel_length 1, travel_repeat
1`) turn it off; it costs (travel_repeat - 1) * travel_length extra network evaluations per jump.

DDNM is a projection method, not a posterior sampler: without noise every sample satisfies A x = y exactly and
the spread comes from the null space only; with noise DDNM+ keeps the measured coordinates near y_bar, so its
spread there is not the posterior's (assets/bench/exact_posteriors/README.md).

Departures from the reference code:
- Only operators with an SVD (exact A^+ and the per-singular-value Sigma_t, Phi_t); the reference's simplified
  DDNM (closed-form A^+ for masks, average pooling, colorisation) is the same computation for the operators of
  that kind here (inpainting, average-pool SR, denoising all have an SVD).
- At the tie s_i sigma_t = a sigma_y exactly (a set of measure zero) the reference's `Lambda` / `Lambda_noise`
  keep lambda = 1 with DDIM noise; DDRM's step, reused here, makes no correction there (also with DDIM noise).
- A jump back of l steps is drawn at once (the reference steps back one index at a time, each time redrawing from
  the same x0_hat, so only the last draw counts: the same distribution).
- The first state is x_T ~ N(0, I) as the reference; noise is drawn per chain from its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Sampler, register_sampler
from .schedule import host_alpha_bars
from .spectral import SpectralPosterior, spectral_noise


@dataclass(frozen=True)
class DDNMConfig:
    """DDNM / DDNM+ settings (reference repository wyhuai/DDNM: README, `configs/*.yml`, `evaluation.sh`).

    steps: T_sampling = 100 denoising steps on the grid range(0, T, T // steps) (README `time_travel.T_sampling`).
    eta: 0.85, the share of fresh noise in the DDIM step (`evaluation.sh --eta 0.85`, every task).
    travel_length: l = s = 1, the time-travel jump length and interval (README `time_travel.travel_length`: 1).
    travel_repeat: r = 1, how often each segment is travelled (README `time_travel.travel_repeat`: 1, i.e. off).
    plus: True: DDNM+ (Sigma_t, Phi_t of Eq. 17-19) when sigma_y > 0, as the reference; False: the noise-free
        DDNM projection whatever sigma_y (ablation).
    """

    steps: int = 100
    eta: float = 0.85
    travel_length: int = 1
    travel_repeat: int = 1
    plus: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.travel_length < 1 or self.travel_repeat < 1:
            raise ValueError(
                f"travel_length and travel_repeat must be >= 1, got {self.travel_length}, {self.travel_repeat}"
            )
        if self.travel_repeat > 1 and self.travel_length >= self.steps:
            raise ValueError(f"travel_length must be < steps ({self.steps}) to travel, got {self.travel_length}")


def travel_schedule(steps: int, length: int, repeat: int) -> list[tuple[int, int]]:
    """(i, j) pairs of grid indices in visiting order: j = i - 1 is a denoising step (j = -1: x_0), j = i + length a
    jump back. After the step into index k (k a multiple of `length` below steps - length) the chain jumps back to
    k + length, `repeat` - 1 times in all (RePaint's schedule, Lugmayr et al. 2022, as DDNM's `get_schedule_jump`).
    """
    jumps_left = {k: repeat - 1 for k in range(0, steps - length, length)}
    pairs, i = [], steps - 1
    while i >= 0:
        pairs.append((i, i - 1))
        i -= 1
        if jumps_left.get(i, 0) > 0:
            jumps_left[i] -= 1
            pairs.append((i, i + length))
            i += length
    return pairs


@register_sampler("ddnm")
class DDNM(Sampler):
    """DDNM (sigma_y = 0) / DDNM+ (sigma_y > 0) for linear operators with an SVD and Gaussian noise; one network
    forward per step, no gradients; time travel optional."""

    Config = DDNMConfig
    # the reference's tasks (`evaluation.sh --deg`): every one runs with eta 0.85 and 100 steps, no time travel
    PRESETS: ClassVar[dict[str, dict]] = {
        "sr_averagepooling": {},
        "sr_bicubic": {},
        "deblur_gauss": {},
        "inpainting": {},
        "denoising": {},
    }
    needs_operator = "svd"
    needs_gaussian_noise = True
    SMOKE_OPTIONS: ClassVar[dict] = {"steps": 4, "travel_length": 1, "travel_repeat": 2}
    EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 100}

    def nfe(self, prior) -> int:
        cfg = self.config
        return sum(j < i for i, j in travel_schedule(cfg.steps, cfg.travel_length, cfg.travel_repeat))

    @torch.inference_mode()
    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
        cfg = self.config
        device = prior.device
        svd = op.svd()
        sigma_y = op.noise.sigma if cfg.plus else 0.0
        spec = SpectralPosterior(svd, y, image_shape, sigma_y)
        skip = prior.num_timesteps // cfg.steps
        alpha_bar = host_alpha_bars(prior.alphas_cumprod)  # index -1 -> alpha_bar = 1
        x_t = svd.V(spectral_noise(svd, generators, image_shape, device))  # x_T ~ N(0, I)
        x0_hat = None
        for k, (i, j) in enumerate(travel_schedule(cfg.steps, cfg.travel_length, cfg.travel_repeat)):
            t, t_next = i * skip, max(j * skip, -1)
            a_next = alpha_bar[t_next]
            if j > i:  # time travel: back to t_next from the last x0_hat (Sec. 3.3)
                z = spectral_noise(svd, generators, image_shape, device)
                x_t = a_next**0.5 * x0_hat + (1 - a_next) ** 0.5 * svd.V(z)
                step_hook({"i": k, "t": t_next, "x": x_t, "x0_hat": x0_hat, "nfe": 0})
                continue
            pred = prior.predict(x_t, t)
            x0_hat = pred.x0_hat
            z = spectral_noise(svd, generators, image_shape, device)
            c = self._step(spec, svd.V_t(x0_hat), svd.V_t(pred.eps), z, a_next**0.5, (1 - a_next) ** 0.5)
            x_t = svd.V(c)
            step_hook({"i": k, "t": t, "x": x_t, "x0_hat": x0_hat})
        return x_t, {}

    def _step(self, spec: SpectralPosterior, c0, c_eps, z, a: float, sigma_t: float) -> torch.Tensor:
        """V^T x_{t-1} from V^T x0_hat, V^T eps_hat and white spectral noise z (Eq. 17-19 as the reference: module
        docstring); a = sqrt(alpha_bar_{t-1}), sigma_t = sqrt(1 - alpha_bar_{t-1})."""
        eta = self.config.eta
        if spec.sigma_y > 0:
            # DDNM+: the reference's table (module docstring), divided by a, is DDRM's Eq. 8 coordinate by
            # coordinate with DDRM's sigma = sigma_t / a, eta_data = sqrt(1 - eta^2) and eta_b = 1
            return a * spec.step(c0, c_eps, z, sigma_t / a, eta, (1 - eta**2) ** 0.5, 1.0)
        # DDNM (Eq. 13): x0_hat - A^+ (A x0_hat - y), i.e. y_bar on observed coordinates; DDIM noise everywhere
        corrected = torch.where(spec.observed, spec.y_bar, c0)
        return a * corrected + sigma_t * eta * z + sigma_t * (1 - eta**2) ** 0.5 * c_eps
