"""The guided-diffusion (ADM) architectures: `ADMConfig` (the `create_model` arguments of guided-diffusion's
script_util.py), the papers' checkpoints as `ADM_PRESETS`, and the diffusers UNet2DModel / scheduler configs that
reproduce them (`unet_config`, `scheduler_config`). Loading and conversion: `adm`."""

from __future__ import annotations

from dataclasses import dataclass


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
