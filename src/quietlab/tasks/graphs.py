"""Graph tasks: ``bfs``, ``dfs``, ``shortest_path``, ``topological_sort`` and ``mst`` (Kruskal).

Graphs
------
Nodes are the first ``n_nodes`` letters; node i is the i-th letter (A = 0). Every example's graph is
connected and is drawn, for the whole batch at once, as

1. a spanning tree drawn uniformly from all labelled trees on the n nodes (a random Prüfer sequence),
   so no letter is special: roots, leaves and long paths fall on any letter;
2. ``k`` extra edges: a uniformly random k-subset of the node pairs not in the tree, with ``k``
   uniform on ``0 .. max_extra`` and ``max_extra = density * (C(n, 2) - (n - 1))`` rounded half up.

So ``density`` is the largest fraction of the non-tree pairs that a graph can have (on average it
has half of that); the number of edges is uniform on ``n - 1 .. max_edges = n - 1 + max_extra``, and
``max_edges`` sets ``seq_len``. At the paper size (11 nodes) the default density 0.3 gives 10..24
edges, 17 on average; density 0 gives trees only, density 1 reaches the complete graph.

bfs, dfs: the source is uniform over the nodes. shortest_path: the source is uniform, the target
uniform over the other nodes. topological_sort: every edge points along one uniformly random order of
the nodes, so the graph is a DAG whose underlying undirected graph is the connected graph above.
mst: every edge gets a weight uniform on 1..9.

Prompts (canonical, so that a prompt string and an inputs dict determine each other)
-----------------------------------------------------------------------------------
Undirected edges are written smaller letter first (``AC``, never ``CA``) and listed in lexicographic
order of that pair (AB, AC, ..., AK, BC, ...). Directed edges (topological_sort) are written tail
then head and listed in lexicographic order of (tail, head): ``AB,CA,CB``. mst edges are the
undirected pairs in that order, each followed by its weight digit: ``AB3,AC1,BC2``. Edges are
separated by ``,``; bfs/dfs start with ``source:``, shortest_path with ``source target:``.

Inputs (``_draw``/``_parse``): ``edges`` (n, C(n_nodes, 2)) uint8 over the node pairs u < v in
lexicographic order (0 = no edge; 1 = edge, except topological_sort: 1 = u→v, 2 = v→u, and mst:
the weight 1..9), plus ``source`` (and ``target``) node indices.

Feature positions
-----------------
``e`` is the position of ``=``. *Answer token r* is position ``e + 1 + r``: it holds the r-th output
letter; the model reads it there and predicts answer token r + 1 (or the end ``.`` after the last).
State features are recorded at answer token r as the state *after* the algorithm has produced that
letter, i.e. exactly the state from which the next letter follows; the initial state (r = -1) is
recorded at ``e``. Per-node features have k = n_nodes with entry i for letter i. mst writes two
letters per tree edge; see its docstring.

Speed
-----
Each algorithm runs over the whole batch, one step per output letter, on (batch, n_nodes) arrays.
NumPy is slow on very short rows in a few places, and small helpers stand in there with the same
results: ``_row``/``_set`` (one flat gather/scatter instead of two-array indexing), ``_first``
(argmax of a bool row, eight flags to a 64-bit word), ``_node_bits`` (np.packbits of a short row),
``_prefix_count`` (cumsum along the nodes) and
``_Tokens`` (uint8 token rows, each edge written as one block); ``FeatureRecorder.push`` writes a
row's k labels as one block at that row's own position. ``tasks/reference/graphs.py`` is the plain
per-example specification of every label (the tests hold these tasks to it); benchmarks/generation.py
times the tasks against it.
"""

from __future__ import annotations

import functools

import numpy as np

from . import register
from .base import PAD, TOKEN_DTYPE, Batch, FeatureRecorder, Knob, Task

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_KNOBS = (
    Knob("n_nodes", 11, 3, 26, "number of nodes, named A, B, ... (the paper uses 11)"),
    Knob(
        "density",
        0.3,
        0.0,
        1.0,
        "largest fraction of the non-tree node pairs that become extra edges; the number of extra "
        "edges is uniform on 0..density*(C(n,2)-(n-1)), rounded half up",
        integer=False,
    ),
)


# --- drawing graphs, vectorised over the batch ---------------------------------------------------
def _pair_index(n: int) -> np.ndarray:
    """(n, n) matrix: the index of pair {u, v} among the pairs u < v in lexicographic order."""
    iu, ju = np.triu_indices(n, 1)
    pid = np.full((n, n), -1, dtype=np.intp)
    pid[iu, ju] = pid[ju, iu] = np.arange(len(iu))
    return pid


def random_trees(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random labelled trees on n nodes, one per row, as a (size, C(n,2)) bool pair mask.

    Decodes a random Prüfer sequence: each step joins the smallest leaf to the next code entry. The
    leaves of every row are kept as bits, so that the smallest is its lowest set bit.
    """
    pid = _pair_index(n).reshape(-1)
    code = rng.integers(0, n, size=(n - 2, size))  # code[j]: entry j of every row's sequence
    at_code = code + np.arange(size) * n  # flat index of node code[j] of each row
    degree = np.ones(size * n, dtype=np.int8)  # 1 + appearances left in the code
    for j in range(n - 2):
        degree[at_code[j]] += 1
    leaves = _node_bits(degree.reshape(size, n) == 1)
    one = leaves.dtype.type(1)
    tree = np.zeros((size, n * (n - 1) // 2), dtype=bool)
    pair_base = np.arange(size) * tree.shape[1]
    for j in range(n - 2):
        lowest = leaves & (~leaves + one)
        leaves ^= lowest
        tree.reshape(-1)[pair_base + pid[_bit_index(lowest) * n + code[j]]] = True
        left = degree[at_code[j]] - np.int8(1)
        degree[at_code[j]] = left
        leaves |= (left == 1).astype(leaves.dtype) << code[j].astype(leaves.dtype)
    lowest = leaves & (~leaves + one)  # exactly two leaves are left; join them
    last = _bit_index(lowest), _bit_index(leaves ^ lowest)
    tree.reshape(-1)[pair_base + pid[last[0] * n + last[1]]] = True
    return tree


def random_connected_graphs(n: int, max_extra: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random spanning tree plus k ~ U{0..max_extra} random other pairs: a (size, C(n,2)) bool mask."""
    tree = random_trees(n, size, rng)
    k = rng.integers(0, max_extra + 1, size=size)
    keys = rng.random(tree.shape)
    keys += tree  # tree pairs get keys >= 1: never picked, as k <= number of non-tree pairs
    threshold = np.sort(keys, axis=1)[np.arange(size), k]
    return tree | (keys < threshold[:, None])


def _other_node(source: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return (source + rng.integers(1, n, size=len(source))) % n


# --- vectorised helpers -------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _row_starts(size: int, m: int) -> np.ndarray:
    """``arange(size) * m``: where each row starts in a flattened (size, m) array."""
    starts = np.arange(size) * m
    starts.flags.writeable = False
    return starts


def _row(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[b, idx[b]]`` for every row b, as one flat gather (faster than two-array indexing)."""
    size, m = a.shape[:2]
    return np.take(a.reshape(size * m, *a.shape[2:]), _row_starts(size, m) + idx, axis=0)


def _set(a: np.ndarray, idx: np.ndarray, value, rows: np.ndarray | None = None) -> None:
    """``a[b, idx[b]] = value`` for every row b (or the given rows) of a C-contiguous array."""
    starts = _row_starts(*a.shape[:2]) if rows is None else rows * a.shape[1]
    a.reshape(-1)[starts + idx] = value


def _first(mask: np.ndarray) -> np.ndarray:
    """``np.argmax(mask, axis=1)`` for a bool (N, n <= 32) array: each row's first True (0 if none).

    Reads 8 flags at a time as one 64-bit word and counts the zero bytes below its lowest set byte;
    several times faster than argmax on short rows.
    """
    size, n = mask.shape
    if not hasattr(np, "bitwise_count") or n > 32:  # numpy < 2.0
        return np.argmax(mask, axis=1)
    words = 1 if n <= 8 else 2 if n <= 16 else 4
    padded = np.zeros((size, 8 * words), dtype=np.uint8)
    padded[:, :n] = mask
    first = None
    for word in reversed(padded.view("<u8").T):
        lowest = word & (~word + np.uint64(1))  # the lowest set bit (0 if none)
        index = np.bitwise_count(lowest - np.uint64(1)) >> np.uint8(3)  # bytes below it (8 if none)
        first = index if first is None else index + (index >> np.uint8(3)) * first
    return (first & np.uint8(8 * words - 1)).astype(np.intp)


_BYTES_TO_BITS = np.uint64(0x0102040810204080)  # times 8 bytes of 0/1: byte i's flag lands on bit 56 + i


def _node_bits(mask: np.ndarray) -> np.ndarray:
    """(..., n <= 32) bool -> (...) unsigned ints with bit i set where ``mask[..., i]`` (np.packbits,
    several times faster on short rows: eight flags at a time by one multiplication)."""
    *shape, n = mask.shape
    rows = mask.reshape(-1, n)
    words = -(-n // 8)
    padded = np.zeros((len(rows), 8 * words), dtype=np.uint8)
    padded[:, :n] = rows
    bits = None
    for j, word in enumerate(padded.view("<u8").T):
        byte = ((word * _BYTES_TO_BITS) >> np.uint64(56)) << np.uint64(8 * j)
        bits = byte if bits is None else bits | byte
    dtype = np.uint8 if n <= 8 else np.uint16 if n <= 16 else np.uint32
    return bits.astype(dtype).reshape(shape)


def _bit_index(power: np.ndarray) -> np.ndarray:
    """The exponent of each power of two in an unsigned array, as intp."""
    if not hasattr(np, "bitwise_count"):  # numpy < 2.0
        return (np.frexp(power)[1] - 1).astype(np.intp)
    return np.bitwise_count(power - power.dtype.type(1)).astype(np.intp)


class _Tokens:
    """Token rows under construction, as uint8 with each row's edge list aligned to whole blocks of
    ``stride`` bytes, so that one edge's tokens are written at once; ``array()`` gives int64 rows."""

    def __init__(self, size: int, seq_len: int, head: int, stride: int):
        self.seq_len, self.stride = seq_len, stride
        self.offset = (-head) % stride  # buffer column of token 0: the edge list starts on a block
        self.width = -(-(self.offset + seq_len) // stride) * stride
        self.first_block = (self.offset + head) // stride
        self.buf = np.zeros((size, self.width), dtype=np.uint8)
        self.rows = np.arange(size)

    def put(self, pos, value, rows: np.ndarray | None = None) -> None:
        """Token ``pos`` (int or per row) of every row (or of ``rows``) becomes ``value``."""
        rows = self.rows if rows is None else rows
        self.buf.reshape(-1)[rows * self.width + self.offset + pos] = value

    def put_blocks(self, rows: np.ndarray, j: np.ndarray, blocks: np.ndarray) -> None:
        """Edge ``j`` of row ``rows`` (arrays of one entry per edge) gets its token block."""
        flat = self.buf.reshape(-1).view(blocks.dtype)
        flat[rows * (self.width // self.stride) + self.first_block + j] = blocks

    def array(self) -> np.ndarray:
        return self.buf[:, self.offset : self.offset + self.seq_len].astype(TOKEN_DTYPE)


# --- the shared frame: knobs, vocabulary, prompts, parsing ----------------------------------------
class GraphTask(Task):
    """Frame shared by the graph tasks: knobs, vocabulary, drawing, the prompt, parsing.

    A subclass sets ``endpoints``/``directed``/``weighted`` and implements ``_solve(inputs, adj,
    tokens, eq, rec)``: run the algorithm over the batch, write the answer letters after ``eq`` (the
    position of ``=`` in each row) and push the features, returning the answer length.
    """

    knobs = _KNOBS
    endpoints: tuple[str, ...] = ()  # input keys written before ':' (source, target)
    directed = False
    weighted = False

    # ---- sizes and vocabulary
    def _setup(self) -> None:
        n = self.n_nodes
        self.n_pairs = n * (n - 1) // 2
        self.max_extra = int(self.density * (self.n_pairs - (n - 1)) + 0.5 + 1e-9)  # rounded half up
        self.max_edges = n - 1 + self.max_extra
        self._iu, self._ju = np.triu_indices(n, 1)
        self._pid = _pair_index(n)
        lookup = self._pid + self.n_pairs * (np.arange(n)[:, None] > np.arange(n))  # u > v: the second half
        lookup[np.diag_indices(n)] = 2 * self.n_pairs
        self._adjacency_lookup = lookup.reshape(-1)
        punct = ["=", ":", ","] if self.endpoints else ["=", ","]
        digits = [str(w) for w in range(1, 10)] if self.weighted else []
        self.vocab = [PAD, *punct, *LETTERS[:n], *digits]
        self.tok = {ch: i for i, ch in enumerate(self.vocab)}
        self.letter0 = self.tok["A"]
        self.stride = 4 if self.weighted else 3  # letters, (weight), comma
        self.head = len(self.endpoints) + 1 if self.endpoints else 0
        # the tokens of one edge, by edge code (see _write_prompt)
        if self.directed:
            tails, heads = np.divmod(np.arange(n * n), n)
            blocks = [self.letter0 + tails, self.letter0 + heads]
        elif self.weighted:
            pair, w = np.divmod(np.arange(10 * self.n_pairs), 10)
            blocks = [self.letter0 + self._iu[pair], self.letter0 + self._ju[pair], self.tok["1"] - 1 + w]
        else:
            blocks = [self.letter0 + self._iu, self.letter0 + self._ju]
        blocks.append(np.full_like(blocks[0], self.tok[","]))
        blocks = np.ascontiguousarray(np.stack(blocks, axis=1).astype(np.uint8))
        # one item per edge; four bytes (mst) as a plain integer, whose gathers and scatters are faster
        self._edge_blocks = blocks.view(np.uint32 if self.stride == 4 else f"V{self.stride}")[:, 0]
        self.seq_len = self.head + self.stride * self.max_edges + self.max_answer + 1

    @property
    def max_answer(self) -> int:
        return self.n_nodes

    # ---- drawing
    def _graphs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n connected graphs as edge codes (n, pairs)."""
        return random_connected_graphs(self.n_nodes, self.max_extra, n, rng)

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs = {"edges": self._graphs(n, rng).astype(np.uint8)}
        if self.endpoints:
            inputs["source"] = rng.integers(0, self.n_nodes, size=n).astype(np.int64)
        if "target" in self.endpoints:
            inputs["target"] = _other_node(inputs["source"], self.n_nodes, rng)
        return inputs

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The edge codes packed into 64-bit words (1, 2 or 4 bits a pair), then the endpoints."""
        edges = inputs["edges"]
        size = len(edges)
        bits = 4 if self.weighted else 2 if self.directed else 1
        per = 8 // bits
        n_bytes = -(-self.n_pairs // per)
        padded = np.zeros((size, ((n_bytes + 7) // 8) * 8 * per), dtype=np.uint8)
        padded[:, : self.n_pairs] = edges
        packed = padded[:, 0::per].copy()
        for s in range(1, per):
            packed |= padded[:, s::per] << np.uint8(s * bits)
        words = packed.view("<u8").astype(np.int64)
        ends = [np.asarray(inputs[k], dtype=np.int64).reshape(size, 1) for k in self.endpoints]
        return np.concatenate([words, *ends], axis=1)

    # ---- the graph as matrices
    def adjacency(self, edges: np.ndarray) -> np.ndarray:
        """(n, N, N) bool: ``adj[b, u, v]`` for an edge u-v (topological_sort: u→v)."""
        size, n, pairs = len(edges), self.n_nodes, self.n_pairs
        # one gather: entry (u, v) reads column lookup[u * n + v] of [u→v per pair, v→u per pair, False]
        table = np.zeros((size, 2 * pairs + 1), dtype=bool)
        if self.directed:
            table[:, :pairs], table[:, pairs : 2 * pairs] = edges == 1, edges == 2
        else:
            table[:, :pairs] = table[:, pairs : 2 * pairs] = edges != 0
        return np.take(table, self._adjacency_lookup, axis=1).reshape(size, n, n)

    # ---- building a batch
    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        edges = inputs["edges"]
        size = len(edges)
        tokens = _Tokens(size, self.seq_len, self.head, self.stride)
        adj = self.adjacency(edges)
        eq = self._write_prompt(tokens, inputs, adj)
        rec = FeatureRecorder(size, self.seq_len)
        answer_len = self._solve(inputs, adj, tokens, eq, rec)
        # True where the next token is an answer token (positions eq .. eq+L-1) or the end (eq+L):
        # where 0 <= position - eq <= L, one unsigned comparison (negative offsets wrap to large ones)
        offset = np.arange(self.seq_len, dtype=np.int16) - eq.astype(np.int16)[:, None]
        loss_mask = offset.view(np.uint16) <= np.asarray(answer_len, dtype=np.uint16).reshape(-1, 1)
        return Batch(tokens.array(), loss_mask, rec.features())

    def _write_prompt(self, tokens: "_Tokens", inputs: dict[str, np.ndarray], adj: np.ndarray) -> np.ndarray:
        """Writes ``[endpoints:]edges=`` into ``tokens``; returns the position of ``=`` per row."""
        size, n = len(adj), self.n_nodes
        for col, key in enumerate(self.endpoints):
            tokens.put(col, self.letter0 + inputs[key])
        if self.endpoints:
            tokens.put(len(self.endpoints), self.tok[":"])
        edges = inputs["edges"]
        # every edge is one block of tokens (letters, weight, comma), looked up by its code
        if self.directed:  # codes tail * n + head: (tail, head) in lexicographic order
            present, codes = adj.reshape(size, n * n), n * n
        else:  # codes = pair indices: pairs u < v in lexicographic order
            present, codes = edges != 0, self.n_pairs
        found = np.flatnonzero(present)
        b = found // codes
        code = found - b * codes
        if self.weighted:
            code = code * 10 + edges.reshape(-1)[found]
        m = np.bincount(b, minlength=size)
        j = np.arange(len(found)) - (np.cumsum(m) - m)[b]  # index of the edge within its row
        tokens.put_blocks(b, j, self._edge_blocks[code])
        eq = self.head + self.stride * m - 1  # on the last edge's comma
        tokens.put(eq, self.tok["="])
        return eq

    def _declare(self, rec: FeatureRecorder, names: tuple[str, ...], kind: str, k: int = 1, n_classes: int = 2) -> None:
        """Features of one kind and k, kept side by side: they are pushed at the same scattered positions."""
        rec.declare_together({name: self.feature_docs[name] for name in names}, kind, k=k, n_classes=n_classes)

    def _solve(self, inputs, adj, tokens, eq, rec) -> np.ndarray | int:
        """Runs the algorithm: writes the answer tokens after ``eq``, pushes the features, returns
        the answer length (per row or one int)."""
        raise NotImplementedError

    # ---- parsing a prompt back into inputs
    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        n, name = self.n_nodes, self.name

        def node(ch: str) -> int:
            i = ord(ch) - ord("A") if len(ch) == 1 else -1
            if not 0 <= i < n:
                raise ValueError(f"{name}: {ch!r} is not a node; nodes are A..{LETTERS[n - 1]} (n_nodes={n})")
            return i

        inputs: dict[str, np.ndarray] = {}
        body = prompt
        if self.endpoints:
            k = len(self.endpoints)
            if len(prompt) < k + 1 or prompt[k] != ":":
                raise ValueError(f"{name}: a prompt starts with {k} node letter(s) and ':', got {prompt[:k + 1]!r}")
            for key, ch in zip(self.endpoints, prompt[:k]):
                inputs[key] = np.array([node(ch)], dtype=np.int64)
            if k == 2 and inputs["source"][0] == inputs["target"][0]:
                raise ValueError(f"{name}: source and target must differ")
            body = prompt[k + 1 :]
        edges = np.zeros(self.n_pairs, dtype=np.uint8)
        width = self.stride - 1
        items = body.split(",") if body else []
        for item in items:
            if len(item) != width:
                what = "two letters and a weight" if self.weighted else "two letters"
                raise ValueError(f"{name}: edge {item!r} should be {what}")
            u, v = node(item[0]), node(item[1])
            if u == v:
                raise ValueError(f"{name}: edge {item!r} is a self-loop")
            p = self._pid[u, v]
            if edges[p]:
                raise ValueError(f"{name}: edge {item!r} joins two nodes already joined by an edge")
            if self.weighted:
                if item[2] not in "123456789":
                    raise ValueError(f"{name}: weight in {item!r} must be a digit 1..9")
                edges[p] = int(item[2])
            else:
                edges[p] = 1 if (not self.directed or u < v) else 2
        if len(items) > self.max_edges:
            raise ValueError(
                f"{name}: {len(items)} edges, but n_nodes={n}, density={self.density:g} allow at most {self.max_edges}"
            )
        inputs["edges"] = self._checked_graph(name, edges)
        return inputs

    def _checked_graph(self, name: str, edges: np.ndarray) -> np.ndarray:
        """A parsed graph's edge codes as a batch of one, after checking it is connected (and acyclic
        when directed); a ValueError naming ``name`` otherwise."""
        n = self.n_nodes
        if not _connected(n, self._iu[edges > 0], self._ju[edges > 0]):
            raise ValueError(f"{name}: the graph must be connected over all nodes A..{LETTERS[n - 1]}")
        if self.directed and not _acyclic(n, edges, self._iu, self._ju):
            raise ValueError(f"{name}: the directed graph has a cycle")
        return edges[None]


def _connected(n: int, us: np.ndarray, vs: np.ndarray) -> bool:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in zip(us.tolist(), vs.tolist()):
        parent[find(u)] = find(v)
    return len({find(x) for x in range(n)}) == 1


def _acyclic(n: int, edges: np.ndarray, iu: np.ndarray, ju: np.ndarray) -> bool:
    out: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for p in np.nonzero(edges)[0].tolist():
        u, v = (int(iu[p]), int(ju[p])) if edges[p] == 1 else (int(ju[p]), int(iu[p]))
        out[u].append(v)
        indeg[v] += 1
    ready = [x for x in range(n) if indeg[x] == 0]
    seen = 0
    while ready:
        x = ready.pop()
        seen += 1
        for y in out[x]:
            indeg[y] -= 1
            if indeg[y] == 0:
                ready.append(y)
    return seen == n


def _prefix_count(x: np.ndarray) -> np.ndarray:
    """(n, N) int8: how many of ``x[b, :u + 1]`` are True (np.cumsum along the short node axis,
    done column by column, which is several times faster)."""
    out = x.astype(np.int8)
    for u in range(1, x.shape[1]):
        out[:, u] += out[:, u - 1]
    return out


def _merge(component: np.ndarray, cu: np.ndarray, cv: np.ndarray, where: np.ndarray | None = None) -> None:
    """Union, in place: in each row (where ``where``), components ``cu`` and ``cv`` of a (rows, n) array
    of component names become one, named by the smaller (its smallest letter)."""
    gap = abs(cu - cv) if where is None else where * abs(cu - cv)
    component -= (component == np.maximum(cu, cv)[:, None]) * gap[:, None]


def _bfs_distances(neighbour_bits: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(n, N) int8 hop distance of every node from ``source`` (graphs connected), one BFS level at a
    time: a node is reached at level d when one of its neighbours is in level d-1's frontier.

    ``neighbour_bits``: ``_node_bits(adj)``, each node's neighbours as bits. As many passes as the
    deepest level in the batch, a few small operations each."""
    size, n = neighbour_bits.shape
    unreached = np.arange(n, dtype=np.int8) != source[:, None].astype(np.int8)
    frontier = neighbour_bits.dtype.type(1) << source.astype(neighbour_bits.dtype)
    dist = unreached.astype(np.int8)  # +1 for every level a node is still unreached after
    for _ in range(n - 1):
        reached = (neighbour_bits & frontier[:, None]) != 0
        reached &= unreached
        unreached ^= reached
        np.add(dist, unreached, out=dist, casting="unsafe")
        frontier = _node_bits(reached)
        if not frontier.any():
            break
    return dist


# --- the tasks ----------------------------------------------------------------------------------
@register
class BFS(GraphTask):
    """Breadth-first search from the source, neighbours queued in alphabetical order.

    ``C:AB,AC,BD=CABD``. Features (per-node ones have k = n_nodes, entry i = letter i):

    - ``queue`` (multilabel): FIFO-queue membership after expanding the node at answer token r
      (popped, its undiscovered neighbours appended); at ``=``: {source}. Its head is the next letter.
    - ``visited`` (multilabel): nodes output so far, this one included; at ``=``: none.
      (queue ∪ visited is the textbook "discovered" set.)
    - ``adjacency`` (multilabel): neighbours of the node at answer token r (answer tokens only).
    - ``depth`` (categorical, n_nodes classes): BFS level (hop distance from the source) of the node
      at answer token r.
    - ``parent`` (categorical, n_nodes classes): the node whose expansion queued the node at answer
      token r (the source's parent is the source).
    """

    name = "bfs"
    endpoints = ("source",)
    description = "breadth-first visit order from the source (source:edges=order), neighbours in letter order"
    feature_docs = {
        "queue": "multilabel: FIFO-queue membership after expanding the node at answer token r; at '=': {source}",
        "visited": "multilabel: nodes output so far (this one included) at answer token r; at '=': none",
        "adjacency": "multilabel: neighbours of the node at answer token r",
        "depth": "categorical: BFS level (distance from the source) of the node at answer token r",
        "parent": "categorical: node whose expansion queued the node at answer token r (source: itself)",
    }

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        self._declare(rec, ("queue", "visited", "adjacency"), "multilabel", k=n)
        self._declare(rec, ("depth", "parent"), "categorical", n_classes=n)
        rec.share_mask("queue", "visited")
        rec.share_mask("adjacency", "depth", "parent")

        source = inputs["source"]
        order = np.full((size, n), n, dtype=np.int8)  # each node's place in the FIFO queue; n = undiscovered
        _set(order, source, 0)
        tail = np.ones(size, dtype=np.int8)
        depth = np.zeros((size, n), dtype=np.int8)
        parent = np.zeros((size, n), dtype=np.int8)
        _set(parent, source, source)
        rec.push("queue", eq, order == 0)
        rec.push("visited", eq, np.zeros((size, n), dtype=bool))
        for r in range(n):
            pos = eq + 1 + r
            v = _first(order == r)  # pop the head: connected, so the r-th pop is the r-th queued
            tokens.put(pos, self.letter0 + v)
            nbrs = _row(adj, v)
            new = nbrs & (order == n)  # undiscovered neighbours join the queue, in letter order
            count = _prefix_count(new)
            order -= new * (n + 1 - tail[:, None] - count)  # places tail, tail+1, ...
            tail += count[:, -1]
            depth_v, parent_v = _row(depth, v), _row(parent, v)
            depth += new * (depth_v + np.int8(1))[:, None]
            parent += new * v.astype(np.int8)[:, None]
            rec.push("queue", pos, (order > r) & (order < n))
            rec.push("visited", pos, order <= r)
            rec.push("adjacency", pos, nbrs)
            rec.push("depth", pos, depth_v)
            rec.push("parent", pos, parent_v)
        return n


@register
class DFS(GraphTask):
    """Depth-first search from the source in pre-order, neighbours tried in alphabetical order.

    ``C:AB,AC,BD=CABD``. The stack is the recursion stack: the path from the source to the node
    being expanded. Features (per-node ones have k = n_nodes, entry i = letter i):

    - ``stack`` (multilabel): recursion-stack membership after visiting the node at answer token r
      and returning from every call that has no unvisited neighbour left; its top is the parent of
      the next letter (the next letter is the top's smallest unvisited neighbour). Empty at ``=``
      and after the last node.
    - ``visited`` (multilabel): nodes output so far, this one included; at ``=``: none.
    - ``adjacency`` (multilabel): neighbours of the node at answer token r.
    - ``depth`` (categorical, n_nodes classes): depth in the DFS tree (stack height below it) of the
      node at answer token r.
    - ``parent`` (categorical, n_nodes classes): DFS-tree parent of the node at answer token r (the
      source's parent is the source).
    """

    name = "dfs"
    endpoints = ("source",)
    description = "depth-first pre-order from the source (source:edges=order), neighbours in letter order"
    feature_docs = {
        "stack": "multilabel: recursion stack after visiting the node at answer token r and backtracking; at '=': none",
        "visited": "multilabel: nodes output so far (this one included) at answer token r; at '=': none",
        "adjacency": "multilabel: neighbours of the node at answer token r",
        "depth": "categorical: DFS-tree depth of the node at answer token r",
        "parent": "categorical: DFS-tree parent of the node at answer token r (source: itself)",
    }

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        self._declare(rec, ("stack", "visited", "adjacency"), "multilabel", k=n)
        self._declare(rec, ("depth", "parent"), "categorical", n_classes=n)
        rec.share_mask("stack", "visited")
        rec.share_mask("adjacency", "depth", "parent")

        visited = np.zeros((size, n), dtype=bool)
        on_stack = np.zeros((size, n), dtype=bool)
        stack_pos = np.zeros((size, n), dtype=np.int8)  # slot on the stack = depth in the DFS tree
        height = np.zeros(size, dtype=np.int8)
        unvisited_nbrs = adj.sum(axis=2, dtype=np.int8)
        v = parent = inputs["source"]
        rec.push("stack", eq, on_stack)
        rec.push("visited", eq, visited)
        for r in range(n):
            pos = eq + 1 + r
            tokens.put(pos, self.letter0 + v)
            # visit v: call dfs(v), i.e. push it on the stack
            _set(visited, v, True)
            _set(on_stack, v, True)
            _set(stack_pos, v, height)  # 0 until now: v is visited once
            depth = height
            nbrs = _row(adj, v)
            unvisited_nbrs -= nbrs  # v's neighbours each lose one unvisited neighbour
            # backtrack: return from the calls on top of the stack that have nothing left to visit
            live = (on_stack & (unvisited_nbrs > 0)) * (stack_pos + np.int8(1))  # slot + 1, 0 if done
            top = np.argmax(live, axis=1)
            height = _row(live, top)  # the deepest live call is the new top (0: stack empty)
            on_stack &= stack_pos < height[:, None]
            rec.push("stack", pos, on_stack)
            rec.push("visited", pos, visited)
            rec.push("adjacency", pos, nbrs)
            rec.push("depth", pos, depth)
            rec.push("parent", pos, parent)
            if r < n - 1:  # descend into the top's smallest unvisited neighbour
                v, parent = _first(_row(adj, top) & ~visited), top
        return n


@register
class ShortestPath(GraphTask):
    """Fewest-edge path from source to target; ties go to the lexicographically smallest path.

    ``CD:AB,AC,BD=CABD``. Solved by one BFS from each end: the path starts at the source and steps
    each time to the smallest neighbour one hop closer to the target. The answer has
    ``dist(source, target) + 1`` letters. Features (k = n_nodes, entry i = letter i):

    - ``distance`` (categorical, n_nodes classes): every node's hop distance from the source;
      at ``=`` and at every answer token.
    - ``distance_to_target`` (categorical, n_nodes classes): every node's hop distance from the
      target; at ``=`` and at every answer token.
    - ``visited`` (multilabel): path nodes output so far, this one included; at ``=``: none.
    - ``adjacency`` (multilabel): neighbours of the node at answer token r.
    - ``candidates`` (multilabel): neighbours of the node at answer token r one hop closer to the
      target; the next letter is the smallest of them (empty at the target).
    """

    name = "shortest_path"
    endpoints = ("source", "target")
    description = "fewest-edge path (source target:edges=path), ties to the lexicographically smallest path"
    feature_docs = {
        "distance": "categorical: per node, hop distance from the source; at '=' and every answer token",
        "distance_to_target": "categorical: per node, hop distance from the target; at '=' and every answer token",
        "visited": "multilabel: path nodes output so far (this one included) at answer token r; at '=': none",
        "adjacency": "multilabel: neighbours of the node at answer token r",
        "candidates": "multilabel: neighbours of the node at answer token r one hop closer to the target",
    }

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        self._declare(rec, ("distance", "distance_to_target"), "categorical", k=n, n_classes=n)
        self._declare(rec, ("visited", "adjacency", "candidates"), "multilabel", k=n)
        rec.share_mask("distance", "distance_to_target", "visited")
        rec.share_mask("adjacency", "candidates")

        source, target = inputs["source"], inputs["target"]
        neighbour_bits = _node_bits(adj)
        dist = _bfs_distances(neighbour_bits, source)
        to_target = _bfs_distances(neighbour_bits, target)
        length = _row(dist, target).astype(np.int64) + 1  # letters in the answer
        visited = np.zeros((size, n), dtype=bool)
        static = (("distance", dist), ("distance_to_target", to_target))
        for feat, value in static:
            rec.push(feat, eq, value)
        rec.push("visited", eq, visited)
        # walk from the source, each step to the smallest neighbour one hop closer to the target,
        # keeping only the rows whose path is still going (most paths are short)
        walking, v = np.arange(size), source
        for r in range(int(length.max(initial=0))):
            if r >= 2:  # source != target: every path has two letters or more
                going = r < length[walking]
                walking, v = walking[going], v[going]
            pos = eq[walking] + 1 + r
            tokens.put(pos, self.letter0 + v, rows=walking)
            _set(visited, v, True, rows=walking)
            nbrs = np.take(adj.reshape(size * n, n), walking * n + v, axis=0)
            hops = np.take(to_target, walking, axis=0)
            closer = nbrs & (hops == (np.take(to_target.reshape(-1), walking * n + v) - np.int8(1))[:, None])
            for feat, value in static:
                rec.push(feat, pos, np.take(value, walking, axis=0), rows=walking)
            rec.push("visited", pos, np.take(visited, walking, axis=0), rows=walking)
            rec.push("adjacency", pos, nbrs, rows=walking)
            rec.push("candidates", pos, closer, rows=walking)
            v = _first(closer)
        return length


@register
class TopologicalSort(GraphTask):
    """Kahn's algorithm on a DAG, always taking the smallest ready letter.

    ``AB,CA,CB=CAB`` (edges u→v written ``uv``). Features (k = n_nodes, entry i = letter i):

    - ``ready`` (multilabel): nodes not yet output with no remaining in-edges, after removing the
      node at answer token r; at ``=``: the sources. The next letter is the smallest of them.
    - ``remaining_in_degree`` (categorical, n_nodes classes): per node, in-edges from nodes not yet
      output (0 for output nodes), after removing the node at answer token r; at ``=``: in-degrees.
    - ``visited`` (multilabel): nodes output so far, this one included; at ``=``: none.
    - ``adjacency`` (multilabel): out-neighbours of the node at answer token r.
    """

    name = "topological_sort"
    directed = True
    description = "topological order of a DAG (edges=order) by Kahn's algorithm, smallest ready letter first"
    feature_docs = {
        "ready": "multilabel: nodes not output with no in-edges left, after answer token r; at '=': the sources",
        "remaining_in_degree": "categorical: per node, in-edges from nodes not yet output, after answer token r",
        "visited": "multilabel: nodes output so far (this one included) at answer token r; at '=': none",
        "adjacency": "multilabel: out-neighbours of the node at answer token r",
    }

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        edges = random_connected_graphs(self.n_nodes, self.max_extra, n, rng)
        # a random order of the nodes, (rank, letter); every edge points along it
        rank = rng.random((n, self.n_nodes), dtype=np.float32)
        backward = rank[:, self._iu] > rank[:, self._ju]
        return {"edges": edges.astype(np.uint8) * (np.uint8(1) + backward)}

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        self._declare(rec, ("ready", "visited", "adjacency"), "multilabel", k=n)
        self._declare(rec, ("remaining_in_degree",), "categorical", k=n, n_classes=n)
        rec.share_mask("ready", "remaining_in_degree", "visited")

        in_degree = adj.sum(axis=1, dtype=np.int8)
        done = np.zeros((size, n), dtype=bool)
        ready = in_degree == 0
        rec.push("ready", eq, ready)
        rec.push("remaining_in_degree", eq, in_degree)
        rec.push("visited", eq, done)
        for r in range(n):
            pos = eq + 1 + r
            v = _first(ready)  # the smallest ready letter
            tokens.put(pos, self.letter0 + v)
            _set(done, v, True)
            out = _row(adj, v)
            in_degree -= out
            ready = (in_degree == 0) & ~done
            rec.push("ready", pos, ready)
            rec.push("remaining_in_degree", pos, in_degree)
            rec.push("visited", pos, done)
            rec.push("adjacency", pos, out)
        return n


@register
class MST(GraphTask):
    """Kruskal's minimum spanning tree: edges by (weight, letters), kept when they join two components.

    ``AB3,AC1,BC2=ACBC``: the answer lists the n-1 tree edges in the order Kruskal accepts them,
    each as two letters, smaller first. Tree edge j occupies answer tokens 2j (its first letter) and
    2j+1 (its second). Every state feature at an answer token is the state after all tree edges
    completely written up to that token: at token 2j the forest of edges 0..j-1, at token 2j+1 the
    forest of edges 0..j (at ``=``: no edges). Features (k = n_nodes, entry i = letter i):

    - ``component`` (categorical, n_nodes classes): the union-find partition, each node labelled by
      the smallest letter of its component (at ``=``: each node itself).
    - ``in_tree`` (multilabel): nodes touched by a tree edge so far.
    - ``adjacency`` (multilabel): neighbours of the node at the answer token (both letters).
    - ``edge_weight`` (categorical, 10 classes): the weight of the tree edge being written, at both
      of its answer tokens.
    """

    name = "mst"
    weighted = True
    description = "Kruskal minimum spanning tree (weighted edges=tree edges), ordered by weight then letters"
    feature_docs = {
        "component": "categorical: per node, smallest letter of its component in the forest completed so far",
        "in_tree": "multilabel: nodes touched by a tree edge completed so far",
        "adjacency": "multilabel: neighbours of the node at the answer token",
        "edge_weight": "categorical: weight of the tree edge being written, at both of its answer tokens",
    }

    @property
    def max_answer(self) -> int:
        return 2 * (self.n_nodes - 1)

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        edges = random_connected_graphs(self.n_nodes, self.max_extra, n, rng)
        weights = rng.integers(1, 10, size=edges.shape, dtype=np.uint8)
        return {"edges": weights * edges.astype(np.uint8)}

    def _kruskal(self, by_weight: np.ndarray, size: int) -> np.ndarray:
        """(size, n - 1) int16: the numbers (weight * n_pairs + pair) of each row's tree edges in the
        order Kruskal keeps them, from ``by_weight`` (rank, row), each row's edge numbers in order."""
        n, n_pairs = self.n_nodes, np.int16(self.n_pairs)
        pair = by_weight % n_pairs
        starts = _row_starts(size, n).astype(np.int32)  # flat index of each row's node u: starts + u
        at_u = np.take(self._iu.astype(np.int32), pair) + starts
        at_v = np.take(self._ju.astype(np.int32), pair) + starts
        component = np.repeat(np.arange(n, dtype=np.int8)[None], size, axis=0)  # smallest letter of each's
        flat = component.reshape(-1)
        taken = np.zeros(by_weight.shape, dtype=bool)  # (rank, row): the edge joins two components
        n_tree = np.zeros(size, dtype=np.int8)
        for r, number in enumerate(by_weight):
            cu, cv = np.take(flat, at_u[r]), np.take(flat, at_v[r])
            take = np.not_equal(cu, cv, out=taken[r])
            take &= number < 10 * n_pairs  # not a missing pair
            _merge(component, cu, cv, take)
            n_tree += take
            if n_tree.min(initial=n - 1) == n - 1:
                break
        # every row keeps exactly n - 1 edges: its kept numbers, in rank order, row after row
        return by_weight.T[taken.T].reshape(size, n - 1)

    def _solve(self, inputs, adj, tokens, eq, rec):
        n, size = self.n_nodes, len(adj)
        self._declare(rec, ("component",), "categorical", k=n, n_classes=n)
        self._declare(rec, ("in_tree", "adjacency"), "multilabel", k=n)
        self._declare(rec, ("edge_weight",), "categorical", n_classes=10)
        rec.share_mask("component", "in_tree")
        rec.share_mask("adjacency", "edge_weight")

        edges = inputs["edges"]
        letters = np.arange(n, dtype=np.int8)
        # Kruskal's order: by weight, then by the pair's letters; as one sortable number per edge,
        # weight * n_pairs + pair index (non-edges weigh 10: last)
        n_pairs = np.int16(self.n_pairs)
        weight = edges.astype(np.int16) + (edges == 0) * np.int16(10)
        by_weight = np.sort(weight * n_pairs + np.arange(self.n_pairs, dtype=np.int16), axis=1)
        by_weight = np.ascontiguousarray(by_weight[:, : self.max_edges].T)  # (rank, row)
        # 1. Kruskal: scan the edges in that order, keeping those that join two components
        tree = self._kruskal(by_weight, size)
        # 2. write the tree edges in that order, growing the forest again to record it edge by edge
        component = np.repeat(letters[None], size, axis=0)
        in_tree = np.zeros((size, n), dtype=bool)
        rec.push("component", eq, component)
        rec.push("in_tree", eq, in_tree)
        for j in range(n - 1):
            w, pair = np.divmod(tree[:, j], n_pairs)
            u, v = self._iu[pair], self._ju[pair]
            first = eq + 1 + 2 * j
            tokens.put(first, self.letter0 + u)
            tokens.put(first + 1, self.letter0 + v)
            rec.push("component", first, component)
            rec.push("in_tree", first, in_tree)
            rec.push("adjacency", first, _row(adj, u))
            rec.push("edge_weight", first, w)
            _merge(component, _row(component, u), _row(component, v))
            _set(in_tree, u, True)
            _set(in_tree, v, True)
            rec.push("component", first + 1, component)
            rec.push("in_tree", first + 1, in_tree)
            rec.push("adjacency", first + 1, _row(adj, v))
            rec.push("edge_weight", first + 1, w)
        return 2 * (n - 1)


TASKS = {cls.name: cls for cls in (BFS, DFS, ShortestPath, TopologicalSort, MST)}
