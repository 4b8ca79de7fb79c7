"""The one denoiser contract every sampler is written against.

A diffusion prior on a variance-preserving (VP/DDPM) schedule:
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   t = 0 .. T-1
exposes `alphas_cumprod` (T,) float32 and `predict(x_t, t)` -> eps_hat, the Tweedie estimate
x0_hat = E[x_0 | x_t] and, for networks that learn it, the variance interpolation value v in [-1, 1]
(Nichol & Dhariwal 2021, Eq. 15). `eps` and `denoise` are shortcuts.

Precision: the network runs in its own dtype; schedules, conversions and results are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from posterior_diffusion.tensor_utils import append_dims


@dataclass
class Prediction:
    """One network evaluation, float32, each (B, C, H, W) (variance_values None unless learned)."""

    eps: torch.Tensor
    x0_hat: torch.Tensor
    variance_values: torch.Tensor | None = None


def _from_epsilon(out, x_t, a, s):
    return out, (x_t - s * out) / a


def _from_v(out, x_t, a, s):  # Salimans & Ho 2022: v = a eps - s x0
    return s * x_t + a * out, a * x_t - s * out


def _from_sample(out, x_t, a, s):
    return (x_t - a * out) / s, out


PREDICTION_TYPES = {"epsilon": _from_epsilon, "v_prediction": _from_v, "sample": _from_sample}


DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype) -> torch.dtype | None:
    """None, a torch.dtype or a name ('float32', 'bf16', ...) -> torch.dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha_bar_t of the DDPM linear beta schedule (Ho et al. 2020, Sec. 4), float32 (T,)."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def noise_levels(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Each step's noise level sqrt((1 - a_t) / a_t): the std of the noise of x_t / sqrt(a_t) (float64, (T,))."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def pad_to_multiple(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom) that bring an H x W image to multiples of `multiple`, split between both
    ends (floor half before, the rest after)."""
    pad_h, pad_w = -h % multiple, -w % multiple
    return (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)


class DiffusionPrior(nn.Module):
    """Base class. Subclasses implement `model_output` (raw network output) or override `predict`."""

    space: ClassVar[str] = "pixel"
    # the network's memory format, whether it is compiled and whether it replays CUDA graphs (network priors set them)
    channels_last: bool = False
    compiled: bool = False
    cuda_graphs: bool = False

    def __init__(
        self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", variance_type: str = "fixed_small"
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        if alphas_cumprod.ndim != 1 or not ((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all():
            raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1]")
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.prediction_type = prediction_type
        self.variance_type = variance_type

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def learns_variance(self) -> bool:
        return self.variance_type in ("learned", "learned_range")

    def check_image_shape(self, image_shape: tuple[int, ...]) -> None:
        """Raise ValueError if the prior cannot model images of `image_shape` (C, H, W)."""

    def default_image_shape(self) -> tuple[int, ...] | None:
        """The image shape the prior was trained on, if it has one."""
        return None

    def for_image_shape(self, image_shape: tuple[int, ...]) -> DiffusionPrior:
        """The prior to run on images of `image_shape` (C, H, W): itself here; a latent prior gives a view that
        crops its decoded images to sizes that are not multiples of its autoencoder's factor."""
        return self

    def state_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the diffusion state x_t for images of `image_shape` (C, H, W): the image shape for a pixel
        prior, the latent shape for a latent prior."""
        return tuple(image_shape)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion states (B, *state_shape) -> images (B, C, H, W): the identity here; a latent prior decodes."""
        return x

    def from_image(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> diffusion states: the identity here; a latent prior encodes."""
        return x

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, gradient: bool) -> None:
        """Called by a sampler before its run (`gradient`: whether it differentiates through the network), so that a
        network prior can lay itself out for it (`UNetPrior.prepare`); nothing here."""

    def compile_network(self, **options) -> DiffusionPrior:
        """Compile the prior's network with `torch.compile(**options)`, in place; returns self. Priors with a
        network override it; an analytic prior has none."""
        raise ValueError(f"{type(self).__name__} has no network to compile")

    def use_cuda_graphs(self, enabled: bool = True) -> DiffusionPrior:
        """Replay the network from CUDA graphs (`UNetPrior.use_cuda_graphs`); an analytic prior has no network."""
        raise ValueError(f"{type(self).__name__} has no network to replay from CUDA graphs")

    def _timesteps(self, t, batch: int) -> torch.Tensor:
        if isinstance(t, int):  # a fill on the device: no host-to-device copy (and stream sync) per step
            return torch.full((batch,), t, device=self.device, dtype=torch.long)
        t = torch.as_tensor(t, device=self.device, dtype=torch.long)
        return t.expand(batch) if t.ndim == 0 else t

    def predict(self, x_t: torch.Tensor, t) -> Prediction:
        """x_t: (B, C, H, W) float; t: int or (B,) long in [0, T). Returns a float32 `Prediction`."""
        t = self._timesteps(t, x_t.shape[0])
        out = self.model_output(x_t, t).float()
        channels = x_t.shape[1]
        variance_values = None
        if self.learns_variance:
            out, variance_values = out[:, :channels], out[:, channels:]
        alpha_bar = append_dims(self.alphas_cumprod[t], x_t.ndim)
        eps, x0_hat = PREDICTION_TYPES[self.prediction_type](out, x_t.float(), alpha_bar.sqrt(), (1 - alpha_bar).sqrt())
        return Prediction(eps=eps, x0_hat=x0_hat, variance_values=variance_values)

    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Predicted noise eps_hat(x_t, t): (B, C, H, W) float32."""
        return self.predict(x_t, t).eps

    def denoise(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Tweedie estimate E[x_0 | x_t]: (B, C, H, W) float32 (not clipped)."""
        return self.predict(x_t, t).x0_hat
