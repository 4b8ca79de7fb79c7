"""Where iterative samplers (RED-Diff, PnP-ULA) start: a registry of initial estimates, chosen by name in their
configs (`init="pinv"`). Applications register their own (a classical reconstruction of their data, say), so
a sampler never asks which operator it is given, only whether an init applies to it.

Each init maps (op, y (n, *measurement_shape), image_shape (C, H, W), rcond) to images (n, C, H, W) in about
[-1, 1] on y's device; `rcond` is the relative cut-off of a pseudo-inverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from posterior_diffusion.operators.base import Operator


@dataclass(frozen=True)
class Init:
    """An initial estimate: the function, whether it applies to an operator, and what it needs (for errors)."""

    fn: Callable[..., torch.Tensor]
    applies: Callable[[Operator], bool]
    needs: str


INITS: dict[str, Init] = {}


def register_init(name: str, applies: Callable[[Operator], bool] = lambda op: True, needs: str = "any operator"):
    """Function decorator: `@register_init("rml", applies=..., needs="interferometry")`."""

    def wrap(fn):
        if name in INITS:
            raise ValueError(f"init {name!r} is registered twice")
        INITS[name] = Init(fn, applies, needs)
        return fn

    return wrap


def check_init(name: str, op: Operator | None = None) -> None:
    """Refuse an unknown init (naming the valid ones), or one that does not apply to `op` when given."""
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; valid: {', '.join(sorted(INITS))}")
    if op is not None and not INITS[name].applies(op):
        raise ValueError(f"init={name!r} needs {INITS[name].needs}; '{op.name}' needs another init")


def initial_state(name: str, op: Operator, y: torch.Tensor, image_shape, rcond: float = 3e-2) -> torch.Tensor:
    """The init `name` for measurements y: (n, C, H, W) float32. Measurements that repeat (the chains of one y)
    are computed once."""
    unique, inverse = torch.unique(y, dim=0, return_inverse=True)
    return INITS[name].fn(op, unique, tuple(image_shape), rcond).float()[inverse]


@register_init("pinv")
def _pinv(op, y, image_shape, rcond):
    """A^+ y for linear operators (singular values below rcond times the largest discarded), zeros otherwise."""
    if op.is_linear:
        return op.pinv(y, rcond=rcond)
    return _zeros(op, y, image_shape, rcond)


@register_init("measurement")
def _measurement(op, y, image_shape, rcond):
    """y itself when it is an image of x's shape (PnP-ULA's reference), else `pinv`."""
    if tuple(y.shape[1:]) == tuple(image_shape):
        return y.clone()
    return _pinv(op, y, image_shape, rcond)


@register_init("zeros")
def _zeros(op, y, image_shape, rcond):
    """The mid-grey image 0."""
    return torch.zeros((len(y), *image_shape), device=y.device)


@register_init("dark")
def _dark(op, y, image_shape, rcond):
    """The black image -1 (an empty sky for non-negative images such as black holes)."""
    return torch.full((len(y), *image_shape), -1.0, device=y.device)
