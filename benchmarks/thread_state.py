"""What one call of ``torch.set_num_threads`` does to the CPU training step afterwards, against
``quietlab.train.threads.set_cpu_threads`` and against no call at all.

Each arm is a fresh process: the demo's model (12-bit addition, d_model 64 x 4 layers, batch 64) takes
--warm steps, is timed for --steps steps ("before"), then makes the arm's call with the thread count it
already has and is timed for --steps more ("after"). The arms run in interleaved rounds; each round's
after/before ratio is kept, so the machine's drift between processes cancels.

    .venv/bin/python benchmarks/thread_state.py --rounds 3 --out benchmarks/results/thread_state.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
ARMS = ("none", "torch.set_num_threads", "set_cpu_threads")


def child(arm: str, warm: int, steps: int) -> dict:
    import torch

    from quietlab.train.threads import set_cpu_threads
    from step_time import demo_step

    step = demo_step(lr=1e-3, data_seed=1)

    def run(n: int) -> float:
        t = time.perf_counter()
        for s in range(n):
            step(s)
        return (time.perf_counter() - t) / n * 1000

    run(warm)
    before = run(steps)
    threads = torch.get_num_threads()
    if arm == "torch.set_num_threads":
        torch.set_num_threads(threads)
    elif arm == "set_cpu_threads":
        set_cpu_threads(threads)
    after = run(steps)
    return {"arm": arm, "threads": threads, "before_ms": before, "after_ms": after, "ratio": after / before}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warm, args.steps)))
        return
    rows = []
    for r in range(args.rounds):
        for arm in ARMS:
            out = subprocess.run([sys.executable, __file__, "--child", arm, "--warm", str(args.warm), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True).stdout
            row = {"round": r + 1, **json.loads(out.strip().splitlines()[-1])}
            rows.append(row)
            print(f"round {r + 1} {arm:22s} before {row['before_ms']:6.1f} ms  after {row['after_ms']:6.1f} ms  "
                  f"after/before {row['ratio']:.3f}", flush=True)
    summary = {arm: statistics.median(x["ratio"] for x in rows if x["arm"] == arm) for arm in ARMS}
    for arm, ratio in summary.items():
        print(f"median after/before, {arm}: {ratio:.3f}")
    if args.out:
        from quietlab.runs import write_atomic

        write_atomic(args.out, json.dumps({"settings": vars(args), "rounds": rows, "median_ratio": summary}, indent=1).encode())


if __name__ == "__main__":
    main()
