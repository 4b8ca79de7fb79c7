"""Bad inputs, the way a new or a hostile user gives them: each is a one-line error (exit code 1 on the command
line, no traceback) or a one-line warning that names the problem; the caller's objects are never changed behind its
back. How images of every bit depth are read: test_image_reading.py.

The two tables (`CLI_CASES`, `API_CASES`) are the fuzzing kept as a regression suite: add a row for every new
failure found. Everything is tiny (8x8 / 16x16 images, the Gaussian-mixture and tiny UNet test priors)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from posterior_diffusion import guards, sample_posterior
from posterior_diffusion.cli import main
from posterior_diffusion.guards import auto_dtype as real_auto_dtype  # bound before conftest's float32 stand-in
from posterior_diffusion.images import load_image
from posterior_diffusion.operators import from_config, get_operator
from posterior_diffusion.priors import load_prior


def _png_header(path, width: int, height: int):
    """A PNG that declares width x height gray pixels and holds none (what a decompression bomb's header says)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


class Evil:
    """torch.save pickles a call of `print`: code that must never run."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_unet_folder):
    """Named input files for the tables: {name: path}."""
    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "rgb.png")
    (d / "text.png").write_text("not an image")
    _png_header(d / "bomb.png", 20000, 20000)
    torch.save(Evil(), d / "evil.pt")
    (d / "empty.pt").write_bytes(b"")
    torch.save(torch.zeros(3, 16, 16, dtype=torch.complex64), d / "complex.pt")
    torch.save(torch.zeros(0, 3, 16, 16), d / "batch0.pt")
    np.savez(d / "uint8.npz", y=np.zeros((3, 16, 16), np.uint8))
    np.savez(d / "two.npz", a=np.zeros(3), b=np.zeros(3))
    (d / "bad.json").write_text('{"name": "denoise",\n "params": {,}}')
    (d / "noname.json").write_text('{"params": {}}')
    (d / "list.json").write_text("[1, 2]")
    (d / "y.pt").write_bytes(b"")
    (d / "y.pt.json").write_text("{}")  # a sidecar written by an earlier `degrade`
    shutil.copytree(tiny_unet_folder, d / "noweights")
    for weights in (d / "noweights" / "unet").glob("*.safetensors"):
        weights.unlink()
    return {p.stem if p.suffix != ".pt" or p.stem == "y" else p.name: p for p in d.iterdir()} | {"dir": d}


SIM = ["--simulate", "--operator", "denoise"]
RESTORE = ["restore", "{rgb}", *SIM, "--out", "{dir}/out", "--steps", "1", "--quiet"]
DEGRADE = ["degrade", "{rgb}", "--out", "{dir}/y.png", "--overwrite"]
BENCH = ["bench", "grid", "--images", "{dir}", "--out", "{dir}/bench", "--tasks", "sr4", "--methods", "bicubic"]
CALIBRATE = ["calibrate", "--images", "{dir}", "--out", "{dir}/cal.json", "--task", "sr4"]
COVERAGE = ["coverage", "auto_denoise.json", "--images", "{dir}", "--operator", "denoise"]

CLI_CASES = [  # (id, argv, a fragment of the one-line message)
    ("sigma-1e400", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "sigma=1e400"], "sigma must be a finite"),
    ("sigma-nan", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "sigma=NaN"], "sigma must be a finite"),
    ("sigma-negative", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "sigma=-1"], "sigma > 0"),
    ("sigma-string", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "sigma=wide"], "sigma must be a number"),
    (
        "kernel-size-five",
        [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "kernel_size=five"],
        "kernel_size must be an integer, got 'five'",
    ),
    ("kernel-size-float", [*DEGRADE, "--operator", "uniform_blur", "--op-param", "kernel_size=2.5"], "an integer"),
    ("factor-true", [*DEGRADE, "--operator", "super_resolution", "--op-param", "factor=true"], "factor must be an"),
    ("factor-list", [*DEGRADE, "--operator", "super_resolution", "--op-param", "factor=[2]"], "factor must be an"),
    ("boundary-number", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "boundary=5"], "must be a string"),
    ("intensity-inf", [*DEGRADE, "--operator", "motion_blur", "--op-param", "intensity=Infinity"], "finite"),
    ("noise-sigma-inf", [*DEGRADE, "--operator", "denoise", "--noise-sigma", "inf"], "noise_sigma must be a finite"),
    ("noise-sigma-nan", [*DEGRADE, "--operator", "denoise", "--noise-sigma", "nan"], "noise_sigma must be a finite"),
    ("noise-sigma-negative", [*DEGRADE, "--operator", "denoise", "--noise-sigma", "-1"], "noise_sigma must be >= 0"),
    (
        "poisson-rate-0",
        [*DEGRADE, "--operator", "denoise", "--op-param", "noise=poisson", "--op-param", "poisson_rate=0"],
        "poisson_rate must be > 0",
    ),
    ("noise-unknown", [*DEGRADE, "--operator", "denoise", "--op-param", "noise=laplace"], "unknown noise model"),
    ("kernel-zeros", [*DEGRADE, "--operator", "blur", "--op-param", "kernel=[[0,0],[0,0]]"], "kernel is all zeros"),
    ("kernel-text", [*DEGRADE, "--operator", "blur", "--op-param", "kernel=five"], "kernel must be a (kh, kw)"),
    ("operator-unknown", [*DEGRADE, "--operator", "blurr"], "unknown operator 'blurr'"),
    ("param-unknown", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "sigmaa=1"], "unknown parameter"),
    ("param-no-equals", [*DEGRADE, "--operator", "gaussian_blur", "--op-param", "sigma"], "must look like name=value"),
    ("degrade-seed-negative", [*DEGRADE, "--operator", "denoise", "--seed", "-1"], "seed must be an integer"),
    ("image-bomb", ["degrade", "{bomb}", "--operator", "denoise", "--out", "{dir}/y.png"], "decompression bomb"),
    ("image-missing", ["degrade", "{dir}/no.png", "--operator", "denoise", "--out", "{dir}/y.png"], "does not exist"),
    ("image-text", ["degrade", "{text}", "--operator", "denoise", "--out", "{dir}/y.png"], "cannot read image file"),
    ("config-bad-json", [*DEGRADE, "--operator-config", "{bad}"], "bad.json' is not valid JSON: Expecting property"),
    ("config-no-name", [*DEGRADE, "--operator-config", "{noname}"], 'a "name" (one of blur'),
    ("config-a-list", [*DEGRADE, "--operator-config", "{list}"], 'a "name" (one of blur'),
    ("config-missing", [*DEGRADE, "--operator-config", "{dir}/none.json"], "none.json' does not exist"),
    ("prior-is-image", [*RESTORE, "--prior", "{rgb}"], "is an image file, not a prior"),
    ("prior-empty-pt", [*RESTORE, "--prior", "{dir}/empty.pt"], "empty.pt' is empty (0 bytes)"),
    ("prior-evil-pt", [*RESTORE, "--prior", "{dir}/evil.pt", "--prior-arch", "adm-ffhq-256"], "pickled code"),
    ("prior-no-weights", [*RESTORE, "--prior", "{noweights}"], "cannot load the prior"),
    ("y-evil-pt", ["restore", "{dir}/evil.pt", "--operator", "denoise", "--out", "{dir}/out"], "pickled code"),
    ("y-empty-pt", ["restore", "{dir}/empty.pt", "--operator", "denoise", "--out", "{dir}/out"], "is empty"),
    ("y-complex", ["restore", "{dir}/complex.pt", "--operator", "denoise", "--out", "{dir}/out"], "y is complex"),
    ("y-uint8", ["restore", "{uint8}", "--operator", "denoise", "--out", "{dir}/out"], "integer dtype uint8"),
    ("y-empty-batch", ["restore", "{dir}/batch0.pt", "--operator", "denoise", "--out", "{dir}/out"], "empty batch"),
    ("y-npz-two-arrays", ["restore", "{two}", "--operator", "denoise", "--out", "{dir}/out"], "array named 'y'"),
    ("device-tpu", [*RESTORE, "--device", "tpu"], "unknown device 'tpu'"),
    ("device-cuda-99", [*RESTORE, "--device", "cuda:99"], "cuda:99"),
    ("seed-negative", [*RESTORE, "--seed", "-1"], "seed must be an integer in [0, 2^63), got -1"),
    ("batch-size-0", [*RESTORE, "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    ("batch-size-negative", [*RESTORE, "--batch-size", "-3"], "batch_size must be an integer >= 1, got -3"),
    ("num-samples-0", [*RESTORE, "--num-samples", "0"], "num_samples must be an integer >= 1"),
    ("magnitudes-as-png", [*DEGRADE, "--operator", "phase_retrieval"], "not an image on [-1, 1]: an image file would"),
    ("sample-device-tpu", ["sample", "--out", "{dir}/grid.png", "--device", "tpu"], "unknown device 'tpu'"),
    ("sample-seed-negative", ["sample", "--out", "{dir}/grid.png", "--seed", "-1"], "seed must be an integer"),
    ("box-not-a-list", [*RESTORE, "--sampler", "red_diff", "--sampler-param", "box=-1,1"], "box must be [low, high]"),
    ("box-reversed", [*RESTORE, "--sampler", "pnp_ula", "--sampler-param", "box=[1,-1]"], "got [1, -1]"),
    ("box-one-number", [*RESTORE, "--sampler", "red_diff", "--sampler-param", "box=5"], "box must be [low, high]"),
    ("bench-size-0", [*BENCH, "--size", "0"], "size must be an integer >= 1, got 0"),
    ("bench-size-negative", [*BENCH, "--size", "-3"], "size must be an integer >= 1, got -3"),
    ("bench-num-images-0", [*BENCH, "--num-images", "0"], "num_images must be an integer >= 1, got 0"),
    ("calibrate-size-0", [*CALIBRATE, "--size", "0"], "--size must be an integer >= 1, got 0"),
    ("calibrate-num-images-0", [*CALIBRATE, "--num-images", "0"], "--num-images must be an integer >= 1, got 0"),
    ("coverage-no-such-file", ["coverage", "auto_denoize.json", *COVERAGE[2:]], "cannot read calibration file"),
    ("coverage-no-images", [*COVERAGE[:2], "--images", "{dir}/none", *COVERAGE[4:]], "image folder '"),
    ("coverage-operator-and-task", [*COVERAGE, "--task", "sr4"], "give either --task NAME or --operator NAME"),
    ("coverage-out-folder-missing", [*COVERAGE, "--out", "{dir}/no/rows.jsonl"], "its folder does not exist"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_with_exit_code_1(files, argv, message, capsys, caplog):
    argv = [a.format(**files) for a in argv]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line
        assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    for never in ("Traceback", "weights_only", "Defaulting to unsafe", "pickled code ran"):
        assert never not in captured.err + captured.out
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("diffusers")]  # library log lines


@pytest.mark.parametrize("change", [["--size", "0"], ["--methods", "bicubicc"], ["--tasks", "sr5"]])
def test_a_refused_bench_leaves_no_output_folder(files, change, capsys):
    argv = [a.format(**files) for a in BENCH]
    argv[argv.index("--out") + 1] = str(files["dir"] / "refused")
    assert main([*argv, *change]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not (files["dir"] / "refused").exists()


def test_pickled_code_is_named_whatever_words_torch_uses_for_the_refusal(files, monkeypatch):
    """torch 2.14 words the weights_only refusal differently from 2.13; the file's own opcodes name the code."""
    import pickle

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed: this file can only be loaded with weights_only=False")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError, match=r"contains pickled code, .*it refers to .*print.*never run"):
        guards.load_torch_file(files["dir"] / "evil.pt", "prior")
    torch.save({"w": torch.zeros(2)}, files["dir"] / "plain.pt")
    with pytest.raises(ValueError, match="is not a torch file"):  # refused, yet no code in it: damaged
        guards.load_torch_file(files["dir"] / "plain.pt", "prior")


def test_cli_cuda_without_a_gpu_is_one_line(files, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([a.format(**files) for a in [*RESTORE, "--device", "cuda"]]) == 1
    assert "device 'cuda' was asked for but there is no GPU" in capsys.readouterr().err


def test_degrade_keeps_an_existing_sidecar(files):
    """`degrade --out y.pt` with y.pt.json already there (from an earlier run) changes neither file."""
    out, sidecar = files["y"], files["dir"] / "y.pt.json"
    assert main(["degrade", str(files["rgb"]), "--operator", "denoise", "--out", str(out)]) == 1
    out.unlink()
    assert main(["degrade", str(files["rgb"]), "--operator", "denoise", "--out", str(out)]) == 1
    assert not out.exists() and sidecar.read_text() == "{}"


# the Python API -------------------------------------------------------------------------------------------------
def _sample(gmm, y=None, **kw):
    y = torch.full((1, 8, 8), -0.5) if y is None else y
    return sample_posterior(y, "denoise", prior=gmm, steps=1, progress=False, **kw)


API_CASES = [  # (id, call(gmm, files), error type, message fragment)
    ("complex-y", lambda g, f: _sample(g, torch.zeros(1, 8, 8, dtype=torch.complex64)), ValueError, "y is complex"),
    ("uint8-y", lambda g, f: _sample(g, torch.zeros(1, 8, 8, dtype=torch.uint8)), ValueError, "integer dtype uint8"),
    ("int64-y", lambda g, f: _sample(g, torch.zeros(1, 8, 8, dtype=torch.long)), ValueError, "integer dtype int64"),
    ("empty-batch", lambda g, f: _sample(g, torch.zeros(0, 1, 8, 8)), ValueError, "empty batch"),
    ("nan-y", lambda g, f: _sample(g, torch.full((1, 8, 8), float("nan"))), ValueError, "NaN or Inf"),
    ("batch-size-0", lambda g, f: _sample(g, batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    ("batch-size-neg", lambda g, f: _sample(g, batch_size=-1), ValueError, "batch_size must be an integer >= 1"),
    ("batch-size-true", lambda g, f: _sample(g, batch_size=True), ValueError, "batch_size must be an integer"),
    ("num-samples-0", lambda g, f: _sample(g, num_samples=0), ValueError, "num_samples must be an integer >= 1"),
    ("seed-negative", lambda g, f: _sample(g, seed=-1), ValueError, "seed must be an integer"),
    ("seed-float", lambda g, f: _sample(g, seed=1.5), ValueError, "seed must be an integer"),
    ("device-tpu", lambda g, f: _sample(g, device="tpu"), ValueError, "unknown device 'tpu'"),
    ("dtype-float64", lambda g, f: _sample(g, dtype="float64"), ValueError, "unknown dtype 'float64'"),
    (
        "kernel-batch",
        lambda g, f: sample_posterior(
            torch.zeros(3, 1, 8, 8), get_operator("blur", kernel=torch.rand(2, 3, 3)), prior=g, progress=False
        ),
        ValueError,
        "2 kernels (one per image) but the batch has 3 images",
    ),
    (
        "kernel-batch-measure-circular",
        lambda g, f: get_operator("blur", kernel=torch.rand(2, 3, 3), boundary="circular").measure(
            torch.zeros(3, 1, 8, 8)
        ),
        ValueError,
        "2 kernels (one per image) but the batch has 3 images",
    ),
    ("kernel-zeros", lambda g, f: get_operator("blur", kernel=torch.zeros(2, 3, 3)), ValueError, "all zeros"),
    ("sigma-inf", lambda g, f: get_operator("gaussian_blur", sigma=float("inf")), ValueError, "sigma must be a finite"),
    ("factor-true", lambda g, f: get_operator("super_resolution", factor=True), TypeError, "factor must be an integer"),
    ("noise-inf", lambda g, f: get_operator("denoise", noise_sigma=float("inf")), ValueError, "noise_sigma must be"),
    (
        "noise-string",
        lambda g, f: get_operator("denoise", noise_sigma="0.1"),
        TypeError,
        "noise_sigma must be a number",
    ),
    ("config-no-name", lambda g, f: from_config({"params": {}}), ValueError, 'a "name"'),
    ("prior-image", lambda g, f: load_prior(f["rgb"]), ValueError, "is an image file, not a prior"),
    ("prior-empty-pt", lambda g, f: load_prior(f["empty.pt"], arch="adm-ffhq-256"), ValueError, "is empty (0 bytes)"),
    ("image-bomb", lambda g, f: load_image(f["bomb"]), ValueError, "decompression bomb"),
]


@pytest.mark.parametrize("call,kind,message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input_is_a_one_line_error(gmm, files, call, kind, message):
    with pytest.raises(kind) as err:
        call(gmm, files)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_measurement_on_0_1_warns_about_the_convention(gmm):
    y = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    with pytest.warns(UserWarning, match=r"looks like an image on \[0, 1\].*\[-1, 1\] scale") as record:
        _sample(gmm, y)
    assert all("\n" not in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _sample(gmm, y * 2 - 1)  # on [-1, 1]: no warning


def test_prior_object_is_not_converted_in_place(tiny_unet_folder):
    """dtype="bfloat16" works on a copy: the caller's prior keeps its dtype and weights, and its next call runs in
    float32."""
    prior = load_prior(tiny_unet_folder)
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    y = torch.zeros(3, 16, 16).uniform_(-1, 1)
    res = sample_posterior(y, "denoise", prior=prior, dtype="bfloat16", steps=1, progress=False)
    assert res.config["dtype"] == "bfloat16"
    assert prior.net.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in prior.state_dict().items())
    assert sample_posterior(y, "denoise", prior=prior, steps=1, progress=False).config["dtype"] == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_float16_on_the_cpu_warns_and_suggests_bfloat16_where_it_is_native(tiny_unet_folder, monkeypatch, native):
    monkeypatch.setattr(guards, "native_cpu_bfloat16", lambda: native)
    y = torch.zeros(3, 16, 16).uniform_(-1, 1)
    with pytest.warns(UserWarning, match="float16 on the CPU is emulated") as caught:
        sample_posterior(
            y, "denoise", prior=str(tiny_unet_folder), dtype="float16", device="cpu", steps=1, progress=False
        )
    assert ("bfloat16" in str(caught[0].message)) == native


@pytest.mark.parametrize("native", [True, False, None])
def test_bfloat16_on_a_cpu_that_emulates_it_warns(tiny_unet_folder, monkeypatch, recwarn, native):
    """An AMD EPYC without AVX-512 ran the built-in prior 85x slower in bfloat16 than in float32 (a bench run of two
    hours that float32 would have done in minutes); where bfloat16 is native or unknown nothing is said."""
    monkeypatch.setattr(guards, "native_cpu_bfloat16", lambda: native)
    y = torch.zeros(3, 16, 16).uniform_(-1, 1)
    sample_posterior(y, "denoise", prior=str(tiny_unet_folder), dtype="bfloat16", device="cpu", steps=1, progress=False)
    emulated = [w for w in recwarn if "bfloat16 is emulated on this CPU" in str(w.message)]
    assert len(emulated) == (native is False)


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32), (None, torch.float32)])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(guards, "native_cpu_bfloat16", lambda: native)
    assert real_auto_dtype("cpu") == expected
    assert real_auto_dtype("meta") == torch.float32


def test_auto_dtype_is_the_default_for_a_loaded_prior_and_a_prior_object_keeps_its_own(
    tiny_unet_folder, monkeypatch, tmp_path
):
    """dtype="auto" (the default): the device's dtype (here made bfloat16) for a prior loaded from a spec, in Python
    and on the command line (run.json records it); a prior object passed in runs in its own dtype; an explicit dtype
    wins."""
    monkeypatch.setattr(guards, "auto_dtype", lambda device: torch.bfloat16)
    y = torch.zeros(3, 16, 16).uniform_(-1, 1)
    kwargs = {"steps": 1, "progress": False, "device": "cpu"}
    assert sample_posterior(y, "denoise", prior=str(tiny_unet_folder), **kwargs).config["dtype"] == "bfloat16"
    prior = load_prior(str(tiny_unet_folder))
    assert sample_posterior(y, "denoise", prior=prior, **kwargs).config["dtype"] == "float32"
    assert sample_posterior(y, "denoise", prior=prior, dtype="bfloat16", **kwargs).config["dtype"] == "bfloat16"
    explicit = sample_posterior(y, "denoise", prior=str(tiny_unet_folder), dtype="float32", **kwargs)
    assert explicit.config["dtype"] == "float32"
    image = tmp_path / "clean.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    argv = ["restore", str(image), "--simulate", "--operator", "denoise", "--prior", str(tiny_unet_folder)]
    assert main([*argv, "--steps", "1", "--num-samples", "1", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["dtype"] == "bfloat16"


def test_native_bfloat16_is_read_from_the_cpu_flags():
    assert guards.native_cpu_bfloat16("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n") is True
    assert guards.native_cpu_bfloat16("flags\t\t: fpu sse2 avx2 amx_bf16\n") is True
    assert guards.native_cpu_bfloat16("Features\t: fp asimd bf16 i8mm\n") is True  # Arm (Graviton 3, Neoverse)
    assert guards.native_cpu_bfloat16("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n") is False
    assert guards.native_cpu_bfloat16("processor\t: 0\nmodel name\t: AMD EPYC\n") is False


def test_sizes_beyond_memory_are_refused_before_allocating(gmm, files, tmp_path, monkeypatch):
    monkeypatch.setattr(guards, "available_memory", lambda device="cpu": 10_000)
    with pytest.raises(ValueError, match=r"image file .*big\.png' \(4000x3000 pixels\) needs about [\d.]+ GiB"):
        load_image(_png_header(tmp_path / "big.png", 4000, 3000))  # a header only: nothing is decoded
    with pytest.raises(ValueError, match=r"sampling 64 images of shape \(1, 8, 8\) .* needs about .*--batch-size"):
        _sample(gmm, num_samples=64)


def test_cli_warnings_are_one_line(tmp_path, capsys, monkeypatch):
    """A warning on the command line is "warning: ..." on one line, without Python's file and source line."""

    def show(message, category, filename, lineno, file=None, line=None):  # Python's own display, not pytest's record
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    Image.fromarray(np.dstack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 100, np.uint8)])).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", show)
        assert (
            main(["degrade", str(tmp_path / "a.png"), "--operator", "denoise", "--out", str(tmp_path / "y.png")]) == 0
        )
    err = capsys.readouterr().err
    assert err.startswith("warning: image file") and "alpha channel is dropped" in err and err.count("\n") == 1
