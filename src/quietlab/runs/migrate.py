"""Run folders written before hook names (probe layer k: 0 = embeddings, k = output of block k-1; metric
names ``attn/entropy/L{l}/H{h}``, ``grad/q/L{l}/H{h}``) are migrated in place when their store is opened.

Old stores hold one probe fit: the Monitor's rows, overwritten by ``quietlab probe`` where it re-fitted
a step. They become the ``online`` fit, which is what they mostly are.
"""

from __future__ import annotations

import json
import re
import sqlite3

from ..models.hooks import EMBED, attn_module, attn_pattern, resid_post

_OLD_METRIC = re.compile(r"(attn/entropy|grad/[qkv])/L(\d+)/(H\d+)$")


def numbered_layer(k) -> str:
    """An old probe layer index as a hook name (0 → hook_embed, k → blocks.{k-1}.hook_resid_post)."""
    return EMBED if int(k) == 0 else resid_post(int(k) - 1)


def _metric_name(name: str) -> str:
    m = _OLD_METRIC.match(name)
    if not m:
        return name
    family, layer, head = m.groups()
    where = attn_pattern(layer) if family == "attn/entropy" else attn_module(layer)
    return f"{family}/{where}/{head}"


def _result(kind: str, value):
    if kind == "feature_class" and isinstance(value, dict):
        for key in ("best_layer", "decodable_layer"):
            if isinstance(value.get(key), int):
                value[key] = numbered_layer(value[key])
    if kind == "ablation" and isinstance(value, dict):
        if isinstance(value.get("layer"), int):
            value["layer"] = numbered_layer(value["layer"])
        if isinstance(value.get("layers"), dict):
            value["layers"] = {t: numbered_layer(k) if isinstance(k, int) else k for t, k in value["layers"].items()}
    return value


def migrate_numbered_layers(db: sqlite3.Connection, schema: str) -> bool:
    """Rewrite an old store's probe, metric and result rows with hook names; True if it was old."""
    columns = [r[1] for r in db.execute("PRAGMA table_info(probes)")]
    if not columns or "fit" in columns:
        return False
    with db:
        db.execute("ALTER TABLE probes RENAME TO probes_numbered")
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO probes SELECT step, feature, CASE WHEN layer = 0 THEN ? ELSE 'blocks.' || (layer - 1) || "
            "'.hook_resid_post' END, position, metric, value, 'online' FROM probes_numbered", (EMBED,))
        db.execute("DROP TABLE probes_numbered")
        for (name,) in db.execute("SELECT DISTINCT name FROM metrics").fetchall():
            if (new := _metric_name(name)) != name:
                db.execute("UPDATE metrics SET name = ? WHERE name = ?", (new, name))
        for kind, key, text in db.execute("SELECT kind, key, json FROM results").fetchall():
            new = json.dumps(_result(kind, json.loads(text)))
            if new != text:
                db.execute("UPDATE results SET json = ? WHERE kind = ? AND key = ?", (new, kind, key))
    return True
