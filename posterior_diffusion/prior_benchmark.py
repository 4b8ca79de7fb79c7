"""How good is a prior? Checks on held-out images (issue 3's report), printed as Markdown and saved as JSON.

    python -m posterior_diffusion.prior_benchmark denoise --prior builtin:natural-rgb --images DIR --sigma 25
        One-step Tweedie denoising: x0_hat(sqrt(a) (x + sigma n), t) at the step t whose noise level matches
        sigma (on the [0, 255] scale), per image (cropped to a multiple of the network's downsampling).

The noise is seeded per image, so runs are reproducible and comparable across priors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from posterior_diffusion.images import list_images, load_image
from posterior_diffusion.metrics import psnr
from posterior_diffusion.priors import load_prior


def tweedie_denoise_psnr(prior, images: list[Path], sigma255: float, seed: int = 0) -> list[dict]:
    """Per-image PSNR of the noisy image and of the prior's one-step denoiser at noise std sigma255 / 255."""
    sigma = 2 * sigma255 / 255  # on [-1, 1]
    variance = (1 - prior.alphas_cumprod) / prior.alphas_cumprod
    t = int((variance - sigma**2).abs().argmin())
    scale = prior.alphas_cumprod[t].sqrt()
    channels = prior.default_image_shape()[0]
    rows = []
    for i, path in enumerate(images):
        x = load_image(path, channels)[None]
        multiple = getattr(prior, "downsampling", 1)
        x = x[..., : x.shape[-2] // multiple * multiple, : x.shape[-1] // multiple * multiple].to(prior.device)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + i)).to(prior.device)
        noisy = x + sigma * noise
        with torch.inference_mode():
            x0_hat = prior.denoise(scale * noisy, t).clamp(-1, 1)
        rows.append({"image": path.name, "psnr_noisy": float(psnr(noisy, x)), "psnr": float(psnr(x0_hat, x))})
    return rows


def _denoise(args) -> None:
    prior = load_prior(args.prior, device=args.device)
    images = list_images(args.images)
    start = time.perf_counter()
    rows = tweedie_denoise_psnr(prior, images, args.sigma)
    mean = sum(r["psnr"] for r in rows) / len(rows)
    noisy = sum(r["psnr_noisy"] for r in rows) / len(rows)
    print(
        f"| prior | images | sigma | noisy PSNR | Tweedie PSNR | seconds |\n|---|---|---|---|---|---|\n"
        f"| {args.prior} | {Path(args.images).name} ({len(rows)}) | {args.sigma:g} | {noisy:.2f} | {mean:.2f} | "
        f"{time.perf_counter() - start:.0f} |"
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"prior": args.prior, "sigma": args.sigma, "rows": rows}, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posterior_diffusion.prior_benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("denoise", help="one-step Tweedie denoising PSNR")
    p.add_argument("--prior", default="builtin:natural-rgb")
    p.add_argument("--images", required=True, help="folder of held-out images")
    p.add_argument("--sigma", type=float, default=25.0, help="noise std on the [0, 255] scale")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="JSON file for the per-image rows")
    p.set_defaults(func=_denoise)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
