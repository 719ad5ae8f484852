"""What a sweep's pack costs at each shape of the paper's grid: setting it up (compiling) and each step.

The paper's grid (benchmarks/sweep_estimate.py --paper) packs the runs of one task, d_model, depth and batch
size: 4 learning rates x up to 7 budgets, each run leaving the pack at its own last step. Nine tenths of a
pack's steps come after all but its top budget's 4 runs have left, and that stretch is 10,000 steps or
longer in most packs, so the sweep compiles its forward inside the step's CUDA graph
(train/packed.py: compiles_forward). This script measures, for each shape, with the sweep's own step
(packed_speed.Packed: train/packed.py's PackedStep, bf16 autocast, per-model clip and AdamW):

  graph            n models, the whole step one CUDA graph of eager kernels (the stretches before the last)
  graph-compiled   the same with forward and update compiled inside the graph (the last stretch)

For each: ``setup_s``, seconds from building the pack to the end of its first replayed step (warm-up, capture
and, compiled, the compile, on whatever cache TORCHINDUCTOR_CACHE_DIR names; pack_rates.sh empties it
first), and ``ms_per_step``, the median over --rounds rounds of --steps steps. Results are written after each shape, so
a run stopped at its time limit keeps what it measured.

    python benchmarks/pack_rates.py --task mst --n 4 --modes graph-compiled --out rates.json
    python benchmarks/pack_rates.py --task mst --n 8,28 --modes graph --out rates_graph.json
    python benchmarks/pack_rates.py --task addition --shard 0/4 ...    # one of four processes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from packed_speed import Packed, draw, sync, time_it  # noqa: E402
from quietlab.models.paper import paper_config  # noqa: E402
from quietlab.runs import write_atomic  # noqa: E402
from quietlab.tasks import get_task  # noqa: E402
from quietlab.train.budget import flops_per_token  # noqa: E402

PAPER_D = (8, 16, 32, 64, 128, 256, 512)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def shapes(args) -> list[tuple[int, int, int, int]]:
    """(d_model, layers, batch, n) of this shard, largest first so that a cut-off run loses the cheap ones."""
    grid = [(d, L, b, n) for d in ints(args.d) for L in ints(args.layers) for b in ints(args.batch) for n in ints(args.n)]
    grid.sort(key=lambda s: -(s[0] * s[0] * s[1] * s[2] * s[3]))
    index, of = (int(x) for x in args.shard.split("/"))
    return grid[index::of]


def measure(task, d: int, layers: int, batch: int, n: int, mode: str, args, device) -> dict:
    cfg = paper_config(len(task.vocab), task.seq_len, d, layers)
    batches = draw(task, n, batch, device)
    holder = {}
    # warm-up (3 eager steps), the capture, one replay: everything before the pack's steady state
    setup = time_it(lambda: holder.update(p=Packed(cfg, n, device, graph=True, compile=mode == "graph-compiled"))
                    or holder["p"].run(batches, 5), device)
    pack = holder["p"]
    rounds, round_ends = [], []
    for _ in range(args.rounds):
        rounds.append(time_it(lambda: pack.run(batches, args.steps, 5), device))
        round_ends.append(time.time())  # when each round ended, to line up processes sharing a card
    s = statistics.median(rounds) / args.steps
    tokens = n * batch * task.seq_len
    return {"task": task.name, "seq_len": task.seq_len, "d_model": d, "layers": layers, "batch_size": batch,
            "n_models": n, "mode": mode, "setup_s": setup, "ms_per_step": 1e3 * s,
            "rounds_ms": [1e3 * r / args.steps for r in rounds], "round_ends_unix": round_ends, "tokens_per_s": tokens / s,
            "flops_per_s": tokens / s * flops_per_token(cfg)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="addition", help="a task under the paper preset (its paper sizes)")
    ap.add_argument("--d", default=",".join(map(str, PAPER_D)))
    ap.add_argument("--layers", default="4,16")
    ap.add_argument("--batch", default="8,64")
    ap.add_argument("--n", default="4", help="models per pack (a list: each is measured)")
    ap.add_argument("--modes", default="graph,graph-compiled")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard", default="0/1", help="i/k: the i-th of k interleaved parts of the shapes")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = get_task(args.task, preset="paper")
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "args": vars(args), "rows": []}
    for d, layers, batch, n in shapes(args):
        for mode in args.modes.split(","):
            try:
                row = measure(task, d, layers, batch, n, mode, args, device)
            except Exception as exc:  # report the shape as failed and go on: GPU time is scarce
                row = {"task": task.name, "d_model": d, "layers": layers, "batch_size": batch, "n_models": n,
                       "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:400]}
            out["rows"].append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                              if k not in ("rounds_ms", "round_ends_unix")}), flush=True)
            write_atomic(args.out, json.dumps(out, indent=1).encode())
            if device.type == "cuda":
                torch.cuda.empty_cache()
    sync(device)


if __name__ == "__main__":
    main()
