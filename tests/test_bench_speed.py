"""`bench speed` (posterior_diffusion.speed): what each sampler costs beyond its network evaluations, per batch,
layout and compile mode, with the bare network's work counted as each sampler spends it."""

from __future__ import annotations

from types import SimpleNamespace


def test_speed_rows_time_the_sampler_against_the_bare_network(tiny_unet_folder):
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.speed import speed_rows, speed_table

    prior = load_prior(tiny_unet_folder, device="cpu")
    rows = speed_rows(prior, ["dps", "ddrm"], [1, 2], size=16, steps=3)
    assert [(r["sampler"], r["batch"]) for r in rows] == [("dps", 1), ("dps", 2), ("ddrm", 1), ("ddrm", 2)]
    assert all(r["nfe"] == 3 and r["bare_seconds"] > 0 and r["overhead"] > 0 for r in rows)
    assert rows[0]["network"] == "forward+backward" and rows[2]["network"] == "forward"
    assert speed_table(rows).count("\n") == 5


def test_bench_speed_says_what_it_times_and_refuses_unknown_samplers(tmp_path, tiny_unet_folder, capsys):
    """It was silent while timing, left out samplers without a word and ignored a misspelled one."""
    from posterior_diffusion.cli import main

    argv = ["bench", "speed", "--prior", str(tiny_unet_folder), "--size", "16", "--steps", "2", "--batch-sizes", "1"]
    argv += ["--repeats", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert main([*argv, "--methods", "ddrm", "resample"]) == 0
    printed = capsys.readouterr().out
    assert "timing ddrm on inpaint_random, batch 1, float32, contiguous (1 runs)" in printed
    assert "skipped: resample: no task it applies to with this prior (pixel space)" in printed
    assert main([*argv, "--methods", "ddrm", "dsp"]) == 1
    assert "unknown sampler 'dsp'" in capsys.readouterr().err
    assert main([*argv, "--methods", "ddrm", "--layouts", "channels_last", "nhwc"]) == 1
    assert "unknown layouts nhwc; valid: auto, channels_last, contiguous" in capsys.readouterr().err


def test_speed_rows_record_the_layout_and_the_compile_time(tiny_unet_folder, tmp_path):
    """One row per layout (the table's layout column); a compiled prior's rows say so, with the warm-up run's
    seconds as its compile time (backend aot_eager here: inductor's C++ build takes a minute)."""
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.speed import SpeedConfig, run_speed, speed_rows, speed_table

    table = run_speed(
        SpeedConfig(
            out=str(tmp_path),
            prior=str(tiny_unet_folder),
            size=16,
            steps=2,
            batch_sizes=(1,),
            methods=("ddrm",),
            repeats=1,
            device="cpu",
            layouts=("channels_last", "contiguous"),
        ),
        progress=False,
    )
    assert "| ddrm | float32 | channels_last | eager | 1 |" in table
    assert "| ddrm | float32 | contiguous | eager | 1 |" in table
    prior = load_prior(tiny_unet_folder, device="cpu").compile_network(backend="aot_eager")
    (row,) = speed_rows(prior, ["ddrm"], [1], size=16, steps=2, repeats=1)
    assert row["compiled"] and row["compile_seconds"] > 0 and row["layout"] == "contiguous"  # float32: auto
    assert f"| compiled ({row['compile_seconds']:.0f} s) |" in speed_table([row])


def test_speed_times_are_the_fastest_of_alternating_repeats(monkeypatch, gmm):
    """Sampler run and bare network timing alternate (a slow spell slows both alike); each time is the fastest."""
    import posterior_diffusion.speed as speed

    calls, sampler_seconds, bare_seconds = [], iter([9.0, 3.0, 1.0, 2.0]), iter([2.0, 1.5, 4.0])

    def fake_sample_posterior(*args, **kwargs):
        calls.append("sampler")
        return SimpleNamespace(seconds=next(sampler_seconds), nfe=5)

    def fake_bare(*args):
        calls.append("bare")
        return next(bare_seconds)

    monkeypatch.setattr(speed, "sample_posterior", fake_sample_posterior)
    monkeypatch.setattr(speed, "bare_network_seconds", fake_bare)
    (row,) = speed.speed_rows(gmm, ["ddrm"], [1], size=4, steps=5, repeats=3)
    assert calls == ["sampler"] + ["sampler", "bare"] * 3  # a warm-up, then alternating
    assert row["seconds"] == 1.0 and row["bare_seconds"] == 1.5 and row["overhead"] == 1.0 / 1.5


def test_speed_rows_of_latent_samplers_count_the_autoencoder_passes(tiny_ldm_folder):
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.speed import speed_rows

    prior = load_prior(tiny_ldm_folder, device="cpu")
    rows = speed_rows(prior, ["dps", "red_diff", "ddrm"], [2], size=16, steps=3, repeats=2)
    assert [r["sampler"] for r in rows] == ["dps", "red_diff"]  # ddrm refuses latent priors
    dps, red_diff = rows
    assert dps["network"] == "forward+backward + autoencoder"
    assert dps["autoencoder_images"] == 3 * 2 + 2  # a decode per step and chain, and the final decode (per run)
    assert red_diff["autoencoder_images"] >= 3 * 2 and all(r["bare_seconds"] > 0 for r in rows)


def test_speed_rows_of_gibbs_ddrm_count_its_kernel_conditional(tiny_unet_folder, monkeypatch):
    """GibbsDDRM's bare time adds as many bare kernel-conditional draws as a run makes (kept apart in the row)."""
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.samplers.gibbs_ddrm import GibbsDDRM
    from posterior_diffusion.speed import speed_rows, speed_table

    draws = []
    update = GibbsDDRM.kernel_update
    monkeypatch.setattr(GibbsDDRM, "kernel_update", lambda self, *a: draws.append(1) or update(self, *a))
    prior = load_prior(tiny_unet_folder, device="cpu")
    (row,) = speed_rows(prior, ["gibbs_ddrm"], [2], size=16, steps=5, repeats=1)
    per_run = GibbsDDRM(steps=5).kernel_draws(prior)
    assert per_run > 0 and row["nfe"] == 5 + per_run
    # warm-up run (2 steps), timed run, then the bare draws: a warm-up draw and one per draw of the run
    assert len(draws) == GibbsDDRM(steps=2).kernel_draws(prior) + per_run + 1 + per_run
    assert row["network"] == "forward + kernel conditional"
    assert 0 < row["algorithm_seconds"] < row["bare_seconds"]
    assert row["overhead"] == row["seconds"] / row["bare_seconds"]
    assert f"({row['bare_seconds'] - row['algorithm_seconds']:.2f} + " in speed_table([row])


def test_speed_rows_of_mcgdiff_time_the_bare_network_on_all_particles(monkeypatch, tiny_unet_folder):
    """MCGdiff's network calls take every particle of a measurement at once: its bare work is `steps` calls on
    batch x particles states, not nfe calls on the batch (which made its overhead read 0.30)."""
    import posterior_diffusion.speed as speed
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.samplers import sampler_class

    seen = []
    bare = speed.bare_network_seconds
    monkeypatch.setattr(speed, "bare_network_seconds", lambda p, x, n, g: seen.append((len(x), n)) or bare(p, x, n, g))
    prior = load_prior(tiny_unet_folder, device="cpu")
    (row,) = speed.speed_rows(prior, ["mcgdiff"], [2], size=16, steps=3, repeats=1)
    particles = sampler_class("mcgdiff")().config.particles
    assert row["nfe"] == 3 * particles and seen == [(2 * particles, 3)]
