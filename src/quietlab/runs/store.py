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
                                                    ablations, events ("plateau since", "transition at")
"""

from __future__ import annotations

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


class RunStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        migrate_numbered_layers(self._db, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing ----------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?)",
                [(int(step), k, None if v is None else float(v)) for k, v in metrics.items()],
            )

    def log_probes(self, rows, fit: str = "online") -> None:
        """rows: iterable of (step, feature, layer, position, metric, value); ``fit``: see FITS."""
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(s), f, str(l), int(p), m, float(v), fit) for s, f, l, p, m, v in rows],
            )

    def put(self, kind: str, key: str, value, step: int | None = None) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", (kind, key, step, json.dumps(value)))

    def truncate_after(self, step: int) -> None:
        """Forget everything logged after ``step`` (used when a run resumes from an earlier checkpoint)."""
        with self._db:
            self._db.execute("DELETE FROM metrics WHERE step > ?", (step,))
            self._db.execute("DELETE FROM probes WHERE step > ?", (step,))

    # --- reading ----------------------------------------------------------------------------
    def series(self, name: str, after: int | None = None) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, in step order; ``after``: only the steps past it."""
        rows = self._db.execute("SELECT step, value FROM metrics WHERE name = ? AND step > ? ORDER BY step",
                                (name, -1 if after is None else after)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def metric_names(self, prefix: str = "") -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT name FROM metrics WHERE name LIKE ? ORDER BY name", (prefix.replace("%", r"\%") + "%",)
        )
        return [r[0] for r in rows]

    def fits(self) -> list[str]:
        """The probe fits this store holds, of FITS."""
        have = {r[0] for r in self._db.execute("SELECT DISTINCT fit FROM probes")}
        return [f for f in FITS if f in have]

    def shown_fit(self) -> str:
        """The fit summaries, reports and feature classes read: the checkpoint re-fit (``quietlab probe``)
        when there is one, as the later and asked-for fit, else the online one."""
        return "checkpoint" if "checkpoint" in self.fits() else "online"

    def probes(self, feature: str | None = None, metric: str | None = None, fit: str | None = None) -> list[tuple]:
        """(step, feature, layer, position, metric, value) rows of one fit (default: ``shown_fit()``), filtered."""
        sql = "SELECT step, feature, layer, position, metric, value FROM probes WHERE fit = ?"
        args = [fit or self.shown_fit()]
        if feature is not None:
            sql, args = sql + " AND feature = ?", args + [feature]
        if metric is not None:
            sql, args = sql + " AND metric = ?", args + [metric]
        return self._db.execute(sql + " ORDER BY step, feature, layer, position", args).fetchall()

    def get(self, kind: str, key: str):
        row = self._db.execute("SELECT json FROM results WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def results(self, kind: str) -> dict[str, object]:
        rows = self._db.execute("SELECT key, json FROM results WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return {k: json.loads(v) for k, v in rows}
