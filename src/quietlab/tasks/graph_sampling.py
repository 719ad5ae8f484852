"""Uniformly random connected unlabelled graphs, randomly labelled, without a graph file; and an
isomorphism-invariant hash that keeps isomorphic graphs on one side of a split.

Dixon-Wilf (1983): an unlabelled graph is an orbit of S_n on labelled graphs, and by Burnside the
pairs (permutation g, graph fixed by g) are spread evenly over the orbits: every orbit has exactly
n! of them. So drawing g's cycle type with probability proportional to
(size of the class) x (graphs g fixes) = (n! / z_type) x 2^(orbits of g on node pairs), then a uniform
graph fixed by g (each pair orbit an edge or not, with probability 1/2), gives every unlabelled graph
the same probability. Rejecting the disconnected ones leaves a uniform connected unlabelled graph;
a uniform random relabelling of it is then uniform over that graph's labellings: the paper's
"uniform line of nauty's geng -c file, randomly relabelled" (PAPER_PROTOCOL §1).
"""

from __future__ import annotations

import functools
from collections import Counter
from fractions import Fraction
from math import factorial

import numpy as np

from .base import _splitmix
from .graphs import _node_bits, _pair_index


def partitions(n: int, largest: int | None = None):
    """Every partition of n, as tuples of parts in non-increasing order."""
    largest = n if largest is None else largest
    if n == 0:
        yield ()
        return
    for part in range(min(n, largest), 0, -1):
        for rest in partitions(n - part, part):
            yield (part,) + rest


@functools.lru_cache(maxsize=32)
def cycle_types(n: int) -> tuple[np.ndarray, list[np.ndarray], list[int], Fraction]:
    """For the cycle types of S_n: cumulative sampling probabilities (float64), for each type the
    orbit of every node pair under one permutation of that type (its cycles on consecutive nodes),
    the number of those orbits, and the number of unlabelled graphs on n nodes (exact)."""
    iu, ju = np.triu_indices(n, 1)
    pid = _pair_index(n)
    weights, orbit_maps, n_orbits = [], [], []
    for cycle_lengths in partitions(n):
        perm, first = np.empty(n, dtype=np.intp), 0
        for length in cycle_lengths:
            perm[first : first + length] = np.roll(np.arange(first, first + length), -1)
            first += length
        orbit = np.full(len(iu), -1, dtype=np.intp)
        count = 0
        for p in range(len(iu)):
            if orbit[p] >= 0:
                continue
            u, v = iu[p], ju[p]
            while orbit[pid[u, v]] < 0:
                orbit[pid[u, v]] = count
                u, v = perm[u], perm[v]
            count += 1
        centralizer = 1
        for length, times in Counter(cycle_lengths).items():
            centralizer *= length**times * factorial(times)
        weights.append(Fraction(2**count, centralizer))  # (class size / n!) x graphs fixed
        orbit_maps.append(orbit)
        n_orbits.append(count)
    total = sum(weights)
    cumulative = np.cumsum([float(w / total) for w in weights])
    cumulative[-1] = 1.0
    return cumulative, orbit_maps, n_orbits, total


def _neighbour_bits(edges: np.ndarray, n: int) -> np.ndarray:
    """(size, n) unsigned: bit v of entry u is set when u-v is an edge (edges: (size, C(n,2)) bool)."""
    pid = _pair_index(n)
    lookup = np.where(pid >= 0, pid, edges.shape[1]).reshape(-1)
    table = np.concatenate([edges.astype(bool), np.zeros((len(edges), 1), dtype=bool)], axis=1)
    return _node_bits(np.take(table, lookup, axis=1).reshape(len(edges), n, n))


def is_connected(edges: np.ndarray, n: int) -> np.ndarray:
    """(size,) bool: whether each graph (a (size, C(n,2)) pair mask) is connected."""
    nbrs = _neighbour_bits(edges, n)
    one = nbrs.dtype.type(1)
    reached = np.ones(len(edges), dtype=nbrs.dtype)  # node 0
    shifts = np.arange(n, dtype=nbrs.dtype)
    for _ in range(n - 1):
        inside = ((reached[:, None] >> shifts) & one).astype(bool)
        grown = reached | np.bitwise_or.reduce(np.where(inside, nbrs, 0), axis=1).astype(nbrs.dtype)
        if np.array_equal(grown, reached):
            break
        reached = grown
    return reached == nbrs.dtype.type((1 << n) - 1)


def uniform_unlabelled_graphs(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, C(n,2)) bool: graphs whose isomorphism classes are uniform over all graphs on n nodes
    (each fixed by a permutation of its drawn cycle type, so not yet randomly labelled)."""
    cumulative, orbit_maps, n_orbits, _ = cycle_types(n)
    kind = np.searchsorted(cumulative, rng.random(size), side="right")
    edges = np.empty((size, n * (n - 1) // 2), dtype=bool)
    for t in np.unique(kind):
        rows = np.flatnonzero(kind == t)
        on = rng.integers(0, 2, size=(len(rows), n_orbits[t]), dtype=np.uint8).astype(bool)
        edges[rows] = on[:, orbit_maps[t]]
    return edges


def relabel(edges: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each graph under its own uniformly random permutation of the node labels."""
    size = len(edges)
    perm = np.argsort(rng.random((size, n)), axis=1)
    iu, ju = np.triu_indices(n, 1)
    new_pair = _pair_index(n)[perm[:, iu], perm[:, ju]]
    out = np.zeros_like(edges)
    np.put_along_axis(out, new_pair, edges, axis=1)
    return out


def uniform_connected_graphs(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, C(n,2)) bool: uniform over connected unlabelled graphs on n nodes, randomly labelled."""
    chunks, have = [], 0
    while have < size:
        draw = uniform_unlabelled_graphs(n, int((size - have) * 1.2) + 16, rng)
        draw = draw[is_connected(draw, n)][: size - have]
        chunks.append(draw)
        have += len(draw)
    edges = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return relabel(edges, n, rng)


def isomorphism_invariant(edges: np.ndarray, n: int, rounds: int = 3) -> np.ndarray:
    """(size,) uint64: a hash of each graph that isomorphic graphs share (colour refinement, as
    Weisfeiler-Lehman: each node's colour is mixed with the sum of its neighbours' mixed colours,
    ``rounds`` times; the graph's hash is the sum of its nodes' mixed colours, so no step depends
    on the labels). Non-isomorphic graphs may share a hash; a split by it then puts both on one side."""
    pid = _pair_index(n)
    lookup = np.where(pid >= 0, pid, edges.shape[1]).reshape(-1)
    table = np.concatenate([edges != 0, np.zeros((len(edges), 1), dtype=bool)], axis=1)
    adj = np.take(table, lookup, axis=1).reshape(len(edges), n, n)
    with np.errstate(over="ignore"):
        colour = _splitmix(adj.sum(axis=2, dtype=np.uint64))
        for _ in range(rounds):
            around = np.where(adj, _splitmix(colour ^ np.uint64(0x5851F42D4C957F2D))[:, None, :], np.uint64(0))
            colour = _splitmix(colour * np.uint64(0x2545F4914F6CDD1D) + around.sum(axis=2, dtype=np.uint64))
        return _splitmix(colour).sum(axis=1, dtype=np.uint64)
