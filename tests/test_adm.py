"""guided-diffusion (ADM) checkpoints: the converted UNet2DModel computes what ADM's UNetModel computes.

The reference below is an independent re-implementation of the published architecture (Dhariwal & Nichol
2021; openai/guided-diffusion unet.py), written from its description: sinusoidal timestep embedding (cos
then sin), ResBlocks with FiLM (scale-shift) conditioning and up/down-sampling inside the block, attention
blocks with the legacy (per-head q, k, v) and new (q, k, v then heads) qkv layouts, GroupNorm in float32.
Its parameters carry ADM's names, so its state_dict is an ADM checkpoint. All parameters are random (no
zero-initialised output layers), so every weight matters to the comparison.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posterior_diffusion.cli import main
from posterior_diffusion.priors import load_prior
from posterior_diffusion.priors.adm import (
    ADM_PRESETS,
    ADMConfig,
    Float32GroupNorm,
    expected_state_shapes,
    unet_config,
)

# The reference ADM network (guided-diffusion layout and parameter names)


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


def _randomise(model: nn.Module, seed: int) -> nn.Module:
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


# reduced-size versions of the two presets' layouts (32x32 images, widths 32..96, 16-channel heads)
LAYOUTS = {
    # adm-ffhq-256: one ResBlock per level, attention at a single inner level, learned sigma, legacy qkv
    "ffhq": dataclasses.replace(
        ADM_PRESETS["adm-ffhq-256"], image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_head_channels=16
    ),
    # adm-imagenet-256-uncond: two ResBlocks per level, attention at the inner levels (4 and 6 heads)
    "imagenet": dataclasses.replace(
        ADM_PRESETS["adm-imagenet-256-uncond"],
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2, 3),
        attention_resolutions=(16, 8),
        num_head_channels=16,
    ),
    # the other flags: conv resampling, additive time embedding, new qkv order, fixed heads, no sigma
    "plain": ADMConfig(
        image_size=32,
        model_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2, 2),
        attention_resolutions=(16,),
        num_heads=2,
        use_new_attention_order=True,
    ),
}


def _checkpoint(tmp_path, name, suffix=".pt"):
    """A random reference network of layout `name` saved as an ADM state dict; returns (path, network)."""
    cfg = LAYOUTS[name]
    torch.manual_seed(0)
    ref = _randomise(ReferenceADM(cfg), seed=1)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(ref.state_dict(), path)
    else:
        torch.save(ref.state_dict(), path)
    return path, ref


def _inputs(cfg, batch=2):
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    return x_t, torch.tensor([3, 917][:batch])


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_converted_unet_matches_the_reference_forward_pass(tmp_path, name):
    path, ref = _checkpoint(tmp_path, name)
    cfg = LAYOUTS[name]
    prior = load_prior(path, arch=cfg)
    x_t, t = _inputs(cfg)
    with torch.no_grad():
        want32 = ref(x_t, t)
        got32 = prior.net(x_t, t).sample
        assert (got32 - want32).abs().max() < 1e-4
        pred = prior.predict(x_t, t)  # the prior splits eps and the learned variance the same way
        c = cfg.in_channels
        assert torch.equal(pred.eps, got32[:, :c])
        assert (pred.variance_values is None) == (not cfg.learn_sigma)
        want64 = ref.double()(x_t.double(), t)  # the mapping is exact: float64 agrees to rounding
        got64 = prior.net.double()(x_t.double(), t).sample
        assert (got64 - want64).abs().max() < 1e-10 * want64.abs().max()
    assert prior.variance_type == ("learned_range" if cfg.learn_sigma else "fixed_large")
    assert prior.prediction_type == "epsilon" and prior.num_timesteps == 1000


def test_legacy_qkv_order_matters(tmp_path):
    path, ref = _checkpoint(tmp_path, "ffhq")
    wrong = dataclasses.replace(LAYOUTS["ffhq"], use_new_attention_order=True)
    x_t, t = _inputs(LAYOUTS["ffhq"])
    with torch.no_grad():
        want = ref(x_t, t)
        diff = (load_prior(path, arch=wrong).net(x_t, t).sample - want).abs().max()
    assert diff > 1e-2 * want.abs().max()


@pytest.mark.parametrize("preset", list(ADM_PRESETS))
def test_presets_have_the_full_size_reference_layout(preset):
    """The full-size reference network (built without memory) has exactly the keys and shapes we expect."""
    with torch.device("meta"):
        ref = ReferenceADM(ADM_PRESETS[preset])
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == expected_state_shapes(ADM_PRESETS[preset])
    config = unet_config(ADM_PRESETS[preset])
    assert config["attn_norm_num_groups"] == 32 and config["resnet_time_scale_shift"] == "scale_shift"
    assert config["block_out_channels"][-1] == 4 * ADM_PRESETS[preset].model_channels


def test_imagenet_preset_has_the_published_size():
    """ADM ImageNet 256 has 554M parameters with its 1000x1024 class embedding (Dhariwal & Nichol, Table 10)."""
    params = sum(math.prod(s) for s in expected_state_shapes(ADM_PRESETS["adm-imagenet-256-uncond"]).values())
    assert round((params + 1000 * 1024) / 1e6) == 554


def test_safetensors_checkpoint_loads(tmp_path):
    path, ref = _checkpoint(tmp_path, "ffhq", ".safetensors")
    x_t, t = _inputs(LAYOUTS["ffhq"])
    with torch.no_grad():
        assert (load_prior(path, arch=LAYOUTS["ffhq"]).net(x_t, t).sample - ref(x_t, t)).abs().max() < 1e-4


class Opaque:
    """Not a tensor: torch.save pickles a reference to this class."""


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "extra": Opaque()}, path)
    with pytest.raises(ValueError, match=r"model\.pt' contains pickled code, not a plain state dict"):
        load_prior(path, arch="adm-ffhq-256")


def test_checkpoint_of_another_architecture_names_the_keys_and_the_fitting_preset(tmp_path, monkeypatch):
    path, _ = _checkpoint(tmp_path, "imagenet")
    with pytest.raises(ValueError, match=r"does not match preset 'adm-ffhq-256': missing keys .*unexpected keys"):
        load_prior(path, arch="adm-ffhq-256")
    with pytest.raises(ValueError, match="matches none of the presets"):
        load_prior(path, arch="adm-imagenet-256-uncond")  # the right layout at another width
    monkeypatch.setitem(ADM_PRESETS, "tiny-ffhq", LAYOUTS["ffhq"])
    monkeypatch.setitem(ADM_PRESETS, "tiny-imagenet", LAYOUTS["imagenet"])
    with pytest.raises(ValueError, match="it matches preset 'tiny-imagenet': use arch='tiny-imagenet'"):
        load_prior(path, arch="tiny-ffhq")


def test_checkpoint_without_or_with_unknown_arch_lists_the_presets(tmp_path):
    path, _ = _checkpoint(tmp_path, "ffhq")
    with pytest.raises(ValueError, match=r"need arch=PRESET .*adm-ffhq-256, adm-imagenet-256-uncond"):
        load_prior(path)
    with pytest.raises(ValueError, match="unknown ADM architecture 'ffhq'; valid: adm-ffhq-256, adm-imagenet"):
        load_prior(path, arch="ffhq")


def test_bfloat16_keeps_group_norms_in_float32(tmp_path):
    path, _ = _checkpoint(tmp_path, "ffhq")
    x_t, t = _inputs(LAYOUTS["ffhq"])
    full = load_prior(path, arch=LAYOUTS["ffhq"]).eps(x_t, t)
    prior = load_prior(path, arch=LAYOUTS["ffhq"], dtype="bfloat16")
    norms = [m for m in prior.net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is Float32GroupNorm and m.weight.dtype == torch.float32 for m in norms)
    assert prior.dtype == torch.bfloat16 and prior.net.conv_in.weight.dtype == torch.bfloat16
    half = prior.eps(x_t, t)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).norm() < 0.05 * full.norm()


def test_cli_convert_writes_a_folder_that_loads_as_the_same_prior(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ADM_PRESETS, "tiny-ffhq", LAYOUTS["ffhq"])
    path, _ = _checkpoint(tmp_path, "ffhq")
    out = tmp_path / "converted"
    assert main(["convert", str(path), "--arch", "tiny-ffhq", "--out", str(out)]) == 0
    assert (out / "model_index.json").exists() and list((out / "unet").glob("*.safetensors"))
    x_t, t = _inputs(LAYOUTS["ffhq"])
    folder, direct = load_prior(out), load_prior(path, arch="tiny-ffhq")
    assert torch.equal(folder.eps(x_t, t), direct.eps(x_t, t))
    assert folder.variance_type == "learned_range"
    assert main(["convert", str(path), "--arch", "tiny-ffhq", "--out", str(out)]) == 1  # not empty
    assert "--overwrite" in capsys.readouterr().err
    argv = ["convert", str(path), "--arch", "tiny-ffhq", "--out", str(out), "--overwrite", "--dtype", "float16"]
    assert main(argv) == 0
    from safetensors import safe_open

    with safe_open(next((out / "unet").glob("*.safetensors")), "pt") as f:
        assert f.get_tensor("conv_in.weight").dtype == torch.float16  # stored in float16 ...
    assert load_prior(out).net.conv_in.weight.dtype == torch.float32  # ... loaded in the dtype asked for


def test_cli_restore_with_a_checkpoint_prior(tmp_path, monkeypatch):
    import json

    from posterior_diffusion.images import save_image

    monkeypatch.setitem(ADM_PRESETS, "tiny-plain", LAYOUTS["plain"])
    path, _ = _checkpoint(tmp_path, "plain")
    save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "x.png")
    argv = ["restore", str(tmp_path / "x.png"), "--simulate", "--operator", "denoise", "--sampler", "ddrm"]
    argv += ["--steps", "2", "--num-samples", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    assert main([*argv, "--prior", str(path), "--prior-arch", "tiny-plain"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["prior"] == str(path) and run["prior_arch"] == "tiny-plain"


def test_random_init_prior_has_the_architecture_and_times_with_bench_speed(tmp_path, monkeypatch, capsys):
    from posterior_diffusion.priors import adm

    cfg = LAYOUTS["ffhq"]
    prior = adm.random_adm_prior(cfg, "bfloat16", seed=3)
    assert prior.variance_type == "learned_range" and prior.dtype == torch.bfloat16
    assert all(m.weight.dtype == torch.float32 for m in prior.net.modules() if isinstance(m, nn.GroupNorm))
    again = adm.random_adm_prior(cfg, "bfloat16", seed=3)
    assert torch.equal(prior.net.conv_in.weight, again.net.conv_in.weight)  # seeded
    x_t, t = _inputs(cfg)
    assert torch.isfinite(prior.eps(x_t, t)).all()

    monkeypatch.setitem(adm.ADM_PRESETS, "adm-tiny", cfg)
    argv = ["bench", "speed", "--random-init", "--prior", "adm-tiny", "--size", "32", "--out", str(tmp_path)]
    assert main([*argv, "--methods", "ddrm", "--steps", "2", "--batch-sizes", "1", "--repeats", "1"]) in (0, None)
    assert "| ddrm | float32 | contiguous | eager | 1 | 2 | forward |" in (tmp_path / "speed.md").read_text()
    assert main(["bench", "speed", "--random-init", "--out", str(tmp_path)]) not in (0, None)
    assert "--random-init needs --prior" in capsys.readouterr().err
