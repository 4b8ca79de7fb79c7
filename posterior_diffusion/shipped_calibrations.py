"""The calibration files shipped with the package (assets/calibrations/*.json), made with `posterior-diffusion
calibrate` on tune-split images for the built-in priors. `sample_posterior(calibration="auto")` (the default)
applies the one made for the run's prior, operator, sampler (every option) and number of samples (`find`); a run
that none matches is reported as uncalibrated, with the command that calibrates it (`UNCALIBRATED`).

A file records the sha256 of the built-in prior's weights it was made with (`prior_digest`); a file whose prior
has changed since is never applied (tests/test_shipped_calibrations.py fails until it is made again).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from posterior_diffusion.calibration import Calibration
from posterior_diffusion.priors.loading import ASSETS, BUILTIN_PRIORS

FOLDER = ASSETS / "calibrations"
UNCALIBRATED = (
    "uncalibrated: no shipped calibration matches this prior, operator, sampler and number of samples (std is the "
    "samples' raw spread); calibrate it with `posterior-diffusion calibrate --images DIR --operator NAME "
    "[--op-param K=V] --sampler NAME --num-samples N --out cal.json` and pass --calibration cal.json"
)


@functools.cache
def prior_digest(spec: str) -> str:
    """sha256 over the weight files (*.safetensors, sorted) of built-in prior `spec` ("builtin:NAME"); "" for any
    other prior (a calibration made with it is never shipped)."""
    name = spec.removeprefix("builtin:") if isinstance(spec, str) and spec.startswith("builtin:") else None
    if name not in BUILTIN_PRIORS:
        return ""
    digest = hashlib.sha256()
    for path in sorted((ASSETS / "priors" / BUILTIN_PRIORS[name][0]).rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def shipped() -> list[tuple[Path, Calibration]]:
    """Every shipped calibration file with its contents, by file name."""
    return [(path, Calibration.load(path)) for path in sorted(FOLDER.glob("*.json"))] if FOLDER.is_dir() else []


def load(spec: str | Path) -> Calibration:
    """A calibration file's contents: `spec` is its path, or the name of a shipped file (auto_denoise.json, ...)
    where no such path exists; anything else is a ValueError naming it."""
    path = Path(spec)
    if not path.exists() and path.name == str(spec) and (FOLDER / path.name).is_file():
        path = FOLDER / path.name
    return Calibration.load(path)


def find(config: dict, level: float) -> tuple[str, Calibration] | None:
    """(file name, calibration) of the shipped file made for a run (`PosteriorResult.config`) at `level`, with its
    prior's weights unchanged since, or None."""
    for path, cal in shipped():
        if level in cal.factors and not cal.differences(config) and cal.prior_digest == prior_digest(cal.prior):
            return path.name, cal
    return None


__all__ = ["FOLDER", "UNCALIBRATED", "find", "load", "prior_digest", "shipped"]
