"""What compiling the training step costs before its first step, and what it buys per step, for two scopes:

- ``model``: forward + loss of the whole model as one graph (what ``quietlab train --compile`` did until
  2026-12-02), on CUDA with CUDA graphs (mode="reduce-overhead");
- ``nested``: as ``model``, with the block marked ``torch.compiler.nested_compile_region``, so that the
  alike blocks are traced and compiled once inside the one graph;
- ``blocks``: each transformer block compiled on its own; the blocks are alike, so their code is compiled
  once and reused (regional compilation), embedding, head and loss stay eager;
- ``model_pool``: as ``model``, with Inductor's pool of compile workers started before the task and the
  model are made (torch starts it only once Dynamo hands the traced graph to Inductor);
- ``nested_pool``: as ``nested``, with the pool started first (``model_pool``'s like-for-like rival).

Each arm's JSON row also has ``compile_breakdown``: seconds per phase that torch's own timers recorded
(``torch._dynamo.utils.compilation_time_metrics``, summed over calls; phases nest, so they do not add up).

Each arm runs in a fresh process, first with an empty inductor cache (``cold``: a shape's first run on a
machine) then again on the cache that run left (``warm``: every later run of that shape). Per arm and
cache: seconds from the model's creation to the end of step 1 (compilation, CUDA graph recording), the
mean step time over steps 50..450, and the projected ratio of a 20,000-step run's whole training time to
its steady steps. The step is the loop's: bf16 autocast on CUDA, fused AdamW, clip 1.0.

    python benchmarks/compile_cost.py --out benchmarks/results/compile_cost.json
    python benchmarks/compile_cost.py --scopes model_pool --inductor nopm:pattern_matcher=False --states cold --out knobs.json

``--inductor NAME:KEY=VALUE,...`` adds an arm: ``model_pool`` with those ``torch._inductor.config`` settings.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time

from quietlab.runs import write_atomic


def inductor_settings(text: str) -> dict:
    """``KEY=VALUE,KEY=VALUE`` (values as Python literals) as a dict of ``torch._inductor.config`` settings."""
    return {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in text.split(",") if item)}


def apply_inductor(settings: dict) -> None:
    """Set ``torch._inductor.config`` settings; an unknown one is one line of error."""
    import torch._inductor.config as inductor_config

    for key, value in settings.items():
        if not hasattr(inductor_config, key):
            raise SystemExit(f"error: --inductor: torch._inductor.config has no setting {key!r}")
        setattr(inductor_config, key, value)


def one_arm(scope: str, task: str, n_nodes: int, d_model: int, layers: int, batch: int, steps: int, device: str,
            profile: bool = False, inductor: dict | None = None) -> dict:
    import torch

    apply_inductor(inductor or {})  # e.g. pattern_matcher=False: what each costs at compile time

    from quietlab.models import Transformer, TransformerConfig
    from quietlab.tasks import get_task
    from quietlab.train.evaluate import masked_loss
    from quietlab.train.schedule import make_optimizer

    profiler = None
    if profile:  # the Python functions behind the time to the end of step 1 (cProfile slows Python-heavy parts)
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    if scope in ("model_pool", "nested_pool"):
        from torch._inductor.async_compile import maybe_warm_pool
        maybe_warm_pool()
    dev = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    t = get_task(task, n_nodes=n_nodes) if task != "addition" else get_task(task, n_bits=n_nodes)
    b = t.sample(batch * 8, seed=0, split="train")
    tokens = torch.as_tensor(b.tokens, dtype=torch.long, device=dev).view(8, batch, -1)
    mask = torch.as_tensor(b.loss_mask, dtype=torch.bool, device=dev).view(8, batch, -1)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=len(t.vocab), seq_len=t.seq_len, d_model=d_model,
                                          n_layers=layers, n_heads=4)).to(dev)
    opt = make_optimizer(model, 1e-4)
    cuda = dev.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else None

    def forward_loss(x, m):
        if amp is None:
            return masked_loss(model(x), x, m)
        with amp():
            return masked_loss(model(x), x, m)

    mode = "reduce-overhead" if cuda else None
    if scope in ("model", "nested", "model_pool", "nested_pool"):
        if scope in ("nested", "nested_pool"):  # the blocks traced once and reused inside the one graph
            from quietlab.models.transformer import Block
            Block.forward = torch.compiler.nested_compile_region(Block.forward)
        step_loss = torch.compile(forward_loss, mode=mode)
    elif scope == "blocks":
        for block in model.blocks:
            block.compile(mode=mode)
        step_loss = forward_loss
    else:
        step_loss = forward_loss

    def step(i):
        if cuda and scope != "eager":
            torch.compiler.cudagraph_mark_step_begin()
        loss = step_loss(tokens[i % 8], mask[i % 8])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step(0)
    sync()
    first_s = time.perf_counter() - t0
    hot = None
    if profiler is not None:
        import io
        import pstats
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(30)
        hot = text.getvalue()
    for i in range(1, 50):
        step(i)
    sync()
    t1 = time.perf_counter()
    for i in range(50, 50 + steps):
        loss = step(i)
    sync()
    step_ms = (time.perf_counter() - t1) / steps * 1e3
    from torch._dynamo.utils import compilation_time_metrics
    breakdown = {name: round(sum(times), 3) for name, times in compilation_time_metrics.items()}
    return {"scope": scope, "inductor": inductor or {}, "first_step_s": first_s, "step_ms": step_ms, "loss": float(loss), "compile_breakdown": breakdown,
            "ratio_20k": (first_s + 20000 * step_ms / 1e3) / (20000 * step_ms / 1e3), "first_step_profile": hot}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="bfs")
    ap.add_argument("--size", type=int, default=11)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scopes", default="model,blocks")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inductor", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="one more arm, scope model_pool with these torch._inductor.config settings (values as Python "
                         "literals), named NAME; repeatable")
    ap.add_argument("--states", default="cold,warm", help="cold (empty caches), warm (the cache cold left), or both")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile each arm's way to the end of step 1: the 60 costliest functions (cumulative) "
                         "and the 30 costliest alone (own time) in its row, as first_step_profile (the figures are then slower than unprofiled)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.arm:
        options = json.loads(os.environ.get("COMPILE_COST_INDUCTOR", "{}"))
        print(json.dumps(one_arm(args.arm, args.task, args.size, args.d_model, args.layers, args.batch_size,
                                 args.steps, args.device, args.profile, options)))
        return
    arms = [(scope, scope, {}) for scope in args.scopes.split(",") if scope]
    for spec in args.inductor:
        name, _, settings = spec.partition(":")
        arms.append((name, "model_pool", inductor_settings(settings)))
    rows = []
    for name, scope, options in arms:
        cache = tempfile.mkdtemp(prefix=f"inductor-{name}-")
        for state in args.states.split(","):  # cold: empty Inductor and Triton caches
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton"),
                   "COMPILE_COST_INDUCTOR": json.dumps(options)}
            cmd = [sys.executable, __file__, "--arm", scope, "--task", args.task, "--size", str(args.size),
                   "--d-model", str(args.d_model), "--layers", str(args.layers), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--device", args.device] + (["--profile"] if args.profile else [])
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                rows.append({"scope": scope, "arm": name, "cache": state, "error": res.stderr[-2000:]})
                print(f"{name} {state}: failed\n{res.stderr[-2000:]}", flush=True)
                continue
            row = {**json.loads(res.stdout.strip().splitlines()[-1]), "arm": name, "cache": state}
            rows.append(row)
            if args.out:  # after every arm: a call cut short keeps what it measured
                write_atomic(args.out, json.dumps({"settings": vars(args), "rows": rows}, indent=1).encode())
            print(f"{name:7s} {state}: first step after {row['first_step_s']:.1f} s, {row['step_ms']:.3f} ms/step, "
                  f"20k-step run / steady {row['ratio_20k']:.3f}", flush=True)


if __name__ == "__main__":
    main()
