"""An independent re-implementation of the published ADM network (Dhariwal & Nichol 2021; openai/guided-diffusion
unet.py), written from its description, for the checkpoint-conversion tests in test_adm.py.

Sinusoidal timestep embedding (cos then sin), ResBlocks with FiLM (scale-shift) conditioning and up/down-sampling
inside the block, attention blocks with the legacy (per-head q, k, v) and new (q, k, v then heads) qkv layouts,
GroupNorm in float32. Its parameters carry ADM's names, so its state_dict is an ADM checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from posterior_diffusion.priors.adm import ADMConfig


class _Norm32(nn.GroupNorm):
    """32-group norm computed in (at least) float32, returned in the input's dtype."""

    def __init__(self, channels):
        super().__init__(32, channels)

    def forward(self, x):
        wide = torch.promote_types(x.dtype, torch.float32)
        return F.group_norm(x.to(wide), 32, self.weight.to(wide), self.bias.to(wide), self.eps).to(x.dtype)


def _sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Frequencies 10000^(-i / half), i < half; the cosines first, then the sines (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    phase = t.float()[:, None] * freqs[None]
    return torch.cat([phase.cos(), phase.sin()], dim=1)


class _Res(nn.Module):
    """norm-act-conv, FiLM or additive time conditioning, norm-act-dropout-conv, plus a (1x1) skip."""

    def __init__(self, ch, emb_ch, out_ch=None, film=True, resample=None):
        super().__init__()
        out_ch = out_ch or ch
        self.film, self.resample = film, resample
        self.in_layers = nn.Sequential(_Norm32(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch * (2 if film else 1)))
        self.out_layers = nn.Sequential(
            _Norm32(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x):
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.resample == "down" else x

    def forward(self, x, emb):
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))  # resampling happens between the activation and the conv
        x = self._resample(x)
        cond = self.emb_layers(emb)[:, :, None, None]
        if self.film:
            scale, shift = cond.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + cond)
        return self.skip_connection(x) + h


class _Attn(nn.Module):
    """Self-attention over positions; qkv is one 1x1 Conv1d, its channels split in the given layout."""

    def __init__(self, ch, heads, new_order):
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = _Norm32(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)
        qkv = self.qkv(self.norm(flat))
        d, n = c // self.heads, b * self.heads
        if self.new_order:  # all queries, then all keys, then all values; each split into heads
            q, k, v = (part.reshape(n, d, -1) for part in qkv.chunk(3, dim=1))
        else:  # head by head, each head holding its query, key and value
            q, k, v = qkv.reshape(n, 3 * d, -1).split(d, dim=1)
        logits = torch.einsum("ndi,ndj->nij", q, k) / math.sqrt(d)
        weights = logits.to(torch.promote_types(q.dtype, torch.float32)).softmax(dim=-1).to(q.dtype)
        mixed = torch.einsum("nij,ndj->ndi", weights, v).reshape(b, c, -1)
        return (flat + self.proj_out(mixed)).reshape(b, c, height, width)


class _Down(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class _Up(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Steps(nn.Sequential):
    """A sequence whose ResBlocks also receive the time embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _Res) else layer(x)
        return x


class ReferenceADM(nn.Module):
    def __init__(self, cfg: ADMConfig):
        super().__init__()
        mc, emb = cfg.model_channels, 4 * cfg.model_channels
        self.mc = mc
        attn_ds = {cfg.image_size // r for r in cfg.attention_resolutions}

        def res(ch, out=None, resample=None):
            return _Res(ch, emb, out, film=cfg.use_scale_shift_norm, resample=resample)

        def attn(ch):
            heads = cfg.num_heads if cfg.num_head_channels == -1 else ch // cfg.num_head_channels
            return _Attn(ch, heads, cfg.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([_Steps(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(_Steps(*layers))
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.input_blocks.append(_Steps(res(ch, resample="down") if cfg.resblock_updown else _Down(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = _Steps(res(ch), attn(ch), res(ch))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), cfg.channel_mult[level] * mc)]
                ch = cfg.channel_mult[level] * mc
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(res(ch, resample="up") if cfg.resblock_updown else _Up(ch))
                    ds //= 2
                self.output_blocks.append(_Steps(*layers))
        self.out = nn.Sequential(_Norm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x, t):
        emb = self.time_embed(_sinusoid(t, self.mc).to(x.dtype))
        h, stack = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            stack.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, stack.pop()], dim=1), emb)
        return self.out(h)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter random: weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):  # a norm's scale
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()
