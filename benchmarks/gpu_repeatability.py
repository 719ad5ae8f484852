"""Same seed, same run? The paper preset's BFS pack, trained as ``paper_ablation.py`` trains it, twice.

Two runs of the 48,000-step pack (seeds 0-2, the same settings) on an H200 ended apart: seed 0 at 99.7% and
99.9% exact match, its queue ablation at 37.0% and 39.8% (README). This script tells whether training on this
device repeats itself and what making it repeat costs. Arms, each run twice from scratch in fresh run
folders, each run in its own process:

- ``default``: as paper_ablation.py trains with ``--no-deterministic`` (compiled forward inside the step's CUDA graph
  on a GPU);
- ``deterministic``: the same under ``paper_ablation.make_deterministic`` (its default since 2026-12-04: torch's
  deterministic algorithms, warn-only, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``; Inductor then avoids atomic
  scatter-adds, flash attention's backward its atomic accumulation).

Per arm: whether the two runs' per-step training losses of every seed are equal bit for bit, the largest
difference and the step it first appears at, and the training time per step. Writes JSON (``--out``).

    python benchmarks/gpu_repeatability.py --out $OUT/gpu_repeatability.json --steps 2000     # on a GPU
    python benchmarks/gpu_repeatability.py --out /tmp/rep.json --tiny --device cpu          # every stage, tiny
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("default", "deterministic")


def one_run(arm: str, steps: int, seeds: list[int], device: str, tiny: bool, run_root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paper_ablation import make_deterministic, parser, settings

    from quietlab.runs.folder import RunFolder
    from quietlab.train.loop import TrainConfig
    from quietlab.train.packed import train_packed

    if arm == "deterministic":
        make_deterministic()
    # paper_ablation's own settings, with one evaluation and one checkpoint (at the end): training alone is timed
    args = parser().parse_args(["--out", str(run_root), "--tasks", "bfs", "--bfs-steps", str(steps), "--device", device]
                               + (["--tiny"] if tiny else []))
    cfg = {**settings(args)["bfs"]["cfg"], "eval_every": steps, "eval_per_decade": 0, "eval_examples": 100,
           "checkpoint_every": steps, "checkpoint_per_decade": 0}
    cfgs = [TrainConfig(**cfg, seed=s) for s in seeds]
    dirs = [run_root / f"bfs-s{s}" for s in seeds]
    t0 = time.perf_counter()
    train_packed(cfgs, dirs, progress=False)
    train_s = time.perf_counter() - t0
    losses = {}
    for s, d in zip(seeds, dirs):
        with RunFolder(d).store(readonly=True) as store:
            losses[s] = store.series("train/loss")[1]
    return {"train_s": train_s, "losses": losses}


def compare(a: dict, b: dict) -> dict:
    out = {}
    for s in a["losses"]:
        x, y = a["losses"][s], b["losses"][s]
        diff = [abs(u - v) for u, v in zip(x, y)]
        first = next((i + 1 for i, d in enumerate(diff) if d != 0), None)
        out[s] = {"equal": x == y, "max_abs_diff": max(diff, default=0.0), "first_differing_step": first,
                  "final": [x[-1], y[-1]]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="the JSON file written")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--tiny", action="store_true", help="d_model 16 x 2, 5-node graphs (a CPU check of every stage)")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = 20 if args.tiny else args.steps
    if args.arm:  # one run, in this process; its result as the last line of stdout
        res = one_run(args.arm, steps, seeds, args.device, args.tiny, Path(args.run_root))
        print(json.dumps(res))
        return
    if not args.out:
        raise SystemExit("--out: the JSON file to write is required")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: {', '.join(unknown)} not one of {', '.join(ARMS)}")
    result = {"device": args.device, "steps": steps, "seeds": seeds, "tiny": args.tiny, "arms": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        runs = []
        for rep in range(2):
            with tempfile.TemporaryDirectory(prefix=f"rep-{arm}-{rep}-") as root:
                cmd = [sys.executable, __file__, "--arm", arm, "--run-root", root, "--steps", str(steps),
                       "--seeds", args.seeds, "--device", args.device] + (["--tiny"] if args.tiny else [])
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{arm} run {rep} failed:\n{done.stderr[-3000:]}")
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        per_seed = compare(*runs)
        result["arms"][arm] = {"train_s": [r["train_s"] for r in runs],
                               "ms_per_step": [1e3 * r["train_s"] / steps for r in runs],
                               "repeats_bit_for_bit": all(v["equal"] for v in per_seed.values()), "seeds": per_seed}
        print(f"{arm}: repeats bit for bit: {result['arms'][arm]['repeats_bit_for_bit']}; "
              + "; ".join(f"seed {s}: max |diff| {v['max_abs_diff']:.3g} (first at step {v['first_differing_step']})"
                          for s, v in per_seed.items())
              + f"; {', '.join(f'{t:.1f}' for t in result['arms'][arm]['train_s'])} s to train", flush=True)
        out.write_text(json.dumps(result, indent=1))  # after every arm: a cut call keeps what it measured


if __name__ == "__main__":
    main()
