"""`train`: a few steps on generated images, an interruption, an exact resume, a loadable prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate.utils import load  # torch.load(weights_only=True), numpy arrays of RNG states allowed
from safetensors.torch import load_file

import posterior_diffusion.training_loop as loop
from posterior_diffusion.priors import LatentPrior, load_prior
from posterior_diffusion.train import TrainConfig, sample_timesteps, train
from posterior_diffusion.train_autoencoder import AutoencoderConfig, train_autoencoder


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


def test_interrupted_run_resumes_exactly(tmp_path, images, monkeypatch):
    train(_config(images, tmp_path / "straight"), progress=False)

    real_step = loop.one_step

    def interrupted(*args):
        if args[6] == 3:  # the step index: after the checkpoint at step 2, before the next one
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(loop, "one_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(images, tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(loop, "one_step", real_step)
    assert load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")  # the step-2 checkpoint survived
    train(_config(images, tmp_path / "resumed"), progress=False)

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


def test_low_t_fraction_moves_that_share_of_the_timestep_draws_below_low_t_max(tmp_path):
    def below(fraction: float) -> float:
        cfg = TrainConfig(data="d", output=str(tmp_path), low_t_fraction=fraction, low_t_max=100)
        t = sample_timesteps(cfg, 200_000, torch.Generator().manual_seed(0), "cpu")
        assert int(t.min()) >= 0 and int(t.max()) < cfg.num_train_timesteps
        return float((t < 100).double().mean())

    # uniform draws put 10 % below 100; with fraction f, f + (1 - f) * 10 %
    assert below(0.0) == pytest.approx(0.1, abs=0.003)
    assert below(0.8) == pytest.approx(0.82, abs=0.003)
    assert below(1.0) == 1.0
    for bad in ({"low_t_fraction": 1.5}, {"low_t_max": 0}, {"low_t_max": 1001}):
        with pytest.raises(ValueError, match="low_t_"):
            TrainConfig(data="d", output=str(tmp_path), **bad)


def test_checkpoint_loads_without_pickled_code(tmp_path, images):
    """Every file of a checkpoint is safetensors, JSON, or a torch file that loads with weights_only=True."""
    train(_config(images, tmp_path / "run"), max_steps_this_run=2, progress=False)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert {"model.safetensors", "ema.safetensors", "optimizer.bin", "scheduler.bin", "state.json"} <= set(files)
    for name in files:
        if not name.endswith((".safetensors", ".json")):
            assert load(tmp_path / "run" / "checkpoint" / name) is not None, name


def test_old_checkpoint_format_is_refused_clearly(tmp_path, images):
    run = tmp_path / "run"
    train(_config(images, run), max_steps_this_run=2, progress=False)
    (run / "checkpoint" / "optimizer.bin").rename(run / "checkpoint" / "optimizer.pt")
    with pytest.raises(ValueError, match="older format"):
        train(_config(images, run), progress=False)


def test_warmup_schedule_gives_update_k_the_rate_k_plus_one_over_warmup():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=2e-4)
    schedule = loop.warmup_schedule(optimizer, warmup_steps=3)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(2)
        optimizer.step()
        schedule.step()
    assert rates == [2e-4 * min(1.0, (k + 1) / 3) for k in range(6)]


def test_time_limit_ends_a_sitting_that_the_next_one_continues(tmp_path, images):
    """time_limit=0 stops after one step with a checkpoint and the figures; a second sitting finishes the run
    with the weights and the log of an uninterrupted one."""
    train(_config(images, tmp_path / "straight"), progress=False)
    run = tmp_path / "sittings"
    train(_config(images, run), progress=False, time_limit=0.0)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 1
    assert (run / "loss.png").exists() and (run / "samples.png").exists()
    train(_config(images, run), progress=False)
    a = load_file(tmp_path / "straight" / "checkpoint" / "ema.safetensors")
    b = load_file(run / "checkpoint" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert [r["loss"] for r in log] == [r["loss"] for r in straight]


def test_init_from_starts_from_a_priors_weights(tmp_path, images):
    """Fine-tuning: the new run starts from the source prior's weights (lr 0 keeps them); another network is
    refused."""
    train(_config(images, tmp_path / "source"), progress=False)
    cfg = _config(images, tmp_path / "tuned")
    cfg.init_from, cfg.lr = str(tmp_path / "source"), 0.0
    train(cfg, max_steps_this_run=1, progress=False)
    a = load_prior(tmp_path / "source").net.state_dict()
    b = load_prior(tmp_path / "tuned").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _config(images, tmp_path / "other")
    other.init_from, other.block_out_channels = str(tmp_path / "source"), (8, 8)
    with pytest.raises(ValueError, match="does not match this run's network"):
        train(other, max_steps_this_run=1, progress=False)


def test_other_settings_in_the_same_folder_are_refused(tmp_path, images):
    cfg = _config(images, tmp_path / "run")
    train(cfg, max_steps_this_run=1, progress=False)
    cfg.lr = 1e-3
    with pytest.raises(ValueError, match="holds a run with other settings"):
        train(cfg, progress=False)


def test_latent_prior_training_pipeline(tmp_path, images):
    """Autoencoder, then a UNet on its latents: the result loads as a latent prior and decodes to images."""
    ae_cfg = AutoencoderConfig(
        data=str(images),
        output=str(tmp_path / "ae"),
        crop_size=16,
        batch_size=2,
        steps=2,
        block_out_channels=(8, 8, 16),
        norm_num_groups=4,
        checkpoint_every=1,
    )
    train_autoencoder(ae_cfg, progress=False)
    assert (tmp_path / "ae" / "reconstructions.png").exists()
    cfg = _config(images, tmp_path / "latent")
    cfg.autoencoder, cfg.steps = str(tmp_path / "ae" / "autoencoder"), 2
    train(cfg, progress=False)
    prior = load_prior(tmp_path / "latent")
    assert isinstance(prior, LatentPrior) and prior.factor == 4 and prior.scaling_factor > 0
    z = prior.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert z.shape == (1, 3, 4, 4) and prior.decode(z).shape == (1, 3, 16, 16)
    assert (tmp_path / "latent" / "samples.png").exists()


def test_autoencoder_init_from_copies_the_weights(tmp_path, images):
    settings = {
        "data": str(images),
        "crop_size": 16,
        "batch_size": 2,
        "steps": 1,
        "block_out_channels": (8, 8, 16),
        "norm_num_groups": 4,
    }
    train_autoencoder(AutoencoderConfig(output=str(tmp_path / "a"), **settings), progress=False)
    source = str(tmp_path / "a" / "autoencoder")
    train_autoencoder(
        AutoencoderConfig(output=str(tmp_path / "b"), init_from=source, lr=0.0, **settings), progress=False
    )
    a = load_file(tmp_path / "a" / "autoencoder" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "autoencoder" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = AutoencoderConfig(
        output=str(tmp_path / "c"), init_from=source, **(settings | {"block_out_channels": (8, 16)})
    )
    with pytest.raises(ValueError, match="does not match this run's network"):
        train_autoencoder(other, progress=False)


def test_sample_grid_zero_skips_it_and_the_log_holds_what_the_bar_shows(tmp_path, images, capsys):
    run = tmp_path / "run"
    train(_config(images, run), progress=True, sample_grid=0)
    assert (run / "loss.png").exists() and not (run / "samples.png").exists()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert [r["loss_mean100"] for r in log] == pytest.approx([np.mean(losses[: i + 1]) for i in range(len(log))])
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]  # the bar's last state
    assert f"loss={losses[-1]:.4f}" in bar and f"loss_mean100={np.mean(losses):.4f}" in bar
    train(_config(images, tmp_path / "grid"), progress=True, sample_grid=2)
    assert "drawing 2 samples" in capsys.readouterr().out
    assert (tmp_path / "grid" / "samples.png").exists()
