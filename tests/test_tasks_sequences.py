"""max_subarray and activity_selection against brute force and a plain greedy.

Every check reads the batch (text, tokens, masks, features) and compares it with what an independent
solver says it should be; nothing is compared with the task's own output.
"""

from __future__ import annotations

import itertools
import string

import numpy as np
import pytest

from quietlab.tasks.sequences import ActivitySelection, MaxSubarray

from task_checks import check_features_well_formed, check_layout, check_size_error, expect_feature

LETTERS = string.ascii_uppercase


def brute_max_subarray(values: list[int]) -> tuple[int, int]:
    """(start, end) of the max-sum subarray, ties: smallest start, then shortest; by trying all."""
    best = None
    for i in range(len(values)):
        total = 0
        for j in range(i, len(values)):
            total += values[j]
            key = (-total, i, j)
            if best is None or key < best:
                best = key
    return best[1], best[2]


def max_sum_ending_at(values: list[int], j: int) -> int:
    return max(sum(values[i : j + 1]) for i in range(j + 1))


@pytest.mark.parametrize("length,count", [(2, 400), (3, 400), (17, 600), (64, 700), (128, 120)])
def test_max_subarray_against_brute_force(length, count):
    task = MaxSubarray(length=length)
    assert task.seq_len == 2 * length + 2
    batch = task.sample(count, seed=length)
    matches = check_layout(task, batch, rf"([A-S]{{{length}}})=([A-S]+)")
    prev_negative, restart, here, best, in_answer = {}, {}, {}, {}, {}
    for r, m in enumerate(matches):
        values = [LETTERS.index(ch) - 9 for ch in m[1]]
        i, j = brute_max_subarray(values)
        assert m[2] == m[1][i : j + 1]
        ending = [max_sum_ending_at(values, t) for t in range(length)]
        for t in range(length):
            here[r, t] = ending[t]
            best[r, t] = max(ending[: t + 1])
            in_answer[r, t] = int(i <= t <= j)
            if t >= 1:
                prev_negative[r, t] = int(values[t - 1] < 0)
                restart[r, t] = int(ending[t - 1] < 0)
    expect_feature(batch, "prev_negative", prev_negative)
    expect_feature(batch, "restart", restart)
    expect_feature(batch, "max_ending_here", here)
    expect_feature(batch, "best_so_far", best)
    expect_feature(batch, "in_answer", in_answer)
    assert batch.features["max_ending_here"].kind == "scalar"


def test_max_subarray_ties_and_all_negative():
    task = MaxSubarray(length=6)

    def answer(values):
        prompt = "".join(LETTERS[v + 9] for v in values)
        expected = "".join(task.vocab[t] for t in task._build(task._parse(prompt)).tokens[0]).rstrip(".")
        return expected.partition("=")[2]

    as_letters = lambda vs: "".join(LETTERS[v + 9] for v in vs)  # noqa: E731
    assert answer([-3, -1, -2, -1, -5, -9]) == as_letters([-1])  # all negative: the first largest value
    assert answer([0, 3, -3, 3, 0, 0]) == as_letters([0, 3])  # smallest start wins
    assert answer([3, 0, 0, -9, 3, -9]) == as_letters([3])  # then the shortest
    assert answer([-1, 0, 0, -1, 0, -2]) == as_letters([0])
    assert answer([2, -2, 2, -9, 1, 1]) == as_letters([2])
    assert answer([9, 9, 9, 9, 9, 9]) == as_letters([9] * 6)


def test_max_subarray_values_cover_the_range():
    batch = MaxSubarray().sample(500, seed=3)
    values = batch.tokens[:, :64]
    assert set(np.unique(values)) == set(range(1, 20))  # A..S, every value -9..9


# --- activity selection -------------------------------------------------------------------------
def plain_greedy(start: list[int], end: list[int]) -> list[int]:
    order = sorted(range(len(start)), key=lambda i: (end[i], start[i], i))
    chosen, last = [], None
    for i in order:
        if last is None or start[i] >= last:
            chosen.append(i)
            last = end[i]
    return chosen


def most_compatible(start: list[int], end: list[int]) -> int:
    """The size of the largest set of pairwise non-overlapping activities, by trying every subset."""
    n = len(start)
    for size in range(n, 0, -1):
        for subset in itertools.combinations(range(n), size):
            spans = sorted((start[i], end[i]) for i in subset)
            if all(a[1] <= b[0] for a, b in zip(spans, spans[1:])):
                return size
    return 0


@pytest.mark.parametrize(
    "n,max_time,count", [(2, 1, 100), (2, 3, 300), (5, 8, 500), (16, 8, 1500), (16, 25, 300), (26, 25, 300)]
)
def test_activity_selection_against_plain_greedy(n, max_time, count):
    task = ActivitySelection(n=n, max_time=max_time)
    assert task.seq_len == 4 * n + 2
    batch = task.sample(count, seed=n + max_time)
    letters = LETTERS[: max_time + 1]
    matches = check_layout(task, batch, rf"([{letters}]{{{2 * n}}})=((?:[{letters}][{letters}])+)")
    eq = 2 * n
    start_time, selected, last_end, compatible = {}, {}, {}, {}
    for r, m in enumerate(matches):
        start = [LETTERS.index(ch) for ch in m[1][:n]]
        end = [LETTERS.index(ch) for ch in m[1][n:]]
        assert all(0 <= s < e <= max_time for s, e in zip(start, end))
        chosen = plain_greedy(start, end)
        assert m[2] == "".join(LETTERS[start[i]] + LETTERS[end[i]] for i in chosen)
        for i in range(n):
            start_time[r, n + i] = start[i]
            selected[r, i] = selected[r, n + i] = int(i in chosen)
        last_end[r, eq] = 0
        compatible[r, eq] = [1] * n
        previous = 0
        for c, i in enumerate(chosen):
            at = eq + 1 + 2 * c  # the start letter of the c-th chosen pair; its end letter follows
            last_end[r, at] = previous
            last_end[r, at + 1] = previous = end[i]
            start_time[r, at + 1] = start[i]
            compatible[r, at + 1] = [int(s >= end[i]) for s in start]
    expect_feature(batch, "start_time", start_time)
    expect_feature(batch, "selected", selected)
    expect_feature(batch, "last_end", last_end)
    expect_feature(batch, "compatible", compatible)
    for name in ("start_time", "last_end"):
        assert batch.features[name].kind == "categorical" and batch.features[name].n_classes == max_time + 1


def test_activity_selection_greedy_is_optimal():
    task = ActivitySelection(n=8, max_time=6)
    batch = task.sample(150, seed=9)
    for text in map(task.decode, batch.tokens):
        prompt, answer = text.split("=")
        start = [LETTERS.index(ch) for ch in prompt[:8]]
        end = [LETTERS.index(ch) for ch in prompt[8:]]
        assert len(answer) // 2 == most_compatible(start, end)


def test_activity_selection_ties():
    task = ActivitySelection(n=4, max_time=5)

    def answer(prompt):
        return "".join(task.vocab[t] for t in task._build(task._parse(prompt)).tokens[0]).rstrip(".").partition("=")[2]

    # (2,4), (1,4), (0,1), (1,4): (0,1) first, then of the two ending at 4 the earlier start (1,4)
    assert answer("CBABEEBE") == "ABBE"
    # identical activities: only one is kept
    assert answer("BBBBCCCC") == "BC"
    # a start equal to the last end fits
    assert answer("ABCDBCDE") == "ABBCCDDE"


# --- the contract -------------------------------------------------------------------------------
SMALL = [MaxSubarray(length=3), ActivitySelection(n=3, max_time=3)]
PAPER = [MaxSubarray(), ActivitySelection()]


@pytest.mark.parametrize("task", PAPER + SMALL, ids=repr)
def test_same_seed_same_batch_other_seed_other_batch(task):
    one, two, other = task.sample(300, seed=5), task.sample(300, seed=5), task.sample(300, seed=6)
    np.testing.assert_array_equal(one.tokens, two.tokens)
    np.testing.assert_array_equal(one.loss_mask, two.loss_mask)
    for name in one.features:
        np.testing.assert_array_equal(one.features[name].values, two.features[name].values)
        np.testing.assert_array_equal(one.features[name].mask, two.features[name].mask)
    assert not np.array_equal(one.tokens, other.tokens)


@pytest.mark.parametrize(
    "task,space", [(MaxSubarray(length=2), 19 * 19), (ActivitySelection(n=3, max_time=2), 27)], ids=repr
)
def test_split_is_disjoint(task, space):
    train = set(map(task.decode, task.sample(4000, seed=1).tokens))
    test = set(map(task.decode, task.sample(4000, seed=1, split="test").tokens))
    assert train and test and not train & test
    assert len(train | test) == space  # the draws reach every example, and each lands on one side


@pytest.mark.parametrize("task", PAPER + SMALL, ids=repr)
def test_is_correct_and_round_trip(task):
    batch = task.sample(200, seed=2)
    letters = [i for i, ch in enumerate(task.vocab) if ch.isalpha()]
    for row, s in zip(batch.tokens, batch.answer_start):
        assert task.is_correct(row)
        assert np.array_equal(task.encode(task.decode(row)), row)
        wrong = row.copy()
        wrong[s] = letters[0] if row[s] != letters[0] else letters[1]  # another letter as the first answer token
        assert not task.is_correct(wrong)
        longer = row.copy()
        end = len(task.decode(row))
        longer[end] = row[s]  # one letter too many
        assert not task.is_correct(longer)
    assert not task.is_correct(task.encode("AB"))


def test_is_correct_rejects_malformed_prompts():
    act = ActivitySelection(n=2, max_time=3)
    assert act.is_correct(act.encode("ABBC=ABBC"))
    assert not act.is_correct(act.encode("ABBA=ABBA"))  # an end before its start
    assert not act.is_correct(act.encode("ABC=AB"))  # wrong length
    ms = MaxSubarray(length=3)
    assert ms.is_correct(ms.encode("AJS=JS"))  # 0 + 9 ties 9 and starts earlier
    assert not ms.is_correct(ms.encode("AJS=S"))
    assert not ms.is_correct(ms.encode("AJ=J"))


@pytest.mark.parametrize(
    "cls,sizes,words",
    [
        (MaxSubarray, {"length": 1}, ["length", "2..128"]),
        (MaxSubarray, {"length": 129}, ["length", "2..128"]),
        (MaxSubarray, {"n": 5}, ["unknown", "length"]),
        (ActivitySelection, {"n": 1}, ["n", "2..26"]),
        (ActivitySelection, {"n": 27}, ["n", "2..26"]),
        (ActivitySelection, {"max_time": 0}, ["max_time", "1..25"]),
        (ActivitySelection, {"max_time": 26}, ["max_time", "1..25"]),
    ],
)
def test_bad_sizes_say_what_is_allowed(cls, sizes, words):
    check_size_error(cls, sizes, words)


def test_registered_with_their_names():
    from quietlab.tasks import get_task

    assert isinstance(get_task("max_subarray", length=8), MaxSubarray)
    task = get_task("activity_selection")
    assert isinstance(task, ActivitySelection) and (task.n, task.max_time) == (16, 8)
    assert set(task.describe()["features"]) == {"start_time", "selected", "last_end", "compatible"}


@pytest.mark.parametrize("task", PAPER + SMALL, ids=repr)
def test_features_are_documented_and_well_formed(task):
    check_features_well_formed(task)


def test_features_defined_at_the_same_places_share_one_read_only_mask():
    batch = MaxSubarray(length=6).sample(20, seed=0)
    f = batch.features
    assert f["max_ending_here"].mask is f["best_so_far"].mask is f["in_answer"].mask
    assert f["prev_negative"].mask is f["restart"].mask
    with pytest.raises(ValueError):
        f["restart"].mask[0, 0] = True  # a write through one would change the other
    taken = batch.take(np.arange(5))
    assert taken.features["restart"].mask.flags.writeable
    assert f["max_ending_here"].values.dtype == np.int16  # small integer sums, half of float32
