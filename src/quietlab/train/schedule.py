"""The paper's optimisation recipe, and the steps at which a run evaluates and saves.

Learning rate, for update s = 0 .. S-1 of S, peak ``lr``, W = round(warmup_fraction·S) warm-up steps
(at least 1) and floor m = min_fraction·lr:

    lr(s) = lr · (s + 1) / W                                          s < W   (linear warm-up)
    lr(s) = m + (lr − m) · ½ · (1 + cos(π · (s − W) / max(1, S − 1 − W)))   s ≥ W   (cosine to m)

so the first step after warm-up runs at the peak and the last step at exactly ``min_fraction·lr``.

Optimizer: AdamW (β = 0.9, 0.95), weight decay 0.1, decoupled (PyTorch's AdamW), applied to the
matrices of linear layers only: RMSNorm gains, biases and the token embedding are not decayed (as in
nanoGPT / GPT-3 practice; shrinking a norm gain or an embedding row toward zero only rescales what the
next layer sees). Gradients are clipped to a global norm of 1.0 by the training loop.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn


def warmup_steps(total_steps: int, warmup_fraction: float = 0.1) -> int:
    return max(1, min(total_steps, round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0


def lr_at(step: int, total_steps: int, lr: float, warmup_fraction: float = 0.1, min_fraction: float = 0.1) -> float:
    """Learning rate of update ``step`` (0-based) of ``total_steps``: linear warm-up, then cosine to min_fraction·lr."""
    w = warmup_steps(total_steps, warmup_fraction)
    if step < w:
        return lr * (step + 1) / w
    floor = min_fraction * lr
    progress = min(1.0, (step - w) / max(1, total_steps - 1 - w))
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: linear-layer matrices (decayed) and everything else (norms, embeddings, biases)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_matrix = name == "weight" and p.ndim >= 2 and not isinstance(module, nn.Embedding)
            (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def log_spaced_steps(total_steps: int, per_decade: float) -> list[int]:
    """0, 1 and about ``per_decade`` steps per factor of ten after that, up to ``total_steps``.

    per_decade = 3 gives 0, 1, 2, 5, 10, 22, 46, 100, ...; per_decade = 10 gives 0, 1, 2, 3, 4, 5, 6, 8, 10, 13, ...
    """
    steps = {0}
    if per_decade > 0 and total_steps >= 1:
        i = 0
        while True:
            s = round(10 ** (i / per_decade))
            if s > total_steps:
                break
            steps.add(s)
            i += 1
    return sorted(steps)


def schedule_steps(total_steps: int, every: int | None, per_decade: float) -> list[int]:
    """Step 0, the last step, the log-spaced steps, and every ``every``-th step."""
    steps = set(log_spaced_steps(total_steps, per_decade)) | {0, total_steps}
    if every:
        steps |= set(range(every, total_steps + 1, every))
    return sorted(steps)


def thin(steps: list[int], keep: int) -> list[int]:
    """At most ``keep`` (>= 2) of the sorted ``steps``, evenly by index: the first and last always, so a
    schedule that is half log-spaced and half evenly spaced stays so."""
    if len(steps) <= keep:
        return list(steps)
    picks = np.unique(np.round(np.linspace(0, len(steps) - 1, max(keep, 2))).astype(int))
    return [steps[i] for i in picks]


def budgeted_steps(total_steps: int, every: int, per_decade: float, cost: float, fraction: float) -> list[int]:
    """``schedule_steps(total_steps, every, per_decade)`` thinned so that its events, each costing ``cost``
    training steps, cost at most ``fraction`` of the run (step 0 and the last step always kept)."""
    steps = schedule_steps(total_steps, every, per_decade)
    return thin(steps, max(2, int(fraction * total_steps / max(cost, 1e-12))))
