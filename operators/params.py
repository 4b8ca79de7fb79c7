"""Parameter checks declared by type annotations: the one place where operator and noise-model parameters are
checked for their kind before any constructor runs (ranges stay with the constructors).

`kernel_size: int` refuses "five", 2.5 and True (a bool is not a number here); `sigma: float` takes ints and
floats but not inf or NaN (JSON's 1e400 parses to inf); `top: int | None` also takes None; parameters without an
annotation (tensors, nested lists) are left to their constructor.
"""

from __future__ import annotations

import math
import numbers
import types
import typing


class ParameterTypeError(TypeError, ValueError):
    """A parameter of the wrong kind: a TypeError to Python callers, and a ValueError, so that the command line
    reports it as the one-line user error it is (a bare TypeError there is a bug and keeps its traceback)."""


_KINDS = {  # annotation -> (test, description)
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    type(None): (lambda v: v is None, "null"),
    list: (lambda v: isinstance(v, (list, tuple)), "a list"),
    dict: (lambda v: isinstance(v, dict), "a dict (JSON object)"),
}


def _alternatives(kind) -> list:
    """The annotated kinds a value may have: the members of a union, generics by their origin (list[str] -> list);
    an empty list when some member is not one of `_KINDS` (nothing checked)."""
    members = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    members = [typing.get_origin(m) or m for m in members]
    return members if all(m in _KINDS for m in members) else []


def check_params(owner: str, init, params: dict, names: dict[str, str] | None = None) -> None:
    """Refuse values in `params` that do not have the type annotated on `init` (a constructor), one line each.

    owner: what is built, for the message ("operator 'gaussian_blur'"); names: constructor argument -> the
    user-facing parameter name, where they differ (noise models: sigma -> noise_sigma).
    Raises ParameterTypeError (a TypeError) for a wrong kind, ValueError for a non-finite number.
    """
    hints = typing.get_type_hints(init)
    for arg, value in params.items():
        kinds = _alternatives(hints.get(arg))
        name = (names or {}).get(arg, arg)
        if not kinds:
            continue
        if not any(_KINDS[k][0](value) for k in kinds):
            wanted = " or ".join(_KINDS[k][1] for k in kinds)
            raise ParameterTypeError(f"{owner}: parameter {name} must be {wanted}, got {value!r}")
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
            raise ValueError(f"{owner}: parameter {name} must be a finite number, got {value!r}")
