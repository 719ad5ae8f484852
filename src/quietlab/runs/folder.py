"""One folder per run, plain files readable without quietlab."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .store import RunStore

if TYPE_CHECKING:
    from ..models.transformer import TransformerConfig
    from ..train.loop import TrainConfig

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # say which file (disk full, file too large)
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class RunConfig:
    """config.json as training writes it: every setting (``train``), the model built (``model``) and the
    run's resolved length in steps (``steps``, also when it was given as a FLOPs budget)."""

    train: "TrainConfig"
    model: "TransformerConfig"
    steps: int | None

    def describe(self) -> str:
        """E.g. "`addition` (n_bits=8); d_model 128 × 4 layers, 4 heads; softmax attention; seed 0" (and the
        preset when it is the paper's)."""
        t, m = self.train, self.model
        sizes = ", ".join(f"{k}={v}" for k, v in t.task_sizes.items())
        task = f"`{t.task}`" + (f" ({sizes})" if sizes else " (default sizes)")
        layers = "layer" if m.n_layers == 1 else "layers"
        heads = "head" if m.n_heads == 1 else "heads"
        preset = "; the paper preset (the study's task, model and recipe)" if t.preset == "paper" else ""
        return (f"{task}; d_model {m.d_model} × {m.n_layers} {layers}, {m.n_heads} {heads}; {m.attention} attention; "
                f"seed {t.seed}{preset}")


class RunFolder:
    """``runs/NAME/``: config.json, metrics.sqlite, checkpoints/step_000123.pt, report.html."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def exists(self) -> bool:
        return self.config_path.exists()

    def write_config(self, config: dict) -> None:
        write_atomic(self.config_path, json.dumps({**config, "quietlab_version": __version__}, indent=2).encode())

    def read_config(self) -> dict:
        if not self.config_path.exists():
            raise ValueError(f"{self.path} is not a run folder (no config.json)")
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.config_path} is not readable JSON: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{self.config_path} should hold a JSON object, found {type(config).__name__}")
        return config

    def config(self) -> RunConfig:
        """The typed run config; a one-line ValueError when config.json is not one training wrote."""
        from ..models.transformer import TransformerConfig
        from ..train.loop import TrainConfig

        raw = self.read_config()
        if raw.get("recipe") == "eureka":
            raise ValueError(f"{self.path} is a run of `quietlab eureka` ({raw.get('variant')}, seed {raw.get('seed')}); "
                             "this verb reads runs of `quietlab train` (the eureka run's probes and curves are in its "
                             f"metrics.sqlite: `quietlab report {self.path}`)")
        model = raw.get("model_config") if isinstance(raw, dict) else None
        if not isinstance(model, dict) or not isinstance(raw.get("task"), str):
            raise ValueError(f"{self.config_path} is not a quietlab training config (no task name or model_config)")
        try:
            train = TrainConfig.from_dict(raw)
            train.check_types()
            model_cfg = TransformerConfig(**model)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.config_path}: {exc}") from None
        resolved = raw.get("resolved") if isinstance(raw.get("resolved"), dict) else {}
        steps = resolved.get("steps", train.steps)
        return RunConfig(train, model_cfg, int(steps) if isinstance(steps, int) else None)

    def store(self, readonly: bool = False) -> RunStore:
        return RunStore(self.path / "metrics.sqlite", readonly=readonly)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:06d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        if not self.checkpoint_dir.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := _STEP_FILE.search(p.name))]
        return sorted(found)
