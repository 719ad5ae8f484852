"""Monitor overhead: the same training run with and without the Monitor, wall time compared.

By default the run is the demo's kind on CPU: 8-bit addition, a 4-layer d_model 64 Transformer++,
batch 64, the training loop's default evaluation and checkpoint schedule (``--task bfs --size 11
--device cuda --compile --d-model 256`` is the GPU setting of the BFS runs). It is trained

- without hooks (``plain``),
- with ``Monitor()`` at its defaults (log schedule, 8 probes per decade, 2000 probe examples, thinned
  until the probes' estimated cost is at most 5% of the training compute),
- with ``Monitor(max_overhead=None)`` (``strict``: every scheduled probe, whatever it costs),

and the script prints each wall time and CPU time (of this process, all threads: steadier than wall
time on a shared machine), the overhead relative to the plain run, the monitor's own measured time, and
how many probes ran. The runs train the same model on the same data (the monitor consumes no random
numbers), so the difference is the monitor's cost.

    .venv/bin/python benchmarks/monitor_overhead.py --steps 2000 --threads 2
    python benchmarks/monitor_overhead.py --task bfs --size 11 --d-model 256 --steps 20000 --device cuda --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=8, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--no-strict", action="store_true", help="skip the run without an overhead budget")
    args = ap.parse_args()

    import torch

    from quietlab.monitor import Monitor
    from quietlab.runs import RunFolder
    from quietlab.tasks import get_task
    from quietlab.train import TrainConfig, train

    from quietlab.train.threads import set_cpu_threads
    set_cpu_threads(args.threads)
    size_knob = get_task(args.task).knobs[0].name
    cfg = TrainConfig(task=args.task, task_sizes={size_knob: args.size}, d_model=args.d_model, n_layers=args.layers,
                      n_heads=4, lr=args.lr, batch_size=args.batch_size, steps=args.steps, device=args.device, seed=0,
                      compile=args.compile)
    root = Path(tempfile.mkdtemp(prefix="quietlab-overhead-"))
    runs = [("plain", None), ("monitor (defaults)", lambda: Monitor())]
    if not args.no_strict:
        runs.append(("monitor (strict schedule)", lambda: Monitor(max_overhead=None)))
    where = (torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads")
    print(f"{args.task} {size_knob}={args.size}, d_model {args.d_model}, {args.layers} layers, batch {args.batch_size}, "
          f"{args.steps} steps, {where}{', compiled' if args.compile else ''}")
    results = {}
    try:
        if args.compile:  # compile once untimed, so both timed runs find the compiler's caches warm
            train(dataclasses.replace(cfg, steps=min(args.steps, 50)), root / "warmup", progress=False)
        for name, make in runs:
            hooks = make() if make else None
            run_dir = root / name.split()[0] / str(len(results))
            t0, c0 = time.perf_counter(), time.process_time()
            final = train(cfg, run_dir, hooks=hooks, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            with RunFolder(run_dir).store() as store:
                probed = sorted({r[0] for r in store.probes()})
                classes = {k: v["class"] for k, v in store.results("feature_class").items()}
            results[name] = (wall, cpu)
            line = (f"{name:26s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  eval/loss {final['eval/loss']:.4f}  "
                    f"exact {final['eval/exact_match']:.3f}")
            if hooks is not None:
                base_wall, base_cpu = results["plain"]
                pad = " " * 27
                line += (f"\n{pad}overhead vs plain: wall {100 * (wall - base_wall) / base_wall:+5.1f}%, "
                         f"cpu {100 * (cpu - base_cpu) / base_cpu:+5.1f}%"
                         f"\n{pad}monitor's own time {hooks.spent:.1f} s = "
                         f"{100 * hooks.spent / max(wall - hooks.spent, 1e-9):.1f}% of the rest of the run: "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in hooks.timings.items())
                         + f"\n{pad}{len(probed)} probe steps {probed}, {hooks.deferred} deferrals"
                         + f"\n{pad}classes {classes}")
            print(line, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
