"""The loop every trainer shares: accelerate (device, mixed precision, processes, checkpoint state), AdamW with
diffusers' linear warm-up, an EMA copy of the weights (the weights that get exported), atomic checkpoints, exact
resume and a log.

Exact resume: everything random in step k comes from generators seeded by (seed, k, process index), and the
initial weights depend on the seed only, so a resumed run repeats exactly what an uninterrupted one does (on
the same kind of device).
Speed: the loss stays on the device and is read back every `LOG_EVERY` steps, so the host never waits for the
accelerator inside a step; the EMA update uses torch's foreach kernels.
A trainer supplies a `TrainingJob`: the model, the loss of one step, and how to write its output.

Checkpoint folder (`output/checkpoint`, replaced atomically): accelerate's `save_state` files (model.safetensors,
optimizer.bin, scheduler.bin, random_states_*.pkl, scaler.pt with fp16), all read back with
`torch.load(weights_only=True)`; the EMA weights (ema.safetensors) and the step, EMA counters and losses
(state.json) are written here, not with `register_for_checkpointing`, because accelerate reads registered objects
with `weights_only=False` (pickled code would run).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LOG_EVERY = 25  # steps between reads of the loss (progress bar, train_log.jsonl)


@dataclass
class LoopConfig:
    """Settings every trainer shares (a trainer's config subclasses this and may change the defaults).

    Crops of `crop_size` with flips from the images in `data`; AdamW with `warmup_steps` of linear warm-up
    (update k, from 0, runs at lr * min(1, (k + 1) / warmup_steps));
    diffusers' EMAModel with warm-up (power `ema_power`, max decay `ema_max_decay`); accelerate mixed precision
    "no", "bf16" or "fp16"; a checkpoint every `checkpoint_every` steps into `output`.
    """

    data: str = field(metadata={"help": "folder of training images"})
    output: str = field(metadata={"help": "output folder (resumes if it holds a checkpoint)", "flag": "--out"})
    channels: int = field(default=3, metadata={"help": "1 (gray) or 3 (RGB)"})
    crop_size: int = field(default=64, metadata={"help": "side of the random training crops in pixels"})
    batch_size: int = field(default=32, metadata={"help": "crops per step"})
    steps: int = field(default=10000, metadata={"help": "total optimisation steps of the run"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate after the warm-up"})
    warmup_steps: int = field(default=200, metadata={"help": "steps of linear learning-rate warm-up"})
    ema_max_decay: float = field(default=0.9999, metadata={"help": "largest decay of the exported EMA weights"})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warm-up power"})
    block_out_channels: tuple[int, ...] = field(default=(), metadata={"help": "channels of each network level"})
    mixed_precision: str = field(default="bf16", metadata={"help": "no, bf16 or fp16 (accelerate autocast)"})
    checkpoint_every: int = field(default=250, metadata={"help": "steps between checkpoints and exports"})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights, crops, noise and timesteps"})

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.crop_size % factor:
            raise ValueError(f"crop_size {self.crop_size} must be divisible by {factor} (the network's downsampling)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")


@dataclass
class TrainingJob:
    """model: the trained module; loss(model, randomness, accelerator) -> scalar loss of one step (the model is
    the accelerate-prepared one; randomness only from the `StepRandomness` generators); export(model): write the
    usable output (called with the EMA weights loaded); finish(losses): figures at the end of a run (main process
    only; also when a run stops at its time limit)."""

    model: torch.nn.Module
    loss: Callable
    export: Callable[[torch.nn.Module], None]
    finish: Callable[[list[float]], None]


@dataclass
class StepRandomness:
    """The generators of one training step: `host` (CPU) for data indices and crop positions, `device` (on the
    accelerator) for noise and timesteps, so that drawing them costs no transfer."""

    host: torch.Generator
    device: torch.Generator


def step_generators(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> StepRandomness:
    """The generators of training step `step` on process `rank`."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(4, dtype=np.uint32)
    host = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    on_device = torch.Generator(device=device).manual_seed(int(state[2]) << 32 | int(state[3]))
    return StepRandomness(host, on_device)


def fit(
    cfg: LoopConfig,
    build: Callable,
    max_steps_this_run: int | None = None,
    progress: bool = True,
    time_limit: float | None = None,
) -> Path:
    """Train (or resume) until cfg.steps; returns cfg.output. `build(accelerator)` returns the TrainingJob.
    `max_steps_this_run` stops after that many steps (no figures); `time_limit` (seconds) stops at the first
    step boundary after that much time, with a checkpoint and the end-of-run figures, as a planned stop
    before cfg.steps (run again to go on). A folder that holds a run with other settings is refused."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    out = Path(cfg.output)
    # the LR schedule counts updates, not per-process batches: one scheduler step per call
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)
    config_file = out / "train_config.json"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(asdict(cfg)))
        if config_file.exists() and json.loads(config_file.read_text()) != settings:
            raise ValueError(f"'{out}' holds a run with other settings ({config_file}); use a new output folder")
        config_file.write_text(json.dumps(settings, indent=2))
    accelerator.wait_for_everyone()

    with torch.random.fork_rng():  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        job = build(accelerator)
    model = job.model
    ema = EMAModel(model.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True, power=cfg.ema_power, foreach=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_schedule = warmup_schedule(optimizer, cfg.warmup_steps)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    start, losses = _load_checkpoint(accelerator, out, ema)
    ema.to(accelerator.device)

    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, start + max_steps_this_run)
    show = progress and accelerator.is_main_process
    bar = tqdm(total=cfg.steps, initial=start, disable=not show, desc="train")
    tic = time.time()
    pending: list[torch.Tensor] = []  # losses not yet read back from the device
    done = start
    with open(out / "train_log.jsonl", "a") if accelerator.is_main_process else contextlib.nullcontext() as log:
        while done < end:
            pending.append(one_step(cfg, job, model, optimizer, lr_schedule, ema, done, accelerator))
            done += 1
            out_of_time = time_limit is not None and time.time() - tic >= time_limit
            checkpoint = done % cfg.checkpoint_every == 0 or done == end or out_of_time
            if checkpoint or done % LOG_EVERY == 0:
                new = torch.stack(pending).tolist()  # the one host-device sync, every LOG_EVERY steps
                pending.clear()
                losses.extend(new)
                bar.update(len(new))
                bar.set_postfix(loss=f"{new[-1]:.4f}", loss_mean100=f"{np.mean(losses[-100:]):.4f}")
                if log is not None:
                    seconds = round(time.time() - tic, 3)
                    first = len(losses) - len(new)  # index of new[0] in losses (step = index + 1)
                    log.writelines(json.dumps(_log_record(losses, first + i, seconds)) + "\n" for i in range(len(new)))
                    log.flush()
            if checkpoint:
                _save_checkpoint(accelerator, out, ema, done, losses)
                if accelerator.is_main_process:
                    raw = accelerator.unwrap_model(model)
                    ema.store(raw.parameters())
                    ema.copy_to(raw.parameters())
                    job.export(raw)
                    ema.restore(raw.parameters())
            accelerator.wait_for_everyone()
            if out_of_time:
                break
    bar.close()
    if accelerator.is_main_process and (done == cfg.steps or done < end):
        save_loss_curve(out / "loss.png", losses)
        job.finish(losses)
    return out


def _log_record(losses: list[float], index: int, seconds: float) -> dict:
    """The train_log.jsonl line of step index + 1: its loss and loss_mean100, the mean over the last 100 steps up
    to it (the two numbers the progress bar shows)."""
    window = losses[max(0, index - 99) : index + 1]
    return {"step": index + 1, "loss": losses[index], "loss_mean100": float(np.mean(window)), "seconds": seconds}


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """diffusers' constant schedule with linear warm-up, started one position in so that update k (from 0) runs
    at lr * min(1, (k + 1) / warmup_steps) and no update has rate 0. Step it once after each update."""
    from diffusers.optimization import get_scheduler

    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # torch's schedulers need it to start past position 0
    return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup_steps, last_epoch=0)


def one_step(cfg, job: TrainingJob, model, optimizer, lr_schedule, ema, step: int, accelerator) -> torch.Tensor:
    """One optimisation step; returns the loss averaged over processes (a 0-d tensor left on the device)."""
    randomness = step_generators(cfg.seed, step, accelerator.process_index, accelerator.device)
    loss = job.loss(model, randomness, accelerator)
    accelerator.backward(loss)
    optimizer.step()
    lr_schedule.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(accelerator.unwrap_model(model).parameters())
    return accelerator.gather(loss.detach()[None]).mean()


def _save_checkpoint(accelerator, folder: Path, ema, step: int, losses: list[float]) -> None:
    """Atomically replace folder/checkpoint with the training state (called on every process)."""
    tmp, final, old = folder / "checkpoint.tmp", folder / "checkpoint", folder / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ema_state = ema.state_dict()
        shadow = ema_state.pop("shadow_params")
        save_file({f"{i}": p.detach().cpu().contiguous() for i, p in enumerate(shadow)}, tmp / "ema.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "ema": ema_state, "losses": losses}))
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(accelerator, folder: Path, ema) -> tuple[int, list[float]]:
    """Restore the prepared objects and `ema` from folder/checkpoint; returns (step, losses), (0, []) if none."""
    ckpt = folder / "checkpoint"
    if not (ckpt / "state.json").exists():
        return 0, []
    if not (ckpt / "optimizer.bin").exists():
        raise ValueError(
            f"'{ckpt}' is a checkpoint of an older format (optimizer.pt, no accelerate state) and cannot be resumed; "
            "to go on from its exported weights, train into a new output folder with init_from"
        )
    accelerator.load_state(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    shadow = load_file(ckpt / "ema.safetensors")
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[f"{i}"] for i in range(len(shadow))]})
    return state["step"], state["losses"]


def save_loss_curve(path: Path, losses: list[float]) -> None:
    """The training loss (moving average over 1 % of the run) on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    window = max(1, len(losses) // 100)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.semilogy(np.arange(len(smooth)) + window, smooth)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
