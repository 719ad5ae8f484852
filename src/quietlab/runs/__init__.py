"""The run folder (config.json, metrics.sqlite, checkpoints/, report.html) and its store."""

from .folder import RunFolder, write_atomic
from .store import RunStore

__all__ = ["RunFolder", "RunStore", "write_atomic"]
