"""Before any work: every option checked, and per task the operator and the methods that apply (each one left
out gets one line saying why), with their weights tuned; the prior and the LPIPS network the run needs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from posterior_diffusion.bench.config import BenchConfig
from posterior_diffusion.bench.methods import Method
from posterior_diffusion.perceptual import MIN_SIZE, LPIPSUnavailable, find_weights
from posterior_diffusion.tasks import get_task


@dataclass(frozen=True)
class PlannedTask:
    """A task of the run: `op` measures the images, `given` is what the methods get (a Gaussian guess of the
    kernel on blind tasks), `methods` those that apply, tuned for it."""

    name: str
    task: Any  # tasks.Task
    op: Any
    given: Any
    methods: tuple[Method, ...]


def check_options(cfg: BenchConfig, methods: list[Method]) -> None:
    """Every --sampler-param, before any work: "method.K" names a method of this bench and one of its options,
    "K" one that every sampler of the bench takes; the samplers' configs check the values."""
    names = [name for m in methods for name in m.option_names]
    for key in cfg.sampler_options:
        method = key.split(".", 1)[0] if "." in key else None
        if method is not None and method not in names:
            raise ValueError(
                f"option {key!r} names no method of this bench; methods: {', '.join(m.name for m in methods)}"
            )
        if method is None and not any(m.common_options for m in methods):
            raise ValueError(f"option {key!r} is for every sampler and this bench has none; write METHOD.{key}")
    for method in methods:
        method.check_options(cfg)


def plan(cfg: BenchConfig, tasks: dict, methods: list[Method], prior, announce: bool) -> list[PlannedTask]:
    """The run's tasks in order, each with the methods that apply to it (tuned); each (task, method) pair left out
    gets one line saying why when `announce`."""
    planned = []
    for name in cfg.tasks:
        task = get_task(name, tasks)
        op = task.build(cfg.size)
        given = given_operator(op) if task.blind else op
        channels = task.channels or (prior.default_image_shape()[0] if prior is not None else 3)
        applicable = []
        for method in methods:
            refusal = method.refusal(cfg, task, prior, given)
            if refusal is None:
                applicable.append(method.for_task(cfg, name, task, (op, given), prior, channels, announce))
            elif announce:
                print(f"skipped: {method.name} on {name}: {refusal}", flush=True)
        planned.append(PlannedTask(name, task, op, given, tuple(applicable)))
    return planned


def given_operator(op):
    """Blind tasks: the sampler gets the blur family with a Gaussian guess (std kernel_size / 8), not the truth."""
    from posterior_diffusion.operators.kernels import gaussian_kernel

    size = op.kernel.shape[-1]
    return op.with_kernel(gaussian_kernel(size, size / 8).to(op.kernel))


def load_bench_prior(cfg: BenchConfig, methods: list[Method], device):
    """The prior of cfg.prior (default: the built-in RGB prior), or None when no method needs one."""
    if not any(m.needs_prior for m in methods):
        return None
    from posterior_diffusion.priors import default_prior_name, load_prior

    return load_prior(cfg.prior or f"builtin:{default_prior_name(3)}", device=device, dtype=cfg.dtype)


def lpips_net(cfg: BenchConfig, announce: bool) -> str:
    """cfg.lpips, or "none" (with one warning when `announce`) when its weights are missing or the crops are
    smaller than its backbone accepts."""
    if cfg.lpips == "none":
        return "none"
    try:
        find_weights(cfg.lpips)
        if cfg.size < MIN_SIZE[cfg.lpips]:
            raise ValueError(f"LPIPS ({cfg.lpips}) needs crops of at least {MIN_SIZE[cfg.lpips]} px (--size)")
    except (LPIPSUnavailable, ValueError) as err:
        if announce:
            warnings.warn(f"{err}; the rows have no LPIPS", UserWarning, stacklevel=3)
        return "none"
    return cfg.lpips
