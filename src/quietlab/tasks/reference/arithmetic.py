"""Plain per-example Python references for addition, multiplication, majority_of_majorities,
max_subarray and activity_selection: the specification the tests hold quietlab's vectorised
generators to, and the yardstick that benchmarks/generation.py measures them against.

``REFERENCES[name](n, seed) -> list`` draws examples one at a time with ``random.Random(seed)``, keeps
those on the training side of a 75/25 split (a hash of the example up to symmetry, as quietlab does),
and returns n of them, each a dict with what ``Task.sample`` gives for one row: ``text`` (the example
``input=answer``), ``tokens`` (token ids, padded with 0 to seq_len), ``loss_mask`` (True where the
next token is an answer token or the end) and ``features``, each a list of length seq_len holding
the label at each position (None where it is undefined), the same labels quietlab records.

``SOLVERS[name](inputs, task) -> dict`` computes one example from quietlab's raw inputs (as plain
Python lists); ``check_against_reference`` (in this package) compares it with quietlab's batch.

Straightforward code, written the way one would without thinking about speed, and not slowed on
purpose either.
"""

from __future__ import annotations

import functools
import random
import string

LETTERS = string.ascii_uppercase


def _train_side(key) -> bool:
    return hash(key) % 4 != 0


def _bits(bits) -> str:
    return "".join("1" if b else "0" for b in bits)


@functools.lru_cache(maxsize=None)
def _index(vocab: str) -> dict:
    return {ch: i for i, ch in enumerate(vocab)}


def _example(text: str, features: dict, vocab: str, seq_len: int) -> dict:
    index = _index(vocab)
    tokens = [index[ch] for ch in text] + [0] * (seq_len - len(text))
    eq = text.index("=")
    loss_mask = [eq <= t < len(text) for t in range(seq_len)]
    return {"text": text, "tokens": tokens, "loss_mask": loss_mask, "features": features}


# --- addition -----------------------------------------------------------------------------------
def solve_addition(a: list[int], b: list[int]):
    n = len(a)
    seq_len, eq = 3 * n + 4, 2 * n + 1
    carry_f, first, second, next_bit = ([None] * seq_len for _ in range(4))
    s, carry = [], 0
    for r in range(n):
        total = a[r] + b[r] + carry
        s.append(total % 2)
        carry = total // 2
        next_bit[eq + r] = s[r]  # the position before answer token r predicts s_r
        first[eq + 1 + r], second[eq + 1 + r] = a[r], b[r]
        carry_f[eq + 1 + r] = carry
    s.append(carry)
    next_bit[eq + n] = carry
    text = _bits(a) + "+" + _bits(b) + "=" + _bits(s)
    features = {"carry": carry_f, "first_operand": first, "second_operand": second, "next_sum_bit": next_bit}
    return _example(text, features, ".01+=", seq_len)


def _operand_pairs(solve, n: int, seed: int, n_bits: int) -> list:
    """n examples of ``solve(a, b)`` on uniform n-bit operands (LSB first), a op b and b op a on one side."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        x, y = rng.getrandbits(n_bits), rng.getrandbits(n_bits)
        if not _train_side((min(x, y), max(x, y))):
            continue
        a = [(x >> i) & 1 for i in range(n_bits)]
        b = [(y >> i) & 1 for i in range(n_bits)]
        out.append(solve(a, b))
    return out


def addition(n: int, seed: int, n_bits: int = 16) -> list:
    return _operand_pairs(solve_addition, n, seed, n_bits)


# --- multiplication -----------------------------------------------------------------------------
def solve_multiplication(a: list[int], b: list[int]):
    n = len(a)
    width, seq_len, eq = 2 * n, 4 * n + 3, 2 * n + 1
    partial_carry = [None] * seq_len
    for j in range(1, width):
        partial_carry[eq + j] = [0] * n
    # shift-and-add, one ripple-carry addition per partial product
    running = [0] * width
    for k in range(n):
        carry = 0
        for j in range(k, k + n + 1):
            x = a[j - k] * b[k] if j - k < n else 0
            total = running[j] + x + carry
            running[j] = total % 2
            carry = total // 2
            if j + 1 < width:
                partial_carry[eq + j + 1][k] = carry
    # schoolbook columns
    column_carry = [None] * seq_len
    counts = [0] * width
    for i in range(n):
        for k in range(n):
            counts[i + k] += a[i] * b[k]
    carry = 0
    for j in range(width):
        if j:
            column_carry[eq + j] = carry
        carry = (counts[j] + carry) // 2
    first, second, product = ([None] * seq_len for _ in range(3))
    for r in range(n):
        first[eq + 1 + r], second[eq + 1 + r] = a[r], b[r]
    for j in range(width):
        product[eq + j] = running[j]
    text = _bits(a) + "*" + _bits(b) + "=" + _bits(running)
    features = {
        "partial_carry": partial_carry,
        "column_carry": column_carry,
        "first_operand": first,
        "second_operand": second,
        "next_product_bit": product,
    }
    return _example(text, features, ".01*=", seq_len)


def multiplication(n: int, seed: int, n_bits: int = 16) -> list:
    return _operand_pairs(solve_multiplication, n, seed, n_bits)


# --- majority of majorities ---------------------------------------------------------------------
def solve_majority(bits: list[int], n_groups: int):
    n = len(bits)
    g = n // n_groups
    seq_len = n + 3
    group_count, so_far, group_majority = ([None] * seq_len for _ in range(3))
    majorities = []
    for grp in range(n_groups):
        count = 0
        for i in range(grp * g, (grp + 1) * g):
            count += bits[i]
            group_count[i] = count
            if i == (grp + 1) * g - 1:
                majorities.append(1 if 2 * count > g else 0)
            so_far[i] = sum(majorities)
    so_far[n] = sum(majorities)
    group_majority[n - 1] = list(majorities)
    group_majority[n] = list(majorities)
    answer = 1 if 2 * sum(majorities) > n_groups else 0
    text = _bits(bits) + "=" + str(answer)
    features = {"group_count": group_count, "majorities_so_far": so_far, "group_majority": group_majority}
    return _example(text, features, ".01=", seq_len)


def majority_of_majorities(n: int, seed: int, n_bits: int = 35, n_groups: int = 5) -> list:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        x = rng.getrandbits(n_bits)
        if not _train_side(x):
            continue
        out.append(solve_majority([(x >> i) & 1 for i in range(n_bits)], n_groups))
    return out


# --- maximum subarray ---------------------------------------------------------------------------
def solve_max_subarray(values: list[int]):
    L = len(values)
    seq_len = 2 * L + 2
    prev_negative, restart, here_f, best_f, in_answer = ([None] * seq_len for _ in range(5))
    here, start = values[0], 0
    best, best_start, best_end = here, 0, 0
    here_f[0], best_f[0] = here, best
    for j in range(1, L):
        prev_negative[j] = 1 if values[j - 1] < 0 else 0
        restart[j] = 1 if here < 0 else 0
        if here < 0:
            here, start = values[j], j
        else:
            here += values[j]
        here_f[j] = here
        if here > best:
            best, best_start, best_end = here, start, j
        best_f[j] = best
    for j in range(L):
        in_answer[j] = 1 if best_start <= j <= best_end else 0
    letters = "".join(LETTERS[v + 9] for v in values)
    text = letters + "=" + letters[best_start : best_end + 1]
    features = {
        "prev_negative": prev_negative,
        "restart": restart,
        "max_ending_here": here_f,
        "best_so_far": best_f,
        "in_answer": in_answer,
    }
    return _example(text, features, "." + LETTERS[:19] + "=", seq_len)


def max_subarray(n: int, seed: int, length: int = 64) -> list:
    rng = random.Random(seed)
    choices = range(-9, 10)
    out = []
    while len(out) < n:
        values = rng.choices(choices, k=length)
        if not _train_side(tuple(values)):
            continue
        out.append(solve_max_subarray(values))
    return out


# --- activity selection -------------------------------------------------------------------------
def solve_activity_selection(start: list[int], end: list[int], max_time: int):
    m = len(start)
    seq_len, eq = 4 * m + 2, 2 * m
    start_time, selected, last_end, compatible = ([None] * seq_len for _ in range(4))
    for i in range(m):
        start_time[m + i] = start[i]
    order = sorted(range(m), key=lambda i: (end[i], start[i], i))
    last, chosen, kept = 0, [], set()
    last_end[eq] = 0
    compatible[eq] = [1 if s >= last else 0 for s in start]
    for i in order:
        if start[i] >= last:
            at = eq + 1 + 2 * len(chosen)
            last_end[at] = last
            last = end[i]
            last_end[at + 1] = last
            start_time[at + 1] = start[i]
            compatible[at + 1] = [1 if s >= last else 0 for s in start]
            chosen.append(i)
            kept.add(i)
    for i in range(m):
        selected[i] = selected[m + i] = 1 if i in kept else 0
    text = (
        "".join(LETTERS[s] for s in start)
        + "".join(LETTERS[e] for e in end)
        + "="
        + "".join(LETTERS[start[i]] + LETTERS[end[i]] for i in chosen)
    )
    features = {"start_time": start_time, "selected": selected, "last_end": last_end, "compatible": compatible}
    return _example(text, features, "." + LETTERS[: max_time + 1] + "=", seq_len)


def activity_selection(n: int, seed: int, n_activities: int = 16, max_time: int = 8) -> list:
    rng = random.Random(seed)
    pairs = [(s, e) for s in range(max_time + 1) for e in range(s + 1, max_time + 1)]
    out = []
    while len(out) < n:
        drawn = rng.choices(pairs, k=n_activities)
        if not _train_side(tuple(drawn)):
            continue
        out.append(solve_activity_selection([p[0] for p in drawn], [p[1] for p in drawn], max_time))
    return out


REFERENCES = {
    "addition": addition,
    "multiplication": multiplication,
    "majority_of_majorities": majority_of_majorities,
    "max_subarray": max_subarray,
    "activity_selection": activity_selection,
}


def _bits_of(words: list[int], n_bits: int) -> list[int]:
    """quietlab's packed operands (64 bits to a word, low word first) as a list of bits."""
    x = sum(w << (64 * k) for k, w in enumerate(words))
    return [(x >> i) & 1 for i in range(n_bits)]


# one example from quietlab's raw inputs (the dict Task._draw returns, one row, as lists)
SOLVERS = {
    "addition": lambda inp, task: solve_addition(_bits_of(inp["a"], task.n_bits), _bits_of(inp["b"], task.n_bits)),
    "multiplication": lambda inp, task: solve_multiplication(
        _bits_of(inp["a"], task.n_bits), _bits_of(inp["b"], task.n_bits)
    ),
    "majority_of_majorities": lambda inp, task: solve_majority(_bits_of(inp["bits"], task.n_bits), task.n_groups),
    "max_subarray": lambda inp, task: solve_max_subarray(inp["values"]),
    "activity_selection": lambda inp, task: solve_activity_selection(
        [int(task._pair_start[p]) for p in inp["pair"]], [int(task._pair_end[p]) for p in inp["pair"]], task.max_time
    ),
}
