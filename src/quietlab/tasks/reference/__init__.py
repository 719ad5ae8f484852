"""One plain per-example reference implementation per task (a readable BFS, a carry adder, Kadane...):
the specification the tests hold the vectorised tasks to, and the yardstick benchmarks/generation.py
times them against.

``REFERENCES[name](n, seed) -> list`` draws n training-side examples one at a time (plain Python,
``random.Random(seed)``) at the task's default size; ``SOLVERS[name](inputs, task) -> dict`` computes
one example from a task's raw inputs (one row of ``Task._draw``'s dict, as lists). Each example is a
dict: ``text``, ``tokens``, ``loss_mask`` and ``features`` (per position, None where undefined).
``check_against_reference(task, count)`` says where a task's batch differs from its reference.
"""

from __future__ import annotations

import numpy as np

from . import arithmetic, graphs

REFERENCES = {**arithmetic.REFERENCES, **graphs.REFERENCES}
SOLVERS = {**arithmetic.SOLVERS, **graphs.SOLVERS}


def check_against_reference(task, count: int = 300, seed: int = 123) -> None:
    """AssertionError naming the first example, feature and position where ``task`` and its reference
    disagree on the same raw inputs: text, tokens, loss mask and every feature label."""
    solve = SOLVERS[task.name]
    inputs = task._draw(count, np.random.default_rng(seed))
    batch = task._build(inputs)
    for i in range(count):
        ref = solve({k: v[i].tolist() for k, v in inputs.items()}, task)
        where = f"{task.name} example {i}"
        assert task.decode(batch.tokens[i]) == ref["text"], where
        assert batch.tokens[i].tolist() == ref["tokens"], where
        assert batch.loss_mask[i].tolist() == ref["loss_mask"], where
        assert set(ref["features"]) == set(batch.features), where
        for name, feat in batch.features.items():
            labels = ref["features"][name]
            for t in range(task.seq_len):
                if labels[t] is None:
                    assert not feat.mask[i, t], (where, name, t)
                else:
                    assert feat.mask[i, t], (where, name, t)
                    assert np.array_equal(feat.values[i, t], np.atleast_1d(labels[t])), (where, name, t)
