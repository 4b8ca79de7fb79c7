"""The standard restoration tasks of the papers, as name -> operator settings, scaled to the image size.

Settings are the DPS paper's (Chung et al., ICLR 2023, Sec. 4 "Experimental setup", on 256x256 images, Gaussian
noise sigma_y = 0.05 on [-1, 1]): lengths in pixels (kernel sizes, blur widths, box sides) scale with the image
side (kernel sizes rounded to the nearest odd integer). Users add tasks in a TOML file (`load_tasks_file`):

    [tasks.light_blur]
    operator = "gaussian_blur"
    params = { kernel_size = 21, sigma = 1.0 }   # used as given (not scaled)
    noise_sigma = 0.01
    # sized = true: the operator takes the image side as image_size (inpainting masks)
    # blind = true: samplers get the blur with a Gaussian guess of std kernel_size / 8 instead of the kernel
    # best_of = 4: the bench scores the best of 4 runs of each sampler (phase retrieval, as the papers)
    presets = { dps = "gaussian_deblur", red_diff = "deblur" }   # the preset each sampler uses on this task

A task is the one place that says what a restoration problem is: its operator and noise, each sampler's preset for
it, and (`auto`) the order in which `sampler="auto"` tries samplers on its operator, their presets taken from the
same map. `auto_task(operator name)` is the task whose order sample_posterior follows. The names are checked when
a task is registered (`TASK_CHECKS`, which the samplers layer fills): an unknown sampler or preset is an error at
import, never silently dropped.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posterior_diffusion.operators import get_operator
from posterior_diffusion.operators.base import Operator

REFERENCE_SIZE = 256  # the image side the papers' settings are given for


@dataclass(frozen=True)
class Task:
    """An operator with its settings at REFERENCE_SIZE. `scaled`: parameters that are lengths in pixels (scaled
    with the image side; kernel_size rounded to an odd integer, other integers rounded); `sized`: the operator
    takes image_size; `blind`: the benchmark gives samplers a Gaussian guess instead of the true kernel;
    `auto` / `cpu_auto`: the order of preference of `sampler="auto"` on the task's operator (module docstring);
    `presets`: sampler name -> the name of its preset for this task (e.g. {"red_diff": "deblur"}: preset names
    are the reference codes' and differ between samplers, so they are mapped here, never matched by name); a
    sampler not listed runs with its default options (the bench says so). `best_of`: the bench runs each sampler
    this many times (independent chains) and scores, per image, the run whose posterior mean has the highest
    PSNR against the truth (an oracle choice), the papers' protocol for phase retrieval (DPS and DAPS report the
    best of 4 runs; the DAPS reference's eval.py keeps each image's best over its runs); the rows' NFE and seconds
    count all the runs. Baselines are deterministic and run once.

    Hooks through which an application scores and shows its task (None: the general behaviour):
    `metrics(op, y, estimate, truth)` -> {name: (B,) tensor}, extra per-image metrics beside PSNR / SSIM / LPIPS;
    `align(op, samples)` -> samples (B, S, C, H, W) aligned before their mean and std are taken (data that do not
    fix the position, say); `figure(path, op, truth, y, mean, std, samples)` writes the example figure of one
    image (truth, mean, std (C, H, W), y one measurement, samples (S, C, H, W)) instead of the restoration figure.
    """

    operator: str
    params: dict = field(default_factory=dict)
    noise_sigma: float | None = 0.05  # None: the operator models its own noise (interferometry)
    scaled: tuple[str, ...] = ()
    sized: bool = False
    blind: bool = False
    presets: dict[str, str] = field(default_factory=dict)
    description: str = ""
    channels: int | None = None  # the image channels the operator takes (None: any, e.g. the prior's)
    best_of: int = 1
    auto: tuple[str, ...] = ()  # sampler="auto" on this operator: samplers by preference (their presets: `presets`)
    cpu_auto: tuple[str, ...] = ()  # ... at the CPU budget, where that order differs (samplers.budgets.CPU_STEPS)
    metrics: Callable[..., dict[str, torch.Tensor]] | None = None
    align: Callable[[Operator, torch.Tensor], torch.Tensor] | None = None
    figure: Callable[..., None] | None = None

    def __post_init__(self):
        if isinstance(self.best_of, bool) or not isinstance(self.best_of, int) or self.best_of < 1:
            raise ValueError(f"best_of must be an integer >= 1, got {self.best_of!r}")

    def build(self, image_size: int) -> Operator:
        """The task's operator for square images of side `image_size`."""
        ratio = image_size / REFERENCE_SIZE
        params = dict(self.params)
        for name in self.scaled:
            value = params[name] * ratio
            if name == "kernel_size":
                value = _odd(value)
            elif isinstance(params[name], int):
                value = round(value)
            params[name] = value
        if self.sized:
            params["image_size"] = image_size
        noise = {} if self.noise_sigma is None else {"noise_sigma": self.noise_sigma}
        return get_operator(self.operator, **noise, **params)


def _odd(value: float) -> int:
    return max(1, round((value - 1) / 2) * 2 + 1)


# sampler presets of the built-in tasks (tests/test_samplers.py checks every (task, sampler) pair against this)
_SR = {
    "dps": "super_resolution",
    "red_diff": "super_resolution",
    "ddrm": "super_resolution",
    "resample": "super_resolution",
    "ddnm": "sr_bicubic",
    "pigdm": "super_resolution",
    "daps": "down_sampling",
    "diffpir": "sisr",
    "mcgdiff": "super_resolution",
}
_INPAINT = {
    "dps": "inpainting",
    "red_diff": "inpainting",
    "ddrm": "inpainting",
    "resample": "inpainting",
    "ddnm": "inpainting",
    "pigdm": "inpainting",
    "diffpir": "inpaint",
    "mcgdiff": "inpainting",
}
# sampler="auto"'s orders: the samplers measured best per task at their defaults (assets/bench/quality_per_second,
# tune split); the first that accepts the prior and the operator runs
_BLUR_AUTO = ("diffpir", "pigdm", "red_diff", "resample", "pnp_ula", "dps")
_DEBLUR = {
    "red_diff": "deblur",
    "ddrm": "deblur",
    "pnp_ula": "deblur",
    "pigdm": "deblur",
    "diffpir": "deblur",
    "mcgdiff": "deblur_2d",
}

TASKS: dict[str, Task] = {
    "sr4": Task(
        "super_resolution",
        {"factor": 4},
        presets=_SR,
        auto=("diffpir", "pigdm", "red_diff", "resample", "dps"),
        description="x4 bicubic downsampling (DPS Sec. 4)",
    ),
    "box_inpaint": Task(
        "inpaint_box",
        {"box_size": 128},
        scaled=("box_size",),
        sized=True,
        presets=_INPAINT | {"daps": "inpainting"},
        auto=("pigdm", "diffpir", "red_diff", "ddrm", "resample"),
        cpu_auto=("diffpir", "pigdm", "red_diff", "ddrm", "resample"),
        description="128x128 box at 256 px",
    ),
    "random_inpaint": Task(
        "inpaint_random",
        {"missing": 0.7},
        sized=True,
        presets=_INPAINT | {"daps": "inpainting_rand"},
        auto=("diffpir", "pigdm", "ddrm", "red_diff", "resample"),
        description="70 % of the pixels missing (DPS Sec. 4)",
    ),
    "gaussian_deblur": Task(
        "gaussian_blur",
        {"kernel_size": 61, "sigma": 3.0},
        scaled=("kernel_size", "sigma"),
        presets=_DEBLUR
        | {"dps": "gaussian_deblur", "resample": "gaussian_deblur", "ddnm": "deblur_gauss", "daps": "gaussian_blur"},
        auto=_BLUR_AUTO,
        description="61 px Gaussian kernel, std 3.0 at 256 px",
    ),
    "motion_deblur": Task(
        "motion_blur",
        {"kernel_size": 61, "intensity": 0.5},
        scaled=("kernel_size",),
        presets=_DEBLUR
        | {"dps": "motion_deblur", "resample": "motion_deblur", "daps": "motion_blur", "mcgdiff": "motion_blur"},
        auto=_BLUR_AUTO,
        description="61 px motion kernel, intensity 0.5 at 256 px",
    ),
    "blind_motion_deblur": Task(
        "motion_blur",
        {"kernel_size": 61, "intensity": 0.5, "boundary": "circular"},
        scaled=("kernel_size",),
        blind=True,
        presets={"gibbs_ddrm": "ffhq"},  # the paper's settings (the defaults); `natural` suits the built-in priors
        description="the same blur, kernel unknown to the sampler (BlindDPS / GibbsDDRM)",
    ),
    "phase_retrieval": Task(
        "phase_retrieval",
        {"oversample": 2.0},
        presets={"dps": "phase_retrieval", "red_diff": "nonlinear", "daps": "phase_retrieval"},
        auto=("diffpir", "red_diff", "dps"),
        best_of=4,
        description="|FFT| of the [0, 1] image zero-padded by 1/4 of its side per side (oversample 2, DPS / DAPS); "
        "scored as the best of 4 runs, as the papers",
    ),
    "hdr": Task(
        "high_dynamic_range",
        {"scale": 2.0},
        presets={"red_diff": "nonlinear", "daps": "hdr"},
        auto=("diffpir", "red_diff", "resample", "dps"),
        description="clip(2 x, -1, 1): over-exposure by 2 (DAPS `hdr.yaml`)",
    ),
    "denoise": Task(
        "denoise",
        noise_sigma=2 * 25 / 255,
        presets={"ddrm": "denoise", "ddnm": "denoising", "pigdm": "denoise"},
        auto=("ddrm", "pnp_ula", "red_diff"),
        description="Gaussian noise, sigma 25/255 on [0, 1]",
    ),
}


AUTO_ALIASES = {"uniform_blur": "gaussian_deblur", "blur": "gaussian_deblur"}  # operators auto treats as a task's
# run on every task registered, (name, task) -> None or ValueError; the samplers layer adds the check that its
# sampler and preset names exist (samplers.auto.check_task), and runs it on the tasks registered before
TASK_CHECKS: list[Callable[[str, Task], None]] = []


def register_task(name: str, task: Task) -> None:
    """Add a task to the built-in ones (how an application ships its tasks, after its sampler presets)."""
    if name in TASKS:
        raise ValueError(f"task {name!r} is registered twice")
    for check in TASK_CHECKS:
        check(name, task)
    TASKS[name] = task


def auto_task(operator: str) -> Task | None:
    """The task whose `auto` order sample_posterior(sampler="auto") follows on operator `operator`: the first
    registered task of that operator with an order (`AUTO_ALIASES` for the blurs without a task), or None."""
    if operator in AUTO_ALIASES:
        return TASKS[AUTO_ALIASES[operator]]
    return next((task for task in TASKS.values() if task.operator == operator and task.auto), None)


def get_task(name: str, tasks: dict[str, Task] | None = None) -> Task:
    tasks = TASKS if tasks is None else tasks
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(tasks))}")
    return tasks[name]


def load_tasks_file(path: str | Path) -> dict[str, Task]:
    """The built-in tasks plus those of a TOML file ([tasks.NAME] with operator, params, noise_sigma, presets)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"cannot read tasks file '{path}': {err}") from None
    tasks = dict(TASKS)
    for name, entry in data.get("tasks", {}).items():
        known = {"operator", "params", "noise_sigma", "sized", "blind", "presets", "description", "best_of"}
        unknown = sorted(set(entry) - known)
        if "operator" not in entry or unknown:
            raise ValueError(f"task {name!r} in '{path}': needs 'operator'; unknown keys: {unknown or 'none'}")
        task = Task(
            entry["operator"],
            dict(entry.get("params", {})),
            noise_sigma=float(entry.get("noise_sigma", 0.05)),
            sized=bool(entry.get("sized", False)),
            blind=bool(entry.get("blind", False)),
            presets={str(k): str(v) for k, v in entry.get("presets", {}).items()},
            description=entry.get("description", ""),
            best_of=entry.get("best_of", 1),
        )
        task.build(REFERENCE_SIZE)  # an unknown operator or parameter fails here, naming the valid ones
        tasks[name] = task
    return tasks
