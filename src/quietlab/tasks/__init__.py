"""The algorithmic tasks: ``get_task(name, **sizes)`` and ``task_names()``."""

from __future__ import annotations

from .base import Batch, Feature, FeatureRecorder, Knob, Task

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    # imported late so that each task module can use `register` from this package
    from . import arithmetic, graphs, indicator, sequences  # noqa: F401


def task_names() -> list[str]:
    _load()
    return list(_REGISTRY)


def get_task(name: str, **sizes) -> Task:
    """The task called ``name`` at the given sizes; a ValueError says what is allowed otherwise."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**sizes)


__all__ = ["Batch", "Feature", "FeatureRecorder", "Knob", "Task", "get_task", "register", "task_names"]
