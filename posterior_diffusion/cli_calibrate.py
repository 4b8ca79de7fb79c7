"""`posterior-diffusion calibrate`: calibrate a sampler's intervals on images with known truth, write the file and,
given test images, measure its coverage on them; `posterior-diffusion coverage`: measure an existing file's
coverage on other images, such as a user's own (the runs are `calibrate_run`'s, the maths `calibration`'s)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from posterior_diffusion.cli_inputs import build_operator, sampling_settings

CALIBRATE_COUNTS = ("size", "num_images", "images_per_call", "num_test_images", "num_samples", "batch_size", "steps")


def cmd_calibrate(args) -> None:
    from posterior_diffusion.calibrate_run import calibrate, held_out_coverage
    from posterior_diffusion.images import list_images, load_center_crops
    from posterior_diffusion.shipped_calibrations import prior_digest

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"'{out}' exists; pass --overwrite to replace it")
    device = _checked_device(args)
    x, op, channels = _crops_and_operator(args, args.images, args.num_images, 3)
    name = args.name or args.task or op.to_config()["name"]
    settings = sampling_settings(args, device)
    common = dict(seed=args.seed, images_per_call=args.images_per_call)
    levels = tuple(args.levels)
    cal = calibrate(x, op, name, settings, levels, guarantee=args.guarantee, one_sided=args.one_sided, **common)
    # a built-in prior's weights (else ""), and where the calibration images came from
    cal = dataclasses.replace(cal, prior_digest=prior_digest(cal.prior), folder=Path(args.images).name)
    cal.save(out)
    print(
        f"wrote {out}: {cal.sampler['name']} on {name}, {cal.images} images x {cal.num_samples} samples, "
        f"{cal.guarantee} guarantee{f', one-sided intervals for {cal.one_sided} pixels' if cal.one_sided else ''}"
    )
    for level, factor in cal.factors.items():
        print(
            f"  {level:.0%}: raw coverage {cal.raw_coverage[level]:.3f}, factor {factor:.3f} x std "
            f"(calibration images: {cal.calibrated_coverage[level]:.3f}){_per_class(cal, cal.stratum_factors, level)}"
        )
    if args.test_images:
        test = load_center_crops(list_images(args.test_images)[: args.num_test_images], channels, args.size)
        raw, calibrated, by_class = held_out_coverage(cal, test, op, settings, **common)
        print(f"test images ({len(test)}, {args.test_images}):")
        _print_coverage(cal, raw, calibrated, by_class)
        held_out = _coverage_record(len(test), args.test_images, raw, calibrated, by_class)
        dataclasses.replace(cal, held_out=held_out).save(out)


def cmd_coverage(args) -> None:
    """The file's intervals on other images: sampled with the file's prior, sampler (every option) and number of
    samples, the images measured with the operator given (as for `calibrate`), noise and chains drawn as for
    `calibrate --test-images` (so its test images give the file's held-out coverage again)."""
    from posterior_diffusion.api import SamplingSettings
    from posterior_diffusion.bench.calibration_tables import calibration_images, sampler_label
    from posterior_diffusion.calibrate_run import held_out_coverage
    from posterior_diffusion.priors.loading import default_prior_name
    from posterior_diffusion.samplers.base import sampler_from_config
    from posterior_diffusion.shipped_calibrations import load

    cal = load(args.calibration)
    device = _checked_device(args)
    if args.out and not Path(args.out).parent.is_dir():
        raise FileNotFoundError(f"--out '{args.out}': its folder does not exist (create it first)")
    gray = cal.prior == f"builtin:{default_prior_name(1)}"
    x, op, _ = _crops_and_operator(args, args.images, args.num_images, 1 if gray else 3)
    settings = SamplingSettings(
        prior=cal.prior,
        sampler=sampler_from_config(cal.sampler),
        num_samples=cal.num_samples,
        batch_size=args.batch_size,
        device=device,
        dtype=args.dtype,
        progress=not args.quiet,
    )
    raw, calibrated, by_class = held_out_coverage(cal, x, op, settings, args.seed, args.images_per_call)
    print(
        f"coverage of {args.calibration} ({sampler_label(cal)}, calibrated on {calibration_images(cal)} images) on "
        f"{len(x)} image{'s' * (len(x) != 1)} of {args.images}:"
    )
    _print_coverage(cal, raw, calibrated, by_class)
    if args.out:
        row = {
            "calibration": Path(args.calibration).name,
            "task": cal.task,
            "prior": cal.prior,
            "sampler": sampler_label(cal),
            "calibration_images": calibration_images(cal),
            "file_held_out": {k: cal.held_out[k] for k in ("images", "folder", "calibrated_coverage")}
            if cal.held_out
            else {},
            "size": args.size,
            "seed": args.seed,
            "strata": cal.strata,
            "one_sided": cal.one_sided,
            **_coverage_record(len(x), args.images, raw, calibrated, by_class),
        }
        with open(args.out, "a") as rows:  # JSON keys: the levels as strings
            rows.write(json.dumps(row) + "\n")
        print(f"appended to {args.out}")


def _coverage_record(images: int, folder: str, raw: dict, calibrated: dict, by_class: dict) -> dict:
    """What a coverage run measured on `images` images of `folder`, as a file's `held_out` and a row keep it."""
    record = {"images": images, "folder": Path(folder).name, "raw_coverage": raw, "calibrated_coverage": calibrated}
    return record | ({"stratum_coverage": by_class} if by_class else {})


def _checked_device(args):
    """The run's device, after the counts and the seed of `calibrate` / `coverage` are checked."""
    from posterior_diffusion.api import check_seed, resolve_device
    from posterior_diffusion.guards import check_counts

    if bool(args.task) == bool(args.operator or args.operator_config):
        raise ValueError("give either --task NAME or --operator NAME (with --op-param ...), not both or neither")
    check_seed(args.seed)
    check_counts(
        **{f"--{name.replace('_', '-')}": getattr(args, name) for name in CALIBRATE_COUNTS if hasattr(args, name)}
    )
    return resolve_device(args.device)


def _crops_and_operator(args, folder: str, count: int | None, channels: int):
    """(the first `count` images of `folder` as centre crops (n, C, --size, --size) in [-1, 1], the operator of
    --task or --operator for them, C): C is --channels, else the task's, else `channels`."""
    from posterior_diffusion.images import list_images, load_center_crops
    from posterior_diffusion.tasks import get_task

    task = get_task(args.task) if args.task else None
    channels = args.channels or (task.channels if task and task.channels else channels)
    x = load_center_crops(list_images(folder)[:count], channels, args.size)
    op = task.build(args.size) if task else build_operator(args, tuple(x.shape[1:]))
    return x, op, channels


def _print_coverage(cal, raw: dict, calibrated: dict, by_class: dict) -> None:
    for level in cal.factors:
        print(
            f"  {level:.0%}: raw coverage {raw[level]:.3f}, calibrated {calibrated[level]:.3f}"
            f"{_per_class(cal, by_class, level)}"
        )


def _per_class(cal, values: dict, level: float) -> str:
    """ "; per pixel class: observed 1.234, missing 4.567" for {level: [value per class]}, or "" without classes."""
    from posterior_diffusion.calibration import per_class_label

    return f"; per pixel class: {per_class_label(cal.strata, values, level, cal.one_sided)}" if values else ""
