"""A plain PyTorch training loop on quietlab's own model and task: the yardstick for `quietlab train`.

What a user would write by hand: the same Transformer++, the same AdamW recipe (warm-up, cosine,
clipping), the same fresh examples (drawn as the loop draws them, 16 steps' worth per ``task.sample``
call, with its seeds, but synchronously: no background thread); no evaluation, no checkpoints, no
logging, no monitor. Prints one JSON line (steps, final loss, wall seconds inside the process).

    .venv/bin/python benchmarks/plain_loop.py --task addition --size 12 --d-model 64 --steps 600
"""

from __future__ import annotations

import argparse
import json
import time

t_process = time.perf_counter()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=12, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from quietlab.models import Transformer
    from quietlab.tasks import get_task
    from quietlab.train import TrainConfig
    from quietlab.train.evaluate import masked_loss
    from quietlab.train.loop import _DATA, derive_seed
    from quietlab.train.schedule import lr_at, make_optimizer, set_lr

    task = get_task(args.task, **{get_task(args.task).knobs[0].name: args.size})
    cfg = TrainConfig(task=args.task, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model = Transformer(cfg.model_config(task)).to(dev)
    optimizer = make_optimizer(model, args.lr)
    model.train()
    chunk = cfg.data_chunk
    for step in range(1, args.steps + 1):
        c, i = divmod(step - 1, chunk)
        if i == 0:
            data = task.sample(chunk * args.batch_size, seed=derive_seed(args.seed, _DATA, c), split="train")
            all_tokens = torch.as_tensor(data.tokens, dtype=torch.long, device=dev)
            all_mask = torch.as_tensor(data.loss_mask, dtype=torch.bool, device=dev)
        rows = slice(i * args.batch_size, (i + 1) * args.batch_size)
        tokens, mask = all_tokens[rows], all_mask[rows]
        set_lr(optimizer, lr_at(step - 1, args.steps, args.lr))
        loss = masked_loss(model(tokens), tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"steps": args.steps, "loss": float(loss), "wall_s": time.perf_counter() - t_process}))


if __name__ == "__main__":
    main()
