"""The paper preset's tasks against plain per-example implementations of PAPER_PROTOCOL's rules
(tests/paper_reference.py), its worked examples, and its sampler statistics."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
import pytest
from scipy import stats

import paper_reference as ref
from quietlab.tasks import get_task, task_names
from quietlab.tasks.graph_sampling import cycle_types, isomorphism_invariant, relabel, uniform_connected_graphs

N_CHECKED = 10_000


def _split(task, row):
    text = task.decode(row)
    prompt, _, answer = text.partition("=")
    return prompt, answer


def _labels(feature, i, positions):
    return {t: feature.values[i, t].tolist() for t in positions}


def _check_feature(batch, name, i, expected: dict[int, object], exact_positions=True):
    feature = batch.features[name]
    where = set(np.flatnonzero(feature.mask[i]).tolist())
    if exact_positions:
        assert where == set(expected), (name, sorted(where), sorted(expected))
    else:
        assert set(expected) <= where, (name, sorted(expected), sorted(where))
    for t, label in expected.items():
        want = label if isinstance(label, list) else [label]
        assert feature.values[i, t].tolist() == want, (name, t)


def test_presets_list_the_ten_paper_tasks_and_reject_unknown_ones():
    algorithmic = [n for n in task_names() if n != "two_step"]  # two_step: the Eureka token task, quietlab only
    assert sorted(task_names("paper")) == sorted(algorithmic) and len(algorithmic) == 10
    with pytest.raises(ValueError, match="preset"):
        get_task("addition", preset="nope")
    with pytest.raises(ValueError, match="n_groups must divide"):
        get_task("majority_of_majorities", preset="paper", n_groups=5)


@pytest.mark.parametrize("name, length, vocab_size", [
    ("addition", 52, 5), ("multiplication", 67, 5), ("majority_of_majorities", 67, 5), ("max_subarray", 130, 21),
    ("activity_selection", 66, 21), ("bfs", 124, 28), ("dfs", 124, 28), ("shortest_path", 125, 28),
    ("topological_sort", 124, 28), ("mst", 133, 28)])
def test_padded_lengths_and_vocabularies_are_the_papers(name, length, vocab_size):
    task = get_task(name, preset="paper")
    assert (task.seq_len, len(task.vocab)) == (length, vocab_size)
    batch = task.sample(64, seed=3)
    # targets: '=' (predicted from the last input token) through the first end token
    for row, mask in zip(batch.tokens, batch.loss_mask):
        text = task.decode(row)
        eq = text.index("=")
        assert np.flatnonzero(mask).tolist() == list(range(eq - 1, len(text)))
        assert task.is_correct(row)


# --- worked examples of PAPER_PROTOCOL §1, verbatim ---------------------------------------------------
def _solve(task, prompt):
    return task.decode(task._build(task._parse(prompt)).tokens[0])


WORKED = [
    ("addition", "1011000000000000+1101000000000000", "00011000000000000"),
    ("multiplication", "1100000000000000+1010000000000000", "1111" + "0" * 28),
    ("max_subarray", "".join(chr(v + 74) for v in [2, -2, 5] + [-9, 3, 2, -9] * 15 + [-9]), "LHO"),
    ("activity_selection", "FBFCIGEJHBCDEGIJHCGGJIJKJKFEGJJL", "BCDEFGGIIJJK"),
    ("bfs", "A" + "ABACAEBDBFCDCGDHEHFIGJHKIJJK", "ABCEDFGHIJK"),
    ("dfs", "A" + "ABACAEBDBFCDCGDHEHFIGJHKIJJK", "AEHKJIFBDCG"),
    ("mst", "ABACAEBDBFCDCGDHEHFIGJHKIJJK", "ABACAEBDBFCGDHFIGJHK"),
    ("topological_sort", "ABACAEBDFBCDCGHDHEFIJGKHJIKJ", "KJHFIABCDGE"),
    ("shortest_path", "HC" + "ACAEBFBKCKDFDHEFEJFGFHGJHIHJ", "HFEAC"),
]
REFERENCE = {"addition": ref.addition, "multiplication": ref.multiplication, "max_subarray": ref.max_subarray,
             "activity_selection": ref.activity_selection, "bfs": lambda p: ref.bfs(p)[0], "dfs": ref.dfs,
             "mst": ref.mst, "topological_sort": ref.topological_sort, "shortest_path": ref.shortest_path,
             "majority_of_majorities": ref.majority_of_majorities}


@pytest.mark.parametrize("name, prompt, answer", WORKED)
def test_worked_examples(name, prompt, answer):
    task = get_task(name, preset="paper")
    assert _solve(task, prompt) == f"{prompt}={answer}"
    assert REFERENCE[name](prompt) == answer


def test_worked_examples_majority_and_addition_carries():
    task = get_task("majority_of_majorities", preset="paper")
    groups = ["1" * ones + "0" * (16 - ones) for ones in (9, 8, 10, 8)]  # majorities 1,0,1,0 -> 0
    prompt = "".join(groups)
    assert _solve(task, prompt) == prompt + "=0" and ref.majority_of_majorities(prompt) == "0"
    assert _solve(task, "1" * 9 + "0" * 7 + "0" * 16 + "1" * 16 + "1" * 9 + "0" * 7).endswith("=1")
    carries = ref.addition_carry("1011000000000000+1101000000000000")
    assert [carries[34 + r] for r in range(5)] == [1, 1, 1, 1, 0]  # c1..c4 = 1, c5 = 0


# --- every task against the plain implementation, on 10^4 examples ----------------------------------
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_answers_match_the_plain_rules(name):
    task = get_task(name, preset="paper")
    batch = task.sample(N_CHECKED, seed=11)
    rule = REFERENCE[name]
    for row in batch.tokens:
        prompt, answer = _split(task, row)
        assert answer == rule(prompt), (prompt, answer)


def test_plotted_features_of_the_binary_tasks():
    add, mul = get_task("addition", preset="paper"), get_task("multiplication", preset="paper")
    a, m = add.sample(2000, seed=5), mul.sample(2000, seed=5)
    for i in range(len(a)):
        prompt, _ = _split(add, a.tokens[i])
        _check_feature(a, "carry", i, ref.addition_carry(prompt))
        _check_feature(a, "first_operand", i, ref.first_operand(prompt))
        prompt, _ = _split(mul, m.tokens[i])
        _check_feature(m, "carry_16", i, ref.multiplication_carry_16(prompt))
        _check_feature(m, "first_operand", i, ref.first_operand(prompt))


def test_plotted_features_of_the_sequence_tasks():
    sub, act = get_task("max_subarray", preset="paper"), get_task("activity_selection", preset="paper")
    s, a = sub.sample(2000, seed=6), act.sample(2000, seed=6)
    for i in range(len(s)):
        negative, here = ref.max_subarray_features(_split(sub, s.tokens[i])[0])
        _check_feature(s, "is_prev_negative", i, negative)
        _check_feature(s, "max_ending_here", i, here)
        _check_feature(a, "start_time", i, ref.activity_start_time(_split(act, a.tokens[i])[0]))


def test_plotted_features_of_bfs_and_dfs():
    bfs, dfs = get_task("bfs", preset="paper"), get_task("dfs", preset="paper")
    b, d = bfs.sample(2000, seed=7), dfs.sample(2000, seed=7)
    for i in range(len(b)):
        _, queues, adjacency = ref.bfs(_split(bfs, b.tokens[i])[0])
        _check_feature(b, "queue", i, queues)
        _check_feature(b, "adjacency_list", i, adjacency)
        prompt, answer = _split(dfs, d.tokens[i])
        _, _, nbrs = ref._graph(prompt, 1, 11)
        t0 = len(prompt)
        _check_feature(d, "adjacency_list", i, {t0 + 1 + r: [int(u in nbrs[ord(c) - 65]) for u in range(11)]
                                               for r, c in enumerate(answer)})


# --- samplers: PAPER_PROTOCOL's statistics within their sampling error ---------------------------------
def _within(measured, expected, se, rounding=0.0):
    assert abs(measured - expected) <= 4.5 * se + rounding, (measured, expected, se)


def test_majority_sampler_rates():
    task = get_task("majority_of_majorities", preset="paper")
    n = 100_000
    batch = task.sample(n, seed=1)
    bits = batch.tokens[:, :64] == task.vocab.index("1")
    ones = bits.reshape(n, 4, 16).sum(axis=2)
    answer = batch.tokens[:, 65] == task.vocab.index("1")
    for measured, expected in ((answer.mean(), 0.18129), ((ones == 8).any(axis=1).mean(), 0.58294)):
        _within(measured, expected, math.sqrt(expected * (1 - expected) / n), 5e-6)
    # bit 56 is the int64 sign: set in half the examples
    _within(bits[:, 56].mean(), 0.5, math.sqrt(0.25 / n))


def _absent(values_rows, n_values, low):
    present = np.zeros((len(values_rows), n_values), dtype=bool)
    np.put_along_axis(present, values_rows - low, True, axis=1)
    return n_values - present.sum(axis=1)


def test_multiset_samplers_absent_values():
    n = 20_000
    sub = get_task("max_subarray", preset="paper").sample(n, seed=2)
    absent = _absent(sub.tokens[:, :64].astype(np.int64), 19, 1)
    exact = 19 * 18 / 82  # 19 values x P(a value is absent) = C(81,17)/C(82,18)
    assert abs(exact - 4.17) < 0.005
    _within(absent.mean(), 4.17, 1.59 / math.sqrt(n), 0.005)
    _within(absent.std(), 1.59, 1.59 / math.sqrt(2 * n) * 2, 0.005)
    act = get_task("activity_selection", preset="paper")
    batch = act.sample(n, seed=2)
    starts = batch.tokens[:, :16].astype(np.int64) - 1
    durations = batch.tokens[:, 16:32].astype(np.int64) - 1 - starts
    absent = _absent(np.concatenate([starts, durations], axis=1), 9, 1)
    exact = 9 * 8 / 40  # 9 values x C(39,7)/C(40,8)
    _within(absent.mean(), 1.80, absent.std() / math.sqrt(n), 0.005)
    assert abs(exact - 1.80) < 1e-12


def test_graph_distribution_statistics():
    rng = np.random.default_rng(0)
    n = 100_000
    edges = uniform_connected_graphs(11, n, rng)
    count = edges.sum(axis=1)
    _within(count.mean(), 27.562, 3.750 / math.sqrt(n), 0.0005)
    _within(count.std(), 3.750, 3.750 / math.sqrt(2 * n), 0.0005)
    # twins: u, v with the same neighbours apart from each other
    iu, ju = np.triu_indices(11, 1)
    adj = np.zeros((n, 11, 11), dtype=bool)
    adj[:, iu, ju] = adj[:, ju, iu] = edges
    twins = np.zeros(n, dtype=bool)
    for u, v in zip(iu, ju):
        others = np.ones(11, dtype=bool)
        others[[u, v]] = False
        twins |= (adj[:, u, others] == adj[:, v, others]).all(axis=1)
    _within(twins.mean(), 0.193, math.sqrt(0.193 * 0.807 / n), 0.0005)


# A000088: graphs on n unlabelled nodes
UNLABELLED = [1, 2, 4, 11, 34, 156, 1044, 12346, 274668, 12005168, 1018997864]


def test_cycle_type_weights_count_the_unlabelled_graphs():
    for n, count in enumerate(UNLABELLED, start=1):
        assert cycle_types(n)[3] == count


def _canonical(edges: np.ndarray, n: int) -> np.ndarray:
    """Brute force: per graph, the smallest edge-set code over all n! relabellings."""
    pairs = list(itertools.combinations(range(n), 2))
    index = {p: i for i, p in enumerate(pairs)}
    codes = []
    for perm in itertools.permutations(range(n)):
        source = [0] * len(pairs)  # relabelled pair q comes from pair source[q]
        for i, (u, v) in enumerate(pairs):
            source[index[tuple(sorted((perm[u], perm[v])))]] = i
        codes.append(edges[:, source].astype(np.int64) @ (1 << np.arange(len(pairs))))
    return np.min(codes, axis=0)


@pytest.mark.parametrize("n, classes, labelled", [(4, 6, 38), (5, 21, 728)])
def test_uniform_over_connected_unlabelled_graphs(n, classes, labelled):
    rng = np.random.default_rng(n)
    size = 400 * classes
    edges = uniform_connected_graphs(n, size, rng)
    canon = _canonical(edges, n)
    counts = np.unique(canon, return_counts=True)[1]
    assert len(counts) == classes  # the known number of connected unlabelled graphs
    assert stats.chisquare(counts).pvalue > 1e-4
    if n == 4:  # within a class, every labelling equally likely: P(graph) = 1 / (classes * class size)
        labels, per_graph = np.unique(np.packbits(edges, axis=1), axis=0, return_counts=True)
        assert len(labels) == labelled
        class_of = {}
        for row, c in zip(np.packbits(edges, axis=1), canon):
            class_of[row.tobytes()] = c
        sizes = {c: sum(1 for k in class_of if class_of[k] == c) for c in set(class_of.values())}
        expected = np.array([size / (classes * sizes[class_of[row.tobytes()]]) for row in labels])
        assert stats.chisquare(per_graph, expected).pvalue > 1e-4


def test_graph_split_keeps_isomorphism_classes_on_one_side():
    for name in ("bfs", "topological_sort"):
        task = get_task(name, preset="paper", n_nodes=5)
        sides = {}
        for split in ("train", "test"):
            batch = task.sample(300, seed=4, split=split)
            graphs = []
            for row in batch.tokens:
                prompt = _split(task, row)[0][len(task.endpoints):]
                g = nx.Graph()
                g.add_nodes_from(range(5))
                g.add_edges_from((ord(prompt[i]) - 65, ord(prompt[i + 1]) - 65) for i in range(0, len(prompt), 2))
                graphs.append(g)
            sides[split] = [g for i, g in enumerate(graphs)
                            if not any(nx.is_isomorphic(g, h) for h in graphs[:i])]
        assert sides["train"] and sides["test"]
        for g in sides["test"]:
            assert not any(nx.is_isomorphic(g, h) for h in sides["train"])
    # the hash is invariant under relabelling, at the paper's size
    rng = np.random.default_rng(9)
    edges = uniform_connected_graphs(11, 5000, rng)
    np.testing.assert_array_equal(isomorphism_invariant(edges, 11), isomorphism_invariant(relabel(edges, 11, rng), 11))


def test_bit_task_split_keeps_swapped_operands_together():
    for name in ("addition", "multiplication"):
        task = get_task(name, preset="paper")
        inputs = task._draw(5000, np.random.default_rng(1))
        swapped = {"a": inputs["b"], "b": inputs["a"]}
        held = task.in_heldout(inputs)
        assert 0.2 < held.mean() < 0.3
        np.testing.assert_array_equal(held, task.in_heldout(swapped))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_paper_features_are_documented_and_well_formed(name):
    from task_checks import check_features_well_formed

    check_features_well_formed(get_task(name, preset="paper"))


def test_cli_lists_and_samples_the_paper_preset():
    import json

    from typer.testing import CliRunner

    from quietlab.cli import app

    res = CliRunner().invoke(app, ["tasks", "--preset", "paper", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert {d["name"] for d in listed} == set(REFERENCE) and {d["preset"] for d in listed} == {"paper"}
    res = CliRunner().invoke(app, ["sample", "bfs", "--preset", "paper", "--n", "2", "--json"])
    assert res.exit_code == 0, res.output
    for example in json.loads(res.output)["examples"]:
        prompt, answer = example["text"].split("=")
        assert answer == ref.bfs(prompt)[0] and ":" not in prompt and "," not in prompt
    res = CliRunner().invoke(app, ["sample", "bfs", "--preset", "nope"])
    assert res.exit_code == 2 and "unknown preset" in res.output


@pytest.mark.parametrize("name", ["dfs", "shortest_path", "topological_sort", "mst"])
def test_other_graph_features_match_the_plain_rules(name):
    task = get_task(name, preset="paper")
    batch = task.sample(2000, seed=13)
    for i, row in enumerate(batch.tokens):
        prompt, answer = _split(task, row)
        labels = (ref.dfs_features(prompt) if name == "dfs" else
                  getattr(ref, f"{name}_features")(prompt, answer))
        for feature in batch.features:
            expected = {t: got[feature] for t, got in labels.items() if feature in got}
            _check_feature(batch, feature, i, expected)
