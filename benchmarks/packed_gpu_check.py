"""Packed training on a GPU against each model trained alone: same initial weights, same batches, same AdamW.

Per architecture (the Eureka ViT at the medium scale's shape; quietlab's causal decoder on addition-8) and
precision (bf16 autocast, float32): K models trained ``--steps`` steps as one vmapped computation
(train/packed.py) and each on its own (torch.optim.AdamW), and for each step the largest |packed loss −
alone loss| over the models, whether any loss or gradient of the pack was not finite, and the step it
first was. Drop-path is off (its masks are drawn differently under vmap). The tests check the same
equality on the CPU in float64; this is the GPU's check, where the attention kernels differ.
``--default-kernels`` calls the vmapped losses without ``PackedModels.losses``' choice of attention
kernels, as before 2026-12-03, when the GPU's default kernel gave packed ViTs NaN gradients from step 1
(found at 3ab6703 with an ad-hoc script: benchmarks/results/h200-2026-12-03-s3/packed_nan_diagnosis.txt).

    python benchmarks/packed_gpu_check.py --out packed_gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from quietlab.train.packed import PackedAdamW, PackedModels  # noqa: E402


def vit_case(attention: str = "softmax"):
    from quietlab.models.vit import ViT, ViTConfig

    cfg = ViTConfig(image_size=16, patch_size=2, n_classes=10, d_model=256, n_layers=4, n_heads=4, mlp_ratio=2.0,
                    drop_path=0.0, attention=attention)
    def batch(step, i):
        g = torch.Generator().manual_seed(1000 * step + i)
        return torch.rand(256, 3, 16, 16, generator=g), torch.randint(0, 10, (256,), generator=g)

    def loss_fn(model, x, y):
        return F.cross_entropy(model(x).float(), y)

    return f"vit (16x16, patch 2, depth 4, width 256, batch 256, {attention})", lambda: ViT(cfg), batch, loss_fn


def decoder_case():
    from quietlab.models import Transformer, TransformerConfig
    from quietlab.tasks import get_task

    task = get_task("addition", n_bits=8)
    cfg = TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=128, n_layers=4, n_heads=4)

    def batch(step, i):
        b = task.sample(64, seed=1000 * step + i, split="train")
        return torch.as_tensor(b.tokens).long(), torch.as_tensor(b.loss_mask)

    def loss_fn(model, tokens, mask):
        logits = model(tokens[:, :-1])
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
        m = mask[:, :-1].reshape(-1).float()  # mask[t]: token t + 1 is answer
        return (nll * m).sum() / m.sum()

    return "decoder (addition-8, d_model 128 x 4, batch 64)", lambda: Transformer(cfg), batch, loss_fn


def compare(case, device, amp, n_models, steps, lr, default_kernels=False, math_attention=False):
    name, build, batch, loss_fn = case()
    models = []
    for seed in range(n_models):
        torch.manual_seed(seed)
        models.append(build().to(device))
    alone = [build().to(device) for _ in range(n_models)]
    for a, m in zip(alone, models):
        a.load_state_dict(m.state_dict())
    packed = PackedModels(models)
    popt = PackedAdamW(packed, lr=lr, weight_decay=0.0)
    opts = [torch.optim.AdamW(a.parameters(), lr=lr, weight_decay=0.0, eps=1e-8) for a in alone]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def packed_loss(model, *args):
        with autocast():
            return loss_fn(model, *args)

    compiled = None
    diffs, first_bad = [], None
    for step in range(1, steps + 1):
        args = [batch(step, i) for i in range(n_models)]
        stacked = [torch.stack([a[j] for a in args]).to(device) for j in range(len(args[0]))]
        if default_kernels:  # the vmapped function alone, outside losses()' kernel choice
            losses = packed._batched(packed_loss, None, len(stacked))(packed.flat, packed.buffers, *stacked)
        elif math_attention:  # compiled, on the math kernel with causal sequences padded (as compiled packs run)
            compiled = compiled or packed.compiled_losses(packed_loss, n_args=len(stacked), math_attention=True)
            losses = compiled(*stacked)
        else:
            losses = packed.losses(packed_loss, *stacked)
        losses.sum().backward()
        finite = bool(torch.isfinite(losses).all()) and bool(torch.isfinite(packed.flat.grad).all())
        if not finite and first_bad is None:
            first_bad = step
        popt.step()
        packed.zero_grad()
        own = []
        for a, opt, arg in zip(alone, opts, args):
            with autocast():
                loss = loss_fn(a, *[t.to(device) for t in arg])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            own.append(loss.item())
        diffs.append(float(np.max(np.abs(losses.detach().float().cpu().numpy() - np.array(own)))))
    return {"model": name, "precision": "bf16 autocast" if amp else "float32", "models": n_models, "steps": steps,
            "path": "compiled, math kernel, padded causal" if math_attention else "losses()",
            "first_non_finite_step": first_bad, "max_loss_diff": float(np.nanmax(diffs)) if diffs else None,
            "loss_diff_at": {str(s): diffs[s - 1] for s in (1, steps // 2, steps)}, "loss_diffs": diffs,
            "final_losses_alone": own}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the check), or cpu for a smoke test")
    ap.add_argument("--default-kernels", action="store_true",
                    help="the attention kernels torch picks by default under vmap (the unfixed path)")
    ap.add_argument("--vit-attention", default="softmax",
                    help="the ViT's attention variant (normsoftmax: its logit variance under vmap, models/logit_variance.py)")
    ap.add_argument("--only-vit", action="store_true", help="skip the decoder")
    ap.add_argument("--math-attention", action="store_true",
                    help="the decoder only, through compiled_losses(math_attention=True): the math kernel with causal "
                         "sequences padded to a multiple of 8, as compiled packs of short sequences run")
    ap.add_argument("--pad-multiple", type=int, default=None,
                    help="with --math-attention: pad causal sequences to this multiple instead of the library's 8 "
                         "(0: no padding; the control that tells the padding's effect from the compiler's)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.pad_multiple is not None:
        import quietlab.train.packed as packed_module

        packed_module.CAUSAL_PAD_MULTIPLE = args.pad_multiple
    rows = []
    vit = functools.partial(vit_case, args.vit_attention)
    vit.__name__ = "vit_case"
    cases = (decoder_case,) if args.math_attention else (vit,) if args.only_vit else (vit, decoder_case)
    for case in cases:
        for amp in (True, False):
            try:
                row = compare(case, device, amp, args.models, args.steps, args.lr, args.default_kernels,
                              args.math_attention)
            except Exception as e:  # a kernel that refuses the pack is a result too
                row = {"model": case.__name__, "precision": "bf16 autocast" if amp else "float32", "error": repr(e)[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"default_kernels": args.default_kernels, "math_attention": args.math_attention,
           "pad_multiple": args.pad_multiple, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
