"""Plain per-example references for bfs, dfs, shortest_path, topological_sort and mst: the
specification the tests hold quietlab's vectorised graph tasks to, and the yardstick that
benchmarks/generation.py measures them against.

``REFERENCES[name](n, seed) -> list`` draws graphs one at a time with ``random.Random(seed)`` at the
paper size (11 nodes, density 0.3), the same way quietlab does (a uniform random labelled tree from a
Prüfer sequence, then a uniform number of extra pairs), keeps those on the training side of a 75/25
split (a hash of the example) and returns n of them, each a dict with what ``Task.sample`` gives for
one row: ``text`` (``input=answer``), ``tokens`` (token ids, padded with 0 to seq_len), ``loss_mask``
(True where the next token is an answer token or the end) and ``features``, each a list of length
seq_len holding the label at each position (None where undefined), the labels quietlab records.

``SOLVERS[name](inputs, task) -> dict`` computes one example from quietlab's raw inputs (as plain
Python lists); ``check_against_reference`` (in this package) compares it with quietlab's batch.

Straightforward code in plain Python: a graph is a list of neighbour sets (``adj[u]``; for the directed
topological_sort, successor sets) and, for mst, a dict of edge weights keyed by (u, v), u < v; deques and
sorted neighbour lists; not slowed on purpose.
"""

from __future__ import annotations

import random
from collections import deque

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# --- sizes, text and the shape of one example ----------------------------------------------------
def max_edges(n: int, density: float) -> int:
    non_tree = n * (n - 1) // 2 - (n - 1)
    return n - 1 + int(density * non_tree + 0.5 + 1e-9)  # extra edges: density * non-tree pairs, half up


def layout(name: str, n: int, density: float) -> tuple[str, int]:
    """(vocabulary, seq_len) of a task: prompt of the most edges, the longest answer, the end."""
    m = max_edges(n, density)
    digits = "123456789" if name == "mst" else ""
    punct = "=:," if name in ("bfs", "dfs", "shortest_path") else "=,"
    head = {"bfs": 2, "dfs": 2, "shortest_path": 3}.get(name, 0)
    width = 4 if name == "mst" else 3
    answer = 2 * (n - 1) if name == "mst" else n
    return "." + punct + LETTERS[:n] + digits, head + width * m + answer + 1


def example(text: str, features: dict, vocab: str, seq_len: int) -> dict:
    index = {ch: i for i, ch in enumerate(vocab)}
    tokens = [index[ch] for ch in text] + [0] * (seq_len - len(text))
    eq = text.index("=")
    loss_mask = [eq <= t < len(text) for t in range(seq_len)]
    dense = {}
    for name, labels in features.items():
        row = [None] * seq_len
        for pos, value in labels.items():
            row[pos] = value
        dense[name] = row
    return {"text": text, "tokens": tokens, "loss_mask": loss_mask, "features": dense}


def members(nodes, n: int) -> list[int]:
    row = [0] * n
    for x in nodes:
        row[x] = 1
    return row


def edges_of(adj: list[set[int]]) -> list[tuple[int, int]]:
    """The undirected edges (u, v), u < v, in lexicographic order."""
    return [(u, v) for u in range(len(adj)) for v in sorted(adj[u]) if u < v]


def edge_text(adj: list[set[int]]) -> str:
    return ",".join(LETTERS[u] + LETTERS[v] for u, v in edges_of(adj))


def distances(adj: list[set[int]], source: int) -> list[int]:
    """Fewest edges from ``source`` to every node (the graph is connected)."""
    dist = {source: 0}
    queue = deque([source])
    while queue:
        v = queue.popleft()
        for u in adj[v]:
            if u not in dist:
                dist[u] = dist[v] + 1
                queue.append(u)
    return [dist[x] for x in range(len(adj))]


# --- drawing ------------------------------------------------------------------------------------
def prufer_tree(sequence: list[int], n: int) -> list[tuple[int, int]]:
    """The labelled tree a Prüfer sequence encodes: each step joins the smallest leaf to the next entry."""
    degree = [1] * n
    for x in sequence:
        degree[x] += 1
    edges = []
    for x in sequence:
        leaf = min(v for v in range(n) if degree[v] == 1)
        edges.append((min(leaf, x), max(leaf, x)))
        degree[leaf] -= 1
        degree[x] -= 1
    u, v = [x for x in range(n) if degree[x] == 1]
    return edges + [(u, v)]


def draw_graph(rnd: random.Random, n: int, density: float) -> list[set[int]]:
    """A uniform random labelled tree (Prüfer sequence) plus k ~ U{0..max_extra} random other pairs."""
    adj = [set() for _ in range(n)]
    for u, v in prufer_tree([rnd.randrange(n) for _ in range(n - 2)], n):
        adj[u].add(v)
        adj[v].add(u)
    others = [(u, v) for u in range(n) for v in range(u + 1, n) if v not in adj[u]]
    for u, v in rnd.sample(others, rnd.randint(0, max_edges(n, density) - (n - 1))):
        adj[u].add(v)
        adj[v].add(u)
    return adj


def train_side(key) -> bool:
    return hash(key) % 4 != 0


# --- the algorithms, one example each ----------------------------------------------------------
def solve_bfs(graph: list[set[int]], source: int, density: float) -> dict:
    n = len(graph)
    prompt = f"{LETTERS[source]}:{edge_text(graph)}="
    eq = len(prompt) - 1
    feats = {k: {} for k in ("queue", "visited", "adjacency", "depth", "parent")}
    neighbours = [sorted(graph[u]) for u in range(n)]
    queue, order = deque([source]), []
    depth, parent = {source: 0}, {source: source}
    feats["queue"][eq], feats["visited"][eq] = members(queue, n), members(order, n)
    while queue:
        v = queue.popleft()
        order.append(v)
        for u in neighbours[v]:
            if u not in depth:
                depth[u], parent[u] = depth[v] + 1, v
                queue.append(u)
        pos = eq + len(order)
        feats["queue"][pos] = members(queue, n)
        feats["visited"][pos] = members(order, n)
        feats["adjacency"][pos] = members(neighbours[v], n)
        feats["depth"][pos] = [depth[v]]
        feats["parent"][pos] = [parent[v]]
    return example(prompt + "".join(LETTERS[v] for v in order), feats, *layout("bfs", n, density))


def solve_dfs(graph: list[set[int]], source: int, density: float) -> dict:
    n = len(graph)
    prompt = f"{LETTERS[source]}:{edge_text(graph)}="
    eq = len(prompt) - 1
    feats = {k: {} for k in ("stack", "visited", "adjacency", "depth", "parent")}
    neighbours = [sorted(graph[u]) for u in range(n)]
    order, stack_at_visit = [], []
    seen = {source}

    def visit(v: int, stack: list[int]) -> None:  # recursive pre-order; stack = the calls below v
        order.append(v)
        stack_at_visit.append(list(stack))
        for u in neighbours[v]:
            if u not in seen:
                seen.add(u)
                visit(u, stack + [v])

    visit(source, [])
    feats["stack"][eq], feats["visited"][eq] = members([], n), members([], n)
    for r, v in enumerate(order):
        pos = eq + 1 + r
        # after visiting v and backtracking, the stack is what the next call finds below it
        feats["stack"][pos] = members(stack_at_visit[r + 1] if r + 1 < n else [], n)
        feats["visited"][pos] = members(order[: r + 1], n)
        feats["adjacency"][pos] = members(neighbours[v], n)
        feats["depth"][pos] = [len(stack_at_visit[r])]
        feats["parent"][pos] = [stack_at_visit[r][-1] if stack_at_visit[r] else v]
    return example(prompt + "".join(LETTERS[v] for v in order), feats, *layout("dfs", n, density))


def solve_shortest_path(graph: list[set[int]], source: int, target: int, density: float) -> dict:
    n = len(graph)
    prompt = f"{LETTERS[source]}{LETTERS[target]}:{edge_text(graph)}="
    eq = len(prompt) - 1
    dist, to_target = distances(graph, source), distances(graph, target)
    dist_row, to_target_row = dist, to_target
    path = [source]
    while path[-1] != target:  # the smallest neighbour one step closer to the target
        v = path[-1]
        path.append(min(u for u in graph[v] if to_target[u] == to_target[v] - 1))
    names = ("distance", "distance_to_target", "visited", "adjacency", "candidates")
    feats = {k: {} for k in names}
    for pos in [eq] + [eq + 1 + r for r in range(len(path))]:
        feats["distance"][pos], feats["distance_to_target"][pos] = dist_row, to_target_row
    feats["visited"][eq] = members([], n)
    for r, v in enumerate(path):
        pos = eq + 1 + r
        feats["visited"][pos] = members(path[: r + 1], n)
        feats["adjacency"][pos] = members(graph[v], n)
        feats["candidates"][pos] = members([u for u in graph[v] if to_target[u] == to_target[v] - 1], n)
    return example(prompt + "".join(LETTERS[v] for v in path), feats, *layout("shortest_path", n, density))


def solve_topological_sort(dag: list[set[int]], density: float) -> dict:
    """``dag[u]``: the successors of u."""
    n = len(dag)
    prompt = ",".join(LETTERS[u] + LETTERS[v] for u in range(n) for v in sorted(dag[u])) + "="
    eq = len(prompt) - 1
    in_degree = [sum(x in dag[u] for u in range(n)) for x in range(n)]
    done: list[int] = []
    feats = {k: {} for k in ("ready", "remaining_in_degree", "visited", "adjacency")}

    def record(pos: int) -> None:
        feats["ready"][pos] = members([x for x in range(n) if in_degree[x] == 0 and x not in done], n)
        feats["remaining_in_degree"][pos] = [in_degree[x] for x in range(n)]
        feats["visited"][pos] = members(done, n)

    record(eq)
    for r in range(n):
        v = min(x for x in range(n) if in_degree[x] == 0 and x not in done)
        done.append(v)
        for u in dag[v]:
            in_degree[u] -= 1
        record(eq + 1 + r)
        feats["adjacency"][eq + 1 + r] = members(dag[v], n)
    return example(prompt + "".join(LETTERS[v] for v in done), feats, *layout("topological_sort", n, density))


def solve_mst(graph: list[set[int]], weight: dict[tuple[int, int], int], density: float) -> dict:
    n = len(graph)
    edges = edges_of(graph)
    prompt = ",".join(f"{LETTERS[u]}{LETTERS[v]}{weight[u, v]}" for u, v in edges) + "="
    eq = len(prompt) - 1
    component = list(range(n))
    in_tree: set[int] = set()
    answer = []
    feats = {k: {} for k in ("component", "in_tree", "adjacency", "edge_weight")}
    feats["component"][eq], feats["in_tree"][eq] = list(component), members(in_tree, n)
    for u, v in sorted(edges, key=lambda e: (weight[e], e)):
        if component[u] == component[v]:
            continue
        w = weight[u, v]
        for x, after in ((u, False), (v, True)):
            if after:  # union, the merged component named by its smallest node
                lo, hi = sorted((component[u], component[v]))
                component = [lo if c == hi else c for c in component]
                in_tree |= {u, v}
            pos = eq + 1 + len(answer)
            answer.append(x)
            feats["component"][pos] = list(component)
            feats["in_tree"][pos] = members(in_tree, n)
            feats["adjacency"][pos] = members(graph[x], n)
            feats["edge_weight"][pos] = [w]
    return example(prompt + "".join(LETTERS[x] for x in answer), feats, *layout("mst", n, density))


# --- n examples, one at a time ------------------------------------------------------------------
def _from_a_source(solve, n: int, seed: int, n_nodes: int, density: float) -> list:
    """n examples of ``solve(graph, source, density)`` on drawn graphs and uniform sources."""
    rnd, out = random.Random(seed), []
    while len(out) < n:
        graph, source = draw_graph(rnd, n_nodes, density), rnd.randrange(n_nodes)
        if train_side((source, *edges_of(graph))):
            out.append(solve(graph, source, density))
    return out


def bfs(n: int, seed: int, n_nodes: int = 11, density: float = 0.3) -> list:
    return _from_a_source(solve_bfs, n, seed, n_nodes, density)


def dfs(n: int, seed: int, n_nodes: int = 11, density: float = 0.3) -> list:
    return _from_a_source(solve_dfs, n, seed, n_nodes, density)


def shortest_path(n: int, seed: int, n_nodes: int = 11, density: float = 0.3) -> list:
    rnd, out = random.Random(seed), []
    while len(out) < n:
        graph, source = draw_graph(rnd, n_nodes, density), rnd.randrange(n_nodes)
        target = (source + rnd.randrange(1, n_nodes)) % n_nodes
        if train_side((source, target, *edges_of(graph))):
            out.append(solve_shortest_path(graph, source, target, density))
    return out


def topological_sort(n: int, seed: int, n_nodes: int = 11, density: float = 0.3) -> list:
    rnd, out = random.Random(seed), []
    while len(out) < n:
        undirected = draw_graph(rnd, n_nodes, density)
        rank = [rnd.random() for _ in range(n_nodes)]  # a random order; every edge points along it
        dag = [set() for _ in range(n_nodes)]
        for u, v in edges_of(undirected):
            a, b = (u, v) if (rank[u], u) < (rank[v], v) else (v, u)
            dag[a].add(b)
        if train_side(tuple((u, v) for u in range(n_nodes) for v in sorted(dag[u]))):
            out.append(solve_topological_sort(dag, density))
    return out


def mst(n: int, seed: int, n_nodes: int = 11, density: float = 0.3) -> list:
    rnd, out = random.Random(seed), []
    while len(out) < n:
        graph = draw_graph(rnd, n_nodes, density)
        weight = {e: rnd.randint(1, 9) for e in edges_of(graph)}
        if train_side(tuple((u, v, w) for (u, v), w in weight.items())):
            out.append(solve_mst(graph, weight, density))
    return out


REFERENCES = {
    "bfs": bfs,
    "dfs": dfs,
    "shortest_path": shortest_path,
    "topological_sort": topological_sort,
    "mst": mst,
}


# --- one example from quietlab's raw inputs (Task._draw's dict, one row, as lists) ---------------
def _graph(inputs: dict, task, directed: bool = False) -> tuple[list[set[int]], dict]:
    """(neighbour or successor sets, edge weights) from quietlab's edge codes: for each pair (u, v), u < v,
    in order, 0 = no edge; undirected: the weight (1 when unweighted); directed: 1 = u→v, else v→u."""
    n = task.n_nodes
    pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]  # the order of inputs["edges"]
    adj, weight = [set() for _ in range(n)], {}
    for (u, v), code in zip(pairs, inputs["edges"]):
        if code and directed:
            a, b = (u, v) if code == 1 else (v, u)
            adj[a].add(b)
        elif code:
            adj[u].add(v)
            adj[v].add(u)
            weight[u, v] = code
    return adj, weight


SOLVERS = {
    "bfs": lambda inp, task: solve_bfs(_graph(inp, task)[0], inp["source"], task.density),
    "dfs": lambda inp, task: solve_dfs(_graph(inp, task)[0], inp["source"], task.density),
    "shortest_path": lambda inp, task: solve_shortest_path(
        _graph(inp, task)[0], inp["source"], inp["target"], task.density
    ),
    "topological_sort": lambda inp, task: solve_topological_sort(_graph(inp, task, directed=True)[0], task.density),
    "mst": lambda inp, task: solve_mst(*_graph(inp, task), task.density),
}
