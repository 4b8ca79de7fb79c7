"""The black-hole figure: uv coverage | dirty image | ground truth | posterior mean | per-pixel std | samples."""

from __future__ import annotations

from pathlib import Path

import torch

from posterior_diffusion.figures import posterior_panels, save_panels


def black_hole_figure(
    op,
    truth: torch.Tensor,
    samples: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    path: str | Path,
    max_samples: int = 3,
) -> None:
    """The black-hole figure of one measurement.

    op: an `interferometry` operator; truth, mean, std (1, N, N) and samples (S, 1, N, N) in [-1, 1]. The uv
    coverage is drawn in Glambda with its mirror (-u, -v). Whatever the operator's data layout (closure data have
    no visibility phases), the dirty image is that of calibrated visibilities of the truth with thermal noise
    (the same observation with data="vis", gain_std=0; noise seed 0), in units of its own range.
    """
    vis_op = op.with_data("vis", gain_std=0.0).cpu()
    y_vis = vis_op.measure(truth[None].float().cpu(), torch.Generator().manual_seed(0))
    dirty = vis_op.dirty_image(y_vis)[0]
    scale = {"vmin": float(dirty.min()), "vmax": float(dirty.max())}
    panels = [("dirty image (vis of the truth)", dirty, scale), ("ground truth", truth, {})]
    save_panels(path, panels + posterior_panels(mean, std, samples, max_samples), lambda ax: _uv_plot(ax, op))


def _uv_plot(ax, op) -> None:
    u, v = op.coverage.u.cpu() / 1e9, op.coverage.v.cpu() / 1e9
    ax.scatter(torch.cat([u, -u]).numpy(), torch.cat([v, -v]).numpy(), s=1.5, c="tab:blue")
    ax.set_aspect("equal")
    ax.set_xlabel(r"u (G$\lambda$)", fontsize=8)
    ax.set_ylabel(r"v (G$\lambda$)", fontsize=8)
    ax.set_title("uv coverage", fontsize=9)
    ax.tick_params(labelsize=7)
