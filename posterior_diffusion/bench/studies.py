"""`posterior-diffusion bench report FOLDER`: a study's report.md regenerated from its committed rows alone.

A study is a folder (those of the project under assets/bench/) holding its rows, a README.md (what it measures,
on what split and machine, the commands, and short prose interpreting the tables) and study.toml naming its tables
in order:

    title = "Quality per second"
    [[tables]]
    kind = "grid"                     # a key of REPORTS
    rows = ["rows-a.jsonl", "rows-b.jsonl"]
    heading = "Every sampler at its defaults"     # optional
    columns = ["psnr", "lpips_sample"]            # grid: the metrics shown (default psnr, ssim)
    methods = ["auto"]                            # grid: only these methods' rows (default all)
    one_table = true                              # grid: every task in one table (default one table per task)

Kinds: "grid" (bench grid rows: one table per task, methods by PSNR of the mean, +- the spread over images and
seeds), "versus" (bench grid rows: per task, `method` against the best classical baseline, and the margin),
"denoise" (prior_benchmark denoise rows: Tweedie PSNR per noise level), "record" (a JSON record: its numbers,
one per line), "pivot" (plain JSON-lines rows: an index x column table of a value's mean, median or mean |.|),
"exact" (`bench exact` rows: samplers against exact posteriors), "calibrations" (calibration files: factors and
coverage, held-out included), "coverage" (`coverage --out` rows: calibration files on other images), "speed"
(`bench speed` records: time against the bare work).
Everything is computed from the rows; nothing is typed in, so a rerun that adds rows changes the report and a
table never drifts from its rows (tests/test_studies.py regenerates every committed report).
"""

from __future__ import annotations

import json
import statistics
import tomllib
from collections.abc import Callable
from pathlib import Path

from posterior_diffusion.baselines import BASELINES
from posterior_diffusion.bench.calibration_tables import calibrations_table, coverage_table
from posterior_diffusion.bench.report import summary
from posterior_diffusion.bench.store import KEY, json_lines, rows_of

REPORT = "report.md"
STUDY = "study.toml"
LABELS = {  # column headers of the grid tables
    "psnr": "PSNR of the mean",
    "ssim": "SSIM",
    "lpips": "LPIPS of the mean",
    "lpips_sample": "LPIPS of one sample",
    "psnr_sample": "PSNR of one sample",
    "psnr_average": "PSNR of the samples' average",
    "coverage90": "90 % coverage",
    "z_spread": "z spread",
    "spearman": "Spearman (std, error)",
    "kernel_l2": "kernel L2 error",
    "kernel_ncc": "kernel NCC",
    "psnr_aligned": "PSNR (aligned)",
    "psnr_blur15": "PSNR after a 15 uas blur",
    "chi2_cphase": "chi2 closure phases",
    "chi2_logcamp": "chi2 log closure amplitudes",
}


def _method_label(method: str, rows: list[dict]) -> str:
    """The method as a table shows it: baselines marked, auto with the samplers it picked."""
    if method in BASELINES:
        return f"{method} (baseline)"
    picked = sorted({r["sampler"] for r in rows if "sampler" in r})
    return f"{method} ({', '.join(picked)})" if picked else method


def _by_task(rows: list[dict]) -> dict[str, list[tuple[dict, str]]]:
    """task -> [(its `report.summary` entry, the method's label)] per method, tasks and methods in the rows' order."""
    tasks: dict[str, list[tuple[dict, str]]] = {}
    for entry in summary(rows):
        sel = [r for r in rows if r["task"] == entry["task"] and r["method"] == entry["method"]]
        tasks.setdefault(entry["task"], []).append((entry, _method_label(entry["method"], sel)))
    return tasks


def grid_tables(folder: Path, spec: dict) -> str:
    """One table per task (in the rows' order of first appearance): each method's metrics (mean +- std over its
    rows, `report.summary`), NFE, seconds per image and rows, best PSNR first (or best `sort` metric); `methods`
    keeps only those, and `one_table = true` puts every task in one table with a task column."""
    columns = spec.get("columns", ["psnr", "ssim"])
    rows = read_rows_files(folder, spec["rows"])
    if "methods" in spec:
        rows = [r for r in rows if r["method"] in spec["methods"]]
    one_table = spec.get("one_table", False)
    header = [*(["task"] * one_table), "method", *[LABELS.get(c, c) for c in columns], "NFE", "s / image", "rows"]
    head = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body = {}  # task -> its table lines, best first
    for task, methods in _by_task(rows).items():
        lines = []
        for entry, label in sorted(methods, key=lambda item: -item[0][spec.get("sort", "psnr")]):
            cells = [*([task] * one_table), label]
            for column in columns:
                digits = 2 if column.startswith("psnr") else 3
                mean_std = (
                    f"{entry[column]:.{digits}f} +- {entry[column + '_std']:.{digits}f}" if column in entry else "-"
                )
                cells.append(mean_std)
            cells += [str(entry["nfe"]), f"{entry['seconds']:.1f}", str(entry["runs"])]
            lines.append("| " + " | ".join(cells) + " |")
        body[task] = lines
    if one_table:
        return "\n".join(head + [line for lines in body.values() for line in lines])
    return "\n\n".join("\n".join([f"{task}:", "", *head, *lines]) for task, lines in body.items())


def versus_table(folder: Path, spec: dict) -> str:
    """Per task: `spec["method"]`'s mean PSNR against the best classical baseline's, and the margin. The baselines
    come from the same rows, or from the files `spec["baselines"]` names (another run of the method, e.g. at another
    budget, against the same baseline rows)."""
    method = spec["method"]
    by_task = _by_task(read_rows_files(folder, spec["rows"]))
    against = _by_task(read_rows_files(folder, spec["baselines"])) if "baselines" in spec else by_task
    lines = [f"| task | {method} | best classical | margin |", "|---|---|---|---|"]
    for task, methods in by_task.items():
        ours = [(entry, label) for entry, label in methods if entry["method"] == method]
        baselines = [entry for entry, _ in against.get(task, []) if entry["method"] in BASELINES]
        if not ours or not baselines:
            continue
        (entry, label), best = ours[0], max(baselines, key=lambda e: e["psnr"])
        picked = label.removeprefix(method).strip(" ()")
        shown = f"{entry['psnr']:.2f} ({picked})" if picked else f"{entry['psnr']:.2f}"
        margin = entry["psnr"] - best["psnr"]
        lines.append(f"| {task} | {shown} | {best['psnr']:.2f} ({best['method']}) | {margin:+.2f} |")
    return "\n".join(lines)


def denoise_table(prior: str, folder: str, rows: list[dict]) -> str:
    """Markdown: one line per prior and test set, a column per noise level: the mean PSNR of the one-call Tweedie
    denoiser, with (C)BM3D's beside it where the rows have it."""
    sigmas = sorted({r["sigma"] for r in rows})
    cells = []
    for sigma in sigmas:
        sel = [r for r in rows if r["sigma"] == sigma]
        cell = f"{sum(r['psnr'] for r in sel) / len(sel):.2f}"
        if all("psnr_bm3d" in r for r in sel):
            cell += f" ({sum(r['psnr_bm3d'] for r in sel) / len(sel):.2f})"
        cells.append(cell)
    images = len({r["image"] for r in rows})
    return (
        f"| prior | images | {' | '.join(f'sigma {s:g}' for s in sigmas)} |\n|---|---|{'---|' * len(sigmas)}\n"
        f"| {prior} | {Path(folder).name} ({images}) | {' | '.join(cells)} |"
    )


def merge_denoise_records(records: list[dict]) -> list[dict]:
    """prior_benchmark denoise records ({"prior", "images", "rows"}) with those of the same prior and image folder
    (by name) joined into one, in first-seen order: a run split by noise level reads as one run."""
    merged: dict[tuple[str, str], dict] = {}
    for record in records:
        key = (record["prior"], Path(record["images"]).name)
        if key in merged:
            merged[key]["rows"] = merged[key]["rows"] + record["rows"]
        else:
            merged[key] = dict(record)
    return list(merged.values())


def denoise_tables(folder: Path, spec: dict) -> str:
    """prior_benchmark denoise records: one table per prior and image folder (`denoise_table`)."""
    records = merge_denoise_records([json.loads((folder / name).read_text()) for name in spec["rows"]])
    return "\n\n".join(denoise_table(r["prior"], r["images"], r["rows"]) for r in records)


def record_table(folder: Path, spec: dict) -> str:
    """A JSON record's numbers and strings, one line per (dotted) key, in the file's order."""
    lines = ["| quantity | value |", "|---|---|"]
    for name in spec["rows"]:
        for key, value in _flatten(json.loads((folder / name).read_text())):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def pivot_table(folder: Path, spec: dict) -> str:
    """Plain JSON-lines rows as a table: a line per value of `index`, a column per value of `column` (both in the
    rows' order), each cell the `aggregate` ("mean", "median" or "mean_abs") of `value` over the rows that have it,
    times `scale` (default 1) with `digits` decimals. `value` is a field or "a - b" of two fields."""
    rows = json_lines(folder, spec["rows"])
    first, _, second = spec["value"].partition(" - ")

    def value(row):
        if first not in row or (second and second not in row):
            return None
        return row[first] - row[second] if second else row[first]

    aggregate = {
        "mean": lambda v: sum(v) / len(v),
        "median": statistics.median,
        "mean_abs": lambda v: sum(abs(x) for x in v) / len(v),
    }[spec.get("aggregate", "mean")]
    index, column = spec["index"], spec["column"]
    lines_of = list(dict.fromkeys(r[index] for r in rows))
    columns = list(dict.fromkeys(r[column] for r in rows))
    label = spec.get("column_label", column)
    lines = [
        f"| {index} | " + " | ".join(f"{label} {c:g}" if isinstance(c, float | int) else str(c) for c in columns) + " |"
    ]
    lines.append("|---|" + "---|" * len(columns))
    for key in lines_of:
        cells = []
        for c in columns:
            values = [v for r in rows if r[index] == key and r[column] == c and (v := value(r)) is not None]
            cells.append(f"{aggregate(values) * spec.get('scale', 1):.{spec.get('digits', 2)}f}" if values else "-")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def exact_rows_table(folder: Path, spec: dict) -> str:
    """`bench exact` rows (exact.jsonl): samplers against exact Gaussian-mixture posteriors (`exact.exact_table`)."""
    from posterior_diffusion.exact import exact_table

    return exact_table(json_lines(folder, spec["rows"]))


def speed_tables(folder: Path, spec: dict) -> str:
    """`bench speed` records (speed.json): each sampler's time against its bare work (`speed.speed_table`)."""
    from posterior_diffusion.speed import speed_table

    return "\n\n".join(speed_table(json.loads((folder / name).read_text())) for name in spec["rows"])


def _flatten(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            yield from _flatten(inner, f"{prefix}[{n}]")
    else:
        yield prefix, value


REPORTS: dict[str, Callable[[Path, dict], str]] = {
    "grid": grid_tables,
    "versus": versus_table,
    "denoise": denoise_tables,
    "record": record_table,
    "pivot": pivot_table,
    "exact": exact_rows_table,
    "calibrations": calibrations_table,
    "coverage": coverage_table,
    "speed": speed_tables,
}


def read_rows_files(folder: Path, names: list[str]) -> list[dict]:
    """The bench rows of the named files of `folder` (deduplicated as `read_rows`); a missing file is an error."""
    rows = {}
    for name in names:
        for r in rows_of(folder / name):
            rows[tuple(r[k] for k in KEY)] = r
    return list(rows.values())


def render_report(folder: str | Path) -> str:
    """The Markdown report of the study in `folder`, from its study.toml and rows. A folder without study.toml, an
    unknown kind or a missing rows file: a one-line ValueError naming it."""
    folder = Path(folder)
    path = folder / STUDY
    if not path.is_file():
        raise ValueError(
            f"'{folder}' is not a study folder: it has no {STUDY} (see posterior_diffusion/bench/studies.py)"
        )
    try:
        study = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    parts = [
        f"# {study.get('title', folder.name)}",
        "",
        "Generated from the rows in this folder by `posterior-diffusion bench report FOLDER` (study.toml says which "
        "tables); do not edit. README.md says what was measured, on what split and machine, and how.",
    ]
    for spec in study.get("tables", []):
        kind = spec.get("kind")
        if kind not in REPORTS:
            raise ValueError(f"{path}: unknown table kind {kind!r}; valid: {', '.join(REPORTS)}")
        missing = [name for name in spec.get("rows", []) if not any(folder.glob(name))]  # a name or a pattern
        if missing or not spec.get("rows"):
            raise ValueError(f"{path}: a {kind} table needs rows files in the folder; missing: {missing or 'rows'}")
        if "heading" in spec:
            parts += ["", f"## {spec['heading']}"]
        parts += ["", f"Rows: {', '.join(spec['rows'])}.", "", REPORTS[kind](folder, spec)]
    return "\n".join(parts) + "\n"


def write_report(folder: str | Path) -> Path:
    """Write `folder`/report.md (`render_report`); returns its path."""
    path = Path(folder) / REPORT
    path.write_text(render_report(folder))
    return path


__all__ = ["REPORTS", "render_report", "write_report"]
