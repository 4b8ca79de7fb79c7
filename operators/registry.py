"""Name -> operator class registry: `get_operator`, `list_operators`, `from_config`."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from posterior_diffusion.registry import Registry

from .noise import make_noise, noise_params
from .params import check_params

if TYPE_CHECKING:  # annotations only: base imports this module for its error messages
    from .base import Operator

OPERATORS = Registry("operator")
register_operator = OPERATORS.register  # class decorator: @register_operator("gaussian_blur")
list_operators = OPERATORS.names
operator_class = OPERATORS.get


def operator_params(name: str) -> dict[str, object]:
    """Constructor parameters of operator `name` with their defaults (inspect.Parameter.empty if required)."""
    sig = inspect.signature(operator_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def get_operator(name: str, **params) -> Operator:
    """Build operator `name`. Noise: noise=<a registered noise model> with the parameters it declares ('gaussian':
    noise_sigma, default 0.05; 'poisson': poisson_rate), except for operators that model their own (`own_noise`).

    An unknown name or parameter is a ValueError that lists the valid ones; a value of the wrong kind for its
    annotation (kernel_size="five", factor=True, sigma=inf) is refused before the constructor runs (`check_params`).
    """
    cls = operator_class(name)
    noise_names = noise_params()
    noise_kwargs = {k: params.pop(k) for k in noise_names if k in params}
    if cls.own_noise and noise_kwargs:
        raise ValueError(f"operator {name!r} models its own noise; {', '.join(noise_kwargs)} do not apply")
    valid = operator_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for operator {name!r}; valid: "
            f"{', '.join(list(valid) + list(noise_names))}"
        )
    check_params(f"operator {name!r}", cls.__init__, params)
    op = cls(**params)
    if not cls.own_noise:
        op.noise = make_noise(**noise_kwargs)
    return op


def from_config(config: dict) -> Operator:
    """Rebuild an operator from `op.to_config()` (a dict with "name", "params" and the noise parameters)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(
            f'an operator config is a JSON object with a "name" (one of {", ".join(list_operators())}), '
            f'"params" and noise settings, as `degrade` writes it; got {str(config)[:80]}'
        )
    config = dict(config)
    name = config.pop("name")
    return get_operator(name, **config.pop("params", {}), **config)


def describe_capable(needs: str) -> str:
    """Registered operators that satisfy `needs` ("differentiable", "linear" or "svd"), with the setting needed."""
    if needs == "svd":
        found = [
            f"{n} ({', '.join(f'{k}={v!r}' for k, v in c.svd_settings.items())})" if c.svd_settings else n
            for n, c in OPERATORS.items()
            if c.svd_settings is not None
        ]
    else:
        found = [n for n, c in OPERATORS.items() if needs == "differentiable" or c.is_linear]
    return ", ".join(found)
