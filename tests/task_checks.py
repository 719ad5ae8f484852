"""Checks shared by the task tests: the text layout and the per-position feature labels."""

from __future__ import annotations

import re

import numpy as np


def texts(task, batch) -> list[str]:
    """Each row as its full text, padding included, read through the vocabulary by hand."""
    return ["".join(task.vocab[t] for t in row) for row in batch.tokens]


def check_layout(task, batch, text_re: str) -> list[re.Match]:
    """The rows are `input=answer` + '.' padding, and the loss mask covers '=' .. last answer token."""
    assert batch.tokens.shape == (len(batch), task.seq_len)
    assert task.vocab[0] == "."
    matches = []
    for row, mask in zip(texts(task, batch), batch.loss_mask):
        body = row.rstrip(".")
        assert len(row) == task.seq_len and len(body) < task.seq_len  # room for the end-of-sequence '.'
        match = re.fullmatch(text_re, body)
        assert match, body
        expected = np.zeros(task.seq_len, dtype=bool)
        expected[body.index("=") : len(body)] = True
        np.testing.assert_array_equal(mask, expected)
        matches.append(match)
    return matches


def expect_feature(batch, name, expected: dict[tuple[int, int], object]):
    """Feature `name` is defined exactly at the (row, position) keys of `expected`, with those values."""
    feat = batch.features[name]
    assert feat.values.shape[:2] == feat.mask.shape == batch.tokens.shape
    want_mask = np.zeros(feat.mask.shape, dtype=bool)
    want = np.zeros(feat.values.shape, dtype=np.float64)
    for (i, t), value in expected.items():
        want_mask[i, t] = True
        want[i, t] = value
    np.testing.assert_array_equal(feat.mask, want_mask, err_msg=name)
    np.testing.assert_array_equal(feat.values[want_mask], want[want_mask], err_msg=name)


def check_features_well_formed(task, n: int = 400):
    """Every feature documented, of its documented kind and shape, with labels in range, and nothing
    labelled on the padding after the answer (nor on its end token)."""
    batch = task.sample(n, seed=8, split="test")
    assert len(batch) == n
    assert set(batch.features) == set(task.feature_docs)
    answer_end = np.array([len(task.decode(row)) - 1 for row in batch.tokens])
    for name, feat in batch.features.items():
        assert feat.kind in task.feature_docs[name].split(":")[0], name
        assert feat.values.shape[:2] == (n, task.seq_len) and feat.mask.any(), name
        defined = feat.values[feat.mask]
        if feat.kind in ("binary", "multilabel"):
            assert set(np.unique(defined)) <= {0, 1}, name
        if feat.kind == "categorical":
            assert defined.min() >= 0 and defined.max() < feat.n_classes, name
        after = np.arange(task.seq_len) > answer_end[:, None]
        assert not feat.mask[after].any(), name


def check_size_error(cls, sizes: dict, words: list[str]):
    """Constructing ``cls(**sizes)`` fails with one message that names each of ``words``."""
    import pytest

    with pytest.raises(ValueError) as err:
        cls(**sizes)
    for word in words:
        assert word in str(err.value)
