"""The `posterior-diffusion` command line.

    posterior-diffusion list
    posterior-diffusion degrade photo.png --operator gaussian_blur --op-param sigma=1.5 --out y.png
    posterior-diffusion restore photo.png --simulate --operator super_resolution --op-param factor=4 \
        --sampler dps --num-samples 4 --out results/
    posterior-diffusion bench grid --images kodak/ --out bench/ --tasks sr4 --methods dps ddrm tikhonov
    posterior-diffusion calibrate --images kodak/ --task sr4 --sampler ddrm --out sr4_ddrm.json
    posterior-diffusion coverage auto_gaussian_blur_cpu.json --images my_photos/ --operator gaussian_blur
    posterior-diffusion train --data my_images/ --out my_prior/ --steps 10000
    posterior-diffusion convert ffhq_10m.pt --arch adm-ffhq-256 --out ffhq_prior/

Errors are one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import torch

from posterior_diffusion.cli_calibrate import cmd_calibrate, cmd_coverage
from posterior_diffusion.cli_inputs import (
    build_operator,
    parse_params,
    read_measurement,
    sampling_settings,
    write_measurement,
)

EXIT_ERROR = 1


def cmd_list(args) -> None:
    from posterior_diffusion.operators import list_operators, operator_class
    from posterior_diffusion.priors import builtin_priors
    from posterior_diffusion.samplers import list_samplers, sampler_class
    from posterior_diffusion.samplers.auto import auto_order
    from posterior_diffusion.samplers.budgets import CPU_STEPS

    def first_line(obj) -> str:
        return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""

    def presets(cls) -> str:
        return f" (presets: {', '.join(sorted(cls.PRESETS))})" if cls.PRESETS else ""

    def auto(name: str) -> str:
        order = " > ".join(sampler for sampler, _ in auto_order(name))
        cpu_order = " > ".join(sampler for sampler, _ in auto_order(name, on_cpu=True))
        cpu = f"{cpu_order}, " if cpu_order != order else ""
        linear = operator_class(name).is_linear
        return f" (auto: {order}" + (f"; on a CPU: {cpu}{CPU_STEPS} steps)" if linear else ")")

    sections = {
        "operators": {name: first_line(operator_class(name)) + auto(name) for name in list_operators()},
        "samplers": {name: first_line(sampler_class(name)) + presets(sampler_class(name)) for name in list_samplers()},
        "built-in priors": {f"builtin:{name}": desc for name, desc in builtin_priors().items()},
    }
    column = 2 + max(len(name) for entries in sections.values() for name in entries)
    width = max(column + 40, shutil.get_terminal_size().columns)
    for title, entries in sections.items():
        print(f"{title}:")
        for name, text in entries.items():  # the text wrapped to the terminal beside the name column
            print(
                textwrap.fill(text, width, initial_indent=f"  {name:{column}s}", subsequent_indent=" " * (column + 2))
            )
        if not entries:
            print("  (none in this installation)")


def cmd_degrade(args) -> None:
    from posterior_diffusion.api import check_seed
    from posterior_diffusion.images import load_image

    out = Path(args.out)
    config_path = out.with_suffix(out.suffix + ".json")
    for path in (out, config_path):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it")
    x = load_image(args.input, args.channels)
    op = build_operator(args, tuple(x.shape))
    y = op.measure(x, generator=torch.Generator().manual_seed(check_seed(args.seed)))
    write_measurement(y, out)
    config_path.write_text(json.dumps(op.to_config()))
    print(f"wrote {out} (operator config: {config_path})")


def cmd_restore(args) -> None:
    from posterior_diffusion.api import check_seed, resolve_device
    from posterior_diffusion.images import load_image
    from posterior_diffusion.metrics import psnr
    from posterior_diffusion.outputs import describe_files, write_restoration
    from posterior_diffusion.shipped_calibrations import UNCALIBRATED
    from posterior_diffusion.tensor_utils import peak_memory_mb, reset_peak_memory

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"output folder '{out}' is not empty; pass --overwrite to replace its files")
    check_seed(args.seed)
    device = resolve_device(args.device)  # an unknown device or a missing GPU: refused before any work
    truth = None
    if args.simulate:
        truth = load_image(args.input, args.channels)
        op = build_operator(args, tuple(truth.shape), auto_noise=True)
        y = op.measure(truth, generator=torch.Generator().manual_seed(args.seed))
    else:
        y = read_measurement(Path(args.input), args.channels)
        op = build_operator(args, tuple(y.shape) if y.ndim == 3 else None, auto_noise=True)
    settings = sampling_settings(args, device)  # the options checked before any loading
    if args.prior_arch:  # a guided-diffusion checkpoint, loaded here in its dtype (group norms stay float32)
        from posterior_diffusion.guards import auto_dtype
        from posterior_diffusion.priors import load_prior

        if not args.prior:
            raise ValueError("--prior-arch needs --prior CHECKPOINT (a guided-diffusion .pt file)")
        dtype = auto_dtype(device) if args.dtype == "auto" else args.dtype
        prior = load_prior(args.prior, dtype=dtype, arch=args.prior_arch)
        settings = dataclasses.replace(settings, prior=prior, dtype=None)
    estimate = {"noise_sigma": "auto"} if args.noise_sigma == "auto" else {}
    calibration = None if args.calibration == "none" else args.calibration
    reset_peak_memory(device)
    res = settings.run(y, op, args.seed, calibration=calibration, level=args.level, **estimate)
    # the CUDA allocator's peak during the run; on a CPU the process's peak resident memory (loading included)
    peak_of = "CUDA allocator" if device.type == "cuda" else "process resident"
    peak = {"peak_memory_mb": round(peak_memory_mb(device)), "peak_memory_of": peak_of}
    if estimate:
        noise = res.config["noise"]
        print(
            f"noise sigma estimated from the measurement: {noise['noise_sigma']:.4f} on [-1, 1] "
            f"({noise['noise_sigma'] * 127.5:.2f} / 255; {noise['method']})"
        )
    if res.config["calibration"] == "uncalibrated":
        print(UNCALIBRATED)
    elif "shipped_file" in res.config["calibration"]:
        one_sided = res.config["calibration"].get("one_sided")
        print(
            f"interval: {args.level:.0%}, calibrated by the shipped {res.config['calibration']['shipped_file']}"
            + (f" (one-sided for {one_sided} pixels)" if one_sided else "")
        )
    info = {"input": str(args.input), "simulate": args.simulate, **peak}
    if args.prior_arch:
        info |= {"prior": args.prior, "prior_arch": args.prior_arch}
    written = write_restoration(out, res, y.float(), truth, overwrite=args.overwrite, run_info=info)
    summary = f"wrote {out}/ ({describe_files(out, written)})"
    summary += f" in {res.seconds:.1f} s, {res.nfe} NFE, peak memory {peak['peak_memory_mb']} MiB"
    if truth is not None:
        summary += f"; PSNR of the mean {psnr(res.mean[None], truth[None])[0]:.2f} dB"
    print(summary)


def cmd_bench_grid(args) -> None:
    from accelerate import PartialState

    from posterior_diffusion.bench import BenchConfig, run_bench, write_summary
    from posterior_diffusion.cli_options import config_from_args

    cfg = config_from_args(BenchConfig, args, sampler_options=parse_params(args.sampler_param, "--sampler-param"))
    rows = run_bench(cfg, progress=not args.quiet)
    if PartialState().is_main_process:
        print(write_summary(Path(cfg.out), rows))


def cmd_bench_exact(args) -> None:
    from posterior_diffusion.cli_options import config_from_args
    from posterior_diffusion.exact import ExactConfig, run_exact

    print(run_exact(config_from_args(ExactConfig, args), progress=not args.quiet))


def cmd_bench_speed(args) -> None:
    from posterior_diffusion.cli_options import config_from_args
    from posterior_diffusion.speed import SpeedConfig, run_speed

    print(run_speed(config_from_args(SpeedConfig, args), progress=not args.quiet))


def cmd_bench_report(args) -> None:
    from posterior_diffusion.bench.studies import REPORT, STUDY, render_report, write_report

    folders = args.folders
    if len(folders) > 1:  # a glob such as assets/bench/*/: the folders that are studies
        studies = [folder for folder in folders if Path(folder, STUDY).is_file()]
        for folder in folders:
            if folder not in studies:
                print(f"skipped: {folder} (no {STUDY})")
        folders = studies or folders[:1]
    for folder in folders:
        if args.check:
            current = Path(folder, REPORT)
            if not current.is_file() or current.read_text() != render_report(folder):
                raise ValueError(f"{current} does not match its rows: run posterior-diffusion bench report {folder}")
            print(f"{current}: matches its rows")
        else:
            print(f"wrote {write_report(folder)}")


def cmd_lpips_weights(args) -> None:
    from posterior_diffusion.perceptual import fetch_weights

    for net in args.net:
        print(f"LPIPS ({net}) weights: {fetch_weights(net, args.out)}")


def cmd_convert(args) -> None:
    from posterior_diffusion.priors.adm import convert_checkpoint

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"output folder '{out}' is not empty; pass --overwrite to replace its files")
    convert_checkpoint(args.checkpoint, args.arch, out, args.dtype)
    print(f"wrote {out}/ (a diffusers DDPMPipeline: model_index.json, unet/, scheduler/); use it with --prior {out}")


def cmd_sample(args) -> None:
    from posterior_diffusion.api import check_seed, resolve_device
    from posterior_diffusion.figures import save_grid
    from posterior_diffusion.priors import default_prior_name, load_prior
    from posterior_diffusion.samplers.unconditional import sample_images

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"'{out}' exists; pass --overwrite to replace it")
    spec = args.prior or f"builtin:{default_prior_name(args.channels)}"
    check_seed(args.seed)
    device = resolve_device(args.device)  # checked, with the seed, before the prior is loaded
    prior = load_prior(spec, device=device)
    channels, height, width = prior.default_image_shape()
    shape = (channels, args.size or height, args.size or width)
    images = sample_images(prior, args.num, shape, args.steps, args.seed, progress=not args.quiet)
    save_grid(images.cpu(), out, nrow=args.nrow)
    print(f"wrote {args.num} samples of {spec} ({shape[1]}x{shape[2]}, {args.steps} steps) to {out}")


def cmd_train(args) -> None:
    from posterior_diffusion.cli_options import config_from_args
    from posterior_diffusion.train import TrainConfig, default_threads, train

    default_threads()
    cfg = config_from_args(TrainConfig, args)
    folder = train(cfg, progress=not args.quiet, time_limit=_seconds(args), sample_grid=args.sample_grid)
    print(f"prior saved in {folder}/ (use it with --prior {folder})")


def cmd_train_autoencoder(args) -> None:
    from posterior_diffusion.cli_options import config_from_args
    from posterior_diffusion.train import default_threads
    from posterior_diffusion.train_autoencoder import AutoencoderConfig, train_autoencoder

    default_threads()
    cfg = config_from_args(AutoencoderConfig, args)
    folder = train_autoencoder(cfg, progress=not args.quiet, time_limit=_seconds(args))
    print(f"autoencoder saved in {folder}/autoencoder (train a latent prior with --autoencoder {folder}/autoencoder)")


def _seconds(args) -> float | None:
    return None if args.time_limit is None else 60.0 * args.time_limit


def _commands() -> dict[str, tuple]:
    """Subcommand -> (options dataclass, function, help); "bench" holds its modes the same way."""
    from posterior_diffusion import cli_options as o

    return {
        "list": (o.ListOptions, cmd_list, "operators, samplers and built-in priors"),
        "degrade": (o.DegradeOptions, cmd_degrade, "simulate a measurement of a clean image"),
        "restore": (o.RestoreOptions, cmd_restore, "sample the posterior for a measurement"),
        "calibrate": (
            o.CalibrateOptions,
            cmd_calibrate,
            "conformally calibrate a sampler's intervals on images with known truth",
        ),
        "coverage": (
            o.CoverageOptions,
            cmd_coverage,
            "a calibration file's coverage on other images with known truth (do its intervals hold on yours?)",
        ),
        "bench": {
            "grid": (o.GridOptions, cmd_bench_grid, "tasks x methods x images: per-image rows, summary table, figures"),
            "exact": (o.ExactOptions, cmd_bench_exact, "samplers against exact Gaussian-mixture posteriors"),
            "speed": (o.SpeedOptions, cmd_bench_speed, "each sampler's time against its bare network evaluations"),
            "report": (o.ReportOptions, cmd_bench_report, "a study folder's report.md regenerated from its rows"),
        },
        "lpips-weights": (
            o.LpipsOptions,
            cmd_lpips_weights,
            "download the standard LPIPS weights (torchvision backbone, lpips v0.1 heads, SHA-256 checked) into the "
            "cache where `bench --lpips` looks (needs the network)",
        ),
        "convert": (o.ConvertOptions, cmd_convert, "a guided-diffusion (ADM) checkpoint -> a diffusers DDPMPipeline"),
        "sample": (o.SampleOptions, cmd_sample, "a grid of unconditional samples of a prior (what it has learned)"),
        "train": (o.TrainOptions, cmd_train, "train a diffusion prior (pixel, or latent with --autoencoder)"),
        "train-autoencoder": (o.AutoencoderOptions, cmd_train_autoencoder, "train the autoencoder of a latent prior"),
    }


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, each one's options generated from its dataclass (`cli_options`)."""
    from posterior_diffusion.cli_options import add_config_options

    parser = argparse.ArgumentParser(prog="posterior-diffusion", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, entry in _commands().items():
        if isinstance(entry, dict):
            modes = sub.add_parser(name, help=f"benchmarks: {', '.join(entry)}").add_subparsers(
                dest="mode", required=True
            )
            for mode, (options, func, text) in entry.items():
                add_config_options(modes.add_parser(mode, help=text), options)
                modes.choices[mode].set_defaults(func=func)
            continue
        options, func, text = entry
        command = sub.add_parser(name, help=text)
        add_config_options(command, options)
        command.set_defaults(func=func)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: "warning: <message>", without the source file and line Python adds."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    format_warning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, OSError) as err:  # a TypeError is a bug
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = format_warning
    return 0


if __name__ == "__main__":
    sys.exit(main())
