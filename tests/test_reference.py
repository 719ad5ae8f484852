"""The plain per-example references (quietlab.tasks.reference), which the task tests take as the
specification of every feature label, checked themselves against independent oracles: networkx for the
graph algorithms and Prüfer decoding, integers and brute force for the others."""

from __future__ import annotations

import random
import string

import networkx as nx
import pytest

from quietlab.tasks import get_task
from quietlab.tasks.reference import REFERENCES, check_against_reference
from quietlab.tasks.reference.graphs import draw_graph, max_edges, prufer_tree

LETTERS = string.ascii_uppercase


def test_prufer_decoding_is_networkx():
    rnd = random.Random(0)
    for n in (2, 3, 5, 11, 26):
        for _ in range(50):
            seq = [rnd.randrange(n) for _ in range(n - 2)]
            assert sorted(prufer_tree(seq, n)) == sorted(tuple(sorted(e)) for e in nx.from_prufer_sequence(seq).edges)


def test_drawn_graphs_are_connected_and_sized():
    rnd = random.Random(1)
    for n, density in ((3, 1.0), (11, 0.3), (26, 0.1)):
        for _ in range(50):
            adj = draw_graph(rnd, n, density)
            graph = nx.Graph([(u, v) for u in range(n) for v in adj[u]])
            assert graph.number_of_nodes() == n and nx.is_connected(graph)
            assert n - 1 <= graph.number_of_edges() <= max_edges(n, density)


def _graph(prompt: str, directed=False):
    graph = nx.DiGraph() if directed else nx.Graph()
    for item in prompt.split(","):
        graph.add_edge(LETTERS.index(item[0]), LETTERS.index(item[1]), **({"weight": int(item[2])} if len(item) == 3 else {}))
    return graph


def _answer(text: str) -> list[int]:
    return [LETTERS.index(c) for c in text.split("=")[1]]


@pytest.mark.parametrize("name", ["bfs", "dfs", "shortest_path", "topological_sort", "mst"])
def test_graph_references_answer_as_networkx_does(name):
    for ex in REFERENCES[name](40, seed=3):
        prompt, answer = ex["text"].split("=")[0], _answer(ex["text"])
        ends, body = prompt.split(":") if ":" in prompt else ("", prompt)
        graph = _graph(body, directed=name == "topological_sort")
        ends = [LETTERS.index(c) for c in ends]
        if name == "bfs":
            assert answer == ends + [v for _, v in nx.bfs_edges(graph, ends[0], sort_neighbors=sorted)]
        elif name == "dfs":
            assert answer == list(nx.dfs_preorder_nodes(graph, ends[0], sort_neighbors=sorted))
        elif name == "shortest_path":
            assert answer == min(nx.all_shortest_paths(graph, *ends))
        elif name == "topological_sort":
            assert answer == list(nx.lexicographical_topological_sort(graph))
        else:
            pairs = list(zip(answer[0::2], answer[1::2]))
            assert sum(graph[a][b]["weight"] for a, b in pairs) == nx.minimum_spanning_tree(graph).size(weight="weight")


def _int(bits: str) -> int:
    return int(bits[::-1], 2)  # LSB first


def test_arithmetic_references_answer_as_integers_and_brute_force_do():
    for ex in REFERENCES["addition"](50, seed=0):
        a, rest = ex["text"].split("+")
        b, s = rest.split("=")
        assert _int(s) == _int(a) + _int(b)
    for ex in REFERENCES["multiplication"](50, seed=0):
        a, rest = ex["text"].split("*")
        b, p = rest.split("=")
        assert _int(p) == _int(a) * _int(b)
    for ex in REFERENCES["max_subarray"](50, seed=0):
        values = [LETTERS.index(c) - 9 for c in ex["text"].split("=")[0]]
        best = max(sum(values[i:j]) for i in range(len(values)) for j in range(i + 1, len(values) + 1))
        assert sum(LETTERS.index(c) - 9 for c in ex["text"].split("=")[1]) == best


@pytest.mark.parametrize("name, sizes", [
    ("addition", {"n_bits": 2}), ("addition", {"n_bits": 64}), ("multiplication", {"n_bits": 3}),
    ("multiplication", {"n_bits": 16}), ("majority_of_majorities", {"n_bits": 9, "n_groups": 3}),
    ("majority_of_majorities", {}), ("max_subarray", {"length": 3}), ("max_subarray", {"length": 64}),
    ("activity_selection", {"n": 4, "max_time": 5}), ("activity_selection", {}),
])
def test_arithmetic_and_sequence_tasks_match_their_reference(name, sizes):
    check_against_reference(get_task(name, **sizes), count=200)
