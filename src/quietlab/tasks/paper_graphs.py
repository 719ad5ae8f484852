"""The paper preset's graph tasks (PAPER_PROTOCOL §1): bfs, dfs (Sage's stack order), shortest_path
(Sage's bidirectional BFS), topological_sort (Sage's DAG order) and mst (Sage's Kruskal, unweighted).

Graphs: uniform over the connected unlabelled graphs on n_nodes nodes, randomly labelled
(graph_sampling.py), as the paper's uniform lines of nauty's ``geng -c`` file. Prompts have no
separators: ``[source[target]]`` then each edge as two letters, the pairs u < v in lexicographic
order (topological_sort: each pair written earlier -> later in a random node order, still in pair
order), ``=``, the answer. The vocabulary is the paper's graph one: all 26 letters, ``=``,
``<EOS>`` (written ``.``, numbered 0; the paper numbers ``=`` 26 and ``<EOS>`` 27). Rows are padded
to the paper's lengths (124 tokens for bfs, dfs and topological_sort, 125 for shortest_path, 133
for mst at 11 nodes).

Source, target (another node) and orientation come from the seeded generator; the paper's came
from numpy's unseeded global generator at tokenisation. Held-out split: by an isomorphism-invariant
hash of the undirected graph, so no held-out graph is isomorphic to a training graph.
"""

from __future__ import annotations

import numpy as np

from . import register
from .base import PAD, Batch, Feature, FeatureRecorder, Knob
from .graph_sampling import isomorphism_invariant, uniform_connected_graphs
from .graphs import (BFS, LETTERS, MST, GraphTask, ShortestPath, TopologicalSort, _bfs_distances,
                     _first, _merge, _node_bits, _pair_index, _row, _set)
from .paper_format import target_equals


class PaperGraphTask(GraphTask):
    """Frame of the paper's graph tasks: sampler, vocabulary, prompt, parsing, split, loss mask.
    A subclass implements ``_solve`` as quietlab's graph tasks do (tasks/graphs.py)."""

    preset = "paper"
    knobs = (Knob("n_nodes", 11, 3, 26, "number of nodes, named A, B, ... (the paper uses 11)"),)
    renames: dict[str, str] = {"adjacency": "adjacency_list"}  # quietlab name -> the paper's

    def _setup(self) -> None:
        n = self.n_nodes
        self.n_pairs = self.max_edges = n * (n - 1) // 2
        self._iu, self._ju = np.triu_indices(n, 1)
        self._pid = _pair_index(n)
        lookup = self._pid + self.n_pairs * (np.arange(n)[:, None] > np.arange(n))  # u > v: the second half
        lookup[np.diag_indices(n)] = 2 * self.n_pairs
        self._adjacency_lookup = lookup.reshape(-1)
        self.vocab = [PAD, *LETTERS, "="]
        self.tok = {ch: i for i, ch in enumerate(self.vocab)}
        self.letter0 = self.tok["A"]
        self.stride = 2
        self.head = len(self.endpoints)
        # the two letters of an edge by code pair * 2 + (1 if written v u, else 0)
        pairs = np.stack([self._iu, self._ju], axis=1)
        blocks = np.stack([pairs, pairs[:, ::-1]], axis=1).reshape(-1, 2) + self.letter0
        self._edge_blocks = np.ascontiguousarray(blocks.astype(np.uint8)).view("V2")[:, 0]
        # the paper's padded length: room for one prompt letter even without source (PAPER_PROTOCOL §0)
        self.seq_len = max(self.head, 1) + 2 * self.n_pairs + 1 + self.max_answer + 1

    def _declare(self, rec: FeatureRecorder, names: tuple[str, ...], kind: str, k: int = 1, n_classes: int = 2) -> None:
        docs = {name: self.feature_docs[self.renames.get(name, name)] for name in names}
        rec.declare_together(docs, kind, k=k, n_classes=n_classes)

    def _graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return uniform_connected_graphs(self.n_nodes, n, rng)

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        # the unlabelled graph alone: isomorphic graphs, whatever their endpoints, share a side
        return isomorphism_invariant(inputs["edges"], self.n_nodes).view(np.int64).reshape(-1, 1)

    def _write_prompt(self, tokens, inputs: dict[str, np.ndarray], adj: np.ndarray) -> np.ndarray:
        size = len(adj)
        for col, key in enumerate(self.endpoints):
            tokens.put(col, self.letter0 + inputs[key])
        edges = inputs["edges"].reshape(-1)
        found = np.flatnonzero(edges)  # row by row, each row's pairs in lexicographic order
        b, pair = np.divmod(found, self.n_pairs)
        m = np.bincount(b, minlength=size)
        j = np.arange(len(found)) - (np.cumsum(m) - m)[b]  # index of the edge within its row
        tokens.put_blocks(b, j, self._edge_blocks[2 * pair + (edges[found] == 2)])
        eq = self.head + 2 * m
        tokens.put(eq, self.tok["="])
        return eq

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        batch = super()._build(inputs)
        return target_equals(batch, {self.renames.get(k, k): f for k, f in batch.features.items()})

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        n, name, k = self.n_nodes, self.name, len(self.endpoints)

        def node(ch: str) -> int:
            i = ord(ch) - ord("A")
            if not 0 <= i < n:
                raise ValueError(f"{name}: {ch!r} is not a node; nodes are A..{LETTERS[n - 1]} (n_nodes={n})")
            return i

        if len(prompt) < k or (len(prompt) - k) % 2:
            raise ValueError(f"{name}: a prompt is {k} node letter(s), then two letters per edge; got {prompt!r}")
        inputs = {key: np.array([node(ch)], dtype=np.int64) for key, ch in zip(self.endpoints, prompt[:k])}
        if k == 2 and inputs["source"][0] == inputs["target"][0]:
            raise ValueError(f"{name}: source and target must differ")
        edges = np.zeros(self.n_pairs, dtype=np.uint8)
        for i in range(k, len(prompt), 2):
            u, v = node(prompt[i]), node(prompt[i + 1])
            if u == v:
                raise ValueError(f"{name}: edge {prompt[i:i + 2]!r} is a self-loop")
            if edges[self._pid[u, v]]:
                raise ValueError(f"{name}: edge {prompt[i:i + 2]!r} joins two nodes already joined by an edge")
            edges[self._pid[u, v]] = 1 if (not self.directed or u < v) else 2
        inputs["edges"] = self._checked_graph(name, edges)
        return inputs


@register
class PaperBFS(PaperGraphTask):
    """Breadth-first visit order from the source, neighbours in ascending order, marked when queued
    (quietlab's BFS, whose rule is the paper's). ``A`` + edges ``=`` order."""

    name = "bfs"
    endpoints = ("source",)
    description = "breadth-first visit order (source, edges = order), neighbours ascending; the paper's graphs"
    feature_docs = {
        "queue": "multilabel: queue membership after expanding the node at t0+1+r, r < n-1: the paper's "
        "positions (quiet in the paper)",
        "visited": BFS.feature_docs["visited"],
        "adjacency_list": "multilabel: adjacency row of the node at t0+1+r (loud in the paper)",
        "depth": BFS.feature_docs["depth"],
        "parent": BFS.feature_docs["parent"],
    }
    _solve = BFS._solve

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        """quietlab's BFS labels ``queue`` also at '=' ({source}) and after the last node (empty); the paper
        probes and ablates it after nodes r < n-1 only, so those two positions are left out here."""
        batch = super()._build(inputs)
        queue = batch.features["queue"]
        mask = queue.mask.copy()  # shared with `visited`, which keeps its own positions
        rows, eq = np.arange(len(mask)), batch.answer_start
        mask[rows, eq] = mask[rows, eq + self.n_nodes] = False
        features = {**batch.features, "queue": Feature(queue.values, mask, queue.kind, queue.n_classes,
                                                       queue.description)}
        return Batch(batch.tokens, batch.loss_mask, features)


@register
class PaperDFS(PaperGraphTask):
    """Sage's depth_first_search: a stack; pop a node, and if it is new visit it and push all its
    neighbours in ascending order, so the largest is tried first. ``A`` + edges ``=`` order.

    The next node visited is the unvisited node whose latest push is topmost (entries of unvisited
    nodes are never popped unvisited), which is what is computed here."""

    name = "dfs"
    endpoints = ("source",)
    description = "Sage's stack depth-first order (largest neighbour first); the paper's graphs"
    feature_docs = {
        "stack": "multilabel: unvisited nodes with an entry on the stack after visiting the node at t0+1+r",
        "visited": "multilabel: nodes visited so far, the one at t0+1+r included",
        "adjacency_list": "multilabel: adjacency row of the node at t0+1+r (loud in the paper)",
        "depth": "categorical: depth in the DFS tree (the source 0) of the node at t0+1+r",
        "parent": "categorical: DFS-tree parent of the node at t0+1+r, the node whose push of it was popped "
        "(source: itself)",
    }

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        self._declare(rec, ("stack", "visited", "adjacency"), "multilabel", k=n)
        self._declare(rec, ("depth", "parent"), "categorical", n_classes=n)
        rec.share_mask("stack", "visited", "adjacency", "depth", "parent")
        visited = np.zeros((size, n), dtype=bool)
        pushed = np.full((size, n), -1, dtype=np.int16)  # stack height of each node's latest entry
        letters = np.arange(n, dtype=np.int16)
        v = inputs["source"]
        parent = np.repeat(v.astype(np.int8)[:, None], n, axis=1)  # of each node: who pushed its latest entry
        depth = np.zeros((size, n), dtype=np.int8)
        for r in range(n):
            pos = eq + 1 + r
            tokens.put(pos, self.letter0 + v)
            _set(visited, v, True)
            nbrs = _row(adj, v)
            push = nbrs & ~visited
            np.copyto(pushed, np.int16((r + 1) * n) + letters, where=push)  # ascending: largest on top
            on_stack = (pushed >= 0) & ~visited
            rec.push("stack", pos, on_stack)
            rec.push("visited", pos, visited)
            rec.push("adjacency", pos, nbrs)
            rec.push("depth", pos, _row(depth, v))
            rec.push("parent", pos, _row(parent, v))
            np.copyto(parent, v.astype(np.int8)[:, None], where=push)
            np.copyto(depth, (_row(depth, v) + np.int8(1))[:, None], where=push)
            v = np.argmax(np.where(on_stack, pushed, -1), axis=1)
        return n


@register
class PaperShortestPath(PaperGraphTask):
    """Sage's shortest_path (BFS_Bid): one whole BFS level from the source, then one from the target,
    alternately, each level's nodes expanded in the order found and their neighbours ascending; it
    stops at the first newly found node that the other side already knows (the meeting node); the
    path runs source -> meeting node by the source side's predecessors, then on to the target by
    the target side's. ``ST`` + edges ``=`` path."""

    name = "shortest_path"
    endpoints = ("source", "target")
    description = "Sage's bidirectional-BFS shortest path (source target, edges = path); the paper's graphs"
    feature_docs = {
        "distance": ShortestPath.feature_docs["distance"],
        "distance_to_target": ShortestPath.feature_docs["distance_to_target"],
        "visited": ShortestPath.feature_docs["visited"],
        "adjacency_list": "multilabel: neighbours of the node at answer token r",
    }

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        rows = np.arange(size)
        letters = np.arange(n, dtype=np.int32)
        never = np.int32(n * n + n)  # beyond every search-order key
        ends = (inputs["source"], inputs["target"])
        known = [np.zeros((size, n), dtype=bool) for _ in ends]
        pred = [np.zeros((size, n), dtype=np.int64) for _ in ends]
        order = [np.full((size, n), n, dtype=np.int32) for _ in ends]  # place in that side's search order
        for side, end in enumerate(ends):
            known[side][rows, end] = True
            pred[side][rows, end] = end
            order[side][rows, end] = 0
        frontier = [k.copy() for k in known]
        found_count = [np.ones(size, dtype=np.int32) for _ in ends]
        meet = np.zeros(size, dtype=np.int64)
        searching = np.ones(size, dtype=bool)
        side = 0
        for _ in range(2 * n):
            if not searching.any():
                break
            this, other = side, 1 - side
            # for every node w: the search-order place of the first frontier node next to it
            via = np.where(frontier[this][:, :, None] & adj, order[this][:, :, None], never)
            first = via.min(axis=1)
            finder = via.argmin(axis=1)
            new = ~known[this] & (first < never) & searching[:, None]
            key = first * n + letters  # the order nodes are found in: by finder, then ascending
            hits = new & known[other]
            done = hits.any(axis=1)
            meeting = np.argmin(np.where(hits, key, never * n), axis=1)
            pred[this][done, meeting[done]] = finder[done, meeting[done]]
            meet[done] = meeting[done]
            searching &= ~done
            new &= searching[:, None]
            known[this] |= new
            np.copyto(pred[this], finder, where=new)
            rank = np.argsort(np.argsort(np.where(new, key, never * n), axis=1), axis=1)
            np.copyto(order[this], found_count[this][:, None] + rank.astype(np.int32), where=new)
            found_count[this] += new.sum(axis=1, dtype=np.int32)
            frontier[this] = new
            side = other
        # walk back from the meeting node to each end
        chains = []
        for side, end in enumerate(ends):
            chain = np.empty((size, n), dtype=np.int64)
            chain[:, 0] = meet
            for step in range(1, n):
                chain[:, step] = pred[side][rows, chain[:, step - 1]]
            chains.append((chain, np.argmax(chain == end[:, None], axis=1)))
        (to_source, hops_source), (to_target, hops_target) = chains
        length = hops_source + hops_target + 1
        # the features: distances from both ends (at '=' and every answer token), the path so far
        self._declare(rec, ("distance", "distance_to_target"), "categorical", k=n, n_classes=n)
        self._declare(rec, ("visited", "adjacency"), "multilabel", k=n)
        rec.share_mask("distance", "distance_to_target", "visited")
        neighbour_bits = _node_bits(adj)
        static = (("distance", _bfs_distances(neighbour_bits, ends[0])),
                  ("distance_to_target", _bfs_distances(neighbour_bits, ends[1])))
        visited = np.zeros((size, n), dtype=bool)
        for feat, value in static:
            rec.push(feat, eq, value)
        rec.push("visited", eq, visited)
        for r in range(int(length.max(initial=0))):
            letter = np.where(r <= hops_source, to_source[rows, np.clip(hops_source - r, 0, n - 1)],
                              to_target[rows, np.clip(r - hops_source, 0, n - 1)])
            live = rows[r < length]
            pos = eq[live] + 1 + r
            tokens.put(pos, self.letter0 + letter[live], rows=live)
            _set(visited, letter[live], True, rows=live)
            for feat, value in static:
                rec.push(feat, pos, value[live], rows=live)
            rec.push("visited", pos, visited[live], rows=live)
            rec.push("adjacency", pos, adj[live, letter[live]], rows=live)
        return length


@register
class PaperTopologicalSort(PaperGraphTask):
    """Sage's topological_sort: for each node in ascending order not yet finished, a stack DFS that
    pushes the out-neighbours in ascending order (so the largest is explored first); nodes are
    recorded as they finish; the answer is that record reversed. Equivalently the reverse post-order
    of a DFS trying out-neighbours largest first, from roots A, B, ... in turn. Edges ``=`` order."""

    name = "topological_sort"
    directed = True
    description = "Sage's DFS topological order of a DAG (oriented edges = order); the paper's graphs"
    feature_docs = {
        "ready": TopologicalSort.feature_docs["ready"],
        "remaining_in_degree": TopologicalSort.feature_docs["remaining_in_degree"],
        "visited": TopologicalSort.feature_docs["visited"],
        "adjacency_list": "multilabel: out-neighbours of the node at answer token r",
    }

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        edges = uniform_connected_graphs(self.n_nodes, n, rng)
        # a uniformly random order of the nodes; every pair points from the earlier to the later
        rank = rng.random((n, self.n_nodes))
        backward = rank[:, self._iu] > rank[:, self._ju]
        return {"edges": edges.astype(np.uint8) * (np.uint8(1) + backward)}

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        rows = np.arange(size)
        visited = np.zeros((size, n), dtype=bool)
        stack = np.zeros((size, n), dtype=np.int64)
        height = np.zeros(size, dtype=np.int64)
        finished = np.zeros((size, n), dtype=np.int64)
        n_finished = np.zeros(size, dtype=np.int64)
        for _ in range(2 * n):  # every node is pushed once and popped once: one of the two per step
            empty = height == 0
            top = stack[rows, np.maximum(height - 1, 0)]
            unvisited_out = adj[rows, top] & ~visited
            descend = ~empty & unvisited_out.any(axis=1)
            largest = n - 1 - np.argmax(unvisited_out[:, ::-1], axis=1)
            push = (empty & ~visited.all(axis=1)) | descend
            node = np.where(empty, _first(~visited), largest)
            r = rows[push]
            stack[r, height[r]] = node[r]
            visited[r, node[r]] = True
            height[r] += 1
            r = rows[~empty & ~descend]  # the top has nothing left to explore: it finishes
            finished[r, n_finished[r]] = top[r]
            n_finished[r] += 1
            height[r] -= 1
        # the answer, and the state of the output so far (quietlab's Kahn features, which any order defines)
        self._declare(rec, ("ready", "visited", "adjacency"), "multilabel", k=n)
        self._declare(rec, ("remaining_in_degree",), "categorical", k=n, n_classes=n)
        rec.share_mask("ready", "remaining_in_degree", "visited")
        in_degree = adj.sum(axis=1, dtype=np.int8)
        done = np.zeros((size, n), dtype=bool)
        rec.push("ready", eq, in_degree == 0)
        rec.push("remaining_in_degree", eq, in_degree)
        rec.push("visited", eq, done)
        for r in range(n):
            v = finished[:, n - 1 - r]
            tokens.put(eq + 1 + r, self.letter0 + v)
            _set(done, v, True)
            out = _row(adj, v)
            in_degree -= out
            rec.push("ready", eq + 1 + r, (in_degree == 0) & ~done)
            rec.push("remaining_in_degree", eq + 1 + r, in_degree)
            rec.push("visited", eq + 1 + r, done)
            rec.push("adjacency", eq + 1 + r, out)
        return n


@register
class PaperMST(PaperGraphTask):
    """Sage's kruskal on the unweighted graph (every weight 1, a stable sort): scan the edges in
    lexicographic order and keep those that join two components; the answer lists the n-1 kept
    edges in that order, two letters each. Edges ``=`` tree edges."""

    name = "mst"
    description = "Sage's Kruskal on the unweighted graph (edges = tree edges, in lexicographic order)"
    feature_docs = {
        "component": MST.feature_docs["component"] + " (at token 2j: edges 0..j-1; at 2j+1: 0..j; at '=': none)",
        "in_tree": MST.feature_docs["in_tree"],
        "adjacency_list": "multilabel: neighbours of the node at the answer token",
    }

    @property
    def max_answer(self) -> int:
        return 2 * (self.n_nodes - 1)

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        present = inputs["edges"] != 0
        component = np.repeat(np.arange(n, dtype=np.int8)[None], size, axis=0)  # smallest letter of each's
        taken = np.zeros(present.shape, dtype=bool)
        for p in range(self.n_pairs):
            cu, cv = component[:, self._iu[p]].copy(), component[:, self._ju[p]].copy()
            np.logical_and(present[:, p], cu != cv, out=taken[:, p])
            _merge(component, cu, cv, taken[:, p])
        tree = np.nonzero(taken)[1].reshape(size, n - 1)  # each row's kept pairs, in scan order
        # write the tree edges, growing the forest again to record it edge by edge
        self._declare(rec, ("component",), "categorical", k=n, n_classes=n)
        self._declare(rec, ("in_tree", "adjacency"), "multilabel", k=n)
        rec.share_mask("component", "in_tree")
        component = np.repeat(np.arange(n, dtype=np.int8)[None], size, axis=0)
        in_tree = np.zeros((size, n), dtype=bool)
        rec.push("component", eq, component)
        rec.push("in_tree", eq, in_tree)
        for j in range(n - 1):
            u, v = self._iu[tree[:, j]], self._ju[tree[:, j]]
            first = eq + 1 + 2 * j
            tokens.put(first, self.letter0 + u)
            tokens.put(first + 1, self.letter0 + v)
            rec.push("component", first, component)
            rec.push("in_tree", first, in_tree)
            rec.push("adjacency", first, _row(adj, u))
            _merge(component, _row(component, u), _row(component, v))
            _set(in_tree, u, True)
            _set(in_tree, v, True)
            rec.push("component", first + 1, component)
            rec.push("in_tree", first + 1, in_tree)
            rec.push("adjacency", first + 1, _row(adj, v))
        return 2 * (n - 1)
