"""What the command line reads and writes besides images and results: K=V option pairs, measurement files (image,
.pt, .npz), the operator of --operator / --op-param / --operator-config, the sampling options of restore and
calibrate as a SamplingSettings, and measurements written by `degrade`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, '[64, 64]' -> [64, 64], 'true' -> True, anything else -> the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(pairs: list[str] | None, what: str) -> dict:
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{what} '{pair}' must look like name=value")
        key, value = pair.split("=", 1)
        params[key.strip().replace("-", "_")] = parse_value(value.strip())
    return params


def read_measurement(path: Path, channels: int | None) -> torch.Tensor:
    """An image file (-> (C, H, W) in [-1, 1]), a .pt tensor (weights_only) or a .npz array ('y' or the only one),
    as float32; complex or integer data is refused (`check_measurement_dtype`)."""
    from posterior_diffusion.api import check_measurement_dtype
    from posterior_diffusion.guards import load_torch_file
    from posterior_diffusion.images import load_image

    if not path.exists():
        raise FileNotFoundError(f"input file '{path}' does not exist")
    if path.suffix == ".pt":
        value = load_torch_file(path, "measurement file")
        if isinstance(value, dict):
            value = value.get("y")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"'{path}' must hold a tensor (or a dict with key 'y')")
    elif path.suffix == ".npz":
        try:
            arrays = np.load(path, allow_pickle=False)
            names = list(arrays.keys())
            array = arrays["y" if "y" in names else names[0]] if "y" in names or len(names) == 1 else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read '{path}' as an .npz file of arrays: {err}") from None
        if array is None:
            raise ValueError(f"'{path}' must hold an array named 'y' (it has {', '.join(names) or 'none'})")
        value = torch.from_numpy(array)
    else:
        return load_image(path, channels)
    check_measurement_dtype(value)
    return value.float()


def noise_sigma_option(text: str | None) -> float | str | None:
    """--noise-sigma: None, "auto" or a number (one line naming the option otherwise)."""
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--noise-sigma must be a number (std on the [-1, 1] scale) or auto, got {text!r}") from None


def build_operator(args, image_shape: tuple[int, ...] | None, auto_noise: bool = False):
    """--operator NAME with --op-param pairs (image_size filled from the image), or --operator-config JSON; a number
    given to --noise-sigma is its noise std; auto (`auto_noise`: restore) leaves it to be estimated from the
    measurement."""
    if args.noise_sigma == "auto" and not auto_noise:
        raise ValueError("--noise-sigma auto is for restore (estimated from the measurement); give a number here")
    from posterior_diffusion.operators import from_config, get_operator, operator_params

    if args.operator_config:
        return from_config(read_json(Path(args.operator_config), "--operator-config"))
    if not args.operator:
        raise ValueError("give --operator NAME (see `posterior-diffusion list`) or --operator-config FILE")
    params = parse_params(args.op_param, "--op-param")
    noise_sigma = noise_sigma_option(args.noise_sigma)
    if noise_sigma not in (None, "auto"):
        params["noise_sigma"] = noise_sigma
    if image_shape is not None and "image_size" in operator_params(args.operator) and "image_size" not in params:
        params["image_size"] = list(image_shape[1:])
    return get_operator(args.operator, **params)


def read_json(path: Path, what: str):
    """The JSON value in `path`; a missing file or a syntax error is one line naming the file and the line."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file '{path}' does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file '{path}' is not a text (JSON) file") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} file '{path}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None


IMAGE_OUT_MARGIN = 0.5  # how far past [-1, 1] a measurement may reach and still be written as an image (noise)


def write_measurement(y: torch.Tensor, path: Path) -> None:
    """y as .pt / .npz (exact values) or as an image file (clipped to [-1, 1], 8 bits); a measurement that is not
    image-like (values beyond IMAGE_OUT_MARGIN outside [-1, 1], e.g. Fourier magnitudes) is refused as an image."""
    from posterior_diffusion.images import save_image

    if path.suffix == ".pt":
        torch.save(y, path)
    elif path.suffix == ".npz":
        np.savez(path, y=y.numpy())
    else:
        low, high = float(y.min()), float(y.max())
        if low < -1 - IMAGE_OUT_MARGIN or high > 1 + IMAGE_OUT_MARGIN:
            raise ValueError(
                f"the measurement spans [{low:.3g}, {high:.3g}], not an image on [-1, 1]: an image file would clip "
                f"it; write it as .pt or .npz (--out {path.with_suffix('.pt').name})"
            )
        save_image(y, path)


def sampler_options(args) -> dict:
    """Sampler options from --sampler-param, --steps and --preset (none: the sampler's own defaults, or auto's
    preset for the task)."""
    options = parse_params(args.sampler_param, "--sampler-param")
    if args.steps is not None:
        options["steps"] = args.steps
    if args.preset is not None:
        options["preset"] = args.preset
    return options


def sampling_settings(args, device):
    """The sampling options of restore and calibrate (cli_options.SamplingOptions) as a SamplingSettings."""
    from posterior_diffusion.api import SamplingSettings

    return SamplingSettings(
        prior=args.prior,
        sampler=args.sampler,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        device=device,
        dtype=args.dtype,
        progress=not args.quiet,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        options=sampler_options(args),
    )
