"""Conformally calibrated uncertainty intervals: how much to widen a sampler's std so that its intervals hold.

A sampler's pixelwise interval mean +- z std holds the truth less often than its level says when its samples are
too alike (DPS, RED-Diff) and more often when they are too spread. `calibrate_run.calibrate` runs the sampler on
calibration images of a task (held-out images with known truth) and finds, per level 1 - alpha, the factor
lambda such that the interval mean +- lambda std is calibrated, from the standardised errors s = |x - mean| / std
of the n calibration images' P pixels each, in one of two ways (Angelopoulos, Kohli, Bates, et al., "Image-to-Image
Regression with Distribution-Free Uncertainty Quantification", ICML 2022, calibrate such a scale factor):

- guarantee="pixel" (default): split conformal prediction on the N = n P pooled pixel scores: lambda_hat is
  the ceil((N + 1)(1 - alpha))-th smallest. If a test pixel's score is exchangeable with the calibration
  pixels' scores, it is covered with probability at least 1 - alpha (and at most 1 - alpha + 1 / (N + 1)). That
  holds exactly for independent pixels (tested on such data) and only approximately for images: pixels of one
  image share it and are not exchangeable with other images' pixels. N is large, so the factor is tight; on
  held-out images its coverage is measured (assets/bench/calibration/README.md).
- guarantee="image": conformal risk control (Angelopoulos, Bates, Fisch, Lei and Schuster, "Conformal Risk
  Control", ICLR 2024) of the per-image loss L_i(lambda) = fraction of image i's pixels with s > lambda:
  lambda_hat = min { lambda : (n R_n(lambda) + 1) / (n + 1) <= alpha }, R_n the mean of the L_i. For a new image
  exchangeable with the calibration images, the expected fraction of its pixels covered is at least 1 - alpha,
  exactly, whatever the dependence between pixels (tested on images whose pixels share a random scale). The
  price is the +1 of one whole image: it needs n >= 1 / alpha - 1 images and is conservative by up to about
  1 / (n + 1) (24 images: 95 % becomes about 99 % on the calibration images).

Pixel classes (Mondrian conformal prediction: Vovk, Gammerman and Shafer, "Algorithmic Learning in a Random World",
2005): where the operator tells pixel classes apart from the measurement alone (`Operator.calibration_strata`:
observed and missing pixels of a mask, saturated and unsaturated ones of hdr), the pixel guarantee is applied within
each class, one factor per class. Each class is then covered at its level whatever its share of a new image: a
pooled factor over-covers the observed pixels and under-covers the missing ones, and misses the level on images
whose share of missing or saturated pixels differs from the calibration images'. The image guarantee stays pooled.

One-sided intervals (`calibrate --one-sided`): where the measurement bounds a pixel's truth on one side only (a
saturated pixel of hdr lies at or beyond its clip, `Operator.calibration_sides`), its interval is
[mean - lambda std, 1] (a bright clip) or [-1, mean + lambda std] (a dark one), lambda the conformal quantile of the
one-sided scores (mean - x) / std (or (x - mean) / std) of that class's calibration pixels. It can miss on the mean's
side only: a collection whose clipped pixels lie further beyond the clip than the calibration images' still holds
there, where a two-sided interval misses above (assets/bench/shipped_calibrations/README.md).

A calibration file (JSON) records what it was made for (task, operator, prior, sampler with every option,
samples per image); `Calibration.check` refuses a run that differs, naming both.

    posterior-diffusion calibrate --images kodak/ --task sr4 --sampler ddrm --out sr4_ddrm.json
    posterior-diffusion restore photo.png --simulate --operator super_resolution --op-param factor=4 \
        --sampler ddrm --calibration sr4_ddrm.json --level 0.9 --out result/
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from posterior_diffusion.metrics import predictive_factor, standardised_errors
from posterior_diffusion.operators.registry import operator_class

# This module is the pure part, below the API (`sample_posterior` applies a Calibration); the runs that sample
# calibration and held-out images are `calibrate_run`, above it.

KIND = "posterior_diffusion.calibration"
VERSION = 1
CALIBRATION_LEVELS = (0.8, 0.9, 0.95)
# what a run must share with the calibration (`PosteriorResult.config` keys)
IDENTITY = ("operator", "prior", "sampler", "num_samples")
COVERAGES = ("raw_coverage", "calibrated_coverage")  # {level: coverage} fields, beside "factors"
PER_CLASS = ("stratum_factors", "stratum_coverage")  # {level: [one value per pixel class]} fields


GUARANTEES = ("pixel", "image")


def conformal_factor(scores: torch.Tensor, alpha: float, guarantee: str = "pixel") -> float:
    """lambda_hat (module docstring) from the standardised errors `scores` (n, P) of n calibration images:
    "pixel", the split-conformal quantile of the pooled scores; "image", conformal risk control of the per-image
    miscoverage, the smallest lambda with (n R_n(lambda) + 1) / (n + 1) <= alpha."""
    n, pixels = scores.shape
    check_enough_images(score_count(guarantee, n, pixels), [1 - alpha])
    if guarantee == "pixel":
        rank = math.ceil((n * pixels + 1) * (1 - alpha))  # 1-based, <= N by the check
        return float(scores.flatten().kthvalue(rank).values)
    budget = (alpha * (n + 1) - 1) / n  # the largest R_n(lambda) allowed
    order = scores.flatten().sort(descending=True).values
    # R_n at lambda = order[k] is the share of the n P scores strictly above it (the images have P pixels each); it
    # grows with k, so the feasible candidates are a prefix and the smallest feasible lambda is its last
    above = torch.searchsorted(-order, -order, right=False).double() / (n * pixels)
    return float(order[(above <= budget).nonzero()[-1, 0]])


def score_count(guarantee: str, images: int, pixels: int) -> int:
    """How many exchangeable scores a guarantee rests on: pooled pixels ("pixel") or images ("image")."""
    if guarantee not in GUARANTEES:
        raise ValueError(f"unknown guarantee {guarantee!r}; valid: {', '.join(GUARANTEES)}")
    return images * pixels if guarantee == "pixel" else images


def check_enough_images(n: int, levels) -> None:
    """Both guarantees certify level 1 - alpha only from n >= 1 / alpha - 1 scores (pixels or images; else no
    lambda, not even infinity, reaches the level); fewer is a ValueError, before any sampling."""
    for level in levels:
        if not 0 < level < 1:
            raise ValueError(f"coverage levels must be in (0, 1), got {level}")
        if (1 - level) * (n + 1) < 1:
            need = math.ceil(1 / (1 - level) - 1 - 1e-9)
            raise ValueError(
                f"{n} calibration scores (images, for the per-image guarantee) cannot certify coverage {level:g}: "
                f"it needs at least {need}; use more images"
            )


@dataclass(frozen=True)
class Calibration:
    """Per level, the factor of the std that makes mean +- factor std a conformally calibrated interval, and what
    it was made for (module docstring).

    factors: {level: lambda_hat}; raw_coverage: {level: coverage of the uncalibrated Gaussian interval
    (`metrics.interval_coverage`)} and calibrated_coverage: {level: coverage of mean +- lambda_hat std}, both
    over the calibration images; strata: the operator's pixel classes (`Operator.calibration_strata_names`, empty
    when it has none), with stratum_factors {level: [lambda_hat per class]}, which then define the interval,
    and stratum_coverage {level: [calibrated coverage per class]}; task, operator (its config without per-image
    parameters), prior, sampler (its full config), num_samples, images: what the factors hold for; guarantee: how
    they were computed; folder: the calibration images' folder name (`calibrate --images`; "" where not recorded);
    one_sided: the class whose intervals are one-sided (module docstring; "": every interval is two-sided)."""

    factors: dict[float, float]
    task: str
    operator: dict
    prior: str
    sampler: dict
    num_samples: int
    images: int
    guarantee: str = "pixel"
    raw_coverage: dict[float, float] = field(default_factory=dict)
    calibrated_coverage: dict[float, float] = field(default_factory=dict)
    prior_digest: str = ""  # sha256 of a built-in prior's network weights when made (`shipped_calibrations`)
    held_out: dict = field(default_factory=dict)  # {"images", "folder", *COVERAGES, "stratum_coverage"}
    strata: list[str] = field(default_factory=list)
    stratum_factors: dict[float, list[float]] = field(default_factory=dict)
    stratum_coverage: dict[float, list[float]] = field(default_factory=dict)
    folder: str = ""
    one_sided: str = ""  # the pixel class with one-sided intervals (`Operator.one_sided_class`), "" for none

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        record = {"kind": KIND, "version": VERSION, **asdict(self)}
        _convert_levels(record, ("factors", *COVERAGES, *PER_CLASS), str, lambda v: v)
        _convert_levels(record["held_out"], (*COVERAGES, *PER_CLASS), str, lambda v: v)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by `save`; anything else is a ValueError naming the file."""
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read calibration file '{path}': {e}") from None
        if not isinstance(record, dict) or record.get("kind") != KIND:
            raise ValueError(f"'{path}' is not a calibration file (written by posterior-diffusion calibrate)")
        if record.get("version") != VERSION:
            raise ValueError(f"calibration file '{path}' has version {record.get('version')}; this reads {VERSION}")
        del record["kind"], record["version"]
        for key in ("factors", *COVERAGES):
            record.setdefault(key, {})
        _convert_levels(record, ("factors", *COVERAGES), float, float)
        _convert_levels(record, PER_CLASS, float, lambda v: [float(x) for x in v])
        _convert_levels(record.get("held_out", {}), COVERAGES, float, float)
        _convert_levels(record.get("held_out", {}), PER_CLASS, float, lambda v: [float(x) for x in v])
        return cls(**record)

    def differences(self, config: dict) -> list[str]:
        """The IDENTITY keys in which a run (`PosteriorResult.config`) differs from what this was made for."""
        return self._differences(_run_identity(config))

    def _differences(self, run: dict) -> list[str]:
        return [key for key in IDENTITY if getattr(self, key) != run[key]]

    def check(self, config: dict) -> None:
        """Refuse a run (`PosteriorResult.config`) that differs from what the calibration was made for."""
        run = _run_identity(config)
        differ = self._differences(run)
        if differ:
            details = "; ".join(
                f"{key}: calibrated {_brief(getattr(self, key))}, this run {_brief(run[key])}" for key in differ
            )
            raise ValueError(
                f"this calibration was made for task {self.task!r} with sampler {self.sampler.get('name')!r}; "
                f"this run uses operator {run['operator'].get('name')!r} with sampler "
                f"{run['sampler'].get('name')!r} ({details}): run with the calibration's settings, or calibrate "
                "again for this run's"
            )

    def check_level(self, level: float) -> None:
        if level not in self.factors:
            raise ValueError(f"level {level} was not calibrated; calibrated levels: {sorted(self.factors)}")

    def factor_map(self, level: float, strata: torch.Tensor | None) -> float | torch.Tensor:
        """lambda_hat at a calibrated `level`: one number, or with pixel classes the factor of each pixel's class
        (`strata`, from `Operator.calibration_strata`; a ValueError without them)."""
        self.check_level(level)
        if not self.stratum_factors:
            return self.factors[level]
        if strata is None:
            raise ValueError(
                f"this calibration has a factor per pixel class ({', '.join(self.strata)}): pass the measurement's "
                "classes (operator.calibration_strata(y))"
            )
        return torch.tensor(self.stratum_factors[level], dtype=torch.float64, device=strata.device)[strata]

    def interval(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        level: float,
        strata: torch.Tensor | None = None,
        sides: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) = mean -+ lambda_hat std at a calibrated `level` (with pixel classes, each pixel's
        class's lambda_hat; `strata` shaped as mean); a one-sided calibration's one-sided pixels (`sides`, shaped
        as mean, from `Operator.calibration_sides`) reach the image's bound 1 (side +1) or -1 (side -1)."""
        factor = self.factor_map(level, strata)
        half = (factor.to(std) if isinstance(factor, torch.Tensor) else factor) * std
        lower, upper = mean - half, mean + half
        if self.one_sided:
            sides = self.checked_sides(sides)
            lower, upper = lower.where(sides >= 0, -1.0), upper.where(sides <= 0, 1.0)
        return lower, upper

    def checked_sides(self, sides: torch.Tensor | None) -> torch.Tensor:
        """The sides a one-sided calibration needs (a ValueError without them)."""
        if sides is None:
            raise ValueError(
                f"this calibration's {self.one_sided} pixels have one-sided intervals: pass the measurement's sides "
                "(operator.calibration_sides(y))"
            )
        return sides


def per_class_label(names, values: dict, level, one_sided: str = "") -> str:
    """ "observed 1.234, missing 5.678" from {level: [value per pixel class]} and the classes' `names` (a
    calibration's `strata`), or "" without classes; the `one_sided` class is labelled so ("saturated (one-sided)")."""
    pairs = zip(names, values[level], strict=True) if values else ()
    return ", ".join(f"{name}{' (one-sided)' * (name == one_sided)} {v:.3f}" for name, v in pairs)


def _run_identity(config: dict) -> dict:
    """What of a run (`PosteriorResult.config`) a calibration must share (IDENTITY, the operator without its
    per-image parameters)."""
    return {key: config[key] for key in IDENTITY} | {"operator": operator_identity(config["operator"])}


def _convert_levels(record: dict, keys, level, value) -> None:
    """In place: the {level: value} dicts under `keys` of `record` (those present) with converted keys and values
    (JSON keys are strings)."""
    for key in keys:
        if key in record:
            record[key] = {level(k): value(v) for k, v in record[key].items()}


def operator_identity(config: dict) -> dict:
    """An operator config with only the parameters that define its task, not its image (`Operator.task_params`:
    without the image size and seed; a box as a share of the image)."""
    return {**config, "params": operator_class(config["name"]).task_params(config.get("params", {}))}


def _brief(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else repr(value)


def coverages(
    samples: torch.Tensor,
    truth: torch.Tensor,
    cal: Calibration,
    strata: torch.Tensor | None = None,
    sides: torch.Tensor | None = None,
) -> tuple[dict, dict, dict]:
    """({level: coverage of the raw Gaussian interval, `metrics.interval_coverage`'s}, {level: coverage of the
    calibrated interval}, {level: [its coverage per pixel class]} (empty without classes)) of n images' samples
    (n, S, C, H, W) and truths (n, C, H, W), their pixels' classes `strata` and, for a one-sided calibration, sides
    (both (n, C, H, W), `Operator.calibration_strata` / `calibration_sides`)."""

    def share(covered: torch.Tensor) -> float:
        return float(covered.double().mean())

    two_sided = standardised_errors(samples, truth)
    scores = standardised_errors(samples, truth, cal.checked_sides(sides)) if cal.one_sided else two_sided
    strata = None if strata is None else strata.flatten(1)
    raw = {level: share(two_sided <= predictive_factor(level, samples.shape[1])) for level in cal.factors}
    inside = {level: scores <= cal.factor_map(level, strata) for level in cal.factors}
    per_class = {
        level: [share(inside[level][strata == k]) for k in range(len(cal.strata))]
        for level in (cal.stratum_factors if strata is not None else {})
    }
    return raw, {level: share(covered) for level, covered in inside.items()}, per_class


def calibration_from_samples(
    samples: torch.Tensor,
    truth: torch.Tensor,
    config: dict,
    task: str,
    levels=CALIBRATION_LEVELS,
    guarantee: str = "pixel",
    strata: torch.Tensor | None = None,
    names: tuple[str, ...] = (),
    sides: torch.Tensor | None = None,
    one_sided: str = "",
) -> Calibration:
    """A `Calibration` from calibration images' samples (n, S, C, H, W) and truths (n, C, H, W) and the run's
    `PosteriorResult.config`; with the pixel guarantee and the classes `strata` (n, C, H, W) of the operator's
    pixel classes `names`, a factor per class too; with `sides` (n, C, H, W) (`Operator.calibration_sides`),
    one-sided intervals for the class `one_sided` (module docstring)."""
    if one_sided and (sides is None or one_sided not in names):
        raise ValueError(f"one-sided intervals for {one_sided!r} pixels need the pixels' sides and classes")
    scores = standardised_errors(samples, truth, sides if one_sided else None)
    factors = {level: conformal_factor(scores, 1 - level, guarantee) for level in levels}
    per_class = {}
    if strata is not None and names and guarantee == "pixel":
        per_class = {level: _class_factors(scores, strata.flatten(1), names, 1 - level) for level in levels}
    cal = Calibration(
        factors=factors,
        task=task,
        operator=operator_identity(config["operator"]),
        prior=config["prior"],
        sampler=config["sampler"],
        num_samples=samples.shape[1],
        images=len(samples),
        guarantee=guarantee,
        strata=list(names) if per_class else [],
        stratum_factors=per_class,
        one_sided=one_sided,
    )
    raw, calibrated, by_class = coverages(samples, truth, cal, strata if per_class else None, sides)
    return dataclasses.replace(cal, raw_coverage=raw, calibrated_coverage=calibrated, stratum_coverage=by_class)


def _class_factors(scores: torch.Tensor, strata: torch.Tensor, names, alpha: float) -> list[float]:
    """The pixel guarantee's factor within each pixel class (scores and strata (n, P))."""
    factors = []
    for k, name in enumerate(names):
        chosen = scores[strata == k]
        if alpha * (len(chosen) + 1) < 1:
            raise ValueError(
                f"the calibration images have {len(chosen)} {name} pixels, too few to calibrate them at level "
                f"{1 - alpha:g}: use more or larger images"
            )
        factors.append(conformal_factor(chosen.reshape(1, -1), alpha))
    return factors


__all__ = [
    "Calibration",
    "calibration_from_samples",
    "check_enough_images",
    "conformal_factor",
    "coverages",
    "operator_identity",
    "per_class_label",
    "score_count",
]
