"""Figures: image grids and the side-by-side restoration figure (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from posterior_diffusion.images import save_image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 4) -> None:
    """Save images (N, C, H, W) in [-1, 1] as one grid image, `nrow` per row (padded with white)."""
    n = images.shape[0]
    rows = -(-n // nrow)
    pad = rows * nrow - n
    if pad:
        images = torch.cat([images, images.new_ones(pad, *images.shape[1:])])
    images = F.pad(images, (1, 1, 1, 1), value=1.0)
    save_image(rearrange(images, "(r k) c h w -> c (r h) (k w)", k=nrow), path)


def _show(ax, image: torch.Tensor, title: str, cmap: str = "gray", vmin=-1.0, vmax=1.0) -> None:
    image = image.detach().float().cpu()
    if image.shape[0] == 3:
        ax.imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    else:
        im = ax.imshow(image[0].numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
        if cmap != "gray":
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def restoration_figure(
    path: str | Path,
    measurement: torch.Tensor | None,
    mean: torch.Tensor,
    std: torch.Tensor,
    samples: torch.Tensor,
    truth: torch.Tensor | None = None,
    max_samples: int = 3,
) -> None:
    """Side-by-side figure: [truth] | measurement | posterior mean | per-pixel std | a few samples.

    All images (C, H, W) in [-1, 1]; `measurement` may have another size (shown as is) or be None when it
    is not an image; std is shown as a heat map of the channel-averaged std.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if truth is not None:
        panels.append(("ground truth", truth, {}))
    if measurement is not None:
        panels.append(("measurement", measurement, {}))
    panels.append(("posterior mean", mean, {}))
    std_map = std.mean(0, keepdim=True)
    panels.append(("posterior std", std_map, {"cmap": "magma", "vmin": 0.0, "vmax": max(float(std_map.max()), 1e-6)}))
    panels += [(f"sample {i + 1}", s, {}) for i, s in enumerate(samples[:max_samples])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
    for ax, (title, image, kwargs) in zip(axes, panels, strict=False):
        _show(ax, image, title, **kwargs)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
