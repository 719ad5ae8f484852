"""Sequence tasks: maximum subarray (Kadane) and activity selection (greedy earliest finish).

Each algorithm scans the batch one sequence position (or one activity) at a time, vectorised over
the examples, and records its running state at the token where it reads it.
"""

from __future__ import annotations

import string

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import register
from .base import TOKEN_DTYPE, Batch, FeatureRecorder, Knob, Task

_LETTERS = string.ascii_uppercase


_NOT_KEPT = np.int16(0x7FFF)  # activity_selection's empty slot: end, start and index 31, beyond any real one
_BLOCK = 1 << 15  # values drawn at a time in _uniform (a multiple of 4): its scratch stays in cache


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Integers uniform on 0..k-1 (k <= 2^16; uint8 when they fit).

    Lemire's multiply-shift on 16-bit draws, redrawing the rare biased ones (2^16 mod k in every
    2^16), so exactly uniform; faster than ``rng.integers`` on small types since every 64-bit draw
    gives four values. Drawn and scaled a block at a time (the same 64-bit stream as one big draw),
    so that no batch-sized temporaries are written: only the result is."""
    size = int(np.prod(shape))
    out = np.empty(size, dtype=np.uint8 if k <= 256 else np.uint16)
    scaled = np.empty(min(size, _BLOCK), dtype=np.uint32)  # value = scaled >> 16
    low = np.uint16(k & 0xFFFF)  # the low half of x * k is x * low in wrapping 16-bit arithmetic
    threshold = (1 << 16) % k  # biased where that low half is < 2^16 mod k
    biased = []
    for lo in range(0, size, _BLOCK):
        m = min(_BLOCK, size - lo)
        raw = rng.integers(0, 1 << 64, size=-(-m // 4), dtype=np.uint64).astype("<u8", copy=False)
        raw = raw.view("<u2")[:m]  # little-endian pieces: the same values on any machine
        np.multiply(raw, np.uint32(k), out=scaled[:m])
        np.right_shift(scaled[:m], 16, out=out[lo : lo + m], casting="unsafe")
        biased.append(lo + np.flatnonzero(raw * low < threshold))
    biased = np.concatenate(biased) if biased else np.zeros(0, dtype=np.intp)
    while len(biased):
        redrawn = rng.integers(0, 1 << 16, size=len(biased), dtype=np.uint16)
        out[biased] = (redrawn * np.uint32(k)) >> 16
        biased = biased[redrawn * low < threshold]
    return out.reshape(shape)


def _byte_words(values: np.ndarray) -> np.ndarray:
    """(n, m) small integers (int8) -> (n, ceil(m/8)) int64 holding their bytes: an exact, compact name
    of each row for the split hash (fewer columns, fewer hashing passes)."""
    n, m = values.shape
    out = np.zeros((n, -(-m // 8) * 8), dtype=np.int8)
    out[:, :m] = values
    return out.view("<i8")


def _transpose(x: np.ndarray, block: int = 1024) -> np.ndarray:
    """A contiguous copy of ``x.T``, made block by block to stay in cache."""
    out = np.empty(x.shape[::-1], dtype=x.dtype)
    for lo in range(0, x.shape[0], block):
        out[:, lo : lo + block] = x[lo : lo + block].T
    return out


def _span_mask(n_cols: int, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """(n, n_cols) bool, True at columns first[i]..last[i] inclusive."""
    cols = np.arange(n_cols, dtype=np.int32)
    return (cols >= first[:, None]) & (cols <= last[:, None])


@register
class MaxSubarray(Task):
    """``values=subarray``: values -9..9 written as letters A..S (A=-9, J=0, S=9); the answer is
    the letters of the maximum-sum contiguous subarray.

    Ties: the smallest start, then the shortest. The subarray is never empty: when every value is
    negative the answer is the single largest value (its first occurrence).

    Solved by Kadane's scan with the tie rule built in: a new subarray starts at j only when the
    sum ending at j-1 is negative (a zero sum keeps the earlier start), and the best is replaced
    only by a strictly larger sum (so the earliest end wins).

    Positions (L = length): x_j at j, ``=`` at L, answer letter r at L+1+r, EOS after the answer.
    """

    name = "max_subarray"
    description = "maximum-sum contiguous subarray of values -9..9 (letters A..S); ties: smallest start, then shortest"
    knobs = (Knob("length", 64, 2, 128, "number of values (the paper uses 64)"),)
    feature_docs = {
        "prev_negative": "binary: at value j (j >= 1), whether the previous value x_{j-1} is negative",
        "restart": "binary: at value j (j >= 1), whether Kadane starts a new subarray there "
        "(the best sum ending at j-1 is negative)",
        "max_ending_here": "scalar: at value j, Kadane's max_ending_here, the largest sum of a subarray ending at j",
        "best_so_far": "scalar: at value j, the largest subarray sum within x_0..x_j",
        "in_answer": "binary: at value j, whether x_j belongs to the answer subarray",
    }

    def _setup(self) -> None:
        self.vocab = ["."] + list(_LETTERS[:19]) + ["="]  # token of value v is v + 10
        self.eq_token = len(self.vocab) - 1
        L = self.length
        self.seq_len = 2 * L + 2
        # by answer size s: the loss mask ('=' up to the last answer letter)
        self._loss_rows = _span_mask(self.seq_len, np.full(L + 1, L), L + np.arange(L + 1))

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        values = _uniform(rng, (n, self.length), 19).view(np.int8)
        values -= 9
        return {"values": values}

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return _byte_words(inputs["values"])

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        if len(prompt) != self.length or set(prompt) - set(_LETTERS[:19]):
            raise ValueError(f"{self.name}: the input must be {self.length} letters A..S, got {prompt!r}")
        values = np.frombuffer(prompt.encode(), dtype=np.uint8).astype(np.int8) - np.int8(ord("A") + 9)
        return {"values": values.reshape(1, -1)}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        x = inputs["values"]
        n, L = x.shape
        rec = FeatureRecorder(n, self.seq_len)
        for feat, doc in self.feature_docs.items():
            if feat in ("max_ending_here", "best_so_far"):  # sums of at most 128 values in -9..9
                rec.declare(feat, "scalar", description=doc, dtype=np.int16)
            else:
                rec.declare(feat, "binary", description=doc)
        rec.share_mask("max_ending_here", "best_so_far", "in_answer")  # all defined at values 0..L-1
        rec.share_mask("prev_negative", "restart")  # both at values 1..L-1
        X = _transpose(x)  # (position, example)
        # every feature is defined at values 0..L-1 (the binary ones from 1 on, except in_answer) and
        # written there for all positions at once, into the recorder's buffers
        here_at, here_mask = rec.window("max_ending_here", slice(0, L))
        best_at, _ = rec.window("best_so_far", slice(0, L))
        negative, negative_mask = rec.window("prev_negative", slice(1, L))
        restart_at, _ = rec.window("restart", slice(1, L))
        answer_at, _ = rec.window("in_answer", slice(0, L))
        np.less(X[:-1], 0, out=negative[..., 0])
        # Kadane's sums, computed in the int16 output buffers themselves
        HERE, BEST = here_at[..., 0], best_at[..., 0]  # (position, example)

        # Kadane's scan; here = max_ending_here, the best sum of a subarray ending at j
        zero = np.zeros(n, dtype=HERE.dtype)
        here, best = HERE[0], BEST[0]
        here[...] = best[...] = X[0]
        start = np.zeros(n, dtype=np.int16)  # where the subarray ending at j starts
        # the answer ends where the best sum is first reached (a later tie would start later or be
        # longer), and starts where the subarray ending there starts
        best_start, best_end = np.zeros(n, dtype=np.int16), np.zeros(n, dtype=np.int16)
        restart = restart_at[..., 0].view(bool)  # (L - 1, n)
        for j in range(1, L):
            # a negative sum never helps; a zero one keeps its (earlier) start
            np.less(here, zero, out=restart[j - 1])
            np.maximum(start, restart[j - 1] * np.int16(j), out=start)  # start afresh at j
            np.maximum(here, zero, out=HERE[j])
            here = HERE[j]
            here += X[j]
            # start and j only grow, so the latest improvement's are the largest (and masked copies are slow)
            improved = here > best
            np.maximum(best_start, improved * start, out=best_start)
            np.maximum(best_end, improved * np.int16(j), out=best_end)
            best = np.maximum(best, here, out=BEST[j])
        # in the answer: 0 <= j - best_start <= best_end - best_start, one unsigned comparison on
        # uint8 (|j - best_start| < 128; negative offsets wrap past 127), in place in the output
        in_answer = answer_at[..., 0]
        np.subtract(np.arange(L, dtype=np.uint8)[:, None], best_start.astype(np.uint8), out=in_answer)
        np.less_equal(in_answer, (best_end - best_start).astype(np.uint8), out=in_answer.view(bool))
        here_mask[...] = True  # shared with best_so_far and in_answer
        negative_mask[...] = True  # shared with restart

        # tokens: values, '=', the subarray's letters, then '.'
        size = best_end - best_start + 1
        tokens = np.zeros((n, self.seq_len), dtype=TOKEN_DTYPE)
        np.add(x.view(np.uint8), np.uint8(10), out=tokens[:, :L])  # -9..9 -> 1..19, wrapping
        tokens[:, L] = self.eq_token
        loss_mask = self._loss_rows[size]  # from '=' on: True at the answer's letters (and '=')
        from_start = sliding_window_view(tokens, L, axis=1)[np.arange(n), best_start]  # the row from the start on
        np.multiply(from_start, loss_mask[:, L + 1 : 2 * L + 1], out=tokens[:, L + 1 : 2 * L + 1])
        return Batch(tokens, loss_mask, rec.features())


@register
class ActivitySelection(Task):
    """``starts ends=pairs``: n activities, activity i runs from start_i to end_i (start < end), times
    0..max_time written as letters (A=0, B=1, ...). The answer lists the activities chosen by the
    greedy earliest-finish rule as start-end letter pairs, in the order chosen.

    Greedy: sort by end time (ties: earlier start, then lower index); keep an activity when its start
    is >= the end of the last kept one (before any is kept: always).

    Times: each activity is drawn uniformly among the pairs 0 <= start < end <= max_time. The paper
    draws "values 1..9", nine time values; the default max_time=8 gives the same nine values, shifted
    down by one so that the first letter A (time 0) is used.

    Positions (n activities): start_i at i, end_i at n+i, ``=`` at 2n, the r-th chosen pair at
    2n+1+2r (start) and 2n+2+2r (end), EOS after the last pair.
    """

    name = "activity_selection"
    description = "greedy earliest-finish activity selection; times are letters A=0, B=1, ..."
    knobs = (
        Knob("n", 16, 2, 26, "number of activities (the paper uses 16)"),
        Knob("max_time", 8, 1, 25, "largest time; times are 0..max_time (the paper: nine values)"),
    )
    feature_docs = {
        "start_time": "categorical (max_time+1 classes): the start time of the activity whose end token is "
        "read: at input end_i (position n+i) start_i; at each chosen pair's end letter, that pair's start",
        "selected": "binary: at both input tokens of activity i (positions i and n+i), whether the greedy keeps it",
        "last_end": "categorical (max_time+1 classes): at '=' and at every answer token, the end time of the "
        "last chosen activity whose end letter has been written (0 before the first)",
        "compatible": "multilabel (n columns): at '=' and at every chosen end letter (the positions predicting "
        "the next chosen start), column i is whether activity i starts at or after last_end",
    }

    def _setup(self) -> None:
        T = self.max_time
        self.vocab = ["."] + list(_LETTERS[: T + 1]) + ["="]  # token of time t is t + 1
        self.eq_token = len(self.vocab) - 1
        self.seq_len = 4 * self.n + 2
        eq = 2 * self.n
        starts, ends = np.triu_indices(T + 1, k=1)  # every pair start < end <= T
        # by number of kept activities c: 1 on the answer letters (2c of them), and the loss mask
        answer_len = 2 * np.arange(self.n + 1)
        self._answer_rows = (np.arange(self.seq_len - eq - 1) < answer_len[:, None]).astype(TOKEN_DTYPE)
        self._loss_rows = _span_mask(self.seq_len, np.full(self.n + 1, eq), eq + answer_len)
        self._pair_start, self._pair_end = starts.astype(np.int8), ends.astype(np.int8)
        # (start, end) of every pair as one 16-bit item, so that one gather gives both
        self._pair_times = np.stack([self._pair_start, self._pair_end], axis=1).view(np.int16)[:, 0]
        self._pair_index = np.full((T + 1, T + 1), -1, dtype=np.int16)  # (start, end) -> pair, -1 if end <= start
        self._pair_index[starts, ends] = np.arange(len(starts))
        self._pair_dtype = np.uint8 if len(starts) <= 256 else np.uint16

    @staticmethod
    def _greedy(S: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Greedy earliest finish over (activity, example) start and end times. Returns ``kept``
        (m + 1, n) int16, slot c holding the c-th kept activity as ``end << 10 | start << 5 | index``
        and the slots from ``count`` on ``_NOT_KEPT``; ``count`` (n,), activities kept per example;
        ``selected`` (m, n) bool, whether each activity is kept.

        Goes through the end times t in order, keeping the earliest start, then the lowest index, of
        the activities that end at t and start at or after the last kept end. Of several ending at t at
        most one fits (once one is kept, last = t > every other's start), so this keeps exactly what a
        scan of the activities sorted by (end, start, index) keeps. Every activity as that sort key
        (times <= 25, m <= 26): those that end at t and start at or after ``last`` are the keys from
        ``t << 10 | last << 5`` up to ``(t + 1) << 10``, and the smallest key past a bound is the one
        with the smallest (key - bound) as an unsigned number (the keys below the bound wrap)."""
        m, n = S.shape
        key = (E.astype(np.int16) << 10) | (S.astype(np.int16) << 5) | np.arange(m, dtype=np.int16)[:, None]
        last = np.zeros(n, dtype=np.int16)  # the last kept end; 0 before any (every start is >= 0)
        count = np.zeros(n, dtype=np.int16)
        kept = np.full((m + 1, n), _NOT_KEPT, dtype=np.int16)
        slot = np.arange(n)  # flat index in ``kept`` of each row's next slot (scratch until kept)
        past = np.empty((m, n), dtype=np.int16)  # key - bound
        for t in range(1, int(E.max(initial=0)) + 1):
            bound = (last << 5) + np.int16(t << 10)
            np.subtract(key, bound, out=past)
            smallest = past.view(np.uint16).min(axis=0)
            keep = smallest < (np.int16(1 << 10) - (last << 5)).view(np.uint16)
            kept.reshape(-1)[slot] = smallest.view(np.int16) + bound
            np.maximum(last, keep * np.int16(t), out=last)
            count += keep
            slot += keep * n
        kept.reshape(-1)[slot] = _NOT_KEPT  # the scratch writes
        selected = np.zeros((m, n), dtype=bool)
        for c in range(int(count.max(initial=0))):
            selected |= key == kept[c]
        return kept, count, selected

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # each activity as the index of its (start, end) pair in the table of all pairs
        return {"pair": _uniform(rng, (n, self.n), len(self._pair_start))}

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return _byte_words(np.ascontiguousarray(inputs["pair"]).view(np.int8))

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        letters = _LETTERS[: self.max_time + 1]
        if len(prompt) != 2 * self.n or set(prompt) - set(letters):
            raise ValueError(f"{self.name}: the input must be {2 * self.n} letters A..{letters[-1]}, got {prompt!r}")
        times = np.frombuffer(prompt.encode(), dtype=np.uint8) - ord("A")
        pair = self._pair_index[times[: self.n], times[self.n :]]
        if np.any(pair < 0):
            raise ValueError(f"{self.name}: every end must come after its start, got {prompt!r}")
        return {"pair": pair.reshape(1, -1).astype(self._pair_dtype)}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        pair = inputs["pair"]
        times = np.take(self._pair_times, pair).view(np.int8)  # start_0, end_0, start_1, ...
        start, end = times[:, 0::2], times[:, 1::2]
        n, m = start.shape
        T = self.max_time
        eq = 2 * m
        docs = self.feature_docs
        rec = FeatureRecorder(n, self.seq_len)
        rec.declare("start_time", "categorical", n_classes=T + 1, description=docs["start_time"])
        rec.declare("selected", "binary", description=docs["selected"])
        rec.declare("last_end", "categorical", n_classes=T + 1, description=docs["last_end"])
        rec.declare("compatible", "multilabel", k=m, description=docs["compatible"])
        for i in range(m):  # reading end_i, the model should recall start_i
            rec.push("start_time", m + i, start[:, i])
        S, E = _transpose(start), _transpose(end)  # (activity, example)

        kept, count, selected = self._greedy(S, E)
        kept_end, kept_start = kept >> 10, (kept >> 5) & 31  # past the kept ones: 31, after every time
        for i in range(m):
            rec.push("selected", i, selected[i])
            rec.push("selected", m + i, selected[i])

        # the answer, pair by pair: at '=' and after each end letter, the next pair must fit after last_end
        nothing_yet = np.zeros(n, dtype=np.int8)
        rec.push("last_end", eq, nothing_yet)
        n_pairs = int(count.max(initial=0))
        for c in range(n_pairs):
            valid = None if c == 0 else count > c  # every row keeps at least one activity
            at = eq + 1 + 2 * c  # where the c-th kept start letter goes
            rec.push("last_end", at, kept_end[c - 1] if c else nothing_yet, where=valid)
            rec.push("last_end", at + 1, kept_end[c], where=valid)
            rec.push("start_time", at + 1, kept_start[c], where=valid)
        # compatible at '=' (everything) and after each chosen end letter, all positions at once (past a
        # row's last pair kept_end is 31, which no start reaches)
        values, mask = rec.window("compatible", slice(eq, eq + 1 + 2 * n_pairs, 2))
        values[0], mask[0] = 1, True
        np.greater_equal(np.ascontiguousarray(start), kept_end[:n_pairs, :, None], out=values[1:])
        np.less(np.arange(n_pairs)[:, None], count, out=mask[1:])

        tokens = np.zeros((n, self.seq_len), dtype=TOKEN_DTYPE)
        tokens[:, :m] = start
        tokens[:, m:eq] = end
        tokens[:, eq + 1 : eq + 1 + 2 * m : 2] = kept_start[:m].T
        tokens[:, eq + 2 : eq + 2 + 2 * m : 2] = kept_end[:m].T
        tokens += 1  # the letter of time t is token t + 1
        tokens[:, eq + 1 :] *= self._answer_rows[count]  # padding (and the scratch slot) after the answer: 0
        tokens[:, eq] = self.eq_token
        loss_mask = self._loss_rows[count]
        return Batch(tokens, loss_mask, rec.features())
