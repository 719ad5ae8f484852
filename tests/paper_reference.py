"""Plain per-example implementations of the paper's task rules, written from PAPER_PROTOCOL.md §1
and §4 (not from quietlab's code): each takes the prompt text (everything before '=') and returns
the answer text, or a feature's labels as {position: label} with t0 = the position of '='."""

from __future__ import annotations

from collections import deque


def _bits(text: str) -> int:
    return int(text[::-1], 2)  # LSB first


def _lsb_first(value: int, width: int) -> str:
    return format(value, f"0{width}b")[::-1]


# --- binary tasks ---------------------------------------------------------------------------------
def addition(prompt: str) -> str:
    a, b = prompt.split("+")
    return _lsb_first(_bits(a) + _bits(b), len(a) + 1)


def addition_carry(prompt: str) -> dict[int, int]:
    """carry: c_{r+1}, the carry out of bit r, at t0+1+r."""
    a, b = prompt.split("+")
    t0, carry, labels = len(prompt), 0, {}
    for r in range(len(a)):
        carry = int(int(a[r]) + int(b[r]) + carry >= 2)
        labels[t0 + 1 + r] = carry
    return labels


def first_operand(prompt: str) -> dict[int, int]:
    """first_operand: bit a_r at t0+r."""
    a = prompt.split("+")[0]
    return {len(prompt) + r: int(a[r]) for r in range(len(a))}


def multiplication(prompt: str) -> str:
    a, b = prompt.split("+")
    return _lsb_first(_bits(a) * _bits(b), 2 * len(a))


def multiplication_carry_16(prompt: str) -> dict[int, int]:
    """carry_16: the carries out of columns 15+r while the last partial product a*b_15 << 15 is added
    to the sum of the others, at t0+16+r (for n bits: n-1+r at t0+n+r)."""
    a, b = prompt.split("+")
    n, t0 = len(a), len(prompt)
    x = _bits(a)
    running = sum((x if b[k] == "1" else 0) << k for k in range(n - 1))
    last = (x if b[n - 1] == "1" else 0) << (n - 1)
    carry, carries = 0, []
    for column in range(2 * n):
        carry = int(((running >> column) & 1) + ((last >> column) & 1) + carry >= 2)
        carries.append(carry)  # out of this column
    return {t0 + n + r: carries[n - 1 + r] for r in range(n)}


def majority_of_majorities(prompt: str, groups: int = 4) -> str:
    size = len(prompt) // groups
    votes = 0
    for g in range(groups):
        ones = prompt[g * size : (g + 1) * size].count("1")
        votes += int(ones > size // 2)
    return str(int(votes > groups // 2))


# --- sequences ------------------------------------------------------------------------------------
def _values(prompt: str, offset: int) -> list[int]:
    return [ord(c) - 65 - offset for c in prompt]


def max_subarray(prompt: str) -> str:
    x = _values(prompt, 9)
    best = None
    running, start = 0, 0
    for j, v in enumerate(x):
        if running < 0:  # restart only on a negative running sum
            running, start = 0, j
        running += v
        if best is None or running > best:  # strict: the first maximum wins
            best, best_start, best_end = running, start, j
    return "".join(chr(v + 9 + 65) for v in x[best_start : best_end + 1])


def max_subarray_features(prompt: str) -> tuple[dict[int, int], dict[int, int]]:
    """is_prev_negative [x_r < 0] and max_ending_here (running sum after x_r, 0 at r=0), both at r+1."""
    x = _values(prompt, 9)
    negative, here_labels = {}, {}
    here = 0
    for r, v in enumerate(x):
        here = v if r == 0 or here < 0 else here + v
        negative[r + 1] = int(v < 0)
        here_labels[r + 1] = 0 if r == 0 else here
    return negative, here_labels


def activity_selection(prompt: str) -> str:
    times = _values(prompt, 0)
    m = len(times) // 2
    starts, ends = times[:m], times[m:]
    last_end, out = 0, []
    for i in sorted(range(m), key=lambda i: ends[i]):  # Python's sort is stable: ties keep input order
        if starts[i] >= last_end:
            out += [starts[i], ends[i]]
            last_end = ends[i]
    return "".join(chr(65 + t) for t in out)


def activity_start_time(prompt: str) -> dict[int, int]:
    """start time: s_r at the end token e_r, position 16+r (n+r)."""
    times = _values(prompt, 0)
    m = len(times) // 2
    return {m + r: times[r] for r in range(m)}


# --- graphs ---------------------------------------------------------------------------------------
def _graph(prompt: str, n_ends: int, n: int, directed: bool = False):
    ends = [ord(c) - 65 for c in prompt[:n_ends]]
    edges = [(ord(prompt[i]) - 65, ord(prompt[i + 1]) - 65) for i in range(n_ends, len(prompt), 2)]
    nbrs = {v: set() for v in range(n)}
    for u, v in edges:
        nbrs[u].add(v)
        if not directed:
            nbrs[v].add(u)
    return ends, edges, {v: sorted(s) for v, s in nbrs.items()}


def _letters(nodes) -> str:
    return "".join(chr(65 + v) for v in nodes)


def bfs(prompt: str, n: int = 11) -> tuple[str, dict[int, list[int]], dict[int, list[int]]]:
    """The visit order, the queue after expanding the r-th node (r < n-1) at t0+1+r, and the
    adjacency row of the r-th node at t0+1+r."""
    (source,), _, nbrs = _graph(prompt, 1, n)
    t0 = len(prompt)
    queue, seen, order, queues = deque([source]), {source}, [], {}
    while queue:
        v = queue.popleft()
        order.append(v)
        for w in nbrs[v]:
            if w not in seen:  # marked when enqueued
                seen.add(w)
                queue.append(w)
        if len(order) < n:
            queues[t0 + len(order)] = [int(u in queue) for u in range(n)]
    adjacency = {t0 + 1 + r: [int(u in nbrs[v]) for u in range(n)] for r, v in enumerate(order)}
    return _letters(order), queues, adjacency


def dfs(prompt: str, n: int = 11) -> str:
    """Sage: pop; if new, visit and push all neighbours ascending (the largest goes first)."""
    (source,), _, nbrs = _graph(prompt, 1, n)
    stack, seen, order = [source], set(), []
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        order.append(v)
        stack.extend(nbrs[v])
    return _letters(order)


def shortest_path(prompt: str, n: int = 11) -> str:
    """Sage BFS_Bid: a whole level from the source, then one from the target, alternately; stop at
    the first newly found node the other side knows."""
    (source, target), _, nbrs = _graph(prompt, 2, n)
    pred = [{source: source}, {target: target}]
    frontier = [[source], [target]]
    side = 0
    while True:
        other, found, meet = 1 - side, [], None
        for u in frontier[side]:
            for w in nbrs[u]:
                if w not in pred[side]:
                    pred[side][w] = u
                    found.append(w)
                    if w in pred[other]:
                        meet = w
                        break
            if meet is not None:
                break
        if meet is not None:
            break
        frontier[side] = found
        side = other
    path = [meet]
    while path[0] != source:
        path.insert(0, pred[0][path[0]])
    while path[-1] != target:
        path.append(pred[1][path[-1]])
    return _letters(path)


def topological_sort(prompt: str, n: int = 11) -> str:
    """Sage: for v = A.. not yet finished, a stack DFS pushing out-neighbours ascending; record nodes
    as they finish; reverse."""
    _, _, out = _graph(prompt, 0, n, directed=True)
    expanded, finished, record = set(), set(), []
    for root in range(n):
        if root in expanded:
            continue
        stack = [root]
        while stack:
            u = stack[-1]
            if u in expanded:
                stack.pop()
                if u not in finished:
                    finished.add(u)
                    record.append(u)
                continue
            expanded.add(u)
            stack.extend(w for w in out[u] if w not in expanded)
    return _letters(record[::-1])


def mst(prompt: str, n: int = 11) -> str:
    """Sage kruskal, all weights 1 (stable): scan edges lexicographically, keep those joining two components."""
    _, edges, _ = _graph(prompt, 0, n)
    component = list(range(n))

    def find(v):
        while component[v] != v:
            v = component[v]
        return v

    tree = []
    for u, v in sorted((min(e), max(e)) for e in edges):
        if find(u) != find(v):
            component[find(u)] = find(v)
            tree += [u, v]
    return _letters(tree)


# --- the quietlab features the paper's graph rules also define, {position: {feature: label}} -------------
def _hops(nbrs, start, n):
    dist, queue = {start: 0}, deque([start])
    while queue:
        v = queue.popleft()
        for w in nbrs[v]:
            if w not in dist:
                dist[w] = dist[v] + 1
                queue.append(w)
    return [dist[u] for u in range(n)]


def dfs_features(prompt: str, n: int = 11) -> dict[int, dict]:
    """After visiting each node (at t0+1+r): unvisited nodes with an entry on Sage's stack, the visited
    set, the node's adjacency row, its depth and its parent (who pushed the entry that was popped)."""
    (source,), _, nbrs = _graph(prompt, 1, n)
    t0 = len(prompt)
    stack, seen, depth, labels = [(source, source)], [], {}, {}
    while stack:
        v, by = stack.pop()
        if v in seen:
            continue
        depth[v] = 0 if v == source else depth[by] + 1
        seen.append(v)
        stack.extend((w, v) for w in nbrs[v])
        waiting = {w for w, _ in stack} - set(seen)
        labels[t0 + len(seen)] = {
            "stack": [int(u in waiting) for u in range(n)], "visited": [int(u in seen) for u in range(n)],
            "adjacency_list": [int(u in nbrs[v]) for u in range(n)], "depth": depth[v], "parent": by}
    return labels


def shortest_path_features(prompt: str, answer: str, n: int = 11) -> dict[int, dict]:
    (source, target), _, nbrs = _graph(prompt, 2, n)
    t0 = len(prompt)
    static = {"distance": _hops(nbrs, source, n), "distance_to_target": _hops(nbrs, target, n)}
    labels = {t0: {**static, "visited": [0] * n}}
    path = [ord(c) - 65 for c in answer]
    for r, v in enumerate(path):
        labels[t0 + 1 + r] = {**static, "visited": [int(u in path[: r + 1]) for u in range(n)],
                              "adjacency_list": [int(u in nbrs[v]) for u in range(n)]}
    return labels


def topological_sort_features(prompt: str, answer: str, n: int = 11) -> dict[int, dict]:
    _, edges, out = _graph(prompt, 0, n, directed=True)
    t0 = len(prompt)
    order = [ord(c) - 65 for c in answer]
    labels = {}
    for r in range(-1, n):
        done = set(order[: r + 1])
        indegree = [sum(1 for u, w in edges if w == v and u not in done) for v in range(n)]
        labels[t0 + 1 + r] = {"ready": [int(v not in done and indegree[v] == 0) for v in range(n)],
                              "remaining_in_degree": indegree, "visited": [int(v in done) for v in range(n)]}
        if r >= 0:
            labels[t0 + 1 + r]["adjacency_list"] = [int(u in out[order[r]]) for u in range(n)]
    return labels


def mst_features(prompt: str, answer: str, n: int = 11) -> dict[int, dict]:
    """At '=' no tree edge; at tree edge j's first letter the forest of edges 0..j-1, at its second 0..j."""
    _, _, nbrs = _graph(prompt, 0, n)
    t0 = len(prompt)
    tree = [(ord(answer[i]) - 65, ord(answer[i + 1]) - 65) for i in range(0, len(answer), 2)]

    def forest(k):
        component = list(range(n))
        for u, v in tree[:k]:
            old, new = max(component[u], component[v]), min(component[u], component[v])
            component = [new if c == old else c for c in component]
        touched = {x for e in tree[:k] for x in e}
        return {"component": component, "in_tree": [int(v in touched) for v in range(n)]}

    labels = {t0: forest(0)}
    for j, (u, v) in enumerate(tree):
        labels[t0 + 1 + 2 * j] = {**forest(j), "adjacency_list": [int(x in nbrs[u]) for x in range(n)]}
        labels[t0 + 2 + 2 * j] = {**forest(j + 1), "adjacency_list": [int(x in nbrs[v]) for x in range(n)]}
    return labels
