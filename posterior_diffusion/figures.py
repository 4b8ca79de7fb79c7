"""Figures: image grids and the side-by-side restoration figure (matplotlib, Agg backend)."""

from __future__ import annotations

import os
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
    """Side-by-side figure: [truth] | measurement | posterior mean | [|error| of the mean] | per-pixel std | a few
    samples.

    All images (C, H, W) in [-1, 1]; `measurement` may have another size (shown as is) or be None when it
    is not an image; std is shown as a heat map of the channel-averaged std and, with a truth, beside it the
    channel-averaged absolute error of the mean on the same scale (where the std is trustworthy, the two maps
    look alike).
    """
    panels = []
    if truth is not None:
        panels.append(("ground truth", truth, {}))
    if measurement is not None:
        panels.append(("measurement", measurement, {}))
    save_panels(path, panels + posterior_panels(mean, std, samples, max_samples, truth))


def posterior_panels(
    mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor, max_samples: int, truth: torch.Tensor | None = None
) -> list:
    """(title, image, `_show` options) of the posterior mean, [the channel-averaged |truth - mean|,] the
    channel-averaged std heat map (both on one scale) and samples."""
    maps = [("posterior std", std.mean(0, keepdim=True))]
    if truth is not None:
        maps.insert(0, ("|error| of the mean", (truth - mean).abs().mean(0, keepdim=True)))
    scale = {"cmap": "magma", "vmin": 0.0, "vmax": max(max(float(m.max()) for _, m in maps), 1e-6)}
    panels = [("posterior mean", mean, {})] + [(title, m, scale) for title, m in maps]
    return panels + [(f"sample {i + 1}", s, {}) for i, s in enumerate(samples[:max_samples])]


def save_panels(path: str | Path, panels: list, draw_first=None) -> None:
    """One row of image panels (title, image, `_show` options), after a plot `draw_first(ax)` if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(panels) + (draw_first is not None)
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 2.8))
    if draw_first is not None:
        draw_first(axes[0])
    for ax, (title, image, kwargs) in zip(axes[count - len(panels) :], panels, strict=True):
        _show(ax, image, title, **kwargs)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int) -> None:
    """Save a matplotlib figure to `path` atomically (a temporary file beside it, then a rename: a kill or a full
    disk leaves the old file or none, never a truncated one) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(temporary, dpi=dpi, format=path.suffix.lstrip(".") or None)
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        temporary.unlink(missing_ok=True)
