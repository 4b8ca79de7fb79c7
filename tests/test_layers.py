"""The architecture holds: imports only run down the layers, the general engine never imports an application,
there are no import cycles, and a sampler defined in one file joins every tool with no other edit."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # folder -> installed package name (pyproject's package-dir mapping)
    "posterior_diffusion": "posterior_diffusion",
    "operators": "posterior_diffusion.operators",
    "samplers": "posterior_diffusion.samplers",
}
# operators <- priors <- samplers <- api <- bench / cli; a module may import its own layer or lower ones
LAYERS = [
    ("foundation", ["registry", "tensor_utils", "guards", "images", "metrics", "perceptual", "figures"]),
    ("operators", ["operators", "tasks", "baselines"]),
    ("priors", ["priors"]),
    ("samplers", ["samplers"]),
    ("api", ["api", "calibration", "posterior_mean", "shipped_calibrations"]),
    (
        "tools",
        [
            "calibrate_run",
            "bench",
            "exact",
            "speed",
            "outputs",
            "cli",
            "cli_calibrate",
            "cli_options",
            "cli_inputs",
            "train",
            "training_loop",
            "train_autoencoder",
        ],
    ),
    (
        "tools",
        ["prior_benchmark", "noise_benchmark", "calibration_recipes", "applications", ""],
    ),  # "": the package's __init__, which loads applications
]
APPLICATIONS = ["eht"]


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The package modules `name` imports, inside functions too; imports under `if TYPE_CHECKING:` (annotations only,
    never run) do not count."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    targets = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {_owner(t) for t in targets if _owner(t)}


def _owner(target: str) -> str | None:
    """The package module a dotted import target names (an attribute import names its module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> tuple[int, str]:
    """(rank, what) of a module: its layer, or the application it belongs to."""
    rest = module.removeprefix("posterior_diffusion").lstrip(".")
    head = rest.split(".", 1)[0]
    if head in APPLICATIONS:
        return len(LAYERS), f"application {head}"
    for rank, (what, heads) in enumerate(LAYERS):
        if head in heads:
            return rank, what
    raise AssertionError(f"module {module} has no layer: add it to LAYERS in {Path(__file__).name}")


def test_imports_run_down_the_layers_and_never_into_an_application():
    offences = []
    for module in MODULES:
        rank, what = _layer(module)
        for target in _imports(module):
            target_rank, target_what = _layer(target)
            if target_rank > rank:
                offences.append(f"{module} ({what}) imports {target} ({target_what})")
    assert not offences, "\n".join(offences)


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a sampler module that imports the bench is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from posterior_diffusion.bench import run_bench\n")
    monkeypatch.setitem(MODULES, "posterior_diffusion.samplers.bad", bad)
    with pytest.raises(AssertionError, match=r"samplers\.bad \(samplers\) imports posterior_diffusion\.bench"):
        test_imports_run_down_the_layers_and_never_into_an_application()


def test_no_import_cycles():
    """Not even through an import inside a function: a module and what it imports form a one-way graph."""
    graph = {module: _imports(module) - {module} for module in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target] if target in path else [module, target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_cycle_check_catches_one_through_a_function_level_import(tmp_path, monkeypatch):
    """The check itself can fail: the calibration maths importing the API inside a function is a cycle."""
    bad = tmp_path / "calibration.py"
    bad.write_text(
        MODULES["posterior_diffusion.calibration"].read_text()
        + "\n\ndef f():\n    from posterior_diffusion.api import sample_posterior\n"
    )
    monkeypatch.setitem(MODULES, "posterior_diffusion.calibration", bad)
    with pytest.raises(AssertionError, match=r"import cycle: .*posterior_diffusion\.api"):
        test_no_import_cycles()


def test_applications_are_loaded_by_entry_point():
    from posterior_diffusion.applications import load_applications
    from posterior_diffusion.tasks import TASKS

    assert "posterior_diffusion.eht" in load_applications()
    assert TASKS["black_hole"].metrics is not None  # registered by the application, not by general code


def test_every_package_folder_is_installed():
    """A non-editable install ships every folder with an __init__.py: pyproject's package list names each one
    (a folder left out imports in a checkout and is missing from a user's `pip install .`)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {**PACKAGES, "assets": "posterior_diffusion.assets"}
    on_disk = {
        ".".join([package, *init.parent.relative_to(ROOT / folder).parts])
        for folder, package in folders.items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"listed in pyproject.toml, no such package: {sorted(listed - on_disk)}"


# A sampler written in this file alone: x0_hat of a noisy pseudo-inverse, `steps` times.
@dataclass(frozen=True)
class TweedieConfig:
    steps: int = 2
    t_fraction: float = 0.3  # the denoiser's step as a fraction of T


@pytest.fixture
def tiny_sampler():
    from posterior_diffusion.samplers.base import SAMPLERS, Sampler
    from posterior_diffusion.tensor_utils import randn_stacked

    class TweedieSampler(Sampler):
        """Tweedie denoising of A^+ y plus noise, `steps` times (a test sampler)."""

        Config = TweedieConfig
        needs_operator = "linear"
        SMOKE_OPTIONS: ClassVar[dict] = {"steps": 1}
        EXACT_OPTIONS: ClassVar[dict | None] = {"steps": 2}

        def nfe(self, prior) -> int:
            return self.config.steps

        def sample_chunk(self, prior, op, y, image_shape, generators, step_hook):
            t = int(self.config.t_fraction * prior.num_timesteps)
            a = float(prior.alphas_cumprod[t])
            x = op.pinv(y).float()
            for i in range(self.config.steps):
                noise = randn_stacked(generators, image_shape, prior.device)
                with torch.inference_mode():
                    x = prior.predict(a**0.5 * x + (1 - a) ** 0.5 * noise, t).x0_hat.float()
                step_hook({"i": i, "t": t, "x": x, "x0_hat": x})
            return x, {}

    with SAMPLERS.registered("test_tweedie", TweedieSampler) as cls:
        yield cls


def test_a_new_sampler_joins_list_exact_report_bench_and_speed(tiny_sampler, tmp_path, capsys, tiny_unet_folder):
    """Registered from this file alone, the sampler appears in every tool with no edit to the package."""
    import numpy as np
    from PIL import Image

    from posterior_diffusion.bench import BenchConfig, run_bench
    from posterior_diffusion.cli import main
    from posterior_diffusion.exact import report, report_settings
    from posterior_diffusion.priors import load_prior
    from posterior_diffusion.speed import speed_rows

    assert main(["list"]) == 0
    assert "test_tweedie" in capsys.readouterr().out

    settings = report_settings()
    assert settings["test_tweedie"] == {"steps": 2}
    table = report({"test_tweedie": settings["test_tweedie"]}, num_samples=8)
    assert table.count("| test_tweedie |") == 5  # every exact case has a linear operator

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / "0.png")
    config = BenchConfig(
        images=str(images),
        out=str(tmp_path / "bench"),
        prior=str(tiny_unet_folder),
        tasks=("random_inpaint",),
        methods=("test_tweedie",),
        size=16,
        steps=1,
        device="cpu",
        lpips="none",
    )
    (row,) = run_bench(config, progress=False)
    assert row["method"] == "test_tweedie" and row["nfe"] == 1 and np.isfinite(row["psnr"])

    prior = load_prior(tiny_unet_folder, device="cpu")
    (speed,) = speed_rows(prior, ["test_tweedie"], [1], size=16, steps=2, repeats=1)
    assert speed["sampler"] == "test_tweedie" and speed["nfe"] == 2
