"""A name -> class registry whose errors list the valid names (operators, noise models, samplers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Registry:
    """`@registry.register("name")` on a class sets `cls.name` and makes it available as `registry.get("name")`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        def wrap(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        """Remove `name` (e.g. a plug-in tried out in a session, or a test's own class)."""
        self.get(name)  # an unknown name fails, listing the valid ones
        del self._classes[name]

    @contextmanager
    def registered(self, name: str, cls: type) -> Iterator[type]:
        """`cls` registered as `name` for the duration of a `with` block."""
        self.register(name)(cls)
        try:
            yield cls
        finally:
            self.unregister(name)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._classes[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def items(self) -> list[tuple[str, type]]:
        return sorted(self._classes.items())
