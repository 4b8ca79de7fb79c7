"""How good is a prior? Checks on held-out images, printed as Markdown and saved as JSON.

    python -m posterior_diffusion.prior_benchmark denoise --prior builtin:natural-rgb --images DIR --sigma 6.4 25
        [--bm3d]
        One-step Tweedie denoising: x0_hat(sqrt(a) (x + sigma n), t) at the step t whose noise level matches
        sigma (on the [0, 255] scale), per image (cropped to a multiple of the network's downsampling); a column
        per sigma; --bm3d adds (C)BM3D with the true sigma on the same noisy images; --out keeps the rows (and
        the PSNR-gain curve beside them), and `denoise-table ROWS.json ... [--curve PNG]` prints their tables
        again, joining one prior's runs on one folder (a long --bm3d run split by sigma), and draws their curve.
    python -m posterior_diffusion.prior_benchmark restore --prior builtin:natural-rgb --images DIR [DIR ...] \
        --tune-images DIR --crops 50 --size 128 --steps 1000
        Per-crop PSNR/SSIM of the sampler (one sample per crop) against the classical baseline of each task on
        random crops: Gaussian deblurring (the DPS kernel scaled to the crop: 61 px, std 3.0 at 256 px;
        sigma_y 0.05) vs Tikhonov/Wiener with the regularisation chosen on the --tune-images crops, SR x4 vs
        bicubic upsampling, random inpainting (70 % missing) vs harmonic fill.

Noise, crops and samples are seeded per image, so runs are reproducible and comparable across priors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from posterior_diffusion.api import SamplingSettings
from posterior_diffusion.baselines import baseline
from posterior_diffusion.baselines import tune as tune_baseline
from posterior_diffusion.bench.studies import denoise_table, merge_denoise_records
from posterior_diffusion.images import list_images, load_image, random_crops
from posterior_diffusion.metrics import psnr, ssim
from posterior_diffusion.operators import get_operator
from posterior_diffusion.posterior_mean import tweedie_mean
from posterior_diffusion.priors import load_prior
from posterior_diffusion.tasks import get_task

CLASSICAL = {"gaussian_deblur": "tikhonov", "sr4": "bicubic", "random_inpaint": "harmonic"}  # task -> baseline


def restore_benchmark(
    prior_spec: str,
    folders: list[str],
    tune_folders: list[str],
    crops: int,
    size: int,
    sampler: str,
    steps: int | None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int | None = None,
    tasks: list[str] | None = None,
    on_task=None,
    **options,
) -> list[dict]:
    """Per-crop rows {task, method, crop, psnr, ssim, seconds} for the sampler and each task's baseline.

    All crops of a task go through the sampler together (`batch_size` chains per network call); the sampler
    uses its preset for the task (the task's `presets`) unless `options` say otherwise. `on_task(rows)` is called
    after each task with the rows so far (to save partial results)."""
    prior = load_prior(prior_spec, device=device)
    channels = prior.default_image_shape()[0]
    x = random_crops(folders, crops, size, channels, seed)
    tune = random_crops(tune_folders, 8, size, channels, seed + 5000)
    rows = []
    for task in tasks or list(CLASSICAL):
        classical = CLASSICAL[task]
        op = get_task(task).build(size)  # measured on the host with per-crop generators, restored on `device`
        y = torch.cat([op.measure(x[k : k + 1], torch.Generator().manual_seed(seed + k)) for k in range(crops)])
        y_tune = op.measure(tune, torch.Generator().manual_seed(seed + 10_000))
        op = op.to(device)
        params = tune_baseline(classical, op, tune.to(device), y_tune.to(device))  # {} for those without weights
        start = time.perf_counter()
        estimate = baseline(classical, op, y.to(device), **params)
        seconds = (time.perf_counter() - start) / crops
        rows += _rows(task, classical, estimate, x, seconds, params)
        preset = get_task(task).presets.get(sampler)
        chosen = {"preset": preset} if preset and "preset" not in options else {}
        chosen |= {"steps": steps} if steps else {}
        settings = SamplingSettings(prior, sampler, batch_size=batch_size, device=device, options=chosen | options)
        res = settings.run(y, op, seed)
        rows += _rows(task, sampler, res.mean, x, res.seconds / crops)
        if on_task is not None:
            on_task(rows)
    return rows


def _rows(task: str, method: str, estimate: torch.Tensor, x: torch.Tensor, seconds: float, params=None) -> list:
    estimate = estimate.cpu()
    scores_p, scores_s = psnr(estimate, x).tolist(), ssim(estimate, x).tolist()
    return [
        {"task": task, "method": method, **(params or {}), "crop": k, "psnr": p, "ssim": q, "seconds": seconds}
        for k, (p, q) in enumerate(zip(scores_p, scores_s, strict=True))
    ]


def summary_table(rows: list[dict]) -> str:
    """Markdown: mean +- std of PSNR and SSIM per task and method."""
    lines = ["| task | method | PSNR (dB) | SSIM | s / image | crops |", "|---|---|---|---|---|---|"]
    keys = sorted({(r["task"], r["method"]) for r in rows}, key=lambda k: (list(CLASSICAL).index(k[0]), k[1]))
    for task, method in keys:
        sel = [r for r in rows if r["task"] == task and r["method"] == method]
        p = torch.tensor([r["psnr"] for r in sel])
        q = torch.tensor([r["ssim"] for r in sel])
        sec = sum(r["seconds"] for r in sel) / len(sel)
        std = lambda v: float(v.std()) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(
            f"| {task} | {method} | {float(p.mean()):.2f} +- {std(p):.2f} | {float(q.mean()):.3f} +- "
            f"{std(q):.3f} | {sec:.1f} | {len(sel)} |"
        )
    return "\n".join(lines)


def tweedie_denoise_psnr(prior, images: list[Path], sigma255: float, seed: int = 0, bm3d: bool = False) -> list[dict]:
    """Per-image PSNR of the noisy image and of the prior's one-step denoiser (`posterior_mean.tweedie_mean`) at
    noise std sigma255 / 255, and with `bm3d` of (C)BM3D given the true sigma on the same noisy image."""
    sigma = 2 * sigma255 / 255  # on [-1, 1]
    channels = prior.default_image_shape()[0]
    rows = []
    for i, path in enumerate(images):
        x = load_image(path, channels)[None]
        multiple = getattr(prior, "downsampling", 1)
        x = x[..., : x.shape[-2] // multiple * multiple, : x.shape[-1] // multiple * multiple].to(prior.device)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + i)).to(prior.device)
        noisy = x + sigma * noise
        x0_hat = tweedie_mean(prior, noisy, sigma)
        row = {
            "image": path.name,
            "sigma": sigma255,
            "psnr_noisy": float(psnr(noisy, x)),
            "psnr": float(psnr(x0_hat, x)),
        }
        if bm3d:
            row["psnr_bm3d"] = float(psnr(baseline("bm3d", get_operator("denoise", noise_sigma=sigma), noisy), x))
        rows.append(row)
    return rows


def denoise_curve(rows: list[dict], path: str | Path, title: str) -> None:
    """PSNR gain over the noisy image against sigma (log scale): the Tweedie denoiser, and (C)BM3D where the rows
    have it, means over images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posterior_diffusion.figures import save_figure

    sigmas = sorted({r["sigma"] for r in rows})

    def gain(key: str) -> list[float]:
        sel = [[r for r in rows if r["sigma"] == s] for s in sigmas]
        return [sum(r[key] - r["psnr_noisy"] for r in rs) / len(rs) for rs in sel]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sigmas, gain("psnr"), "o-", label="one-call Tweedie denoiser")
    if all("psnr_bm3d" in r for r in rows):
        ax.plot(sigmas, gain("psnr_bm3d"), "s--", label="(C)BM3D, true sigma")
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's own labels would overlap the sigmas'
    ax.set_xticks(sigmas, [f"{s:g}" for s in sigmas])
    ax.set_xlabel("noise sigma (on [0, 255])")
    ax.set_ylabel("PSNR gain over the noisy image (dB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _denoise(args) -> None:
    prior = load_prior(args.prior, device=args.device)
    images = list_images(args.images)
    start = time.perf_counter()
    rows = [r for sigma in args.sigma for r in tweedie_denoise_psnr(prior, images, sigma, bm3d=args.bm3d)]
    print(denoise_table(args.prior, args.images, rows))
    print(f"({time.perf_counter() - start:.0f} s; Tweedie PSNR in dB{', (C)BM3D in brackets' if args.bm3d else ''})")
    if args.out:
        Path(args.out).write_text(json.dumps({"prior": args.prior, "images": args.images, "rows": rows}, indent=1))
        denoise_curve(rows, Path(args.out).with_suffix(".png"), f"{args.prior} on {Path(args.images).name}")


def _denoise_table(args) -> None:
    records = merge_denoise_records([json.loads(Path(path).read_text()) for path in args.rows])
    if args.curve and len(records) != 1:
        raise SystemExit(f"--curve draws one prior on one image folder; these rows hold {len(records)}")
    for record in records:
        print(denoise_table(record["prior"], record["images"], record["rows"]))
        if args.curve:
            denoise_curve(record["rows"], args.curve, f"{record['prior']} on {Path(record['images']).name}")


def _restore(args) -> None:
    options = dict(kv.split("=", 1) for kv in args.sampler_param or [])
    options = {k: float(v) for k, v in options.items()}

    def save(rows):
        print(summary_table(rows), flush=True)
        if args.out:
            record = {"prior": args.prior, "args": vars(args) | {"func": None}, "rows": rows}
            Path(args.out).write_text(json.dumps(record, indent=1, default=str))

    restore_benchmark(
        args.prior,
        args.images,
        args.tune_images,
        args.crops,
        args.size,
        args.sampler,
        args.steps,
        device=args.device,
        batch_size=args.batch_size,
        tasks=args.tasks,
        on_task=save,
        **options,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posterior_diffusion.prior_benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("denoise", help="one-step Tweedie denoising PSNR")
    p.add_argument("--prior", default="builtin:natural-rgb")
    p.add_argument("--images", required=True, help="folder of held-out images")
    p.add_argument("--sigma", type=float, nargs="+", default=[25.0], help="noise stds on the [0, 255] scale")
    p.add_argument("--bm3d", action="store_true", help="(C)BM3D on the same noisy images too (the bm3d extra)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="JSON file for the per-image rows (and the curve beside it, as .png)")
    p.set_defaults(func=_denoise)
    p = sub.add_parser("denoise-table", help="the table of saved denoise rows (--out files), regenerated")
    p.add_argument("rows", nargs="+", help="JSON files written by denoise --out (one prior's runs on one folder join)")
    p.add_argument("--curve", help="PNG file for the PSNR-gain curve of the rows (one prior and folder)")
    p.set_defaults(func=_denoise_table)
    p = sub.add_parser("restore", help="sampler vs classical baselines on random crops")
    p.add_argument("--prior", default="builtin:natural-rgb")
    p.add_argument("--images", nargs="+", required=True, help="folders of held-out images")
    p.add_argument("--tune-images", nargs="+", required=True, help="other images, to choose the Tikhonov weight")
    p.add_argument("--crops", type=int, default=50)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--sampler", default="dps")
    p.add_argument("--steps", type=int, help="sampler steps (default: the sampler's)")
    p.add_argument("--sampler-param", action="append", metavar="K=V", help="numeric sampler option (repeatable)")
    p.add_argument("--tasks", nargs="+", choices=list(CLASSICAL), help="default: all")
    p.add_argument("--batch-size", type=int, help="chains per network call (default: all crops at once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="JSON file for the per-crop rows (rewritten after each task)")
    p.set_defaults(func=_restore)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
