"""`sample_posterior`: the one-call Python entry point.

res = sample_posterior(y, op, prior=None, sampler="auto", num_samples=4, seed=0)
res.samples (B, S, C, H, W); res.mean (the best posterior-mean estimate), res.std (B, C, H, W); res.nfe; res.seconds;
res.config
"""

from __future__ import annotations

import copy
import dataclasses
import math
import platform
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from posterior_diffusion import guards, shipped_calibrations
from posterior_diffusion.calibration import Calibration
from posterior_diffusion.operators import Operator, get_operator
from posterior_diffusion.operators.noise_estimate import with_noise_sigma
from posterior_diffusion.posterior_mean import RunOutput, posterior_mean
from posterior_diffusion.priors import DiffusionPrior, default_prior_name, load_prior, resolve_dtype
from posterior_diffusion.samplers import Sampler, get_sampler
from posterior_diffusion.samplers.auto import choose_sampler
from posterior_diffusion.samplers.base import validate_measurement
from posterior_diffusion.samplers.budgets import cpu_budget
from posterior_diffusion.tensor_utils import as_batch, sample_moments


@dataclass
class PosteriorResult:
    """Posterior samples and their summaries, float32 on the CPU.

    samples: (B, S, C, H, W) in about [-1, 1] ((S, C, H, W) if y was one unbatched measurement);
    mean: the best posterior-mean estimate of the run, (B, C, H, W) (or (C, H, W)): the exact one-call Tweedie mean
    for denoising with a pixel prior, the chains' late denoiser estimates averaged for a sampler that reports them
    (DiffPIR), else the average of the S samples (`posterior_mean`; which one is in config["mean_estimate"]);
    std: per-pixel standard deviation over the S samples, 0 when S = 1.
    nfe: network evaluations per sample; seconds: wall time of the sampling;
    config: every setting needed to reproduce the run; extras: sampler outputs such as a kernel estimate.
    lower, upper: with a calibration, the conformally calibrated interval average -+ factor std at its level around
    the samples' average, as calibrated (shaped as mean; `calibration.Calibration`; a one-sided calibration's
    one-sided pixels reach the image's bound, 1 or -1), else None.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    nfe: int
    seconds: float
    config: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None


WORKING_COPIES = 4  # image-sized tensors a chain holds at least (x_t, x0_hat, a gradient, noise), for memory estimates
# On a CPU a network call costs the same per image at any batch (one core of the development AMD EPYC: 4 images of
# 512x384 in 15 s one by one, 16 s at once), but its activations grow with the batch (peak 1.2 GB against 3.6 GB):
# by default a call takes as many chains as fit this many pixels (64 at 64x64, 4 at 256x256, 1 for a photo).
CPU_PIXELS_PER_CALL = 512 * 512


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to run on (None: `default_device()`); an unknown name or a GPU that is not there is a one-line
    ValueError (e.g. "cuda" on a machine or a torch build without CUDA)."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU visible"
            raise ValueError(f"device {str(device)!r} was asked for but there is no GPU ({build}); use cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} does not exist: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but Apple's MPS backend is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {str(device)!r}; use cpu, cuda, cuda:N or mps")
    return device


def check_seed(seed) -> int:
    """`seed` if it is an integer in [0, 2^63), else a one-line ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


def check_measurement_dtype(y: torch.Tensor) -> None:
    """Refuse a complex or integer y (the API would otherwise drop imaginary parts or misread 8-bit values)."""
    if y.is_complex():
        raise ValueError(
            f"y is complex ({str(y.dtype).replace('torch.', '')}); measurements are real (interferometry "
            "visibilities as (Re, Im) with data='vis'); pass y.real or torch.view_as_real(y) as the operator expects"
        )
    if not y.is_floating_point():
        raise ValueError(
            f"y has integer dtype {str(y.dtype).replace('torch.', '')}; measurements are float on the [-1, 1] scale "
            "(an 8-bit image v maps to v / 127.5 - 1)"
        )


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
    sampler: Sampler | str = "auto",
    num_samples: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool = True,
    image_shape: tuple[int, ...] | None = None,
    callback=None,
    measurement_ids=None,
    compile: bool = False,
    cuda_graphs: bool = False,
    calibration="auto",
    level: float = 0.9,
    noise_sigma: float | str | None = None,
    **sampler_options,
) -> PosteriorResult:
    """Draw `num_samples` samples of p(x | y) for each measurement in y.

    Args:
        y: (B, *op.measurement_shape) or one unbatched measurement, real float, finite; image-like measurements
            on the [-1, 1] scale (a non-constant y with no negative value and nothing above 1 warns: [0, 1] data?).
            Complex or integer y, an empty batch, batch_size or seed out of range: a one-line ValueError.
        op: an operator (see `posterior_diffusion.operators`) or the name of one with default settings.
        prior: a DiffusionPrior, a `load_prior` spec, or None for the built-in prior matching the channels.
        sampler: a Sampler, a registered name, or "auto" (default): the sampler measured best for the operator that
            accepts the prior, with its preset for the task (the task table, `tasks.Task.auto`; the choice is in
            config["sampler"]);
            on a CPU, for a linear operator, at the CPU budget (`samplers.budgets.CPU_STEPS` steps and `CPU_OPTIONS`);
            options given here win over the chosen ones; budget="cpu" or "gpu" asks for that budget's choice on any
            device (default "device": the CPU budget on a CPU).
            `sampler_options` go to its config (e.g. steps, step_size, preset).
        num_samples: samples per measurement (S).
        batch_size: chains per network call (default: all B * S at once; on a CPU as many as fit
            `CPU_PIXELS_PER_CALL` pixels, unless the operator has per-image parameters).
        seed: chain (b, s) is seeded from (seed, b, s): results do not depend on batch_size.
        measurement_ids: integers replacing b in that seed (e.g. image indices of a data set), so that a
            measurement's samples do not depend on which other measurements share the call.
        device: default cuda when available, else cpu. dtype: the network's dtype (float32, float16, bfloat16),
            or "auto" (default): bfloat16 on CUDA GPUs and CPUs that compute it natively, float32 elsewhere
            (`guards.auto_dtype`, with the measurements behind it) for a prior loaded from a spec, and the prior
            object's own dtype for one passed in. A prior object given with another device or an explicit other
            dtype is converted as a copy, never in place.
        image_shape: (C, H, W) of x; default op.image_shape(measurement shape).
        callback: called after each sampler step with a dict {"i", "t", "x", "x0_hat", ...}.
        compile: compile the prior's network with torch.compile (`prior.compile_network()`, in place: a prior
            object passed in stays compiled for later calls). Off by default: each new batch shape compiles for
            about a minute on a CPU core, more than a default CPU run saves (assets/bench/speed/README.md).
        cuda_graphs: on a CUDA device, replay the network's forward passes from captured CUDA graphs
            (`prior.use_cuda_graphs()`, in place like compile; for small networks at small batches, where the GPU
            waits for Python; unmeasured). The CPU path is unchanged.
        calibration: "auto" (default): the shipped calibration made for this run's prior, operator, sampler and
            number of samples (`shipped_calibrations`), if there is one, else none (config["calibration"] says
            "uncalibrated"); a `calibration.Calibration`, the path of a file written by `posterior-diffusion
            calibrate` or the name of a shipped one ("auto_denoise.json", ...); or None. With one, the result's
            `lower` / `upper` are the conformally calibrated interval at `level` (one of the calibrated levels,
            default 0.9). A calibration given for another operator, prior, sampler (any option) or number of
            samples is refused before any work, naming both.
        noise_sigma: None (default: the operator's noise), a Gaussian noise std on the [-1, 1] scale replacing the
            operator's, or "auto": estimated from y (`operators.noise_estimate`: the flattest tiles of the finest
            Haar wavelet band; observed pixels only for masks); the value and method are in config["noise"].
    """
    device = resolve_device(device)
    shipped_file = None
    if calibration is not None and not isinstance(calibration, str | Calibration):
        calibration = str(calibration)  # a path
    if isinstance(calibration, str) and calibration != "auto":
        calibration = shipped_calibrations.load(calibration)
    if isinstance(calibration, Calibration):
        calibration.check_level(level)
    if dtype == "auto":
        dtype = None if isinstance(prior, DiffusionPrior) else guards.auto_dtype(device)
    dtype = resolve_dtype(dtype)
    if isinstance(op, str):
        op = get_operator(op)
    if not isinstance(op, Operator):
        raise TypeError(f"op must be an Operator or an operator name, got {type(op).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    check_measurement_dtype(y)
    guards.check_counts(num_samples=num_samples, batch_size=batch_size)
    check_seed(seed)
    if isinstance(sampler, str) and sampler != "auto":
        sampler = get_sampler(sampler, **sampler_options)
    elif not isinstance(sampler, str) and sampler_options:
        raise ValueError("sampler options are given to get_sampler(...) when a Sampler object is passed")

    y, unbatched = as_batch(y, op.measurement_ndim, "y")
    if y.shape[0] == 0:
        raise ValueError("y is an empty batch (0 measurements); give at least one")
    shape = tuple(image_shape) if image_shape is not None else tuple(op.image_shape(tuple(y.shape[1:])))
    validate_measurement(y, op, shape)
    noise_record = None
    if noise_sigma is not None:
        op, noise_record = with_noise_sigma(op, op.restrict(y), noise_sigma)
    if batch_size is None and device.type == "cpu":
        batch_size = _cpu_batch_size(op, shape)
    chains = min(batch_size or y.shape[0] * num_samples, y.shape[0] * num_samples)
    op.check_batch(y.shape[0])
    op.check_batch(chains)
    _check_memory(y.shape[0] * num_samples, chains, shape, device)

    prior_spec = (
        prior if isinstance(prior, str) else ("builtin:" + default_prior_name(shape[0], op) if prior is None else None)
    )
    prior = load_prior(prior_spec if prior_spec is not None else prior, device=device, dtype=dtype)
    prior.check_image_shape(shape)
    if compile:
        prior.compile_network()
    if cuda_graphs:
        prior.use_cuda_graphs()
    if sampler == "auto":
        on_cpu = cpu_budget(sampler_options.get("budget", "device"), device)
        name, chosen = choose_sampler(prior, op, on_cpu=on_cpu)
        given = {k: v for k, v in sampler_options.items() if not (k == "preset" and v is None) and k != "budget"}
        sampler = get_sampler(name, **(chosen | given))
    if device.type == "cpu":
        _warn_slow_cpu_dtype(getattr(prior, "dtype", None))
    op = on_device(op, device)
    y = op.restrict(y.to(device))

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
        "compile": compile,
        "cuda_graphs": cuda_graphs,
        "versions": _versions(),
    }
    if noise_record is not None:
        config["noise"] = noise_record
    settings_fixed = calibration is not None and calibration != "auto"  # the user's file: its settings or a refusal
    if calibration == "auto":
        shipped_file, calibration = shipped_calibrations.find(config, level) or (None, None)
    if calibration is not None:
        calibration.check(config)  # before any work

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
        settings_fixed=settings_fixed,
    )
    samples = out.samples.cpu()
    average, std = sample_moments(samples)
    tail = out.tail_mean.mean(1).cpu() if out.tail_mean is not None else None
    run = RunOutput(y, average, tail, batch_size)
    mean, config["mean_estimate"] = posterior_mean(prior, op, run)  # on the CPU: synchronised
    seconds = time.perf_counter() - start  # the sampling and the mean's network call, if any
    extras = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.extras.items()}
    if unbatched:
        samples, mean, std, average = samples[0], mean[0], std[0], average[0]
        extras = {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in extras.items()}
    lower = upper = None
    if calibration is not None:

        def as_mean(per_pixel):  # an operator's (B, C, H, W) map of y, on the CPU and unbatched as `mean`
            return None if per_pixel is None else (per_pixel[0] if unbatched else per_pixel).cpu()

        strata = as_mean(op.calibration_strata(y)) if calibration.strata else None  # pixel classes
        sides = as_mean(op.calibration_sides(y)) if calibration.one_sided else None  # in {-1, 0, 1}
        lower, upper = calibration.interval(average, std, level, strata, sides)
        config["calibration"] = {"task": calibration.task, "level": level, "factor": calibration.factors[level]}
        if calibration.strata:
            factors = zip(calibration.strata, calibration.stratum_factors[level], strict=True)
            config["calibration"]["factor_per_pixel_class"] = dict(factors)
        if calibration.one_sided:  # their intervals reach the image's bound: [lower, 1] or [-1, upper]
            config["calibration"]["one_sided"] = calibration.one_sided
        if shipped_file is not None:
            config["calibration"]["shipped_file"] = shipped_file
    else:
        config["calibration"] = "uncalibrated"
    return PosteriorResult(samples, mean, std, out.nfe, seconds, config, extras, lower, upper)


@dataclass(frozen=True)
class SamplingSettings:
    """The settings of a `sample_posterior` call apart from its measurements, seed and measurement ids, so that a
    caller that samples many groups of measurements (the bench, calibration, the prior benchmark) states them once:
    `settings.run(y, op, seed, ids)`. `options` go to the sampler (steps, preset, ...)."""

    prior: Any = None
    sampler: Any = "auto"
    num_samples: int = 1
    batch_size: int | None = None
    device: Any = None
    dtype: Any = "auto"
    progress: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    options: dict = field(default_factory=dict)

    def run(self, y: torch.Tensor, op, seed: int = 0, measurement_ids=None, **extra) -> PosteriorResult:
        """sample_posterior(y, op, ...) with these settings; `extra`: its other keywords (calibration, ...)."""
        keywords = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return sample_posterior(y, op, seed=seed, measurement_ids=measurement_ids, **keywords, **extra, **self.options)


def _cpu_batch_size(op, shape: tuple[int, ...]) -> int | None:
    """Chains per network call on a CPU (`CPU_PIXELS_PER_CALL`), or None (all) for an operator with per-image
    parameters, which takes its whole batch at once."""
    try:
        op.check_batch(1)
    except ValueError:
        return None
    return max(1, CPU_PIXELS_PER_CALL // math.prod(shape[1:]))


def _check_memory(total: int, chains: int, shape: tuple[int, ...], device: torch.device) -> None:
    """Refuse, before any work, a run whose samples (`total` images of `shape`, kept on the CPU) and the working
    tensors of `chains` chains per call (on `device`) exceed the available memory: a lower bound (the network's
    activations come on top), so what is refused can never run."""
    image_bytes = 4 * math.prod(shape)
    kept, working = total * image_bytes, chains * image_bytes * WORKING_COPIES
    what = f"sampling {total} images of shape {tuple(shape)} ({chains} per network call)"
    fix = "use a smaller batch_size (--batch-size), fewer samples or a smaller image"
    if device.type == "cpu":
        guards.check_memory(kept + working, device, what, fix)
    else:
        guards.check_memory(working, device, what, fix)
        guards.check_memory(kept, "cpu", what, fix)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import diffusers

    return {
        "posterior_diffusion": version("posterior_diffusion"),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def _warn_slow_cpu_dtype(dtype) -> None:
    """One warning when the network's dtype has no native kernels on this CPU: float16 never has (measured about
    90x slower than bfloat16 where that is native), bfloat16 only with AVX512-BF16 / AMX / Arm BF16
    (`guards.native_cpu_bfloat16`; emulated it was 85x slower than float32)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return  # float32: nothing to read or say
    native = guards.native_cpu_bfloat16()
    if dtype == torch.float16:
        better = "dtype='bfloat16' (--dtype bfloat16) or float32" if native is not False else "float32"
        warnings.warn(
            "float16 on the CPU is emulated (no native half-precision kernels) and runs tens of times slower; "
            f"use {better}",
            stacklevel=3,
        )
    elif dtype == torch.bfloat16 and native is False:
        warnings.warn(
            "bfloat16 is emulated on this CPU (no avx512_bf16, amx_bf16 or bf16 in /proc/cpuinfo): the network runs "
            "tens of times slower than in float32; use float32 (the default)",
            stacklevel=3,
        )
