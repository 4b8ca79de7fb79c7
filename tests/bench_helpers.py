"""What the bench tests share: a small bench configuration and rows without their timing columns."""

from __future__ import annotations

from posterior_diffusion.bench import BenchConfig

TIMING = ("seconds", "peak_mb")


def bench_config(images, out, prior, **changes) -> BenchConfig:
    """DPS and three baselines on two tasks, 16x16 crops of `images`, 2 steps (seconds on a CPU); `changes` win."""
    settings = {
        "images": str(images),
        "out": str(out),
        "prior": str(prior),
        "tasks": ("random_inpaint", "gaussian_deblur"),
        "methods": ("dps", "tikhonov", "harmonic", "bicubic"),
        "size": 16,
        "steps": 2,
        "images_per_call": 2,
        "device": "cpu",
        "lpips": "none",
    }
    return BenchConfig(**(settings | changes))


def without_timing(rows: list[dict]) -> list[dict]:
    """Rows without the columns that differ between two runs of the same work."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
