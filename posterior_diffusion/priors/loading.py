"""`load_prior(spec)`: one entry point for every prior format.

"builtin:<name>"   a prior shipped in the package's assets (no download)
"<folder>"         a diffusers DDPMPipeline folder (model_index.json + unet/ + scheduler/) or a bare
                   UNet2DModel folder (config.json + weights; DDPM linear schedule assumed)
"<hub id>"         the same from the Hugging Face hub cache (offline use works once cached)
"<file.pt>"        a guided-diffusion (ADM) state dict (.pt/.pth/.safetensors) with arch="adm-ffhq-256",
                   "adm-imagenet-256-uncond" or an ADMConfig, converted to a UNet2DModel (see priors/adm.py)
a DiffusionPrior   returned as is (moved to device/dtype)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from importlib.resources import files
from pathlib import Path

import torch

from posterior_diffusion.images import IMAGE_SUFFIXES

from .base import DiffusionPrior, linear_alphas_cumprod, resolve_dtype
from .latent import LatentPrior
from .stable_diffusion import load_conditional_unet
from .unet import UNetPrior

ASSETS = Path(str(files("posterior_diffusion.assets")))
BUILTIN_PRIORS = {  # name -> (folder under assets/priors, one-line description)
    "natural-rgb": ("natural-rgb", "fully convolutional pixel prior for RGB natural images (any size from 8 px)"),
    "natural-gray": ("natural-gray", "fully convolutional pixel prior for grayscale natural images"),
    "natural-rgb-latent": (
        "natural-rgb-latent",
        "latent prior for RGB natural images: AutoencoderKL (factor 4, 3 latent channels) + latent UNet",
    ),
    "black-hole": (
        "black-hole",
        "64x64 single-channel prior of procedural black-hole images (rings, crescents; the interferometry prior)",
    ),
}


def builtin_priors() -> dict[str, str]:
    """Built-in priors that are present in this installation: name -> description."""
    return {name: desc for name, (folder, desc) in BUILTIN_PRIORS.items() if (ASSETS / "priors" / folder).is_dir()}


def default_prior_name(channels: int, op=None) -> str:
    """The built-in prior for an operator that names one (`op.default_prior`: interferometry -> black-hole),
    else for images with `channels` channels (3: natural-rgb, 1: natural-gray)."""
    if getattr(op, "default_prior", None):
        return op.default_prior
    names = {3: "natural-rgb", 1: "natural-gray"}
    if channels not in names:
        raise ValueError(f"no built-in prior for {channels}-channel images; pass prior=... (a folder or hub id)")
    return names[channels]


def load_prior(spec, device=None, dtype=None, scaling_factor: float | None = None, arch=None) -> DiffusionPrior:
    """Load a diffusion prior; see the module docstring for the accepted `spec`s.

    Args:
        device: where the prior runs (default cpu).
        dtype: the network's dtype: torch.float32 (default, whatever the stored weights are), float16 or
            bfloat16 (names accepted). The schedule and all outputs stay float32.
        scaling_factor: latent priors only: the latent scaling (default: see `_latent_prior`).
        arch: guided-diffusion checkpoint files only: a name in `adm.ADM_PRESETS` or an `adm.ADMConfig`.
    """
    requested = resolve_dtype(dtype)
    dtype = requested or torch.float32
    if isinstance(spec, DiffusionPrior):
        return _converted(spec, device, requested)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"prior must be a DiffusionPrior or a string, got {type(spec).__name__}")
    if Path(spec).suffix.lower() in IMAGE_SUFFIXES and Path(spec).is_file():
        raise ValueError(
            f"'{spec}' is an image file, not a prior; a prior is builtin:NAME, a diffusers folder, a hub id or a "
            "guided-diffusion checkpoint (.pt with arch=... / --prior-arch)"
        )
    with _quiet_diffusers(spec):
        if str(spec).startswith("builtin:"):
            prior = _load_builtin(str(spec)[len("builtin:") :], dtype)
        elif arch is not None or Path(spec).is_file():  # a guided-diffusion checkpoint (a folder with arch: an error)
            from .adm import load_adm_checkpoint

            prior = load_adm_checkpoint(spec, arch, dtype)
        elif Path(spec).is_dir():
            prior = _load_folder(Path(spec), dtype, scaling_factor)
        else:
            prior = _load_hub(str(spec), dtype, scaling_factor)
    return prior.to(device or prior.device)


def _converted(prior: DiffusionPrior, device, dtype: torch.dtype | None) -> DiffusionPrior:
    """`prior` itself when it is on `device` (None: anywhere) with its network in `dtype` (None: any), else a
    converted copy: the caller's prior object is never moved or cast behind its back."""
    target = torch.device(device) if device is not None else prior.device
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    cast = dtype is not None and isinstance(prior, UNetPrior) and prior.net.dtype != dtype
    if prior.device == target and not cast:
        return prior
    prior = copy.deepcopy(prior)
    if cast:
        prior.net.to(dtype)
    return prior.to(target)


@contextlib.contextmanager
def _quiet_diffusers(spec):
    """Silence diffusers' log lines while a prior loads (e.g. "Defaulting to unsafe serialization" before a missing
    weights file, notes on float32 modules): what matters reaches the user as our own one-line error."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL + 10)
    try:
        yield
    except OSError as err:  # diffusers' missing-file errors; one line naming the folder
        raise ValueError(f"cannot load the prior '{spec}': {str(err).strip().splitlines()[0]}") from None
    finally:
        diffusers_logging.set_verbosity(level)


def _load_builtin(name: str, dtype: torch.dtype) -> DiffusionPrior:
    if name not in BUILTIN_PRIORS:
        raise ValueError(f"unknown built-in prior {name!r}; valid: {', '.join(sorted(BUILTIN_PRIORS))}")
    folder = ASSETS / "priors" / BUILTIN_PRIORS[name][0]
    if not folder.is_dir():
        raise FileNotFoundError(f"built-in prior {name!r} is not in this installation (expected {folder})")
    return _load_folder(folder, dtype)


AUTOENCODER_KEYS = ("vqvae", "vae")  # the component names of LDM and Stable Diffusion pipelines


def _load_unet(folder: Path, dtype: torch.dtype):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)


UNET_LOADERS = {  # model_index.json class of the "unet" component -> loader(folder, dtype)
    "UNet2DModel": _load_unet,
    "UNet2DConditionModel": load_conditional_unet,  # Stable Diffusion, bound to the empty prompt
}
LATENT_STD_RANGE = (0.25, 4.0)  # scaled latents of a natural test image must have a std in this range


def _load_folder(folder: Path, dtype: torch.dtype, scaling_factor: float | None = None) -> DiffusionPrior:
    """A diffusers folder; the UNet is loaded in `dtype` whatever the stored weights' precision.

    A pipeline with an autoencoder component ("vqvae" or "vae") is a latent prior (see `_latent_prior`).
    """
    if (folder / "model_index.json").exists():
        index = json.loads((folder / "model_index.json").read_text())
        unet_entry = index.get("unet")
        if not unet_entry or unet_entry[1] not in UNET_LOADERS:
            raise ValueError(
                f"'{folder}' is a {index.get('_class_name', 'diffusers')} pipeline without a UNet2DModel or "
                "UNet2DConditionModel 'unet'; priors need a DDPMPipeline, LDMPipeline or StableDiffusionPipeline-"
                "style folder (unet/ + scheduler/ [+ vqvae/ or vae/])"
            )
        if not (folder / "unet").is_dir():
            raise ValueError(f"'{folder}' lists a 'unet' component but has no unet/ folder")
        unet = UNET_LOADERS[unet_entry[1]](folder, dtype)
        scheduler = _scheduler_config(folder / "scheduler")
    elif (folder / "config.json").exists():
        index = {}
        from diffusers import UNet2DModel

        config = json.loads((folder / "config.json").read_text())
        if config.get("_class_name") != "UNet2DModel":
            raise ValueError(f"'{folder}' holds a {config.get('_class_name', 'unknown')} model, not a UNet2DModel")
        unet = UNet2DModel.from_pretrained(folder, torch_dtype=dtype)
        scheduler = _scheduler_config(folder.parent / "scheduler") if (folder.parent / "scheduler").is_dir() else {}
    else:
        raise ValueError(
            f"'{folder}' is not a diffusion model folder: expected model_index.json (a diffusers pipeline) "
            "or config.json of a UNet2DModel"
        )
    prior = UNetPrior(
        unet,
        _alphas_cumprod(scheduler),
        prediction_type=scheduler.get("prediction_type", "epsilon"),
        variance_type=scheduler.get("variance_type", "fixed_small"),
    )
    if any(key in index for key in AUTOENCODER_KEYS):
        return _latent_prior(folder, index, prior, scaling_factor)
    if scaling_factor is not None:
        raise ValueError(f"scaling_factor was given but '{folder}' is a pixel prior (no vqvae/ or vae/ component)")
    return prior


def _latent_prior(folder: Path, index: dict, latent: UNetPrior, scaling_factor: float | None) -> LatentPrior:
    """The autoencoder of an LDM-style folder, in float32. Latent scaling, in order: the `scaling_factor`
    argument; a "scaling_factor" entry of model_index.json (written by this package's `train`); 1.0 for an
    LDMPipeline (CompVis LDMs diffuse unscaled latents, and diffusers' LDMPipeline applies none); else the
    autoencoder config's `scaling_factor`."""
    from diffusers import AutoencoderKL, VQModel

    classes = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}
    key = next(k for k in AUTOENCODER_KEYS if k in index)
    name = index[key][1]
    if name not in classes:
        raise ValueError(f"'{folder}': autoencoder '{key}' is a {name}; supported: {', '.join(classes)}")
    if not (folder / key).is_dir():
        raise ValueError(f"'{folder}' lists a '{key}' component but has no {key}/ folder")
    autoencoder = classes[name].from_pretrained(folder, subfolder=key, torch_dtype=torch.float32)
    if scaling_factor is None:
        scaling_factor = index.get("scaling_factor")
    if scaling_factor is None:
        scaling_factor = 1.0 if index.get("_class_name") == "LDMPipeline" else autoencoder.config.scaling_factor
    if autoencoder.config.latent_channels != latent.net.config.in_channels:
        raise ValueError(
            f"'{folder}': the autoencoder makes {autoencoder.config.latent_channels}-channel latents but the UNet "
            f"takes {latent.net.config.in_channels} channels"
        )
    prior = LatentPrior(latent, autoencoder, scaling_factor)
    _check_latent_scale(prior, folder)
    return prior


def _check_latent_scale(prior: LatentPrior, folder: Path) -> None:
    """Refuse a scaling factor that does not bring a natural image's latents near unit variance (a wrong factor
    makes every sampler fail silently: LDM VQ-f4 models want 1.0, Stable Diffusion 0.18215)."""
    from posterior_diffusion.images import load_image

    image = load_image(ASSETS / "images" / "kodim23_crop128.png", prior.autoencoder.config.in_channels)
    with torch.inference_mode():
        std = float(prior.encode(image[None].to(prior.autoencoder.device)).std())
    low, high = LATENT_STD_RANGE
    if not low <= std <= high:
        raise ValueError(
            f"'{folder}': with scaling_factor {prior.scaling_factor:g} a test image's latents have std {std:.3g}, "
            f"far from 1; the diffusion was probably trained with about {prior.scaling_factor / std:.3g} "
            "(pass scaling_factor=...)"
        )


def _scheduler_config(folder: Path) -> dict:
    file = folder / "scheduler_config.json"
    if not file.exists():
        raise ValueError(f"missing scheduler config '{file}'")
    return json.loads(file.read_text())


def _alphas_cumprod(config: dict) -> torch.Tensor:
    """alpha_bar_t from a diffusers scheduler config (DDPM/DDIM family), via the scheduler class itself."""
    if not config:
        return linear_alphas_cumprod()
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    scheduler = DDPMScheduler(**{k: config[k] for k in keys if k in config})
    return scheduler.alphas_cumprod.float()


def _load_hub(repo_id: str, dtype: torch.dtype, scaling_factor: float | None = None) -> DiffusionPrior:
    """A hub id: use the local cache (works offline); otherwise try to download; a clear error if neither works."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, local_files_only=True)
    except (OSError, ValueError):  # not cached: try the network unless the user is offline
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ValueError(
                f"prior '{repo_id}' is not a folder, a built-in prior, or a hub model in the local cache "
                "(HF_HUB_OFFLINE is set, so nothing is downloaded)"
            ) from None
        try:
            path = snapshot_download(repo_id)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"prior '{repo_id}' is not a folder, a built-in prior, or a hub model that could be downloaded "
                f"({type(err).__name__}); check the name, or download it where there is network"
            ) from None
    return _load_folder(Path(path), dtype, scaling_factor)
