"""A run's metrics in other tools: TensorBoard event files, an MLflow file store, CSV.

    quietlab export runs/mine --to tensorboard      # runs/mine/tensorboard/  (tensorboard --logdir runs/mine/tensorboard)
    quietlab export runs/mine --to mlflow           # runs/mine/mlruns/       (mlflow ui --backend-store-uri runs/mine/mlruns)
    quietlab export runs/mine --to csv              # runs/mine/metrics.csv

Every exporter writes the same scalars under the same names (docs/metrics.md has the table):

- each metric of the store under its own name (``train/loss``, ``eval/loss``,
  ``attn/entropy/blocks.0.attn.hook_pattern/H1``, ``grad/q/blocks.0.attn/H0``, ``monitor/probe_s``, ...);
- each probe row as ``probe/{feature}/{layer}/{position}/{metric}`` (the fit the report shows);
- per feature and probed step, ``probe/{feature}/best/{acc|r2}``: the best layer's mean over positions
  of the main score (the aggregate the feature classes are decided on, ``monitor.features``).

Feature classes and the main transition go along as text: TensorBoard text summaries
(``feature_class/{feature}``, ``transition``), MLflow tags (``feature_class/{feature}``,
``transition_onset``, ``transition_end``); the CSV holds the scalars only.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

from .folder import RunFolder, write_atomic

FORMATS = ("tensorboard", "mlflow", "csv")


def run_scalars(run_dir) -> list[tuple[int, str, float]]:
    """(step, name, value) of every scalar the exporters write, in step order."""
    folder = RunFolder(run_dir)
    if not (folder.path / "metrics.sqlite").exists():
        raise ValueError(f"{folder.path} is not a run folder (no metrics.sqlite in it)")
    out: list[tuple[int, str, float]] = []
    with folder.store() as store:
        for name in store.metric_names():
            out += [(s, name, v) for s, v in zip(*store.series(name)) if v is not None]
        rows = store.probes()
    main: dict[tuple[int, str, str], list[float]] = defaultdict(list)  # (step, feature, layer) -> main scores
    for step, feature, layer, position, metric, value in rows:
        out.append((step, f"probe/{feature}/{layer}/{position}/{metric}", value))
        if metric in ("acc", "r2"):
            main[(step, feature, layer, metric)].append(value)
    best: dict[tuple[int, str, str], float] = {}
    for (step, feature, _, metric), values in main.items():
        key = (step, feature, metric)
        best[key] = max(best.get(key, float("-inf")), sum(values) / len(values))
    out += [(step, f"probe/{feature}/best/{metric}", v) for (step, feature, metric), v in best.items()]
    return sorted(out, key=lambda r: (r[0], r[1]))


def run_text(run_dir) -> dict[str, str]:
    """{name: text} of the feature classes (``feature_class/{feature}``) and the main transition."""
    from ..monitor.features import main_transition

    with RunFolder(run_dir).store() as store:
        classes = store.results("feature_class")
        transitions = store.results("transition")
    text = {f"feature_class/{name}": str(c.get("class")) for name, c in sorted(classes.items()) if isinstance(c, dict)}
    for curve, ts in sorted(transitions.items()):
        t = main_transition(ts if isinstance(ts, list) else [])
        if t is not None:
            text["transition"] = f"{curve}: onset step {t['onset']:.0f}, end step {t['end']:.0f}"
            text["transition_onset"], text["transition_end"] = f"{t['onset']:.0f}", f"{t['end']:.0f}"
            break
    return text


def export_csv(run_dir, path=None) -> Path:
    """``step,name,value`` rows of every scalar (default path: RUN/metrics.csv)."""
    path = Path(path) if path is not None else RunFolder(run_dir).path / "metrics.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "name", "value"])
    writer.writerows(run_scalars(run_dir))
    write_atomic(path, buf.getvalue().encode())
    return path


def export_tensorboard(run_dir, logdir=None) -> Path:
    """TensorBoard event files (default: RUN/tensorboard/), one scalar tag per name."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("the TensorBoard exporter needs the tensorboard package: pip install 'quietlab[export]'") from None
    logdir = Path(logdir) if logdir is not None else RunFolder(run_dir).path / "tensorboard"
    scalars, text = run_scalars(run_dir), run_text(run_dir)
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for step, name, value in scalars:
            writer.add_scalar(name, value, global_step=step)
        last = scalars[-1][0] if scalars else 0
        for name, value in text.items():
            if not name.startswith("transition_"):
                writer.add_text(name, value, global_step=last)
    finally:
        writer.close()
    return logdir


def export_mlflow(run_dir, tracking_uri=None, experiment: str = "quietlab") -> str:
    """One MLflow run (named after the run folder) in a local file store (default: RUN/mlruns/):
    every scalar as a metric history, config.json's settings as params, classes as tags. Returns the run id."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ValueError("the MLflow exporter needs the mlflow package: pip install 'quietlab[export]'") from None

    folder = RunFolder(run_dir)
    uri = tracking_uri or (folder.path / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):  # MLflow 3 asks for this opt-in to keep writing its plain-file store
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=folder.path.resolve().name)
    rid = run.info.run_id
    params = [Param(k[:250], str(v)[:6000]) for k, v in _flat(folder.read_config()).items()] if folder.exists() else []
    tags = [RunTag(k, v) for k, v in run_text(run_dir).items()]
    metrics = [Metric(_mlflow_name(name), value, 0, step) for step, name, value in run_scalars(run_dir)]
    for i in range(0, max(len(metrics), len(params), len(tags)), 1000):  # MLflow's batch limits
        client.log_batch(rid, metrics=metrics[i : i + 1000], params=params[i : i + 100] if i == 0 else [],
                         tags=tags if i == 0 else [])
    for i in range(100, len(params), 100):
        client.log_batch(rid, params=params[i : i + 100])
    client.set_terminated(rid)
    return rid


def export_run(run_dir, kind: str, target=None):
    """Export to one of FORMATS; returns where it went (a path, or the MLflow run id)."""
    if kind == "csv":
        return export_csv(run_dir, target)
    if kind == "tensorboard":
        return export_tensorboard(run_dir, target)
    if kind == "mlflow":
        return export_mlflow(run_dir, target)
    raise ValueError(f"unknown export format {kind!r}; use one of: {', '.join(FORMATS)}")


def _mlflow_name(name: str) -> str:
    # MLflow metric names allow letters, digits, _ - . space : / only
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def _flat(d, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
