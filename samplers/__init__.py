"""Posterior samplers (installed as posterior_diffusion.samplers).

sampler = get_sampler("dps", steps=1000, step_size=0.5)
out = sampler(prior, op, y, num_samples=4, seed=0)   # out.samples: (B, S, C, H, W)

A new sampler is one module here (a frozen config whose budget is `steps`, `@register_sampler("name")`,
SMOKE_OPTIONS and EXACT_OPTIONS) plus its import below, which registers it.
"""

from . import daps, ddnm, ddrm, diffpir, dps, gibbs_ddrm, mcgdiff, pigdm, pnp_ula, red_diff, resample  # noqa: F401  (registers the samplers)
from .base import (
    DivergenceError,
    NonFiniteError,
    Sampler,
    SamplerOutput,
    get_sampler,
    list_samplers,
    register_preset,
    register_sampler,
    sampler_applies,
    sampler_class,
    sampler_from_config,
)
from .dps import DPS, DPSConfig
from .unconditional import sample_unconditional

__all__ = [
    "DPS",
    "DPSConfig",
    "DivergenceError",
    "NonFiniteError",
    "Sampler",
    "SamplerOutput",
    "get_sampler",
    "list_samplers",
    "register_preset",
    "register_sampler",
    "sample_unconditional",
    "sampler_applies",
    "sampler_class",
    "sampler_from_config",
]
