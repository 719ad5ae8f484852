"""The algorithmic tasks: ``get_task(name, preset=..., **sizes)`` and ``task_names(preset)``.

Two presets: ``quietlab`` (this project's formats and samplers, the default) and ``paper`` (the
quiet-feature study as its released code ran it; docs/presets.md lists every difference).
"""

from __future__ import annotations

from .base import Batch, Feature, FeatureRecorder, Knob, Task

PRESETS = ("quietlab", "paper")
_REGISTRY: dict[str, dict[str, type[Task]]] = {preset: {} for preset in PRESETS}


def register(cls: type[Task]) -> type[Task]:
    _REGISTRY[cls.preset][cls.name] = cls
    return cls


def _load() -> None:
    # imported late so that each task module can use `register` from this package
    from . import arithmetic, graphs, indicator, paper_arithmetic, paper_graphs, paper_sequences, sequences  # noqa: F401


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")


def task_names(preset: str = "quietlab") -> list[str]:
    _check_preset(preset)
    _load()
    return list(_REGISTRY[preset])


def get_task(name: str, preset: str = "quietlab", **sizes) -> Task:
    """The task called ``name`` of ``preset`` at the given sizes; a ValueError says what is allowed otherwise."""
    _check_preset(preset)
    _load()
    registry = _REGISTRY[preset]
    if name not in registry:
        raise ValueError(f"unknown task {name!r} in preset {preset!r}; choose one of: {', '.join(registry)}")
    return registry[name](**sizes)


__all__ = ["PRESETS", "Batch", "Feature", "FeatureRecorder", "Knob", "Task", "get_task", "register", "task_names"]
