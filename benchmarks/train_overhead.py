"""`quietlab train` at its defaults (monitor on) against a plain PyTorch loop, both timed as whole processes.

Same model, task, batch, learning rate and steps (default: the demo's model, 12-bit addition, d_model
64 × 4 layers, batch 64, 600 steps, on the CPU). The two commands run in interleaved rounds (plain,
quietlab, plain, quietlab, ...) so that a machine's drift hits both alike; every round's wall time is
kept. Writes the raw timings as JSON to --out and prints a summary (median ratio and each round's).

    .venv/bin/python benchmarks/train_overhead.py --rounds 3 --out benchmarks/results/train_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEAL: list[float] = []  # each timed command's share of CPU time stolen by the host


def steal_share() -> tuple[float, float]:
    """(steal, total) CPU jiffies so far from /proc/stat (Linux; zeros elsewhere): the time a virtual
    machine's host gave its CPUs to others, which stretches wall time but not CPU time."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[7], sum(fields)
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def timed(cmd: list[str]) -> tuple[float, str, float]:
    """(wall seconds, stdout, CPU seconds of the process: user + system, which a busy host's steal
    time does not inflate)."""
    before, steal0 = resource.getrusage(resource.RUSAGE_CHILDREN), steal_share()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    steal1 = steal_share()
    STEAL.append((steal1[0] - steal0[0]) / max(steal1[1] - steal0[1], 1.0))
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return wall, res.stdout, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=12, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True, help="JSON file for the raw timings")
    args = ap.parse_args()

    import quietlab.tasks as tasks

    knob = tasks.get_task(args.task).knobs[0].name.replace("_", "-")
    common = ["--d-model", str(args.d_model), "--layers", str(args.layers), "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--steps", str(args.steps), "--device", args.device]
    plain = [sys.executable, str(HERE / "plain_loop.py"), "--task", args.task, "--size", str(args.size), *common]
    root = Path(tempfile.mkdtemp(prefix="quietlab-train-overhead-"))
    rounds = []
    try:
        for r in range(args.rounds):
            p_wall, p_out, p_cpu = timed(plain)
            run = root / f"run{r}"
            q_wall, q_out, q_cpu = timed([sys.executable, "-m", "quietlab.cli", "train", args.task, f"--{knob}", str(args.size),
                                   *common, "--out", str(run), "--json"])
            final = json.loads(q_out)
            with open(run / "config.json") as f:
                resolved = json.load(f)["resolved"]
            import sqlite3

            db = sqlite3.connect(f"file:{run / 'metrics.sqlite'}?mode=ro", uri=True)
            n_probe = db.execute("SELECT COUNT(DISTINCT step) FROM probes").fetchone()[0]
            n_eval = db.execute("SELECT COUNT(*) FROM metrics WHERE name = 'eval/loss'").fetchone()[0]
            db.close()
            n_ckpt = len(list((run / "checkpoints").glob("step_*.pt")))
            rounds.append({"plain_s": p_wall, "quietlab_s": q_wall, "ratio": q_wall / p_wall,
                           "plain_cpu_s": p_cpu, "quietlab_cpu_s": q_cpu, "cpu_ratio": q_cpu / p_cpu,
                           "steal_share_plain": STEAL[-2], "steal_share_quietlab": STEAL[-1],
                           "plain_loss": json.loads(p_out)["loss"], "quietlab_train_loss": final["train/loss"],
                           "quietlab_exact_match": final.get("eval/exact_match"), "evaluations": n_eval,
                           "checkpoints": n_ckpt, "probe_steps": n_probe, "device": resolved["device"]})
            print(f"round {r + 1}: plain {p_wall:.1f} s, quietlab {q_wall:.1f} s, ratio {q_wall / p_wall:.3f} "
                  f"(CPU time {p_cpu:.1f} s vs {q_cpu:.1f} s: {q_cpu / p_cpu:.3f}; host steal {STEAL[-2]:.0%}, {STEAL[-1]:.0%}) "
                  f"({n_eval} evaluations, {n_ckpt} checkpoints, {n_probe} probe steps)", flush=True)
            shutil.rmtree(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"settings": vars(args), "cpu_count": os.cpu_count(), "load_avg_after": os.getloadavg(), "rounds": rounds,
           "median_ratio": statistics.median(r["ratio"] for r in rounds),
           "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds),
           "ratio_of_medians": statistics.median(r["quietlab_s"] for r in rounds) / statistics.median(r["plain_s"] for r in rounds)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"median ratio {out['median_ratio']:.3f} (CPU time {out['median_cpu_ratio']:.3f}), ratio of medians {out['ratio_of_medians']:.3f} -> {args.out}")


if __name__ == "__main__":
    main()
