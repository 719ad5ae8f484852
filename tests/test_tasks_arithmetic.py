"""addition, multiplication and majority_of_majorities against oracles written with Python integers.

Every check reads the batch (text, tokens, masks, features) and compares it with what plain integer
arithmetic says it should be; nothing is compared with the task's own output.
"""

from __future__ import annotations

import numpy as np
import pytest

from quietlab.tasks.arithmetic import Addition, Multiplication, MajorityOfMajorities

from task_checks import check_features_well_formed, check_layout, check_size_error, expect_feature


def as_int(bits: str) -> int:
    """LSB-first binary string -> int."""
    return sum(1 << i for i, ch in enumerate(bits) if ch == "1")


# --- addition -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_bits,count", [(2, 300), (3, 500), (16, 2000), (64, 400)])
def test_addition_against_integers(n_bits, count):
    task = Addition(n_bits=n_bits)
    assert task.seq_len == 3 * n_bits + 4
    batch = task.sample(count, seed=n_bits)
    n = n_bits
    matches = check_layout(task, batch, rf"([01]{{{n}}})\+([01]{{{n}}})=([01]{{{n + 1}}})")
    eq = 2 * n + 1
    carry, first, second, next_bit = {}, {}, {}, {}
    for i, m in enumerate(matches):
        a, b, s = as_int(m[1]), as_int(m[2]), as_int(m[3])
        assert s == a + b
        next_bit[i, eq] = s & 1
        for r in range(n):  # answer token r (holding s_r) is at eq + 1 + r
            low = (1 << (r + 1)) - 1
            carry[i, eq + 1 + r] = ((a & low) + (b & low)) >> (r + 1)  # carry out of bit r
            first[i, eq + 1 + r] = (a >> r) & 1
            second[i, eq + 1 + r] = (b >> r) & 1
            next_bit[i, eq + 1 + r] = (s >> (r + 1)) & 1
    expect_feature(batch, "carry", carry)
    expect_feature(batch, "first_operand", first)
    expect_feature(batch, "second_operand", second)
    expect_feature(batch, "next_sum_bit", next_bit)
    assert {f.kind for f in batch.features.values()} == {"binary"}


def test_addition_operands_are_uniform_and_carries_vary():
    batch = Addition(n_bits=16).sample(4000, seed=1)
    carries = batch.features["carry"].values[batch.features["carry"].mask]
    assert 0.3 < carries.mean() < 0.7
    a_bits = batch.tokens[:, :16]
    assert np.all(np.abs((a_bits == a_bits.max()).mean(axis=0) - 0.5) < 0.05)


# --- multiplication -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_bits,count", [(2, 300), (5, 500), (16, 600), (64, 25)])
def test_multiplication_against_integers(n_bits, count):
    task = Multiplication(n_bits=n_bits)
    n = n_bits
    assert task.seq_len == 4 * n + 3
    batch = task.sample(count, seed=n_bits)
    matches = check_layout(task, batch, rf"([01]{{{n}}})\*([01]{{{n}}})=([01]{{{2 * n}}})")
    eq = 2 * n + 1
    partial, column, first, second, product = {}, {}, {}, {}, {}
    for i, m in enumerate(matches):
        a, b, p = as_int(m[1]), as_int(m[2]), as_int(m[3])
        assert p == a * b
        # column sums of the schoolbook product, then the carry into column j from the columns below
        a_bits, b_bits = [(a >> c) & 1 for c in range(n)], [(b >> c) & 1 for c in range(n)]
        counts = [sum(a_bits[c] * b_bits[j - c] for c in range(n) if 0 <= j - c < n) for j in range(2 * n)]
        below = 0  # value of the columns below j
        for j in range(2 * n):  # the next token is p_j at eq + j (answer token j - 1, or '=')
            if j >= 1:
                column[i, eq + j] = below >> j
            below += counts[j] << j
            product[i, eq + j] = (p >> j) & 1
        for r in range(n):
            first[i, eq + 1 + r] = (a >> r) & 1
            second[i, eq + 1 + r] = (b >> r) & 1
        # running sum S_k = a * (b mod 2^k), plus the k-th shifted partial product ((b >> k) & 1) * a << k;
        # at answer token r, the carries into bit r + 1
        for r in range(2 * n - 1):
            low = (1 << (r + 1)) - 1
            partial[i, eq + 1 + r] = [
                ((a * (b & ((1 << k) - 1)) & low) + ((((b >> k) & 1) * a << k) & low)) >> (r + 1) for k in range(n)
            ]
    expect_feature(batch, "partial_carry", partial)
    expect_feature(batch, "column_carry", column)
    expect_feature(batch, "first_operand", first)
    expect_feature(batch, "second_operand", second)
    expect_feature(batch, "next_product_bit", product)
    feats = batch.features
    assert feats["partial_carry"].kind == "multilabel" and feats["partial_carry"].k == n
    assert feats["column_carry"].kind == "categorical"
    assert feats["column_carry"].values.max() < feats["column_carry"].n_classes


# --- majority of majorities ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_bits,n_groups,count", [(1, 1, 50), (15, 3, 800), (35, 5, 2000), (35, 7, 500), (255, 5, 150), (255, 255, 60)]
)
def test_majority_of_majorities_against_counting(n_bits, n_groups, count):
    task = MajorityOfMajorities(n_bits=n_bits, n_groups=n_groups)
    assert task.seq_len == n_bits + 3
    batch = task.sample(count, seed=n_bits + n_groups)
    matches = check_layout(task, batch, rf"([01]{{{n_bits}}})=([01])")
    g = n_bits // n_groups
    group_count, so_far, group_majority = {}, {}, {}
    for i, m in enumerate(matches):
        bits = [int(ch) for ch in m[1]]
        majorities = [int(2 * sum(bits[k * g : (k + 1) * g]) > g) for k in range(n_groups)]
        assert int(m[2]) == int(2 * sum(majorities) > n_groups)
        for pos in range(n_bits):
            k = pos // g
            group_count[i, pos] = sum(bits[k * g : pos + 1])
            done = (pos + 1) // g  # groups complete once bit pos is read
            so_far[i, pos] = sum(majorities[:done])
        so_far[i, n_bits] = sum(majorities)
        group_majority[i, n_bits - 1] = majorities
        group_majority[i, n_bits] = majorities
    expect_feature(batch, "group_count", group_count)
    expect_feature(batch, "majorities_so_far", so_far)
    expect_feature(batch, "group_majority", group_majority)
    assert batch.features["group_count"].n_classes == g + 1
    assert batch.features["majorities_so_far"].n_classes == n_groups + 1


# --- the contract -------------------------------------------------------------------------------
SMALL = [Addition(n_bits=3), Multiplication(n_bits=3), MajorityOfMajorities(n_bits=9, n_groups=3)]
PAPER = [Addition(), Multiplication(), MajorityOfMajorities()]


@pytest.mark.parametrize("task", PAPER + SMALL, ids=repr)
def test_same_seed_same_batch_other_seed_other_batch(task):
    one, two, other = task.sample(300, seed=5), task.sample(300, seed=5), task.sample(300, seed=6)
    np.testing.assert_array_equal(one.tokens, two.tokens)
    np.testing.assert_array_equal(one.loss_mask, two.loss_mask)
    for name in one.features:
        np.testing.assert_array_equal(one.features[name].values, two.features[name].values)
        np.testing.assert_array_equal(one.features[name].mask, two.features[name].mask)
    assert not np.array_equal(one.tokens, other.tokens)
    assert not np.array_equal(task.sample(300, seed=5, split="test").tokens, one.tokens)


@pytest.mark.parametrize("task_cls,op", [(Addition, "+"), (Multiplication, "*")])
def test_split_puts_a_op_b_and_b_op_a_on_the_same_side(task_cls, op):
    task = task_cls(n_bits=4)
    sides = {}
    for split in ("train", "test"):
        pairs = set()
        for text in map(task.decode, task.sample(3000, seed=0, split=split).tokens):
            a, b = (as_int(x) for x in text.split("=")[0].split(op))
            pairs.add((min(a, b), max(a, b)))
        sides[split] = pairs
    assert sides["train"] and sides["test"]
    assert not sides["train"] & sides["test"]
    assert len(sides["train"] | sides["test"]) == 16 * 17 // 2  # 3000 draws reach every unordered pair
    assert 0.1 < len(sides["test"]) / 136 < 0.45
    # and directly: swapping the operands never changes the side, at the paper's size too
    for n_bits in (4, 16, 64):
        task = task_cls(n_bits=n_bits)
        drawn = task._draw(2000, np.random.default_rng(n_bits))
        swapped = {"a": drawn["b"], "b": drawn["a"]}
        side = task.in_heldout(drawn)
        np.testing.assert_array_equal(side, task.in_heldout(swapped))
        assert 0.15 < side.mean() < 0.35
        # the swapped example really is the mirrored text
        one, other = task._build(drawn), task._build(swapped)
        for row, mirrored in zip(one.tokens[:50], other.tokens[:50]):
            left, right = task.decode(row).split("=")[0].split(op)
            assert task.decode(mirrored).split("=")[0] == right + op + left


def test_split_is_disjoint_for_majority():
    task = MajorityOfMajorities(n_bits=5, n_groups=1)
    train = set(map(task.decode, task.sample(2000, seed=1).tokens))
    test = set(map(task.decode, task.sample(2000, seed=1, split="test").tokens))
    assert train and test and not train & test
    assert len(train | test) == 32


def test_split_depends_on_split_seed():
    a, b = Addition(n_bits=16, split_seed=0), Addition(n_bits=16, split_seed=1)
    inputs = a._draw(2000, np.random.default_rng(0))
    assert not np.array_equal(a.in_heldout(inputs), b.in_heldout(inputs))


@pytest.mark.parametrize("task", PAPER + SMALL, ids=repr)
def test_is_correct_and_round_trip(task):
    batch = task.sample(200, seed=2)
    start = batch.answer_start
    answer_tokens = [task.vocab.index(c) for c in "01"]
    for row, s in zip(batch.tokens, start):
        assert task.is_correct(row)
        assert np.array_equal(task.encode(task.decode(row)), row)
        wrong = row.copy()
        wrong[s] = answer_tokens[1] if row[s] == answer_tokens[0] else answer_tokens[0]  # flip one answer bit
        assert not task.is_correct(wrong)
        cut = row.copy()
        cut[s:] = 0  # no answer at all
        assert not task.is_correct(cut)
    assert not task.is_correct(task.encode("0" * 3))  # no '='


def test_is_correct_on_hand_written_examples():
    add = Addition(n_bits=4)
    assert add.is_correct(add.encode("0110+1011=11001"))  # the DESIGN.md example: 6 + 13 = 19
    assert not add.is_correct(add.encode("0110+1011=11000"))
    assert not add.is_correct(add.encode("011+1011=11001"))  # malformed operand
    mul = Multiplication(n_bits=4)
    assert mul.is_correct(mul.encode("0110*1011=01110010"))  # 6 * 13 = 78
    assert not mul.is_correct(mul.encode("0110*1011=01110011"))
    maj = MajorityOfMajorities(n_bits=15, n_groups=3)
    assert maj.is_correct(maj.encode("011011001101001=1"))  # groups 01101 10011 01001: 1, 1, 0
    assert not maj.is_correct(maj.encode("011011001101001=0"))


@pytest.mark.parametrize(
    "cls,sizes,words",
    [
        (Addition, {"n_bits": 1}, ["n_bits", "2..64"]),
        (Addition, {"n_bits": 65}, ["n_bits", "2..64"]),
        (Addition, {"n_bits": 8.5}, ["n_bits", "integer"]),
        (Addition, {"bits": 8}, ["unknown", "n_bits"]),
        (Multiplication, {"n_bits": 0}, ["n_bits", "2..64"]),
        (MajorityOfMajorities, {"n_bits": 32, "n_groups": 4}, ["odd", "n_groups"]),
        (MajorityOfMajorities, {"n_bits": 32, "n_groups": 5}, ["odd", "n_bits"]),
        (MajorityOfMajorities, {"n_bits": 30, "n_groups": 5}, ["odd", "25, 35"]),
        (MajorityOfMajorities, {"n_bits": 256, "n_groups": 1}, ["n_bits", "1..255"]),
    ],
)
def test_bad_sizes_say_what_is_allowed(cls, sizes, words):
    check_size_error(cls, sizes, words)


def test_registered_with_their_names():
    from quietlab.tasks import get_task

    task = get_task("majority_of_majorities", n_bits=15, n_groups=3)
    assert isinstance(task, MajorityOfMajorities) and task.group_size == 5
    assert isinstance(get_task("addition"), Addition) and get_task("multiplication").n_bits == 16
    described = get_task("addition").describe()
    assert set(described["features"]) == {"carry", "first_operand", "second_operand", "next_sum_bit"}


@pytest.mark.parametrize("task", PAPER + SMALL, ids=repr)
def test_features_are_documented_and_well_formed(task):
    check_features_well_formed(task)


def test_batches_slice_and_join_with_their_features():
    task = Multiplication(n_bits=6)
    one, two = task.sample(50, seed=1), task.sample(30, seed=2)
    joined = type(one).concat([one, two])
    picked = joined.take(np.array([3, 60, 7]))
    np.testing.assert_array_equal(picked.tokens, np.stack([one.tokens[3], two.tokens[10], one.tokens[7]]))
    for name, feat in picked.features.items():
        np.testing.assert_array_equal(feat.values[1], two.features[name].values[10])
        np.testing.assert_array_equal(feat.mask[2], one.features[name].mask[7])
    assert task.is_correct(picked.tokens[1])


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n must be in 1..100,000, got 0"),
    (["--n", "100000000"], "--n must be in 1..100,000, got 100000000"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 2**63), got -1"),
])
def test_sample_verb_bad_values_are_one_line(args, message):
    from typer.testing import CliRunner

    from quietlab.cli import app

    res = CliRunner().invoke(app, ["sample", "addition", *args])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and message in res.output, res.output
