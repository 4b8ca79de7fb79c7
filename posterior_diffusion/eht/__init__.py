"""Black-hole imaging from Event Horizon Telescope-like data: an application of the general engine.

Importing it (the package does so through its `posterior_diffusion.applications` entry point) registers:
- tasks `black_hole` (EHT 2017 closure phases, log closure amplitudes and flux, with station gain errors, as
  InverseBench) and `black_hole_vis` (the same observation as calibrated complex visibilities), with their
  metrics (aligned and blurred PSNR, closure chi-squares), sample alignment and figure;
- baselines `dirty` and `rml` (`eht.baselines`), and the samplers' initial estimates `rml` and `gaussian`;
- the `black_hole` presets of DPS, RED-Diff and PnP-ULA (chosen on validation images:
  assets/bench/black_hole/README.md).
`python -m posterior_diffusion.eht.black_holes` writes a training set of procedural black-hole images.
"""

from __future__ import annotations

import torch

from posterior_diffusion.baselines import register_baseline
from posterior_diffusion.operators.interferometry import Interferometry
from posterior_diffusion.samplers.base import register_preset
from posterior_diffusion.samplers.inits import register_init
from posterior_diffusion.tasks import Task, register_task

from .baselines import RML_STARTS, dirty, gaussian_brightness, rml
from .figure import black_hole_figure
from .metrics import align_samples, aligned_psnr, blurred_psnr, closure_chi_squares


def _is_interferometry(op) -> bool:
    return isinstance(op, Interferometry)


def black_hole_metrics(op, y, estimate, truth) -> dict[str, torch.Tensor]:
    """Per-image (B,) metrics of the black-hole tasks: aligned PSNR, PSNR after 10 / 15 / 20 uas blurs, and the
    closure chi-squares of the estimate (B, 1, N, N) for measurements y."""
    chi2 = closure_chi_squares(op, y, estimate)
    scores = {"psnr_aligned": aligned_psnr(estimate, truth)}
    scores |= {f"psnr_blur{fwhm}": blurred_psnr(estimate, truth, fwhm, op.fov_uas) for fwhm in (10, 15, 20)}
    return scores | {"chi2_cphase": chi2["cphase"], "chi2_logcamp": chi2["logcamp"]}


def _align(op, samples: torch.Tensor) -> torch.Tensor:
    """Closure data do not fix the position: samples (B, S, 1, N, N) are aligned before averaging."""
    return align_samples(samples) if op.shift_invariant else samples


def _figure(path, op, truth, y, mean, std, samples) -> None:
    black_hole_figure(op, truth, samples, mean, std, path)


register_baseline(
    "dirty",
    dirty,
    lambda op: _is_interferometry(op) and op.data == "vis",
    "interferometry with data='vis' (closure data have no visibility phases)",
)
register_baseline("rml", rml, _is_interferometry, "interferometry")


@register_init("rml", applies=_is_interferometry, needs="an interferometry operator")
def rml_init(op, y, image_shape, rcond):
    """The regularised maximum-likelihood image (`rml`), best of the starts `RML_STARTS`."""
    return rml(op, y, init_fwhm_uas=RML_STARTS)


@register_init("gaussian", applies=_is_interferometry, needs="an interferometry operator")
def gaussian_init(op, y, image_shape, rcond):
    """rml's own start: a centred circular Gaussian of 50 uas FWHM carrying the measured total flux."""
    return (2 * gaussian_brightness(op, op.measured_flux(y), 50.0) - 1).clamp(-1, 1)


# The closure likelihood's gradient is ~1e3 times an image-space one's and stiff (L_y ~ 3e5 on [-1, 1] images);
# each preset is one documented departure from its paper (assets/bench/black_hole/README.md).
register_preset("dps", "black_hole", {"step_size": 0.003, "final_fit_iterations": 50, "final_fit_proximity": 100.0})
register_preset("red_diff", "black_hole", {"lr": 0.03, "box": (-1.0, 1.0), "init": "rml", "obs_weight": 1e-3})
register_preset("pnp_ula", "black_hole", {"init": "rml", "preconditioner": "gauss_newton", "steps": 500})


# the tasks last: their presets and inits exist by now (a task's names are checked as it registers)
register_task(
    "black_hole",
    Task(
        "interferometry",
        {"gain_std": 0.1},
        noise_sigma=None,
        sized=True,
        channels=1,
        presets={name: "black_hole" for name in ("dps", "red_diff", "pnp_ula")},
        auto=("dps", "red_diff", "pnp_ula"),  # all three fit the closures; DPS needs no rml start (black_hole study)
        description="EHT 2017 on Sgr A* over 160 uas: closure phases, log closure amplitudes, flux (InverseBench)",
        metrics=black_hole_metrics,
        align=_align,
        figure=_figure,
    ),
)
register_task(
    "black_hole_vis",
    Task(
        "interferometry",
        {"data": "vis", "gain_std": 0.0},
        noise_sigma=None,
        sized=True,
        channels=1,
        description="the same observation as calibrated complex visibilities (thermal noise only)",
        metrics=black_hole_metrics,
        align=_align,
        figure=_figure,
    ),
)

__all__ = ["RML_STARTS", "black_hole_figure", "black_hole_metrics", "dirty", "rml"]
