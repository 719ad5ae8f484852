"""How the packed ViT's NaN on a GPU was found (2026-12-03): a few arms of the Eureka ViT at the medium scale's
shape trained ``STEPS`` steps (default 120), packed (vmap, train/packed.py) or alone, bf16 autocast or float32,
with drop-path or without, and with ``scaled_dot_product_attention`` held to one backend; each prints the first
step with a non-finite loss or gradient and the parameters it hit. At 3ab6703 (before the fix) every packed
arm on the default backends had NaN gradients from step 1, the memory-efficient kernel refused float32 under
vmap, and flash attention alone trained (raw output: benchmarks/results/h200-2026-12-03-s3/
packed_nan_diagnosis.txt). Since then ``PackedModels.losses`` holds a GPU pack to flash or math attention,
so the default arms train too; benchmarks/packed_gpu_check.py is the standing check.

    DEV=cuda python benchmarks/packed_nan_diagnosis.py
"""
import torch, dataclasses, sys, time  # noqa: E401
import torch.nn.functional as F
import quietlab.recipes.eureka as E
from quietlab.train.packed import PackedModels, PackedAdamW
import os; dev = torch.device(os.environ.get('DEV', 'cuda'))
cfg = dataclasses.replace(E.MEDIUM, steps=4000)
task = E.load_task(cfg)
import numpy as np
def batches(seed):
    rng = np.random.default_rng(seed); step = 0
    while True:
        x, y, _ = task.draw(cfg.batch_size * step + np.arange(cfg.batch_size) if False else rng.integers(0, 10**9, cfg.batch_size), rng, 'train')
        yield torch.from_numpy(x), torch.from_numpy(y)
def run(variant, pack, amp, drop_path, backend=None, steps=int(os.environ.get('STEPS', 120)), n=3):
    from torch.nn.attention import sdpa_kernel, SDPBackend
    import contextlib
    ctx = sdpa_kernel([getattr(SDPBackend, backend)]) if backend else contextlib.nullcontext()
    with ctx:
        return _run(variant, pack, amp, drop_path, backend, steps, n)
def _run(variant, pack, amp, drop_path, backend, steps, n):
    c = dataclasses.replace(cfg, drop_path=drop_path)
    models = []
    for s in range(n):
        torch.manual_seed(s); models.append(E.build_model(c, variant, task.image_size, task.n_classes).to(dev))
    peak = c.lr[variant]
    def ac():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if amp else torch.autocast(dev.type, enabled=False)
    gens = [batches(s) for s in range(n)]
    first_nan = None
    if pack:
        packed = PackedModels(models)
        decayed = {k for k, p in packed.params.items() if k.rsplit(".", 1)[-1] == "weight" and p.ndim >= 3}
        opt = PackedAdamW(packed.params, lr=peak, weight_decay=c.weight_decay, decayed=decayed, betas=(0.9, 0.999))
        def loss_fn(model, x, y):
            with ac():
                logits = model(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
        for step in range(1, steps + 1):
            xs, ys = zip(*(next(g) for g in gens))
            opt.set_lr(E._lr(c, step, peak))
            losses = packed.losses(loss_fn, torch.stack(xs).to(dev), torch.stack(ys).to(dev))
            losses.sum().backward()
            bad = [k for k, p in packed.params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
            if (not torch.isfinite(losses).all() or bad) and first_nan is None:
                first_nan = (step, losses.tolist(), bad[:4])
                break
            opt.step(); packed.zero_grad()
        last = losses.tolist()
    else:
        from quietlab.train.schedule import make_optimizer, set_lr
        model = models[0]; opt = make_optimizer(model, peak, c.weight_decay, betas=(0.9, 0.999))
        for step in range(1, steps + 1):
            x, y = next(gens[0]); set_lr(opt, E._lr(c, step, peak))
            with ac():
                logits = model(x.to(dev))
            loss = F.cross_entropy(logits.float(), y.to(dev), label_smoothing=c.label_smoothing)
            loss.backward()
            bad = [k for k, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            if (not torch.isfinite(loss) or bad) and first_nan is None:
                first_nan = (step, loss.item(), bad[:4]); break
            opt.step(); opt.zero_grad(set_to_none=True)
        last = loss.item()
    print(f"{variant} pack={pack} amp={amp} drop_path={drop_path} backend={backend}: first non-finite {first_nan}; last loss {last}", flush=True)
for args in [('softmax', True, True, 0.1), ('softmax', False, True, 0.1), ('softmax', True, False, 0.1), ('softmax', True, True, 0.0),
             ('softmax', True, True, 0.1, 'MATH'), ('softmax', True, True, 0.1, 'EFFICIENT_ATTENTION'), ('softmax', True, True, 0.1, 'FLASH_ATTENTION'),
             ('normsoftmax', True, True, 0.1), ('normsoftmax', False, True, 0.1)]:
    try:
        run(*args)
    except Exception as e:
        print(args, 'error', repr(e)[:300], flush=True)
