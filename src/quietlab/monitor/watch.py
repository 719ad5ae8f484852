"""``quietlab.watch``: the Monitor on anyone's model, in a plain training loop.

    import quietlab
    w = quietlab.watch(model, out="runs/mine",
                       taps=["transformer.h.0", "transformer.h.1"],   # module names from named_modules()
                       inputs=probe_tokens,            # fixed held-out inputs: LongTensor (n, seq) or a dict of model kwargs
                       features={"carry": quietlab.Feature(values, mask, "binary")})  # per-token labels (n, seq, k)
    for step in range(1, n_steps + 1):
        ...; loss.backward(); opt.step()
        w.step(step, loss=loss.item())
    w.close()      # final probes, transitions and feature classes written to the run folder

It drives the same :class:`~quietlab.monitor.Monitor` as ``quietlab train`` (probe schedule, overhead
budget, detector, classification) and writes the same run folder (config.json, metrics.sqlite), so
``quietlab report runs/mine`` works on it. A tap's activation is the module's output (its first element
when the module returns a tuple), shape (batch, seq, d); a TransformerLens ``HookedTransformer``'s hook
names and quietlab's own Transformer's hook names are taps too. Everything is checked (taps, inputs,
the features' shapes and labels, one forward pass of a few probe inputs) before ``watch`` returns.

Steps count optimizer updates: ``watch`` itself probes the untrained model as step 0, so pass step
k after the k-th update (a loop counting from 0 works too; its first step just adds no probe).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..runs.folder import RunFolder
from ..tasks.base import Feature
from .monitor import Monitor, log_schedule
from .taps import ModuleTaps, TransformerTaps

EXPORTS = ("tensorboard", "mlflow", "csv")
WATCH_MAX_OVERHEAD = 0.05  # the Monitor's probe budget under watch (``quietlab train``: Monitor's 0.06)


class Watch:
    """What ``watch`` returns: call ``step`` after each optimizer step, ``close`` at the end (or use it
    as a context manager). ``monitor`` is the Monitor it drives; ``path`` the run folder."""

    def __init__(self, model, monitor: Monitor, store, path: Path, eval_steps, total: int | None,
                 export: Sequence[str]):
        self.model, self.monitor, self.store, self.path = model, monitor, store, path
        self.total, self.export = total, list(export)
        self._eval_steps = eval_steps
        self._pending: dict[int, dict[str, float]] = {}
        self.last_step = 0
        self._finished = False
        self.closed = False
        self.result: dict = {}

    def step(self, step: int, loss: float | None = None, **metrics: float) -> None:
        """After optimizer update ``step``: log ``loss`` (as ``train/loss``) and any other scalars (as
        ``train/{name}``), then the monitor's work due at this step."""
        if self.closed:
            raise RuntimeError("Watch.step() after close()")
        step = int(step)
        self.log(step, loss=loss, **metrics)
        self.last_step = max(self.last_step, step)
        evaluate = step in self._eval_steps
        if evaluate:
            self.flush()
        self.monitor.on_step(step, self.model, evaluate=evaluate)
        self._finished = self._finished or (evaluate and self.total is not None and step == self.total)

    def log(self, step: int, loss: float | None = None, **metrics: float) -> None:
        """Scalars of a step (floats or one-element tensors), written to the store at the next evaluation
        (``train/loss``, ``train/{name}``; a name with a ``/`` is kept as is)."""
        row = self._pending.setdefault(int(step), {})
        if loss is not None:
            row["train/loss"] = _scalar(loss)
        for name, value in metrics.items():
            row[name if "/" in name else f"train/{name}"] = _scalar(value)

    def flush(self) -> None:
        rows = sorted(self._pending.items())
        tensors = [v for _, row in rows for v in row.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.float().reshape(()) for t in tensors]).tolist() if tensors else [])
        losses, written = [], {}
        for s, row in rows:  # one device sync for all the tensors logged since the last flush
            if row:
                row = {k: next(values) if isinstance(v, torch.Tensor) else v for k, v in row.items()}
                written[s] = row
                if row.get("train/loss") is not None:
                    losses.append((s, row["train/loss"]))
        self.store.log_steps(written)
        self._pending.clear()
        if losses:  # the detectors read the training loss as the loop hands it over
            self.monitor.on_train_loss([s for s, _ in losses], [v for _, v in losses])

    def close(self) -> dict:
        """Probe the final model (unless just probed), run the detector to the end, classify the
        features, export; returns the classification (``features.classify_run``)."""
        if self.closed:
            return self.result
        self.flush()
        m = self.monitor
        if not self._finished:
            if self.last_step > m.last_probe_step:
                m.probe(self.last_step, self.model)
            m.finish(self.last_step)
        self.result = m.result
        self.store.close()
        self.closed = True
        if self.export:
            from ..runs.export import export_run

            for kind in self.export:
                export_run(self.path, kind)
        return self.result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def watch(model: torch.nn.Module, out, taps: Sequence[str], inputs, features: Mapping[str, Feature], *,
          steps: int | None = None, seed: int = 0, every: int | None = None, export: Sequence[str] = (),
          overwrite: bool = False, batch_size: int = 256, train_batch_size: int = 64,
          max_overhead: float | None = WATCH_MAX_OVERHEAD, **monitor_options) -> Watch:
    """Watch ``model`` train: probes of ``features`` at ``taps`` on ``inputs``, written to run folder ``out``.

    ``steps``: the run's length, when known (the probe schedule then ends on it and the last step is
    probed). ``every``: the detector and attention statistics run every this many steps (default: about
    50 times a run plus log-spaced early steps; every 100 steps when ``steps`` is unknown); probes run
    whenever the Monitor's schedule makes one due. ``export``: any of "tensorboard", "mlflow", "csv",
    written into the run folder at ``close`` (``runs.export``). ``overwrite``: replace a run folder that
    already holds a run. ``train_batch_size``: examples per training step of your loop (with the probe
    inputs' length, what a probe step's estimated cost is weighed against for ``max_overhead``; the
    budget follows from shapes and counts, never from the clock). ``max_overhead`` (default 0.05, below
    ``quietlab train``'s 0.06: a plain loop's step costs its compute and little else, so the same
    estimated probe compute weighs more against its wall time). Other keywords go to :class:`Monitor`
    (``schedule``, ``per_decade``, ``device``, ``probe_kwargs``, ...). Raises one-line ValueErrors for bad taps,
    inputs, features or options, before any training.
    """
    from ..models.transformer import Transformer

    if not isinstance(model, torch.nn.Module) or next(model.parameters(), None) is None:
        raise ValueError(f"watch() needs a torch.nn.Module with parameters, got {type(model).__name__}")
    unknown = [e for e in export if e not in EXPORTS]
    if isinstance(export, str) or unknown:
        raise ValueError(f"export must be a list of {', '.join(EXPORTS)}, got {export!r}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if every is not None and int(every) < 1:
        raise ValueError(f"every must be >= 1 step, got {every}")
    taps = [taps] if isinstance(taps, str) else list(taps or [])
    if isinstance(model, Transformer) and taps and set(taps) <= set(model.tap_names()):
        tokens = _token_inputs(inputs)
        p = next(model.parameters())
        tapper = TransformerTaps(tokens, tokens[:64].to(p.device), layers=taps)
        taps_seen = _dry_run(lambda: model(tokens[:4].to(p.device), capture=taps)[1], model)
    else:
        tapper = ModuleTaps(model, taps, inputs, batch_size=batch_size)
        few = ModuleTaps(model, taps, _first_rows(tapper.inputs, 4), patterns=[])
        taps_seen = _dry_run(lambda: few._run(model, few.inputs, taps, next(model.parameters()).device), model)
    n = tapper.n
    features = check_features(features, n)
    for name, a in taps_seen.items():
        if a.ndim != 3:
            raise ValueError(f"tap {name!r} gives activations of shape {tuple(a.shape)}; a tap must give "
                             "(batch, seq, d): choose a module whose output is the residual stream")
        for fname, f in features.items():
            if f.values.shape[1] != a.shape[1]:
                raise ValueError(f"feature {fname!r} has {f.values.shape[1]} positions but tap {name!r} gives "
                                 f"{a.shape[1]}; label every position of the inputs (mask out the rest)")
    if n < 20:
        raise ValueError(f"inputs have {n} examples; probes need at least 20 (a few hundred or more is better)")

    folder = RunFolder(out)
    db = folder.path / "metrics.sqlite"
    if folder.exists() or db.exists():
        if not overwrite:
            raise ValueError(f"{folder.path} already holds a run; pass overwrite=True or another out")
        for p in folder.path.glob("metrics.sqlite*"):
            p.unlink()
        for p in (folder.config_path, folder.path / "metrics.csv"):
            p.unlink(missing_ok=True)
        for d in ("tensorboard", "mlruns"):
            shutil.rmtree(folder.path / d, ignore_errors=True)
    folder.write_config({"watch": {
        "model": type(model).__name__, "taps": taps, "probe_examples": n, "steps": steps, "seed": seed,
        "features": {name: f.kind for name, f in features.items()},
        "monitor": {k: v for k, v in {"max_overhead": max_overhead, **monitor_options}.items()
                    if isinstance(v, (int, float, str, bool, type(None)))},
    }})
    monitor = Monitor(max_overhead=max_overhead, **monitor_options)
    store = folder.store()
    try:
        monitor.begin(store, tapper, features, total=steps, seed=seed, model=model, train_batch_size=train_batch_size)
        monitor.on_eval(0, model, {})
        monitor.after_step(0, model)  # the untrained model: the probes' random-init baseline
    except BaseException:
        store.close()
        raise
    if steps is not None:
        from ..train.schedule import schedule_steps

        eval_steps = frozenset(schedule_steps(int(steps), every or max(1, round(int(steps) / 50)), 10))
    else:
        eval_steps = _EveryOrLog(every or 100, set(log_schedule(None, 10)))
    return Watch(model, monitor, store, folder.path, eval_steps, steps, export)


class _EveryOrLog:
    """Steps that are multiples of ``every`` or in ``extra`` (a run of unknown length)."""

    def __init__(self, every: int, extra: set[int]):
        self.every, self.extra = int(every), extra

    def __contains__(self, step) -> bool:
        return step % self.every == 0 or step in self.extra


def check_features(features, n: int) -> dict[str, Feature]:
    """The features as numpy-backed Features of ``n`` rows; a one-line ValueError for a bad one."""
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features must be a non-empty dict {name: quietlab.Feature(values, mask, kind)}")
    out = {}
    for name, f in features.items():
        if not isinstance(f, Feature):
            raise ValueError(f"feature {name!r} must be a quietlab.Feature(values, mask, kind), got {type(f).__name__}")
        values, mask = _numpy(f.values), _numpy(f.mask).astype(bool)
        if values.ndim != 3 or mask.shape != values.shape[:2]:
            raise ValueError(f"feature {name!r}: values must be (n, seq, k) and mask (n, seq), "
                             f"got {values.shape} and {mask.shape}")
        if values.shape[0] != n:
            raise ValueError(f"feature {name!r} labels {values.shape[0]} examples but the inputs have {n}")
        if not mask.any():
            raise ValueError(f"feature {name!r} is defined nowhere (its mask is all False)")
        defined = values[mask]
        if f.kind in ("binary", "multilabel") and not np.isin(defined, (0, 1)).all():
            raise ValueError(f"feature {name!r} is {f.kind}, so its labels must be 0 or 1 where the mask is set")
        if f.kind == "categorical":
            if not (np.equal(np.mod(defined, 1), 0).all() and (defined >= 0).all() and (defined < f.n_classes).all()):
                raise ValueError(f"feature {name!r} is categorical with n_classes={f.n_classes}, so its labels "
                                 f"must be integers in [0, {f.n_classes}) where the mask is set")
        if f.kind == "scalar" and not np.isfinite(defined.astype(float)).all():
            raise ValueError(f"feature {name!r} has non-finite values where its mask is set")
        out[str(name)] = Feature(values, mask, f.kind, f.n_classes, f.description)
    return out


def _scalar(value):
    """A float, or a detached copy of a one-element tensor (read at the next flush: no sync per step;
    a copy because a CUDA graph reuses its output buffer)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return float(value)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _token_inputs(inputs) -> torch.Tensor:
    from .taps import _check_inputs

    inputs = _check_inputs(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise ValueError("quietlab's Transformer takes a LongTensor (n, seq) of token ids as inputs, not a dict")
    return inputs


def _first_rows(inputs, k: int):
    from .taps import _slice

    return _slice(inputs, 0, k)


def _dry_run(run, model) -> dict[str, torch.Tensor]:
    """One forward pass of a few probe inputs: model errors become one line naming the problem."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return run()
    except ValueError:
        raise
    except (RuntimeError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the model failed on the probe inputs: {first}") from None
    finally:
        model.train(was_training)
