"""Where the paper preset's packed step spends its GPU time: ``paper_ablation.py``'s BFS pack (three seeds,
d_model 128 x 4, batch 64, fp32 without TF32, forward compiled inside the step's CUDA graph) trained for
``--steps`` steps by ``train_packed``, with torch's profiler around ``--profile-steps`` of its steps once it
is warm (no evaluation or checkpoint in between). Writes the profiler's table of kernels by device time and the
pack's steady step time.

    python benchmarks/pack_step_profile.py --out $OUT/pack_step_profile.txt                 # on a GPU
    python benchmarks/pack_step_profile.py --out /tmp/p.txt --tiny --steps 30 --profile-from 10   # CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--profile-from", type=int, default=600, help="the step call at which profiling starts")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="paper_ablation's tiny sizes (a CPU smoke run)")
    ap.add_argument("--rows", type=int, default=40, help="rows of the profiler's table")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                    help="torch's deterministic algorithms, as paper_ablation.py trains (default on)")
    args = ap.parse_args()
    if not 1 <= args.profile_from <= args.steps - args.profile_steps + 1 or args.profile_steps < 1:
        ap.error(f"--profile-from {args.profile_from} and --profile-steps {args.profile_steps} must fit inside "
                 f"--steps {args.steps}")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paper_ablation import make_deterministic, parser, settings

    from quietlab.runs.folder import RunFolder
    from quietlab.train import packed
    from quietlab.train.loop import TrainConfig

    if args.deterministic:
        make_deterministic()
    pa_args = parser().parse_args(["--out", "/tmp/unused", "--tasks", "bfs", "--bfs-steps", str(args.steps)]
                                  + (["--tiny"] if args.tiny else []))
    spec = settings(pa_args)["bfs"]
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    state = {"calls": 0, "prof": None, "t": None}
    step_call = packed.PackedStep.__call__

    def profiled(self, *a):
        state["calls"] += 1
        if state["calls"] == args.profile_from:
            if cuda:
                torch.cuda.synchronize()
            state["prof"] = torch.profiler.profile(activities=activities)
            state["prof"].__enter__()
            state["t"] = time.perf_counter()
        out = step_call(self, *a)
        if state["calls"] == args.profile_from + args.profile_steps - 1:
            if cuda:
                torch.cuda.synchronize()
            state["t"] = time.perf_counter() - state["t"]
            state["prof"].__exit__(None, None, None)
        return out

    packed.PackedStep.__call__ = profiled
    with tempfile.TemporaryDirectory() as root:
        quiet = dict(eval_every=10**9, eval_per_decade=0, checkpoint_every=10**9, checkpoint_per_decade=0)  # steps only
        cfgs = [TrainConfig(**{**spec["cfg"], **quiet, "device": "cuda" if cuda else "cpu"}, seed=s) for s in (0, 1, 2)]
        dirs = [Path(root) / f"bfs-s{s}" for s in (0, 1, 2)]
        t0 = time.perf_counter()
        packed.train_packed(cfgs, dirs)
        wall = time.perf_counter() - t0
        with RunFolder(dirs[0]).store(readonly=True) as store:
            rates = store.series("train/tokens_per_s")[1]
    prof = state["prof"]
    steady = statistics.median(rates[len(rates) // 2:]) if rates else float("nan")
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    lines = [f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
             f"deterministic algorithms {'on' if args.deterministic else 'off'}",
             f"{args.steps} steps in {wall:.1f} s; steady (median of the logged rates, second half) "
             f"{steady:.0f} "
             f"tokens/s a model; profiled steps {args.profile_from}..{args.profile_from + args.profile_steps - 1}: "
             f"{1e3 * state['t'] / args.profile_steps:.2f} ms a step under the profiler", "",
             prof.key_averages().table(sort_by=sort, row_limit=args.rows)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:2]))


if __name__ == "__main__":
    main()
