"""Examples per second of ``task.sample(n)``, with every feature, against plain per-example Python.

    .venv/bin/python benchmarks/generation.py [--n 10000] [--repeats 7] [--tasks addition,bfs]

Each task runs at its default (paper) size, in a fresh Python process of its own, on one core
(numerical libraries held to one thread). quietlab and the reference are timed in that same
process, as CPU seconds of the process (other work on the machine does not count against either),
each the best of the same --repeats.

Two allocator settings, both in the same process: glibc's defaults, then glibc told to keep freed
memory (mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB). With the defaults, a batch of
10,000 examples frees tens of MB that glibc hands back to the kernel, so the next batch's arrays
are fresh pages and the vectorised side pays a page fault for every 4 KiB it writes: 2-5 us a page
in the VM this was written on (a fraction of a microsecond on bare metal), which can cost more than
the algorithm. The second setting measures the generators themselves; a long-running trainer gets
it with MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 in its environment.

The references are quietlab.tasks.reference (one plain per-example implementation per task, the
same the tests take as the specification; its graphs are drawn in plain Python), each
``REFERENCES[name](n, seed) -> list``. Each is first checked to give exactly quietlab's text, tokens,
loss mask and feature labels on the same inputs (``check_against_reference``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before numpy is imported

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

TASKS = ("addition", "multiplication", "majority_of_majorities", "max_subarray", "activity_selection",
         "bfs", "dfs", "shortest_path", "topological_sort", "mst")
TARGET_RATIO = 50


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def cpu_rate(make, n: int, repeats: int) -> float:
    """Examples per CPU second of ``make(n, seed)``, best of ``repeats`` after one warm-up call."""
    make(n, 10_000)
    best = float("inf")
    for seed in range(repeats):
        start = time.process_time()
        make(n, seed)
        best = min(best, time.process_time() - start)
    return n / best


def worker(name: str, args) -> dict:
    """Measure one task in this (fresh) process; returns the numbers as a dict."""
    from quietlab.tasks import get_task
    from quietlab.tasks.reference import REFERENCES, check_against_reference

    task = get_task(name)
    result = {"task": name, "size": ",".join(f"{k}={v}" for k, v in task.sizes.items())}
    check_against_reference(task)
    result["checked"] = True
    reference = REFERENCES[name]

    def ours(n, seed):
        return task.sample(n, seed=seed)

    result["ours"] = cpu_rate(ours, args.n, args.repeats)
    result["reference"] = cpu_rate(reference, args.n_reference, args.repeats)
    if keep_freed_memory():
        result["ours_kept"] = cpu_rate(ours, args.n, args.repeats)
        result["reference_kept"] = cpu_rate(reference, args.n_reference, args.repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="examples per quietlab sample() call")
    parser.add_argument("--n-reference", type=int, default=2_000, help="examples per reference call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--out", default="", help="also write every task's raw numbers to this JSON file")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    import numpy as np

    wanted = [t for t in args.tasks.split(",") if t] or list(TASKS)
    unknown = sorted(set(wanted) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    print(f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, one core per task")
    print(f"quietlab: task.sample({args.n}) with every feature; reference: {args.n_reference} examples one at a time")
    print("ex/s = examples per CPU second, best of the repeats; ratio = quietlab / reference in the same process")
    print()
    head = (
        f"{'task':<23}{'size':<22}{'quietlab':>11}{'reference':>11}{'ratio':>8}  |"
        f"{'quietlab':>11}{'reference':>11}{'ratio':>8}"
    )
    raw = []
    print(f"{'':<45}{'glibc default allocator':^30}  |{'freed memory kept':^30}")
    print(head)
    print("-" * len(head))
    for name in wanted:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--n", str(args.n)]
        cmd += ["--n-reference", str(args.n_reference), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:<23}(skipped: {last})")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        raw.append(r)

        def cells(ours, ref):
            if ours is None:
                return f"{'-':>11}{'-':>11}{'-':>8}"
            if ref is None:
                return f"{ours:>11,.0f}{'-':>11}{'-':>8}"
            return f"{ours:>11,.0f}{ref:>11,.0f}{ours / ref:>7.1f}x"

        line = f"{name:<23}{r['size']:<22}{cells(r['ours'], r.get('reference'))}  |"
        line += cells(r.get("ours_kept"), r.get("reference_kept"))
        if "note" in r:
            line += f"  ({r['note']})"
        print(line)
    print()
    print(f"target: quietlab >= {TARGET_RATIO}x the reference and >= 50,000 ex/s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "tasks": raw}, indent=2))


if __name__ == "__main__":
    main()
