"""A pack's step with its forward eager or compiled, inside one CUDA graph either way: the paper preset's
BFS pack (3 seeds, d_model 128 x 4, batch 64, fp32) as ``paper_ablation.py`` trains it, for --steps steps
per arm through ``train_packed``; and how fast the paper's BFS sampler draws examples on this host.

    python benchmarks/packed_compile_ab.py --out OUT/packed_compile_ab.json --steps 3000

Per arm: wall time of ``train_packed`` (building, compiling, capturing, evaluations and checkpoints as
paper_ablation.py schedules them), the steady tokens/s (median of the store's ``train/tokens_per_s`` over
the second half) and every seed's final training loss (the arms should agree to float32 noise, not bits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def sampler_rate(threads: int, seconds: float = 3.0) -> float:
    from quietlab.tasks import get_task

    task = get_task("bfs", preset="paper", n_nodes=11)
    counts = [0] * threads

    def work(k):
        t0, i = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            task.sample(64 * 32, seed=1000 * k + i, split="train")
            i += 1
        counts[k] = i * 64 * 32

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def arm(compile_forward: bool, steps: int, seeds: list[int], device: str) -> dict:
    import quietlab.train.packed as packed_mod
    from quietlab.runs import RunFolder
    from quietlab.train.loop import TrainConfig

    from paper_ablation import settings

    # paper_ablation.py's own BFS settings at its default sizes, this many steps
    spec = settings(argparse.Namespace(tasks="bfs", tiny=False, d_model=128, layers=4, lr=1e-3, batch_size=64,
                                       bfs_steps=steps, device=device, controls=32, probe_checkpoints=8))["bfs"]
    original = packed_mod.compiles_forward
    packed_mod.compiles_forward = lambda *_: compile_forward  # the arm's choice, for the pack's whole run
    try:
        cfgs = [TrainConfig(**{**spec["cfg"], "compile": device == "cuda"}, seed=s) for s in seeds]
        root = Path(tempfile.mkdtemp(prefix="pack_ab_"))
        dirs = [root / f"s{s}" for s in seeds]
        t0 = time.perf_counter()
        packed_mod.train_packed(cfgs, dirs)
        wall = time.perf_counter() - t0
    finally:
        packed_mod.compiles_forward = original
    finals, rates = [], []
    for d in dirs:
        with RunFolder(d).store(readonly=True) as s:
            finals.append(s.series("train/loss")[1][-1])
            st, r = s.series("train/tokens_per_s")
            rates += [v for a, v in zip(st, r) if a > steps // 2]
    return {"compile_forward": compile_forward, "steps": steps, "wall_s": wall, "ms_per_step_whole": 1e3 * wall / steps,
            "steady_tokens_per_s": statistics.median(rates) if rates else None, "final_losses": finals}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
           "sampler_examples_per_s": {str(k): sampler_rate(k) for k in (1, 3)}}
    print(json.dumps(out), flush=True)
    out["arms"] = []
    for compile_forward in (False, True):
        out["arms"].append(arm(compile_forward, args.steps, seeds, args.device))
        print(json.dumps(out["arms"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
