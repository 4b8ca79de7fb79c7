"""Image files <-> tensors. Images in memory are float tensors in [-1, 1], shape (C, H, W)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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


def read_image_uint8(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an image file as a uint8 tensor (C, H, W); `channels` 1 or 3 converts (None keeps L or RGB)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = _MODES.get(channels, "L" if im.mode in ("L", "I", "I;16", "1") else "RGB")
            if channels is not None and channels not in _MODES:
                raise ValueError(f"channels must be 1 or 3, got {channels}")
            array = np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image file '{path}': {err}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (any shape)."""
    return x.float().div(127.5).sub(1.0)


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255] (any shape), clipped and rounded."""
    return x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def load_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an image file as float32 (C, H, W) in [-1, 1]."""
    return uint8_to_float(read_image_uint8(path, channels))


def save_image(x: torch.Tensor, path: str | Path) -> None:
    """Write x: (C, H, W) or (H, W) float in [-1, 1] (1 or 3 channels) as an 8-bit image file."""
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in _MODES:
        raise ValueError(f"save_image expects (C, H, W) with C in (1, 3), got shape {tuple(x.shape)}")
    array = float_to_uint8(x).permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, _MODES[x.shape[0]]).save(path)
