"""Calibrates the Monitor's probe cost model (``monitor.probe_cost``): how many times slower per FLOP
the probe solver runs than a training step, on this device.

Times ``--repeats`` plain training steps (median) and ``--repeats`` Monitor probe steps (median; the
weights drift by 5% of each tensor's standard deviation between them, as training would move them, and
each probe warm-starts from the previous one as in a run), then solves probe_cost's linear model
(capture + slowdown · solver FLOPs, in training steps) for the slowdown. Prints one JSON object.

    .venv/bin/python benchmarks/probe_cost.py --task addition --size 12 --d-model 64
    python benchmarks/probe_cost.py --task bfs --size 11 --d-model 256 --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=12, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="time the training step compiled, as the run would")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from quietlab.models import Transformer
    from quietlab.monitor import Monitor
    from quietlab.monitor.monitor import probe_cost
    from quietlab.runs.store import RunStore
    from quietlab.tasks import get_task
    from quietlab.train import TrainConfig
    from quietlab.train.evaluate import masked_loss
    from quietlab.train.schedule import make_optimizer

    if args.threads:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads)
    dev = torch.device(args.device)
    task = get_task(args.task, **{get_task(args.task).knobs[0].name: args.size})
    cfg = TrainConfig(task=args.task, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                      batch_size=args.batch_size, steps=10_000)
    torch.manual_seed(0)
    model = Transformer(cfg.model_config(task)).to(dev)
    opt = make_optimizer(model, 1e-3)
    batch = task.sample(args.batch_size, seed=1)
    tokens = torch.as_tensor(batch.tokens, dtype=torch.long).to(dev)
    mask = torch.as_tensor(batch.loss_mask, dtype=torch.bool).to(dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None

    def forward_loss(x, m):
        if amp is None:
            return masked_loss(model(x), x, m)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return masked_loss(model(x), x, m)

    step_fn = torch.compile(forward_loss, mode="reduce-overhead" if dev.type == "cuda" else None) \
        if args.compile else forward_loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def one_step():
        if args.compile and dev.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        loss = step_fn(tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):  # warm-up (and compilation)
        one_step()
    sync()
    n = 50
    step_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            one_step()
        sync()
        step_times.append((time.perf_counter() - t0) / n)
    step_s = float(np.median(step_times))

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "metrics.sqlite")
        monitor = Monitor(max_overhead=None)
        monitor.attach(model, task, store, cfg)
        g = torch.Generator(device="cpu").manual_seed(0)
        probe_times = []
        for i in range(args.repeats + 1):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_((torch.randn(p.shape, generator=g) * 0.05 * p.float().std().item()).to(p.device, p.dtype))
            sync()
            t0 = time.perf_counter()
            monitor.probe(i, model)
            sync()
            if i:  # the first one starts cold
                probe_times.append(time.perf_counter() - t0)
        store.close()
    probe_s = float(np.median(probe_times))
    shape = (model, monitor.feature_set, monitor.probe_examples, len(monitor.train_idx),
             monitor.probe_kwargs["max_iter"], args.batch_size, task.seq_len)
    fixed = probe_cost(*shape, device_type=dev.type, slowdown=0.0)
    per_unit = probe_cost(*shape, device_type=dev.type, slowdown=1.0) - fixed
    out = {"task": args.task, "size": args.size, "d_model": args.d_model, "layers": args.layers,
           "batch_size": args.batch_size, "device": str(dev), "compile": args.compile,
           "step_s": step_s, "step_s_all": step_times, "probe_s": probe_s, "probe_s_all": probe_times,
           "probe_in_steps": probe_s / step_s, "capture_in_steps": fixed, "solver_flops_in_steps": per_unit,
           "slowdown": (probe_s / step_s - fixed) / per_unit}
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
