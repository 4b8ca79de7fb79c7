"""Images of every bit depth and mode Pillow opens are read at full precision into [-1, 1] (C, H, W); an alpha
channel is never dropped silently; what cannot be read exactly is refused in one line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from posterior_diffusion.cli import main
from posterior_diffusion.images import load_image, read_image_uint8

GRAY = np.array([[0, 64], [128, 255]], np.uint8)
RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], np.uint8)


def _on_unit_scale(array, white=255.0):
    """Expected (C, H, W) float tensor in [-1, 1] of an (H, W) or (H, W, C) array."""
    x = torch.from_numpy(np.asarray(array, np.float64) / white * 2 - 1).float()
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


IMAGE_CASES = {  # id: (Pillow image, expected tensor, warns about transparency)
    "gray-8bit": (lambda: Image.fromarray(GRAY), _on_unit_scale(GRAY), False),
    "gray-16bit": (
        lambda: Image.fromarray(np.array([[0, 1000], [40000, 65535]], np.uint16)),
        _on_unit_scale(np.array([[0, 1000], [40000, 65535]]), 65535.0),
        False,
    ),
    "gray-1bit": (lambda: Image.fromarray(GRAY > 100), _on_unit_scale((GRAY > 100) * 255), False),
    "gray-float": (
        lambda: Image.fromarray(np.array([[0, 0.25], [0.5, 1]], np.float32), "F"),
        _on_unit_scale(np.array([[0, 0.25], [0.5, 1]]), 1.0),
        False,
    ),
    "rgb": (lambda: Image.fromarray(RGB), _on_unit_scale(RGB), False),
    "rgba-opaque": (
        lambda: Image.fromarray(np.dstack([RGB, np.full((2, 2), 255, np.uint8)])),
        _on_unit_scale(RGB),
        False,
    ),
    "rgba": (lambda: Image.fromarray(np.dstack([RGB, GRAY])), _on_unit_scale(RGB), True),
    "la": (lambda: Image.fromarray(np.dstack([GRAY, GRAY]), "LA"), _on_unit_scale(GRAY), True),
    "palette": (lambda: Image.fromarray(RGB).quantize(4), _on_unit_scale(RGB), False),
    "palette-transparent": (lambda: _transparent_palette(), _on_unit_scale(RGB), True),
    "cmyk": (lambda: Image.fromarray(RGB).convert("CMYK"), _on_unit_scale(RGB), False),
}


def _transparent_palette():
    im = Image.fromarray(RGB).quantize(4)
    im.info["transparency"] = 0
    return im


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_images_are_read_at_full_precision_and_alpha_is_never_dropped_silently(case, tmp_path):
    make, expected, warns = IMAGE_CASES[case]
    path = tmp_path / ("image.tif" if case in ("gray-float", "cmyk") else "image.png")
    make().save(path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x = load_image(path)
    assert [("alpha channel is dropped" in str(w.message)) for w in record] == ([True] if warns else [])
    assert x.dtype == torch.float32 and x.shape == expected.shape
    assert torch.allclose(x, expected, atol=1e-6), (x, expected)


def test_16bit_gray_is_not_read_as_white_and_converts_to_rgb_and_8bit(tmp_path):
    """The regression: Pillow's convert("L") clipped 16-bit values (all white) and the run reported a high PSNR."""
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png", channels=3)
    assert x.shape == (3, 8, 8) and float(x.min()) == -1 and float(x.max()) == 1
    assert torch.allclose(x[1], _on_unit_scale(values, 65535.0)[0], atol=1e-6)
    assert read_image_uint8(tmp_path / "g16.png").flatten().tolist() == np.round(values / 257).flatten().tolist()
    y_file = tmp_path / "y.pt"
    argv = ["degrade", str(tmp_path / "g16.png"), "--operator", "denoise", "--noise-sigma", "0", "--out", str(y_file)]
    assert main(argv) == 0
    assert torch.allclose(torch.load(y_file), x[:1], atol=1e-6)


def test_float_images_outside_0_1_and_32bit_integers_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 255.0, np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f\.tif' \(F\) has values in \[255, 255\]; expected \[0, 1\]"):
        load_image(tmp_path / "f.tif")
    Image.fromarray(np.full((4, 4), 2**20, np.int32), "I").save(tmp_path / "i.tif")
    with pytest.raises(ValueError, match="integer images of at most 16 bits"):
        load_image(tmp_path / "i.tif")
