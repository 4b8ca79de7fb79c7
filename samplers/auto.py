"""sampler="auto": the sampler measured best for an operator at its default budget.

The order of preference lives with the task (`tasks.Task.auto`, presets from the task's `presets`): on operator
`op`, the task `tasks.auto_task(op.name)` lists samplers in order and the first whose capabilities accept the
prior and the operator runs (DiffPIR and PiGDM need a pixel prior, so with a latent prior a blur falls through to
RED-Diff; ReSample is first only among the latent samplers). An operator without a task tries `FALLBACK`. The
orders were chosen on the tune split (assets/bench/quality_per_second: four 64x64 crops, 4 samples, 100 NFE).

On a CPU (`choose_sampler(..., on_cpu=True)`) a linear operator gets the CPU budget (`samplers.budgets`: its steps
and each sampler's options there) and the task's `cpu_auto` order where it has one: at 20 steps DiffPIR also leads
on box inpainting, and 5 conjugate-gradient iterations per DiffPIR data step scored higher on the tune crops in a
third of the time (the same study, "The CPU budget").
Nonlinear operators keep their samplers' steps (DiffPIR's gradient step on hdr needs them).
"""

from __future__ import annotations

from posterior_diffusion.tasks import TASK_CHECKS, TASKS, Task, auto_task

from .base import list_samplers, sampler_applies, sampler_class
from .budgets import CPU_OPTIONS, CPU_STEPS

FALLBACK = ("ddrm", "red_diff", "resample", "dps")  # operators without a task: presets none


def check_task(name: str, task: Task) -> None:
    """A one-line ValueError when a task names a sampler that is not registered, or a preset its sampler lacks."""
    samplers = list_samplers()
    for sampler in (*task.presets, *task.auto, *task.cpu_auto):
        if sampler not in samplers:
            raise ValueError(
                f"task {name!r} names sampler {sampler!r}, which is not registered; valid: {', '.join(samplers)}"
            )
    for sampler, preset in task.presets.items():
        if preset not in sampler_class(sampler).PRESETS:
            known = ", ".join(sorted(sampler_class(sampler).PRESETS)) or "none"
            raise ValueError(f"task {name!r}: sampler {sampler!r} has no preset {preset!r} (its presets: {known})")


for _name, _task in TASKS.items():  # the tasks registered so far; later ones are checked as they register
    check_task(_name, _task)
TASK_CHECKS.append(check_task)


def auto_order(operator: str, on_cpu: bool = False) -> list[tuple[str, str | None]]:
    """(sampler, preset or None) in the order sampler="auto" tries them on operator `operator` (on a CPU: the
    task's cpu_auto order where it has one)."""
    task = auto_task(operator)
    if task is None:
        return [(name, None) for name in FALLBACK]
    names = (task.cpu_auto or task.auto) if on_cpu else task.auto
    return [(name, task.presets.get(name)) for name in names]


def choose_sampler(prior, op, on_cpu: bool = False) -> tuple[str, dict]:
    """(sampler name, options) of the first sampler of `auto_order(op.name)` that accepts (prior, op); options hold
    its preset for the task. With `on_cpu` a linear operator takes the CPU order, `CPU_STEPS` steps and the
    sampler's `CPU_OPTIONS`. A one-line ValueError when none applies."""
    cpu_budget = on_cpu and op.is_linear
    candidates = auto_order(op.name, cpu_budget)
    for name, preset in candidates:
        if sampler_applies(name, prior, op, preset or ""):
            budget = {"steps": CPU_STEPS} | CPU_OPTIONS.get(name, {}) if cpu_budget else {}
            return name, ({"preset": preset} if preset else {}) | budget
    tried = ", ".join(name for name, _ in candidates)
    raise ValueError(f"sampler='auto' found no sampler for operator '{op.name}' with this prior (tried {tried})")
