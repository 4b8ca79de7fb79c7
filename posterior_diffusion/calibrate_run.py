"""The runs behind `posterior-diffusion calibrate`: sample the posteriors of calibration images with known truth and
turn them into a `calibration.Calibration`, then measure its coverage on other images (the conformal maths is
`calibration`, below the API; this module samples through `sample_posterior`, above it)."""

from __future__ import annotations

import torch

from posterior_diffusion.api import SamplingSettings
from posterior_diffusion.calibration import (
    CALIBRATION_LEVELS,
    Calibration,
    calibration_from_samples,
    check_enough_images,
    coverages,
    score_count,
)
from posterior_diffusion.metrics import standardised_errors
from posterior_diffusion.tensor_utils import measure_images


def calibrate(
    x: torch.Tensor,
    op,
    task: str,
    settings: SamplingSettings,
    levels=CALIBRATION_LEVELS,
    seed: int = 0,
    images_per_call: int | None = None,
    guarantee: str = "pixel",
) -> Calibration:
    """Measure the calibration images x (n, C, H, W) in [-1, 1] with `op`, sample their posteriors with `settings`
    (`posterior_samples`) and calibrate at `levels`."""
    check_enough_images(score_count(guarantee, len(x), x[0].numel()), levels)
    samples, config, strata = posterior_samples(x, op, settings, seed, images_per_call)
    return calibration_from_samples(samples, x, config, task, levels, guarantee, strata, op.calibration_strata_names)


def posterior_samples(
    x: torch.Tensor,
    op,
    settings: SamplingSettings,
    seed: int,
    images_per_call: int | None,
    first_id: int = 0,
    calibration: Calibration | None = None,
) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """Samples (n, S, C, H, W) of the posteriors of measurements of images x (n, C, H, W), the run's config and
    the pixels' classes (n, C, H, W) or None (`Operator.calibration_strata`): image i is measured with noise from
    `measurement_generator(seed, first_id + i)` (as the bench) and sampled with `settings` (measurement_ids =
    first_id + i), `images_per_call` at a time (None: all in one call, so that a long run's notice estimates them
    all). A `calibration` given refuses a run it was not made for before any sampling (`Calibration.check`)."""
    samples, strata, config = [], [], None
    images_per_call = images_per_call or len(x)
    checked = {"calibration": calibration, "level": next(iter(calibration.factors))} if calibration else {}
    for start in range(0, len(x), images_per_call):
        ids = [first_id + i for i in range(start, min(start + images_per_call, len(x)))]
        y = measure_images(op, x[start : start + len(ids)], seed, ids)
        result = settings.run(y, op, seed, ids, **checked)
        samples.append(result.samples)
        strata.append(op.calibration_strata(y))
        config = result.config
    return torch.cat(samples), config, None if strata[0] is None else torch.cat(strata).cpu()


HELD_OUT_IDS = 10**6  # held-out images' measurement ids start here: noise and chains apart from the calibration's


def held_out_coverage(
    cal: Calibration, x: torch.Tensor, op, settings: SamplingSettings, seed: int = 0, images_per_call: int | None = None
) -> tuple[dict[float, float], dict[float, float], dict[float, list[float]]]:
    """Coverage on other images x (n, C, H, W) with known truth, sampled as the calibration was (`settings`, whose
    num_samples must be the calibration's): ({level: raw Gaussian interval's coverage}, {level: calibrated
    interval's coverage}, {level: [its coverage per pixel class]}), shares of the pixels inside. A run that differs
    from the calibration's is refused before any sampling (`Calibration.check`)."""
    samples, _, strata = posterior_samples(x, op, settings, seed, images_per_call, HELD_OUT_IDS, cal)
    scores = standardised_errors(samples, x)
    return coverages(scores, cal.num_samples, cal, None if strata is None else strata.flatten(1))


__all__ = ["HELD_OUT_IDS", "calibrate", "held_out_coverage", "posterior_samples"]
