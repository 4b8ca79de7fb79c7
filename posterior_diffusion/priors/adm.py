"""guided-diffusion (ADM) checkpoints as diffusers UNet2DModel priors.

Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis" (arXiv:2105.05233), code
openai/guided-diffusion (guided_diffusion/unet.py `UNetModel`). The papers' priors are ADM state dicts:
DPS's `ffhq_10m.pt` (DPS2022/diffusion-posterior-sampling) and openai's `256x256_diffusion_uncond.pt`.
diffusers ships no converter for them; `adm_mapping` maps the weights (its docstring has the table).

Precision: ADM's GroupNorm32 normalises in float32 whatever the network's dtype; in float16/bfloat16
`load_adm_checkpoint` does the same (`float32_group_norms`). diffusers does not upcast its GroupNorms, but
torch's half-precision group norm already accumulates its statistics in float32 and differs only by
rounding the affine weights. A folder written by `convert` and loaded in half precision uses torch's norm.

    prior = load_prior("ffhq_10m.pt", arch="adm-ffhq-256")
    posterior-diffusion convert ffhq_10m.pt --arch adm-ffhq-256 --out ffhq_prior/
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from posterior_diffusion.guards import load_torch_file

from .adm_config import ADM_PRESETS, ADMConfig, resolve_arch, scheduler_config, unet_config
from .adm_mapping import check_state, convert_state_dict, empty_unet, expected_state_shapes
from .base import linear_alphas_cumprod, resolve_dtype
from .saving import save_prior
from .unet import UNetPrior


def read_adm_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an ADM checkpoint file: a torch state dict (read with weights_only=True) or safetensors."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"arch= is for checkpoint files; '{path}' is a folder (load folders without arch)")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"cannot read '{path}' as a safetensors file: {err}") from None
    state = load_torch_file(path, "checkpoint")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{path}' is not a state dict (a dict of tensors) of a guided-diffusion UNetModel")
    return dict(state)


def adm_unet(adm_state: dict, arch: str | ADMConfig, dtype: torch.dtype = torch.float32, path="checkpoint"):
    """The UNet2DModel (eval mode, `dtype`) holding an ADM state dict; mismatches are a ValueError."""
    adm = resolve_arch(arch, path)
    check_state(adm_state, adm, arch, path)
    converted = {k: v.to(dtype) for k, v in convert_state_dict(adm_state, adm).items()}
    unet = empty_unet(adm)
    unet.load_state_dict(converted, strict=True, assign=True)
    return unet.eval()


class Float32GroupNorm(nn.GroupNorm):
    """ADM's GroupNorm32: statistics and affine transform in float32, the result in the input's dtype."""

    def forward(self, x):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def float32_group_norms(net: nn.Module) -> nn.Module:
    """Make every GroupNorm of `net` compute in float32 (ADM GroupNorm32) and keep its parameters float32.

    The modules keep their names and parameters (state dicts are unchanged); only their class is
    swapped to the `Float32GroupNorm` subclass, which adds no state.
    """
    for module in net.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = Float32GroupNorm
            module.float()
    return net


def load_adm_checkpoint(path, arch: str | ADMConfig | None, dtype=torch.float32) -> UNetPrior:
    """A guided-diffusion (ADM) checkpoint as a `UNetPrior` (what `load_prior(path, arch=...)` returns).

    Args:
        path: an ADM UNetModel state dict: .pt/.pth (torch.save, read with weights_only=True: files with
            pickled code are refused) or .safetensors.
        arch: a name in ADM_PRESETS ("adm-ffhq-256" for DPS's ffhq_10m.pt, "adm-imagenet-256-uncond" for
            256x256_diffusion_uncond.pt) or an ADMConfig.
        dtype: the network's dtype (float32, float16, bfloat16 or a name); group norms stay float32.

    Returns a pixel prior on the DDPM linear schedule (1000 steps, epsilon prediction; learned_range
    variance with learn_sigma), images (B, 3, H, W) in [-1, 1].
    """
    dtype = resolve_dtype(dtype) or torch.float32
    return _adm_prior(adm_unet(read_adm_state(path), arch, dtype, path), resolve_arch(arch, path))


def random_adm_prior(arch: str | ADMConfig, dtype=torch.float32, seed: int = 0) -> UNetPrior:
    """A prior with ADM architecture `arch` (a name in ADM_PRESETS or an ADMConfig) and random weights (diffusers'
    initialisation, seeded): for timing a paper-size network with no download (`bench --speed --random-init`),
    never for restoring images."""
    from diffusers import UNet2DModel

    adm = resolve_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**unet_config(adm))
    return _adm_prior(unet.to(resolve_dtype(dtype) or torch.float32).eval(), adm)


def _adm_prior(unet, adm: ADMConfig) -> UNetPrior:
    """`unet` (an ADM UNet2DModel in its dtype) on ADM's DDPM schedule; group norms in float32 for half dtypes."""
    if unet.dtype in (torch.float16, torch.bfloat16):
        float32_group_norms(unet)
    sched = scheduler_config(adm)
    alphas_cumprod = linear_alphas_cumprod(sched["num_train_timesteps"], sched["beta_start"], sched["beta_end"])
    return UNetPrior(unet, alphas_cumprod, sched["prediction_type"], sched["variance_type"])


def adm_scheduler(adm: ADMConfig):
    """The diffusers DDPMScheduler of an ADM checkpoint (see `scheduler_config`)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config(adm))


def convert_checkpoint(path, arch: str | ADMConfig, folder, dtype=torch.float32) -> Path:
    """Write an ADM checkpoint as a diffusers DDPMPipeline folder (model_index.json, unet/ in safetensors,
    scheduler/) that `load_prior(folder)` and `DDPMPipeline.from_pretrained(folder)` read.

    dtype: the stored weights' precision (float16 halves the files; `load_prior` still loads float32 by default).
    """
    adm = resolve_arch(arch, path)
    unet = adm_unet(read_adm_state(path), arch, resolve_dtype(dtype) or torch.float32, path)
    save_prior(folder, unet, adm_scheduler(adm))
    return Path(folder)


__all__ = [
    "ADM_PRESETS",
    "ADMConfig",
    "Float32GroupNorm",
    "adm_scheduler",
    "adm_unet",
    "convert_checkpoint",
    "convert_state_dict",
    "expected_state_shapes",
    "float32_group_norms",
    "load_adm_checkpoint",
    "random_adm_prior",
    "read_adm_state",
    "resolve_arch",
    "scheduler_config",
    "unet_config",
]
