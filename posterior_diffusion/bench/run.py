"""`run_bench`: the tasks x methods x images of a BenchConfig, sharded over processes, resumable.

- image i is centre-cropped to `size`; its measurement noise is seeded by (seed, i) and its chains by
  (seed, i, sample), so a row does not depend on the batching or on the number of processes;
- each process (torchrun / accelerate launch: images i with i % num_processes == rank) appends its rows as soon
  as a group of images is done, and a rerun skips what any rows file holds (`store`);
- one run at a time per folder (`store.folder_lock`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from posterior_diffusion.baselines import BASELINES
from posterior_diffusion.bench.config import BenchConfig
from posterior_diffusion.bench.methods import Method, TaskRun, get_method
from posterior_diffusion.bench.plan import PlannedTask, check_options, load_bench_prior, lpips_net, plan
from posterior_diffusion.bench.report import calibration_figures, cost_figures, write_summary
from posterior_diffusion.bench.store import (
    KEY,
    append_rows,
    check_same_dtype,
    drop_malformed_rows,
    folder_lock,
    read_rows,
)
from posterior_diffusion.images import list_images, load_center_crops
from posterior_diffusion.metrics import calibration_metrics, kernel_errors, lpips, psnr, ssim
from posterior_diffusion.samplers.long_run import LongRunWarning
from posterior_diffusion.tasks import TASKS, get_task, load_tasks_file
from posterior_diffusion.tensor_utils import measure_images, peak_memory_mb, reset_peak_memory, sample_moments, seed_for


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
        prior = load_bench_prior(cfg, methods, device)
        planned = plan(cfg, tasks, methods, prior, announce=state.is_main_process)  # --quiet hides bars only
        lpips_name = lpips_net(cfg, announce=state.is_main_process)
        channels = prior.default_image_shape()[0] if prior is not None else 3
        paths = list_images(cfg.images)[: cfg.num_images]
        x = load_center_crops(paths, channels, cfg.size)
        if state.is_main_process:
            drop_malformed_rows(out)
        state.wait_for_everyone()
        existing = read_rows(out)
        check_same_dtype(out, existing, cfg.dtype, BASELINES)
        done = {tuple(r[k] for k in KEY) for r in existing}
        worker = _Worker(cfg, out, prior, device, x, paths, done, state.process_index, state.num_processes, progress)
        for task in planned:
            for seed in cfg.seeds:
                worker.task(task, seed, lpips_name)
        state.wait_for_everyone()
        rows = read_rows(out)
        if state.is_main_process:
            write_summary(out, rows)
            cost_figures(out, rows)
            calibration_figures(out, rows)
    return rows


@dataclass
class _Worker:
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

    def task(self, planned: PlannedTask, seed: int, lpips_name: str) -> None:
        """The planned methods on this process's images of one task with noise and chain seed `seed`. The example
        figure (first image, first seed) is drawn before that image's rows are written, and a figure missing beside
        written rows (deleted, lost to a kill or a full disk) is drawn again from image 0."""
        mine = list(range(self.rank, len(self.paths), self.num_processes))
        if not mine:
            return
        name, task = planned.name, planned.task
        x = self.x
        if task.channels not in (None, x.shape[1]):  # e.g. 1-channel black-hole images with no prior to fix it
            x = load_center_crops(self.paths, task.channels, self.cfg.size)
        y = measure_images(planned.op, x[mine], seed, mine)
        run = TaskRun(self.cfg, task, planned.given, self.prior, self.device)
        draws_figure = mine[0] == 0 and seed == self.cfg.seeds[0]
        for method in planned.methods:
            todo = [k for k, i in enumerate(mine) if (name, method.name, self.paths[i].name, seed) not in self.done]
            figure = figure_path(self.out, name, method.name)
            jobs = [(group, True) for group in _groups(todo, self.cfg.images_per_call)]  # (positions, write rows)
            if draws_figure and 0 not in todo and not figure.exists():
                jobs.insert(0, ([0], False))  # the rows are written, the figure is not: image 0 again for it
            for group, writes_rows in jobs:
                ids = [mine[k] for k in group]
                result = best_run(method, run, y[group], x[ids], ids, seed)
                if task.align is not None:
                    result = _aligned(result, task.align(planned.given, result["samples"]))
                if draws_figure and ids[0] == 0:
                    _example_figure(figure, task, planned.given, x[0], y[group[0]], result)
                if writes_rows:
                    rows = self._rows(result, x[ids], y[group], planned, method.name, seed, ids, lpips_name)
                    append_rows(self.out, self.rank, rows)
                if self.progress:
                    what = "done" if writes_rows else "drawn again for the missing figure"
                    print(f"[rank {self.rank}] {name} {method.name} seed {seed}: images {ids} {what}", flush=True)

    def _rows(self, result, truth, y, planned: PlannedTask, method, seed, ids, lpips_name) -> list[dict]:
        """The rows of `result` for images `ids` (truth (n, C, H, W), measurements y (n, ...))."""
        task = planned.task
        rows = score(result, truth, self.paths, ids, planned.name, method, seed, lpips_name)
        if task.metrics is not None:
            extra = task.metrics(planned.given, y, result["mean"], truth)
            for n, row in enumerate(rows):
                row.update({k: round(float(v[n]), 5) for k, v in extra.items()})
        if task.blind:  # the method's kernel estimate (mean over samples), or the guess it was given
            kernel = result.get("kernel", planned.given.kernel.expand(len(ids), 1, *planned.given.kernel.shape[-2:]))
            errors = kernel_errors(kernel, planned.op.kernel)
            for n, row in enumerate(rows):
                row.update({k: round(float(v[n].mean()), 5) for k, v in errors.items()})
        return rows


def _groups(items: list[int], n: int) -> list[list[int]]:
    return [items[k : k + n] for k in range(0, len(items), max(1, n))]


def run_method(method: Method, run: TaskRun, y, ids, seed) -> dict:
    """The method's result for images `ids` with seconds per image and the peak memory ("peak_mb")."""
    reset_peak_memory(run.device)
    result = method.estimate(run, y, ids, seed)
    return result | {"seconds": result["seconds"] / len(ids), "peak_mb": round(peak_memory_mb(run.device), 1)}


def best_run(method: Method, run: TaskRun, y, truth, ids, seed) -> dict:
    """`run_method`; for a method with k = method.runs(task) > 1 (a sampler on a task with best_of = k), k runs with
    independent chains (run 0 with the bench's seed, run r with seed_for(seed, r)) keeping, per image, the run whose
    mean has the highest PSNR against `truth` (the papers' oracle best-of for phase retrieval). NFE and seconds are
    those of the k runs together."""
    runs = method.runs(run.task)
    best = run_method(method, run, y, ids, seed)
    if runs == 1:
        return best
    best_score, seconds, peak = psnr(best["mean"].float(), truth), best["seconds"], best["peak_mb"]
    for r in range(1, runs):
        other = run_method(method, run, y, ids, seed_for(seed, r))
        other_score = psnr(other["mean"].float(), truth)
        better = other_score > best_score
        for key in ("mean", "samples", "std", "kernel"):
            if key in best:
                best[key] = torch.where(better.reshape(-1, *[1] * (best[key].ndim - 1)), other[key], best[key])
        best_score = torch.maximum(best_score, other_score)
        seconds, peak = seconds + other["seconds"], max(peak, other["peak_mb"])
    return best | {"nfe": runs * best["nfe"], "seconds": seconds, "peak_mb": peak, "best_of": runs}


def _aligned(result: dict, samples: torch.Tensor) -> dict:
    """The result with its samples replaced by aligned ones (B, S, C, H, W), mean and std recomputed."""
    mean, std = sample_moments(samples)
    return result | {"samples": samples, "mean": mean, "std": std}


def score(result, x, paths, ids, task, method, seed, lpips_name: str) -> list[dict]:
    """One row per image of `ids`: PSNR / SSIM / LPIPS of the mean (and LPIPS of the first sample), the calibration
    metrics of 2 or more samples, NFE, seconds, peak memory and what the result records (dtype, estimate, ...)."""
    estimate = result["mean"].float()
    samples = result["samples"]  # (B, S, C, H, W); S = 1 for baselines, whose one sample is the mean
    one_sample = samples.shape[1] == 1
    scores = {"psnr": psnr(estimate, x).tolist(), "ssim": ssim(estimate, x).tolist()}
    if lpips_name != "none":
        scores["lpips"] = lpips(estimate, x, net=lpips_name).tolist()
        scores["lpips_sample"] = (
            scores["lpips"] if one_sample else lpips(samples[:, 0].float(), x, net=lpips_name).tolist()
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


def figure_path(out: Path, task: str, method: str) -> Path:
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
