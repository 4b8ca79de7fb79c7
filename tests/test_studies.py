"""Every committed study report is what `bench report` makes from the study's committed rows, a changed row
changes it, and a folder that is not a study is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posterior_diffusion.bench.studies import REPORT, STUDY, render_report
from posterior_diffusion.cli import main

STUDIES = Path(__file__).resolve().parents[1] / "assets" / "bench"
FOLDERS = sorted(path.parent for path in STUDIES.glob(f"*/{STUDY}"))


def test_every_study_folder_is_generated_from_its_rows():
    folders = {path for path in STUDIES.iterdir() if path.is_dir()}
    assert {f.name for f in folders} >= {"auto_vs_classical", "denoising", "quality_per_second", "speed", "black_hole"}
    assert folders == set(FOLDERS), "every study folder needs a study.toml (and its rows)"
    assert all((folder / REPORT).is_file() and (folder / "README.md").is_file() for folder in FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_each_committed_report_is_regenerated_identically_from_its_rows(folder):
    assert (folder / REPORT).read_text() == render_report(folder)


def test_a_changed_row_changes_the_report(tmp_path, monkeypatch):
    study = tmp_path / "auto_vs_classical"
    shutil.copytree(STUDIES / "auto_vs_classical", study)
    monkeypatch.chdir(tmp_path)
    before = render_report("auto_vs_classical")
    assert "| hdr | 26.33 (diffpir-100) | 19.85 (unclip) | +6.48 |" in before
    rows = [json.loads(line) for line in (study / "rows-0.jsonl").read_text().splitlines()]
    for row in rows:
        if row["task"] == "hdr" and row["method"] == "auto":
            row["psnr"] -= 10.0  # every image 10 dB worse: the mean and the margin move by 10
    (study / "rows-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    after = render_report("auto_vs_classical")
    assert "| hdr | 16.33 (diffpir-100) | 19.85 (unclip) | -3.52 |" in after


def test_a_versus_table_takes_its_baselines_from_other_rows(tmp_path):
    """The method's rows in one file (another budget), the classical baselines from the study's rows."""
    rows = [json.loads(line) for line in (STUDIES / "auto_vs_classical" / "rows-0.jsonl").read_text().splitlines()]
    ours = [r | {"psnr": r["psnr"] + 1.0} for r in rows if r["method"] == "auto" and r["task"] == "sr4"]
    (tmp_path / "classical.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["method"] != "auto"))
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))
    (tmp_path / STUDY).write_text(
        'title = "t"\n[[tables]]\nkind = "versus"\nmethod = "auto"\nrows = ["ours.jsonl"]\n'
        'baselines = ["classical.jsonl"]\n'
    )
    report = render_report(tmp_path)
    assert "| sr4 | 28.25 (diffpir-20) | 28.05 (pnp_admm) | +0.20 |" in report
    assert "| box_inpaint |" not in report  # no rows of the method there


def test_bench_report_writes_checks_and_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    study = tmp_path / "denoising"
    shutil.copytree(STUDIES / "denoising", study)
    monkeypatch.chdir(tmp_path)
    (study / REPORT).write_text("edited by hand\n")
    assert main(["bench", "report", "denoising", "--check"]) == 1
    assert "does not match its rows" in capsys.readouterr().err
    assert main(["bench", "report", "denoising"]) == 0
    assert main(["bench", "report", "denoising", "--check"]) == 0
    assert "matches its rows" in capsys.readouterr().out
    (tmp_path / "plain").mkdir()
    assert main(["bench", "report", "plain"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study.toml" in err
    assert main(["bench", "report", "plain", "denoising"]) == 0  # a glob: the studies among the folders
    assert "skipped: plain (no study.toml)" in capsys.readouterr().out


def test_a_pivot_table_aggregates_plain_rows(tmp_path):
    rows = [
        {"task": "denoise", "sigma": 5.0, "a": 3.0, "b": 1.0},
        {"task": "denoise", "sigma": 5.0, "a": 5.0, "b": 1.0},
        {"task": "denoise", "sigma": 25.0, "a": -2.0},  # no b: left out of "a - b"
        {"task": "sr4", "sigma": 5.0, "a": 1.0, "b": 0.5},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = 'kind = "pivot"\nrows = ["rows.jsonl"]\nindex = "task"\ncolumn = "sigma"\n'
    (tmp_path / STUDY).write_text(
        f'title = "t"\n[[tables]]\n{spec}value = "a"\naggregate = "mean_abs"\ndigits = 1\n'
        f'[[tables]]\n{spec}value = "a - b"\nscale = 10\n'
    )
    report = render_report(tmp_path)
    assert "| task | sigma 5 | sigma 25 |" in report
    assert "| denoise | 4.0 | 2.0 |" in report and "| sr4 | 1.0 | - |" in report
    assert "| denoise | 30.00 | - |" in report and "| sr4 | 5.00 | - |" in report


def test_a_denoise_table_joins_one_priors_runs_on_one_folder(tmp_path):
    def record(prior, images, sigma, psnr):
        rows = [{"image": f"{i}.png", "sigma": sigma, "psnr_noisy": 20.0, "psnr": psnr + i} for i in range(2)]
        return {"prior": prior, "images": images, "rows": rows}

    records = [
        record("p", "/a/CBSD68", 50, 27.0),
        record("p", "/b/CBSD68", 6.4, 38.0),
        record("q", "/a/CBSD68", 25, 30.0),
    ]
    for i, r in enumerate(records):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    (tmp_path / STUDY).write_text(
        'title = "t"\n[[tables]]\nkind = "denoise"\nrows = ["r0.json", "r1.json", "r2.json"]\n'
    )
    report = render_report(tmp_path)
    assert "| p | CBSD68 (2) | 38.50 | 27.50 |" in report and "| q | CBSD68 (2) | 30.50 |" in report


def test_a_speed_table_shows_each_samplers_overhead(tmp_path):
    row = {
        "sampler": "ddrm", "dtype": "float32", "layout": "contiguous", "compiled": False, "compile_seconds": 0.0,
        "cuda_graphs": False, "batch": 4, "nfe": 20, "network": "forward", "seconds": 2.8, "bare_seconds": 2.5,
        "algorithm_seconds": 0.0, "overhead": 1.12, "images_per_s": 1.43, "peak_mb": 562.0,
    }  # fmt: skip
    (tmp_path / "speed.json").write_text(json.dumps([row]))
    (tmp_path / STUDY).write_text('title = "t"\n[[tables]]\nkind = "speed"\nrows = ["speed.json"]\n')
    report = render_report(tmp_path)
    assert "| ddrm | float32 | contiguous | eager | 4 | 20 | forward | 2.80 | 2.50 | 1.12 | 1.43 | 562 |" in report


def test_a_calibrations_table_expands_patterns_and_summarises_one_level(tmp_path):
    from posterior_diffusion.calibration import Calibration

    held = {"images": 8, "folder": "McMaster", "raw_coverage": {0.9: 0.5}}
    (tmp_path / "cal").mkdir()
    for name, covered, folder in (("a.json", 0.938, "BSD400"), ("b.json", 0.88, "")):  # b: made before folders
        Calibration(
            factors={0.9: 2.0}, task=name, operator={"name": "denoise"}, prior="builtin:natural-rgb",
            sampler={"name": "ddrm", "steps": 20}, num_samples=4, images=12, raw_coverage={0.9: 0.6},
            calibrated_coverage={0.9: 0.9}, held_out=held | {"calibrated_coverage": {0.9: covered}}, folder=folder,
        ).save(tmp_path / "cal" / name)  # fmt: skip
    spec = 'kind = "calibrations"\nrows = ["cal/*.json"]\n'
    (tmp_path / STUDY).write_text(f'title = "t"\n[[tables]]\n{spec}level = 0.9\n[[tables]]\n{spec}')
    report = render_report(tmp_path)
    summary = "| natural-rgb | ddrm-20, 4 samples | {} | 2.000 | 0.500 | {} (8 McMaster) | {} | - |"
    assert "| a.json " + summary.format("12 BSD400", "0.938", "+3.8") in report
    assert "| b.json " + summary.format("12", "0.880", "-2.0") in report
    detail = "| ddrm-20, 4 samples | 0.9 | 2.000 | 0.600 / 0.900 ({}) | 0.500 / {} (8 McMaster) |"
    assert "| a.json | a.json " + detail.format("12 BSD400", "0.938") in report
    assert "| b.json | b.json " + detail.format("12", "0.880") in report
    (tmp_path / STUDY).write_text('title = "t"\n[[tables]]\nkind = "calibrations"\nrows = ["none/*.json"]\n')
    with pytest.raises(ValueError, match="missing"):
        render_report(tmp_path)


def test_a_coverage_table_keeps_the_last_row_of_a_rerun_and_sorts_by_file(tmp_path):
    """`coverage --out` rows: one line per file and image set, the rerun's numbers, files in name order."""

    def row(name, covered, by_class=None):
        made = {"calibration": name, "prior": "builtin:natural-gray", "sampler": "ddrm-20, 4 samples"}
        made |= {"calibration_images": "24 BSD400", "images": 8, "folder": "CBSD68", "size": 128, "seed": 0}
        made |= {"file_held_out": {"images": 8, "folder": "McMaster", "calibrated_coverage": {"0.9": 0.93}}}
        made |= {"raw_coverage": {"0.9": 0.5}, "calibrated_coverage": {"0.9": covered}, "strata": []}
        if by_class:
            made |= {"strata": ["observed", "missing"], "stratum_coverage": {"0.9": by_class}}
        return json.dumps(made)

    rows = [row("b.json", 0.8), row("a.json", 0.95, [0.9, 0.81]), row("b.json", 0.879)]
    (tmp_path / "cov.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / STUDY).write_text('[[tables]]\nkind = "coverage"\nrows = ["cov.jsonl"]\nlevel = 0.9\n')
    lines = [line for line in render_report(tmp_path).splitlines() if line.startswith("| a.json") or "b.json" in line]
    common = "| natural-gray | ddrm-20, 4 samples | 24 BSD400 | 0.930 (8 McMaster) |"
    assert lines == [
        f"| a.json {common} 0.950 (8 CBSD68) | +5.0 | observed 0.900, missing 0.810 |",
        f"| b.json {common} 0.879 (8 CBSD68) | -2.1 | - |",
    ]
