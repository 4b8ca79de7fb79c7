"""Latent diffusion priors: a diffusers autoencoder (AutoencoderKL or VQModel) and a UNet2DModel on its latents
(Rombach et al., CVPR 2022). The diffusion runs on z = scaling_factor * E(x); images come back as D(z / scaling_factor).

The denoiser contract (`predict`, `alphas_cumprod`) is the latent UNet's; `encode`/`decode` cross between
images (B, C, H, W) in [-1, 1] and latents (B, c, H / f, W / f). The autoencoder runs in float32 unless asked
(half precision overflows in some VAE decoders), the UNet in its own dtype.

Any image size: sides that are not multiples of f are reflect-padded before encoding, the latents cover the padded
image (ceil(H / f) x ceil(W / f)), and `for_image_shape` gives the view of the prior whose decoder crops back to
H x W (the samplers run on that view); the latent UNet pads its own input to its downsampling.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn.functional as F

from .base import DiffusionPrior, Prediction, pad_to_multiple
from .unet import UNetPrior


class LatentPrior(DiffusionPrior):
    """A latent prior: `latent` is the UNetPrior on latents, `autoencoder` an AutoencoderKL or VQModel.

    Args:
        scaling_factor: latents are multiplied by it after encoding (the diffusers `vae.config.scaling_factor`;
            CompVis LDM VQ-f4 models are unscaled, 1.0).
    """

    space = "latent"

    def __init__(self, latent: UNetPrior, autoencoder, scaling_factor: float):
        super().__init__(latent.alphas_cumprod, latent.prediction_type, latent.variance_type)
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {scaling_factor}")
        self.latent = latent
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor)
        # images through the autoencoder, by ("encode" | "decode", with gradients): the speed benchmark's
        # bare-network time counts them next to the UNet's evaluations
        self.autoencoder_passes: Counter = Counter()
        self.image_size: tuple[int, int] | None = None  # (H, W) that `decode` crops to (`for_image_shape`)

    @property
    def net(self):
        return self.latent.net

    @property
    def dtype(self) -> torch.dtype:
        return self.latent.dtype

    @property
    def channels_last(self) -> bool:
        return self.latent.channels_last

    def set_channels_last(self, enabled: bool | None = True) -> LatentPrior:
        """The latent UNet's memory format (`UNetPrior.set_channels_last`)."""
        self.latent.set_channels_last(enabled)
        return self

    def prepare(self, gradient: bool) -> None:
        self.latent.prepare(gradient)

    @property
    def compiled(self) -> bool:
        return self.latent.compiled

    @property
    def cuda_graphs(self) -> bool:
        return self.latent.cuda_graphs

    def use_cuda_graphs(self, enabled: bool = True) -> LatentPrior:
        """The latent UNet's forward passes from CUDA graphs (`UNetPrior.use_cuda_graphs`)."""
        self.latent.use_cuda_graphs(enabled)
        return self

    def compile_network(self, **options) -> LatentPrior:
        """Compile the latent UNet (`UNetPrior.compile_network`); the autoencoder runs as it is."""
        self.latent.compile_network(**options)
        return self

    @property
    def factor(self) -> int:
        """Spatial downsampling of the autoencoder."""
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    @property
    def downsampling(self) -> int:
        """The autoencoder's factor times the latent UNet's: the smallest image side."""
        return self.factor * self.latent.downsampling

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(c, ceil(H / f), ceil(W / f)) for images of `image_shape` (C, H, W)."""
        self.check_image_shape(image_shape)
        _, h, w = image_shape
        return (self.net.config.in_channels, -(-h // self.factor), -(-w // self.factor))

    def for_image_shape(self, image_shape: tuple[int, ...]) -> LatentPrior:
        """This prior, or where a side of `image_shape` (C, H, W) is not a multiple of f a view of it (the same
        modules) whose `decode` crops the decoded, padded canvas back to H x W."""
        h, w = image_shape[-2:]
        if not (h % self.factor or w % self.factor):
            return self
        view = copy.copy(self)
        view.image_size = (h, w)
        return view

    def state_shape(self, image_shape):
        return self.latent_shape(image_shape)

    def to_image(self, x):
        return self.decode(x)

    def from_image(self, x):
        return self.encode(x)

    def check_image_shape(self, image_shape):
        c, h, w = image_shape
        if c != self.autoencoder.config.in_channels:
            raise ValueError(f"the prior models {self.autoencoder.config.in_channels}-channel images, got {c} channels")
        if min(h, w) < self.downsampling:
            raise ValueError(
                f"image size {h}x{w} is below the prior's downsampling factor {self.downsampling} (autoencoder x UNet)"
            )

    def default_image_shape(self):
        _, h, w = self.latent.default_image_shape()
        return (self.autoencoder.config.in_channels, h * self.factor, w * self.factor)

    def predict(self, x_t, t) -> Prediction:
        """The latent UNet's prediction for latents z_t (B, c, h, w)."""
        return self.latent.predict(x_t, t)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, ceil(H / f), ceil(W / f)), float32 (the posterior
        mean for AutoencoderKL; the pre-quantisation latents for VQModel, which quantises in `decode`); sides that are
        not multiples of f are reflect-padded first."""
        self.autoencoder_passes["encode", x.requires_grad and torch.is_grad_enabled()] += x.shape[0]
        padding = pad_to_multiple(*x.shape[-2:], self.factor)
        if any(padding):
            x = F.pad(x, padding, mode="reflect")
        enc = self.autoencoder.encode(x.to(self.autoencoder.dtype))
        z = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents
        return z.float() * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, f h, f w), float32, about [-1, 1] (not clipped); a view for
        another image size (`for_image_shape`) crops them to it."""
        self.autoencoder_passes["decode", z.requires_grad and torch.is_grad_enabled()] += z.shape[0]
        x = self.autoencoder.decode((z / self.scaling_factor).to(self.autoencoder.dtype)).sample.float()
        if self.image_size is None:
            return x
        h, w = self.image_size
        left, _, top, _ = pad_to_multiple(h, w, self.factor)
        return x[..., top : top + h, left : left + w]
