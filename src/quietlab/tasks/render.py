"""Showing examples to a person (`quietlab sample`) and as data (`--json`)."""

from __future__ import annotations

import numpy as np

from .base import Batch, Feature, Task


def feature_cell(feature: Feature, i: int, t: int) -> str:
    """The label of example i at position t as a short string ('' where undefined)."""
    if not feature.mask[i, t]:
        return ""
    v = feature.values[i, t]
    if feature.kind == "scalar":
        return " ".join(f"{x:g}" for x in v)
    if feature.kind == "multilabel" or feature.n_classes <= 10:
        return "".join(str(int(x)) for x in v)
    return ",".join(str(int(x)) for x in v)


def render_example(task: Task, batch: Batch, i: int, width: int = 100) -> str:
    """The decoded example, then a grid with each feature's label in the column of its token."""
    text = task.decode(batch.tokens[i])
    last_labelled = max((int(np.nonzero(f.mask[i])[0].max(initial=-1)) for f in batch.features.values()), default=-1)
    length = min(task.seq_len, max(len(text) + 1, last_labelled + 1))  # the end token, and every label
    tokens = [task.vocab[int(t)] for t in batch.tokens[i, :length]]
    rows = {name: [feature_cell(f, i, t) for t in range(length)] for name, f in batch.features.items()}
    col_width = [max([1, len(tokens[t])] + [len(r[t]) for r in rows.values()]) for t in range(length)]
    label_width = max([len("tokens")] + [len(name) for name in rows])

    lines = [f"{task.name}  {text}"]
    start = 0
    while start < length:
        end, used = start, label_width + 2
        while end < length and (end == start or used + col_width[end] + 1 <= width):
            used += col_width[end] + 1
            end += 1
        cols = range(start, end)
        lines.append(f"{'tokens':<{label_width}}  " + " ".join(f"{tokens[t]:<{col_width[t]}}" for t in cols).rstrip())
        for name, cells in rows.items():
            if any(cells[t] for t in cols):
                lines.append(f"{name:<{label_width}}  " + " ".join(f"{cells[t]:<{col_width[t]}}" for t in cols).rstrip())
        start = end
    return "\n".join(lines)


def batch_to_json(task: Task, batch: Batch) -> dict:
    """The same content as data: each example's text, tokens and, per feature, {position: label}."""
    examples = []
    for i in range(len(batch)):
        feats = {}
        for name, f in batch.features.items():
            positions = np.nonzero(f.mask[i])[0]
            cast = float if f.kind == "scalar" else int
            feats[name] = {int(t): [cast(x) for x in f.values[i, t]] for t in positions}
        examples.append({
            "text": task.decode(batch.tokens[i]),
            "tokens": [int(t) for t in batch.tokens[i]],
            "answer_start": int(batch.answer_start[i]),
            "features": feats,
        })
    return {
        "task": task.describe(),
        "feature_kinds": {name: {"kind": f.kind, "k": f.k, "n_classes": f.n_classes} for name, f in batch.features.items()},
        "examples": examples,
    }
