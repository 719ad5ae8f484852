"""The ViT training step at the Eureka study's shape: quietlab's ViT against an eager fp16 copy of the study's.

Arms, timed in interleaved rounds (every arm once per round, so drifting clocks hit all alike):
- ``ours/ATTN``     models/vit.py (fused SDPA; NormSoftmax through the same kernel, models/attention.py),
                    bf16 autocast, fused AdamW; ``--compile`` adds ``ours+compile/ATTN``;
- ``study/ATTN``    a copy of the study's model file as it runs (timm 0.4.12 ViT, attention written out:
                    (q·kᵀ)·β, NormSoftmax logits / min(1/β, biased variance), softmax, ·v), fp16 autocast
                    with a GradScaler, plain AdamW; ``--compile`` adds ``study+compile/ATTN``;
- ``ours+compile/normsoftmax-bmm`` (``--compile`` on CUDA) NormSoftmax's logit variance as the batched
                    matrix products of ``logit_variance.reference`` instead of the Triton kernels.
ATTN is softmax and normsoftmax. One step = forward, label-smoothed cross-entropy, backward, AdamW step,
on a fixed random batch. Prints and writes (``--out``) JSON: per arm the median and every round's ms/step.

    python benchmarks/vit_step.py --device cuda --out vit_step.json                  # the study's shape
    python benchmarks/vit_step.py --device cpu --image 16 --patch 4 --width 64 --depth 2 --batch 8 --rounds 2 --steps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from unittest import mock
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from quietlab.models import attention as attention_module  # noqa: E402
from quietlab.models.logit_variance import reference  # noqa: E402
from quietlab.models.vit import ViT, ViTConfig  # noqa: E402
from quietlab.train.schedule import make_optimizer  # noqa: E402


class StudyAttention(nn.Module):
    """vit_timm0412.py's Attention with the study's norm_softmax branch, written out as it runs."""

    def __init__(self, dim, heads, norm_softmax: bool, beta: float = 0.125):
        super().__init__()
        self.heads, self.beta, self.norm_softmax = heads, beta, norm_softmax
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1)
        if self.norm_softmax:
            var = attn.var(dim=-1, unbiased=False, keepdim=True)
            attn = attn / torch.minimum(torch.full_like(var, 1 / self.beta), var)
        else:
            attn = attn * self.beta
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class StudyBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, norm_softmax):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = StudyAttention(dim, heads, norm_softmax)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class StudyViT(nn.Module):
    def __init__(self, image, patch, dim, depth, heads, mlp_ratio, classes, norm_softmax):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[StudyBlock(dim, heads, mlp_ratio, norm_softmax) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def make_arm(kind: str, attention: str, args, device, prepare=None, variance=None):
    """One arm's training step; ``prepare(model)``, if given, is called on quietlab's ViT before its optimizer
    and compilation (normsoftmax_layouts.py swaps the attention's code there); ``variance``, if given,
    replaces NormSoftmax's logit variance (models/logit_variance.py) while the arm runs."""
    torch.manual_seed(0)
    if kind.startswith("ours"):
        model = ViT(ViTConfig(image_size=args.image, patch_size=args.patch, d_model=args.width, n_layers=args.depth,
                              n_heads=args.heads, mlp_ratio=args.mlp_ratio, drop_path=0.0, attention=attention)).to(device)
        if prepare is not None:
            prepare(model)
        optimizer = make_optimizer(model, 5e-4, 0.05, (0.9, 0.999))
        dtype, scaler = torch.bfloat16, None
    else:
        model = StudyViT(args.image, args.patch, args.width, args.depth, args.heads, args.mlp_ratio, 10,
                         attention == "normsoftmax").to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16  # CPU autocast has no fp16 GradScaler path
        scaler = torch.amp.GradScaler(device.type) if device.type == "cuda" else None

    def forward_loss(x, y):
        with torch.autocast(device.type, dtype=dtype):
            logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=0.1)

    loss_fn = torch.compile(forward_loss) if "compile" in kind else forward_loss

    def step(x, y):
        if variance is None:
            loss = loss_fn(x, y)
        else:
            with mock.patch.object(attention_module, "logit_variance", variance):
                loss = loss_fn(x, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_shape_arguments(ap: argparse.ArgumentParser) -> None:
    """The step's shape and the timing's rounds (shared with normsoftmax_layouts.py)."""
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image", type=int, default=56)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=7)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm per round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per arm before the rounds (compile happens here)")


def setup_device(args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def fixed_batch(args, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.image, args.image, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    return x, y


def time_arms(arms: dict, x, y, args, device) -> dict[str, list[float]]:
    """ms per step of every arm in every round: ``--warmup`` untimed steps each, then ``--rounds`` interleaved
    rounds (every arm once per round, so drifting clocks hit all alike) of ``--steps`` steps."""
    for step in arms.values():
        for _ in range(args.warmup):
            step(x, y)
    sync(device)
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, step in arms.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            sync(device)
            times[name].append(1000 * (time.perf_counter() - t0) / args.steps)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(ap)
    ap.add_argument("--compile", action="store_true", help="add torch.compile arms for both models")
    ap.add_argument("--out", default=None, help="JSON file to write (also printed)")
    ap.add_argument("--profile", default=None,
                    help="comma list of arms (e.g. ours+compile/normsoftmax) to profile after the rounds: the top GPU "
                         "kernels of --steps steps, printed and written beside --out as PROFILE.txt")
    args = ap.parse_args()
    device = setup_device(args)
    kinds = ["ours", "study"] + (["ours+compile", "study+compile"] if args.compile else [])
    arms = {f"{k}/{a}": make_arm(k, a, args, device) for k in kinds for a in ("softmax", "normsoftmax")}
    if args.compile and device.type == "cuda":  # the variance as batched products (before the Triton kernels)
        arms["ours+compile/normsoftmax-bmm"] = make_arm("ours+compile", "normsoftmax", args, device, variance=reference)
    x, y = fixed_batch(args, device)
    times = time_arms(arms, x, y, args, device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shape": {k: getattr(args, k) for k in ("image", "patch", "width", "depth", "heads", "mlp_ratio", "batch")},
              "rounds": args.rounds, "steps_per_round": args.steps,
              "ms_per_step": {name: {"median": statistics.median(t), "rounds": t} for name, t in times.items()}}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    if args.profile:
        tables = [profile_arm(name, arms[name], x, y, args.steps, device) for name in args.profile.split(",")]
        if args.out:
            Path(args.out).with_suffix(".profile.txt").write_text("\n\n".join(tables))
        print("\n\n".join(tables))


def profile_arm(name: str, step, x, y, steps: int, device) -> str:
    """The arm's GPU kernels over ``steps`` steps, by total device time."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(x, y)
        sync(device)
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90)
    return f"== {name}: {steps} steps ==\n{table}"


if __name__ == "__main__":
    main()
