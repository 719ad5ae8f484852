"""quietlab: see what a transformer learns while its loss curve is flat."""

__version__ = "0.1.0"

__all__ = ["Feature", "watch", "__version__"]


def __getattr__(name):  # lazy: `import quietlab` stays light (no torch) until these are used
    if name == "watch":
        from .monitor.watch import watch

        return watch
    if name == "Feature":
        from .tasks.base import Feature

        return Feature
    raise AttributeError(f"module 'quietlab' has no attribute {name!r}")
