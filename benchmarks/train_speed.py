"""Training tokens/s: the paper's setting against quietlab's, side by side in one process.

    .venv/bin/python benchmarks/train_speed.py             # GPU: d_model 128/256/512 x 4/16 layers, batch 64,
                                                           #      addition-16 and bfs-11
    .venv/bin/python benchmarks/train_speed.py --quick     # CPU smoke run (tiny models, a few steps)
    .venv/bin/python benchmarks/train_speed.py --tasks bfs --d-models 512 --layers 16   # one slice

Modes, each timing the same training step (forward, loss on the answer tokens, backward, clip 1.0, AdamW):
  paper     eager fp32, attention written out (QKᵀ, mask, softmax, ·V), no TF32, AdamW's default kernel:
            how the paper's released code trains
  eager     quietlab without compilation: bf16 autocast on GPU (fp32 on CPU), fused SDPA, TF32, fused AdamW
  compiled  the same with forward and loss under torch.compile, as the loop's --compile does: on GPU with
            CUDA graphs (mode="reduce-overhead"); on CPU only with --compile
  no-graphs torch.compile without CUDA graphs (GPU, with --no-graphs), to show what the graphs add
"ours" is the fastest of quietlab's modes. The modes run in interleaved rounds (paper, eager, compiled,
paper, ...) on the same pre-drawn batches, and each reports the median over rounds.

MFU (model FLOPs utilisation) = tokens/s x FLOPs per token (quietlab.train.budget: 6N + 6·L·n_ctx·d) divided
by a bf16 matmul rate measured here (8192³ on GPU; fp32 on CPU). "data x" is how many times faster one
thread draws training examples (task.sample, the loop's background prefetch) than ours consumes them.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from quietlab.models import Transformer, TransformerConfig  # noqa: E402
from quietlab.models import attention as attention_module  # noqa: E402
from quietlab.models import transformer as transformer_module  # noqa: E402
from quietlab.tasks import get_task  # noqa: E402
from quietlab.train.budget import flops_per_token  # noqa: E402
from quietlab.train.evaluate import masked_loss  # noqa: E402
from quietlab.train.schedule import make_optimizer, param_groups  # noqa: E402

TASKS = {"addition": {"n_bits": 16}, "bfs": {"n_nodes": 11}}
QUICK_TASKS = {"addition": {"n_bits": 8}, "bfs": {"n_nodes": 6}}


class _WrittenOutAttention:
    """Stands in for torch.nn.functional inside attention.py: SDPA computed as the paper's code does."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def scaled_dot_product_attention(q, k, v, is_causal=False, scale=None):
        scores = (q @ k.transpose(-2, -1)) * scale
        if is_causal:
            T = q.shape[-2]
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


@contextlib.contextmanager
def mode_context(mode: str, device: torch.device):
    saved = (attention_module.F, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             transformer_module.PADDED_HIDDEN_DEVICES)
    if mode == "paper":  # the paper's code: attention written out, no TF32, SwiGLU at its own (unaligned) width
        attention_module.F = _WrittenOutAttention()
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        transformer_module.PADDED_HIDDEN_DEVICES = ()
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        (attention_module.F, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         transformer_module.PADDED_HIDDEN_DEVICES) = saved


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model + optimizer in one mode; ``run(batches, n)`` does n training steps."""

    def __init__(self, cfg: TransformerConfig, mode: str, device: torch.device):
        torch.manual_seed(0)
        self.mode, self.device = mode, device
        self.model = Transformer(cfg).to(device)
        if mode == "paper":
            self.opt = torch.optim.AdamW(param_groups(self.model, 0.1), lr=1e-3, betas=(0.9, 0.95))
        else:
            self.opt = make_optimizer(self.model, 1e-3)
        self.amp = torch.bfloat16 if (mode != "paper" and device.type == "cuda") else None
        self.graphs = mode == "compiled" and device.type == "cuda"  # as the training loop compiles
        if mode in ("compiled", "no-graphs"):
            self.loss = torch.compile(self._loss, mode="reduce-overhead" if self.graphs else None)
        else:
            self.loss = self._loss
        self.i = 0

    def _loss(self, tokens, mask):
        with torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
            logits = self.model(tokens)
        return masked_loss(logits, tokens, mask)

    def run(self, batches, n: int) -> None:
        with mode_context(self.mode, self.device):
            for _ in range(n):
                tokens, mask = batches[self.i % len(batches)]
                self.i += 1
                if self.graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss = self.loss(tokens, mask)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)


def matmul_rate(device: torch.device, quick: bool) -> tuple[float, str]:
    """FLOP/s of a large square matmul: bf16 on GPU, fp32 on CPU."""
    if device.type == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = (512 if quick else 2048), torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(5 if quick else 20):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        rates.append(2 * n**3 / (time.perf_counter() - t))
    return statistics.median(rates), f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} {n}³"


def sample_rate(task, n: int = 1024) -> float:
    task.sample(n, seed=0)
    t = time.perf_counter()
    task.sample(n, seed=1)
    return n / (time.perf_counter() - t)


def bench_one(task, d_model, n_layers, args, device, modes):
    cfg = TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=d_model, n_layers=n_layers,
                            n_heads=4)
    batches = []
    for i in range(4):
        b = task.sample(args.batch_size, seed=100 + i)
        batches.append((torch.as_tensor(b.tokens, dtype=torch.long, device=device),
                        torch.as_tensor(b.loss_mask, device=device)))
    trainers = {m: Trainer(cfg, m, device) for m in modes}
    for t in trainers.values():  # warm-up: compilation, allocator, kernels
        t.run(batches, args.warmup)
    sync(device)
    rates = {m: [] for m in modes}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for m, t in trainers.items():
            sync(device)
            start = time.perf_counter()
            t.run(batches, per_round)
            sync(device)
            rates[m].append(per_round * args.batch_size * task.seq_len / (time.perf_counter() - start))
    del trainers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cfg, {m: statistics.median(r) for m, r in rates.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny models, few steps")
    ap.add_argument("--tasks", default="addition,bfs")
    ap.add_argument("--d-models", default=None, help="comma-separated (default 128,256,512; quick 32,64)")
    ap.add_argument("--layers", default=None, help="comma-separated (default 4,16; quick 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (quick 16)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 60; quick 6)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per mode first (default 10; quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 2)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on CPU (always on GPU)")
    ap.add_argument("--no-graphs", action="store_true", help="also time torch.compile without CUDA graphs (GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: 1 with --quick)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per configuration")
    args = ap.parse_args()

    q = args.quick
    if args.threads or q:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads or 1)
    device = torch.device("cpu" if q and args.device == "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    d_models = [int(x) for x in (args.d_models or ("32,64" if q else "128,256,512")).split(",")]
    layer_counts = [int(x) for x in (args.layers or ("2" if q else "4,16")).split(",")]
    args.batch_size = args.batch_size or (16 if q else 64)
    args.steps = args.steps or (6 if q else 60)
    args.warmup = args.warmup or (2 if q else 10)
    args.rounds = args.rounds or (2 if q else 3)
    modes = (["paper", "eager"] + (["compiled"] if device.type == "cuda" or args.compile else [])
             + (["no-graphs"] if args.no_graphs and device.type == "cuda" else []))
    sizes = QUICK_TASKS if q else TASKS

    peak, peak_what = matmul_rate(device, q)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} · torch {torch.__version__} · matmul peak ({peak_what}): {peak / 1e12:.2f} TFLOP/s")
    print(f"batch {args.batch_size} · {args.steps} timed steps per mode in {args.rounds} interleaved rounds · modes: {', '.join(modes)}")
    head = (f"{'task':<14}{'d':>5}{'L':>4}{'paper tok/s':>13}{'eager tok/s':>13}"
            + (f"{'compiled tok/s':>16}" if "compiled" in modes else "")
            + (f"{'no-graphs tok/s':>17}" if "no-graphs" in modes else "")
            + f"{'ours/paper':>12}{'MFU paper':>11}{'MFU ours':>10}{'data x':>10}")
    print(head)
    print("-" * len(head))
    ratios = []
    for task_name in args.tasks.split(","):
        task = get_task(task_name, **sizes[task_name])
        label = f"{task_name}-{next(iter(sizes[task_name].values()))}"
        data_rate = sample_rate(task)
        for d in d_models:
            for L in layer_counts:
                cfg, rates = bench_one(task, d, L, args, device, modes)
                ours_mode = max((m for m in modes if m != "paper"), key=rates.get)
                ours = rates[ours_mode]
                fpt = flops_per_token(cfg)
                ratio = ours / rates["paper"]
                ratios.append(ratio)
                row = (f"{label:<14}{d:>5}{L:>4}{rates['paper']:>13,.0f}{rates['eager']:>13,.0f}"
                       + (f"{rates['compiled']:>16,.0f}" if "compiled" in modes else "")
                       + (f"{rates['no-graphs']:>17,.0f}" if "no-graphs" in modes else "")
                       + f"{ratio:>11.2f}x{rates['paper'] * fpt / peak:>11.1%}{ours * fpt / peak:>10.1%}"
                       + f"{data_rate * task.seq_len / ours:>9.1f}x")
                print(row, flush=True)
                if args.json:
                    print(json.dumps({"task": label, "d_model": d, "n_layers": L, "batch_size": args.batch_size,
                                      "tokens_per_s": rates, "ours": ours_mode, "ratio": ratio,
                                      "flops_per_token": fpt, "peak_flops": peak,
                                      "mfu": {m: r * fpt / peak for m, r in rates.items()},
                                      "data_examples_per_s": data_rate}))
    if ratios:
        print(f"ours / paper: geometric mean {statistics.geometric_mean(ratios):.2f}x over {len(ratios)} configurations")


if __name__ == "__main__":
    main()
