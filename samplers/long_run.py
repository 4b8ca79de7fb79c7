"""One line before a long run: a run predicted to take more than `LONG_RUN_SECONDS` says how long and what would
be faster (fewer steps, fewer samples, the CPU budget's sampler, a GPU; only a GPU where a calibration file fixes the
rest), once: after its first step where that step alone predicts more than `FIRST_STEP_MARGIN` times the limit (a
photo-size image on a CPU core), else after `TIMED_STEPS` more steps.

    notice = LongRunNotice("dps", steps=1000, total_nfe=4000, on_gpu=False, num_samples=4)
    notice.update(nfe)   # from the step hook, with each step's network evaluations
"""

from __future__ import annotations

import time
import warnings

from .budgets import CPU_STEPS

LONG_RUN_SECONDS = 600.0  # ten minutes
TIMED_STEPS = 3  # the steps timed after the first one (which pays for warm-up) before the estimate
FIRST_STEP_MARGIN = 2.0  # the first step, warm-up included, may overestimate; past twice the limit it cannot matter


class LongRunWarning(UserWarning):
    """The notice's category: a caller whose runs are long by design (the bench) ignores it by this name."""


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 55 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class LongRunNotice:
    """Times the first step of a run and the `TIMED_STEPS` after it (one host clock read per step, no device sync)
    and warns once when total_nfe network evaluations at that pace exceed LONG_RUN_SECONDS (after the first step:
    FIRST_STEP_MARGIN times it, said as "up to": the warm-up makes a first step slower than the rest, e.g. 136 s
    against 83 s for a 1024x768 photo on a CPU core); silent after that. Made just before the run's first step.

    Args:
        sampler: its name, for the message.
        steps: its `steps` option, from which a budget that fits LONG_RUN_SECONDS is suggested.
        total_nfe: network evaluations of the whole run (all chunks).
        on_gpu: whether the network already runs on a GPU (else a GPU is suggested).
        num_samples: samples per measurement; above 1, one sample is suggested (the network's time grows with its
            batch, so one sample takes about 1 / num_samples of the time).
        settings_fixed: the sampler, steps and sample count are a calibration file's (`sample_posterior` refuses
            others), so only a GPU is suggested.
    """

    def __init__(
        self,
        sampler: str,
        steps: int | None,
        total_nfe: int,
        on_gpu: bool,
        num_samples: int = 1,
        settings_fixed: bool = False,
    ):
        self.sampler, self.steps, self.total_nfe, self.on_gpu = sampler, steps, total_nfe, on_gpu
        self.num_samples, self.settings_fixed = num_samples, settings_fixed
        self.created = time.perf_counter()
        self.start: float | None = None
        self.done_steps, self.timed_nfe, self.warned = 0, 0, False

    def update(self, nfe: int) -> None:
        """After a step with `nfe` network evaluations."""
        if self.done_steps > TIMED_STEPS or self.warned:
            return
        now = time.perf_counter()
        self.done_steps += 1
        if self.start is None:
            self.start = now  # the steady pace is timed from here
            if nfe:
                self.check((now - self.created) / nfe, first_step=True)
            return
        self.timed_nfe += nfe
        if self.done_steps > TIMED_STEPS and self.timed_nfe:
            self.check((now - self.start) / self.timed_nfe)

    def check(self, seconds_per_nfe: float, first_step: bool = False) -> None:
        """Warn when total_nfe evaluations at this pace exceed LONG_RUN_SECONDS (FIRST_STEP_MARGIN times it when
        the pace comes from the first step alone)."""
        estimate = seconds_per_nfe * self.total_nfe
        if estimate <= LONG_RUN_SECONDS * (FIRST_STEP_MARGIN if first_step else 1.0):
            return
        self.warned = True
        faster = [] if self.settings_fixed else self.other_settings(estimate)
        if not self.on_gpu:
            faster.append("a GPU (device='cuda' / --device cuda)")
        warnings.warn(
            f"{self.sampler}: this run will take {'up to ' * first_step}about {format_duration(estimate)} "
            f"({self.total_nfe} network evaluations at {seconds_per_nfe:.2g} s"
            f"{', timed on the first step, which pays for the warm-up' * first_step})"
            + (f"; faster: {'; '.join(faster)}" if faster else ""),
            LongRunWarning,
            stacklevel=4,
        )

    def other_settings(self, estimate: float) -> list[str]:
        """What of the run's own settings would be faster, for a run estimated at `estimate` seconds: fewer steps,
        one sample, the CPU budget (unless the run is already at its steps)."""
        faster = []
        if self.steps:
            fitting = max(1, int(self.steps * LONG_RUN_SECONDS / estimate))
            faster.append(f"fewer steps (steps={fitting} / --steps {fitting}: about ten minutes)")
        if self.num_samples > 1:
            faster.append(
                f"one sample instead of {self.num_samples} (num_samples=1 / --num-samples 1: about "
                f"{format_duration(estimate / self.num_samples)}, no std)"
            )
        if self.steps is None or self.steps > CPU_STEPS:  # a run at the CPU budget's steps is already that fast
            faster.append(
                "the CPU budget (sampler='auto', budget='cpu' / --sampler auto --sampler-param budget=cpu: the "
                f"best sampler measured at {CPU_STEPS} steps)"
            )
        return faster
