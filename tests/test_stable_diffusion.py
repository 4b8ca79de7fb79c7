"""Stable Diffusion folders (UNet2DConditionModel + AutoencoderKL + CLIP text encoder) load offline as latent priors
bound to the empty prompt, whose embedding is computed once and cached; latent samplers run on them."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.images import load_image
from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import LatentPrior, load_prior
from posterior_diffusion.priors.loading import ASSETS
from posterior_diffusion.priors.stable_diffusion import EmptyPromptUNet, cache_dir

transformers = pytest.importorskip("transformers", reason="Stable Diffusion folders need the [sd] extra")


def _tokenizer(folder):
    """A CLIP tokenizer with a five-word vocabulary (the real one needs a download)."""
    folder.mkdir(parents=True)
    words = ["<|startoftext|>", "<|endoftext|>", "a", "b</w>", "ab</w>"]
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\na b</w>\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=7)
    tokenizer.save_pretrained(folder)


def build_sd_folder(folder):
    """A tiny random StableDiffusionPipeline-layout folder (sizes from diffusers' own fast tests)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    ).save_pretrained(folder / "unet")
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    with torch.no_grad():  # a scaling factor that whitens this random autoencoder's latents, as SD's 0.18215 does
        image = load_image(ASSETS / "images" / "kodim23_crop128.png", 3)[None]
        vae.register_to_config(scaling_factor=1 / float(vae.encode(image).latent_dist.mode().std()))
    vae.save_pretrained(folder / "vae")
    config = transformers.CLIPTextConfig(
        vocab_size=5, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=7, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    transformers.CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    _tokenizer(folder / "tokenizer")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        folder / "scheduler"
    )
    index = {
        "_class_name": "StableDiffusionPipeline",
        **{k: ["diffusers", c] for k, c in [("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")]},
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def sd_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERIOR_DIFFUSION_CACHE", str(tmp_path / "cache"))
    return build_sd_folder(tmp_path / "sd")


def test_sd_folder_is_a_latent_prior_conditioned_on_the_empty_prompt(sd_folder, monkeypatch):
    prior = load_prior(sd_folder)
    assert isinstance(prior, LatentPrior) and isinstance(prior.net, EmptyPromptUNet)
    assert prior.latent_shape((3, 16, 16)) == (4, 8, 8)
    # the cached embedding is CLIP's output for "" (padded to the tokenizer's length)
    (cached,) = (cache_dir() / "empty_prompt").glob("*.safetensors")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    ids = tokenizer("", padding="max_length", max_length=7, return_tensors="pt").input_ids
    expected = encoder(ids)[0]
    assert torch.allclose(prior.net.embedding, expected, atol=1e-6)
    z = torch.randn(2, 4, 8, 8)
    eps = prior.eps(z, 500)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    direct = unet(z, torch.tensor([500, 500]), encoder_hidden_states=expected.expand(2, -1, -1)).sample
    assert torch.allclose(eps, direct, atol=1e-5)
    # later loads use the cache: transformers is not needed
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert torch.equal(load_prior(sd_folder).net.embedding, prior.net.embedding)
    cached.unlink()
    with pytest.raises(ValueError, match=r"needs transformers .*posterior_diffusion\[sd\]"):
        load_prior(sd_folder)
    shutil.rmtree(sd_folder / "text_encoder")
    with pytest.raises(ValueError, match="no text_encoder/ folder"):
        load_prior(sd_folder)


def test_sd_folder_with_a_missing_component_is_a_clear_error(sd_folder):
    shutil.rmtree(sd_folder / "vae")
    with pytest.raises(ValueError, match="lists a 'vae' component but has no vae/ folder"):
        load_prior(sd_folder)
    shutil.rmtree(sd_folder / "unet")
    with pytest.raises(ValueError, match="lists a 'unet' component but has no unet/ folder"):
        load_prior(sd_folder)


@pytest.mark.parametrize("sampler,options", [("dps", {"steps": 6}), ("resample", {"steps": 9, "latent_max_iters": 5})])
def test_latent_samplers_run_on_a_stable_diffusion_prior(sd_folder, sampler, options):
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    op = get_operator("inpaint_box", image_size=16, box_size=6, noise_sigma=0.05)
    y = op.measure(x, torch.Generator().manual_seed(0))
    res = sample_posterior(y, op, prior=str(sd_folder), sampler=sampler, num_samples=2, progress=False, **options)
    assert res.samples.shape == (1, 2, 3, 16, 16) and torch.isfinite(res.samples).all()
