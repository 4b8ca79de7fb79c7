"""What every sampler shares: the registry, capability checks, per-chain generators, chunked batching,
progress, and the divergence guard (NaN, explosion, saturation). A sampler module only writes its config and
`sample_chunk`.

    sampler = get_sampler("dps", steps=1000, step_size=0.5)
    out = sampler(prior, op, y, num_samples=4, seed=0)   # out.samples: (B, S, C, H, W)

Each of the B measurements gets S chains; chain (b, s) draws all its noise from its own generator seeded by
(seed, b, s), so results do not depend on batch_size, on S or on the other measurements in the call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from posterior_diffusion.operators.base import Operator
from posterior_diffusion.operators.noise import GaussianNoise
from posterior_diffusion.priors.base import DiffusionPrior, noise_levels
from posterior_diffusion.priors.cpu_memory import reuse_freed_memory
from posterior_diffusion.registry import Registry
from posterior_diffusion.tensor_utils import chunk_slices, make_generators, seed_for

from .long_run import LongRunNotice
from .tail_mean import TailMean

SAMPLERS = Registry("sampler")
register_sampler = SAMPLERS.register  # class decorator: @register_sampler("dps")
list_samplers = SAMPLERS.names
sampler_class = SAMPLERS.get


def get_sampler(name: str, preset: str | None = None, **options) -> Sampler:
    """Build sampler `name`; `preset` (a task name of the paper's configs) sets defaults that `options` override."""
    return sampler_class(name)(preset=preset, **options)


def sampler_from_config(config: dict) -> Sampler:
    """Rebuild a sampler from `sampler.to_config()` (also after a JSON round trip: lists become tuples)."""
    config = dict(config)
    name, preset = config.pop("name"), config.pop("preset", None)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return get_sampler(name, preset=preset, **options)


def register_preset(name: str, preset: str, options: dict) -> None:
    """Add preset `preset` (sampler options) to sampler `name`: how an application ships its tuned settings
    (e.g. `posterior_diffusion.eht`'s `black_hole` presets) without the sampler's module knowing it."""
    cls = sampler_class(name)
    if preset in cls.PRESETS:
        raise ValueError(f"sampler {name!r} already has a preset {preset!r}")
    cls.Config(**options)  # an unknown or invalid option fails here
    cls.PRESETS = {**cls.PRESETS, preset: dict(options)}  # the class's own dict: never a parent's


def sampler_applies(name: str, prior, op, preset: str = "") -> bool:
    """Whether sampler `name` accepts (prior, op), built with `preset` ("" for none; a task's preset can supply
    what the operator needs, e.g. PnP-ULA's Lipschitz constant for closure data). An unknown preset raises."""
    sampler = get_sampler(name, **({"preset": preset} if preset else {}))
    try:
        sampler.check(prior, op)
    except ValueError:
        return False
    return True


@dataclass
class SamplerOutput:
    """samples (B, S, C, H, W) float32 in about [-1, 1]; nfe network evaluations per chain; extras (e.g. kernel)."""

    samples: torch.Tensor
    nfe: int
    extras: dict[str, Any] = field(default_factory=dict)
    tail_mean: torch.Tensor | None = None  # (B, S, C, H, W): each chain's late x0_hat averaged (`tail_mean`)


class NonFiniteError(FloatingPointError):
    """A sampler's state became NaN or Inf."""


class DivergenceError(FloatingPointError):
    """A sampler's state exploded (|x| >= `DivergenceGuard.bound`) or every pixel of a sample sat at the clip value."""


class DivergenceGuard:
    """Records, on the device, each step's largest |x| and whether some chain sits entirely at the clip value
    (every element exactly -1 or +1: what a clamp leaves of a run pushed out of range); reads the flags on the host
    only every `every` steps (no per-step host-device sync) and at the end, and names the first bad step.

    A state is bad when it is NaN/Inf (`NonFiniteError`), when |x| >= `bound` (`DivergenceError`: images are on
    [-1, 1] and diffusion states and latents are about unit scale, so 1e3 is far outside any run that works), or
    when a chain is saturated (`DivergenceError`; exactly +-1 everywhere, which a continuous state never is).
    `sampler` and `step_option` (the option that sets the step length, or "" for none) make the message.
    The base sampler owns one per chunk and feeds it from the step hook."""

    bound: ClassVar[float] = 1e3

    def __init__(self, sampler: str = "sampling", step_option: str = "", every: int = 50):
        self.pending: list[tuple[int | str, torch.Tensor]] = []  # (step, (2,) float on the device)
        self.sampler, self.step_option, self.every = sampler, step_option, every

    def update(self, i: int | str, x: torch.Tensor) -> None:
        """Record step i's state x (n, ...) (n chains); read the pending records every `every` steps."""
        magnitude = x.detach().abs()
        saturated = (magnitude == 1).flatten(1).all(1).any()
        self.pending.append((i, torch.stack([magnitude.amax().float(), saturated.float()])))  # amax keeps NaN
        if len(self.pending) >= self.every:
            self.check()

    def check(self) -> None:
        """Raise for the first bad step among the pending ones."""
        if not self.pending:
            return
        steps, records = zip(*self.pending, strict=True)
        self.pending = []
        records = torch.stack(records).cpu()  # the one host-device sync
        largest, saturated = records[:, 0], records[:, 1] > 0
        bad = ~torch.isfinite(largest) | (largest >= self.bound) | saturated
        if not bad.any():
            return
        k = int(bad.nonzero()[0])
        where = f"step {steps[k]}" if isinstance(steps[k], int) else steps[k]
        lower = f"a smaller {self.step_option} or more steps" if self.step_option else "more steps"
        if not torch.isfinite(largest[k]):
            raise NonFiniteError(f"{self.sampler} produced NaN/Inf at {where}; try dtype=float32, {lower}")
        if largest[k] >= self.bound:
            raise DivergenceError(
                f"{self.sampler} diverged at {where}: |x| reached {float(largest[k]):.3g} (images are on [-1, 1]); "
                f"try {lower}"
            )
        raise DivergenceError(
            f"{self.sampler} saturated at {where}: every pixel of a sample is exactly -1 or +1 (the clip value); "
            f"try {lower}"
        )


class Sampler:
    """Base class. Subclasses set `Config` (a frozen dataclass with cited defaults, whose step budget is `steps`),
    `PRESETS`, the capabilities they need, `SMOKE_OPTIONS` and `EXACT_OPTIONS`, and implement `sample_chunk` and
    `nfe`. The base class owns everything else: capability checks, per-chain generators, chunking, progress and
    the divergence guard."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    PRESETS: ClassVar[dict[str, dict]] = {}
    # the cheapest options that run every branch of the algorithm (the test suite's end-to-end runs)
    SMOKE_OPTIONS: ClassVar[dict]
    # options of the exact-posterior report (`posterior_diffusion.exact`): a few seconds per case on a CPU;
    # None where the report does not apply (blind samplers, latent-only samplers: its priors are pixel mixtures)
    EXACT_OPTIONS: ClassVar[dict | None]
    needs_space: ClassVar[str] = "pixel"  # "pixel", "latent" or "any"
    needs_operator: ClassVar[str] = "differentiable"  # "differentiable", "linear" or "svd"
    needs_gaussian_noise: ClassVar[bool] = False  # True: the algorithm uses sigma_y of Gaussian measurement noise
    samples_posterior: ClassVar[bool] = True  # False: a mode-seeking (variational) estimate, not posterior draws
    blind: ClassVar[bool] = False  # True: estimates operator parameters too (returned in extras)
    weighs_noise_level: ClassVar[bool] = True  # False: the data term ignores sigma_y (DPS, RED-Diff)
    network_gradient: ClassVar[bool] = False  # True: each step backpropagates through the network (DPS)
    step_option: ClassVar[str] = ""  # the option whose decrease shortens the steps (named when a run diverges)
    # True: its step hook's x0_hat is the denoiser's estimate at step t, and each chain's late ones averaged give
    # a better mean than its final draw (`tail_mean`; measured on tune crops before a sampler opts in)
    reports_tail_mean: ClassVar[bool] = False
    # candidate values of the options that `bench` tunes per task on other images for the method "NAME:tuned"
    TUNE_GRID: ClassVar[dict[str, tuple]] = {}

    def __init__(self, preset: str | None = None, **options):
        if preset is not None and preset not in self.PRESETS:
            raise ValueError(
                f"unknown preset {preset!r} for {self.name}; valid: {', '.join(sorted(self.PRESETS)) or 'none'}"
            )
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for sampler {self.name!r}; valid: {', '.join(sorted(fields))}"
            )
        self.preset = preset
        self.config = self.Config(**{**self.PRESETS.get(preset, {}), **options})

    def to_config(self) -> dict:
        """{"name", "preset", every config field}: `sampler_from_config` rebuilds the same sampler."""
        return {"name": self.name, "preset": self.preset, **dataclasses.asdict(self.config)}

    @property
    def steps(self) -> int:
        """The step budget (every sampler's config names it `steps`)."""
        return self.config.steps

    def nfe(self, prior: DiffusionPrior) -> int:
        """Network evaluations per chain with this prior's schedule."""
        raise NotImplementedError

    @property
    def chains_per_measurement(self) -> int:
        """Chains that run together for one measurement, whatever `num_samples` (MCGdiff's particles; 1 here):
        each network call takes this many states per measurement (the speed benchmark's bare work)."""
        return 1

    def own_work(self, prior: DiffusionPrior, op: Operator, y: torch.Tensor, x0: torch.Tensor):
        """The algorithm's own work besides the network in one run, for the speed benchmark: (fn, calls, what) with
        fn(x0) one bare call of it on states x0 (B, ...) and measurements y (B, ...), or None where there is none."""
        return None

    def check(self, prior: DiffusionPrior, op: Operator) -> None:
        """Refuse an incompatible prior/operator before any work, saying what works."""
        if not _works_in(self.needs_space, prior.space):
            works = [name for name in list_samplers() if _works_in(sampler_class(name).needs_space, prior.space)]
            raise ValueError(
                f"{self.name} needs a {self.needs_space}-space prior; this prior is {prior.space}. "
                f"Samplers that work with a {prior.space} prior: {', '.join(works) or 'none'}"
            )
        needs = self.needs_operator
        ok = {"differentiable": True, "linear": op.is_linear, "svd": op.has_svd}[needs]
        if not ok:
            from posterior_diffusion.operators import describe_capable

            what = "linear operator with an SVD (spectral form)" if needs == "svd" else f"{needs} operator"
            raise ValueError(
                f"{self.name} needs a {what}; '{op.name}' with these settings is not one. "
                f"Operators that work: {describe_capable(needs)}"
            )
        if self.needs_gaussian_noise and not isinstance(op.noise, GaussianNoise):
            raise ValueError(f"{self.name} needs Gaussian measurement noise (noise='gaussian'), got '{op.noise.name}'")

    def __call__(
        self,
        prior: DiffusionPrior,
        op: Operator,
        y: torch.Tensor,
        num_samples: int = 1,
        seed: int = 0,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        image_shape: tuple[int, ...] | None = None,
        callback: Callable[[dict], None] | None = None,
        progress: bool = False,
        measurement_ids: Sequence[int] | None = None,
        settings_fixed: bool = False,
    ) -> SamplerOutput:
        """Sample `num_samples` posterior draws per measurement.

        Args:
            y: (B, *measurement_shape), already validated (`sample_posterior` validates and batches).
            seed: global seed; chain (b, s) uses seed_for(seed, measurement_ids[b], s). A `generator` instead
                draws the seed.
            measurement_ids: one integer per measurement (default 0..B-1), e.g. the index of the image in a data
                set, so that a measurement's samples do not depend on which others share the call.
            batch_size: chains per network call (default: all).
            image_shape: (C, H, W) of x; default op.image_shape(measurement shape).
            callback: called after every step with {"i", "t", "x", "x0_hat", ...} of the current chunk ("nfe": the
                step's network evaluations when it is not 1). Each step's x is checked for NaN/Inf, explosion and
                saturation (`DivergenceGuard`).
            settings_fixed: this sampler, its options and num_samples are a calibration file's, so a long run's
                notice suggests only a GPU (`LongRunNotice`).
        """
        from tqdm.auto import tqdm

        self.check(prior, op)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if generator is not None:
            seed = int(torch.randint(2**62, (1,), generator=generator))
        y = y.to(prior.device)
        image_shape = tuple(image_shape or op.image_shape(tuple(y.shape[1:])))
        prior = prior.for_image_shape(image_shape)  # a latent prior's view that decodes to this size
        prior.prepare(gradient=self.network_gradient)  # the network's layout for this run (UNetPrior.prepare)
        b, s = y.shape[0], num_samples
        ids = list(range(b)) if measurement_ids is None else [int(i) for i in measurement_ids]
        if len(ids) != b:
            raise ValueError(f"measurement_ids has {len(ids)} entries for {b} measurements")
        seeds = [seed_for(seed, i, j) for i in ids for j in range(s)]
        y_chains = y.repeat_interleave(s, dim=0)
        chunks = list(chunk_slices(b * s, batch_size))
        nfe = self.nfe(prior)
        bar = tqdm(total=nfe * len(chunks), disable=not progress, desc=self.name, unit="nfe")
        steps = getattr(self.config, "steps", None)
        notice = LongRunNotice(self.name, steps, nfe * len(chunks), prior.device.type == "cuda", s, settings_fixed)

        tails_counted = self.reports_tail_mean and prior.space == "pixel"
        levels = noise_levels(prior.alphas_cumprod).tolist() if tails_counted else []
        samples, extras, tails = [], [], []
        with reuse_freed_memory(prior.device), bar:  # photo-size activations: freed memory reused on a CPU
            for chunk in chunks:
                guard = DivergenceGuard(self.name, self.step_option)
                tail = TailMean(levels) if tails_counted else None

                def step_hook(info: dict, guard=guard, tail=tail) -> None:
                    guard.update(info["i"], info["x"])
                    if tail is not None:
                        tail.add(info)
                    bar.update(info.get("nfe", 1))
                    notice.update(info.get("nfe", 1))
                    if callback is not None:
                        callback(info)

                generators = make_generators(seeds[chunk], device=prior.device)
                x, extra = self.sample_chunk(prior, op, y_chains[chunk], image_shape, generators, step_hook)
                guard.update("the end", x)
                guard.check()
                samples.append(x.float())
                extras.append(extra)
                tails.append(tail.mean() if tail is not None else None)
        out = torch.cat(samples).reshape(b, s, *image_shape)
        merged = {k: torch.cat([e[k] for e in extras]).reshape(b, s, *extras[0][k].shape[1:]) for k in extras[0]}
        tail_mean = None if any(t is None for t in tails) else torch.cat(tails).reshape(b, s, *image_shape)
        return SamplerOutput(samples=out, nfe=nfe, extras=merged, tail_mean=tail_mean)

    def sample_chunk(self, prior, op, y, image_shape, generators, step_hook) -> tuple[torch.Tensor, dict]:
        """Run the algorithm on n chains. y: (n, *meas), one generator per chain; step_hook(info) after every step
        with at least {"i": step, "x": the state (n, ...)} (progress, callback and the divergence guard). Returns
        x (n, C, H, W) and extras {name: (n, ...) tensor}."""
        raise NotImplementedError


def _works_in(needs_space: str, space: str) -> bool:
    """Whether a sampler declaring `needs_space` ("pixel", "latent" or "any") runs on a prior of `space`."""
    return needs_space in ("any", space)


def check_box(box) -> None:
    """A sampler's `box` option: a pair of numbers low < high (a one-line ValueError showing how to write one)."""
    numbers = isinstance(box, (tuple, list)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
    )
    if not numbers or len(box) != 2 or not box[0] < box[1]:
        raise ValueError(f"box must be [low, high] with low < high (--sampler-param box=[-1,1]); got {box!r}")


def validate_measurement(y: torch.Tensor, op: Operator, image_shape) -> None:
    """Check a batch of measurements y (B, *meas) against the operator and image shape: shape, finite, range."""
    op.check_image_shape(tuple(image_shape))
    meas_shape = tuple(op.measurement_shape(tuple(image_shape)))
    if tuple(y.shape[1:]) != meas_shape:
        raise ValueError(
            f"y has shape {tuple(y.shape[1:])} per measurement but the operator gives {meas_shape} "
            f"for images of shape {tuple(image_shape)}"
        )
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or Inf")
    op.check_measurement_values(y)
