"""`sample_posterior`: the one-call Python entry point.

res = sample_posterior(y, op, prior=None, sampler="dps", num_samples=4, seed=0)
res.samples (B, S, C, H, W); res.mean, res.std (B, C, H, W); res.nfe; res.seconds; res.config
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from posterior_diffusion.operators import Operator, get_operator
from posterior_diffusion.priors import DiffusionPrior, default_prior_name, load_prior, resolve_dtype
from posterior_diffusion.samplers import Sampler, get_sampler
from posterior_diffusion.samplers.base import validate_measurement
from posterior_diffusion.tensor_utils import as_batch, sample_moments


@dataclass
class PosteriorResult:
    """Posterior samples and their summaries, float32 on the CPU.

    samples: (B, S, C, H, W) in about [-1, 1] ((S, C, H, W) if y was one unbatched measurement);
    mean, std: per-pixel posterior mean and standard deviation over the S samples, (B, C, H, W) (or (C, H, W));
    std is 0 when S = 1. nfe: network evaluations per sample; seconds: wall time of the sampling;
    config: every setting needed to reproduce the run; extras: sampler outputs such as a kernel estimate.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    nfe: int
    seconds: float
    config: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_device(op: Operator, device: torch.device) -> Operator:
    """`op` if its buffers are already on `device`, else a copy moved there: the caller's operator (e.g. on the
    CPU, where it keeps measuring with CPU generators) is never moved behind its back."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if all(b.device == device for b in op.buffers()):
        return op
    return copy.deepcopy(op).to(device)


def sample_posterior(
    y: torch.Tensor,
    op: Operator | str,
    prior: DiffusionPrior | str | None = None,
    sampler: Sampler | str = "dps",
    num_samples: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    image_shape: tuple[int, ...] | None = None,
    callback=None,
    measurement_ids=None,
    **sampler_options,
) -> PosteriorResult:
    """Draw `num_samples` samples of p(x | y) for each measurement in y.

    Args:
        y: (B, *op.measurement_shape) or one unbatched measurement, finite; image-like measurements in [-1, 1].
        op: an operator (see `posterior_diffusion.operators`) or the name of one with default settings.
        prior: a DiffusionPrior, a `load_prior` spec, or None for the built-in prior matching the channels.
        sampler: a Sampler or a registered name; `sampler_options` go to its config (e.g. steps, step_size, preset).
        num_samples: samples per measurement (S).
        batch_size: chains per network call (default: all B * S at once).
        seed: chain (b, s) is seeded from (seed, b, s): results do not depend on batch_size.
        measurement_ids: integers replacing b in that seed (e.g. image indices of a data set), so that a
            measurement's samples do not depend on which other measurements share the call.
        device: default cuda when available, else cpu. dtype: the network's dtype (float32, float16, bfloat16).
        image_shape: (C, H, W) of x; default op.image_shape(measurement shape).
        callback: called after each sampler step with a dict {"i", "t", "x", "x0_hat", ...}.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype)
    if isinstance(op, str):
        op = get_operator(op)
    if not isinstance(op, Operator):
        raise TypeError(f"op must be an Operator or an operator name, got {type(op).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if isinstance(sampler, str):
        sampler = get_sampler(sampler, **sampler_options)
    elif sampler_options:
        raise ValueError("sampler options are given to get_sampler(...) when a Sampler object is passed")

    y, unbatched = as_batch(y, op.measurement_ndim, "y")
    shape = tuple(image_shape) if image_shape is not None else tuple(op.image_shape(tuple(y.shape[1:])))
    validate_measurement(y, op, shape)

    prior_spec = (
        prior if isinstance(prior, str) else ("builtin:" + default_prior_name(shape[0], op) if prior is None else None)
    )
    prior = load_prior(prior_spec if prior_spec is not None else prior, device=device, dtype=dtype)
    prior.check_image_shape(shape)
    op = on_device(op, device)
    y = op.restrict(y.to(device))

    start = time.perf_counter()
    out = sampler(
        prior,
        op,
        y,
        num_samples=num_samples,
        seed=seed,
        batch_size=batch_size,
        image_shape=shape,
        callback=callback,
        progress=progress,
        measurement_ids=measurement_ids,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    samples = out.samples.cpu()
    mean, std = sample_moments(samples)
    extras = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.extras.items()}
    if unbatched:
        samples, mean, std = samples[0], mean[0], std[0]
        extras = {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in extras.items()}
    config = {
        "operator": op.to_config(),
        "sampler": sampler.to_config(),
        "prior": prior_spec if prior_spec is not None else type(prior).__name__,
        "image_shape": list(shape),
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(device),
        "dtype": str(getattr(prior, "dtype", torch.float32)).replace("torch.", ""),
        "versions": _versions(),
    }
    return PosteriorResult(samples, mean, std, out.nfe, seconds, config, extras)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import diffusers

    return {
        "posterior_diffusion": version("posterior_diffusion"),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }
