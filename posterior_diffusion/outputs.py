"""The files of one restoration, as `posterior-diffusion restore` writes them, for Python users too.

res = sample_posterior(y, op, num_samples=4)
write_restoration("restored/", res, y, truth=x)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from posterior_diffusion.api import PosteriorResult
from posterior_diffusion.figures import restoration_figure
from posterior_diffusion.images import save_image
from posterior_diffusion.metrics import psnr

OUTPUT_PATTERNS = (
    "samples/sample_*.png",
    "kernel_*.png",
    "mean.png",
    "std.png",
    "interval_*.png",
    "measurement.png",
    "figure.png",
)
OUTPUT_PATTERNS += ("results.safetensors", "run.json")


def write_restoration(
    out: str | Path,
    result: PosteriorResult,
    y: torch.Tensor,
    truth: torch.Tensor | None = None,
    overwrite: bool = False,
    run_info: dict | None = None,
) -> list[Path]:
    """Write the outputs of one measurement's posterior samples into the folder `out`:

    samples/sample_000.png ...   each sample (S, C, H, W)
    mean.png, std.png            the posterior mean; the channel-averaged std scaled to its maximum
    interval_lo.png, interval_hi.png, interval_width.png
                                 with a calibration: the calibrated interval's bounds (clipped to [-1, 1]) and
                                 its channel-averaged width scaled to its maximum (run.json: the level, the factor,
                                 the width's maximum and, with a truth, the share of its pixels inside)
    measurement.png              y, when it is an image (1 or 3 channels)
    kernel_000.png ...           the kernel estimate of each sample (blind samplers), scaled to its maximum
    figure.png                   [truth] | measurement | mean | std | samples
    results.safetensors          samples, mean, std, y (real), lower / upper, extras such as kernels, truth (float32)
    run.json                     result.config, nfe, seconds, `run_info`, and the PSNR of the mean and of each
                                 sample when `truth` is given

    result: an unbatched `sample_posterior` result (samples (S, C, H, W)); y: its measurement (*meas); truth:
    the clean image (C, H, W) in [-1, 1]. A non-empty `out` is refused unless `overwrite`, which first removes
    the files a previous restoration wrote there (`OUTPUT_PATTERNS`; nothing else), so that no stale sample or
    kernel of a larger run is left beside the new ones. Returns the paths written.
    """
    out = Path(out)
    if result.samples.ndim != 4:
        raise ValueError(
            f"write_restoration writes one measurement (samples (S, C, H, W)); got samples of shape "
            f"{tuple(result.samples.shape)}: call it once per measurement"
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder '{out}' is not empty; pass --overwrite to replace its files")
        for pattern in OUTPUT_PATTERNS:
            for old in out.glob(pattern):
                old.unlink()
    (out / "samples").mkdir(parents=True, exist_ok=True)
    written = []

    def image(tensor: torch.Tensor, name: str) -> None:
        save_image(tensor, out / name)
        written.append(out / name)

    for i, sample in enumerate(result.samples):
        image(sample, f"samples/sample_{i:03d}.png")
    image(result.mean, "mean.png")
    std_map = result.std.mean(0, keepdim=True)
    image(std_map / std_map.max().clamp(min=1e-8) * 2 - 1, "std.png")
    if result.lower is not None:
        image(result.lower.clamp(-1, 1), "interval_lo.png")
        image(result.upper.clamp(-1, 1), "interval_hi.png")
        width = (result.upper - result.lower).mean(0, keepdim=True)
        image(width / width.max().clamp(min=1e-8) * 2 - 1, "interval_width.png")
    shown = y if y.ndim == 3 and y.shape[0] in (1, 3) else None  # image-like measurements
    if shown is not None:
        image(shown, "measurement.png")
    for i, kernel in enumerate(result.extras.get("kernel", [])):  # blind deblurring: each sample's kernel
        image(kernel / kernel.abs().max().clamp(min=1e-12) * 2 - 1, f"kernel_{i:03d}.png")
    restoration_figure(out / "figure.png", shown, result.mean, result.std, result.samples, truth)
    written.append(out / "figure.png")
    written.append(_write_tensors(out / "results.safetensors", result, y, truth))
    run = {**result.config, **(run_info or {}), "nfe": result.nfe, "seconds": round(result.seconds, 3)}
    if result.lower is not None:
        run["calibration"] = {**run["calibration"], "width_max": round(float(width.max()), 5)}
        if truth is not None:  # the share of the truth's pixels inside the interval
            inside = (truth >= result.lower) & (truth <= result.upper)
            run["calibration"]["coverage"] = round(float(inside.float().mean()), 5)
    if truth is not None:
        run["psnr_mean"] = round(float(psnr(result.mean[None], truth[None])[0]), 3)
        samples_psnr = psnr(result.samples, truth[None].expand_as(result.samples))
        run["psnr_samples"] = [round(float(v), 3) for v in samples_psnr]
    (out / "run.json").write_text(json.dumps(run, indent=2))
    written.append(out / "run.json")
    return written


def describe_files(folder: str | Path, paths: list[Path]) -> str:
    """The files `paths` inside `folder` in one line, numbered runs collapsed, in the order given:
    "samples/sample_000..003.png, mean.png, run.json"."""
    entries: list[str | tuple[str, str]] = []
    numbers: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        name = Path(path).relative_to(folder).as_posix()
        numbered = re.fullmatch(r"(.*?)(\d+)(\.\w+)", name)
        if numbered is None:
            entries.append(name)
            continue
        key = (numbered[1], numbered[3])
        if key not in numbers:
            entries.append(key)
        numbers.setdefault(key, []).append(numbered[2])
    return ", ".join(e if isinstance(e, str) else _numbered_run(*e, numbers[e]) for e in entries)


def _numbered_run(prefix: str, suffix: str, numbers: list[str]) -> str:
    span = numbers[0] if len(numbers) == 1 else f"{numbers[0]}..{numbers[-1]}"
    return f"{prefix}{span}{suffix}"


def _write_tensors(path: Path, result: PosteriorResult, y: torch.Tensor, truth: torch.Tensor | None) -> Path:
    """results.safetensors: the real tensors of the run, float32. Written as bytes with an ordinary `open`, so the
    file gets the mode of the other outputs (the umask's), not the 0600 of safetensors' `save_file`."""
    from safetensors.torch import save

    tensors = {"samples": result.samples, "mean": result.mean, "std": result.std, "y": y}
    if result.lower is not None:
        tensors |= {"lower": result.lower, "upper": result.upper}
    tensors |= {k: v for k, v in result.extras.items() if isinstance(v, torch.Tensor)}
    if truth is not None:
        tensors["truth"] = truth
    path.write_bytes(save({k: v.float().contiguous() for k, v in tensors.items() if not v.is_complex()}))
    return path
