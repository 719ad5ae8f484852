"""How much the order in which a sweep hands its packs to the workers matters, replayed from a finished sweep's table.

Each pack (runs of one task and d_model sharing a wall time in the table) is given the wall time it took in the
sweep, and the packs are dealt to W workers, each taking the next pack when it is free, in two orders: the spec's
(the order the sweep planned before 2026-12-05: task by task, each task's shapes in turn) and longest first (by the
pack's longest run's steps, as `plan_packs` now orders them). Printed: each order's makespan. A replay, not a
measurement: a pack's time in the table was measured while sharing the GPU with whatever else ran then, and
would differ under the other order.

    python benchmarks/pack_order.py benchmarks/results/h200-2026-12-05-s16/slice4/sweep.sqlite --workers 6
"""

from __future__ import annotations

import argparse
import heapq
import sqlite3


def makespan(durations: list[float], workers: int) -> float:
    free = [0.0] * workers
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("--workers", type=int, default=6)
    args = ap.parse_args()
    con = sqlite3.connect(args.table)
    packs = con.execute("SELECT min(rowid), wall_s, max(total_steps) FROM runs WHERE status = 'done' "
                        "GROUP BY task, d_model, wall_s ORDER BY min(rowid)").fetchall()
    spec = [wall for _, wall, _ in packs]
    longest = [wall for _, wall, _ in sorted(packs, key=lambda p: -p[2])]
    print(f"{len(packs)} packs, {sum(spec):.0f} s of pack time, {args.workers} workers: makespan in the spec's order "
          f"{makespan(spec, args.workers):.0f} s, longest first {makespan(longest, args.workers):.0f} s "
          f"(bound: {max(sum(spec) / args.workers, max(spec)):.0f} s)")


if __name__ == "__main__":
    main()
