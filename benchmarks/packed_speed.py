"""Packed training and the small-model step: many models per GPU, one launch per step.

    .venv/bin/python benchmarks/packed_speed.py --device cuda --out benchmarks/results/packed_speed.json
    .venv/bin/python benchmarks/packed_speed.py --quick --device cpu --out /tmp/packed.json   # CPU smoke run

Arms (batch 64, addition-16, quietlab's recipe: forward, loss on the answer tokens, backward, clip 1.0, AdamW):

  packed   --n (64) models of d_model 64 x 4 layers trained at once (train/packed.py: vmap over stacked
           weights, per-model AdamW and clip), against the same models trained one after another in the
           same process, each for the same number of steps. Aggregate tokens/s, counting everything a sweep
           pays per model (building it, the warm-up steps, capturing its graph) and also the steady state.
  small    one d_model 128 x 4 model: ms per step.
  large    one d_model 512 x 16 model against the paper's setting (eager fp32, written-out attention, no
           TF32: benchmarks/train_speed.py's paper arm), tokens/s side by side and MFU.

Modes of one step:
  eager     quietlab's step without compilation (bf16 autocast on GPU, fused SDPA, fused AdamW)
  compiled  forward + loss under torch.compile with CUDA graphs, as `quietlab train --compile` (train_speed.py)
  graph     the whole step (forward, loss, backward, clip, AdamW) captured as one CUDA graph and replayed:
            train/packed.py's PackedStep (for one model: a pack of one); no host sync inside the step.
            On the CPU it runs eagerly (the same code, no graph).
  graph-compiled  the same with forward and loss through torch.compile (fused kernels) inside the graph
A mode that fails is reported with its error and the others still run.
  paper     train_speed.py's paper arm.

Batches are drawn once before timing and cycled (data generation is measured separately as "data x":
how many times faster one CPU thread draws examples than the step consumes them). Timings on a busy
machine are noisy; each figure is the median of --rounds interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_speed  # noqa: E402  (its paper arm, MFU peak and data rate)
from quietlab.models import Transformer, TransformerConfig  # noqa: E402
from quietlab.models.paper import paper_config  # noqa: E402
from quietlab.tasks import get_task  # noqa: E402
from quietlab.train.budget import flops_per_token  # noqa: E402
from quietlab.train.evaluate import masked_loss  # noqa: E402
from quietlab.train.packed import PackedAdamW, PackedModels, PackedStep, math_attention_pays  # noqa: E402
from quietlab.train.schedule import param_groups  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw(task, n_models: int, batch: int, device, n_batches: int = 4):
    """n_batches of (tokens, mask), each (n_models, batch, T)."""
    out = []
    for i in range(n_batches):
        b = task.sample(n_models * batch, seed=1000 + i)
        tokens = torch.as_tensor(b.tokens, dtype=torch.long, device=device).view(n_models, batch, -1)
        mask = torch.as_tensor(b.loss_mask, device=device).view(n_models, batch, -1)
        out.append((tokens, mask))
    return out


class Packed:
    """n models as one PackedStep (graph: the whole step captured as one CUDA graph on GPU)."""

    def __init__(self, cfg: TransformerConfig, n: int, device, graph: bool, seed0: int = 0, compile: bool = False):
        models = []
        for i in range(n):
            torch.manual_seed(seed0 + i)
            models.append(Transformer(cfg).to(device))
        names = {id(p): k for k, p in models[0].named_parameters()}
        decayed = {names[id(p)] for p in param_groups(models[0], 1.0)[0]["params"]}
        self.packed = PackedModels(models)
        del models
        self.opt = PackedAdamW(self.packed, 1e-3, 0.1, decayed, (0.9, 0.95))
        amp = torch.bfloat16 if device.type == "cuda" else None

        def loss_fn(model, tokens, mask):
            with torch.autocast(device.type, dtype=amp, cache_enabled=False) if amp else contextlib.nullcontext(), \
                    attention_backends():
                logits = model(tokens)
            return masked_loss(logits, tokens, mask)

        self.step = PackedStep(self.packed, self.opt, loss_fn, 1.0, cuda_graph=graph and device.type == "cuda",
                               compile=compile, math_attention=math_attention_pays(n, cfg.seq_len))

    def run(self, batches, steps: int, start: int = 0) -> torch.Tensor:
        for i in range(steps):
            tokens, mask = batches[(start + i) % len(batches)]
            losses = self.step(tokens, mask)
        return losses


# --pack-attention: the attention kernels a pack's forward may use, overriding the pack's own choice (on a GPU,
# train/packed.py: flash, or math for compiled packs where math_attention_pays); "math" leaves the written-out
# attention to the compiler, "flash_attention" forces flash
PACK_ATTENTION = None


def attention_backends():
    if PACK_ATTENTION is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name.upper()) for name in PACK_ATTENTION.split(",")])


def decompose_small_bmm(max_other: int) -> None:
    """--decompose-bmm: Inductor's ``decompose_mm_pass`` for batched products of at least 10,240 matrices
    with two of their three sizes under ``max_other`` (default 32): written out as a broadcast multiply and
    a sum, which the compiler fuses, in place of cuBLAS's kernels for tiny matrices. A pack's attention
    products are such (64 models x batch 64 x 4 heads of 52 x 16 by 16 x 52 at addition-16), but only one of
    their sizes is under 32. The pass reads its thresholds when its module is first imported."""
    import torch._inductor.config as inductor_config

    options = {"max_other_dimension_decomposition": max_other}
    inductor_config.post_grad_fusion_options = {**inductor_config.post_grad_fusion_options,
                                                "decompose_mm_pass": options}
    module = sys.modules.get("torch._inductor.fx_passes.decompose_mem_bound_mm")
    if module is not None:
        module.max_other_dimension_decomposition = max_other


def time_it(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def single_trainer(cfg, mode, device):
    """A one-model trainer for a mode: 'graph' is a pack of one; others are train_speed.Trainer."""
    if mode in ("graph", "graph-compiled"):
        return Packed(cfg, 1, device, graph=True, compile=mode == "graph-compiled")
    return train_speed.Trainer(cfg, mode, device)


def run_single(trainer, mode, batches1, steps, start=0):
    """batches1: (tokens, mask) each (1, B, T)."""
    if mode in ("graph", "graph-compiled"):
        trainer.run(batches1, steps, start)
    else:
        flat = [(t[0], m[0]) for t, m in batches1]
        trainer.run(flat, steps)


def arm_packed(args, device, task):
    cfg = TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.packed_d,
                            n_layers=args.packed_layers, n_heads=4)
    n, steps = args.n, args.packed_steps
    tokens_per_step = args.batch_size * task.seq_len
    batches = draw(task, n, args.batch_size, device)
    result = {"config": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "batch_size": args.batch_size,
                         "seq_len": task.seq_len, "n_models": n, "steps_per_model": steps}}
    # packed: the whole life of a pack (build, warm-up, capture, steps), then its steady state
    for mode in args.packed_modes.split(","):
        graph, compiled = mode != "packed-eager", mode == "packed-graph-compiled"
        if graph and device.type != "cuda":
            continue
        holder = {}
        try:
            total = time_it(lambda: holder.update(p=Packed(cfg, n, device, graph, compile=compiled))
                            or holder["p"].run(batches, steps), device)
        except Exception as exc:  # report the mode as failed and go on: GPU time is scarce
            result[mode] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        steady = [time_it(lambda: holder["p"].run(batches, args.steady_steps, steps), device) for _ in range(args.rounds)]
        result[mode] = {"tokens_per_s_total": n * steps * tokens_per_step / total,
                        "tokens_per_s_steady": n * args.steady_steps * tokens_per_step / statistics.median(steady),
                        "ms_per_step_steady": 1e3 * statistics.median(steady) / args.steady_steps}
        holder.clear()  # free the pack before the next mode
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # the same n models one after another, each for the same steps, in each single-model mode
    for mode in args.seq_modes.split(","):
        if mode in ("compiled", "graph-compiled") and device.type != "cuda":
            continue
        t0 = time.perf_counter()
        steady = []
        try:
            for i in range(n):
                one = [(t[i : i + 1], m[i : i + 1]) for t, m in batches]
                trainer = single_trainer(cfg, mode, device)
                run_single(trainer, mode, one, steps)
                if i == 0:  # steady state of one model, once it is warm
                    steady = [time_it(lambda: run_single(trainer, mode, one, args.steady_steps, steps), device)
                              for _ in range(args.rounds)]
                trainer = None  # free the model before the next one
        except Exception as exc:
            result[f"sequential-{mode}"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        sync(device)
        total = time.perf_counter() - t0 - sum(steady)
        result[f"sequential-{mode}"] = {"tokens_per_s_total": n * steps * tokens_per_step / total,
                                        "tokens_per_s_steady": args.steady_steps * tokens_per_step / statistics.median(steady),
                                        "ms_per_step_steady": 1e3 * statistics.median(steady) / args.steady_steps}
    ok = {k: v for k, v in result.items() if isinstance(v, dict) and "tokens_per_s_total" in v}
    for what in ("total", "steady"):
        packed_best = max((v[f"tokens_per_s_{what}"] for k, v in ok.items() if k.startswith("packed-")), default=None)
        seq_best = max((v[f"tokens_per_s_{what}"] for k, v in ok.items() if k.startswith("sequential-")), default=None)
        result[f"speedup_{what}"] = packed_best / seq_best if packed_best and seq_best else None
    result["flops_per_token"] = flops_per_token(cfg)
    return result


def arm_single(args, device, task, d_model, n_layers, modes):
    if args.paper_model:  # the paper's model file (SwiGLU width 1366 at d_model 512, interleaved RoPE, ...)
        cfg = paper_config(len(task.vocab), task.seq_len, d_model, n_layers)
    else:
        cfg = TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=d_model, n_layers=n_layers, n_heads=4)
    batches = draw(task, 1, args.batch_size, device)
    trainers, out = {}, {}
    for m in modes:
        try:
            trainers[m] = single_trainer(cfg, m, device)
            run_single(trainers[m], m, batches, args.warmup)
        except Exception as exc:  # report the mode as failed and go on
            trainers.pop(m, None)
            out[m] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    modes = list(trainers)
    times = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved, as train_speed.py does
        for m, t in trainers.items():
            times[m].append(time_it(lambda: run_single(t, m, batches, args.steady_steps, args.warmup), device))
    tokens = args.batch_size * task.seq_len
    fpt = flops_per_token(cfg)
    out.update({"config": {"d_model": d_model, "n_layers": n_layers, "batch_size": args.batch_size, "seq_len": task.seq_len,
                           "d_mlp": cfg.d_mlp, "paper_model": args.paper_model},
                "flops_per_token": fpt})
    for m in modes:
        s = statistics.median(times[m]) / args.steady_steps
        out[m] = {"ms_per_step": 1e3 * s, "tokens_per_s": tokens / s, "mfu": tokens / s * fpt / args.peak}
    if "paper" in modes and len(modes) > 1:
        best = max((m for m in modes if m != "paper"), key=lambda m: out[m]["tokens_per_s"])
        out["ours"], out["ours_over_paper"] = best, out[best]["tokens_per_s"] / out["paper"]["tokens_per_s"]
    del trainers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny sizes, few steps")
    ap.add_argument("--arms", default="packed,small,large")
    ap.add_argument("--n", type=int, default=None, help="packed models (default 64; quick 4)")
    ap.add_argument("--packed-steps", type=int, default=None, help="steps per model in the packed arm (default 200; quick 4)")
    ap.add_argument("--steady-steps", type=int, default=None, help="timed steps per round (default 50; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (quick 8)")
    ap.add_argument("--packed-modes", default="packed-eager,packed-graph,packed-graph-compiled",
                    help="packed-graph*: GPU only; -compiled: forward and loss also through torch.compile")
    ap.add_argument("--seq-modes", default="eager,graph", help="single-model modes for the one-after-another baseline")
    ap.add_argument("--small-modes", default="eager,compiled,graph,graph-compiled")
    ap.add_argument("--large-modes", default="paper,eager,compiled,graph,graph-compiled")
    ap.add_argument("--paper-model", action="store_true",
                    help="small and large arms: every mode trains the paper's model file's configuration "
                         "(models/paper.py: SwiGLU width int(8d/3) rounded to even, ...), the paper arm unpadded")
    ap.add_argument("--pack-attention", default=None,
                    help="attention kernels for packs and graph modes, e.g. math or flash_attention (default: the pack's own choice)")
    ap.add_argument("--inductor", default="", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="torch._inductor.config settings for every compiled arm of this process (values as Python "
                         "literals), e.g. coordinate_descent_tuning=True,combo_kernels=True")
    ap.add_argument("--decompose-bmm", type=int, default=0,
                    help="let the compiler write out batched products with two sizes under this (0: off; see decompose_small_bmm)")
    ap.add_argument("--out", default=None, help="write the results here as JSON (also printed)")
    args = ap.parse_args()
    if args.decompose_bmm:
        decompose_small_bmm(args.decompose_bmm)
    if args.inductor:
        from compile_cost import apply_inductor, inductor_settings

        apply_inductor(inductor_settings(args.inductor))
    global PACK_ATTENTION
    PACK_ATTENTION = args.pack_attention
    q = args.quick
    if q:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(1)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.n = args.n or (4 if q else 64)
    args.packed_steps = args.packed_steps or (4 if q else 200)
    args.steady_steps = args.steady_steps or (3 if q else 50)
    args.warmup = args.warmup or (2 if q else 10)
    args.rounds = args.rounds or (2 if q else 5)
    args.batch_size = args.batch_size or (8 if q else 64)
    args.packed_d, args.packed_layers = (16, 2) if q else (64, 4)
    task = get_task("addition", n_bits=4 if q else 16)
    args.peak, peak_what = train_speed.matmul_rate(device, q)
    cuda_only = {"compiled", "graph-compiled"} if device.type != "cuda" else set()
    torch.backends.cuda.matmul.allow_tf32 = True  # as the training loop sets it (the paper arm turns it off)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    results = {"device": name, "torch": torch.__version__, "peak_flops": args.peak, "peak_what": peak_what,
               "quick": q, "data_examples_per_s": train_speed.sample_rate(task),
               "pack_attention": args.pack_attention, "inductor": args.inductor, "decompose_bmm": args.decompose_bmm}
    arms = args.arms.split(",")
    if "packed" in arms:
        results["packed"] = arm_packed(args, device, task)
    if "small" in arms:
        d, L = (32, 2) if q else (128, 4)
        results["small"] = arm_single(args, device, task, d, L, [m for m in args.small_modes.split(",") if m not in cuda_only])
    if "large" in arms:
        d, L = (64, 2) if q else (512, 16)
        modes = [m for m in args.large_modes.split(",") if m not in cuda_only]
        results["large"] = arm_single(args, device, task, d, L, modes)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
