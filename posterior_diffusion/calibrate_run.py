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
    one_sided: bool = False,
) -> Calibration:
    """Measure the calibration images x (n, C, H, W) in [-1, 1] with `op`, sample their posteriors with `settings`
    (`posterior_samples`) and calibrate at `levels`; `one_sided`: one-sided intervals for the operator's
    `one_sided_class` (`calibration`; an operator without one is a ValueError, before any sampling)."""
    check_enough_images(score_count(guarantee, len(x), x[0].numel()), levels)
    if one_sided and op.one_sided_class is None:
        raise ValueError(
            f"operator {op.name!r} has no pixels with one-sided intervals (high_dynamic_range's saturated pixels "
            "have): calibrate without --one-sided"
        )
    samples, config, strata, sides = posterior_samples(x, op, settings, seed, images_per_call)
    classes = op.calibration_strata_names
    one_sided_class = op.one_sided_class if one_sided else ""
    return calibration_from_samples(
        samples, x, config, task, levels, guarantee, strata, classes, sides, one_sided_class
    )


def posterior_samples(
    x: torch.Tensor,
    op,
    settings: SamplingSettings,
    seed: int,
    images_per_call: int | None,
    first_id: int = 0,
    calibration: Calibration | None = None,
) -> tuple[torch.Tensor, dict, torch.Tensor | None, torch.Tensor | None]:
    """Samples (n, S, C, H, W) of the posteriors of measurements of images x (n, C, H, W), the run's config, the
    pixels' classes and sides, (n, C, H, W) each or None (`Operator.calibration_strata` / `calibration_sides`):
    image i is measured with noise from `measurement_generator(seed, first_id + i)` (as the bench) and sampled with
    `settings` (measurement_ids = first_id + i), `images_per_call` at a time (None: all in one call, so that a long
    run's notice estimates them all). A `calibration` given refuses a run it was not made for before any sampling
    (`Calibration.check`)."""
    samples, strata, sides, config = [], [], [], None
    images_per_call = images_per_call or len(x)
    checked = {"calibration": calibration, "level": next(iter(calibration.factors))} if calibration else {}
    for start in range(0, len(x), images_per_call):
        ids = [first_id + i for i in range(start, min(start + images_per_call, len(x)))]
        y = measure_images(op, x[start : start + len(ids)], seed, ids)
        result = settings.run(y, op, seed, ids, **checked)
        samples.append(result.samples)
        strata.append(op.calibration_strata(y))
        sides.append(op.calibration_sides(y))
        config = result.config
    return torch.cat(samples), config, _joined(strata), _joined(sides)


def _joined(parts: list) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts).cpu()


HELD_OUT_IDS = 10**6  # held-out images' measurement ids start here: noise and chains apart from the calibration's


def held_out_coverage(
    cal: Calibration, x: torch.Tensor, op, settings: SamplingSettings, seed: int = 0, images_per_call: int | None = None
) -> tuple[dict[float, float], dict[float, float], dict[float, list[float]]]:
    """Coverage on other images x (n, C, H, W) with known truth, sampled as the calibration was (`settings`, whose
    num_samples must be the calibration's): ({level: raw Gaussian interval's coverage}, {level: calibrated
    interval's coverage}, {level: [its coverage per pixel class]}), shares of the pixels inside. A run that differs
    from the calibration's is refused before any sampling (`Calibration.check`)."""
    samples, _, strata, sides = posterior_samples(x, op, settings, seed, images_per_call, HELD_OUT_IDS, cal)
    return coverages(samples, x, cal, strata, sides)


__all__ = ["HELD_OUT_IDS", "calibrate", "held_out_coverage", "posterior_samples"]
