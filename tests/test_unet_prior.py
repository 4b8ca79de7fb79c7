"""diffusers pixel priors: folder formats, parametrisations, learned variance, precision, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors import UNetPrior, linear_alphas_cumprod, load_prior


def _tiny_unet(in_ch=1, out_ch=1):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=in_ch,
        out_channels=out_ch,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
        add_attention=False,
    )


def test_pipeline_folder_loads_with_its_schedule(tiny_unet_folder):
    prior = load_prior(str(tiny_unet_folder))
    from diffusers import DDPMScheduler

    reference = DDPMScheduler.from_pretrained(tiny_unet_folder, subfolder="scheduler").alphas_cumprod
    assert torch.allclose(prior.alphas_cumprod, reference)
    assert prior.prediction_type == "epsilon" and prior.space == "pixel"


def test_bare_unet_folder_loads(tmp_path):
    _tiny_unet().save_pretrained(tmp_path / "unet_only")
    prior = load_prior(tmp_path / "unet_only")
    assert torch.allclose(prior.alphas_cumprod, linear_alphas_cumprod())
    out = prior.predict(torch.randn(2, 1, 16, 24), 10)  # any size, here a multiple of the downsampling
    assert out.eps.shape == (2, 1, 16, 24) and out.eps.dtype == torch.float32


def test_sides_that_are_not_multiples_of_the_downsampling_are_padded_for_the_network():
    """A 15 x 9 state: the network sees it reflect-padded to 16 x 10 (a 1-px pad goes to the far end: floor(pad / 2)
    before, the rest after) and the output is cropped back, equal to running the padded input by hand; a side below
    the downsampling factor is refused by name."""
    prior = UNetPrior(_tiny_unet(), linear_alphas_cumprod())
    assert prior.downsampling == 2
    x = torch.randn(2, 1, 15, 9)
    out = prior.model_output(x, torch.tensor([10, 10]))
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="reflect")
    expected = prior.net(padded, torch.tensor([10, 10])).sample[..., :15, :9]
    assert out.shape == (2, 1, 15, 9) and torch.equal(out, expected)
    prior.check_image_shape((1, 15, 9))
    with pytest.raises(ValueError, match=r"image size 1x9 is below the UNet's downsampling factor 2"):
        prior.check_image_shape((1, 1, 9))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_parametrisations_are_consistent(prediction_type):
    prior = UNetPrior(_tiny_unet(), linear_alphas_cumprod(), prediction_type=prediction_type)
    x_t = torch.randn(3, 1, 8, 8)
    t = torch.tensor([5, 400, 900])
    pred = prior.predict(x_t, t)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(ab.sqrt() * pred.x0_hat + (1 - ab).sqrt() * pred.eps, x_t, atol=1e-4)
    raw = prior.net(x_t, t).sample
    expected = {
        "epsilon": pred.eps,
        "sample": pred.x0_hat,
        "v_prediction": ab.sqrt() * pred.eps - (1 - ab).sqrt() * pred.x0_hat,
    }
    assert torch.allclose(raw, expected[prediction_type], atol=1e-4)


def test_learned_variance_outputs_are_split():
    prior = UNetPrior(_tiny_unet(1, 2), linear_alphas_cumprod())
    assert prior.variance_type == "learned_range"
    pred = prior.predict(torch.randn(2, 1, 8, 8), 100)
    assert pred.eps.shape == pred.variance_values.shape == (2, 1, 8, 8)
    op = get_operator("denoise", noise_sigma=0.1)
    res = sample_posterior(torch.zeros(1, 8, 8), op, prior=prior, steps=5, num_samples=2, progress=False)
    assert torch.isfinite(res.samples).all()


def test_unknown_prediction_type_and_bad_channels_are_refused():
    with pytest.raises(ValueError, match="unknown prediction_type 'eps'; valid: epsilon, v_prediction, sample"):
        UNetPrior(_tiny_unet(), linear_alphas_cumprod(), prediction_type="eps")
    with pytest.raises(ValueError, match="not a diffusion denoiser"):
        UNetPrior(_tiny_unet(1, 3), linear_alphas_cumprod())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dps_runs_end_to_end_in_each_precision(tiny_unet_folder, dtype):
    prior = load_prior(tiny_unet_folder, dtype=dtype)
    assert prior.net.dtype == dtype and prior.alphas_cumprod.dtype == torch.float32
    op = get_operator("super_resolution", factor=2)
    y = op.measure(torch.rand(2, 3, 16, 16) * 2 - 1, torch.Generator().manual_seed(0))
    res = sample_posterior(y, op, prior=prior, steps=8, num_samples=2, progress=False)
    assert res.samples.shape == (2, 2, 3, 16, 16) and res.samples.dtype == torch.float32
    assert torch.isfinite(res.samples).all() and res.config["dtype"] == str(dtype).replace("torch.", "")


def test_float16_network_runs_where_torch_allows(tiny_unet_folder):
    prior = load_prior(tiny_unet_folder, dtype="float16")
    try:
        pred = prior.predict(torch.randn(1, 3, 8, 8), 50)
    except RuntimeError as err:  # some CPU builds lack half kernels for conv
        pytest.skip(f"this torch build has no float16 CPU convolution: {err}")
    assert pred.eps.dtype == torch.float32 and torch.isfinite(pred.eps).all()


def test_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a diffusion model folder"):
        load_prior(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="holds a AutoencoderKL model, not a UNet2DModel"):
        load_prior(tmp_path)


def test_missing_hub_model_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="'someone/no-such-model' is not a folder, a built-in prior, or a hub model"):
        load_prior("someone/no-such-model")


def test_cached_hub_model_loads_offline(monkeypatch, tmp_path, tiny_unet_folder):
    """A hub id resolves through the local cache with no network (the cache layout huggingface_hub uses)."""
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_unet_folder, snapshot)
    (cache / "models--org--tiny" / "refs").mkdir(parents=True)
    (cache / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    prior = load_prior("org/tiny")
    assert isinstance(prior, UNetPrior)


def test_unknown_builtin_lists_the_valid_ones():
    valid = "black-hole, natural-gray, natural-rgb"
    with pytest.raises(ValueError, match=f"unknown built-in prior 'faces'; valid: {valid}"):
        load_prior("builtin:faces")


def test_the_layout_follows_the_run_unless_pinned_with_the_same_outputs():
    """By default each run chooses: channels-last (NHWC) for a half-precision network without gradients through it,
    contiguous otherwise (the speed bench's faster ones); a pinned layout stays. Outputs and gradients equal the
    contiguous layout's up to rounding, on a padded size too."""
    prior = UNetPrior(_tiny_unet(), linear_alphas_cumprod())
    assert prior.layout is None and not prior.channels_last
    prior.prepare(gradient=False)
    assert not prior.channels_last  # float32
    prior.net.to(torch.bfloat16)
    prior.prepare(gradient=False)
    assert prior.channels_last and prior.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    prior.prepare(gradient=True)
    assert not prior.channels_last and prior.net.conv_in.weight.is_contiguous()
    prior.net.float()
    x = torch.randn(2, 1, 15, 16, requires_grad=True)
    nchw = prior.predict(x, 10).x0_hat
    (grad_nchw,) = torch.autograd.grad(nchw.square().sum(), x)
    prior.set_channels_last(True)
    prior.prepare(gradient=True)  # pinned: stays channels-last
    assert prior.channels_last and prior.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = prior.predict(x, 10).x0_hat
    (grad_nhwc,) = torch.autograd.grad(nhwc.square().sum(), x)
    assert torch.allclose(nhwc, nchw, atol=1e-5) and torch.allclose(grad_nhwc, grad_nchw, atol=1e-4)
    res = sample_posterior(
        torch.zeros(1, 1, 8, 8),
        "denoise",
        prior=prior.set_channels_last(None),
        sampler="ddrm",
        steps=2,
        progress=False,
        dtype="bfloat16",
    )
    assert res.config["dtype"] == "bfloat16"


def test_a_compiled_network_gives_the_eager_outputs_and_is_compiled_once(gmm):
    """torch.compile, traced by dynamo and AOTAutograd (backend "aot_eager": inductor's C++ code generation takes a
    minute here, the speed bench measures it): the same x0_hat as eager; `sample_posterior(compile=True)` finds the
    prior object compiled (it compiles in place) and records it; a prior without a network is refused by name."""
    prior = UNetPrior(_tiny_unet(), linear_alphas_cumprod())
    x = torch.randn(2, 1, 8, 8)
    eager = prior.predict(x, 10).x0_hat
    assert not prior.compiled and prior.compile_network(backend="aot_eager") is prior and prior.compiled
    assert torch.allclose(prior.predict(x, 10).x0_hat, eager, atol=1e-4)
    op = get_operator("denoise", noise_sigma=0.1)
    res = sample_posterior(x[:1], op, prior=prior, sampler="ddrm", steps=2, progress=False, compile=True)
    assert res.config["compile"] is True and prior.compiled
    with pytest.raises(ValueError, match="GaussianMixturePrior has no network to compile"):
        gmm.compile_network()


def test_cuda_graphs_leave_the_cpu_path_unchanged(gmm):
    """`use_cuda_graphs` graphs only CUDA forward passes: on a CPU the outputs equal eager ones exactly and nothing
    is captured; `sample_posterior(cuda_graphs=True)` records the flag; priors without a network refuse it."""
    prior = UNetPrior(_tiny_unet(), linear_alphas_cumprod())
    x = torch.randn(2, 1, 8, 8)
    eager = prior.predict(x, 10).x0_hat
    assert not prior.cuda_graphs and prior.use_cuda_graphs() is prior and prior.cuda_graphs
    with torch.inference_mode():
        assert torch.equal(prior.predict(x, 10).x0_hat, eager)
    assert prior.graphed.graphs == {}
    op = get_operator("denoise", noise_sigma=0.1)
    res = sample_posterior(x[:1], op, prior=prior, sampler="ddrm", steps=2, progress=False, cuda_graphs=True)
    assert res.config["cuda_graphs"] is True
    assert not prior.use_cuda_graphs(False).cuda_graphs
    with pytest.raises(ValueError, match="GaussianMixturePrior has no network to replay from CUDA graphs"):
        gmm.use_cuda_graphs()
