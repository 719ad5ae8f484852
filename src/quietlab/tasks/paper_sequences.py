"""The paper preset's sequence tasks (PAPER_PROTOCOL §1): maximum subarray and activity selection,
both drawn as uniform multisets, shuffled (the paper's ``sample_multisets``), not as i.i.d. values.

Letters: value v is ``chr(65 + v)``; the vocabulary is the paper's ``A``-``S``, ``=``, ``<EOS>``
(``<EOS>`` written ``.`` and numbered 0, the letters 1-19, ``=`` 20: a renaming of the paper's ids).
"""

from __future__ import annotations

import string

import numpy as np

from . import register
from .base import TOKEN_DTYPE, Batch, Feature, FeatureRecorder, Knob, Task
from .paper_format import shift_feature, target_equals
from .sequences import MaxSubarray, _byte_words, _span_mask

_LETTERS = string.ascii_uppercase[:19]  # A..S


def uniform_multisets(rng: np.random.Generator, n: int, size: int, n_values: int) -> np.ndarray:
    """(n, size) int8: n multisets of ``size`` values in 0..n_values-1, each uniform among all
    C(size + n_values - 1, size) multisets, then shuffled.

    Stars and bars: a uniformly random set of n_values - 1 bar slots among size + n_values - 1; a
    star's value is the number of bars before it."""
    slots, bars = size + n_values - 1, n_values - 1
    is_bar = np.zeros((n, slots), dtype=bool)
    if bars:  # the slots of the ``bars`` smallest of n x slots uniform keys: a uniform subset
        np.put_along_axis(is_bar, np.argpartition(rng.random((n, slots)), bars - 1, axis=1)[:, :bars], True, axis=1)
    values = np.cumsum(is_bar, axis=1, dtype=np.int8)[~is_bar].reshape(n, size)
    order = np.argsort(rng.random((n, size)), axis=1)
    return np.take_along_axis(values, order, axis=1)


@register
class PaperMaxSubarray(MaxSubarray):
    """``values=subarray``, 64 values -9..9 as letters A..S; 130 tokens at length 64.

    The rule is quietlab's (Kadane restarting only when the running sum is negative, the best
    replaced only by a strictly larger sum: the first maximum wins, zero-sum prefixes stay), which is
    the paper's. The sampler: a uniform multiset of the values, shuffled.
    """

    preset = "paper"
    description = "maximum-sum subarray of a shuffled uniform multiset of 64 values -9..9 (letters A..S)"
    feature_docs = {
        "is_prev_negative": "binary: at position r+1 (r=0..L-1; r=L-1 is '='), whether x_r < 0 (quiet in the paper)",
        "max_ending_here": "scalar: at position r+1 (r=0..L-1), Kadane's running sum after x_r, except 0 at r=0 "
        "as the paper labels it (loud in the paper)",
        "prev_negative": MaxSubarray.feature_docs["prev_negative"] + " (quietlab's positions of is_prev_negative)",
        "restart": MaxSubarray.feature_docs["restart"],
        "best_so_far": MaxSubarray.feature_docs["best_so_far"],
        "in_answer": MaxSubarray.feature_docs["in_answer"],
    }

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        values = uniform_multisets(rng, n, self.length, 19)
        values -= 9
        return {"values": values}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        batch = super()._build(inputs)
        x = inputs["values"]
        n, L = x.shape
        features = dict(batch.features)
        here = shift_feature(features["max_ending_here"], 1, self.feature_docs["max_ending_here"])
        here.values[:, 1] = 0
        features["max_ending_here"] = here
        negative = np.zeros((n, self.seq_len, 1), dtype=np.uint8)
        negative[:, 1 : L + 1, 0] = x < 0
        mask = np.zeros((n, self.seq_len), dtype=bool)
        mask[:, 1 : L + 1] = True
        features["is_prev_negative"] = Feature(negative, mask, "binary",
                                               description=self.feature_docs["is_prev_negative"])
        return target_equals(batch, features)


@register
class PaperActivitySelection(Task):
    """``starts ends=pairs``: 16 start letters then 16 end letters, ``=``, the chosen activities'
    (start, end) letter pairs in the order chosen; 66 tokens at n=16.

    Sampler: a uniform multiset of 2n values over 1..9, shuffled; the first n are the starts, the
    last n the durations, end = start + duration (2..18). Letter of time t: ``chr(65 + t)`` (start 1
    is ``B``). Greedy: a stable sort by end time only (ties keep input order), last_end = 0, keep an
    activity when its start >= last_end.

    Positions: start_i at i, end_i at n+i, ``=`` at 2n, the c-th chosen pair at 2n+1+2c, 2n+2+2c.
    """

    name = "activity_selection"
    preset = "paper"
    description = "greedy activity selection, end-time ties in input order; times drawn as a uniform multiset over 1..9"
    knobs = (Knob("n", 16, 2, 64, "number of activities (the paper uses 16)"),)
    feature_docs = {
        "start_time": "scalar: at end token e_r (position n+r, r=0..n-1), the start s_r of that activity, "
        "by regression (loud in the paper)",
        "selected": "binary: at both input tokens of activity i (positions i and n+i), whether the greedy keeps it",
    }

    def _setup(self) -> None:
        self.vocab = ["."] + list(_LETTERS) + ["="]  # letter of time t is token t + 1
        self.eq_token = len(self.vocab) - 1
        self.seq_len = 4 * self.n + 2

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        values = uniform_multisets(rng, n, 2 * self.n, 9)
        values += 1
        return {"values": values}  # starts, then durations

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return _byte_words(inputs["values"])

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        m = self.n
        if len(prompt) != 2 * m or set(prompt) - set(_LETTERS):
            raise ValueError(f"{self.name}: the input must be {2 * m} letters A..S, got {prompt!r}")
        times = np.frombuffer(prompt.encode(), dtype=np.uint8).astype(np.int8) - np.int8(ord("A"))
        starts, durations = times[:m], times[m:] - times[:m]
        if starts.min() < 1 or starts.max() > 9 or durations.min() < 1 or durations.max() > 9:
            raise ValueError(f"{self.name}: starts and durations (end - start) must be 1..9, got {prompt!r}")
        return {"values": np.concatenate([starts, durations]).reshape(1, -1)}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        values = inputs["values"].astype(np.int8)
        n, m = len(values), self.n
        eq = 2 * m
        start = values[:, :m]
        end = start + values[:, m:]
        rec = FeatureRecorder(n, self.seq_len)
        for name, kind in (("start_time", "scalar"), ("selected", "binary")):
            rec.declare(name, kind, description=self.feature_docs[name])
        window, mask = rec.window("start_time", slice(m, 2 * m))
        window[..., 0] = start.T  # at end token e_r, its start s_r
        mask[...] = True

        order = np.argsort(end, axis=1, kind="stable")  # by end time only; ties keep input order
        by_end_start = np.take_along_axis(start, order, axis=1)
        by_end_end = np.take_along_axis(end, order, axis=1)
        last_end = np.zeros(n, dtype=np.int8)
        kept = np.zeros((n, m), dtype=bool)  # in end-time order
        for j in range(m):
            keep = by_end_start[:, j] >= last_end
            kept[:, j] = keep
            np.copyto(last_end, by_end_end[:, j], where=keep)
        selected = np.zeros((n, m), dtype=bool)
        np.put_along_axis(selected, order, kept, axis=1)
        sel_window, sel_mask = rec.window("selected", slice(0, 2 * m))
        sel_window[..., 0] = np.concatenate([selected, selected], axis=1).T
        sel_mask[...] = True

        count = kept.sum(axis=1)
        tokens = np.zeros((n, self.seq_len), dtype=TOKEN_DTYPE)
        tokens[:, :m] = start + 1
        tokens[:, m:eq] = end + 1
        tokens[:, eq] = self.eq_token
        rows, j = np.nonzero(kept)
        slot = np.cumsum(kept, axis=1)[rows, j] - 1  # the pair's place in the answer
        tokens[rows, eq + 1 + 2 * slot] = by_end_start[rows, j] + 1
        tokens[rows, eq + 2 + 2 * slot] = by_end_end[rows, j] + 1
        loss_mask = _span_mask(self.seq_len, np.full(n, eq - 1), eq + 2 * count)
        return Batch(tokens, loss_mask, rec.features())
