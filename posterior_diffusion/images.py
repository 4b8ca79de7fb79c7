"""Image files <-> tensors. Images in memory are float tensors in [-1, 1], shape (C, H, W)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from posterior_diffusion import guards

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_MODES = {1: "L", 3: "RGB"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'")
    return files


HIGH_DEPTH_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1}  # mode -> white
GRAY_MODES = ("1", "L", "LA", "La", *HIGH_DEPTH_MODES)
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
BYTES_PER_BAND = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # others: 8 bits (or fewer)


def load_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an image file as float32 (C, H, W) in [-1, 1], at the file's full precision.

    Any mode Pillow opens: 1-bit, 8-bit gray/palette/RGB/CMYK, 16-bit gray (I;16), 32-bit integer (I, values
    up to 65535 as 16-bit PNGs hold them) and float (F, on [0, 1]): black is -1 and white +1. An alpha channel
    is dropped with a warning when some pixel is not opaque. `channels` 1 or 3 converts (gray from RGB with
    the ITU-R 601 luma weights, as Pillow's "L"); None keeps gray images gray and makes the rest RGB.
    Refused with one line: a missing or unreadable file, a decompression bomb, an image larger than memory.
    """
    if channels is not None and channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    try:
        with Image.open(path) as im:
            _check_size(im, path)
            im.load()
            return _pixels(im, path, channels)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file '{path}' does not exist") from None
    except Image.DecompressionBombError:
        raise ValueError(
            f"image file '{path}' declares more than {2 * Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb, "
            "or an image far too large): it is not read"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image file '{path}': {err}") from None


def _check_size(im: Image.Image, path: Path) -> None:
    """Refuse, before decoding, an image whose decoded pixels and float copies do not fit in memory."""
    width, height = im.size
    decoded = width * height * len(im.getbands()) * BYTES_PER_BAND.get(im.mode, 1)
    floats = width * height * 3 * 8  # the float64/float32 copies of at most 3 channels
    guards.check_memory(
        decoded + floats, "cpu", f"image file '{path}' ({width}x{height} pixels)", "crop or downscale it first"
    )


def _pixels(im: Image.Image, path: Path, channels: int | None) -> torch.Tensor:
    """The decoded image `im` as float32 (C, H, W) in [-1, 1] (see `load_image`)."""
    if im.mode in HIGH_DEPTH_MODES:  # one band beyond 8 bits: scaled here, never through an 8-bit mode
        x = torch.from_numpy(_unit_scale(np.asarray(im), im.mode, path)).mul(2).sub(1).float()[None]
        return x.expand(channels or 1, -1, -1).contiguous()
    _warn_alpha(im, path)
    mode = _MODES[channels] if channels is not None else ("L" if im.mode in GRAY_MODES else "RGB")
    array = np.asarray(im.convert(mode))
    array = array[:, :, None] if array.ndim == 2 else array
    return uint8_to_float(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous())


def _unit_scale(array: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A high-bit-depth band as float64 in [0, 1] (white: 65535 for integers, 1 for float); out of range: an error."""
    x = array.astype(np.float64)
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(x).all() and low >= 0 and high <= HIGH_DEPTH_MODES[mode]):
        raise ValueError(
            f"image file '{path}' ({mode}) has values in [{low:g}, {high:g}]; expected [0, {HIGH_DEPTH_MODES[mode]}] "
            f"({'float images on [0, 1]' if mode == 'F' else 'integer images of at most 16 bits'})"
        )
    return x / HIGH_DEPTH_MODES[mode]


def _warn_alpha(im: Image.Image, path: Path) -> None:
    """Warn (one line) that transparency is dropped when some pixel of `im` is not fully opaque."""
    transparent = im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
    if transparent and int(np.asarray(im.convert("RGBA").getchannel("A")).min()) < 255:
        warnings.warn(
            f"image file '{path}' has transparent pixels: its alpha channel is dropped (the colors are used as "
            "they are); flatten it onto a background first if that matters",
            stacklevel=4,
        )


def load_center_crops(paths: list[Path], channels: int, size: int) -> torch.Tensor:
    """The images at `paths` centre-cropped to size x size: (N, channels, size, size) in [-1, 1]; an image smaller
    than `size` is a ValueError naming it."""
    crops = []
    for path in paths:
        image = load_image(path, channels)
        h, w = image.shape[1:]
        if min(h, w) < size:
            raise ValueError(f"image '{path}' ({h}x{w}) is smaller than the crop size {size}")
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(image[:, top : top + size, left : left + size])
    return torch.stack(crops)


def random_crops(folders: list[str], count: int, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """`count` crops (count, C, size, size) in [-1, 1]: crop k from image k mod N of the folders (sorted by name),
    at a position seeded by seed + k."""
    images = [p for folder in folders for p in list_images(folder)]
    crops = []
    for k in range(count):
        x = load_image(images[k % len(images)], channels)
        g = torch.Generator().manual_seed(seed + k)
        top = int(torch.randint(x.shape[1] - size + 1, (1,), generator=g))
        left = int(torch.randint(x.shape[2] - size + 1, (1,), generator=g))
        crops.append(x[:, top : top + size, left : left + size])
    return torch.stack(crops)


def read_image_uint8(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an image file as a uint8 tensor (C, H, W) (see `load_image`; deeper images rounded to 8 bits)."""
    return float_to_uint8(load_image(path, channels))


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (any shape)."""
    return x.float().div(127.5).sub(1.0)


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255] (any shape), clipped and rounded."""
    return x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def save_image(x: torch.Tensor, path: str | Path) -> None:
    """Write x: (C, H, W) or (H, W) float in [-1, 1] (1 or 3 channels) as an 8-bit image file."""
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in _MODES:
        raise ValueError(f"save_image expects (C, H, W) with C in (1, 3), got shape {tuple(x.shape)}")
    array = float_to_uint8(x).permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, _MODES[x.shape[0]]).save(path)
