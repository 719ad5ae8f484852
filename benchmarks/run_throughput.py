"""A whole training run's average throughput against its steady-state steps (issue 12's GPU check).

Runs ``quietlab train`` as a subprocess with the monitor on (its defaults), then reads the run's store:

- whole run: steps × tokens per step / the loop's wall time (``wall_s`` of the final JSON: from the
  step-0 evaluation to the end, compilation, evaluations, checkpoints and probes included), and the
  same over the whole process's wall time (start-up and the monitor's final classification too);
- steady state: the median of ``train/tokens_per_s``, logged about once a second over plain training
  steps (the loop restarts that clock after every evaluation and checkpoint).

Writes one JSON object (settings, both rates, their ratio, the counts of evaluations, checkpoints and
probe steps, and the raw per-window series) to --out.

    python benchmarks/run_throughput.py --task bfs --size 11 --d-model 256 --layers 4 --lr 1e-4 \\
        --steps 20000 --device cuda --compile --out benchmarks/results/bfs11_throughput.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="bfs")
    ap.add_argument("--size", type=int, default=11, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--out", required=True, help="JSON file for the results")
    args = ap.parse_args()

    from quietlab.tasks import get_task

    knob = get_task(args.task).knobs[0].name.replace("_", "-")
    run = Path(args.run) if args.run else Path(tempfile.mkdtemp(prefix="quietlab-throughput-")) / "run"
    cmd = [sys.executable, "-m", "quietlab.cli", "train", args.task, f"--{knob}", str(args.size),
           "--d-model", str(args.d_model), "--layers", str(args.layers), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--steps", str(args.steps), "--device", args.device, "--seed", str(args.seed), "--out", str(run), "--json"]
    if args.compile:
        cmd.append("--compile")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"training failed ({res.returncode}):\n{res.stderr[-3000:]}")
    final = json.loads(res.stdout)
    out = {"settings": vars(args), "process_wall_s": process_s, **throughput(run, final["wall_s"]), "final": final}
    out["whole_process_tokens_per_s"] = out["tokens"] / process_s
    out["steady_over_whole_process"] = out["steady_tokens_per_s"] / out["whole_process_tokens_per_s"]
    whole, steady, n_eval, n_probe = (out[k] for k in ("whole_run_tokens_per_s", "steady_tokens_per_s", "evaluations", "probe_steps"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{out['device']}: whole run {whole / 1e6:.3f}M tok/s (loop {final['wall_s']:.1f} s, process {process_s:.1f} s), "
          f"steady {steady / 1e6:.3f}M tok/s: steady/whole {steady / whole:.3f} "
          f"({n_eval} evaluations, {out['checkpoints']} checkpoints, {n_probe} probe steps) -> {args.out}")
    print("seconds: " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in out["breakdown"].items()))


def throughput(run: Path, loop_wall_s: float) -> dict:
    """A finished run's whole-run and steady-state tokens/s (``loop_wall_s``: the loop's ``wall_s``),
    their ratio, where the time beyond the steady steps went, and its counts of evaluations,
    checkpoints and probe steps (also used by plateau_probing.py)."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    tokens = config["resolved"]["steps"] * config["resolved"]["tokens_per_step"]
    db = sqlite3.connect(f"file:{run / 'metrics.sqlite'}?mode=ro", uri=True)

    def series(name):
        return db.execute("SELECT step, value FROM metrics WHERE name = ? ORDER BY step", (name,)).fetchall()

    def last(name):
        rows = series(name)
        return rows[-1][1] if rows else 0.0

    rates, elapsed = series("train/tokens_per_s"), series("train/elapsed_s")
    # where the time beyond the steady steps went (seconds of the loop's wall time)
    breakdown = {"first_step_s": last("train/first_step_s"), "eval_s": last("train/eval_s"),
                 "checkpoint_s": last("train/checkpoint_s"), "probe_s": sum(v for _, v in series("monitor/probe_s"))}
    n_eval = len(series("eval/loss"))
    n_probe = db.execute("SELECT COUNT(DISTINCT step) FROM probes").fetchone()[0]
    db.close()
    steady = statistics.median(v for _, v in rates)
    whole = tokens / loop_wall_s
    return {
        "device": config["resolved"]["device"], "tokens": tokens, "loop_wall_s": loop_wall_s,
        "steady_tokens_per_s": steady, "whole_run_tokens_per_s": whole, "steady_over_whole": steady / whole,
        "breakdown": {**breakdown, "steady_s": tokens / steady,
                      "rest_s": loop_wall_s - tokens / steady - sum(breakdown.values())},
        "evaluations": n_eval, "checkpoints": len(list((run / "checkpoints").glob("step_*.pt"))), "probe_steps": n_probe,
        "tokens_per_s_windows": rates, "elapsed_s_windows": elapsed,
    }


if __name__ == "__main__":
    main()
