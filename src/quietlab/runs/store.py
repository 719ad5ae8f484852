"""metrics.sqlite: step-indexed metrics, probe results and named results, in WAL mode.

Tables (readable with any SQLite client):
  metrics(step, name, value)                        scalars: train/loss, eval/exact_match,
                                                    attn/entropy/blocks.0.attn.hook_pattern/H1 ...
  probes(step, feature, layer, position, metric, value, fit)
                                                    one row per probe fit; layer is a hook name
                                                    (hook_embed, blocks.{l}.hook_resid_post); metric is e.g.
                                                    "acc", "logloss", "r2", "mse"; the random-init baseline
                                                    is step 0; fit: "online" (the Monitor, while training)
                                                    or "checkpoint" (``quietlab probe``, re-fitted later)
  results(kind, key, step, json)                    structured results: transitions, feature classes,
                                                    ablations, events ("plateau since", "transition at");
                                                    for runs of the paper preset also paper_baseline (the
                                                    random model's probes) and feature_class_paper
"""

from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path

from .migrate import migrate_numbered_layers

#: a run's probe fits: the Monitor's while training, and ``quietlab probe``'s on the saved checkpoints
FITS = ("online", "checkpoint")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
                                    PRIMARY KEY (step, name));
CREATE TABLE IF NOT EXISTS probes (step INTEGER NOT NULL, feature TEXT NOT NULL, layer TEXT NOT NULL,
                                   position INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
                                   fit TEXT NOT NULL DEFAULT 'online',
                                   PRIMARY KEY (fit, step, feature, layer, position, metric));
CREATE TABLE IF NOT EXISTS results (kind TEXT NOT NULL, key TEXT NOT NULL, step INTEGER, json TEXT NOT NULL,
                                    PRIMARY KEY (kind, key));
"""


TABLES = ("metrics", "probes", "results")


def _named(method):
    """SQLite's errors (corrupt file, disk full, read-only file) as one ValueError naming the file."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: {exc}") from None

    return wrapper


class RunStore:
    """The store of one run. ``readonly=True`` (every reader): opened with SQLite's ``mode=ro``, never
    created, changed or given a schema; a missing, empty, corrupt or foreign file is a ValueError."""

    def __init__(self, path: Path | str, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                self._db = self._open_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                migrate_numbered_layers(self._db, _SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a readable quietlab store: {exc}") from None
        except OSError as exc:
            raise ValueError(f"cannot open {self.path}: {exc.strerror or exc}") from None

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise ValueError(f"{self.path} does not exist (no metrics in this run folder)")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=30)
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError:
            # a WAL database in a folder this process may not write: no shared-memory file can be made
            # beside it, so read it as immutable (nothing writes a folder its reader cannot write)
            db = sqlite3.connect(uri + "&immutable=1", uri=True)
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in TABLES if t not in names]
        if missing:
            db.close()
            raise ValueError(f"{self.path} is not a quietlab store (no {', '.join(missing)} table)")
        if "fit" not in [r[1] for r in db.execute("PRAGMA table_info(probes)")]:
            # a store written before hook names: read a migrated copy in memory, leave the file as it is
            memory = sqlite3.connect(":memory:")
            db.backup(memory)
            db.close()
            migrate_numbered_layers(memory, _SCHEMA)
            return memory
        return db

    def close(self) -> None:
        if not self.readonly:
            # leave WAL mode: a finished run is then one self-contained file, and a read-only reader
            # needs no -wal/-shm files beside it (it would create them otherwise); a no-op while
            # another connection is open
            try:
                self._db.execute("PRAGMA busy_timeout = 0")  # a reader holds it: stay in WAL, do not wait
                self._db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.DatabaseError:
                pass
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing ----------------------------------------------------------------------------
    @_named
    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.log_steps({step: metrics})

    @_named
    def log_steps(self, rows: dict[int, dict[str, float]]) -> None:
        """{step: {name: value}} in one transaction (a training loop's pending steps at once)."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?)",
                [(int(step), k, None if v is None else float(v)) for step, metrics in rows.items()
                 for k, v in metrics.items()],
            )

    @_named
    def log_probes(self, rows, fit: str = "online") -> None:
        """rows: iterable of (step, feature, layer, position, metric, value); ``fit``: see FITS."""
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(s), f, str(l), int(p), m, float(v), fit) for s, f, l, p, m, v in rows],
            )

    @_named
    def put(self, kind: str, key: str, value, step: int | None = None) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", (kind, key, step, json.dumps(value)))

    @_named
    def truncate_after(self, step: int) -> None:
        """Forget everything logged after ``step`` (used when a run resumes from an earlier checkpoint)."""
        with self._db:
            self._db.execute("DELETE FROM metrics WHERE step > ?", (step,))
            self._db.execute("DELETE FROM probes WHERE step > ?", (step,))

    # --- reading ----------------------------------------------------------------------------
    @_named
    def series(self, name: str, after: int | None = None) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, in step order; ``after``: only the steps past it."""
        rows = self._db.execute("SELECT step, value FROM metrics WHERE name = ? AND step > ? ORDER BY step",
                                (name, -1 if after is None else after)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    @_named
    def mean_series(self, prefix: str) -> tuple[list[int], list[float]]:
        """(steps, values): per step, the mean over every metric whose name starts with ``prefix`` (e.g. every
        layer and head of ``attn/entropy/``), over those logged at that step."""
        rows = self._db.execute(
            "SELECT step, AVG(value) FROM metrics WHERE substr(name, 1, ?) = ? AND value IS NOT NULL "
            "GROUP BY step ORDER BY step", (len(prefix), prefix)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    @_named
    def metric_names(self, prefix: str = "") -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT name FROM metrics WHERE substr(name, 1, ?) = ? ORDER BY name", (len(prefix), prefix)
        )
        return [r[0] for r in rows]

    @_named
    def fits(self) -> list[str]:
        """The probe fits this store holds, of FITS."""
        have = {r[0] for r in self._db.execute("SELECT DISTINCT fit FROM probes")}
        return [f for f in FITS if f in have]

    def shown_fit(self) -> str:
        """The fit summaries, reports and feature classes read: the checkpoint re-fit (``quietlab probe``)
        when there is one, as the later and asked-for fit, else the online one."""
        return "checkpoint" if "checkpoint" in self.fits() else "online"

    @_named
    def probes(self, feature: str | None = None, metric: str | None = None, fit: str | None = None) -> list[tuple]:
        """(step, feature, layer, position, metric, value) rows of one fit (default: ``shown_fit()``), filtered."""
        sql = "SELECT step, feature, layer, position, metric, value FROM probes WHERE fit = ?"
        args = [fit or self.shown_fit()]
        if feature is not None:
            sql, args = sql + " AND feature = ?", args + [feature]
        if metric is not None:
            sql, args = sql + " AND metric = ?", args + [metric]
        return self._db.execute(sql + " ORDER BY step, feature, layer, position", args).fetchall()

    @_named
    def get(self, kind: str, key: str):
        row = self._db.execute("SELECT json FROM results WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else json.loads(row[0])

    @_named
    def results(self, kind: str) -> dict[str, object]:
        rows = self._db.execute("SELECT key, json FROM results WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return {k: json.loads(v) for k, v in rows}
