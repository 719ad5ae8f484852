"""A sweep's compute frontiers as one PNG for a page: a log-log panel per curve, best loss per budget, the
plateau (grey) and drop (orange) that ``quietlab frontier`` found, and the paper's hand-set success threshold
(PAPER_PROTOCOL.md section 6) as a dashed line where it has one. Needs matplotlib (``pip install 'quietlab[figures]'``).

    .venv/bin/python benchmarks/frontier_figure.py benchmarks/results/h200-2026-12-04-s14/frontier.json \\
        --out docs/frontier.png
"""

from __future__ import annotations

import argparse
import json
import math

# PAPER_PROTOCOL.md section 6: the paper's "task success thresholds", in FLOPs
PAPER_THRESHOLD = {"addition": 1e12, "bfs": 1e13, "dfs": 1e14, "max_subarray": 1e13, "activity_selection": 1e13,
                   "multiplication": 1e16}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("frontier_json", help="the output of `quietlab frontier SWEEP --json`")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--floor", type=float, default=1e-6, help="losses below this are drawn at it (the analysis' floor)")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frontiers = json.load(open(args.frontier_json))["frontiers"]
    cols = 5
    rows = math.ceil(len(frontiers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False)
    for ax, f in zip(axes.flat, frontiers):
        x = [p["budget"] for p in f["points"]]
        y = [max(p["eval_loss"], args.floor) for p in f["points"]]
        ax.loglog(x, y, "o-", ms=3, lw=1.2, color="#1f4e79")
        if f["two_phase"]:
            if f["plateau_start"] is not None and f["plateau_start"] < f["drop_start"]:
                ax.axvspan(f["plateau_start"], f["drop_start"], color="0.85", lw=0)
            ax.axvspan(f["drop_start"], f["drop_end"], color="#f4b183", lw=0)
        if f["task"] in PAPER_THRESHOLD and PAPER_THRESHOLD[f["task"]] <= max(x) * 1.01:
            ax.axvline(PAPER_THRESHOLD[f["task"]], ls="--", lw=1, color="#c00000")
        verdict = "two phases" if f["two_phase"] else ("too few budgets" if f["two_phase"] is None else "no two phases")
        ax.set_title(f"{f['curve']}\n{verdict}, {sum(p['runs'] for p in f['points'])} runs", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(frontiers):]:
        ax.axis("off")
    fig.supxlabel("compute budget (FLOPs)", fontsize=9)
    fig.supylabel("best final held-out loss", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
