"""guided-diffusion (ADM) checkpoints: the converted UNet2DModel computes what ADM's UNetModel computes.

The reference is tests/adm_reference.py, an independent re-implementation of the published architecture whose
parameters carry ADM's names, so its state_dict is an ADM checkpoint. All parameters are random (no
zero-initialised output layers), so every weight matters to the comparison.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
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
from tests.adm_reference import ReferenceADM, randomise

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
    ref = randomise(ReferenceADM(cfg), seed=1)
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
