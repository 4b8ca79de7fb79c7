"""`posterior-diffusion calibrate`: calibrate a sampler's intervals on images with known truth, write the file and,
given test images, measure its coverage on them (the runs are `calibrate_run`'s, the maths `calibration`'s)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from posterior_diffusion.cli_inputs import build_operator, sampling_settings

CALIBRATE_COUNTS = ("size", "num_images", "images_per_call", "num_test_images", "num_samples", "batch_size", "steps")


def cmd_calibrate(args) -> None:
    from posterior_diffusion.api import check_seed, resolve_device
    from posterior_diffusion.calibrate_run import calibrate, held_out_coverage
    from posterior_diffusion.guards import check_counts
    from posterior_diffusion.images import list_images, load_center_crops
    from posterior_diffusion.shipped_calibrations import prior_digest
    from posterior_diffusion.tasks import get_task

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"'{out}' exists; pass --overwrite to replace it")
    if bool(args.task) == bool(args.operator or args.operator_config):
        raise ValueError("give either --task NAME or --operator NAME (with --op-param ...), not both or neither")
    check_seed(args.seed)
    check_counts(
        **{f"--{name.replace('_', '-')}": getattr(args, name) for name in CALIBRATE_COUNTS if hasattr(args, name)}
    )
    device = resolve_device(args.device)
    paths = list_images(args.images)[: args.num_images]
    task = get_task(args.task) if args.task else None
    channels = args.channels or (task.channels if task and task.channels else 3)
    x = load_center_crops(paths, channels, args.size)
    op = task.build(args.size) if task else build_operator(args, tuple(x.shape[1:]))
    name = args.name or args.task or op.to_config()["name"]
    settings = sampling_settings(args, device)
    common = dict(seed=args.seed, images_per_call=args.images_per_call)
    cal = calibrate(x, op, name, settings, tuple(args.levels), guarantee=args.guarantee, **common)
    # a built-in prior's weights (else ""), and where the calibration images came from
    cal = dataclasses.replace(cal, prior_digest=prior_digest(cal.prior), folder=Path(args.images).name)
    cal.save(out)
    print(
        f"wrote {out}: {cal.sampler['name']} on {name}, {cal.images} images x {cal.num_samples} samples, "
        f"{cal.guarantee} guarantee"
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
        for level in cal.factors:
            print(
                f"  {level:.0%}: raw coverage {raw[level]:.3f}, calibrated {calibrated[level]:.3f}"
                f"{_per_class(cal, by_class, level)}"
            )
        held_out = {"images": len(test), "folder": Path(args.test_images).name}
        held_out |= {"raw_coverage": raw, "calibrated_coverage": calibrated}
        if by_class:
            held_out["stratum_coverage"] = by_class
        dataclasses.replace(cal, held_out=held_out).save(out)


def _per_class(cal, values: dict, level: float) -> str:
    """ "; per pixel class: observed 1.234, missing 4.567" for {level: [value per class]}, or "" without classes."""
    from posterior_diffusion.calibration import per_class_label

    return f"; per pixel class: {per_class_label(cal, values, level)}" if values else ""
