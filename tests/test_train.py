"""`train`: a few steps on generated images, an interruption, an exact resume, a loadable prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import posterior_diffusion.train as train_module
from posterior_diffusion.priors import load_prior
from posterior_diffusion.train import TrainConfig, train


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _config(data, out) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        output=str(out),
        crop_size=16,
        batch_size=4,
        steps=6,
        checkpoint_every=2,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        warmup_steps=2,
    )


def test_interrupted_run_resumes_exactly(tmp_path, image_folder, monkeypatch):
    train(_config(image_folder, tmp_path / "straight"), progress=False)

    real_step = train_module._train_step

    def interrupted(cfg, step, *args):
        if step == 3:  # after the checkpoint at step 2, before the next one
            raise KeyboardInterrupt
        return real_step(cfg, step, *args)

    monkeypatch.setattr(train_module, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(image_folder, tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(train_module, "_train_step", real_step)
    assert load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")  # the step-2 checkpoint survived
    train(_config(image_folder, tmp_path / "resumed"), progress=False)

    for name in (
        "checkpoint/model.safetensors",
        "checkpoint/ema.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
            name,
            max(float((a[k] - b[k]).abs().max()) for k in a),
        )
    for name in ("loss.png", "samples.png", "model_index.json"):
        assert (tmp_path / "resumed" / name).exists(), name

    prior = load_prior(tmp_path / "resumed")
    assert torch.isfinite(prior.denoise(torch.randn(1, 3, 16, 16), 100)).all()


def test_other_settings_in_the_same_folder_are_refused(tmp_path, image_folder):
    cfg = _config(image_folder, tmp_path / "run")
    train(cfg, max_steps_this_run=1, progress=False)
    cfg.lr = 1e-3
    with pytest.raises(ValueError, match="holds a run with other settings"):
        train(cfg, progress=False)
