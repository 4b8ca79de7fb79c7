"""Image-quality metrics, per image, on images mapped from [-1, 1] to [0, 1]."""

from __future__ import annotations

import functools

import torch


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image: x, ref (..., C, H, W) in [-1, 1] (clipped) -> (...,), with peak 1 on [0, 1]."""
    x01 = ((x.float() + 1) / 2).clamp(0, 1)
    ref01 = ((ref.float() + 1) / 2).clamp(0, 1)
    mse = (x01 - ref01).square().flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp(min=1e-12))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM per image (torchmetrics, Gaussian window 11, sigma 1.5) on images mapped to [0, 1]: (B, C, H, W) -> (B,).

    Needs the optional `torchmetrics` package (`pip install posterior_diffusion[metrics]`).
    """
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        raise ImportError("SSIM needs torchmetrics: pip install 'posterior_diffusion[metrics]'") from None
    x01 = ((x.float() + 1) / 2).clamp(0, 1)
    ref01 = ((ref.float() + 1) / 2).clamp(0, 1)
    return structural_similarity_index_measure(x01, ref01, data_range=1.0, reduction="none")


def lpips(x: torch.Tensor, ref: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS v0.1 per image (AlexNet or VGG16 backbone): (B, C, H, W) x (B, C, H, W) in [-1, 1] -> (B,).
    Weights from local files only (see `posterior_diffusion.perceptual`); raises `LPIPSUnavailable`, whose
    message names the file to provide, when none is found."""
    model = _lpips_model(net, str(x.device))
    with torch.inference_mode():
        return model(x.clamp(-1, 1), ref.clamp(-1, 1))


def kernel_errors(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Blur-kernel estimates (..., kh, kw) against the true kernel (kh, kw): L2 distance and normalised
    cross-correlation (1 = the same shape up to scale and offset), each of shape estimate.shape[:-2]."""
    e = estimate.flatten(-2).double()
    t = truth.flatten().double().to(e.device)
    ec, tc = e - e.mean(-1, keepdim=True), t - t.mean()
    ncc = (ec * tc).sum(-1) / (ec.norm(dim=-1) * tc.norm()).clamp(min=1e-30)
    return {"kernel_l2": (e - t).norm(dim=-1), "kernel_ncc": ncc}


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, device: str):
    from posterior_diffusion.perceptual import LPIPS

    return LPIPS(net).to(device)


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between two equal-size point clouds a, b (N, ...) (flattened per point).

    Mean over random unit directions of the 1-D W2 between the projections (sorted matching), then sqrt.
    """
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    directions = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ directions, dim=0)
    pb, _ = torch.sort(b @ directions, dim=0)
    return (pa - pb).square().mean().sqrt()
