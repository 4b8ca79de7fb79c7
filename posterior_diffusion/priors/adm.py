"""guided-diffusion (ADM) checkpoints as diffusers UNet2DModel priors.

Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis" (arXiv:2105.05233), code
openai/guided-diffusion (guided_diffusion/unet.py `UNetModel`). The papers' priors are ADM state dicts:
DPS's `ffhq_10m.pt` (DPS2022/diffusion-posterior-sampling) and openai's `256x256_diffusion_uncond.pt`.
diffusers ships no converter for them; the module mapping:

    ADM UNetModel                           diffusers UNet2DModel
    time_embed.0 / .2                       time_embedding.linear_1 / linear_2
    input_blocks.0.0                        conv_in
    input_blocks.i  (ResBlock [+ Attn])     down_blocks.l.resnets.j [+ attentions.j]
    input_blocks.i  (down ResBlock)         down_blocks.l.downsamplers.0
    middle_block.0 / .1 / .2                mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.i (ResBlock [+ Attn] [+ up ResBlock])
                                            up_blocks.l.resnets.j [+ attentions.j] [+ upsamplers.0]
    out.0 / out.2                           conv_norm_out / conv_out
    ResBlock in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection
                                            norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut
    AttentionBlock norm, qkv, proj_out      group_norm, to_q/to_k/to_v, to_out.0

The attention `qkv` 1x1 convolution is split into q, k, v. With `use_new_attention_order=False` (both
papers' checkpoints: `QKVAttentionLegacy`) its 3C output channels are laid out head by head, each head
holding its own q, k and v: the weight is (heads, 3, head_dim, C). With the new order (`QKVAttention`)
it is (3, heads, head_dim, C). Splitting the legacy layout in thirds gives silently wrong outputs.

Precision: ADM's GroupNorm32 normalises in float32 whatever the network's dtype; in float16/bfloat16
`load_adm_checkpoint` does the same (`float32_group_norms`). diffusers does not upcast its GroupNorms, but
torch's half-precision group norm already accumulates its statistics in float32 and differs only by
rounding the affine weights. A folder written by `convert` and loaded in half precision uses torch's norm.

    prior = load_prior("ffhq_10m.pt", arch="adm-ffhq-256")
    posterior-diffusion convert ffhq_10m.pt --arch adm-ffhq-256 --out ffhq_prior/
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from posterior_diffusion.guards import load_torch_file

from .base import linear_alphas_cumprod, resolve_dtype
from .saving import save_prior
from .unet import UNetPrior


@dataclass(frozen=True)
class ADMConfig:
    """The architecture flags of guided-diffusion's `create_model` (script_util.py / DPS model_config.yaml).

    Args:
        image_size: the training resolution; with `attention_resolutions` it places the attention levels.
        in_channels: image channels (3).
        model_channels: `num_channels`, the width of the first level.
        out_channels: in_channels, or 2 * in_channels with `learn_sigma` (None: derived from learn_sigma).
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        channel_mult: width multiplier per level (channel_mult[0] must be 1, as in every ADM preset).
        attention_resolutions: feature-map sides (in pixels, e.g. (32, 16, 8)) that get self-attention.
        num_head_channels: channels per attention head (-1: use `num_heads` heads everywhere).
        num_heads: heads per attention block when num_head_channels is -1.
        learn_sigma: the network also outputs the variance interpolation v (Nichol & Dhariwal 2021).
        use_scale_shift_norm: FiLM conditioning: norm(h) * (1 + scale) + shift.
        resblock_updown: down/upsample with ResBlocks (else a strided / nearest + 3x3 convolution).
        use_new_attention_order: QKVAttention (True) or QKVAttentionLegacy (False) qkv layout.
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int | None = None
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)  # create_model's default for image_size 256
    attention_resolutions: tuple[int, ...] = (16,)
    num_head_channels: int = -1
    num_heads: int = 1
    learn_sigma: bool = False
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        expected_out = self.in_channels * (2 if self.learn_sigma else 1)
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", expected_out)
        elif self.out_channels != expected_out:
            raise ValueError(
                f"out_channels={self.out_channels} contradicts learn_sigma={self.learn_sigma} "
                f"(expected {expected_out} for {self.in_channels} input channels)"
            )
        if not self.channel_mult or self.channel_mult[0] != 1:
            raise ValueError(f"channel_mult must start with 1 (diffusers' conv_in width), got {self.channel_mult}")
        if self.model_channels % 32 or any(self.model_channels * m % 32 for m in self.channel_mult):
            raise ValueError("every level's width must be divisible by 32 (ADM's GroupNorm32 has 32 groups)")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        widths = {self.model_channels * self.channel_mult[level] for level in self.attention_levels}
        widths.add(self.model_channels * self.channel_mult[-1])  # the middle block always has attention
        if self.num_head_channels == -1:
            if len({w // self.num_heads for w in widths}) > 1 or any(w % self.num_heads for w in widths):
                raise ValueError(
                    "num_heads without num_head_channels gives a different head width per level, which "
                    f"UNet2DModel cannot express (attention widths {sorted(widths)}, {self.num_heads} heads)"
                )
        elif any(w % self.num_head_channels for w in widths):
            raise ValueError(f"attention widths {sorted(widths)} must be divisible by {self.num_head_channels}")

    @property
    def num_channels(self) -> int:
        """guided-diffusion's flag name for `model_channels`."""
        return self.model_channels

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """Level indices (0 = full resolution) whose blocks have attention (ADM: ds = image_size // res)."""
        ds = {self.image_size // r for r in self.attention_resolutions}
        return tuple(level for level in range(len(self.channel_mult)) if 2**level in ds)

    def heads(self, width: int) -> int:
        """Attention heads of a block `width` channels wide (num_head_channels takes precedence)."""
        return self.num_heads if self.num_head_channels == -1 else width // self.num_head_channels

    def head_dim(self) -> int:
        width = self.model_channels * self.channel_mult[-1]
        return width // self.heads(width)


ADM_PRESETS = {
    # DPS2022/diffusion-posterior-sampling configs/model_config.yaml (= DiffPIR/DAPS FFHQ 256 model, ffhq_10m.pt):
    # image_size 256, num_channels 128, num_res_blocks 1, channel_mult "" -> (1,1,2,2,4,4) for 256,
    # attention_resolutions 16, num_heads 4 but num_head_channels 64 wins, learn_sigma, use_scale_shift_norm,
    # resblock_updown, use_new_attention_order False (legacy qkv), dropout 0, use_fp16 irrelevant here.
    "adm-ffhq-256": ADMConfig(
        image_size=256,
        model_channels=128,
        num_res_blocks=1,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(16,),
        num_head_channels=64,
        num_heads=4,
        learn_sigma=True,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
    ),
    # openai/guided-diffusion README, 256x256_diffusion_uncond.pt MODEL_FLAGS (also DPS configs/
    # imagenet_model_config.yaml): --attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000
    # --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
    # --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True.
    "adm-imagenet-256-uncond": ADMConfig(
        image_size=256,
        model_channels=256,
        num_res_blocks=2,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(32, 16, 8),
        num_head_channels=64,
        num_heads=4,
        learn_sigma=True,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
    ),
}


def resolve_arch(arch: str | ADMConfig | None, path=None) -> ADMConfig:
    """A preset name or an ADMConfig -> ADMConfig; None or an unknown name is a ValueError listing the presets."""
    if isinstance(arch, ADMConfig):
        return arch
    valid = ", ".join(ADM_PRESETS)
    if arch is None:
        where = f"'{path}' is a checkpoint file: " if path is not None else ""
        raise ValueError(
            f"{where}guided-diffusion (ADM) checkpoints need arch=PRESET (valid: {valid}) or an ADMConfig; "
            "other priors load from a diffusers folder, a hub id or 'builtin:<name>'"
        )
    if arch not in ADM_PRESETS:
        raise ValueError(f"unknown ADM architecture {arch!r}; valid: {valid} (or pass an ADMConfig)")
    return ADM_PRESETS[arch]


def unet_config(adm: ADMConfig) -> dict:
    """The UNet2DModel keyword arguments that compute the same function as ADM's UNetModel(adm)."""
    attention = set(adm.attention_levels)
    levels = range(len(adm.channel_mult))
    down_plain = "ResnetDownsampleBlock2D" if adm.resblock_updown else "DownBlock2D"
    up_plain = "ResnetUpsampleBlock2D" if adm.resblock_updown else "UpBlock2D"
    return {
        "sample_size": adm.image_size,
        "in_channels": adm.in_channels,
        "out_channels": adm.out_channels,
        "block_out_channels": tuple(adm.model_channels * m for m in adm.channel_mult),
        "layers_per_block": adm.num_res_blocks,
        "down_block_types": tuple("AttnDownBlock2D" if lv in attention else down_plain for lv in levels),
        "up_block_types": tuple("AttnUpBlock2D" if lv in attention else up_plain for lv in reversed(levels)),
        "attention_head_dim": adm.head_dim(),
        "norm_num_groups": 32,  # ADM normalization(): GroupNorm32(32, channels), eps 1e-5
        "norm_eps": 1e-5,
        "attn_norm_num_groups": 32,  # else the scale-shift mid-block attention gets no group norm
        "resnet_time_scale_shift": "scale_shift" if adm.use_scale_shift_norm else "default",
        "downsample_type": "resnet" if adm.resblock_updown else "conv",
        "upsample_type": "resnet" if adm.resblock_updown else "conv",
        "downsample_padding": 1,
        "flip_sin_to_cos": True,  # ADM timestep_embedding: cat([cos, sin])
        "freq_shift": 0,  # frequencies exp(-log(10000) * i / half)
        "act_fn": "silu",
        "time_embedding_type": "positional",
    }


def scheduler_config(adm: ADMConfig) -> dict:
    """DDPMScheduler arguments of the papers' diffusion: DPS configs/diffusion_config.yaml, guided-diffusion README
    (1000 steps, linear betas 1e-4..0.02, epsilon; learned_range with learn_sigma, else fixed_large)."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "variance_type": "learned_range" if adm.learn_sigma else "fixed_large",
        "clip_sample": True,
    }


_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_ATTENTION = {"norm": "group_norm", "qkv": "qkv", "proj_out": "to_out.0"}


def _module_map(adm: ADMConfig) -> dict[str, tuple[str, str]]:
    """ADM module path -> (diffusers module path, kind); kind: "plain", "resnet", "attention", "down", "up"."""
    attention = set(adm.attention_levels)
    n = len(adm.channel_mult)
    down = "resnet" if adm.resblock_updown else "down"  # Downsample(use_conv): its conv is `.op`
    up = "resnet" if adm.resblock_updown else "up"  # Upsample(use_conv): its conv is `.conv`
    modules = {
        "time_embed.0": ("time_embedding.linear_1", "plain"),
        "time_embed.2": ("time_embedding.linear_2", "plain"),
        "input_blocks.0.0": ("conv_in", "plain"),
        "middle_block.0": ("mid_block.resnets.0", "resnet"),
        "middle_block.1": ("mid_block.attentions.0", "attention"),
        "middle_block.2": ("mid_block.resnets.1", "resnet"),
        "out.0": ("conv_norm_out", "plain"),
        "out.2": ("conv_out", "plain"),
    }
    i = 1  # input_blocks.0 is conv_in
    for level in range(n):
        for j in range(adm.num_res_blocks):
            modules[f"input_blocks.{i}.0"] = (f"down_blocks.{level}.resnets.{j}", "resnet")
            if level in attention:
                modules[f"input_blocks.{i}.1"] = (f"down_blocks.{level}.attentions.{j}", "attention")
            i += 1
        if level != n - 1:
            modules[f"input_blocks.{i}.0"] = (f"down_blocks.{level}.downsamplers.0", down)
            i += 1
    i = 0
    for block, level in enumerate(reversed(range(n))):
        for j in range(adm.num_res_blocks + 1):
            modules[f"output_blocks.{i}.0"] = (f"up_blocks.{block}.resnets.{j}", "resnet")
            k = 1
            if level in attention:
                modules[f"output_blocks.{i}.1"] = (f"up_blocks.{block}.attentions.{j}", "attention")
                k = 2
            if level and j == adm.num_res_blocks:  # the level's upsampler ends its last output block
                modules[f"output_blocks.{i}.{k}"] = (f"up_blocks.{block}.upsamplers.0", up)
            i += 1
    return modules


def _leaf_map(adm: ADMConfig) -> dict[str, str]:
    """ADM leaf module path -> diffusers leaf module path (an attention's qkv -> '<attention>.qkv')."""
    submodules = {"resnet": _RESNET, "attention": _ATTENTION, "down": {"op": "conv"}, "up": {"conv": "conv"}}
    leaves = {}
    for adm_path, (diff_path, kind) in _module_map(adm).items():
        if kind == "plain":
            leaves[adm_path] = diff_path
        else:
            leaves.update({f"{adm_path}.{a}": f"{diff_path}.{d}" for a, d in submodules[kind].items()})
    return leaves


def _empty_unet(adm: ADMConfig):
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel(**unet_config(adm))


@functools.lru_cache(maxsize=8)
def expected_state_shapes(adm: ADMConfig) -> dict[str, tuple[int, ...]]:
    """The ADM state dict an `adm` network has: key -> shape (derived from the equivalent UNet2DModel)."""
    inverse = {d: a for a, d in _leaf_map(adm).items()}
    shapes = {}
    for key, tensor in _empty_unet(adm).state_dict().items():
        module, name = key.rsplit(".", 1)
        attention_part = module.rsplit(".", 1)
        if attention_part[-1] in ("to_q", "to_k", "to_v"):
            qkv = f"{attention_part[0]}.qkv"
            c = tensor.shape[0]
            shapes[f"{inverse[qkv]}.{name}"] = (3 * c, c, 1) if name == "weight" else (3 * c,)
            continue
        adm_key = f"{inverse[module]}.{name}"
        is_attention_1x1 = module.endswith("to_out.0")  # ADM proj_out is a Conv1d (C, C, 1)
        shapes[adm_key] = (*tensor.shape, 1) if is_attention_1x1 and name == "weight" else tuple(tensor.shape)
    return shapes


def _mismatch(adm_state: dict, adm: ADMConfig) -> str | None:
    """What keeps `adm_state` from being an `adm` network's state dict, or None if it is one."""
    expected = expected_state_shapes(adm)
    missing = sorted(set(expected) - set(adm_state))
    unexpected = sorted(set(adm_state) - set(expected))
    wrong = [k for k in expected if k in adm_state and tuple(adm_state[k].shape) != expected[k]]

    def listing(keys, n=4):
        return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")

    parts = []
    if missing:
        parts.append(f"missing keys {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {listing(unexpected)}")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} keys of another shape (e.g. {k}: {tuple(adm_state[k].shape)}, expected {expected[k]})"
        )
    return "; ".join(parts) or None


def _check_state(adm_state: dict, adm: ADMConfig, arch, path) -> None:
    if "label_emb.weight" in adm_state:
        raise ValueError(f"'{path}' is a class-conditional ADM checkpoint (label_emb); only unconditional ones load")
    problem = _mismatch(adm_state, adm)
    if problem is None:
        return
    name = f"preset {arch!r}" if isinstance(arch, str) else "the given ADMConfig"
    fits = [p for p, cfg in ADM_PRESETS.items() if cfg != adm and _mismatch(adm_state, cfg) is None]
    hint = (
        f"it matches preset {fits[0]!r}: use arch={fits[0]!r}"
        if fits
        else f"it matches none of the presets ({', '.join(ADM_PRESETS)}): pass an ADMConfig with its architecture"
    )
    raise ValueError(f"'{path}' does not match {name}: {problem}; {hint}")


def _split_qkv(weight: torch.Tensor, heads: int, legacy: bool) -> tuple[torch.Tensor, ...]:
    """ADM qkv (3C, C[, 1]) weight or (3C,) bias -> q, k, v, each (C, C) or (C,).

    The 3C channels are ordered (head, {q, k, v}, head_dim) in the legacy layout (QKVAttentionLegacy) and
    ({q, k, v}, head, head_dim) in the new one (QKVAttention).
    """
    w = weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight[:, None]
    c3, c_in = w.shape
    c = c3 // 3
    if legacy:
        w = w.reshape(heads, 3, c // heads, c_in).transpose(0, 1)  # (3, heads, head_dim, C_in)
    q, k, v = (part.reshape(c, c_in) for part in w.reshape(3, c, c_in))
    if weight.ndim == 1:
        return q[:, 0], k[:, 0], v[:, 0]
    return q, k, v


def convert_state_dict(adm_state: dict, adm: ADMConfig) -> dict[str, torch.Tensor]:
    """An ADM UNetModel state dict -> the state dict of `UNet2DModel(**unet_config(adm))` (contiguous tensors).

    The keys are mapped per the module docstring; Conv1d attention weights lose their last dimension; the
    qkv projection is split in the checkpoint's order (`adm.use_new_attention_order`).
    """
    leaves = _leaf_map(adm)
    out = {}
    for key, tensor in adm_state.items():
        module, name = key.rsplit(".", 1)
        if module not in leaves:
            raise ValueError(f"unexpected ADM key {key!r} for this architecture")
        target = leaves[module]
        if target.endswith(".qkv"):
            attention = target[: -len(".qkv")]
            width = tensor.shape[0] // 3
            parts = _split_qkv(tensor, adm.heads(width), legacy=not adm.use_new_attention_order)
            for proj, part in zip(("to_q", "to_k", "to_v"), parts, strict=True):
                out[f"{attention}.{proj}.{name}"] = part.contiguous()
        elif target.endswith("to_out.0") and name == "weight":
            out[f"{target}.{name}"] = tensor.reshape(tensor.shape[0], -1).contiguous()
        else:
            out[f"{target}.{name}"] = tensor.contiguous()
    return out


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
    _check_state(adm_state, adm, arch, path)
    converted = {k: v.to(dtype) for k, v in convert_state_dict(adm_state, adm).items()}
    unet = _empty_unet(adm)
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
    "adm_scheduler",
    "adm_unet",
    "convert_checkpoint",
    "convert_state_dict",
    "float32_group_norms",
    "load_adm_checkpoint",
    "random_adm_prior",
    "read_adm_state",
    "resolve_arch",
    "scheduler_config",
    "unet_config",
]
