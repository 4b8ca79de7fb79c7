"""Pixel diffusion priors from diffusers: a UNet2DModel on a DDPM (VP) schedule.

The network runs in its dtype (float32, float16 or bfloat16); inputs are cast to it at the boundary and
outputs come back as float32. Learned-variance networks (out_channels =
2 * in_channels, as in guided-diffusion / improved DDPM) are split into eps and the variance value v.

Speed: the memory format follows what the speed bench measured faster (assets/bench/speed/README.md, "Layout and
compilation"; the built-in 64 px network on one core of a Xeon with AMX): by default (`channels_last=None`) each
sampler run lays the network out channels-last (NHWC) when it is half precision and the run needs no gradient
through it (DDRM 20 steps, batch 4: 1.06 s against 1.55 s contiguous), and contiguous (NCHW) otherwise (bfloat16
DPS: 3.26 s against 3.90 s channels-last; float32 DDRM: 3.33 s against 4.05 s); `set_channels_last(True / False)`
pins one. `compile_network` wraps the network in `torch.compile` (opt-in: about a minute of compilation per input
shape on that core, more than a default CPU run saves); `use_cuda_graphs` replays forward passes on a GPU from
captured CUDA graphs (`cuda_graphs`, unmeasured).
"""

from __future__ import annotations

import shutil

import torch
import torch.nn.functional as F

from .base import DiffusionPrior, pad_to_multiple
from .cuda_graphs import GraphedForward


class UNetPrior(DiffusionPrior):
    """A diffusers UNet2DModel as a prior.

    Args:
        unet: a diffusers UNet2DModel (kept as `self.net`).
        alphas_cumprod: (T,) the training schedule's alpha_bar_t.
        prediction_type: "epsilon", "v_prediction" or "sample" (from the scheduler config).
        variance_type: the scheduler's ("fixed_small", "fixed_large", "learned_range", ...); a network with
            2C output channels implies a learned variance ("learned_range" unless the config says "learned").
        channels_last: True / False pins the network's memory format to channels-last / contiguous; None (default)
            lets each sampler run choose (`prepare`, see the module docstring).
    """

    def __init__(
        self,
        unet,
        alphas_cumprod,
        prediction_type: str = "epsilon",
        variance_type: str = "fixed_small",
        channels_last: bool | None = None,
    ):
        in_ch, out_ch = unet.config.in_channels, unet.config.out_channels
        if out_ch == 2 * in_ch and variance_type not in ("learned", "learned_range"):
            variance_type = "learned_range"
        elif out_ch != in_ch and out_ch != 2 * in_ch:
            raise ValueError(f"a UNet with {in_ch} input and {out_ch} output channels is not a diffusion denoiser")
        super().__init__(alphas_cumprod, prediction_type, variance_type)
        self.net = unet.eval().requires_grad_(False)
        self.graphed: GraphedForward | None = None  # set by use_cuda_graphs
        self.memory_format = torch.contiguous_format
        self.set_channels_last(channels_last)

    def set_channels_last(self, enabled: bool | None = True) -> UNetPrior:
        """Pin the network's weights and inputs to channels-last (NHWC, True) or contiguous (NCHW, False), or let
        each sampler run choose (None, `prepare`); returns self. The outputs are the same up to rounding (other
        convolution kernels)."""
        self.layout = enabled
        if enabled is not None:
            self._lay_out(enabled)
        return self

    def prepare(self, gradient: bool) -> None:
        """Called by a sampler before its run: with the automatic layout, channels-last for a half-precision
        network in a run without gradients through it, contiguous otherwise (the speed bench's faster one)."""
        if self.layout is None:
            self._lay_out(self.dtype in (torch.float16, torch.bfloat16) and not gradient)

    def _lay_out(self, channels_last: bool) -> None:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if memory_format != self.memory_format:
            self.memory_format = memory_format
            self.net.to(memory_format=memory_format)

    @property
    def channels_last(self) -> bool:
        return self.memory_format == torch.channels_last

    def compile_network(self, **options) -> UNetPrior:
        """Compile the network in place with `torch.compile(**options)` (once; a compiled network is left as it is);
        returns self. Each new input shape (batch, size) compiles again on first use. On a CPU the default backend
        (inductor) needs a C++ compiler."""
        if self.compiled:
            return self
        no_compiler = not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))
        if self.device.type == "cpu" and options.get("backend", "inductor") == "inductor" and no_compiler:
            raise RuntimeError("compile on a CPU needs a C++ compiler (g++ or clang++) on PATH; run without compile")
        self.net.compile(**options)
        return self

    @property
    def compiled(self) -> bool:
        return getattr(self.net, "_compiled_call_impl", None) is not None

    def use_cuda_graphs(self, enabled: bool = True) -> UNetPrior:
        """Replay the network's forward passes from CUDA graphs on a CUDA device (`cuda_graphs.GraphedForward`;
        CPU tensors and passes with gradients run eagerly); returns self."""
        self.graphed = GraphedForward(self.net) if enabled else None
        return self

    @property
    def cuda_graphs(self) -> bool:
        return self.graphed is not None

    def _network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.graphed(x, t) if self.graphed is not None else self.net(x, t).sample

    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.net.config.block_out_channels) - 1)

    def check_image_shape(self, image_shape):
        """Any size from `downsampling` up: sides that are not multiples of it are padded for the network
        (`model_output`)."""
        c, h, w = image_shape
        if c != self.net.config.in_channels:
            raise ValueError(f"the prior models {self.net.config.in_channels}-channel images, got {c} channels")
        if min(h, w) < self.downsampling:
            raise ValueError(f"image size {h}x{w} is below the UNet's downsampling factor {self.downsampling}")

    def default_image_shape(self):
        size = self.net.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.net.config.in_channels, h, w)

    def model_output(self, x_t, t):
        """The network's output for x_t (B, C, H, W); sides that are not multiples of `downsampling` are
        reflect-padded (split between both ends) for the network and its output cropped back to H x W."""
        h, w = x_t.shape[-2:]
        padding = pad_to_multiple(h, w, self.downsampling)
        if not any(padding):
            return self._network(x_t.to(self.dtype, memory_format=self.memory_format), t)
        left, _, top, _ = padding
        padded = F.pad(x_t, padding, mode="reflect").to(self.dtype, memory_format=self.memory_format)
        return self._network(padded, t)[..., top : top + h, left : left + w]
