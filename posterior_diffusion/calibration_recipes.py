"""How every shipped calibration file (assets/calibrations) is made: one table of recipes, each a `posterior-diffusion
calibrate` command on the tune split (calibration images) with its coverage measured on the test split (held-out
images), and the command that remakes them when a built-in prior or the `auto` table changes:

    python -m posterior_diffusion.calibration_recipes --data ../shared/data                  # every file
    python -m posterior_diffusion.calibration_recipes --data ../shared/data --only '*_gpu*' --device cuda
    python -m posterior_diffusion.calibration_recipes --list --missing                      # what is not made

A file named auto_<operator>_<budget>[_gray].json is made for what `sampler="auto"` runs on that operator with its
defaults at that budget ("cpu": a CPU's 20 steps; "gpu": the samplers' own steps, asked for with `budget=gpu`, so
it can be made on any device), with the built-in prior for its channels (natural-rgb, or natural-gray for
"_gray"). Where both budgets run the same sampler with the same options (a nonlinear operator keeps its sampler's
steps; DDRM's own steps for denoising are the CPU budget's 20), one file auto_<operator>[_gray].json serves every
device.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from posterior_diffusion.operators import get_operator
from posterior_diffusion.priors.loading import load_prior
from posterior_diffusion.samplers.auto import choose_sampler
from posterior_diffusion.samplers.base import get_sampler
from posterior_diffusion.shipped_calibrations import FOLDER

# Calibration images (tune split) per built-in prior, (folder under the data folder, how many): natural-gray's
# are crops of its training photos, since Kodak24 in gray is the hardest of the gray collections (a factor made on it
# over-covers the others by 2-4 points; assets/bench/shipped_calibrations/README.md); held-out images (test split)
# and the run's counts
CALIBRATION_IMAGES = {"natural-rgb": ("testsets/Kodak24", 12), "natural-gray": ("trainsets/BSD400", 24)}
HELD_OUT_IMAGES = "testsets/McMaster"
COMMON = ["--size", "128", "--num-test-images", "8", "--num-samples", "4", "--quiet"]
# (prior, operator) whose files give clipped pixels one-sided intervals (`calibrate --one-sided`), with their own
# calibration images: where the two-sided intervals missed a held-out collection by more than 3 points (hdr with
# natural-rgb: brighter beyond the clip on McMaster), made on more and more varied tune photos than the prior's
# default, its training photos as natural-gray's (assets/bench/shipped_calibrations/README.md)
ONE_SIDED = {("natural-rgb", "high_dynamic_range"): ("trainsets/CBSD432_subset", 24)}
IMAGE_OPERATORS = (  # the operators `restore` offers for photos, each with its defaults
    "denoise",
    "inpaint_random",
    "inpaint_box",
    "gaussian_blur",
    "motion_blur",
    "super_resolution",
    "high_dynamic_range",
)


@dataclass(frozen=True)
class Recipe:
    """One shipped file: its name (under assets/calibrations), what it is for, its calibration images (folder
    under the data folder) and its `calibrate` arguments beyond the images, COMMON and --out."""

    file: str
    purpose: str
    images: str
    arguments: tuple[str, ...]

    def command(self, data: str, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
        """The `posterior-diffusion calibrate` argument list that writes this file to `out`."""
        images = ["--images", f"{data}/{self.images}", "--test-images", f"{data}/{HELD_OUT_IMAGES}"]
        return ["calibrate", *images, *COMMON, *self.arguments, *extra, "--overwrite", "--out", str(out)]


def _budgets_differ(operator: str, prior) -> bool:
    """Whether `sampler="auto"` runs another sampler or other options on `operator` (its defaults) with `prior` (a
    DiffusionPrior) at the CPU budget than at the GPU budget (`samplers.auto.choose_sampler`)."""
    op = get_operator(operator)
    cpu, gpu = (
        get_sampler(name, **options).to_config()
        for name, options in (choose_sampler(prior, op, on_cpu=True), choose_sampler(prior, op, on_cpu=False))
    )
    return cpu != gpu


def _auto_recipes() -> list[Recipe]:
    made = []
    for gray in (False, True):
        prior = "natural-gray" if gray else "natural-rgb"
        loaded = load_prior(f"builtin:{prior}")
        for operator in IMAGE_OPERATORS:
            for budget in ("cpu", "gpu") if _budgets_differ(operator, loaded) else (None,):
                tags = [*([budget] if budget else []), *(["gray"] if gray else [])]  # in the task and the file name
                task = "-".join([f"auto/{operator}", *tags])
                file = "_".join(["auto", operator, *tags]) + ".json"
                folder, count = ONE_SIDED.get((prior, operator), CALIBRATION_IMAGES[prior])
                arguments = ["--num-images", str(count), "--operator", operator, "--name", task]
                arguments += ["--sampler-param", f"budget={budget}"] if budget else []
                arguments += ["--channels", "1"] if gray else []
                arguments += ["--one-sided"] if (prior, operator) in ONE_SIDED else []
                where = f"on a {budget.upper()}" if budget else "on any device (both budgets run the same)"
                made.append(
                    Recipe(
                        file,
                        f"`restore --operator {operator}` with its defaults {where}, prior {prior}",
                        folder,
                        tuple(arguments),
                    )
                )
    return made


README_BLUR = ["--op-param", "kernel_size=31", "--op-param", "sigma=1.5", "--op-param", "boundary=circular"]


@functools.cache
def recipes() -> tuple[Recipe, ...]:
    """Every shipped file's recipe (the auto files ask `choose_sampler` which budgets differ: a few seconds)."""
    readme = Recipe(
        "readme_gaussian_blur_ddrm.json",
        "the README's first command (gaussian_blur 31 px, sigma 1.5, circular; DDRM-20)",
        CALIBRATION_IMAGES["natural-rgb"][0],
        ("--num-images", "24", "--operator", "gaussian_blur", *README_BLUR, "--sampler", "ddrm"),
    )
    return (readme, *_auto_recipes())


def select(patterns: list[str] | None) -> list[Recipe]:
    """The recipes whose file name matches any of the shell patterns (all without patterns); none is a ValueError."""
    chosen = [r for r in recipes() if not patterns or any(fnmatch.fnmatch(r.file, p) for p in patterns)]
    if not chosen:
        names = ", ".join(r.file for r in recipes())
        raise ValueError(f"no shipped calibration matches {' '.join(patterns)}; files: {names}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    from posterior_diffusion.cli import main as cli_main

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default="../shared/data", help="folder holding testsets/ and trainsets/ (default ../shared/data)"
    )
    parser.add_argument("--only", nargs="+", help="file-name patterns, e.g. 'auto_*_gpu*' (default: every file)")
    parser.add_argument("--out", type=Path, default=FOLDER, help="folder to write (default: the package's)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: calibrate's)")
    parser.add_argument("--missing", action="store_true", help="only the files not yet in --out")
    parser.add_argument("--list", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)
    extra = ("--device", args.device) if args.device else ()
    for recipe in select(args.only):
        if args.missing and (args.out / recipe.file).exists():
            continue
        command = recipe.command(args.data, Path(os.path.relpath(args.out / recipe.file)), extra)
        print(f"# {recipe.file}: {recipe.purpose}\nposterior-diffusion {shlex.join(command)}", flush=True)
        if not args.list and cli_main(command) != 0:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
