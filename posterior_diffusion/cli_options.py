"""The command line's options, one dataclass per subcommand: each field is one option (its name, type, default
and help in one place), and `add_config_options` turns a dataclass into argparse options. Library configs
(BenchConfig, TrainConfig, ...) are used as they are, extended here by the options that only the command has
(--quiet, --sampler-param, --time-limit). Field metadata: "help"; "flag" (another option name than the field's);
"positional"; "choices"; "metavar"; "append" (a repeatable option collected into a list).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field

from posterior_diffusion.bench import BenchConfig
from posterior_diffusion.exact import ExactConfig
from posterior_diffusion.speed import SpeedConfig
from posterior_diffusion.train import SAMPLE_GRID, TrainConfig
from posterior_diffusion.train_autoencoder import AutoencoderConfig


def option(help: str, default=dataclasses.MISSING, **metadata):
    """A dataclass field that is one command-line option (`metadata` as in the module docstring)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


QUIET = {"help": "no progress bars"}


def _append(help: str, metavar: str) -> dict:
    """The metadata of a repeatable option collected into a list."""
    return {"help": help, "append": True, "metavar": metavar}


@dataclass(kw_only=True)
class OperatorOptions:
    """How a measurement's operator is given (degrade, restore, calibrate)."""

    operator: str | None = option("operator name (see `list`)", None)
    op_param: list[str] | None = field(default=None, metadata=_append("operator parameter (repeatable)", "K=V"))
    operator_config: str | None = option("operator config written by `degrade`", None, metavar="JSON")
    noise_sigma: str | None = option(
        "Gaussian noise std on the [-1, 1] scale (default 0.05), or auto (restore): estimated from the measurement",
        None,
    )
    channels: int | None = option("read images as gray (1) or RGB (3)", None, choices=(1, 3))
    seed: int = option("seed of the noise and the samples", 0)


@dataclass(kw_only=True)
class OutputOptions:
    """Commands that write files (degrade, restore, calibrate)."""

    overwrite: bool = option("replace existing outputs", False)


@dataclass(kw_only=True)
class RunOptions:
    """Where and how the network runs (restore, calibrate, coverage)."""

    batch_size: int | None = option("samples per network call (default all)", None)
    device: str | None = option("cpu, cuda, cuda:1, ... (default cuda if available)", None)
    dtype: str = option(
        "network precision (auto: bfloat16 on CUDA and on CPUs with native bfloat16, else float32)",
        "auto",
        choices=("auto", "float32", "float16", "bfloat16"),
    )
    quiet: bool = field(default=False, metadata=QUIET)


@dataclass(kw_only=True)
class SamplingOptions(RunOptions):
    """The sampling options of restore and calibrate."""

    sampler: str = option("sampler name, or auto: the one measured best for the operator", "auto")
    preset: str | None = option("the sampler's task preset (see `list`)", None)
    sampler_param: list[str] | None = field(default=None, metadata=_append("sampler option (repeatable)", "K=V"))
    steps: int | None = option("sampler steps (default: the sampler's)", None)
    prior: str | None = option("prior: builtin:NAME, a diffusers folder or hub id (default: built-in)", None)
    num_samples: int = option("posterior samples", 4)
    compile: bool = option("torch.compile the network (about a minute per batch shape on a CPU core)", False)
    cuda_graphs: bool = option("on a GPU, replay the network from CUDA graphs (small networks, small batches)", False)


@dataclass(kw_only=True)
class ListOptions:
    """`list`: operators, samplers and built-in priors (no options)."""


@dataclass(kw_only=True)
class DegradeOptions(OperatorOptions, OutputOptions):
    input: str = option("clean image file", positional=True)
    out: str = option("measurement file (.png, or .pt/.npz for exact values)")


@dataclass(kw_only=True)
class RestoreOptions(OperatorOptions, SamplingOptions, OutputOptions):
    input: str = option("measurement (image, .pt or .npz), or a clean image with --simulate", positional=True)
    out: str = option("output folder")
    simulate: bool = option("INPUT is a clean image: measure it first", False)
    prior_arch: str | None = option("--prior is a guided-diffusion .pt of this ADM preset", None, metavar="PRESET")
    calibration: str = option(
        "a file from `calibrate` or a shipped file's name (interval_lo/hi.png at --level), auto: the shipped "
        "calibration made for this run, if any, or none",
        "auto",
        metavar="FILE",
    )
    level: float = option("the calibrated interval's level", 0.9)


@dataclass(kw_only=True)
class CalibrateOptions(OperatorOptions, SamplingOptions, OutputOptions):
    images: str = option("folder of calibration images (centre-cropped to --size)")
    out: str = option("calibration file to write (.json)")
    task: str | None = option("a bench task (sr4, random_inpaint, ...; see `bench grid --help`), or --operator", None)
    name: str | None = option("the calibration's name (default: --task, or the operator's name)", None)
    size: int = option("crop side in pixels", 64)
    num_images: int | None = option("the first N images of the folder (default all)", None)
    images_per_call: int | None = option(
        "images sampled in one call (default all: one call, so a long run's time estimate covers them all)", None
    )
    levels: tuple[float, ...] = option("coverage levels", (0.8, 0.9, 0.95))
    test_images: str | None = option("folder of other images to measure the calibrated coverage on", None)
    num_test_images: int | None = option("the first N test images (default all)", None)
    guarantee: str = option(
        "pixel: split conformal over pooled pixels (tight); image: risk control per image (exact)",
        "pixel",
        choices=("pixel", "image"),
    )
    one_sided: bool = option(
        "one-sided intervals where the measurement bounds the truth on one side (high_dynamic_range's saturated "
        "pixels: [lower, 1] or [-1, upper]); they hold where the truth lies further beyond the clip than on the "
        "calibration images",
        False,
    )


@dataclass(kw_only=True)
class CoverageOptions(OperatorOptions, RunOptions):
    calibration: str = option(
        "a file from `calibrate`, or the name of a shipped one (auto_gaussian_blur_cpu.json, ...: assets/calibrations)",
        positional=True,
    )
    images: str = option("folder of images with known truth (centre-cropped to --size)")
    task: str | None = option("a bench task (sr4, random_inpaint, ...; see `bench grid --help`), or --operator", None)
    size: int = option("crop side in pixels (the shipped files were made at 128)", 128)
    num_images: int | None = option("the first N images of the folder (default all)", None)
    images_per_call: int | None = option(
        "images sampled in one call (default all: one call, so a long run's time estimate covers them all)", None
    )
    out: str | None = option("JSON-lines file to append the result to (a `bench report` table kind: coverage)", None)


@dataclass(kw_only=True)
class GridOptions(BenchConfig):
    sampler_param: list[str] | None = field(
        default=None, metadata=_append("sampler option, for all or one method (repeatable)", "[METHOD.]K=V")
    )
    quiet: bool = field(default=False, metadata=QUIET)


@dataclass(kw_only=True)
class ExactOptions(ExactConfig):
    quiet: bool = field(default=False, metadata=QUIET)


@dataclass(kw_only=True)
class SpeedOptions(SpeedConfig):
    quiet: bool = field(default=False, metadata=QUIET)


@dataclass(kw_only=True)
class ReportOptions:
    folders: tuple[str, ...] = option("study folders (e.g. assets/bench/*/)", positional=True, metavar="FOLDER")
    check: bool = option("write nothing; fail when a report differs from its rows", False)


@dataclass(kw_only=True)
class LpipsOptions:
    net: tuple[str, ...] = option("backbones", ("alex",), choices=("alex", "vgg"))
    out: str | None = option("folder (default: the torch hub cache, $TORCH_HOME/hub/checkpoints)", None, metavar="DIR")


@dataclass(kw_only=True)
class ConvertOptions:
    checkpoint: str = option("ADM state dict (.pt, .pth or .safetensors), e.g. ffhq_10m.pt", positional=True)
    arch: str = option("architecture: an ADM preset (see priors/adm.py, ADM_PRESETS)", metavar="PRESET")
    out: str = option("output folder")
    dtype: str = option("stored precision", "float32", choices=("float32", "float16", "bfloat16"))
    overwrite: bool = option("write into a non-empty --out folder", False)


@dataclass(kw_only=True)
class SampleOptions:
    out: str = option("PNG file")
    prior: str | None = option("prior spec (default: the built-in prior for --channels)", None)
    channels: int = option("for the default prior", 3, choices=(1, 3))
    num: int = option("number of samples", 16)
    nrow: int = option("samples per row", 4)
    size: int | None = option("image side in pixels (default: the prior's training size)", None)
    steps: int = option("strided DDPM steps", 100)
    seed: int = option("seed of the samples", 0)
    device: str | None = option("cpu, cuda, ... (default cuda if available)", None)
    overwrite: bool = option("replace an existing --out file", False)
    quiet: bool = field(default=False, metadata=QUIET)


TIME_LIMIT = "end this sitting after MINUTES with a checkpoint, loss.png and samples (run again to go on)"


@dataclass(kw_only=True)
class TrainOptions(TrainConfig):
    time_limit: float | None = option(TIME_LIMIT, None, metavar="MINUTES")
    sample_grid: int = option("unconditional samples drawn into samples.png at the end, 0 for none", SAMPLE_GRID)
    quiet: bool = field(default=False, metadata=QUIET)


@dataclass(kw_only=True)
class AutoencoderOptions(AutoencoderConfig):
    time_limit: float | None = option(TIME_LIMIT, None, metavar="MINUTES")
    quiet: bool = field(default=False, metadata=QUIET)


def config_from_args(config_class, args, **given):
    """A config dataclass from the parsed options `add_config_options` made (lists back to tuples), `given` added."""
    options = {}
    for f in dataclasses.fields(config_class):
        if f.name not in given and hasattr(args, f.name):
            value = getattr(args, f.name)
            options[f.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**options, **given)


def add_config_options(p: argparse.ArgumentParser, config_class) -> None:
    """One option per field of an options dataclass (module docstring): tuples take several values, booleans are
    switches, fields without a default are required, dict fields are skipped (filled from other options)."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kind, meta = hints[f.name], f.metadata
        if kind is dict:
            continue
        kind = _unwrap_optional(kind)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = _field_help(config_class, f.name)
        text += "" if required or default is None or default is False else f" (default {shown})"
        extra = {k: meta[k] for k in ("choices", "metavar") if k in meta}
        if typing.get_origin(kind) is tuple:
            extra |= {"type": _unwrap_optional(typing.get_args(kind)[0]), "nargs": "+"}
        elif kind is bool:
            extra |= {"action": "store_true" if default is False else argparse.BooleanOptionalAction}
        elif meta.get("append"):
            extra |= {"action": "append"}
        else:
            extra |= {"type": kind}
        if meta.get("positional"):
            p.add_argument(f.name, help=text, **extra)
        else:
            flag = meta.get("flag", "--" + f.name.replace("_", "-"))
            p.add_argument(flag, dest=f.name, default=default, required=required, help=text, **extra)


def _field_help(config_class, name: str) -> str:
    """The "help" metadata of field `name`, from the class or the nearest dataclass base that has it (a subclass
    that only changes a default keeps its base's description)."""
    for cls in config_class.__mro__:
        if dataclasses.is_dataclass(cls):
            text = next((f.metadata.get("help") for f in dataclasses.fields(cls) if f.name == name), None)
            if text:
                return text
    return ""


def _unwrap_optional(kind):
    """T for `T | None`, else kind itself."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1 else kind
