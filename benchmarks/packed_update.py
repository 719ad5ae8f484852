"""What a pack's update (per-model clip + AdamW, PackedStep.update) costs on the CPU, and how many copies
its forward and backward make: the paper's model on MST (paper preset), packs of the given shapes.

For each shape: the update's median time over --rounds calls (after one untimed), the number of top-level
aten calls in one update under torch.profiler (each is one kernel launch on a GPU), and the aten::clone
calls in one forward and backward. ``--src`` runs another checkout's quietlab (e.g. a ``git archive`` of an
older commit) for a before/after comparison; its PackedAdamW may take the parameter dict (before
2026-12-05's flat layout) or the pack.

    .venv/bin/python benchmarks/packed_update.py --out benchmarks/results/packed_update.json
    git archive COMMIT src | tar x -C /tmp/old && .venv/bin/python benchmarks/packed_update.py --src /tmp/old/src --out old.json
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    ap.add_argument("--shapes", default="8x16x4,64x4x28,64x4x4", help="d_model x layers x models, comma-separated")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from quietlab.models import Transformer
    from quietlab.models.paper import paper_config
    from quietlab.tasks import get_task
    from quietlab.train.evaluate import masked_loss
    from quietlab.train.packed import PackedAdamW, PackedModels, PackedStep
    from quietlab.train.threads import set_cpu_threads

    set_cpu_threads(1)
    task = get_task("mst", preset="paper")
    takes_pack = "packed" in inspect.signature(PackedAdamW.__init__).parameters
    rows = []
    for shape in args.shapes.split(","):
        d, layers, n = (int(x) for x in shape.split("x"))
        models = []
        for i in range(n):
            torch.manual_seed(i)
            models.append(Transformer(paper_config(len(task.vocab), task.seq_len, d, layers)))
        packed = PackedModels(models)
        opt = PackedAdamW(packed if takes_pack else packed.params, 1e-3, 0.1, None, (0.9, 0.95))
        step = PackedStep(packed, opt, lambda m, t, k: masked_loss(m(t), t, k), 1.0)
        b = task.sample(n * args.batch_size, seed=1)
        tokens = torch.as_tensor(b.tokens, dtype=torch.long).view(n, args.batch_size, -1)
        mask = torch.as_tensor(b.loss_mask).view(n, args.batch_size, -1)

        def backward():
            packed.zero_grad()
            packed.losses(step.loss_fn, tokens, mask).sum().backward()

        times = []
        for r in range(args.rounds + 1):
            backward()
            t = time.perf_counter()
            step.update()
            if r:
                times.append(time.perf_counter() - t)
        backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step.update()
        update_calls = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            backward()
        counts = collections.Counter(e.name for e in prof.events())
        rows.append({"d_model": d, "layers": layers, "models": n, "update_ms": 1e3 * statistics.median(times),
                     "update_aten_calls": update_calls, "forward_backward_clones": counts.get("aten::clone", 0)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"src": args.src, "torch": torch.__version__, "batch_size": args.batch_size, "rounds": args.rounds, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
