"""Samplers against exact posteriors: Gaussian-mixture priors, linear operators, Gaussian noise.

Each `ExactCase` is a prior, an operator and measurements whose posterior is known exactly; `evaluate` runs a
sampler on it and compares its samples with exact posterior samples:

    mean_err      ||mean(samples) - exact mean|| / ||exact mean||   (prior_err: the same for the prior mean)
    std_ratio     per-pixel std of the samples / exact posterior std, averaged over pixels
    sw            sliced Wasserstein-2 distance to as many exact samples (sw_prior: for prior samples)
    coverage      {level: fraction of exact posterior samples inside the sampler's pixelwise central interval} at
                  levels 50 / 80 / 90 / 95 % (`metrics.interval_coverage`, as the image bench; ideal: the level;
                  coverage90 is the 90 % one)

    posterior-diffusion bench exact --out bench/    # the table for every sampler with EXACT_OPTIONS
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posterior_diffusion.metrics import COVERAGE_LEVELS, interval_coverage, sliced_wasserstein
from posterior_diffusion.operators import Operator, get_operator
from posterior_diffusion.priors import GaussianMixturePrior
from posterior_diffusion.samplers import Sampler, get_sampler
from posterior_diffusion.samplers.base import SAMPLERS


def random_gaussian_mixture(shape=(1, 8, 8), components: int = 3, seed: int = 0, spread: float = 0.5):
    """A K-component mixture over images of `shape`: means spread * N(0, I), covariances 0.05 W W^T / d + 0.01 I."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    means = spread * torch.randn(components, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(components):
        w = torch.randn(d, d, generator=g, dtype=torch.float64)
        covs.append(0.05 * w @ w.T / d + 0.01 * torch.eye(d, dtype=torch.float64))
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixturePrior(weights, means, torch.stack(covs), image_shape=shape)


@dataclass
class ExactCase:
    """A prior, an operator, the clean images x (B, C, H, W) and their measurements y."""

    name: str
    prior: GaussianMixturePrior
    op: Operator
    x: torch.Tensor
    y: torch.Tensor


def _case(name: str, prior: GaussianMixturePrior, op: Operator, n: int, seed: int) -> ExactCase:
    x = prior.sample(n, torch.Generator().manual_seed(seed))
    return ExactCase(name, prior, op, x, op.measure(x, torch.Generator().manual_seed(seed + 1)))


def standard_cases(num_measurements: int = 4, seed: int = 11) -> list[ExactCase]:
    """3-component mixtures on 1x8x8 images with a circular blur, random inpainting and average-pool SR x2
    (sigma_y = 0.1); a 2-component mixture on 3x4x4 images with strong noise (denoising, sigma_y = 0.3); and a
    bimodal posterior: two components that differ only in the unobserved pixels."""
    gmm = random_gaussian_mixture()
    cases = [
        _case(
            "blur",
            gmm,
            get_operator("gaussian_blur", kernel_size=5, sigma=1.0, boundary="circular", noise_sigma=0.1),
            num_measurements,
            seed,
        ),
        _case(
            "inpaint",
            gmm,
            get_operator("inpaint_random", image_size=8, missing=0.5, noise_sigma=0.1),
            num_measurements,
            seed,
        ),
        _case(
            "sr2",
            gmm,
            get_operator("super_resolution", factor=2, method="average", noise_sigma=0.1),
            num_measurements,
            seed,
        ),
    ]
    rgb = random_gaussian_mixture(shape=(3, 4, 4), components=2, seed=4)
    cases.append(_case("denoise_rgb", rgb, get_operator("denoise", noise_sigma=0.3), num_measurements, seed))
    means = torch.tensor([[0.0, 0.0, 0.8, 0.8], [0.0, 0.0, -0.8, -0.8]], dtype=torch.float64)
    bimodal = GaussianMixturePrior(
        [0.3, 0.7], means, 0.05 * torch.eye(4, dtype=torch.float64).expand(2, 4, 4), image_shape=(1, 1, 4)
    )
    hide_right = get_operator("inpaint_box", image_size=[1, 4], box_size=[1, 2], top=0, left=2, noise_sigma=0.1)
    cases.append(_case("bimodal", bimodal, hide_right, num_measurements, seed))
    return cases


def evaluate(sampler: Sampler, case: ExactCase, num_samples: int = 64, seed: int = 0) -> dict[str, float]:
    """Run `sampler` on `case` and compare with exact posterior samples (see the module docstring)."""
    post = case.prior.posterior(case.op, case.y)
    start = time.perf_counter()
    out = sampler(case.prior, case.op, case.y, num_samples=num_samples, seed=seed)
    seconds = time.perf_counter() - start
    samples = out.samples
    exact = post.sample(num_samples, torch.Generator().manual_seed(seed + 1))
    prior_draws = case.prior.sample(num_samples, torch.Generator().manual_seed(seed + 2))
    scale = post.mean.norm()
    coverage = interval_coverage(samples, exact).mean(0)
    sw = [
        sliced_wasserstein(samples[b], exact[b], generator=torch.Generator().manual_seed(b))
        for b in range(len(samples))
    ]
    sw_prior = [
        sliced_wasserstein(prior_draws, exact[b], generator=torch.Generator().manual_seed(b))
        for b in range(len(samples))
    ]
    return {
        "mean_err": float((samples.mean(1) - post.mean).norm() / scale),
        "prior_err": float((case.prior.mean - post.mean).norm() / scale),
        "std_ratio": float((samples.std(1) / post.std.clamp(min=1e-8)).mean()),
        "sw": float(torch.stack(sw).mean()),
        "sw_prior": float(torch.stack(sw_prior).mean()),
        "coverage": dict(zip(COVERAGE_LEVELS, coverage.tolist(), strict=True)),
        "coverage90": float(coverage[COVERAGE_LEVELS.index(0.9)]),
        "nfe": out.nfe,
        "seconds": seconds,
    }


def report_settings() -> dict[str, dict]:
    """{sampler: options} of the report: every registered sampler's `EXACT_OPTIONS` (a few seconds per case on a
    CPU; the papers' defaults are slower), except those for which the report does not apply (None)."""
    return {name: cls.EXACT_OPTIONS for name, cls in SAMPLERS.items() if cls.EXACT_OPTIONS is not None}


def report_rows(settings: dict[str, dict] | None = None, num_samples: int = 64, progress: bool = False) -> list[dict]:
    """`evaluate` for each sampler and case it supports, one row each ({"sampler", "settings", "case", ...the
    metrics}); `progress`: a bar over the pairs (stderr), naming the one in progress (minutes on a CPU)."""
    from tqdm.auto import tqdm

    settings = report_settings() if settings is None else settings
    cases = standard_cases()
    pairs = []
    for name, options in settings.items():
        sampler = get_sampler(name, **options)
        for case in cases:
            try:
                sampler.check(case.prior, case.op)
            except ValueError:
                continue
            pairs.append((name, options, sampler, case))
    rows = []
    bar = tqdm(pairs, desc="bench exact", unit="case", disable=not progress)
    for name, options, sampler, case in bar:
        bar.set_postfix_str(f"{name} on {case.name}")
        result = evaluate(sampler, case, num_samples)
        result["coverage"] = {str(level): value for level, value in result["coverage"].items()}
        settings_text = ", ".join(f"{k}={v}" for k, v in options.items())
        rows.append({"sampler": name, "settings": settings_text, "case": case.name} | result)
    return rows


def exact_table(rows: list[dict]) -> str:
    """The Markdown table of `report_rows` (what `bench report` shows for a study of kind "exact")."""
    lines = [
        "| sampler | settings | case | mean err (prior) | std ratio | SW (prior) | coverage 50 / 80 / 90 / 95 % "
        "| NFE | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['settings']} | {r['case']} | "
            f"{r['mean_err']:.3f} ({r['prior_err']:.3f}) | {r['std_ratio']:.2f} | "
            f"{r['sw']:.3f} ({r['sw_prior']:.3f}) | {' / '.join(f'{c:.2f}' for c in r['coverage'].values())} | "
            f"{r['nfe']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def report(settings: dict[str, dict] | None = None, num_samples: int = 64, progress: bool = False) -> str:
    """The Markdown table of `report_rows`."""
    return exact_table(report_rows(settings, num_samples, progress))


@dataclass
class ExactConfig:
    """Settings of `posterior-diffusion bench exact` (one --option per field)."""

    out: str = field(metadata={"help": "output folder (exact.md)"})
    num_samples: int = field(default=64, metadata={"help": "samples per measurement, sampler's and exact alike"})


def run_exact(cfg: ExactConfig, progress: bool = True) -> str:
    """The report of every sampler with EXACT_OPTIONS: its rows to out/exact.jsonl, its table to out/exact.md (and
    from the rows by `bench report`, kind "exact"); returns the table."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = report_rows(num_samples=cfg.num_samples, progress=progress)
    (out / "exact.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = exact_table(rows)
    (out / "exact.md").write_text(table + "\n")
    return table
