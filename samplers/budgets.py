"""The two compute budgets `sampler="auto"` chooses for (`samplers.auto`): a GPU's, where every sampler runs its
own steps, and a CPU's, where a linear operator gets CPU_STEPS steps and each sampler's CPU_OPTIONS (a 256x256
restore then takes about half a minute of one core instead of five to ten; chosen on the tune split,
assets/bench/quality_per_second, "The CPU budget")."""

from __future__ import annotations

CPU_STEPS = 20  # steps of the auto sampler for linear operators on a CPU
CPU_OPTIONS: dict[str, dict] = {"diffpir": {"prox_iters": 5}}  # ... and each sampler's options at that budget
BUDGETS = ("device", "cpu", "gpu")  # whose budget picks the sampler ("device": that of the device it runs on)


def cpu_budget(budget: str, device) -> bool:
    """Whether a run on `device` (a torch.device) takes the CPU budget under `budget` (one of BUDGETS)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r} for sampler='auto'; valid: {', '.join(BUDGETS)}")
    return device.type == "cpu" if budget == "device" else budget == "cpu"
