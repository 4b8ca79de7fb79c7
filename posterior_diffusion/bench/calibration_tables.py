"""The report tables of calibration files (`bench report`'s kinds "calibrations" and "coverage"): each file's factors
and coverage on its calibration and held-out images, and files measured on other images (`posterior-diffusion
coverage --out`)."""

from __future__ import annotations

from pathlib import Path

from posterior_diffusion.bench.store import json_lines
from posterior_diffusion.calibration import Calibration, per_class_label


def calibrations_table(folder: Path, spec: dict) -> str:
    """Calibration files (`posterior-diffusion calibrate`; `rows` may hold shell patterns, expanded in name order):
    per file and level, the factor, the raw and calibrated coverage on the calibration images and, where the file
    holds it, on its held-out test images; with `level`, one row per file at that level: the held-out coverage and
    its distance from the level in points."""
    names = [str(p.relative_to(folder)) for pattern in spec["rows"] for p in sorted(folder.glob(pattern))]
    if "level" in spec:
        return _calibration_summary([(name, Calibration.load(folder / name)) for name in names], spec["level"])
    lines = [
        "| file | task | sampler | level | factor | raw / calibrated coverage (calibration images) | raw / calibrated "
        "coverage (held out) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cal = Calibration.load(folder / name)
        for level, factor in cal.factors.items():
            own = f"{cal.raw_coverage[level]:.3f} / {cal.calibrated_coverage[level]:.3f} ({calibration_images(cal)})"
            held = cal.held_out
            other = (
                f"{held['raw_coverage'][level]:.3f} / {held['calibrated_coverage'][level]:.3f} "
                f"({held['images']} {held['folder']})"
                if held
                else "-"
            )
            cells = [Path(name).name, cal.task, sampler_label(cal), f"{level:g}", f"{factor:.3f}", own, other]
            lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def calibration_images(cal) -> str:
    """'24 BSD400': how many calibration images and their folder (the count alone where the file has no folder)."""
    return f"{cal.images} {cal.folder}".strip()


def sampler_label(cal) -> str:
    """'diffpir-20, 4 samples': the sampler, its steps and the number of samples a calibration was made with."""
    return f"{cal.sampler.get('name')}-{cal.sampler.get('steps')}, {cal.num_samples} samples"


def _calibration_summary(files: list, level: float) -> str:
    """One row per (file name, Calibration) at `level`: the factor (per pixel class where the file has classes),
    the held-out raw and calibrated coverage, the calibrated coverage's distance from the level in points, and
    per pixel class."""
    lines = [
        "| file | prior | sampler | calibration images | factor | raw coverage (held out) | calibrated coverage "
        "(held out) | off by | per pixel class (held out) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cal in files:
        held = cal.held_out
        calibrated = held["calibrated_coverage"][level]
        factor = per_class_label(cal.strata, cal.stratum_factors, level, cal.one_sided) or f"{cal.factors[level]:.3f}"
        by_class = per_class_label(cal.strata, held.get("stratum_coverage", {}), level, cal.one_sided) or "-"
        lines.append(
            f"| {Path(name).name} | {cal.prior.removeprefix('builtin:')} | {sampler_label(cal)} | "
            f"{calibration_images(cal)} | {factor} | "
            f"{held['raw_coverage'][level]:.3f} | {calibrated:.3f} ({held['images']} {held['folder']}) | "
            f"{100 * (calibrated - level):+.1f} | {by_class} |"
        )
    return "\n".join(lines)


def coverage_table(folder: Path, spec: dict) -> str:
    """`posterior-diffusion coverage --out` rows (JSON lines), one line per file and image set (the last row of a
    rerun; by file name) at `spec["level"]`: the file's own held-out coverage beside the coverage on the row's
    images, its distance from the level in points, and per pixel class."""
    level = str(spec["level"])
    lines = [
        "| file | prior | sampler | calibration images | held out in the file | on these images | off by | per pixel "
        "class |",
        "|---|---|---|---|---|---|---|---|",
    ]
    latest = {
        (r["calibration"], r["folder"], r["images"], r["size"], r["seed"]): r for r in json_lines(folder, spec["rows"])
    }
    for _, row in sorted(latest.items()):
        calibrated = row["calibrated_coverage"][level]
        classes = per_class_label(row["strata"], row.get("stratum_coverage", {}), level, row.get("one_sided", ""))
        classes = classes or "-"
        own = row["file_held_out"]
        own_cell = f"{own['calibrated_coverage'][level]:.3f} ({own['images']} {own['folder']})" if own else "-"
        lines.append(
            f"| {Path(row['calibration']).name} | {row['prior'].removeprefix('builtin:')} | {row['sampler']} | "
            f"{row['calibration_images']} | {own_cell} | {calibrated:.3f} ({row['images']} {row['folder']}) | "
            f"{100 * (calibrated - float(level)):+.1f} | {classes} |"
        )
    return "\n".join(lines)
