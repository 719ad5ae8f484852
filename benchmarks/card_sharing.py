"""What sharing one GPU among several packs costs: the sweep's local executor with ``--workers`` above the
number of GPUs runs that many packs at once, each its own process, and a small pack's step leaves the card
idle most of the time (kernel launches, not arithmetic).

For each shape (d_model x layers x batch, ``--n`` models a pack, the paper grid's task under the paper preset),
pack_rates.py times the pack alone, then K copies of it as K processes started together, for each K in
``--k``. Each round of each process is stamped with its end time; only the rounds that lie wholly inside the
stretch where all K processes were timing count as shared. Per shape and K: the step alone, the median shared
step, and ``share`` = shared step / (K x step alone): the fraction of the one-after-another time that K
packs take side by side (1: no gain; 1/K: each as fast as alone).

    python benchmarks/card_sharing.py --task mst --shapes 16x16x64,64x16x64 --k 4,8 --out $OUT/card_sharing.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pack_rates(task: str, shape: str, n: int, steps: int, rounds: int, out: Path) -> subprocess.Popen:
    d, layers, batch = shape.split("x")
    return subprocess.Popen([sys.executable, str(HERE / "pack_rates.py"), "--task", task, "--d", d, "--layers", layers,
                             "--batch", batch, "--n", str(n), "--modes", "graph", "--steps", str(steps),
                             "--rounds", str(rounds), "--out", str(out)], stdout=subprocess.DEVNULL)


def row(path: Path) -> dict:
    rows = json.loads(path.read_text())["rows"]
    if not rows or "error" in rows[0]:
        raise RuntimeError(f"{path}: {rows[0]['error'] if rows else 'no row'}")
    return rows[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mst")
    ap.add_argument("--shapes", required=True, help="d_model x layers x batch, comma-separated (e.g. 16x16x64)")
    ap.add_argument("--n", type=int, default=4, help="models a pack")
    ap.add_argument("--k", default="4,8", help="packs sharing the card")
    ap.add_argument("--round-s", type=float, default=1.0, help="seconds a timed round takes alone")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="card_sharing_"))
    out = {"args": vars(args), "shapes": []}
    for shape in args.shapes.split(","):
        probe = tmp / f"{shape}_probe.json"
        pack_rates(args.task, shape, args.n, 10, 2, probe).wait()
        steps = max(5, round(args.round_s / (row(probe)["ms_per_step"] / 1e3)))
        alone = tmp / f"{shape}_alone.json"
        pack_rates(args.task, shape, args.n, steps, args.rounds, alone).wait()
        result = {"shape": shape, "n_models": args.n, "steps_per_round": steps, "device": json.loads(alone.read_text())["device"],
                  "alone_ms": row(alone)["ms_per_step"], "shared": []}
        for k in (int(x) for x in args.k.split(",")):
            files = [tmp / f"{shape}_k{k}_{i}.json" for i in range(k)]
            for proc in [pack_rates(args.task, shape, args.n, steps, args.rounds, f) for f in files]:
                proc.wait()
            rows = [row(f) for f in files]
            # rounds as (start, end, ms); the window where every process was timing
            spans = [[(end - ms * steps / 1e3, end, ms) for ms, end in zip(r["rounds_ms"], r["round_ends_unix"])]
                     for r in rows]
            lo, hi = max(s[0][0] for s in spans), min(s[-1][1] for s in spans)
            inside = [ms for s in spans for start, end, ms in s if start >= lo and end <= hi]
            shared = statistics.median(inside) if inside else None
            result["shared"].append({"k": k, "rounds_inside": len(inside), "window_s": max(0.0, hi - lo),
                                     "shared_ms": shared, "share": shared / (k * result["alone_ms"]) if shared else None,
                                     "per_process_median_ms": [r["ms_per_step"] for r in rows]})
        out["shapes"].append(result)
        print(json.dumps(result), flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
