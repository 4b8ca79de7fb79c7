"""Diffusion priors: `load_prior`/`save_prior`, the denoiser contract, diffusers UNets and exact Gaussian mixtures."""

from .adm import ADM_PRESETS, ADMConfig, load_adm_checkpoint
from .base import PREDICTION_TYPES, DiffusionPrior, Prediction, linear_alphas_cumprod, resolve_dtype
from .gaussian_mixture import GaussianMixturePosterior, GaussianMixturePrior
from .latent import LatentPrior
from .loading import builtin_priors, default_prior_name, load_prior
from .saving import export_prior, save_prior
from .unet import UNetPrior

__all__ = [
    "ADM_PRESETS",
    "PREDICTION_TYPES",
    "ADMConfig",
    "DiffusionPrior",
    "GaussianMixturePosterior",
    "GaussianMixturePrior",
    "LatentPrior",
    "Prediction",
    "UNetPrior",
    "builtin_priors",
    "default_prior_name",
    "export_prior",
    "linear_alphas_cumprod",
    "load_adm_checkpoint",
    "load_prior",
    "resolve_dtype",
    "save_prior",
]
