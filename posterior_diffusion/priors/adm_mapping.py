"""The weights of a guided-diffusion (ADM) UNetModel as those of a diffusers UNet2DModel (`convert_state_dict`), and
the shape check that refuses a checkpoint of another architecture before any conversion.

The module mapping:

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

"""

from __future__ import annotations

import functools

import torch

from .adm_config import ADM_PRESETS, ADMConfig, unet_config

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


def empty_unet(adm: ADMConfig):
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel(**unet_config(adm))


@functools.lru_cache(maxsize=8)
def expected_state_shapes(adm: ADMConfig) -> dict[str, tuple[int, ...]]:
    """The ADM state dict an `adm` network has: key -> shape (derived from the equivalent UNet2DModel)."""
    inverse = {d: a for a, d in _leaf_map(adm).items()}
    shapes = {}
    for key, tensor in empty_unet(adm).state_dict().items():
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


def check_state(adm_state: dict, adm: ADMConfig, arch, path) -> None:
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
