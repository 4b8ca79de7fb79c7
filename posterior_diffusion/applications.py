"""Applications: packages built on the general engine that add tasks, baselines, initial estimates and sampler
presets to its registries (e.g. black-hole imaging). The general code never imports one by name: each is
declared as an entry point of the group `posterior_diffusion.applications` (pyproject.toml) and imported here
once, when `posterior_diffusion` is imported."""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "posterior_diffusion.applications"


def load_applications() -> list[str]:
    """Import every installed application (entry points of GROUP); returns their module names."""
    loaded = []
    for entry in entry_points(group=GROUP):
        entry.load()
        loaded.append(entry.value)
    return loaded
