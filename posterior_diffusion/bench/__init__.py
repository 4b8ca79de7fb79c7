"""`posterior-diffusion bench`: tasks x methods x images -> per-image rows, a summary table and figures.

Methods are samplers, `auto` (what sample_posterior picks) and the classical baselines (`baselines.BASELINES`:
pinv, tikhonov, bicubic, harmonic, and those applications add), so every table shows what the diffusion prior
buys. A method that does not apply to a task (e.g. bicubic for deblurring) is skipped, with one line saying why.
Method names and every option of every method are checked before any work.

One job per module: `config` (BenchConfig, the CLI's options), `methods` (the Method protocol: baselines,
samplers, auto; tuning on --tune-images), `plan` (checks, the applicable methods per task), `run` (sharded,
resumable execution and scoring), `store` (the rows files and the folder lock), `report` (summary tables and
figures from the rows alone), `studies` (`bench report FOLDER`: a study's report regenerated from its rows).

Outputs in `out/`: rows-*.jsonl, summary.md and summary.csv (mean +- std over images and seeds), tuned.json (the
tuned weights), and figures/ (per task and method: truth | measurement | mean | std | samples of the first image
with the first seed, or the task's own figure; per task: PSNR vs NFE and interval coverage, from the rows).
"""

from posterior_diffusion.bench.config import BenchConfig
from posterior_diffusion.bench.methods import AUTO, TUNE_CROPS, TUNE_SEED, TUNED, get_method
from posterior_diffusion.bench.report import metric_columns, summary, write_summary
from posterior_diffusion.bench.run import run_bench
from posterior_diffusion.bench.store import LOCK_NAME, BenchFolderBusy, read_rows

__all__ = [
    "AUTO",
    "LOCK_NAME",
    "TUNED",
    "TUNE_CROPS",
    "TUNE_SEED",
    "BenchConfig",
    "BenchFolderBusy",
    "get_method",
    "metric_columns",
    "read_rows",
    "run_bench",
    "summary",
    "write_summary",
]
