"""posterior_diffusion: sample p(x | y) for imaging inverse problems with pretrained diffusion priors.

    from posterior_diffusion import sample_posterior, get_operator
    op = get_operator("gaussian_blur", kernel_size=31, sigma=1.5, noise_sigma=0.05)
    res = sample_posterior(op.measure(x), op, num_samples=4)   # res.samples, res.mean, res.std
"""

__version__ = "0.1.0"

from posterior_diffusion.api import PosteriorResult, sample_posterior  # noqa: E402
from posterior_diffusion.operators import get_operator, list_operators  # noqa: E402
from posterior_diffusion.priors import GaussianMixturePrior, load_prior  # noqa: E402
from posterior_diffusion.samplers import get_sampler, list_samplers  # noqa: E402

__all__ = [
    "sample_posterior", "PosteriorResult", "get_operator", "list_operators", "load_prior", "GaussianMixturePrior",
    "get_sampler", "list_samplers", "__version__",
]
