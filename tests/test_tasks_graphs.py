"""bfs, dfs, shortest_path, topological_sort and mst against networkx and plain-Python oracles.

Every check decodes the batch (text, tokens, loss mask, features) and compares it with what networkx
or a small independent solver written here says it should be; nothing is compared with the task's
own output. Sizes run from 3 to 26 nodes, from trees (density 0) to dense graphs.
"""

from __future__ import annotations

import string

import networkx as nx
import numpy as np
import pytest

from quietlab.tasks import get_task, task_names
from quietlab.tasks.graphs import TASKS
from quietlab.tasks.reference import check_against_reference

from task_checks import check_features_well_formed

LETTERS = string.ascii_uppercase
NAMES = ("bfs", "dfs", "shortest_path", "topological_sort", "mst")
# (n_nodes, density, examples): trees, sparse, dense, the paper size, the largest
SIZES = [
    (3, 0.3, 300),
    (3, 1.0, 300),
    (5, 0.0, 500),
    (5, 0.5, 800),
    (11, 0.3, 1500),
    (11, 1.0, 300),
    (26, 0.1, 150),
    (26, 0.3, 80),
]


# --- reading a batch back, independently of the task's code -------------------------------------
def texts(task, batch) -> list[str]:
    return ["".join(task.vocab[t] for t in row).rstrip(".") for row in batch.tokens]


def max_edges(n: int, density: float) -> int:
    non_tree = n * (n - 1) // 2 - (n - 1)
    return n - 1 + int(np.floor(density * non_tree + 0.5 + 1e-9))


def parse(name: str, text: str, n: int):
    """(endpoints, edges, answer) from the text: edges as (u, v) or (u, v, w), answer as node ids."""
    prompt, answer = text.split("=")
    head, body = prompt.split(":") if name in ("bfs", "dfs", "shortest_path") else ("", prompt)
    items = body.split(",")
    assert items == sorted(items), f"edges not in lexicographic order: {text}"
    edges = []
    for item in items:
        assert len(item) == (3 if name == "mst" else 2), text
        u, v = LETTERS.index(item[0]), LETTERS.index(item[1])
        assert u < n and v < n and u != v, text
        if name != "topological_sort":
            assert u < v, f"undirected edge not written smaller letter first: {text}"
        edges.append((u, v, int(item[2])) if name == "mst" else (u, v))
    assert len({frozenset(e[:2]) for e in edges}) == len(edges), f"repeated pair: {text}"
    ends = [LETTERS.index(c) for c in head]
    assert all(x < n for x in ends)
    return ends, edges, [LETTERS.index(c) for c in answer]


def graph_of(n: int, edges, directed: bool = False) -> nx.Graph:
    graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(n))
    for e in edges:
        graph.add_edge(e[0], e[1], **({"weight": e[2]} if len(e) == 3 else {}))
    return graph


# --- one networkx oracle per task: the graph and the answer (the features: the reference, below) --
def check_bfs(n, ends, edges, answer):
    (source,), graph = ends, graph_of(n, edges)
    assert answer == [source] + [v for _, v in nx.bfs_edges(graph, source, sort_neighbors=sorted)]


def check_dfs(n, ends, edges, answer):
    (source,), graph = ends, graph_of(n, edges)
    assert answer == list(nx.dfs_preorder_nodes(graph, source, sort_neighbors=sorted))


def check_shortest_path(n, ends, edges, answer):
    (source, target), graph = ends, graph_of(n, edges)
    assert source != target
    assert answer[0] == source and answer[-1] == target
    assert all(graph.has_edge(a, b) for a, b in zip(answer, answer[1:]))
    assert len(answer) - 1 == nx.shortest_path_length(graph, source, target)
    assert answer == min(nx.all_shortest_paths(graph, source, target))  # lexicographically smallest


def check_topological_sort(n, ends, edges, answer):
    dag = graph_of(n, edges, directed=True)
    assert nx.is_directed_acyclic_graph(dag) and nx.is_connected(dag.to_undirected())
    assert sorted(answer) == list(range(n))
    place = {v: k for k, v in enumerate(answer)}
    assert all(place[u] < place[v] for u, v in dag.edges)  # a topological order ...
    assert answer == list(nx.lexicographical_topological_sort(dag))  # ... Kahn's, smallest ready first


def check_mst(n, ends, edges, answer):
    graph = graph_of(n, edges)
    assert all(1 <= w <= 9 for _, _, w in edges)
    assert len(answer) == 2 * (n - 1)
    pairs = list(zip(answer[0::2], answer[1::2]))
    assert all(a < b and graph.has_edge(a, b) for a, b in pairs)
    assert nx.is_tree(graph_of(n, pairs))
    total = sum(graph[a][b]["weight"] for a, b in pairs)
    assert total == nx.minimum_spanning_tree(graph).size(weight="weight")
    # Kruskal's order: networkx's Kruskal takes the edges by weight, ties in the order given (sorted)
    taken = [(u, v) for u, v, _ in nx.minimum_spanning_edges(graph, algorithm="kruskal", data=True)]
    assert pairs == [tuple(sorted(e)) for e in taken]


CHECKS = {
    "bfs": check_bfs,
    "dfs": check_dfs,
    "shortest_path": check_shortest_path,
    "topological_sort": check_topological_sort,
    "mst": check_mst,
}


# --- the main check: every example, every feature, several sizes --------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_nodes,density,count", SIZES)
def test_examples_match_networkx_and_features_match_the_reference(name, n_nodes, density, count):
    task = get_task(name, n_nodes=n_nodes, density=density)
    batch = task.sample(count, seed=n_nodes)
    m_max = max_edges(n_nodes, density)
    prompt_of_most = {
        "bfs": "A:" + ",".join(["AB"] * m_max),
        "dfs": "A:" + ",".join(["AB"] * m_max),
        "shortest_path": "AB:" + ",".join(["AB"] * m_max),
        "topological_sort": ",".join(["AB"] * m_max),
        "mst": ",".join(["AB1"] * m_max),
    }[name]
    longest_answer = 2 * (n_nodes - 1) if name == "mst" else n_nodes
    assert task.seq_len == len(prompt_of_most) + 1 + longest_answer + 1
    assert batch.tokens.shape == batch.loss_mask.shape == (count, task.seq_len)
    for i, text in enumerate(texts(task, batch)):
        assert task.decode(batch.tokens[i]) == text
        assert len(text) < task.seq_len and not batch.tokens[i, len(text) :].any()
        eq = text.index("=")
        loss = np.zeros(task.seq_len, dtype=bool)
        loss[eq : len(text)] = True  # '=' and every answer token predict the next token (the last: the end)
        np.testing.assert_array_equal(batch.loss_mask[i], loss)
        ends, edges, answer = parse(name, text, n_nodes)
        assert n_nodes - 1 <= len(edges) <= m_max
        assert nx.is_connected(graph_of(n_nodes, [e[:2] for e in edges]))
        CHECKS[name](n_nodes, ends, edges, answer)
    check_against_reference(task, count)  # every feature label, as the plain reference computes it


# --- the drawing: sizes, spread, determinism, split ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_drawing_covers_the_range(name):
    task = get_task(name, n_nodes=5, density=0.5)
    rows = [parse(name, t, 5) for t in texts(task, task.sample(600, seed=2))]
    counts = {len(edges) for _, edges, _ in rows}
    assert counts == set(range(4, max_edges(5, 0.5) + 1))  # from trees to the most edges allowed
    if name in ("bfs", "dfs", "shortest_path"):
        assert {ends[0] for ends, _, _ in rows} == set(range(5))  # every letter is a source
    if name == "topological_sort":
        assert {answer[0] for _, _, answer in rows} == set(range(5))  # every letter comes first somewhere
    if name == "mst":
        assert {w for _, edges, _ in rows for *_, w in edges} == set(range(1, 10))
    paper = get_task(name)  # 11 nodes, density 0.3: 10..24 edges, uniform
    edge_counts = [len(parse(name, t, 11)[1]) for t in texts(paper, paper.sample(3000, seed=4))]
    assert min(edge_counts) == 10 and max(edge_counts) == 24 and abs(np.mean(edge_counts) - 17) < 0.4
    trees = get_task(name, n_nodes=11, density=0.0)
    assert all(len(parse(name, t, 11)[1]) == 10 for t in texts(trees, trees.sample(200, seed=1)))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batch(name):
    task = get_task(name)
    a, b, c = task.sample(300, seed=5), task.sample(300, seed=5), task.sample(300, seed=6)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
    for feat in a.features:
        np.testing.assert_array_equal(a.features[feat].values, b.features[feat].values)
        np.testing.assert_array_equal(a.features[feat].mask, b.features[feat].mask)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_test_never_share_an_example(name):
    sizes = {"n_nodes": 3, "density": 1.0} if name == "mst" else {"n_nodes": 5, "density": 0.3}
    task = get_task(name, **sizes)  # a small space, where repeats are common
    train = texts(task, task.sample(3000, seed=1))
    test = texts(task, task.sample(1000, seed=1, split="test"))
    assert len(set(train)) < len(train)  # repeats happen, so a leak would show
    assert not set(train) & set(test)
    other = get_task(name, split_seed=7, **sizes)  # another split: another held-out side
    assert set(texts(other, other.sample(1000, seed=1, split="test"))) != set(test)


# --- text round trips and correctness checks ----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_prompt_and_inputs_determine_each_other(name):
    task = get_task(name, n_nodes=7, density=0.6)
    inputs = task._draw(300, np.random.default_rng(0))
    batch = task._build(inputs)
    prompts = [t.split("=")[0] for t in texts(task, batch)]
    for i, prompt in enumerate(prompts):
        parsed = task._parse(prompt)
        assert set(parsed) == set(inputs)
        for key, value in parsed.items():
            np.testing.assert_array_equal(value[0], inputs[key][i], err_msg=key)
    rows = {tuple(np.concatenate([np.atleast_1d(v[i]) for _, v in sorted(inputs.items())])) for i in range(300)}
    assert len(set(prompts)) == len(rows)


@pytest.mark.parametrize("name", NAMES)
def test_decode_encode_and_is_correct(name):
    task = get_task(name)
    batch = task.sample(150, seed=3)
    for row, text in zip(batch.tokens, texts(task, batch)):
        np.testing.assert_array_equal(task.encode(task.decode(row)), row)
        assert task.is_correct(row)
        prompt, answer = text.split("=")
        letters = LETTERS[: task.n_nodes]
        wrong = [
            answer[:-1],  # one token short
            answer[:-1] + next(c for c in letters if c != answer[-1]),  # last letter changed
            answer[1:] + answer[0],  # rotated
        ]
        for bad in wrong:
            if bad != answer:
                assert not task.is_correct(task.encode(prompt + "=" + bad)), (text, bad)
    assert not task.is_correct(np.zeros(task.seq_len, dtype=np.int64))


BAD_PROMPTS = {
    "bfs": ["A:AB,BC,CZ", "A:AB,AA", "A:AB,AB,BC", "A:AB", "AB,BC", "Q:AB"],
    "dfs": ["A:AB,BC,CZ", "A:AB,AA", "A:AB,AB,BC", "A:AB"],
    "shortest_path": ["AA:AB,BC", "AC:AB", "AC;AB,BC", "AZ:AB,BC"],
    "topological_sort": ["AB,BC,CA", "AB,BA,BC", "AB", "AB,CZ"],
    "mst": ["AB1,BC0", "AB1,BC", "AB1,BC2,AB3", "AB1"],
}


@pytest.mark.parametrize("name", NAMES)
def test_bad_prompts_are_refused(name):
    task = get_task(name, n_nodes=3, density=1.0)
    for prompt in BAD_PROMPTS[name]:
        with pytest.raises(ValueError):
            task._parse(prompt)
        if set(prompt) <= set(task.vocab):  # a row with that prompt is never correct, and never raises
            assert not task.is_correct(task.encode(prompt + "=AB"))
    trees_only = get_task(name, n_nodes=3, density=0.0)  # at most 2 edges
    head = {"bfs": "A:", "dfs": "A:", "shortest_path": "AB:"}.get(name, "")
    three = "AB1,AC1,BC1" if name == "mst" else "AB,AC,BC"
    with pytest.raises(ValueError, match="at most 2"):
        trees_only._parse(head + three)


# --- sizes and the task's description ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bad_sizes_say_what_is_allowed(name):
    for bad in (2, 27, 11.5, "11", True):
        with pytest.raises(ValueError, match=r"n_nodes.*3\.\.26"):
            get_task(name, n_nodes=bad)
    for bad in (-0.1, 1.5, "dense"):
        with pytest.raises(ValueError, match=r"density.*0\.\.1"):
            get_task(name, density=bad)
    with pytest.raises(ValueError, match="n_nodes"):
        get_task(name, nodes=11)


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_described(name):
    assert name in task_names()
    task = get_task(name)
    assert isinstance(task, TASKS[name])
    assert task.n_nodes == 11 and task.vocab[0] == "."
    check_features_well_formed(task)
    batch = task.sample(20, seed=0)
    for feat_name, feat in batch.features.items():
        assert feat.kind == task.feature_docs[feat_name].split(":")[0], feat_name
        assert feat.k in (1, task.n_nodes), feat_name
    info = task.describe()
    assert info["sizes"]["n_nodes"]["allowed"] == "3..26" and info["sizes"]["density"]["allowed"] == "0..1"
