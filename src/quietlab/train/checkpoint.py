"""Checkpoints: ``runs/NAME/checkpoints/step_000123.pt``, each written atomically.

A checkpoint is one ``torch.save`` of a dict (loadable with ``weights_only=True``):

    format        1
    step          optimizer updates done (0 = the untrained model)
    model         the Transformer's state_dict (CPU tensors; includes the heat-treatment progress)
    model_config  TransformerConfig.to_dict()
    optimizer     AdamW state_dict
    config        TrainConfig.to_dict()
    rng           torch CPU (and CUDA) generator states, Python's and NumPy's global states

The bytes are serialised in memory and handed to ``write_atomic`` (temp file, fsync, rename), so a
run killed at any moment leaves only complete checkpoints under their final names. The training loop
saves through a ``CheckpointWriter``: the state is copied at the step, the writing happens beside the
training steps that follow, and the run waits for it before the next checkpoint and before it returns.

Other verbs load a trained model with ``load_run(run_dir, step=None)``.
"""

from __future__ import annotations

import io
import random
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..models.transformer import Transformer
from ..runs.folder import RunFolder, write_atomic

FORMAT = 1


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _plain(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():  # every GPU's generator (reading them initialises CUDA if need be)
        state["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    saved = state.get("cuda") or []
    if saved and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(saved) != n:
            warnings.warn(f"the checkpoint holds the random state of {len(saved)} GPU(s) and this machine has {n}: "
                          f"the first {min(n, len(saved))} are restored, so the resumed run may differ", stacklevel=2)
        for i, s in enumerate(saved[:n]):
            torch.cuda.set_rng_state(s, i)


def _plain(x):
    return [_plain(v) for v in x] if isinstance(x, tuple) else x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(run_dir, step: int, model, optimizer, config: dict) -> Path:
    """Write ``checkpoints/step_{step:06d}.pt`` atomically and return its path."""
    return _write(RunFolder(run_dir).checkpoint_path(step), _payload(step, model, optimizer, config))


def _payload(step: int, model, optimizer, config: dict) -> dict:
    """The checkpoint's contents, every tensor a CPU copy of its own (training may go on meanwhile)."""
    return {
        "format": FORMAT,
        "step": int(step),
        "model": _cpu_copy(model.state_dict()),
        "model_config": model.config.to_dict(),
        "optimizer": _cpu_copy(optimizer.state_dict()) if optimizer is not None else None,
        "config": config,
        "rng": rng_state(),
        "quietlab_version": __version__,
    }


def _cpu_copy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _cpu_copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu_copy(v) for v in x)
    return x


def _write(path: Path, payload: dict) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(path, buf.getvalue())
    return path


class CheckpointWriter:
    """Saves checkpoints with the serialising and the disk write (fsync included) in a background thread:
    the state is copied to the CPU at the call, so training goes on while the bytes reach the disk.
    One write at a time; ``wait()`` (called before each new save and by ``close()``) raises the
    background write's error, if any, in the caller."""

    def __init__(self, run_dir):
        self.folder = RunFolder(run_dir)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quietlab-ckpt")
        self._pending: Future | None = None

    def save(self, step: int, model, optimizer, config: dict) -> None:
        self.wait()
        payload = _payload(step, model, optimizer, config)
        self._pending = self._pool.submit(_write, self.folder.checkpoint_path(step), payload)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint at ``path``; a ValueError naming the file if it is unreadable, truncated or foreign."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch raises many kinds (EOFError for an empty file, RuntimeError, pickle's)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:200]
        raise ValueError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict) or not {"step", "model", "model_config", "config"} <= set(payload):
        raise ValueError(f"{path} is not a quietlab checkpoint (keys missing)")
    return payload


def readable_checkpoints(run_dir, map_location="cpu"):
    """(step, payload) of each checkpoint that loads, newest first, lazily; each unreadable one is skipped
    with a warning naming it."""
    for step, path in reversed(RunFolder(run_dir).checkpoints()):
        try:
            payload = load_checkpoint(path, map_location)
        except ValueError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            continue
        yield step, payload


def list_checkpoints(run_dir) -> list[int]:
    """Steps of every complete checkpoint of a run, oldest first."""
    return [step for step, _ in RunFolder(run_dir).checkpoints()]


def latest_checkpoint(run_dir, map_location="cpu") -> dict | None:
    """The newest checkpoint that loads (older ones are tried, with a warning, if it cannot be read), or None."""
    return next((payload for _, payload in readable_checkpoints(run_dir, map_location)), None)


def remove_stale_temp_files(run_dir) -> None:
    """Delete temp files a killed ``write_atomic`` left behind (they never carry a final name)."""
    ckpt_dir = RunFolder(run_dir).checkpoint_dir
    if ckpt_dir.exists():
        for p in ckpt_dir.glob(".step_*.tmp"):
            p.unlink(missing_ok=True)


def load_run(run_dir, step: int | None = None, device="cpu"):
    """(model, task, cfg, step) of a trained run: the model of checkpoint ``step`` (default: the last),
    in eval mode on ``device``; the task it was trained on (of the run's preset); its TrainConfig."""
    folder = RunFolder(run_dir)
    if not folder.path.exists():
        raise FileNotFoundError(f"no run folder at {folder.path}")
    steps = list_checkpoints(run_dir)
    if not steps:
        raise ValueError(f"{folder.path} has no checkpoints yet")
    if step is None:
        payload = latest_checkpoint(folder.path)
        if payload is None:
            raise ValueError(f"{folder.path} has no readable checkpoint")
    elif step not in steps:
        raise ValueError(f"{folder.path} has no checkpoint at step {step}; it has steps {_ranges(steps)}")
    else:
        payload = load_checkpoint(folder.checkpoint_path(step), map_location="cpu")
    run_config = folder.config()
    cfg = run_config.train
    task = cfg.build_task()
    model = Transformer(run_config.model)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, task, cfg, int(payload["step"])


def _ranges(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else f"{', '.join(map(str, steps[:6]))}, ..., {', '.join(map(str, steps[-3:]))}"
