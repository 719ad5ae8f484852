"""What the activation taps cost: the Transformer's forward with no taps asked for, and with every residual
tap captured, against a plain forward through the same modules with no tap code at all.

    .venv/bin/python benchmarks/tap_overhead.py            # GPU: bfs-11 and addition-16, d_model 128/512, batch 64
    .venv/bin/python benchmarks/tap_overhead.py --quick    # CPU smoke run

Rows: ``plain`` (embed → blocks → norm → head, written out here), ``model()`` (capture=(), the path training
takes), ``capture resid.*`` (hook_embed and every blocks.{l}.hook_resid_post handed out), and ``capture resid.* + patterns``
(attention probabilities too, which switches attention from the fused kernel to the explicit one). Timed
under torch.no_grad in interleaved rounds (median); on GPU with bf16 autocast, as training runs. Prints each
time and its ratio to plain.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from quietlab.models import Transformer, TransformerConfig  # noqa: E402
from quietlab.models.hooks import residual_hooks  # noqa: E402
from quietlab.tasks import get_task  # noqa: E402

TASKS = {"bfs": {"n_nodes": 11}, "addition": {"n_bits": 16}}
QUICK_TASKS = {"bfs": {"n_nodes": 6}, "addition": {"n_bits": 8}}


def plain_forward(model, tokens):
    """The same computation as Transformer.forward with no capture/edit machinery."""
    T = tokens.shape[1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    x = model.embed(tokens)
    for block in model.blocks:
        x, _ = block(x, cos, sin)
    return model.lm_head(model.norm(x))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run")
    ap.add_argument("--tasks", default="bfs,addition")
    ap.add_argument("--d-models", default=None, help="default 128,512 (quick 32)")
    ap.add_argument("--layers", type=int, default=None, help="default 4 (quick 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (quick 16)")
    ap.add_argument("--iters", type=int, default=None, help="forwards per variant per round (default 50; quick 10)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: 1 with --quick)")
    args = ap.parse_args()
    q = args.quick
    if args.threads or q:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads or 1)
    device = torch.device(("cpu" if q else "cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    sizes = QUICK_TASKS if q else TASKS
    d_models = [int(x) for x in (args.d_models or ("32" if q else "128,512")).split(",")]
    n_layers = args.layers or (2 if q else 4)
    batch_size = args.batch_size or (16 if q else 64)
    iters = args.iters or (10 if q else 50)
    amp = torch.bfloat16 if device.type == "cuda" else None
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} · "
          f"{'bf16 autocast' if amp else 'fp32'} · batch {batch_size} · {n_layers} layers · "
          f"{iters} forwards x {args.rounds} interleaved rounds, median")

    for task_name in args.tasks.split(","):
        task = get_task(task_name, **sizes[task_name])
        tokens = torch.as_tensor(task.sample(batch_size, seed=0).tokens, dtype=torch.long, device=device)
        for d in d_models:
            torch.manual_seed(0)
            model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=d,
                                                  n_layers=n_layers, n_heads=4)).to(device).eval()
            resid = residual_hooks(n_layers)
            variants = {
                "plain": lambda: plain_forward(model, tokens),
                "model()": lambda: model(tokens),
                "capture resid.*": lambda: model(tokens, capture=resid),
                "capture resid.* + patterns": lambda: model(tokens, capture=model.tap_names()),
            }
            ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
            with torch.no_grad(), ctx():
                ref = plain_forward(model, tokens)
                assert torch.allclose(model(tokens).float(), ref.float(), atol=1e-2), "plain forward differs"
                for fn in variants.values():  # warm-up
                    for _ in range(3):
                        fn()
                times = {k: [] for k in variants}
                for _ in range(args.rounds):
                    for name, fn in variants.items():
                        sync(device)
                        t = time.perf_counter()
                        for _ in range(iters):
                            fn()
                        sync(device)
                        times[name].append((time.perf_counter() - t) / iters)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"\n{task_name}-{next(iter(sizes[task_name].values()))} (seq_len {task.seq_len}), d_model {d}")
            print(f"  {'variant':<30}{'ms / forward':>14}{'vs plain':>10}")
            for name, t in med.items():
                print(f"  {name:<30}{t * 1e3:>14.3f}{t / med['plain']:>9.2f}x")


if __name__ == "__main__":
    main()
