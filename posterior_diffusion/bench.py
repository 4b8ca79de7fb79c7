"""`posterior-diffusion bench`: tasks x methods x images -> per-image rows, a summary table and figures.

Methods are samplers (`samplers.SAMPLERS`) and the classical baselines (`baselines.BASELINES`: pinv, tikhonov,
bicubic, harmonic, and those applications add), so every table shows what the diffusion prior buys. A method that
does not apply to a task (e.g. bicubic for deblurring) is skipped, with one line saying why. Method names and
every option of every method are checked before any work. With --tune-images, the baselines' weights are chosen
per task on crops of those other images, and so are a sampler's TUNE_GRID options for the method "NAME:tuned"
(e.g. diffpir:tuned), as InverseBench tunes every method on a validation set.

Reproducible and resumable:
- image i is centre-cropped to `size`; its measurement noise is seeded by (seed, i) and its chains by
  (seed, i, sample), so a row does not depend on the batching or on the number of processes;
- each process (accelerate / torchrun: images i with i % num_processes == rank) appends its rows to
  rows-<rank>.jsonl as soon as a group of images is done; a rerun skips every (task, method, image, seed) that
  any rows file already holds, so an interrupted run loses at most the group in progress. A line cut by a kill
  is dropped with a warning (file and line) and its row recomputed; a missing example figure is drawn again;
- one run at a time per folder: the run holds out/.bench.lock (an flock, gone with its process), and a second
  run on the same folder stops at once, naming the holder.

Outputs in `out/`: rows-*.jsonl, summary.md and summary.csv (mean +- std over images and seeds), and figures/
(per task and method: truth | measurement | mean | std | samples of the first image with the first seed, or the
task's own figure; per task: PSNR vs NFE, from the rows at the end).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import inspect
import io
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from posterior_diffusion.api import on_device, sample_posterior
from posterior_diffusion.baselines import BASELINES, baseline, grid_search, tune
from posterior_diffusion.figures import save_figure
from posterior_diffusion.guards import check_counts
from posterior_diffusion.images import list_images, load_center_crops, random_crops
from posterior_diffusion.metrics import (
    CALIBRATION_COLUMNS,
    COVERAGE_COLUMNS,
    COVERAGE_LEVELS,
    calibration_metrics,
    kernel_errors,
    lpips,
    psnr,
    ssim,
)
from posterior_diffusion.perceptual import MIN_SIZE, LPIPSUnavailable, find_weights
from posterior_diffusion.samplers import get_sampler, list_samplers, sampler_class
from posterior_diffusion.samplers.auto import choose_sampler
from posterior_diffusion.samplers.long_run import LongRunWarning
from posterior_diffusion.tasks import TASKS, get_task, load_tasks_file
from posterior_diffusion.tensor_utils import (
    measure_images,
    peak_memory_mb,
    reset_peak_memory,
    sample_moments,
    seed_for,
)

KEY = ("task", "method", "image", "seed")
# first in the tables; then the tasks' own metrics, as the rows have them. psnr, ssim, lpips: of the mean of the
# samples; lpips_sample: of the first sample alone (the papers judge perceptual quality on samples); then, for
# samplers with 2 or more samples, how far their spread can be trusted (`metrics.calibration_metrics`)
METRIC_COLUMNS = ("psnr", "ssim", "lpips", "lpips_sample", *CALIBRATION_COLUMNS)
NOT_METRICS = {*KEY, "index", "nfe", "seconds", "peak_mb", "best_of", "dtype", "estimate", "sampler"}


@dataclass
class BenchConfig:
    """Settings of `posterior-diffusion bench grid` (one --option per field)."""

    images: str = field(metadata={"help": "folder of held-out images (centre-cropped to --size)"})
    out: str = field(metadata={"help": "output folder (a rerun resumes it)"})
    tasks: tuple[str, ...] = field(
        default=("sr4", "random_inpaint", "gaussian_deblur"), metadata={"help": "task names (tasks.TASKS)"}
    )
    methods: tuple[str, ...] = field(
        default=("dps", "ddrm", "tikhonov", "bicubic", "harmonic"),
        metadata={"help": "samplers and baselines; SAMPLER:tuned tunes a sampler's options (needs --tune-images)"},
    )
    prior: str | None = field(default=None, metadata={"help": "prior spec (default: the built-in RGB prior)"})
    size: int = field(default=128, metadata={"help": "centre-crop side in pixels"})
    num_images: int | None = field(default=None, metadata={"help": "the first N images of the folder (default all)"})
    num_samples: int = field(
        default=4, metadata={"help": "posterior samples per image (2 or more: calibration metrics too)"}
    )
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "noise and chain seeds"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: each sampler's own)"})
    images_per_call: int = field(
        default=8, metadata={"help": "images sent through a sampler together (each with num_samples chains)"}
    )
    batch_size: int | None = field(default=None, metadata={"help": "chains per network call (default all)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default cuda if available)"})
    dtype: str | None = field(default=None, metadata={"help": "network precision: float32, float16 or bfloat16"})
    lpips: str = field(default="alex", metadata={"help": "LPIPS backbone: alex, vgg or none"})
    tasks_file: str | None = field(
        default=None, metadata={"help": "TOML file of extra tasks ([tasks.NAME] operator, params, noise_sigma)"}
    )
    tune_images: str | None = field(
        default=None,
        metadata={
            "help": "folder of other images (never the test images): the baselines' weights and the NAME:tuned "
            "samplers' options are tuned on them"
        },
    )
    # {"K": v} for every sampler, {"method.K": v} for one sampler or baseline ("pnp_ula.steps": 500)
    sampler_options: dict = field(default_factory=dict, metadata={"help": "sampler options"})

    def __post_init__(self):
        counts = ("size", "num_images", "num_samples", "images_per_call", "batch_size", "steps")
        check_counts(**{name: getattr(self, name) for name in counts})
        if self.lpips not in ("alex", "vgg", "none"):
            raise ValueError(f"unknown LPIPS backbone {self.lpips!r}; valid: alex, vgg, none")


def run_bench(cfg: BenchConfig, progress: bool = True) -> list[dict]:
    """Run (or resume) the benchmark; returns all rows (of every process) once this process is done."""
    from accelerate import PartialState

    on_cpu = cfg.device == "cpu" or (cfg.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)  # torchrun / accelerate launch: one process per device (gloo on CPUs)
    out = Path(cfg.out)
    tasks = load_tasks_file(cfg.tasks_file) if cfg.tasks_file else TASKS
    for name in cfg.tasks:
        get_task(name, tasks)
    methods = [get_method(name) for name in cfg.methods]
    check_options(cfg, methods)
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused bench leaves no folder behind
    if state.is_main_process:
        print(f"bench: {state.num_processes} process(es) share the images ({state.device.type})", flush=True)
    with folder_lock(out, state), warnings.catch_warnings():
        warnings.simplefilter("ignore", LongRunWarning)  # the bench's runs are long by design, its settings fixed
        device = torch.device(cfg.device) if cfg.device else state.device
        prior = _load_prior(cfg, methods, device)
        plan = _plan(cfg, tasks, methods, prior, announce=state.is_main_process)  # --quiet hides bars only
        lpips_net = _lpips_net(cfg, announce=state.is_main_process)
        channels = prior.default_image_shape()[0] if prior is not None else 3
        paths = list_images(cfg.images)[: cfg.num_images]
        x = load_center_crops(paths, channels, cfg.size)
        if state.is_main_process:
            _drop_malformed_rows(out)
        state.wait_for_everyone()
        existing = read_rows(out)
        _check_same_dtype(out, existing, cfg.dtype)
        done = {tuple(r[k] for k in KEY) for r in existing}
        run = _Run(cfg, out, prior, device, x, paths, done, state.process_index, state.num_processes, progress)
        for name, task, op, applicable in plan:
            for seed in cfg.seeds:
                run.task(name, task, op, applicable, seed, lpips_net)
        state.wait_for_everyone()
        rows = read_rows(out)
        if state.is_main_process:
            write_summary(out, rows)
            _cost_figures(out, rows)
            _calibration_figures(out, rows)
    return rows


def _check_same_dtype(out: Path, rows: list[dict], dtype: str | None) -> None:
    """Refuse to add sampler rows in `dtype` to a folder whose sampler rows ran the network in another precision
    (one table would mix them); rows from before rows recorded it ran in float32. Baseline rows have none."""
    wanted = dtype or "float32"
    found = sorted({r.get("dtype", "float32") for r in rows if r["method"] in {*list_samplers(), AUTO}} - {wanted})
    if found:
        raise ValueError(
            f"{out} holds sampler rows whose network ran in {', '.join(found)}; this run asks for {wanted}. "
            "Use another --out (baseline rows use no network and can be copied over)"
        )


def check_options(cfg: BenchConfig, methods: list[Method]) -> None:
    """Every --sampler-param, before any work: "method.K" names a method of this bench and one of its options,
    "K" one that every sampler of the bench takes; the samplers' configs check the values."""
    names = [m.name for m in methods] + [m.sampler for m in methods if isinstance(m, SamplerMethod) and m.tune]
    for key in cfg.sampler_options:
        method = key.split(".", 1)[0] if "." in key else None
        if method is not None and method not in names:
            raise ValueError(f"option {key!r} names no method of this bench; methods: {', '.join(names)}")
        if method is None and not any(isinstance(m, SamplerMethod) for m in methods):
            raise ValueError(f"option {key!r} is for every sampler and this bench has none; write METHOD.{key}")
    for method in methods:
        method.check_options(cfg)


def _plan(cfg: BenchConfig, tasks: dict, methods: list[Method], prior, announce: bool) -> list[tuple]:
    """(name, task, operator as the methods get it, the methods that apply) per task; each (task, method) pair
    left out gets one line saying why when `announce`."""
    plan = []
    for name in cfg.tasks:
        task = get_task(name, tasks)
        op = task.build(cfg.size)
        given = _given_operator(op) if task.blind else op
        applicable = []
        channels = task.channels or (prior.default_image_shape()[0] if prior is not None else 3)
        for method in methods:
            refusal = method.refusal(cfg, task, prior, given)
            if refusal is None:
                if isinstance(method, BaselineMethod):
                    method = method.tuned(cfg, name, (op, given), channels, announce)
                elif method.tune:
                    method = method.tuned(cfg, name, task, (op, given), prior, channels, announce)
                applicable.append(method)
                if (
                    announce
                    and isinstance(method, SamplerMethod)
                    and method.sampler != AUTO
                    and "preset" not in method.options(cfg, task.presets.get(method.sampler))
                ):
                    print(
                        f"note: {method.sampler} has no preset for {name}; it runs with its default options", flush=True
                    )
            elif announce:
                print(f"skipped: {method.name} on {name}: {refusal}", flush=True)
        plan.append((name, task, op, applicable))
    return plan


TUNE_CROPS = 8  # crops of --tune-images per task on which a method's weights are chosen
TUNE_SEED = 5000  # their positions and noise (prior_benchmark's tuning crops use the same offset)


def _tuned_params(cfg: BenchConfig, task_name: str, method: str, measure, channels: int, choose) -> dict:
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


def _lpips_net(cfg: BenchConfig, announce: bool) -> str:
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


LOCK_NAME = ".bench.lock"


class BenchFolderBusy(OSError):
    """Another bench holds the output folder's lock."""


@contextlib.contextmanager
def folder_lock(out: Path, state):
    """Hold `out`/.bench.lock while this run works in `out`: an flock, which the kernel drops when its process
    ends (a killed run leaves no stale lock), taken by the main process for all the ranks of its run. Another
    run on the same folder stops, before any work, with a one-line BenchFolderBusy naming the lock's holder."""
    handle, refusal = None, None
    if state.is_main_process:
        handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held until the end of the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its id yet"
            handle.close()
            handle = None
            refusal = (
                f"bench folder '{out}' is in use by another bench ({holder}; lock file {out / LOCK_NAME}): "
                f"wait for it to finish or give another --out"
            )
        else:
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise BenchFolderBusy(refusal)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing the file releases the flock


@dataclass
class _Run:
    """What one process needs to run its share: its images are those with index % num_processes == rank."""

    cfg: BenchConfig
    out: Path
    prior: object
    device: torch.device
    x: torch.Tensor
    paths: list[Path]
    done: set
    rank: int
    num_processes: int
    progress: bool

    def task(self, name: str, task, op, methods: list[Method], seed: int, lpips_net: str) -> None:
        """`methods` on this process's images of task `name` (operator `op`) with noise and chain seed `seed`.
        The example figure (first image, first seed) is drawn before that image's rows are written, and a figure
        missing beside written rows (deleted, lost to a kill or a full disk) is drawn again from image 0."""
        mine = list(range(self.rank, len(self.paths), self.num_processes))
        if not mine:
            return
        x = self.x
        if task.channels not in (None, x.shape[1]):  # e.g. 1-channel black-hole images with no prior to fix it
            x = load_center_crops(self.paths, task.channels, self.cfg.size)
        y = measure_images(op, x[mine], seed, mine)
        given = _given_operator(op) if task.blind else op
        draws_figure = mine[0] == 0 and seed == self.cfg.seeds[0]
        for method in methods:
            todo = [k for k, i in enumerate(mine) if (name, method.name, self.paths[i].name, seed) not in self.done]
            figure = _figure_path(self.out, name, method.name)
            jobs = [(group, True) for group in _groups(todo, self.cfg.images_per_call)]  # (positions, write rows)
            if draws_figure and 0 not in todo and not figure.exists():
                jobs.insert(0, ([0], False))  # the rows are written, the figure is not: image 0 again for it
            for group, writes_rows in jobs:
                ids = [mine[k] for k in group]
                result = _best_run(self.cfg, method, task, given, y[group], x[ids], ids, seed, self.prior, self.device)
                if task.align is not None:
                    result = _aligned(result, task.align(given, result["samples"]))
                if draws_figure and ids[0] == 0:
                    _example_figure(figure, task, given, x[0], y[group[0]], result)
                if writes_rows:
                    self._write_rows(result, x, y, op, given, task, name, method.name, seed, group, ids, lpips_net)
                if self.progress:
                    what = "done" if writes_rows else "drawn again for the missing figure"
                    print(f"[rank {self.rank}] {name} {method.name} seed {seed}: images {ids} {what}", flush=True)

    def _write_rows(self, result, x, y, op, given, task, name, method, seed, group, ids, lpips_net) -> None:
        """Score `result` for images `ids` and append their rows to this process's rows file."""
        rows = _score(result, x[ids], self.paths, ids, name, method, seed, lpips_net)
        if task.metrics is not None:
            extra = task.metrics(given, y[group], result["mean"], x[ids])
            for n, row in enumerate(rows):
                row.update({k: round(float(v[n]), 5) for k, v in extra.items()})
        if task.blind:  # the method's kernel estimate (mean over samples), or the guess it was given
            kernel = result.get("kernel", given.kernel.expand(len(group), 1, *given.kernel.shape[-2:]))
            errors = kernel_errors(kernel, op.kernel)
            for n, row in enumerate(rows):
                row.update({k: round(float(v[n].mean()), 5) for k, v in errors.items()})
        with open(self.out / f"rows-{self.rank}.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _load_prior(cfg: BenchConfig, methods: list[Method], device):
    if not any(m.needs_prior for m in methods):
        return None
    from posterior_diffusion.priors import default_prior_name, load_prior

    return load_prior(cfg.prior or f"builtin:{default_prior_name(3)}", device=device, dtype=cfg.dtype)


def _given_operator(op):
    """Blind tasks: the sampler gets the blur family with a Gaussian guess (std kernel_size / 8), not the truth."""
    from posterior_diffusion.operators.kernels import gaussian_kernel

    size = op.kernel.shape[-1]
    return op.with_kernel(gaussian_kernel(size, size / 8).to(op.kernel))


def _groups(items: list[int], n: int) -> list[list[int]]:
    return [items[k : k + n] for k in range(0, len(items), max(1, n))]


class Method(Protocol):
    """What the bench runs: a sampler or a classical baseline, by name."""

    name: str
    needs_prior: bool

    def check_options(self, cfg: BenchConfig) -> None:
        """Raise ValueError, before any work, for an option in cfg.sampler_options that it does not take."""

    def refusal(self, cfg: BenchConfig, task, prior, op) -> str | None:
        """Why it does not run on `op` (with the task's sampler preset and the bench's options), or None."""

    def estimate(self, cfg: BenchConfig, task, op, y, ids, seed, prior, device) -> dict:
        """{"mean", "samples", "std" (CPU tensors), "nfe", "seconds" (all images), optional "kernel"} for y (n, ...)."""


def _own_options(cfg: BenchConfig, name: str) -> dict:
    """The "name.K" entries of sampler_options, as {K: v}."""
    return {k.split(".", 1)[1]: v for k, v in cfg.sampler_options.items() if k.startswith(name + ".")}


@dataclass(frozen=True)
class BaselineMethod:
    """A classical baseline (`baselines.BASELINES`): one estimate per image. Takes "name.K" options only; `params`
    are its weights tuned for a task (see `tuned`)."""

    name: str
    needs_prior: bool = False
    params: tuple[tuple[str, float], ...] = ()

    def tuned(self, cfg, task_name: str, ops: tuple, channels: int, announce: bool) -> BaselineMethod:
        """This baseline with its grid weights (those not set by a "name.K" option) tuned for the task on
        TUNE_CROPS crops of cfg.tune_images (`baselines.tune`), kept in out/tuned.json for reruns; untouched, with
        a note, without --tune-images. ops: (the operator that measures, the one the baseline is given)."""
        free = [k for k in BASELINES[self.name].grid if k not in _own_options(cfg, self.name)]
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
        fixed = _own_options(cfg, self.name)
        params = _tuned_params(
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
        unknown = sorted(set(_own_options(cfg, self.name)) - set(valid))
        if unknown:
            valid_text = ", ".join(valid) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for baseline {self.name!r}; valid: {valid_text}")

    def refusal(self, cfg, task, prior, op) -> str | None:
        entry = BASELINES[self.name]
        return None if entry.applies(op) else f"{self.name} needs {entry.needs}"

    def estimate(self, cfg, task, op, y, ids, seed, prior, device) -> dict:
        start = time.perf_counter()
        options = dict(self.params) | _own_options(cfg, self.name)
        estimate = baseline(self.name, on_device(op, device), y.to(device), **options).cpu()
        seconds = time.perf_counter() - start
        return {"mean": estimate, "samples": estimate[:, None], "std": torch.zeros_like(estimate), "nfe": 0} | {
            "seconds": seconds
        }


AUTO = "auto"  # method "auto": what sample_posterior(sampler="auto") picks per task, at the bench's --steps if given
TUNED = ":tuned"  # method "NAME:tuned": sampler NAME with its TUNE_GRID options tuned per task on --tune-images


@dataclass(frozen=True)
class SamplerMethod:
    """A posterior sampler through `sample_posterior`, with the task's preset where it has one, the bench's steps,
    and the "K" (every sampler) and "sampler.K" options. `name` is the rows' method: the sampler's name, or
    "NAME:tuned" (`tune`), whose TUNE_GRID options not set by a "NAME.K" option are tuned per task (`tuned`) and
    held in `params`."""

    name: str
    needs_prior: bool = True
    params: tuple[tuple[str, float], ...] = ()

    @property
    def sampler(self) -> str:
        return self.name.removesuffix(TUNED)

    @property
    def tune(self) -> bool:
        return self.name.endswith(TUNED)

    def options(self, cfg: BenchConfig, preset: str | None) -> dict:
        """The sampler options for a task with sampler preset `preset` (None: no task's): the bench's --steps, then
        the options for every sampler, then the tuned ones, then this sampler's own ("pnp_ula.steps=200" wins over
        --steps 100)."""
        options = {"steps": cfg.steps} if cfg.steps else {}
        options |= {k: v for k, v in cfg.sampler_options.items() if "." not in k} | dict(self.params)
        options |= _own_options(cfg, self.sampler)
        if preset is not None and "preset" not in options:
            options["preset"] = preset
        return options

    def tuned(self, cfg, task_name: str, task, ops: tuple, prior, channels: int, announce: bool) -> SamplerMethod:
        """This method with its sampler's TUNE_GRID options (those not set by a "NAME.K" option) chosen for the task:
        the combination whose posterior mean (cfg.num_samples samples, seed TUNE_SEED) has the best mean PSNR on
        TUNE_CROPS crops of cfg.tune_images (the same crops and noise as the baselines'), kept in out/tuned.json.
        ops: (the operator that measures, the one the sampler is given); channels: of the crops."""
        fixed = _own_options(cfg, self.sampler)
        preset = task.presets.get(self.sampler)

        def choose(crops, y):
            def score(candidate):
                method = SamplerMethod(self.name, params=tuple(candidate.items()))
                result = sample_posterior(
                    y,
                    ops[1],
                    prior=prior,
                    sampler=self.sampler,
                    num_samples=cfg.num_samples,
                    batch_size=cfg.batch_size,
                    seed=TUNE_SEED,
                    device=prior.device,
                    dtype=cfg.dtype,
                    progress=False,
                    **method.options(cfg, preset),
                )
                return float(psnr(result.mean.float().cpu(), crops).mean())

            return grid_search(sampler_class(self.sampler).TUNE_GRID, fixed, score)

        params = _tuned_params(cfg, task_name, self.name, ops[0], channels, choose)
        if announce:
            shown = ", ".join(f"{k}={v:g}" for k, v in params.items())
            print(
                f"tuned: {self.sampler} on {task_name}: {shown} (best PSNR of the mean of {cfg.num_samples} samples on "
                f"{TUNE_CROPS} crops of {cfg.tune_images})",
                flush=True,
            )
        return SamplerMethod(self.name, params=tuple(params.items()))

    def check_options(self, cfg) -> None:
        if self.sampler != AUTO:  # auto's options go to the sampler it picks per task
            get_sampler(self.sampler, **self.options(cfg, None))  # an unknown option or a bad value raises
        if self.tune and cfg.tune_images is None:
            raise ValueError(f"method {self.name!r} tunes {self.sampler} on other images: give --tune-images DIR")

    def refusal(self, cfg, task, prior, op) -> str | None:
        try:
            if self.sampler == AUTO:
                choose_sampler(prior, op, on_cpu=prior.device.type == "cpu")
            else:
                get_sampler(self.sampler, **self.options(cfg, task.presets.get(self.sampler))).check(prior, op)
        except ValueError as err:
            return str(err)
        return None

    def estimate(self, cfg, task, op, y, ids, seed, prior, device) -> dict:
        res = sample_posterior(
            y,
            op,
            prior=prior,
            sampler=self.sampler,
            num_samples=cfg.num_samples,
            batch_size=cfg.batch_size,
            seed=seed,
            device=device,
            dtype=cfg.dtype,
            progress=False,
            measurement_ids=ids,
            **self.options(cfg, task.presets.get(self.sampler)),
        )
        result = {"mean": res.mean, "samples": res.samples, "std": res.std, "nfe": res.nfe, "seconds": res.seconds}
        result |= {"dtype": res.config["dtype"], "estimate": res.config["mean_estimate"]}
        if self.sampler == AUTO:  # which sampler auto picked, with its steps
            result["sampler"] = f"{res.config['sampler']['name']}-{res.config['sampler']['steps']}"
        if "kernel" in res.extras:  # blind samplers: (n, S, kh, kw)
            result["kernel"] = res.extras["kernel"].cpu()
        return result


def get_method(name: str) -> Method:
    """The baseline or sampler `name`; an unknown name lists the valid ones."""
    if name in BASELINES:
        return BaselineMethod(name)
    if name in list_samplers() or name == AUTO:
        return SamplerMethod(name)
    base = name.removesuffix(TUNED)
    if name.endswith(TUNED) and base in list_samplers():
        if not sampler_class(base).TUNE_GRID:
            tunable = [n for n in list_samplers() if sampler_class(n).TUNE_GRID]
            raise ValueError(f"sampler {base!r} has no options to tune; tunable: {', '.join(tunable) or 'none'}")
        return SamplerMethod(name)
    valid = sorted([*BASELINES, *list_samplers(), AUTO])
    raise ValueError(f"unknown method {name!r}; valid: {', '.join(valid)}, and SAMPLER{TUNED} for a tunable sampler")


def _run_method(cfg, method: Method, task, op, y, ids, seed, prior, device) -> dict:
    """The method's result for images `ids` with seconds per image and the peak memory ("peak_mb")."""
    reset_peak_memory(device)
    result = method.estimate(cfg, task, op, y, ids, seed, prior, device)
    return result | {"seconds": result["seconds"] / len(ids), "peak_mb": round(peak_memory_mb(device), 1)}


def _best_run(cfg, method: Method, task, op, y, truth, ids, seed, prior, device) -> dict:
    """`_run_method`; for a sampler on a task with best_of = k > 1, k runs with independent chains (run 0 with the
    bench's seed, run r with seed_for(seed, r)) keeping, per image, the run whose mean has the highest PSNR against
    `truth` (the papers' oracle best-of for phase retrieval). NFE and seconds are those of the k runs together."""
    runs = task.best_of if isinstance(method, SamplerMethod) else 1
    best = _run_method(cfg, method, task, op, y, ids, seed, prior, device)
    if runs == 1:
        return best
    score, seconds, peak = psnr(best["mean"].float(), truth), best["seconds"], best["peak_mb"]
    for r in range(1, runs):
        run = _run_method(cfg, method, task, op, y, ids, seed_for(seed, r), prior, device)
        run_score = psnr(run["mean"].float(), truth)
        better = run_score > score
        for key in ("mean", "samples", "std", "kernel"):
            if key in best:
                best[key] = torch.where(better.reshape(-1, *[1] * (best[key].ndim - 1)), run[key], best[key])
        score, seconds, peak = torch.maximum(score, run_score), seconds + run["seconds"], max(peak, run["peak_mb"])
    return best | {"nfe": runs * best["nfe"], "seconds": seconds, "peak_mb": peak, "best_of": runs}


def _aligned(result: dict, samples: torch.Tensor) -> dict:
    """The result with its samples replaced by aligned ones (B, S, C, H, W), mean and std recomputed."""
    mean, std = sample_moments(samples)
    return result | {"samples": samples, "mean": mean, "std": std}


def _score(result, x, paths, ids, task, method, seed, lpips_net: str) -> list[dict]:
    estimate = result["mean"].float()
    samples = result["samples"]  # (B, S, C, H, W); S = 1 for baselines, whose one sample is the mean
    one_sample = samples.shape[1] == 1
    scores = {"psnr": psnr(estimate, x).tolist(), "ssim": ssim(estimate, x).tolist()}
    if lpips_net != "none":
        scores["lpips"] = lpips(estimate, x, net=lpips_net).tolist()
        scores["lpips_sample"] = (
            scores["lpips"] if one_sample else lpips(samples[:, 0].float(), x, net=lpips_net).tolist()
        )
    if not one_sample:
        scores |= {k: v.tolist() for k, v in calibration_metrics(samples, x).items()}
    return [
        {
            "task": task,
            "method": method,
            "image": paths[i].name,
            "index": i,
            "seed": seed,
            **{k: round(v[n], 5) for k, v in scores.items()},
            "nfe": result["nfe"],
            "seconds": round(result["seconds"], 4),
            "peak_mb": result["peak_mb"],
            **({"best_of": result["best_of"]} if "best_of" in result else {}),
            **{key: result[key] for key in ("dtype", "estimate", "sampler") if key in result},
        }
        for n, i in enumerate(ids)
    ]


def read_rows(out: Path) -> list[dict]:
    """All rows of every process in `out`, deduplicated by (task, method, image, seed), sorted; a line that is
    not a row (cut by a killed run) is skipped with a warning naming its file and line."""
    rows = {}
    for path in sorted(Path(out).glob("rows-*.jsonl")):
        for r in _rows_in(path)[0]:
            rows[tuple(r[k] for k in KEY)] = r
    return sorted(rows.values(), key=lambda r: (r["task"], r["method"], r["index"], r["seed"]))


def _rows_in(path: Path) -> tuple[list[dict], int]:
    """The rows of one rows file and how many of its lines were not rows (each with a warning)."""
    rows, bad = [], 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and all(k in row for k in (*KEY, "index"))):
            warnings.warn(f"{path} line {number} is not a complete row (cut by a killed run?): skipped", stacklevel=3)
            bad += 1
            continue
        rows.append(row)
    return rows, bad


def _drop_malformed_rows(out: Path) -> None:
    """Rewrite each rows file that has lines which are not rows without them (atomically), so that the rows
    appended next start on a line of their own; the rows those lines held are recomputed, as missing ones."""
    for path in sorted(out.glob("rows-*.jsonl")):
        rows, bad = _rows_in(path)
        if bad:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step (a temporary file renamed over it: never half written)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: ranks may write at once
    temporary.write_text(text)
    os.replace(temporary, path)


def summary(rows: list[dict]) -> list[dict]:
    """One entry per (task, method): mean and std over images and seeds of each metric, NFE, seconds, peak MB."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    table = []
    for (task, method), sel in groups.items():
        entry = {"task": task, "method": method, "images": len({r["image"] for r in sel}), "runs": len(sel)}
        for metric in metric_columns(rows):
            if all(metric in r for r in sel):
                v = torch.tensor([r[metric] for r in sel], dtype=torch.float64)
                entry[metric] = float(v.mean())
                entry[metric + "_std"] = float(v.std()) if len(v) > 1 else 0.0
        entry["nfe"] = sel[0]["nfe"]
        entry["seconds"] = sum(r["seconds"] for r in sel) / len(sel)
        entry["peak_mb"] = max(r["peak_mb"] for r in sel)
        table.append(entry)
    return table


def metric_columns(rows: list[dict]) -> list[str]:
    """The metrics the rows hold: METRIC_COLUMNS first, then the others (tasks' own, kernel errors) by first use."""
    seen = {k: None for r in rows for k in r if k not in NOT_METRICS}
    return [m for m in METRIC_COLUMNS if m in seen] + [m for m in seen if m not in METRIC_COLUMNS]


def write_summary(out: Path, rows: list[dict]) -> str:
    """summary.md and summary.csv in `out`; returns the Markdown table."""
    table = summary(rows)
    metrics = [m for m in metric_columns(rows) if any(m in e for e in table)]
    header = ["task", "method", *[m.upper() for m in metrics], "NFE", "s / image", "peak MB", "images", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in table:
        cells = [e["task"], e["method"]]
        cells += [f"{e[m]:.3f} +- {e[m + '_std']:.3f}" if m in e else "-" for m in metrics]
        cells += [str(e["nfe"]), f"{e['seconds']:.2f}", f"{e['peak_mb']:.0f}", str(e["images"]), str(e["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    (out / "summary.md").write_text(markdown + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=sorted({k for e in table for k in e}, key=lambda k: (k != "task", k)))
    writer.writeheader()
    writer.writerows(table)
    (out / "summary.csv").write_text(buffer.getvalue())
    return markdown


def _figure_path(out: Path, task: str, method: str) -> Path:
    return out / "figures" / f"{task}_{method.replace(':', '-')}.png"


def _example_figure(path: Path, task, op, truth, y, result) -> None:
    """The first image's figure (the task's own, or truth | measurement | mean | std | samples) at `path`."""
    from posterior_diffusion.figures import restoration_figure

    path.parent.mkdir(exist_ok=True)
    mean, std, samples = result["mean"][0], result["std"][0], result["samples"][0]
    if task.figure is not None:
        task.figure(path, op, truth, y, mean, std, samples)
        return
    measurement = y if y.ndim == 3 else None  # image-like measurements (any size) are shown
    restoration_figure(path, measurement, mean, std, samples, truth)


def _cost_figures(out: Path, rows: list[dict]) -> None:
    """Per task: mean PSNR against NFE (log scale; baselines at NFE 0 are drawn at 1) for every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    table = summary(rows)
    for task in sorted({e["task"] for e in table}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for e in (e for e in table if e["task"] == task):
            ax.errorbar(max(e["nfe"], 1), e["psnr"], yerr=e["psnr_std"], fmt="o", capsize=3, label=e["method"])
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image (baselines at 1)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(task)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, folder / f"psnr_vs_nfe_{task}.png", dpi=100)


def _calibration_figures(out: Path, rows: list[dict]) -> None:
    """Per task with calibration rows: observed coverage of the central intervals (mean over images) against the
    level, one line per method, and the diagonal of perfect calibration (figures/calibration_TASK.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = COVERAGE_COLUMNS
    table = [e for e in summary(rows) if all(c in e for c in columns)]
    for task in sorted({e["task"] for e in table}):
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="calibrated")
        for e in (e for e in table if e["task"] == task):
            ax.plot(COVERAGE_LEVELS, [e[c] for c in columns], marker="o", label=e["method"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("interval level (expected coverage)")
        ax.set_ylabel("observed coverage")
        ax.set_title(task)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / "figures" / f"calibration_{task}.png", dpi=100)
