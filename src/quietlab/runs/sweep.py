"""A sweep: a grid of training runs from a TOML spec, each an ordinary run folder, with one results table.

Spec (a list is an axis of the grid, a scalar is fixed):

    task = "addition"            # or  tasks = ["addition", "bfs"]  or  [[tasks]] tables, each with its
    sizes = { n_bits = 8 }       #     own task, sizes and any other key (per-task sizes and axes)
    preset = "quietlab"          # one more axis: quietlab or paper (the study's tasks and recipe)
    d_model = [32, 64]
    layers = [2]                 # CLI names (layers, heads) or TrainConfig names (n_layers, n_heads)
    lr = [1e-3, 3e-3]
    batch_size = 64
    seed = [0, 1]
    steps = 300                  # or: flops = [1e10, 1e11, 1e12]
    attention = "softmax"
    pack_size = 64               # sweep settings: at most this many same-shaped runs trained packed;
    max_steps = 100000           # runs whose length falls outside [min_steps, max_steps] are left out
                                 # (the paper keeps 1 <= steps <= 1e5; a budget under one step is
                                 # otherwise recorded as a failed run)
    # ... and any other TrainConfig field: eval_every, checkpoint_every, eval_examples, device, compile

Sizes values may be lists too (axes). The sweep folder holds ``sweep.sqlite`` (table ``runs``: one row
per run, its settings as columns, ``run_dir`` relative to the sweep folder, ``status`` pending | done | failed, ``error``, the final metrics,
FLOPs and wall time), ``spec.toml`` (the spec last run), ``runs/TASK-ID/`` (the run folders; ID is a
hash of the run's settings, so a resumed or extended sweep finds its finished runs) and ``report.html``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..train.loop import PRESETS, RESUMABLE_CHANGES, TrainConfig
from .lock import RunLock

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ALIASES = {"layers": "n_layers", "heads": "n_heads", "sizes": "task_sizes"}
SWEEP_KEYS = ("pack_size", "min_steps", "max_steps")
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TASK_ENTRY_KEYS = ("task", "name")


@dataclass
class RunSpec:
    """One run of the grid: its id, its TrainConfig (with its preset) and where its folder goes."""

    run_id: str
    cfg: TrainConfig

    @property
    def preset(self) -> str:
        return self.cfg.preset

    @property
    def folder_name(self) -> str:
        return f"{self.cfg.task}-{self.run_id}"


def _key_error(key: str, what: str) -> ValueError:
    return ValueError(f"spec key {key!r}: {what}")


def _check_value(key: str, value):
    """A scalar of the field's type, or a ValueError naming the key."""
    name = ALIASES.get(key, key)
    if isinstance(value, (dict, list)):
        raise _key_error(key, f"expected a single value, got {value!r}")
    if name in ("task", "attention", "norm_form", "device", "dtype", "preset"):
        if not isinstance(value, str):
            raise _key_error(key, f"expected a string, got {value!r}")
    elif name == "compile":
        if not isinstance(value, bool):
            raise _key_error(key, f"expected true or false, got {value!r}")
    elif name in ("lr", "flops", "tau", "weight_decay", "beta1", "beta2", "grad_clip", "warmup_fraction",
                  "min_lr_fraction", "heat_start", "heat_fraction", "eval_per_decade", "checkpoint_per_decade"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _key_error(key, f"expected a number, got {value!r}")
        value = float(value)
    else:  # whole numbers: d_model, n_layers, steps, seed, batch_size, eval_every, pack_size, ...
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise _key_error(key, f"expected a whole number, got {value!r}")
        value = int(value)
    return value


def _axes(key: str, value) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _key_error(key, "an empty list gives no runs")
    return [_check_value(key, v) for v in values]


def _task_entries(spec: dict) -> list[dict]:
    """The spec split per task: top-level keys, overridden by each [[tasks]] entry's own."""
    top = {k: v for k, v in spec.items() if k != "tasks"}
    if "tasks" not in spec:
        if "task" not in spec:
            raise ValueError("spec key 'task' (or 'tasks') is missing")
        return [top]
    if "task" in spec:
        raise _key_error("tasks", "give task or tasks, not both")
    tasks = spec["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise _key_error("tasks", "expected a non-empty list of task names or tables")
    entries = []
    for t in tasks:
        if isinstance(t, str):
            entries.append({**top, "task": t})
        elif isinstance(t, dict):
            name = t.get("task", t.get("name"))
            if not isinstance(name, str):
                raise _key_error("tasks", f"each table needs task = \"NAME\", got {t!r}")
            own = {k: v for k, v in t.items() if k not in _TASK_ENTRY_KEYS}
            entries.append({**top, **own, "task": name})
        else:
            raise _key_error("tasks", f"expected a task name or a table, got {t!r}")
    return entries


def _run_id(cfg: TrainConfig) -> str:
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}  # the preset included
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def expand_spec(spec: dict) -> tuple[list[RunSpec], dict]:
    """The runs of a parsed spec, in grid order, and the sweep settings; a ValueError names the bad key."""
    if not isinstance(spec, dict):
        raise ValueError("a sweep spec is a TOML table of keys")
    settings = {"pack_size": 64, "min_steps": None, "max_steps": None}
    runs: list[RunSpec] = []
    seen = set()
    known = set(_FIELDS) | set(ALIASES) | {"tasks"} | set(SWEEP_KEYS)
    for key in spec:
        if key not in known or key in ("task_sizes",):
            raise _key_error(key, "unknown key; known keys: task, tasks, sizes, preset, layers, heads, "
                             + ", ".join(sorted(k for k in _FIELDS if k not in ("task", "task_sizes", "preset", "n_layers", "n_heads")))
                             + ", pack_size, min_steps, max_steps")
    for key in SWEEP_KEYS:
        if key in spec:
            settings[key] = _check_value(key, spec[key])
            if settings[key] < 1:
                raise _key_error(key, f"must be >= 1, got {settings[key]}")
    if settings["min_steps"] is not None and settings["max_steps"] is not None and settings["min_steps"] > settings["max_steps"]:
        raise _key_error("min_steps", f"{settings['min_steps']} is above max_steps ({settings['max_steps']}): no run could be kept")
    for entry in _task_entries(spec):
        entry = {k: v for k, v in entry.items() if k not in SWEEP_KEYS}
        for key in entry:
            if key not in known or key == "tasks":
                raise _key_error(key, "unknown key inside a [[tasks]] table")
        if ("steps" in entry) == ("flops" in entry):
            raise _key_error("steps", "give steps or flops (the length of each run), not both" if "steps" in entry
                             else "missing: give steps or flops (the length of each run)")
        sizes = entry.pop("sizes", {})
        if not isinstance(sizes, dict):
            raise _key_error("sizes", f"expected a table like {{ n_bits = 8 }}, got {sizes!r}")
        size_axes = [[(k, v) for v in _axes(f"sizes.{k}", vals)] for k, vals in sizes.items()]
        named = [(k, ALIASES.get(k, k)) for k in entry]
        axes = [[(name, v) for v in _axes(key, entry[key])] for key, name in named]
        for size_combo in itertools.product(*size_axes):
            for combo in itertools.product(*axes):
                cfg = TrainConfig(**{**dict(combo), "task_sizes": dict(size_combo)})
                if cfg.preset not in PRESETS:
                    raise _key_error("preset", f"unknown preset {cfg.preset!r}; known: {', '.join(PRESETS)}")
                try:
                    cfg.validate()
                    cfg.build_task()
                except ValueError as exc:
                    raise ValueError(f"spec ({cfg.task}): {exc}") from None
                run_id = _run_id(cfg)
                if run_id not in seen:
                    seen.add(run_id)
                    runs.append(RunSpec(run_id, cfg))
    return runs, settings


def load_spec(path) -> tuple[list[RunSpec], dict, str]:
    """(runs, sweep settings, spec text) of a TOML spec file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep spec at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (TOML is UTF-8 text)") from None
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    runs, settings = expand_spec(spec)
    return runs, settings, text


# ------------------------------------------------------------------------------------------------
# the results table

SETTING_COLUMNS = [
    (name, "REAL" if f.type in ("float", "float | None") else "INTEGER" if f.type in ("int", "int | None", "bool") else "TEXT")
    for name, f in _FIELDS.items()
]
RESULT_COLUMNS = [
    ("total_steps", "INTEGER"), ("train_flops", "REAL"), ("budget", "REAL"), ("params", "INTEGER"),
    ("eval_loss", "REAL"), ("exact_match", "REAL"), ("token_acc", "REAL"), ("train_loss", "REAL"),
    ("wall_s", "REAL"), ("packed_with", "INTEGER"), ("finished_at", "TEXT"),
]


class SweepTable:
    """SWEEP/sweep.sqlite, table ``runs``: read it with pandas (``pd.read_sql("SELECT * FROM runs", con)``)
    or DuckDB (``duckdb.sql("SELECT * FROM sqlite_scan('sweep.sqlite', 'runs')")``)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        # a rollback journal, not WAL: each commit lands in sweep.sqlite itself, so the file alone is the whole
        # table even while the sweep runs or after it is killed (copied off a lent machine, a WAL table's
        # finished runs stay behind in its -wal file); the sweep is the one writer, its commits are small
        self._db.execute("PRAGMA journal_mode=DELETE")
        cols = ", ".join(f'"{n}" {t}' for n, t in SETTING_COLUMNS + RESULT_COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, run_dir TEXT, status TEXT, "
                         f"error TEXT, {cols})")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _columns(self) -> set[str]:
        return {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}

    def add(self, run: RunSpec, run_dir: Path) -> None:
        """Register a run as pending (a run already in the table keeps its status)."""
        row = {"run_id": run.run_id, "run_dir": str(run_dir), "status": "pending"}
        for name, value in run.cfg.to_dict().items():
            row[name] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        for k, v in run.cfg.task_sizes.items():  # each size also as its own column: size_n_bits, ...
            row[f"size_{k}"] = v
        have = self._columns()
        for k, v in row.items():
            if k not in have:
                kind = "INTEGER" if isinstance(v, int) else "REAL" if isinstance(v, float) else "TEXT"
                self._db.execute(f'ALTER TABLE runs ADD COLUMN "{k}" {kind}')
        names = ", ".join(f'"{k}"' for k in row)
        self._db.execute(f"INSERT OR IGNORE INTO runs ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        self._db.commit()

    def status(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT run_id, status FROM runs"))

    def finish(self, run_id: str, final: dict, packed_with: int) -> None:
        budget = self._db.execute("SELECT flops FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        self._db.execute(
            "UPDATE runs SET status='done', error=NULL, total_steps=?, train_flops=?, budget=?, params=?, eval_loss=?, "
            "exact_match=?, token_acc=?, train_loss=?, wall_s=?, packed_with=?, finished_at=? WHERE run_id=?",
            (final.get("steps"), final.get("train/flops"),
             budget[0] if budget and budget[0] is not None else final.get("train/flops"), final.get("params"),
             final.get("eval/loss"), final.get("eval/exact_match"), final.get("eval/token_acc"),
             final.get("train/loss"), final.get("wall_s"), packed_with, _now(), run_id))
        self._db.commit()

    def fail(self, run_id: str, error: str) -> None:
        self._db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE run_id=?", (error, _now(), run_id))
        self._db.commit()

    def rows(self) -> list[dict]:
        cur = self._db.execute("SELECT * FROM runs ORDER BY rowid")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------------
# running


@dataclass
class Item:
    """A run handed to an executor: its id, config and folder (plain data: it crosses process boundaries)."""

    run_id: str
    cfg: dict
    run_dir: str


def run_pack(items: list[Item], threads: int | None = None) -> list[tuple[str, str, object, int]]:
    """Train a pack of runs as one batched computation (``train_packed``, also for a pack of one: on a GPU
    with ``compile = true``, its whole step is one CUDA graph, the forward compiled inside it once the
    pack's remaining runs end together), resuming any that were started;
    returns one (run_id, "done" | "failed", final metrics or error text, packed_with) per run. A pack that
    runs out of GPU memory is split in two halves, each resumed from the checkpoints the pack left (so the
    paper grid's largest packs fit a smaller card); a pack that fails otherwise has each run retried alone,
    so one bad run cannot fail the others."""
    from ..train.threads import set_cpu_threads

    if threads:
        set_cpu_threads(threads)
    return _run_items(items, [TrainConfig.from_dict(it.cfg) for it in items])


def _run_items(items: list[Item], cfgs: list[TrainConfig]) -> list[tuple[str, str, object, int]]:
    import torch

    from ..train.budget import non_embedding_params
    from ..train.packed import train_packed

    def with_params(final, cfg):
        final["params"] = non_embedding_params(cfg.model_config(cfg.build_task()))
        return final

    try:
        finals = train_packed(cfgs, [it.run_dir for it in items], progress=False, resume=True)
        return [(it.run_id, "done", with_params(f, c), len(items)) for it, f, c in zip(items, finals, cfgs)]
    except KeyboardInterrupt:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        error, split = exc, True
    except Exception as exc:  # noqa: BLE001  (recorded against its run)
        error, split = exc, False
    if len(items) == 1:
        return [(items[0].run_id, "failed", f"{type(error).__name__}: {error}".splitlines()[0], 1)]
    del error  # its traceback holds the failed pack's tensors
    torch.cuda.empty_cache()
    if split:
        half = len(items) // 2
        return _run_items(items[:half], cfgs[:half]) + _run_items(items[half:], cfgs[half:])
    return [row for it, cfg in zip(items, cfgs) for row in _run_items([it], [cfg])]


def plan_packs(runs: list[RunSpec], run_dirs: dict[str, Path], pack_size: int, slots: int) -> tuple[list[list[Item]], list[tuple[str, str]]]:
    """Runs grouped into packs of equal ``pack_key`` (same shape; lengths may differ: a run leaves its
    pack when it ends), at most ``pack_size`` and split so that ``slots`` workers all get work; and
    (run_id, error) of runs that cannot even be planned (e.g. a budget under one step). The packs come
    longest first (a pack lasts as long as its longest run, in steps; a small model's step is bound by
    kernel launches, so its time goes with its steps), so that the workers' last packs are short ones
    rather than one long pack left running alone; within a pack, runs of similar lengths."""
    from ..train.packed import pack_key

    groups: dict[str, list[tuple[int, Item]]] = {}
    failed = []
    for r in runs:
        try:
            key = pack_key(r.cfg)
        except ValueError as exc:
            failed.append((r.run_id, f"ValueError: {exc}"))
            continue
        steps = r.cfg.total_steps(r.cfg.build_task())
        groups.setdefault(key, []).append((steps, Item(r.run_id, r.cfg.to_dict(), str(run_dirs[r.run_id]))))
    total = sum(len(g) for g in groups.values())
    packs = []
    for group in groups.values():
        group = sorted(group, key=lambda g: -g[0])  # a pack's runs of similar lengths
        # enough packs to keep every slot busy, none larger than pack_size
        share = max(1, math.ceil(len(group) * slots / max(total, 1)))
        size = max(1, min(pack_size, math.ceil(len(group) / share)))
        packs += [group[i : i + size] for i in range(0, len(group), size)]
    packs.sort(key=lambda pack: -pack[0][0])  # stable: equally long packs keep the spec's order
    return [[item for _, item in pack] for pack in packs], failed


def run_sweep(spec_path, out=None, executor: str = "local", workers: int | None = None, address: str | None = None,
              gpus_per_pack: float | None = None, retry_failed: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the sweep of ``spec_path`` into ``out`` (default sweeps/SPEC_NAME); returns a summary.
    The sweep holds ``out``'s writer lock (runs/lock.py) while it runs: a second sweep into it is refused."""
    from . import executors
    from .folder import write_atomic

    executors.check_options(executor, workers, address, gpus_per_pack)
    runs, settings, text = load_spec(spec_path)
    runs, left_out = _within_steps(runs, settings["min_steps"], settings["max_steps"])
    out = Path(out) if out is not None else Path("sweeps") / Path(spec_path).stem
    with RunLock(out, create=True, what="sweep folder"):  # one sweep process writes a folder at a time
        write_atomic(out / "spec.toml", text.encode())
        table = SweepTable(out / "sweep.sqlite")
        run_dirs = {r.run_id: out / "runs" / r.folder_name for r in runs}
        for r in runs:
            table.add(r, run_dirs[r.run_id].relative_to(out))
        status = table.status()
        skip = {"done", "failed"} if not retry_failed else {"done"}
        todo = [r for r in runs if status.get(r.run_id) not in skip]
        ex = executors.make(executor, workers=workers, address=address, gpus_per_pack=gpus_per_pack) if todo else None
        packs, unplannable = plan_packs(todo, run_dirs, settings["pack_size"], ex.slots if ex else 1)
        for run_id, error in unplannable:
            table.fail(run_id, error)
        counts = {"done": 0, "failed": len(unplannable)}
        t0 = time.perf_counter()
        bar = _sweep_bar(progress, len(todo), len(unplannable))
        try:
            with bar if bar is not None else contextlib.nullcontext():
                for results in (ex.run(packs) if packs else []):
                    for run_id, state, payload, packed_with in results:
                        if state == "done":
                            table.finish(run_id, payload, packed_with)
                        else:
                            table.fail(run_id, payload)
                        counts[state] += 1
                    if bar is not None:
                        bar.update(0, completed=counts["done"] + counts["failed"], failed=counts["failed"])
        finally:
            if ex is not None:
                ex.close()
            rows = table.rows()
            table.close()
    by_status = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}
    return {"sweep": str(out), "runs": len(runs), "this_time": {"done": counts["done"], "failed": counts["failed"]},
            "skipped": len(runs) - len(todo), "left_out": left_out, **by_status, "packs": len(packs), "wall_s": time.perf_counter() - t0,
            "executor": executor, "table": str(out / "sweep.sqlite")}


def _within_steps(runs: list[RunSpec], lo: int | None, hi: int | None) -> tuple[list[RunSpec], int]:
    """The runs whose length in steps lies in [lo, hi] (a bound of None: no bound), and how many were left out."""
    if lo is None and hi is None:
        return runs, 0
    kept = []
    for r in runs:
        try:
            steps = r.cfg.total_steps(r.cfg.build_task())
        except ValueError:  # a budget under one step
            steps = 0
        if (lo is None or steps >= lo) and (hi is None or steps <= hi):
            kept.append(r)
    return kept, len(runs) - len(kept)


def _sweep_bar(enabled: bool, total: int, failed: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]sweep"), BarColumn(bar_width=24), MofNCompleteColumn(), TextColumn("runs"),
                   TextColumn("· [red]{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    bar.add_task("sweep", total=total, completed=failed, failed=failed)
    return bar
