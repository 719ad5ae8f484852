"""Search for the `quietlab demo` configuration: a run that plateaus and then transitions on a CPU.

Trains every (config, seed) of a small grid in parallel worker processes, each pinned to a few threads,
with no monitor, and reports for each run: wall time, where the detector puts the plateau and the
transition on the held-out loss, and the final exact match. Prints one JSON line per run and a table.

    python benchmarks/demo_search.py --workers 8 --threads 2 --out results.jsonl
    python benchmarks/demo_search.py --grid demo --seeds 0 1 2 3 4      # the chosen config, 5 seeds
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

GRIDS = {
    # n_bits, d_model, n_layers, lr, steps, batch
    "wide": [dict(n_bits=nb, d_model=d, n_layers=L, lr=lr, steps=steps, batch_size=64)
             for nb, d, L, lr, steps in itertools.product((8, 12, 16), (32, 64), (2, 4), (1e-3, 3e-3), (3000,))],
    "focus": [dict(n_bits=nb, d_model=d, n_layers=4, lr=lr, steps=3000, batch_size=64)
              for nb, d, lr in itertools.product((12, 16, 20), (32, 64), (1e-3, 3e-4))],
    "pair": [dict(n_bits=12, d_model=64, n_layers=4, lr=lr, steps=2000, batch_size=64) for lr in (1e-3, 5e-4)],
    "demo": [dict(n_bits=12, d_model=64, n_layers=4, lr=1e-3, steps=3000, batch_size=64)],
}


def run_one(job: dict, threads: int) -> dict:
    from quietlab.monitor.transitions import detect_transitions
    from quietlab.runs import RunFolder
    from quietlab.train.loop import TrainConfig, train
    from quietlab.train.threads import set_cpu_threads

    set_cpu_threads(threads)

    cfg = TrainConfig(task="addition", task_sizes={"n_bits": job["n_bits"]}, d_model=job["d_model"],
                      n_layers=job["n_layers"], n_heads=4, lr=job["lr"], steps=job["steps"],
                      batch_size=job["batch_size"], seed=job["seed"], eval_examples=256, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        final = train(cfg, os.path.join(tmp, "run"), progress=False)
        wall = time.perf_counter() - start
        with RunFolder(os.path.join(tmp, "run")).store() as store:
            steps, loss = store.series("eval/loss")
            _, acc = store.series("eval/exact_match")
    found = detect_transitions(steps, loss)
    first = found[0] if found else None
    return {
        **job, "wall_s": round(wall, 1), "final_exact_match": acc[-1] if acc else None,
        "n_transitions": len(found),
        "plateau_start": first.plateau_start if first else None, "onset": first.onset if first else None,
        "end": first.end if first else None, "plateau_decades": round(first.plateau_length, 2) if first else None,
        "loss_before": round(first.level_before, 3) if first else None,
        "loss_after": round(first.level_after, 3) if first else None,
        "final": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "curve": {"steps": steps, "eval_loss": [round(v, 4) for v in loss], "exact_match": acc},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="wide")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    jobs = [{**cfg, "seed": s} for cfg in GRIDS[args.grid] for s in args.seeds]
    out = open(args.out, "a") if args.out else None
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, job, args.threads) for job in jobs]
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
    print(f"\n{'n_bits':>6} {'d':>4} {'L':>2} {'lr':>7} {'seed':>4} {'wall_s':>7} {'plateau':>8} {'onset':>6} "
          f"{'end':>6} {'decades':>7} {'loss':>12} {'exact':>6}", file=sys.stderr)
    for r in sorted(rows, key=lambda r: (r["n_bits"], r["d_model"], r["n_layers"], r["lr"], r["seed"])):
        loss = f"{r['loss_before']}->{r['loss_after']}" if r["onset"] is not None else "-"
        print(f"{r['n_bits']:>6} {r['d_model']:>4} {r['n_layers']:>2} {r['lr']:>7g} {r['seed']:>4} {r['wall_s']:>7} "
              f"{str(r['plateau_start']):>8} {str(r['onset']):>6} {str(r['end']):>6} {str(r['plateau_decades']):>7} "
              f"{loss:>12} {r['final_exact_match']:>6.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
