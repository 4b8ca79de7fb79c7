"""How well is an unknown noise level estimated, and what does the estimate cost the restoration?

    python -m posterior_diffusion.noise_benchmark --images DIR --size 64 --sigma 1 2.5 5 10 25 50 \
        --tasks denoise gaussian_deblur sr4 box_inpaint random_inpaint --restore 6 --out rows.jsonl

Per image (centre crop), task and sigma (on the [0, 255] scale): the task's operator with Gaussian noise of that
std measures the image (seeded per image, as the bench), `noise_sigma="auto"` estimates the std from the
measurement alone (`operators.noise_estimate`), and a row keeps both and the relative error. With --restore N, the
first N images are also restored by `sample_posterior` (sampler="auto", this machine's budget, 2 samples) once with
the true sigma and once with the estimate: the rows' psnr_true / psnr_estimated. The rows go to --out (JSON lines),
which `posterior-diffusion bench report` turns into tables (study.toml kind "pivot").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from posterior_diffusion.api import sample_posterior
from posterior_diffusion.images import list_images, load_center_crops
from posterior_diffusion.metrics import psnr
from posterior_diffusion.operators.noise_estimate import with_noise_sigma
from posterior_diffusion.tasks import get_task
from posterior_diffusion.tensor_utils import measure_images


def noise_rows(
    images: str, size: int, sigmas: list[float], tasks: list[str], num_images: int | None, restore: int, seed: int = 0
) -> list[dict]:
    """The rows described in the module docstring, one per (task, sigma, image)."""
    paths = list_images(images)[:num_images]
    x = load_center_crops(paths, 3, size)
    ids = list(range(len(paths)))
    rows = []
    for task in tasks:
        base = get_task(task).build(size)
        for sigma255 in sigmas:
            op, _ = with_noise_sigma(base, x[:1], 2 * sigma255 / 255)
            y = op.restrict(measure_images(op, x, seed, ids))
            _, record = with_noise_sigma(op, y, "auto")
            estimates = [255 * v / 2 for v in record["per_measurement"]]
            restored = _restored(op, y[:restore], x[:restore], ids[:restore], seed) if restore else {}
            for i, path in enumerate(paths):
                row = {"task": task, "sigma": sigma255, "image": path.name, "estimate": round(estimates[i], 4)}
                row |= {"rel_error": round(estimates[i] / sigma255 - 1, 5), "method": record["method"]}
                rows.append(row | restored.get(i, {}))
    return rows


def _restored(op, y, x, ids, seed) -> dict[int, dict]:
    """{image index: {"psnr_true", "psnr_estimated"}}: the auto sampler's mean with the true and the estimated std
    (each measurement estimated on its own)."""
    true = sample_posterior(y, op, num_samples=2, seed=seed, measurement_ids=ids, progress=False).mean
    estimated = torch.cat(
        [
            sample_posterior(
                y[k : k + 1], op, num_samples=2, seed=seed, measurement_ids=[i], progress=False, noise_sigma="auto"
            ).mean
            for k, i in enumerate(ids)
        ]
    )
    p_true, p_est = psnr(true, x).tolist(), psnr(estimated, x).tolist()
    return {i: {"psnr_true": round(p_true[k], 4), "psnr_estimated": round(p_est[k], 4)} for k, i in enumerate(ids)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m posterior_diffusion.noise_benchmark", description=__doc__.split("\n")[0]
    )
    p.add_argument("--images", required=True, help="folder of images never used to choose the estimator")
    p.add_argument("--size", type=int, default=64, help="centre-crop side in pixels (default 64)")
    p.add_argument("--num-images", type=int, help="the first N images (default all)")
    p.add_argument("--sigma", type=float, nargs="+", default=[1, 2.5, 5, 10, 25, 50], help="on the [0, 255] scale")
    p.add_argument("--tasks", nargs="+", default=["denoise", "gaussian_deblur", "sr4", "box_inpaint", "random_inpaint"])
    p.add_argument("--restore", type=int, default=0, metavar="N", help="also restore the first N images (default 0)")
    p.add_argument("--out", required=True, help="rows file (JSON lines)")
    args = p.parse_args(argv)
    rows = noise_rows(args.images, args.size, args.sigma, args.tasks, args.num_images, args.restore)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
