"""Where `quietlab.watch`'s wall overhead goes, step by step: is a training step slower under `watch`?

The GPT-2-shaped model of ``watch_overhead.py`` (``build``), trained ``--steps`` steps on 8-bit
addition, plain and watched, alternately (``--pairs`` times each). Per step it times the training
step itself (forward, loss, backward, AdamW) and, in the watched arm, ``Watch.step`` less the time the
monitor's own timers counted (``Monitor.spent``): the per-step work outside them. Prints one line per arm.

    .venv/bin/python benchmarks/watch_step_cost.py --steps 300 --pairs 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def arm(args, task, watched: bool) -> list[tuple[float, float]]:
    import torch

    import quietlab
    from quietlab.train.evaluate import masked_loss
    from watch_overhead import build

    torch.manual_seed(0)
    model, forward, taps, as_inputs = build(args, task, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batch = task.sample(args.batch_size * 50, seed=10, split="train")
    probe = task.sample(args.examples, seed=10**6, split="test")
    w = quietlab.watch(model, Path(tempfile.mkdtemp()) / "run", taps=taps,
                       inputs=as_inputs(torch.as_tensor(probe.tokens).long()), features=probe.features,
                       steps=args.steps) if watched else None
    times = []
    for step in range(1, args.steps + 1):
        i = (step % 50) * args.batch_size
        tokens = torch.as_tensor(batch.tokens[i : i + args.batch_size]).long()
        mask = torch.as_tensor(batch.loss_mask[i : i + args.batch_size])
        t0, spent = time.perf_counter(), w.monitor.spent if w else 0.0
        loss = masked_loss(forward(tokens), tokens, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        if w is not None:
            w.step(step, loss=loss.detach())
        outside = time.perf_counter() - t1 - ((w.monitor.spent - spent) if w else 0.0)
        times.append((t1 - t0, outside))
    if w is not None:
        w.close()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    args.model, args.d_model, args.layers, args.lr, args.batch_size, args.examples = "gpt2", 128, 4, 1e-3, 64, 2000

    from quietlab.tasks import get_task

    task = get_task("addition", n_bits=8)
    for _ in range(args.pairs):
        for watched in (False, True):
            t = arm(args, task, watched)
            print(f"{'watched' if watched else 'plain  '}: training step median {1e3 * statistics.median(a for a, _ in t):.1f} "
                  f"ms, mean {1e3 * statistics.mean(a for a, _ in t):.1f} ms; watch's work outside the monitor's "
                  f"timers {1e3 * statistics.mean(b for _, b in t):.2f} ms a step", flush=True)


if __name__ == "__main__":
    main()
