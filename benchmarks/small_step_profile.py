"""Where one small model's training step spends its GPU time (issue 14's "one small model alone": d_model
128 x 4 layers, addition-16, batch 64): ``packed_speed.py``'s step in a mode (default ``graph-compiled``, the
whole step one CUDA graph, forward and loss compiled inside it), warmed up, then torch's profiler around
``--profile-steps`` steps. Writes the profiler's table of kernels by device time, the kernels' count and
device time per step, and the step's wall time (median of rounds, unprofiled). ``--models N`` profiles a pack
of N such models instead (``packed_speed.py``'s packed arm: ``--models 64 --d-model 64``; graph modes only).

    python benchmarks/small_step_profile.py --out $OUT/small_step_profile.txt          # on a GPU
    python benchmarks/small_step_profile.py --out /tmp/s.txt --mode graph --device cpu --steps 3 --profile-steps 2
    python benchmarks/small_step_profile.py --paper --task mst --models 4 --d-model 8 --layers 16 --mode graph --out p.txt

``--paper``: the task under the paper preset and the paper's model (models/paper.py: paper_config), as
pack_rates.py times the paper grid's packs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import packed_speed  # noqa: E402
from quietlab.models import TransformerConfig  # noqa: E402
from quietlab.tasks import get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="graph-compiled", help="a packed_speed.py single-model mode")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", type=int, default=1, help="a pack of this many models (graph, graph-compiled)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=45)
    ap.add_argument("--pack-attention", default=None, help="as packed_speed.py's (e.g. math, or flash_attention)")
    ap.add_argument("--task", default="addition", help="a quietlab task at its default sizes (addition: 16 bits)")
    ap.add_argument("--decompose-bmm", type=int, default=0, help="as packed_speed.py's")
    ap.add_argument("--paper", action="store_true", help="the task's paper preset and the paper's model, as pack_rates.py")
    args = ap.parse_args()
    packed_speed.PACK_ATTENTION = args.pack_attention
    if args.decompose_bmm:
        packed_speed.decompose_small_bmm(args.decompose_bmm)
    device = torch.device(args.device)
    if args.paper:
        from quietlab.models.paper import paper_config

        task = get_task(args.task, preset="paper")
        cfg = paper_config(len(task.vocab), task.seq_len, args.d_model, args.layers)
    else:
        task = get_task(args.task, **({"n_bits": 16} if args.task == "addition" else {}))
        cfg = TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model,
                                n_layers=args.layers, n_heads=4)
    batches = packed_speed.draw(task, args.models, args.batch_size, device)
    if args.models > 1:
        if args.mode not in ("graph", "graph-compiled"):
            raise SystemExit(f"error: --models {args.models} needs --mode graph or graph-compiled, got {args.mode!r}")
        trainer = packed_speed.Packed(cfg, args.models, device, graph=True, compile=args.mode == "graph-compiled")
        run = lambda steps: trainer.run(batches, steps)  # noqa: E731
    else:
        trainer = packed_speed.single_trainer(cfg, args.mode, device)
        run = lambda steps: packed_speed.run_single(trainer, args.mode, batches, steps)  # noqa: E731
    run(10)
    times = [packed_speed.time_it(lambda: run(args.steps), device) for _ in range(args.rounds)]
    ms = 1e3 * statistics.median(times) / args.steps

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(args.profile_steps)
        packed_speed.sync(device)
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = len(events) / args.profile_steps
    device_ms = sum(e.device_time for e in events) / 1e3 / args.profile_steps
    table = prof.key_averages().table(sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total",
                                      row_limit=args.rows, max_name_column_width=100)
    head = (f"{'paper preset and model, ' if args.paper else ''}mode {args.mode}, attention {args.pack_attention or 'default'}, decompose_bmm {args.decompose_bmm}, {args.models} model(s) of d_model {args.d_model} x {args.layers}, {args.task} ({task.seq_len} tokens), batch {args.batch_size}: "
            f"{ms:.3f} ms a step (median of {args.rounds} rounds of {args.steps}, rounds {[round(1e3 * t / args.steps, 3) for t in times]}); "
            f"under the profiler {kernels:.0f} device events a step, {device_ms:.3f} ms of device time a step\n")
    Path(args.out).write_text(head + table)
    print(head + table)


if __name__ == "__main__":
    main()
