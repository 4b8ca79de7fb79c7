"""`posterior-diffusion bench speed`: what each sampler costs beyond its network evaluations.

For each sampler, dtype and batch size: the wall time of `sample_posterior` for `steps` steps, its network
evaluations (NFE), and the time of the same number of bare network evaluations on the same batch: forward only
(`prior.predict` under inference_mode), or forward + backward for samplers that differentiate through the network
(DPS). Latent priors also count their autoencoder passes (`LatentPrior.autoencoder_passes`: images encoded or
decoded, with or without a backward pass) and time as many bare passes. A sampler whose algorithm does work of its
own besides the network says so (`Sampler.own_work`: GibbsDDRM's kernel-conditional draws, a Cholesky factor per
chain and draw), timed as that many bare calls; the row keeps that time apart (`algorithm_seconds`), so the ratio
over the network alone stays readable. overhead = sampler time / bare time: everything the engine does beyond that
work (operators, updates, bookkeeping); 1.00 means none. Also images per second and peak memory (CUDA allocator
peak; on CPUs the process's peak resident memory, which only grows).

Layout and compilation are columns too: the network's memory format in the run, channels-last or contiguous
(`--layouts auto`: what each run chooses, `UNetPrior.prepare`; or pinned, `UNetPrior.set_channels_last`), and
eager or compiled (`compile_network`; the warm-up run then compiles, and its seconds are the row's
`compile_seconds`), or replaying its forward passes from CUDA graphs (`use_cuda_graphs`; on a GPU only, the same
as eager elsewhere).

Each time is the fastest of `repeats` runs (after a warm-up), the sampler's and the bare network's alike, as
`timeit` does: other processes only ever add time, so the minimum is the least noisy estimate of what the code costs.
The sampler's runs and the bare network's alternate, so that a slow spell of the machine slows both alike.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posterior_diffusion.api import on_device, sample_posterior
from posterior_diffusion.priors.cpu_memory import reuse_freed_memory
from posterior_diffusion.samplers import sampler_applies, sampler_class
from posterior_diffusion.tasks import TASKS, Task
from posterior_diffusion.tensor_utils import peak_memory_mb, reset_peak_memory

LAYOUTS = ("auto", "channels_last", "contiguous")
COMPILE_MODES = ("eager", "compiled", "cuda_graphs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, device: torch.device) -> float:
    """Seconds of one call of fn(), synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _pass_seconds(fn, v: torch.Tensor, gradient: bool, count: int = 1) -> float:
    """Seconds for `count` calls of fn(v) after one warm-up call: forward in inference mode, or forward + backward
    to v."""

    def run(n: int) -> None:
        for _ in range(n):
            if gradient:
                v_in = v.detach().requires_grad_(True)
                torch.autograd.grad(fn(v_in).float().square().sum(), v_in)
            else:
                with torch.inference_mode():
                    fn(v)

    run(1)  # warm-up
    return _seconds(lambda: run(count), v.device)


def bare_network_seconds(prior, x: torch.Tensor, evaluations: int, gradient: bool) -> float:
    """Seconds for `evaluations` network calls on batch x (B, C, H, W): forward, or forward + backward (after one
    warm-up call)."""
    t = torch.full((x.shape[0],), prior.num_timesteps // 2, device=x.device, dtype=torch.long)
    return _pass_seconds(lambda v: prior.predict(v, t).x0_hat, x, gradient, evaluations)


def autoencoder_seconds(prior, x: torch.Tensor, z: torch.Tensor, passes: dict) -> float:
    """Seconds for the autoencoder passes of a run ({("encode" | "decode", with_gradient): images}), timed on
    images x (B, C, H, W) and their latents z: forward, or forward + backward (each after a warm-up pass)."""
    total = 0.0
    for (kind, gradient), images in passes.items():
        fn, v = (prior.encode, x) if kind == "encode" else (prior.decode, z)
        total += _pass_seconds(fn, v, gradient) * images / v.shape[0]
    return total


def speed_task(name: str, prior, size: int) -> Task | None:
    """The task sampler `name` is timed on at image side `size`: random_inpaint where it applies, else the first
    task that does (blind samplers look at blind tasks first); None if none does."""
    blind = sampler_class(name).blind
    order = sorted(TASKS.items(), key=lambda item: (item[1].blind != blind, item[0] != "random_inpaint", item[0]))
    for _, task in order:
        if task.channels in (None, prior.default_image_shape()[0]) and sampler_applies(
            name, prior, task.build(size), task.presets.get(name, "")
        ):
            return task
    return None


def speed_rows(
    prior,
    samplers,
    batch_sizes,
    size: int,
    steps: int,
    dtype: str | None = None,
    repeats: int = 3,
    progress: bool = False,
) -> list[dict]:
    """One row per (sampler, batch size) on `prior` (already on its device) with images of side `size`;
    every time is the fastest of `repeats` runs. `progress`: a line per row being timed and per sampler left out."""
    device = prior.device
    channels = prior.default_image_shape()[0]
    rows = []
    for name in samplers:
        task = speed_task(name, prior, size)
        if task is None:  # e.g. a sampler that needs a latent prior, on a pixel prior
            if progress:
                print(f"skipped: {name}: no task it applies to with this prior ({prior.space} space)", flush=True)
            continue
        op = task.build(size)
        gradient = sampler_class(name).network_gradient
        for batch in batch_sizes:
            x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            y = op.measure(x, torch.Generator().manual_seed(1))
            warm_up = sample_posterior(y, op, prior=prior, sampler=name, progress=False, steps=2)  # compiles if asked
            if progress:  # after the warm-up run, which chose the layout
                layout = "channels-last" if prior.channels_last else "contiguous"
                mode = (", compiled" if prior.compiled else "") + (", CUDA graphs" if prior.cuda_graphs else "")
                print(
                    f"timing {name} on {task.operator}, batch {batch}, {dtype or 'float32'}, {layout}{mode} "
                    f"({repeats} runs)",
                    flush=True,
                )
            with torch.no_grad():
                state = prior.from_image(x.to(device))  # the network's input: x, or its latents
            counter = getattr(prior, "autoencoder_passes", {})
            sampler = sampler_class(name)(steps=steps)
            work = sampler.own_work(prior, on_device(op, device), y.to(device), state)  # a copy: op stays
            chains = sampler.chains_per_measurement  # MCGdiff: each network call takes `particles` states per image
            network_batch = state.repeat_interleave(chains, 0)
            runs, bare_runs, algorithm_runs, peak = [], [], [], 0.0
            with reuse_freed_memory(device):  # the bare work reuses freed memory as the sampler runs do
                for _ in range(repeats):  # sampler and bare network alternate: a slow spell slows both alike
                    reset_peak_memory(device)
                    counter.clear()
                    runs.append(sample_posterior(y, op, prior=prior, sampler=name, progress=False, steps=steps))
                    peak = max(peak, peak_memory_mb(device))
                    passes = dict(counter)  # each run makes the same passes
                    bare = bare_network_seconds(prior, network_batch, runs[-1].nfe // chains, gradient)
                    coding = autoencoder_seconds(prior, x.to(device), state, passes) if passes else 0.0
                    bare_runs.append(bare + coding)
                    if work is not None:
                        algorithm_runs.append(_pass_seconds(work[0], state, gradient=False, count=work[1]))
            res, bare = min(runs, key=lambda r: r.seconds), min(bare_runs)
            algorithm_seconds = min(algorithm_runs, default=0.0)
            rows.append(
                {
                    "sampler": name,
                    "dtype": dtype or "float32",
                    "layout": "channels_last" if prior.channels_last else "contiguous",
                    "compiled": prior.compiled,
                    "compile_seconds": warm_up.seconds if prior.compiled else 0.0,
                    "cuda_graphs": prior.cuda_graphs,
                    "batch": batch,
                    "nfe": res.nfe,
                    "seconds": res.seconds,
                    "bare_seconds": bare + algorithm_seconds,
                    "algorithm_seconds": algorithm_seconds,
                    "overhead": res.seconds / (bare + algorithm_seconds),
                    "network": ("forward+backward" if gradient else "forward")
                    + (" + autoencoder" if passes else "")
                    + (f" + {work[2]}" if work is not None else ""),
                    "autoencoder_images": sum(passes.values()),
                    "images_per_s": batch / res.seconds,
                    "peak_mb": peak,
                    "repeats": repeats,
                }
            )
    return rows


def speed_table(rows: list[dict]) -> str:
    lines = [
        "| sampler | dtype | layout | network mode | batch | NFE | network | s | bare s | overhead | images / s "
        "| peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bare = f"{r['bare_seconds']:.2f}"
        if r["algorithm_seconds"]:  # network (+ autoencoder) + the algorithm's own work
            bare += f" ({r['bare_seconds'] - r['algorithm_seconds']:.2f} + {r['algorithm_seconds']:.2f})"
        mode = " + ".join(
            [f"compiled ({r['compile_seconds']:.0f} s)"] * r["compiled"] + ["CUDA graphs"] * r["cuda_graphs"]
        )
        lines.append(
            f"| {r['sampler']} | {r['dtype']} | {r['layout']} | {mode or 'eager'} | {r['batch']} | {r['nfe']} | "
            f"{r['network']} | {r['seconds']:.2f} | "
            f"{bare} | {r['overhead']:.2f} | {r['images_per_s']:.2f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


@dataclass
class SpeedConfig:
    """Settings of `posterior-diffusion bench speed` (one --option per field)."""

    out: str = field(metadata={"help": "output folder (speed.md, speed.json)"})
    prior: str | None = field(default=None, metadata={"help": "prior spec (default: the built-in RGB prior)"})
    size: int = field(default=64, metadata={"help": "image side in pixels"})
    batch_sizes: tuple[int, ...] = field(default=(1, 4), metadata={"help": "batch sizes (images per call)"})
    steps: int = field(default=20, metadata={"help": "sampler steps of each timed run"})
    dtypes: tuple[str, ...] = field(default=("float32",), metadata={"help": "network dtypes"})
    layouts: tuple[str, ...] = field(
        default=("auto",),
        metadata={"help": "network memory formats: auto (each run's choice), channels_last, contiguous"},
    )
    compile: tuple[str, ...] = field(
        default=("eager",),
        metadata={"help": "eager, compiled (torch.compile; its time is a column), cuda_graphs (forward passes)"},
    )
    methods: tuple[str, ...] | None = field(default=None, metadata={"help": "samplers (default all that apply)"})
    repeats: int = field(default=3, metadata={"help": "each time is the fastest of this many runs"})
    random_init: bool = field(
        default=False,
        metadata={
            "help": "--prior names an ADM architecture (adm-ffhq-256, adm-imagenet-256-uncond), timed with random "
            "weights (a paper-size network, no download; speed does not depend on the weights)"
        },
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default cuda if available)"})


def run_speed(cfg: SpeedConfig, progress: bool = True) -> str:
    """speed_rows for every dtype, written to out/speed.md and out/speed.json; returns the table."""
    from posterior_diffusion.api import default_device
    from posterior_diffusion.priors import default_prior_name, load_prior
    from posterior_diffusion.priors.adm import random_adm_prior
    from posterior_diffusion.samplers import list_samplers

    if cfg.random_init and not cfg.prior:
        raise ValueError("--random-init needs --prior ARCH, an ADM architecture such as adm-ffhq-256")
    for name in cfg.methods or ():
        sampler_class(name)  # an unknown name is an error listing the valid ones, not left out
    for values, valid, option in ((cfg.layouts, LAYOUTS, "layouts"), (cfg.compile, COMPILE_MODES, "compile")):
        unknown = set(values) - set(valid)
        if unknown:
            raise ValueError(f"unknown {option} {', '.join(sorted(unknown))}; valid: {', '.join(valid)}")
    samplers = list(cfg.methods) if cfg.methods else list_samplers()
    device = cfg.device or default_device()
    rows = []
    for dtype, layout, mode in itertools.product(cfg.dtypes, cfg.layouts, cfg.compile):
        if cfg.random_init:
            prior = random_adm_prior(cfg.prior, dtype).to(device)
        else:  # a fresh prior per combination: a compiled network stays compiled
            prior = load_prior(cfg.prior or f"builtin:{default_prior_name(3)}", device=device, dtype=dtype)
        prior.set_channels_last(None if layout == "auto" else layout == "channels_last")
        if mode == "compiled":
            torch._dynamo.reset()  # a fresh compile cache: the previous priors' graphs would exhaust its limit
            prior.compile_network()
        elif mode == "cuda_graphs":
            prior.use_cuda_graphs()
        rows += speed_rows(prior, samplers, cfg.batch_sizes, cfg.size, cfg.steps, dtype, cfg.repeats, progress)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = speed_table(rows)
    (out / "speed.md").write_text(table + "\n")
    (out / "speed.json").write_text(json.dumps(rows, indent=1))
    return table
