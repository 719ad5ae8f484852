"""Milliseconds per training step of the demo's model (addition-12, d_model 64 x 4, batch 64, AdamW, clip) on
fixed batches, from the source tree given as the first argument: run it alternately on two trees to compare
a change side by side (benchmarks/results/cpu-2026-12-03-s3/rope_qk_together_steptime.txt).

    for src in OLD/src NEW/src OLD/src NEW/src; do .venv/bin/python benchmarks/step_time.py $src; done

``demo_step`` is that step, for other benchmarks (thread_state.py).
"""

from __future__ import annotations

import sys
import time


def demo_step(lr: float = 5e-4, data_seed: int = 0):
    """``step(i)``: one training step of a fresh demo model (seed 0) on the i-th of 16 fixed batches of 64;
    returns the loss."""
    import torch

    from quietlab.models import Transformer
    from quietlab.tasks import get_task
    from quietlab.train import TrainConfig
    from quietlab.train.evaluate import masked_loss
    from quietlab.train.schedule import make_optimizer

    task = get_task("addition", n_bits=12)
    torch.manual_seed(0)
    model = Transformer(TrainConfig(task="addition", d_model=64, n_layers=4, n_heads=4).model_config(task))
    optimizer = make_optimizer(model, lr)
    data = task.sample(64 * 16, seed=data_seed, split="train")
    tokens = torch.as_tensor(data.tokens, dtype=torch.long)
    mask = torch.as_tensor(data.loss_mask, dtype=torch.bool)

    def step(i: int):
        rows = slice((i % 16) * 64, (i % 16 + 1) * 64)
        loss = masked_loss(model(tokens[rows]), tokens[rows], mask[rows])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    step = demo_step()
    for i in range(5):
        step(i)
    t0 = time.perf_counter()
    for i in range(60):
        loss = step(i)
    print(f"{(time.perf_counter() - t0) / 60 * 1e3:.1f} ms/step loss {loss.item():.6f}")
