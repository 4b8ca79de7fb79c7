"""What the bench runs on a task: a classical baseline, a posterior sampler, or `auto` (what sample_posterior picks),
each a `Method`. Baselines' weights, and the TUNE_GRID options of a "NAME:tuned" sampler, are chosen per task on
crops of other images (`--tune-images`) and kept in out/tuned.json for reruns, as InverseBench tunes every method
on a validation set.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from posterior_diffusion.api import SamplingSettings, on_device
from posterior_diffusion.baselines import BASELINES, baseline, grid_search, tune
from posterior_diffusion.bench.config import BenchConfig
from posterior_diffusion.bench.store import atomic_write_text
from posterior_diffusion.images import random_crops
from posterior_diffusion.metrics import psnr
from posterior_diffusion.samplers import get_sampler, list_samplers, sampler_class
from posterior_diffusion.samplers.auto import choose_sampler
from posterior_diffusion.samplers.budgets import BUDGETS, cpu_budget

AUTO = "auto"  # method "auto": what sample_posterior(sampler="auto") picks per task, at the bench's --steps if given
TUNED = ":tuned"  # method "NAME:tuned": sampler NAME with its TUNE_GRID options tuned per task on --tune-images
TUNE_CROPS = 8  # crops of --tune-images per task on which a method's weights are chosen
TUNE_SEED = 5000  # their positions and noise (prior_benchmark's tuning crops use the same offset)


@dataclass(frozen=True)
class TaskRun:
    """A task as its methods run it: `op` is the operator they are given (a Gaussian guess of the kernel on blind
    tasks), `prior` the loaded prior (None when no method needs one)."""

    cfg: BenchConfig
    task: Any  # tasks.Task
    op: Any  # operators.Operator
    prior: Any
    device: torch.device


class Method(Protocol):
    """What the bench runs, by name: `option_names` are the names a "NAME.K" option may use for it, and
    `common_options` says whether the "K" options (for every sampler) reach it."""

    name: str
    needs_prior: bool
    option_names: tuple[str, ...]
    common_options: bool

    def check_options(self, cfg: BenchConfig) -> None:
        """Raise ValueError, before any work, for an option in cfg.sampler_options that it does not take."""

    def refusal(self, cfg: BenchConfig, task, prior, op) -> str | None:
        """Why it does not run on `op` (with the task's sampler preset and the bench's options), or None."""

    def for_task(self, cfg: BenchConfig, task_name: str, task, ops: tuple, prior, channels: int, announce: bool):
        """The method as it runs on this task (weights tuned, a note printed when `announce`). ops: (the operator
        that measures, the one the method is given); channels: of the images."""

    def runs(self, task) -> int:
        """Independent runs per image whose best is scored (the task's best_of for samplers, 1 for baselines)."""

    def estimate(self, run: TaskRun, y: torch.Tensor, ids: list[int], seed: int) -> dict:
        """{"mean", "samples", "std" (CPU tensors), "nfe", "seconds" (all images), optional "kernel", "dtype",
        "estimate", "sampler"} for the measurements y (n, ...) of images `ids`."""


def tuned_params(cfg: BenchConfig, task_name: str, method: str, measure, channels: int, choose) -> dict:
    """The tuned weights of `method` (a baseline or a sampler name) on task `task_name`: from out/tuned.json when it
    holds them for these tune images and size, else choose(crops, y) now, on TUNE_CROPS crops of cfg.tune_images
    measured by the operator `measure` (crops and noise seeded, so every process finds the same), and added."""
    path = Path(cfg.out) / "tuned.json"
    tuned = json.loads(path.read_text()) if path.exists() else {}
    if tuned.get("tune_images") != cfg.tune_images or tuned.get("size") != cfg.size:
        tuned = {"tune_images": cfg.tune_images, "size": cfg.size, "params": {}}
    key = f"{task_name}/{method}"
    if key not in tuned["params"]:
        crops = random_crops([cfg.tune_images], TUNE_CROPS, cfg.size, channels, seed=TUNE_SEED)
        y = measure.measure(crops, torch.Generator().manual_seed(TUNE_SEED))
        tuned["params"][key] = choose(crops, y)
        atomic_write_text(path, json.dumps(tuned, indent=1))
    return tuned["params"][key]


@dataclass(frozen=True)
class BaselineMethod:
    """A classical baseline (`baselines.BASELINES`): one estimate per image. Takes "name.K" options only; `params`
    are its weights tuned for a task (see `for_task`)."""

    name: str
    params: tuple[tuple[str, float], ...] = ()
    needs_prior = False
    common_options = False

    @property
    def option_names(self) -> tuple[str, ...]:
        return (self.name,)

    def for_task(self, cfg, task_name, task, ops, prior, channels, announce) -> BaselineMethod:
        """This baseline with its grid weights (those not set by a "name.K" option) tuned for the task on
        TUNE_CROPS crops of cfg.tune_images (`baselines.tune`); untouched, with a note, without --tune-images."""
        fixed = cfg.own_options(self.name)
        free = [k for k in BASELINES[self.name].grid if k not in fixed]
        if not free:
            return self
        if cfg.tune_images is None:
            if announce:
                print(
                    f"note: {self.name} on {task_name} runs with untuned default {', '.join(free)}; "
                    "give --tune-images DIR (other images) to tune",
                    flush=True,
                )
            return self
        params = tuned_params(
            cfg, task_name, self.name, ops[0], channels, lambda crops, y: tune(self.name, ops[1], crops, y, fixed)
        )
        if announce:
            shown = ", ".join(f"{k}={v:g}" for k, v in params.items())
            print(f"tuned: {self.name} on {task_name}: {shown} (best PSNR on {TUNE_CROPS} crops of {cfg.tune_images})")
        return BaselineMethod(self.name, params=tuple(params.items()))

    def check_options(self, cfg) -> None:
        parameters = list(inspect.signature(BASELINES[self.name].fn).parameters.values())[2:]  # after (op, y)
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return
        valid = [p.name for p in parameters]
        unknown = sorted(set(cfg.own_options(self.name)) - set(valid))
        if unknown:
            valid_text = ", ".join(valid) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for baseline {self.name!r}; valid: {valid_text}")

    def refusal(self, cfg, task, prior, op) -> str | None:
        entry = BASELINES[self.name]
        return None if entry.applies(op) else f"{self.name} needs {entry.needs}"

    def runs(self, task) -> int:
        return 1  # deterministic

    def estimate(self, run: TaskRun, y, ids, seed) -> dict:
        start = time.perf_counter()
        options = dict(self.params) | run.cfg.own_options(self.name)
        estimate = baseline(self.name, on_device(run.op, run.device), y.to(run.device), **options).cpu()
        seconds = time.perf_counter() - start
        return {"mean": estimate, "samples": estimate[:, None], "std": torch.zeros_like(estimate), "nfe": 0} | {
            "seconds": seconds
        }


def _sampled(settings: SamplingSettings, run: TaskRun, y, ids, seed) -> tuple[dict, Any]:
    """The result dict of a sampling call (and the PosteriorResult, for what a method adds)."""
    res = settings.run(y, run.op, seed, ids)
    result = {"mean": res.mean, "samples": res.samples, "std": res.std, "nfe": res.nfe, "seconds": res.seconds}
    result |= {"dtype": res.config["dtype"], "estimate": res.config["mean_estimate"]}
    if "kernel" in res.extras:  # blind samplers: (n, S, kh, kw)
        result["kernel"] = res.extras["kernel"].cpu()
    return result, res


def _refusal(check) -> str | None:
    """The one-line reason check() raises (a ValueError), or None when it passes."""
    try:
        check()
    except ValueError as err:
        return str(err)
    return None


def _settings(cfg: BenchConfig, prior, device, sampler: str, options: dict) -> SamplingSettings:
    """The bench's settings of a sampling call."""
    return SamplingSettings(
        prior=prior,
        sampler=sampler,
        num_samples=cfg.num_samples,
        batch_size=cfg.batch_size,
        device=device,
        dtype=cfg.dtype,
        options=options,
    )


@dataclass(frozen=True)
class SamplerMethod:
    """A posterior sampler through `sample_posterior`, with the task's preset where it has one, the bench's steps,
    and the "K" (every sampler) and "sampler.K" options. `name` is the rows' method: the sampler's name, or
    "NAME:tuned" (`tune`), whose TUNE_GRID options not set by a "NAME.K" option are tuned per task (`for_task`)
    and held in `params`."""

    name: str
    params: tuple[tuple[str, float], ...] = ()
    needs_prior = True
    common_options = True

    @property
    def sampler(self) -> str:
        return self.name.removesuffix(TUNED)

    @property
    def tune(self) -> bool:
        return self.name.endswith(TUNED)

    @property
    def option_names(self) -> tuple[str, ...]:
        return (self.name, self.sampler)

    def options(self, cfg: BenchConfig, preset: str | None) -> dict:
        """The sampler options for a task with sampler preset `preset` (None: no task's): the bench's --steps, then
        the options for every sampler, then the tuned ones, then this sampler's own ("pnp_ula.steps=200" wins over
        --steps 100)."""
        options = {"steps": cfg.steps} if cfg.steps else {}
        options |= cfg.common_options() | dict(self.params) | cfg.own_options(self.sampler)
        if preset is not None and "preset" not in options:
            options["preset"] = preset
        return options

    def for_task(self, cfg, task_name, task, ops, prior, channels, announce) -> SamplerMethod:
        """With `tune`: this method with its sampler's TUNE_GRID options (those not set by a "NAME.K" option) chosen
        for the task: the combination whose posterior mean (cfg.num_samples samples, seed TUNE_SEED) has the best
        mean PSNR on TUNE_CROPS crops of cfg.tune_images (the same crops and noise as the baselines')."""
        preset = task.presets.get(self.sampler)
        if announce and "preset" not in self.options(cfg, preset):
            print(f"note: {self.sampler} has no preset for {task_name}; it runs with its default options", flush=True)
        if not self.tune:
            return self

        def choose(crops, y):
            def score(candidate):
                method = SamplerMethod(self.name, params=tuple(candidate.items()))
                settings = _settings(cfg, prior, prior.device, self.sampler, method.options(cfg, preset))
                return float(psnr(settings.run(y, ops[1], TUNE_SEED).mean.float().cpu(), crops).mean())

            return grid_search(sampler_class(self.sampler).TUNE_GRID, cfg.own_options(self.sampler), score)

        params = tuned_params(cfg, task_name, self.name, ops[0], channels, choose)
        if announce:
            shown = ", ".join(f"{k}={v:g}" for k, v in params.items())
            print(
                f"tuned: {self.sampler} on {task_name}: {shown} (best PSNR of the mean of {cfg.num_samples} samples on "
                f"{TUNE_CROPS} crops of {cfg.tune_images})",
                flush=True,
            )
        return SamplerMethod(self.name, params=tuple(params.items()))

    def check_options(self, cfg) -> None:
        get_sampler(self.sampler, **self.options(cfg, None))  # an unknown option or a bad value raises
        if self.tune and cfg.tune_images is None:
            raise ValueError(f"method {self.name!r} tunes {self.sampler} on other images: give --tune-images DIR")

    def refusal(self, cfg, task, prior, op) -> str | None:
        sampler = get_sampler(self.sampler, **self.options(cfg, task.presets.get(self.sampler)))
        return _refusal(lambda: sampler.check(prior, op))

    def runs(self, task) -> int:
        return task.best_of

    def estimate(self, run: TaskRun, y, ids, seed) -> dict:
        options = self.options(run.cfg, run.task.presets.get(self.sampler))
        return _sampled(_settings(run.cfg, run.prior, run.device, self.sampler, options), run, y, ids, seed)[0]


@dataclass(frozen=True)
class AutoMethod:
    """`sampler="auto"`: the sampler and preset sample_posterior picks for the task (`samplers.auto`, at the CPU
    budget on a CPU unless "auto.budget=gpu"), with the bench's --steps and the "K" and "auto.K" options; its rows
    record the pick as "sampler": "NAME-STEPS"."""

    name: str = AUTO
    needs_prior = True
    common_options = True
    option_names = (AUTO,)

    def options(self, cfg: BenchConfig) -> dict:
        return ({"steps": cfg.steps} if cfg.steps else {}) | cfg.common_options() | cfg.own_options(AUTO)

    def for_task(self, cfg, task_name, task, ops, prior, channels, announce) -> AutoMethod:
        return self

    def check_options(self, cfg) -> None:
        """Its budget ("auto.budget=gpu": the 100-step order on a CPU); its other options go to the sampler it
        picks per task."""
        if self.options(cfg).get("budget", "device") not in BUDGETS:
            raise ValueError(f"unknown auto.budget {self.options(cfg)['budget']!r}; valid: {', '.join(BUDGETS)}")

    def refusal(self, cfg, task, prior, op) -> str | None:
        on_cpu = cpu_budget(self.options(cfg).get("budget", "device"), prior.device)
        return _refusal(lambda: choose_sampler(prior, op, on_cpu=on_cpu))

    def runs(self, task) -> int:
        return task.best_of

    def estimate(self, run: TaskRun, y, ids, seed) -> dict:
        result, res = _sampled(
            _settings(run.cfg, run.prior, run.device, AUTO, self.options(run.cfg)), run, y, ids, seed
        )
        return result | {"sampler": f"{res.config['sampler']['name']}-{res.config['sampler']['steps']}"}


def get_method(name: str) -> Method:
    """The baseline or sampler `name`; an unknown name lists the valid ones."""
    if name in BASELINES:
        return BaselineMethod(name)
    if name == AUTO:
        return AutoMethod()
    if name in list_samplers():
        return SamplerMethod(name)
    base = name.removesuffix(TUNED)
    if name.endswith(TUNED) and base in list_samplers():
        if not sampler_class(base).TUNE_GRID:
            tunable = [n for n in list_samplers() if sampler_class(n).TUNE_GRID]
            raise ValueError(f"sampler {base!r} has no options to tune; tunable: {', '.join(tunable) or 'none'}")
        return SamplerMethod(name)
    valid = sorted([*BASELINES, *list_samplers(), AUTO])
    raise ValueError(f"unknown method {name!r}; valid: {', '.join(valid)}, and SAMPLER{TUNED} for a tunable sampler")
