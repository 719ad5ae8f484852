"""NormSoftmax's logit variance on a GPU: the Triton kernels against the batched products they replace.

For q and k shaped as the ViT's attention makes them (views of one (B, T, 3, H, D) projection):
- accuracy: the variance and its gradients to q and k (for a random weighting of the variances) from the
  Triton kernels and from ``logit_variance.reference`` (batched products in the inputs' dtype), each
  against the variance of written-out logits in float64 on the same rounded inputs: max and RMS error,
  relative to the float64 values' max and RMS;
- speed: forward + backward of each, milliseconds (CUDA events), the two arms interleaved over rounds;
- that ``torch.compile(fullgraph=True)`` takes the custom operator (no graph break).

    python benchmarks/logit_variance_gpu.py --out logit_variance_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from quietlab.models import logit_variance as lv  # noqa: E402


def inputs(B, H, T, D, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    qkv = (torch.randn(B, T, 3, H, D, generator=g) * 1.5 + 0.4).to(device=device, dtype=dtype)
    return qkv.requires_grad_(True)


def split(qkv):
    return qkv.permute(2, 0, 3, 1, 4)[:2]


def errors(fn, qkv, weights):
    q, k = split(qkv)
    var = fn(q, k)
    dq, dk = torch.autograd.grad((var * weights).sum(), (q, k))
    exact = qkv.detach().double().requires_grad_(True)
    eq, ek = split(exact)
    ref = (eq @ ek.transpose(-2, -1)).var(-1, unbiased=False, keepdim=True)
    rdq, rdk = torch.autograd.grad((ref * weights.double()).sum(), (eq, ek))
    out = {}
    for name, got, want in (("var", var, ref), ("dq", dq, rdq), ("dk", dk, rdk)):
        diff = got.double() - want
        out[name] = {"max_rel": (diff.abs().max() / want.abs().max()).item(),
                     "rms_rel": (diff.square().mean().sqrt() / want.square().mean().sqrt()).item()}
    return out


def time_ms(fn, qkv, weights, steps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    q, k = split(qkv)
    start.record()
    for _ in range(steps):
        var = fn(q, k)
        torch.autograd.grad((var * weights).sum(), (q, k))
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--accuracy-batch", type=int, default=32, help="batch of the float64 comparison")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    arms = {"triton": lambda q, k: lv.logit_variance(q, k), "batched_products": lv.reference}
    H, T, D = args.heads, args.tokens, args.head_size
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "shape": {"batch": args.batch, "heads": H, "tokens": T, "head_size": D}, "accuracy": {}}
    for dtype in (torch.bfloat16, torch.float32):
        qkv = inputs(args.accuracy_batch, H, T, D, dtype, device)
        weights = torch.randn(args.accuracy_batch, H, T, 1, device=device)
        result["accuracy"][str(dtype)] = {name: errors(fn, qkv, weights) for name, fn in arms.items()}

    qkv = inputs(args.batch, H, T, D, torch.bfloat16, device)
    weights = torch.randn(args.batch, H, T, 1, device=device)
    for fn in arms.values():
        time_ms(fn, qkv, weights, 5)
    rounds = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            rounds[name].append(time_ms(fn, qkv, weights, args.steps))
    result["forward_backward_ms"] = {name: {"median": statistics.median(r), "rounds": r} for name, r in rounds.items()}

    compiled = torch.compile(lambda q, k: lv.logit_variance(q, k).clamp_min(0).sqrt(), fullgraph=True)
    q, k = split(qkv)
    diff = (compiled(q, k) - lv.logit_variance(q, k).clamp_min(0).sqrt()).abs().max().item()
    result["compiled_fullgraph_max_diff"] = diff
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
