"""Stable Diffusion folders as unconditional latent priors (Rombach et al., CVPR 2022).

A Stable Diffusion pipeline folder (model_index.json with unet: UNet2DConditionModel, vae: AutoencoderKL,
text_encoder + tokenizer: CLIP, scheduler) becomes a `LatentPrior` whose UNet is conditioned on the embedding of
the empty prompt "", the unconditional branch of classifier-free guidance, as PSLD and ReSample use SD.

The embedding is computed once with `transformers` (an extra: pip install "posterior_diffusion[sd]") and cached in
$POSTERIOR_DIFFUSION_CACHE (default ~/.cache/posterior_diffusion) under a key made of the text encoder's
config and weight-file sizes, so later loads need neither transformers nor the text encoder. A folder may also ship
the embedding itself as `empty_prompt_embedding.safetensors` (key "embedding", shape (1, L, D)).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

EMBEDDING_FILE = "empty_prompt_embedding.safetensors"


class EmptyPromptUNet(nn.Module):
    """A UNet2DConditionModel called like a UNet2DModel: `net(x_t, t)` with the cached empty-prompt embedding
    (1, L, D) as the cross-attention context of every sample (expanded, not copied)."""

    def __init__(self, unet, embedding: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("embedding", embedding.to(unet.dtype), persistent=False)

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, x_t: torch.Tensor, t: torch.Tensor):
        context = self.embedding.expand(x_t.shape[0], -1, -1)
        return self.unet(x_t, t, encoder_hidden_states=context)


def cache_dir() -> Path:
    return Path(os.environ.get("POSTERIOR_DIFFUSION_CACHE", Path.home() / ".cache" / "posterior_diffusion"))


def empty_prompt_embedding(folder: Path) -> torch.Tensor:
    """The text encoder's embedding of "" (1, L, D) float32: from the folder's own file, the cache, or computed
    (and cached) with transformers' CLIPTokenizer + CLIPTextModel."""
    shipped = folder / EMBEDDING_FILE
    if shipped.exists():
        return load_file(shipped)["embedding"]
    cached = cache_dir() / "empty_prompt" / f"{_text_encoder_key(folder)}.safetensors"
    if cached.exists():
        return load_file(cached)["embedding"]
    embedding = _encode_empty_prompt(folder)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    save_file({"embedding": embedding}, tmp)
    tmp.replace(cached)
    return embedding


def _text_encoder_key(folder: Path) -> str:
    """A cache key for the text encoder: its config and the names and sizes of its weight files."""
    encoder = folder / "text_encoder"
    if not encoder.is_dir():
        raise ValueError(f"'{folder}' has no text_encoder/ folder (and no {EMBEDDING_FILE}) for the empty prompt")
    digest = hashlib.sha256((encoder / "config.json").read_bytes())
    for weights in sorted(encoder.glob("*.safetensors")) + sorted(encoder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:32]


def _encode_empty_prompt(folder: Path) -> torch.Tensor:
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ValueError(
            f"'{folder}' is a Stable Diffusion folder: computing its empty-prompt embedding needs transformers "
            f'(pip install "posterior_diffusion[sd]"), or put the embedding in {folder / EMBEDDING_FILE}'
        ) from None
    if not (folder / "tokenizer").is_dir():
        raise ValueError(f"'{folder}' has no tokenizer/ folder for the empty prompt")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32).eval()
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.inference_mode():
        return encoder(ids)[0].float().contiguous()


def load_conditional_unet(folder: Path, dtype: torch.dtype) -> EmptyPromptUNet:
    """The folder's UNet2DConditionModel in `dtype`, bound to the empty-prompt embedding."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    embedding = empty_prompt_embedding(folder)
    if embedding.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(
            f"'{folder}': the empty-prompt embedding has width {embedding.shape[-1]} but the UNet attends to "
            f"{unet.config.cross_attention_dim}-wide contexts"
        )
    return EmptyPromptUNet(unet, embedding)
