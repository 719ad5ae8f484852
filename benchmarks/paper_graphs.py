"""Graphs per second of the paper preset's graph sampler (uniform connected unlabelled graphs,
Dixon-Wilf, randomly relabelled), and examples per second of each paper graph task, on one core.

    .venv/bin/python benchmarks/paper_graphs.py [--n 100000] [--nodes 11] [--repeats 5] [--out FILE]

Timed as CPU seconds of this process (one thread), best of --repeats; prints JSON (and writes it to
--out). The issue asks for >= 20,000 graphs/s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402

from quietlab.tasks import get_task  # noqa: E402
from quietlab.tasks.graph_sampling import uniform_connected_graphs  # noqa: E402


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for r in range(repeats):
        start = time.process_time()
        fn(n, r)
        best = min(best, time.process_time() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {
        "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
        "n": args.n, "nodes": args.nodes,
        "graphs_per_s": best_rate(lambda n, r: uniform_connected_graphs(args.nodes, n, np.random.default_rng(r)),
                                  args.n, args.repeats),
        "examples_per_s": {},
    }
    for name in ("bfs", "dfs", "shortest_path", "topological_sort", "mst"):
        task = get_task(name, preset="paper", n_nodes=args.nodes)
        n = max(args.n // 10, 1)
        result["examples_per_s"][name] = best_rate(lambda n, r: task.sample(n, seed=r), n, args.repeats)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
