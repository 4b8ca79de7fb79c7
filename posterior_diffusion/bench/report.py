"""The bench's tables and figures, computed from the rows alone: summary.md / summary.csv (mean +- std over images
and seeds per task and method), PSNR against NFE and interval coverage against level per task (figures/)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from posterior_diffusion.bench.store import KEY
from posterior_diffusion.figures import save_figure
from posterior_diffusion.metrics import CALIBRATION_COLUMNS, COVERAGE_COLUMNS, COVERAGE_LEVELS

# first in the tables; then the tasks' own metrics, as the rows have them. psnr, ssim, lpips: of the mean of the
# samples; lpips_sample: of the first sample alone (the papers judge perceptual quality on samples); then, for
# samplers with 2 or more samples, how far their spread can be trusted (`metrics.calibration_metrics`)
METRIC_COLUMNS = ("psnr", "ssim", "lpips", "lpips_sample", *CALIBRATION_COLUMNS)
NOT_METRICS = {*KEY, "index", "nfe", "seconds", "peak_mb", "best_of", "dtype", "estimate", "sampler"}


def summary(rows: list[dict]) -> list[dict]:
    """One entry per (task, method): mean and std over images and seeds of each metric, NFE, seconds, peak MB."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    table = []
    for (task, method), sel in groups.items():
        entry = {"task": task, "method": method, "images": len({r["image"] for r in sel}), "runs": len(sel)}
        for metric in metric_columns(rows):
            if all(metric in r for r in sel):
                v = torch.tensor([r[metric] for r in sel], dtype=torch.float64)
                entry[metric] = float(v.mean())
                entry[metric + "_std"] = float(v.std()) if len(v) > 1 else 0.0
        entry["nfe"] = sel[0]["nfe"]
        entry["seconds"] = sum(r["seconds"] for r in sel) / len(sel)
        entry["peak_mb"] = max(r["peak_mb"] for r in sel)
        table.append(entry)
    return table


def metric_columns(rows: list[dict]) -> list[str]:
    """The metrics the rows hold: METRIC_COLUMNS first, then the others (tasks' own, kernel errors) by first use."""
    seen = {k: None for r in rows for k in r if k not in NOT_METRICS}
    return [m for m in METRIC_COLUMNS if m in seen] + [m for m in seen if m not in METRIC_COLUMNS]


def write_summary(out: Path, rows: list[dict]) -> str:
    """summary.md and summary.csv in `out`; returns the Markdown table."""
    table = summary(rows)
    metrics = [m for m in metric_columns(rows) if any(m in e for e in table)]
    header = ["task", "method", *[m.upper() for m in metrics], "NFE", "s / image", "peak MB", "images", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in table:
        cells = [e["task"], e["method"]]
        cells += [f"{e[m]:.3f} +- {e[m + '_std']:.3f}" if m in e else "-" for m in metrics]
        cells += [str(e["nfe"]), f"{e['seconds']:.2f}", f"{e['peak_mb']:.0f}", str(e["images"]), str(e["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    (out / "summary.md").write_text(markdown + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=sorted({k for e in table for k in e}, key=lambda k: (k != "task", k)))
    writer.writeheader()
    writer.writerows(table)
    (out / "summary.csv").write_text(buffer.getvalue())
    return markdown


def cost_figures(out: Path, rows: list[dict]) -> None:
    """Per task: mean PSNR against NFE (log scale; baselines at NFE 0 are drawn at 1) for every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    table = summary(rows)
    for task in sorted({e["task"] for e in table}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for e in (e for e in table if e["task"] == task):
            ax.errorbar(max(e["nfe"], 1), e["psnr"], yerr=e["psnr_std"], fmt="o", capsize=3, label=e["method"])
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image (baselines at 1)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(task)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, folder / f"psnr_vs_nfe_{task}.png", dpi=100)


def calibration_figures(out: Path, rows: list[dict]) -> None:
    """Per task with calibration rows: observed coverage of the central intervals (mean over images) against the
    level, one line per method, and the diagonal of perfect calibration (figures/calibration_TASK.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = COVERAGE_COLUMNS
    table = [e for e in summary(rows) if all(c in e for c in columns)]
    for task in sorted({e["task"] for e in table}):
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="calibrated")
        for e in (e for e in table if e["task"] == task):
            ax.plot(COVERAGE_LEVELS, [e[c] for c in columns], marker="o", label=e["method"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("interval level (expected coverage)")
        ax.set_ylabel("observed coverage")
        ax.set_title(task)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / "figures" / f"calibration_{task}.png", dpi=100)
