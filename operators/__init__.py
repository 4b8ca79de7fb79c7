"""Measurement operators (installed as posterior_diffusion.operators).

op = get_operator("gaussian_blur", kernel_size=61, sigma=3.0, noise_sigma=0.05)
y = op.measure(x, generator=g)   # A(x) + noise;  op(x) is A(x), noiseless and differentiable
"""

from . import (  # noqa: F401  (registers the operators)
    blur,
    denoise,
    hdr,
    inpaint,
    interferometry,
    phase_retrieval,
    super_resolution,
)
from .base import DiagonalOperator, LinearOperator, Operator, SVDOperator
from .blur import Blur, GaussianBlur, MotionBlur, UniformBlur
from .denoise import Denoise
from .hdr import HighDynamicRange
from .inpaint import InpaintBox, InpaintRandom
from .kernels import gaussian_kernel, motion_kernel, uniform_kernel
from .noise import GaussianNoise, NoiseModel, PoissonNoise, make_noise
from .phase_retrieval import PhaseRetrieval
from .registry import (
    describe_capable,
    from_config,
    get_operator,
    list_operators,
    operator_class,
    operator_params,
    register_operator,
)
from .super_resolution import SuperResolution

__all__ = [
    "Blur",
    "Denoise",
    "DiagonalOperator",
    "GaussianBlur",
    "GaussianNoise",
    "HighDynamicRange",
    "InpaintBox",
    "InpaintRandom",
    "LinearOperator",
    "MotionBlur",
    "NoiseModel",
    "Operator",
    "PhaseRetrieval",
    "PoissonNoise",
    "SVDOperator",
    "SuperResolution",
    "UniformBlur",
    "describe_capable",
    "from_config",
    "gaussian_kernel",
    "get_operator",
    "list_operators",
    "make_noise",
    "motion_kernel",
    "operator_class",
    "operator_params",
    "register_operator",
    "uniform_kernel",
]
