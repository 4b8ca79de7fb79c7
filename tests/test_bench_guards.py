"""The bench under interruptions and mistakes: a cut row line, a missing figure, a second run on the same folder,
every option checked before any work, what is left out said once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import posterior_diffusion.bench as bench
import posterior_diffusion.bench.run as bench_run
from posterior_diffusion.bench import BenchConfig, run_bench
from tests.bench_helpers import bench_config, without_timing


def _baselines_only(images, out, **changes) -> BenchConfig:
    """A bench of two baselines on one task: seconds, no prior."""
    return bench_config(images, out, out, tasks=("random_inpaint",), methods=("tikhonov", "harmonic"), **changes)


def test_a_cut_row_line_is_skipped_with_a_warning_and_recomputed(tmp_path, images, recwarn):
    """A line cut by a kill used to stop every rerun with a JSON error naming no file."""
    straight = run_bench(_baselines_only(images, tmp_path / "straight"), progress=False)
    rows_file = tmp_path / "cut" / "rows-0.jsonl"
    run_bench(_baselines_only(images, tmp_path / "cut"), progress=False)
    lines = rows_file.read_text().splitlines()
    rows_file.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # the 4th row cut, the rest lost
    with pytest.warns(UserWarning, match=r"rows-0\.jsonl line 4 is not a complete row"):
        resumed = run_bench(_baselines_only(images, tmp_path / "cut"), progress=False)
    assert without_timing(resumed) == without_timing(straight)
    assert len(rows_file.read_text().splitlines()) == len(lines)  # the cut line is gone, its row recomputed
    recwarn.clear()
    run_bench(_baselines_only(images, tmp_path / "cut"), progress=False)
    assert not [w for w in recwarn if "row" in str(w.message)]


def test_a_missing_figure_is_drawn_again(tmp_path, images, monkeypatch):
    """A figure lost after its rows were written (a kill, a full disk, a deletion) used to be gone for good."""
    out = tmp_path / "out"
    run_bench(_baselines_only(images, out), progress=False)
    (out / "figures" / "random_inpaint_harmonic.png").unlink()
    (out / "figures" / "psnr_vs_nfe_random_inpaint.png").unlink()
    rows = (out / "rows-0.jsonl").read_text()
    calls = []
    real = bench_run.run_method
    monkeypatch.setattr(bench_run, "run_method", lambda *a, **k: calls.append((a[0].name, a[3])) or real(*a, **k))
    run_bench(_baselines_only(images, out), progress=False)
    assert calls == [("harmonic", [0])]  # the first image again, for its figure only
    assert (out / "figures" / "random_inpaint_harmonic.png").exists()
    assert (out / "figures" / "psnr_vs_nfe_random_inpaint.png").exists()
    assert (out / "rows-0.jsonl").read_text() == rows


def _hold_lock(out, holder: str):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / bench.LOCK_NAME, "w")  # noqa: SIM115
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(holder)
    handle.flush()
    return handle


def test_a_second_bench_on_the_same_folder_stops_naming_the_holder(tmp_path, images, monkeypatch, capsys):
    """Two benches on one --out both computed everything; now the second stops before any work."""
    from posterior_diffusion.cli import main

    out = tmp_path / "out"
    monkeypatch.setattr(bench_run, "run_method", lambda *a, **k: pytest.fail("no work while the folder is held"))
    handle = _hold_lock(out, "pid 4242 on host-a")
    with pytest.raises(bench.BenchFolderBusy, match=r"in use by another bench \(pid 4242 on host-a; lock file"):
        run_bench(_baselines_only(images, out), progress=False)
    argv = ["bench", "grid", "--images", str(images), "--out", str(out), "--methods", "tikhonov", "--size", "16"]
    assert main([*argv, "--lpips", "none", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pid 4242" in err and ".bench.lock" in err
    handle.close()  # the holder ends (a killed process's lock goes the same way): the folder is free again
    monkeypatch.undo()
    assert len(run_bench(_baselines_only(images, out), progress=False)) == 10
    assert f"pid {os.getpid()}" in (out / bench.LOCK_NAME).read_text()


def test_all_ranks_of_a_second_sharded_run_stop(tmp_path, images):
    """The main process's refusal reaches every rank of its run (none hangs or works alone)."""
    out = tmp_path / "out"
    handle = _hold_lock(out, "pid 4242 on host-a")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "posterior_diffusion.cli"]
    argv += ["bench", "grid", "--images", str(images), "--out", str(out), "--methods", "tikhonov", "--size", "16"]
    argv += ["--lpips", "none", "--device", "cpu", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    handle.close()
    assert done.returncode != 0 and done.stderr.count("in use by another bench (pid 4242") == 2, done.stderr[-2000:]
    assert not list(out.glob("rows-*.jsonl"))


def test_every_option_of_every_method_is_checked_before_any_work(tmp_path, images, tiny_unet_folder, monkeypatch):
    """A misspelled baseline option was found only after the methods before it had run."""
    monkeypatch.setattr(bench_run, "run_method", lambda *a, **k: pytest.fail("an option was checked after work"))
    cases = {
        "tikhonov.wieght": r"unknown option\(s\) wieght for baseline 'tikhonov'; valid: reg, max_iter",
        "dps.step_sise": r"unknown option\(s\) step_sise for sampler 'dps'",
        "step_sise": r"unknown option\(s\) step_sise for sampler 'dps'",
        "dsp.steps": r"option 'dsp.steps' names no method of this bench",
    }
    for key, message in cases.items():
        cfg = bench_config(images, tmp_path / "out", tiny_unet_folder, methods=("dps", "tikhonov"))
        cfg.sampler_options = {key: 3}
        with pytest.raises(ValueError, match=message):
            run_bench(cfg, progress=False)
    cfg = _baselines_only(images, tmp_path / "out", sampler_options={"steps": 3})
    with pytest.raises(ValueError, match="is for every sampler and this bench has none"):
        run_bench(cfg, progress=False)
    options = {"dps.step_size": -1.0}
    cfg = bench_config(images, tmp_path / "out", tiny_unet_folder, methods=("tikhonov", "dps"), sampler_options=options)
    with pytest.raises(ValueError, match="step_size must be >= 0"):  # a bad value, from the sampler's config
        run_bench(cfg, progress=False)


def test_each_method_left_out_of_a_task_is_announced_once(tmp_path, images, capsys):
    cfg = bench_config(images, tmp_path / "out", tmp_path, tasks=("gaussian_deblur",), methods=("tikhonov", "bicubic"))
    cfg.seeds = (0, 1)
    run_bench(cfg, progress=False)  # --quiet hides the progress bars, never what was skipped or tuned
    printed = capsys.readouterr().out
    assert printed.count("skipped:") == 1
    assert "skipped: bicubic on gaussian_deblur: bicubic needs super_resolution" in printed
    assert "note: tikhonov on gaussian_deblur runs with untuned default reg" in printed


def test_a_missing_lpips_is_one_warning_that_says_how_to_get_it(tmp_path, images, monkeypatch, recwarn):
    """The note used to be printed for every (task, method) group and did not say where the weights come from."""
    monkeypatch.setenv("POSTERIOR_DIFFUSION_LPIPS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("posterior_diffusion.perceptual._shared_folders", lambda: [tmp_path])
    rows = run_bench(_baselines_only(images, tmp_path / "out", lpips="alex", images_per_call=1), progress=False)
    notes = [str(w.message) for w in recwarn if "LPIPS" in str(w.message)]
    assert len(notes) == 1 and all("lpips" not in r for r in rows)
    assert "posterior-diffusion lpips-weights --net alex" in notes[0] and str(tmp_path) in notes[0]


def test_a_methods_own_option_wins_over_the_bench_steps(tmp_path, images):
    """`--steps 100 --sampler-param pnp_ula.steps=200` (a budget the studies use)
    runs PnP-ULA with 200 steps; the bench-wide --steps used to override it."""
    from posterior_diffusion.bench.methods import SamplerMethod

    cfg = bench_config(images, tmp_path / "out", tmp_path, steps=100, sampler_options={"pnp_ula.steps": 200})
    assert SamplerMethod("pnp_ula").options(cfg, "deblur") == {"steps": 200, "preset": "deblur"}
    assert SamplerMethod("dps").options(cfg, None) == {"steps": 100}
