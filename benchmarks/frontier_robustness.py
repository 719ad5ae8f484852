"""How firm a sweep's two-phase verdicts are: the frontier recomputed on parts of the sweep.

Each task's verdict (two phases or not) on the whole table, on every other budget (two ways), and on each
learning rate alone (a frontier of half the runs). A verdict that holds only on one part rests on the runs
or budgets that part keeps.

    .venv/bin/python benchmarks/frontier_robustness.py benchmarks/results/h200-2026-12-04-s14/slice3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from quietlab.runs.frontier import compute_frontiers, load_rows  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="folder holding sweep.sqlite")
    ap.add_argument("--out", default=None, help="also write the verdicts as JSON")
    args = ap.parse_args()
    rows = [r for r in load_rows(args.sweep) if r["status"] == "done"]
    budgets = sorted({r["budget"] for r in rows})
    parts = {f"all {len(budgets)} budgets": rows,
             "even budgets": [r for r in rows if r["budget"] in budgets[::2]],
             "odd budgets": [r for r in rows if r["budget"] in budgets[1::2]]}
    for lr in sorted({r["lr"] for r in rows}):
        parts[f"lr {lr:g} only"] = [r for r in rows if r["lr"] == lr]
    verdicts = {}
    for name, part in parts.items():
        for f in compute_frontiers(part):
            verdicts.setdefault(f.curve, {})[name] = (
                f"{f.drop_start:.3g}-{f.drop_end:.3g}" if f.two_phase else "no" if f.two_phase is False else "too few budgets")
    width = max(map(len, verdicts))
    print(f"{'curve':{width}}  " + "  ".join(f"{n:>16}" for n in parts))
    for curve, row in verdicts.items():
        print(f"{curve:{width}}  " + "  ".join(f"{row.get(n, ''):>16}" for n in parts))
    if args.out:
        Path(args.out).write_text(json.dumps(verdicts, indent=1))


if __name__ == "__main__":
    main()
