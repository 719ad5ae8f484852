"""NormSoftmax's fused path (models/attention.py ``_normsoftmax_fused``) in a few layouts, each timed in the
whole compiled ViT training step at the Eureka study's shape (as ``vit_step.py``'s ``ours+compile/normsoftmax``
arm), in interleaved rounds:

- ``library``   the code as it is in models/attention.py (the covariance products on the raw token axis);
- ``unpadded``  the same written out here (a check that the patching itself costs nothing);
- ``pad_both``  keys and queries zero-padded to a multiple of 8 tokens for the products;
- ``pad_keys``  only the centred keys padded (the covariance's product), the queries' product on 197 rows;
- ``heads_together`` one (width × width) covariance of all heads' keys per image, one product, its
  off-diagonal head blocks zeroed: H times the arithmetic of the per-head (d_head × d_head) products,
  in a few large matrix products instead of B·H tiny ones.

Why: a profile of the compiled step (``vit_step.py --profile``) showed the covariance products on
cuBLAS's unaligned sm75 kernels at 197 tokens (2.6 ms of a 20 ms step). Padding moves them onto fast
kernels (1.3 ms) but the padded queries' gradient costs a slower elementwise kernel, and on an H200 the
whole step came out the same: 21.14 / 21.18 / 21.23 ms for a padded-both library, unpadded and pad_keys
(benchmarks/results/h200-2026-12-03-s4/call4/), so the library stays unpadded.

Every layout computes the same function (tests/test_eureka.py checks the library's against a float64
formula); this script only times them, with vit_step.py's arm, batch and interleaved rounds (the figures
above were taken before it shared them, with the same step and rounds). Prints and writes (``--out``)
JSON: per layout every round's ms/step.

    python benchmarks/normsoftmax_layouts.py --out normsoftmax_layouts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quietlab.models.attention import CausalSelfAttention  # noqa: E402
from vit_step import add_shape_arguments, fixed_batch, make_arm, setup_device, time_arms  # noqa: E402


def fused(pad_keys: bool, pad_queries: bool):
    def normsoftmax(self, q, k, v):
        T = k.shape[-2]
        kc = k - k.mean(dim=-2, keepdim=True)
        qp = q
        if T % 8 and pad_keys:
            kc = F.pad(kc, (0, 0, 0, -T % 8))
        if T % 8 and pad_queries:
            qp = F.pad(q, (0, 0, 0, -T % 8))
        cov = kc.transpose(-2, -1) @ kc / T
        var = ((qp @ cov).float() * qp.float()).sum(-1, keepdim=True)[..., :T, :].clamp_min(0)
        spread = var if self.norm_form == "var" else var.clamp(min=1e-12).sqrt()
        scale = 1.0 / torch.clamp(spread, min=1e-6).clamp(max=self.tau)
        return F.scaled_dot_product_attention(q * scale.to(q.dtype), k, v, scale=1.0)
    return normsoftmax


def heads_together(self, q, k, v):
    B, H, T, dh = k.shape
    kf = k.transpose(1, 2).reshape(B, T, H * dh)
    qf = q.transpose(1, 2).reshape(B, T, H * dh)
    kc = kf - kf.mean(dim=1, keepdim=True)
    heads = torch.arange(H * dh, device=k.device) // dh
    same_head = (heads[:, None] == heads[None, :]).to(kc.dtype)
    cov = (kc.transpose(1, 2) @ kc / T) * same_head  # (B, C, C), block-diagonal
    var = ((qf @ cov).float() * qf.float()).view(B, T, H, dh).sum(-1).transpose(1, 2)[..., None].clamp_min(0)
    spread = var if self.norm_form == "var" else var.clamp(min=1e-12).sqrt()
    scale = 1.0 / torch.clamp(spread, min=1e-6).clamp(max=self.tau)
    return F.scaled_dot_product_attention(q * scale.to(q.dtype), k, v, scale=1.0)


LAYOUTS = {"library": CausalSelfAttention._normsoftmax_fused, "unpadded": fused(False, False),
           "pad_both": fused(True, True), "pad_keys": fused(True, False), "heads_together": heads_together}


def with_layout(layout: str):
    """A ``prepare`` for vit_step.make_arm: this model's attention computes NormSoftmax in ``layout``."""
    def prepare(model):
        for block in model.blocks:
            block.attn._normsoftmax_fused = LAYOUTS[layout].__get__(block.attn)
    return prepare


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(ap)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = setup_device(args)
    arms = {name: make_arm("ours+compile", "normsoftmax", args, device, prepare=with_layout(name))
            for name in args.layouts.split(",")}
    x, y = fixed_batch(args, device)
    times = time_arms(arms, x, y, args, device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "shape": {k: getattr(args, k) for k in ("image", "patch", "width", "depth", "heads", "mlp_ratio", "batch")},
              "ms_per_step": {name: {"median": statistics.median(t), "rounds": t} for name, t in times.items()}}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
