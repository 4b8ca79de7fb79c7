"""Metrics of the black-hole imaging task, as InverseBench reports them (InverseBench, ICLR 2025, black-hole imaging).

- aligned PSNR: closure data fix neither the position nor the flux of the source, so the reconstruction is
  shifted by the integer translation (up to a quarter of the image width each way) that maximises PSNR against
  the truth, on [0, 1] images (data range 1);
- blurred PSNR: both images blurred by a circular Gaussian of FWHM `fwhm_uas` first (ehtim's blur_circ);
- closure chi-squares: the reconstruction rescaled to the observed total flux, then the reduced chi-squares of
  closure phases and log closure amplitudes; a value below 1 is replaced by its reciprocal (1 ideal). For
  complex-visibility data (data="vis") the closures are formed from the measured visibilities, so both data
  layouts are scored alike.
"""

from __future__ import annotations

import math

import torch

from posterior_diffusion.metrics import psnr


def aligned_psnr(x: torch.Tensor, ref: torch.Tensor, max_shift: int | None = None) -> torch.Tensor:
    """Best PSNR over integer translations of x: (B, C, H, W) x (B, C, H, W) in [-1, 1] -> (B,)."""
    max_shift = ref.shape[-1] // 4 if max_shift is None else max_shift
    shifts = range(-max_shift, max_shift + 1)
    scores = torch.stack([psnr(torch.roll(x, (dy, dx), dims=(-2, -1)), ref) for dy in shifts for dx in shifts])
    return scores.max(0).values


def align_samples(samples: torch.Tensor) -> torch.Tensor:
    """Samples (B, S, C, H, W) of each measurement rolled onto its first sample by the integer (circular) shift
    that maximises their cross-correlation. Closure data do not fix the position, so posterior samples differ by
    shifts, and their plain mean is a blur of copies (EHT averages images after aligning them)."""
    b, s, _, h, w = samples.shape
    spectra = torch.fft.fft2(samples.double())
    correlation = torch.fft.ifft2(spectra[:, :1].conj() * spectra).real.sum(2)  # (B, S, H, W): lag k at [k]
    best = correlation.flatten(2).argmax(-1)  # (B, S)
    rows = (torch.arange(h) + (best // w)[..., None]) % h  # aligned[n] = sample[n + k]
    cols = (torch.arange(w) + (best % w)[..., None]) % w
    i, j = torch.arange(b)[:, None, None, None], torch.arange(s)[None, :, None, None]
    return samples.movedim(2, -1)[i, j, rows[..., :, None], cols[..., None, :]].movedim(-1, 2)


def gaussian_blur_fft(images: torch.Tensor, fwhm_px: float) -> torch.Tensor:
    """Circular Gaussian blur of (..., H, W) images, FWHM in pixels (periodic boundary, via the FFT)."""
    if fwhm_px <= 0:
        return images
    sigma = fwhm_px / (2 * math.sqrt(2 * math.log(2)))
    fy = torch.fft.fftfreq(images.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(images.shape[-1], dtype=torch.float64)[None, :]
    transfer = torch.exp(-2 * math.pi**2 * sigma**2 * (fx**2 + fy**2))
    return torch.fft.ifft2(torch.fft.fft2(images.double()) * transfer).real.to(images.dtype)


def blurred_psnr(x: torch.Tensor, ref: torch.Tensor, fwhm_uas: float, fov_uas: float) -> torch.Tensor:
    """Aligned PSNR after blurring both images (in [0, 1] brightness) by a Gaussian of FWHM `fwhm_uas`."""
    fwhm_px = fwhm_uas * ref.shape[-1] / fov_uas
    blur = lambda im: gaussian_blur_fft((im + 1) / 2, fwhm_px) * 2 - 1  # noqa: E731  (blur the brightness)
    return aligned_psnr(blur(x), blur(ref))


def closure_chi_squares(op, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised closure chi-squares (B,) of images x (B, 1, N, N) in [-1, 1] for measurements y (B, D) of an
    `interferometry` operator, after scaling x to the measured total flux; "vis" measurements are turned into
    the closure data of the same visibilities first (by the operator's closures-layout twin)."""
    if op.data == "vis":
        twin = op.with_data("closures")
        op, y = twin, twin.products(op.complex_visibilities(y))
    model_flux = op.brightness(x).sum(-1)
    scale = (y[:, -1] / model_flux.clamp(min=1e-12)).view(-1, 1, 1, 1)
    rescaled = (x + 1) * scale - 1  # brightness (x + 1) / 2 scaled, back to [-1, 1]
    with torch.no_grad():
        chi2 = op.noise.chi_squares(y, op.forward(rescaled))
    return {k: torch.where(v < 1, 1 / v, v) for k, v in chi2.items() if k in ("cphase", "logcamp")}
