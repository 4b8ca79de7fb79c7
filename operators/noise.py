"""Noise models y = A(x) + n, kept apart from the operators (DeepInverse's idea): the operator is noiseless.

Each model draws noise (`sample`) and gives the per-sample residual norm that DPS guides with
(`residual_norm`) and the negative log-likelihood (`neg_log_likelihood`), all in float32. A registered model
declares its user-facing parameters in `params` (e.g. noise_sigma -> sigma), so `make_noise` and
`get_operator(..., noise=name, **those)` build it without knowing it.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from posterior_diffusion.registry import Registry
from posterior_diffusion.tensor_utils import autograd_gradient, per_sample_norm

from .params import check_params

NOISE_MODELS = Registry("noise model")


class NoiseModel:
    """Base class: `sample(y_clean, generator)` -> noisy y of the same shape."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, str]] = {}  # user-facing parameter (get_operator, to_config) -> constructor argument

    def sample(self, y_clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def residual_norm(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """Per-sample data-fidelity norm used by DPS: (B, ...) x (B, ...) -> (B,)."""
        raise NotImplementedError

    def neg_log_likelihood(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """-log p(y | A(x) = y_hat) up to a constant, per sample: (B,)."""
        raise NotImplementedError

    def residual_gradient(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """d(residual_norm(y, y_hat)^2 / 2) / d y_hat, the shape of y_hat (autograd here; closed forms in the
        subclasses, which spare a sampler's step the autograd graph)."""
        return autograd_gradient(lambda v: self.residual_norm(y.clone(), v).square() / 2, y_hat)

    def to_config(self) -> dict:
        raise NotImplementedError


@NOISE_MODELS.register("gaussian")
class GaussianNoise(NoiseModel):
    """n ~ N(0, sigma^2 I) on the [-1, 1] scale (sigma = 0.05 in DPS Sec. 4 / App. C)."""

    params: ClassVar[dict[str, str]] = {"noise_sigma": "sigma"}

    def __init__(self, sigma: float = 0.05):
        if not sigma >= 0:
            raise ValueError(f"noise_sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def sample(self, y_clean, generator=None):
        if self.sigma == 0:
            return y_clean.clone()
        noise = torch.randn(y_clean.shape, generator=generator, device=y_clean.device, dtype=y_clean.real.dtype)
        if y_clean.is_complex():  # circular complex noise with std sigma per real and imaginary part
            noise = torch.complex(
                noise, torch.randn(y_clean.shape, generator=generator, device=y_clean.device, dtype=y_clean.real.dtype)
            )
        return y_clean + self.sigma * noise

    def residual_norm(self, y, y_hat):
        """||y - y_hat||_2 (un-squared), as in the DPS reference code (condition_methods.py)."""
        return per_sample_norm(y - y_hat)

    def neg_log_likelihood(self, y, y_hat):
        if self.sigma == 0:
            raise ValueError("the likelihood of noiseless measurements is degenerate; use noise_sigma > 0")
        return per_sample_norm(y - y_hat).square() / (2 * self.sigma**2)

    def residual_gradient(self, y, y_hat):
        return y_hat - y

    def to_config(self):
        return {"noise": "gaussian", "noise_sigma": self.sigma}


@NOISE_MODELS.register("poisson")
class PoissonNoise(NoiseModel):
    """Shot noise: y01 = Poisson(255 * rate * x01) / (255 * rate), on the [0, 1] scale, mapped back to [-1, 1].

    This is the DPS noiser (measurements.py `PoissonNoise`). The DPS guidance for it is the weighted
    norm of DPS Eq. (18) with Lambda_ii = 1 / (2 y_i) on the [0, 1] scale (un-squared, like the Gaussian
    case); the reference code's `norm / |y|` then mean is not a norm and divides by zero on dark pixels.
    """

    params: ClassVar[dict[str, str]] = {"poisson_rate": "rate"}

    def __init__(self, rate: float = 1.0):
        if not rate > 0:
            raise ValueError(f"poisson_rate must be > 0, got {rate}")
        self.rate = float(rate)

    def sample(self, y_clean, generator=None):
        scale = 255.0 * self.rate
        counts = torch.poisson(((y_clean + 1) / 2).clamp(min=0) * scale, generator=generator)
        return counts / scale * 2 - 1

    def _weights(self, y):
        return 1.0 / (2.0 * ((y + 1) / 2).clamp(min=1.0 / (255.0 * self.rate)))

    def residual_norm(self, y, y_hat):
        r01 = (y - y_hat) / 2
        return per_sample_norm(r01 * self._weights(y).sqrt())

    def neg_log_likelihood(self, y, y_hat):
        return self.residual_norm(y, y_hat).square() * (255.0 * self.rate)

    def residual_gradient(self, y, y_hat):
        return (y_hat - y) * self._weights(y) / 4

    def to_config(self):
        return {"noise": "poisson", "poisson_rate": self.rate}


def noise_params() -> tuple[str, ...]:
    """The noise parameters an operator accepts: "noise" (the model's name) and those the registered models declare."""
    return ("noise", *(p for _, cls in NOISE_MODELS.items() for p in cls.params))


def make_noise(noise: str = "gaussian", **params: float) -> NoiseModel:
    """Build the registered noise model `noise` from its declared parameters, e.g. make_noise("gaussian",
    noise_sigma=0.1) or make_noise("poisson", poisson_rate=2.0); omitted ones take the model's defaults and those
    of other models are ignored. An unknown model or parameter is a ValueError listing the valid ones."""
    cls = NOISE_MODELS.get(noise)
    valid = noise_params()[1:]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown noise parameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    kwargs = {arg: params[p] for p, arg in cls.params.items() if p in params}
    check_params(f"noise model {noise!r}", cls.__init__, kwargs, {arg: p for p, arg in cls.params.items()})
    return cls(**kwargs)
