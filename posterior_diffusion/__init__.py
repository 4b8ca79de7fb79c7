"""posterior_diffusion: sample p(x | y) for imaging inverse problems with pretrained diffusion priors.

from posterior_diffusion import sample_posterior, get_operator
op = get_operator("gaussian_blur", kernel_size=31, sigma=1.5, noise_sigma=0.05)
res = sample_posterior(op.measure(x), op, num_samples=4)   # res.samples, res.mean, res.std
"""

__version__ = "0.1.0"

from posterior_diffusion.api import PosteriorResult, sample_posterior
from posterior_diffusion.applications import load_applications
from posterior_diffusion.operators import get_operator, list_operators
from posterior_diffusion.priors import GaussianMixturePrior, load_prior
from posterior_diffusion.samplers import get_sampler, list_samplers

load_applications()  # tasks, baselines and presets of the installed applications join the registries

__all__ = [
    "GaussianMixturePrior",
    "PosteriorResult",
    "__version__",
    "get_operator",
    "get_sampler",
    "list_operators",
    "list_samplers",
    "load_prior",
    "sample_posterior",
]
