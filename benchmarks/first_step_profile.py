"""Where the first training step's time goes: ``train()`` of a short compiled run under cProfile.

Run once with a fresh inductor cache (``--cache DIR`` that does not exist yet: cold) and once more with
the same DIR (warm). Prints ``train/first_step_s`` from the run's store, the time of the phases that
compiling is made of (cumulative seconds of the functions that start each phase: Dynamo's frame
conversion, AOTAutograd, Inductor's compile, waiting for Triton workers, CUDA-graph recording, the
first data chunk) and the top functions by cumulative time.

    python benchmarks/first_step_profile.py --cache /tmp/ind --out cold.txt    # cold
    python benchmarks/first_step_profile.py --cache /tmp/ind --out warm.txt    # warm
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

PHASES = {  # phase: substrings of "file:function" whose cumulative time is that phase's
    "dynamo (frame conversion)": ["convert_frame.py:_compile"],
    "aot_autograd": ["aot_autograd.py:aot_module_simplified", "aot_autograd.py:create_aot_dispatcher_function"],
    "inductor compile_fx": ["compile_fx.py:compile_fx_inner", "compile_fx.py:fx_codegen_and_compile"],
    "triton/async compile wait": ["async_compile.py:wait", "async_compile.py:triton"],
    "cudagraph record": ["cudagraph_trees.py:record_function", "cudagraph_trees.py:_record"],
    "first data chunk": ["stream.py:batch", "loop.py:batch"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="TORCHINDUCTOR_CACHE_DIR (fresh: a cold compile)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cold = not Path(args.cache).exists()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(args.cache) / "triton"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from quietlab.runs.folder import RunFolder
    from quietlab.train.loop import TrainConfig, train

    cfg = TrainConfig(task="bfs", task_sizes={"n_nodes": 11}, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                      lr=1e-4, batch_size=64, steps=args.steps, seed=0, device=args.device, compile=True)
    run = Path(tempfile.mkdtemp(prefix="first_step_")) / "run"
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    train(cfg, run, progress=False)
    prof.disable()
    wall = time.perf_counter() - t0
    with RunFolder(run).store(readonly=True) as store:
        first = store.series("train/first_step_s")[1]
    stats = pstats.Stats(prof)
    lines = [f"{'cold' if cold else 'warm'} inductor cache {args.cache}; train() {wall:.2f} s for {args.steps} steps; "
             f"train/first_step_s {first[0] if first else float('nan'):.2f}"]
    for phase, keys in PHASES.items():
        best = 0.0
        for (file, _, fn), (_, _, _, cum, _) in stats.stats.items():
            if any(k == f"{Path(file).name}:{fn}" for k in keys):
                best = max(best, cum)
        lines.append(f"  {phase:28s} {best:7.2f} s")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
    text = "\n".join(lines) + "\n\n" + buf.getvalue()
    Path(args.out).write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
