"""Phase retrieval and high dynamic range: values against independent numpy computations, the ambiguities of
Fourier magnitudes, finite gradients, parameter checks, the tasks and the bench's best-of-several-runs scoring.
The generic operator properties (config round trip, seeded measure, batch independence, residual gradients) run
on them through tests/test_operators.py's registry sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import posterior_diffusion.bench.run as bench_run
from posterior_diffusion.bench import BenchConfig, run_bench
from posterior_diffusion.images import load_center_crops
from posterior_diffusion.metrics import psnr
from posterior_diffusion.operators import get_operator, operator_class
from posterior_diffusion.tasks import TASKS, Task, load_tasks_file


def rand(shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def _numpy_phase_retrieval(x: np.ndarray, oversample: float) -> np.ndarray:
    """|centred orthonormal FFT| of the [0, 1] image zero-padded by oversample / 8 of its side per side."""
    h, w = x.shape[-2:]
    ph, pw = int(oversample / 8.0 * h), int(oversample / 8.0 * w)
    padded = np.pad((x + 1) / 2, [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)])
    spectrum = np.fft.fft2(padded) / np.sqrt(padded.shape[-2] * padded.shape[-1])
    return np.abs(np.fft.fftshift(spectrum, axes=(-2, -1)))


@pytest.mark.parametrize("oversample,size", [(2.0, (8, 8)), (2.0, (12, 20)), (1.0, (16, 16)), (0.0, (6, 6))])
def test_phase_retrieval_matches_numpy(oversample, size):
    op = get_operator("phase_retrieval", oversample=oversample)
    x = rand((2, 3, *size), 1)
    y = op(x)
    expected = _numpy_phase_retrieval(x.numpy(), oversample)
    assert y.shape == expected.shape == (2, *op.measurement_shape((3, *size)))
    assert np.allclose(y.numpy(), expected, atol=1e-12)
    assert op.image_shape(tuple(y.shape[1:])) == (3, *size)


def test_phase_retrieval_pads_as_the_references_and_keeps_the_energy():
    """64 px per side at 256 px (DPS / DAPS, oversample 2); the orthonormal FFT keeps ||A(x)|| = ||(x + 1) / 2||."""
    op = get_operator("phase_retrieval")
    assert op.padding(256, 256) == (64, 64) and op.measurement_shape((3, 256, 256)) == (3, 384, 384)
    assert op.measurement_shape((1, 64, 64)) == (1, 96, 96)
    x = rand((2, 1, 16, 16), 2)
    assert torch.allclose(op(x).flatten(1).norm(dim=1), ((x + 1) / 2).flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="no image size gives a 5x96"):
        op.image_shape((1, 5, 96))


def test_phase_retrieval_cannot_tell_an_image_from_its_rotated_twin():
    """The ambiguity the bench's best-of scoring is about: the 180-degree rotation (one-pixel shift aside, which
    |F| ignores on the padded torus) gives the same magnitudes; a flip along one axis does not."""
    op = get_operator("phase_retrieval")
    x = rand((1, 1, 12, 12), 3)
    assert torch.allclose(op(x.flip(-1, -2)), op(x), atol=1e-12)
    assert not torch.allclose(op(x.flip(-1)), op(x), atol=1e-3)


def test_high_dynamic_range_matches_numpy():
    op = get_operator("high_dynamic_range", scale=2.0)
    x = rand((2, 3, 5, 7), 4)
    assert np.allclose(op(x).numpy(), np.clip(2.0 * x.numpy(), -1, 1))
    assert np.allclose(get_operator("high_dynamic_range", scale=0.5)(x).numpy(), 0.5 * x.numpy())


@pytest.mark.parametrize("name", ["phase_retrieval", "high_dynamic_range"])
def test_gradients_are_finite_even_where_the_data_are_degenerate(name):
    """Autograd through |.| at zero Fourier coefficients (a black image) and through saturated pixels."""
    op = get_operator(name)
    for x in (rand((2, 3, 8, 8), 5), torch.full((1, 1, 8, 8), -1.0, dtype=torch.float64)):
        x = x.requires_grad_(True)
        y = op(rand((x.shape[0], *x.shape[1:]), 6).clamp(-0.9, 0.9)).detach()
        (op(x) - y).square().sum().backward()
        assert torch.isfinite(x.grad).all()
    x = torch.tensor([[[[-0.9, 0.1, 0.9]]]], requires_grad=True)
    if name == "high_dynamic_range":  # zero on saturated pixels, the scale elsewhere
        op(x).sum().backward()
        assert x.grad.flatten().tolist() == [0.0, 2.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduced_precision_inputs(dtype):
    x = rand((1, 3, 8, 8), 7, dtype=torch.float32).to(dtype)
    for name in ("phase_retrieval", "high_dynamic_range"):
        y = get_operator(name)(x)
        assert y.dtype == dtype and torch.isfinite(y.float()).all()


@pytest.mark.parametrize(
    "name,params,kind,message",
    [
        ("phase_retrieval", {"oversample": "two"}, TypeError, "oversample must be a number"),
        ("phase_retrieval", {"oversample": True}, TypeError, "oversample must be a number"),
        ("phase_retrieval", {"oversample": float("inf")}, ValueError, "oversample must be a finite number"),
        ("phase_retrieval", {"oversample": -1.0}, ValueError, "oversample must be >= 0"),
        ("high_dynamic_range", {"scale": "2"}, TypeError, "scale must be a number"),
        ("high_dynamic_range", {"scale": 0}, ValueError, "scale must be > 0"),
        ("high_dynamic_range", {"scale": float("nan")}, ValueError, "scale must be a finite number"),
        ("high_dynamic_range", {"alpha": 2}, ValueError, "unknown parameter"),
    ],
)
def test_parameters_are_checked(name, params, kind, message):
    with pytest.raises(kind, match=message):
        get_operator(name, **params)


@pytest.mark.parametrize("name", ["phase_retrieval", "high_dynamic_range"])
def test_nonlinear_capabilities(name):
    op = get_operator(name)
    assert not operator_class(name).is_linear and op.svd() is None
    x = rand((1, 1, 8, 8), 8).float()
    with pytest.raises(ValueError, match=f"prox .* needs a linear operator; '{name}' is nonlinear"):
        op.prox(x, op(x), 1.0)


def test_phase_retrieval_measurement_scale_is_checked():
    op = get_operator("phase_retrieval")
    x = rand((1, 3, 32, 32), 9).float()
    y = op.measure(x, torch.Generator().manual_seed(0))
    op.check_measurement_values(y)  # a real measurement (centre value about 10 here) passes
    with pytest.raises(ValueError, match=r"magnitudes up to .*orthonormal"):
        op.check_measurement_values(y * 48)  # an unnormalised FFT (sqrt(48 * 48) = 48 times larger)


def test_tasks_build_the_reference_settings():
    pr, hdr = TASKS["phase_retrieval"], TASKS["hdr"]
    op = pr.build(64)
    assert op.name == "phase_retrieval" and op.oversample == 2.0 and op.noise.sigma == 0.05
    assert op.measurement_shape((3, 64, 64)) == (3, 96, 96) and pr.best_of == 4
    op = hdr.build(64)
    assert op.name == "high_dynamic_range" and op.scale == 2.0 and op.noise.sigma == 0.05 and hdr.best_of == 1
    assert pr.presets == {"dps": "phase_retrieval", "red_diff": "nonlinear"} | {
        k: v for k, v in pr.presets.items() if k not in ("dps", "red_diff")
    }
    with pytest.raises(ValueError, match="best_of must be an integer >= 1"):
        Task("denoise", best_of=0)


def test_a_tasks_file_sets_best_of(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text('[tasks.pr]\noperator = "phase_retrieval"\nparams = { oversample = 1.0 }\nbest_of = 2\n')
    assert load_tasks_file(path)["pr"].best_of == 2
    path.write_text('[tasks.pr]\noperator = "phase_retrieval"\nbest_of = 0\n')
    with pytest.raises(ValueError, match="best_of must be an integer >= 1"):
        load_tasks_file(path)


def test_the_bench_scores_the_best_of_several_runs(tmp_path, tiny_unet_folder, monkeypatch):
    """best_of = 4: four runs with different chains per image, each image's row is the run whose mean has the
    highest PSNR, and NFE / seconds count all four runs."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    runs = []
    real = bench_run.run_method

    def recording(method, run, y, ids, seed):
        result = real(method, run, y, ids, seed)
        runs.append((seed, ids, result["mean"].clone()))
        return result

    monkeypatch.setattr(bench_run, "run_method", recording)
    config = BenchConfig(
        images=str(images),
        out=str(tmp_path / "out"),
        prior=str(tiny_unet_folder),
        tasks=("phase_retrieval",),
        methods=("dps",),
        size=16,
        steps=2,
        images_per_call=3,
        device="cpu",
        lpips="none",
    )
    rows = run_bench(config, progress=False)
    assert len(runs) == 4 and runs[0][0] == 0 and len({seed for seed, _, _ in runs}) == 4
    truth = load_center_crops(sorted(images.glob("*.png")), 3, 16)
    scores = torch.stack([psnr(mean, truth) for _, _, mean in runs])  # (runs, images)
    assert not torch.equal(runs[0][2], runs[1][2])  # independent chains
    for row in rows:
        assert row["best_of"] == 4 and row["nfe"] == 4 * 2
        assert row["psnr"] == pytest.approx(float(scores[:, row["index"]].max()), abs=1e-4)
    assert "BEST_OF" not in (tmp_path / "out" / "summary.md").read_text()
