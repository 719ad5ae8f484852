"""Held-out evaluation: loss, token accuracy and exact match from one teacher-forced pass.

Metrics (names as logged in metrics.sqlite):

- ``eval/loss``          mean cross-entropy over answer tokens (EOS included), teacher-forced
- ``eval/token_acc``     fraction of answer tokens whose argmax prediction is right, teacher-forced
- ``eval/pos_acc/{i}``   the same at the i-th answer token (i = 0 is the first token after ``=``; under
                         the paper preset ``=`` itself)
- ``eval/exact_match``   fraction of examples whose every answer token (EOS included) is the argmax
                         under teacher forcing
- ``eval/exact_match_given_eq``  tasks of the paper preset only, whose targets start with ``=`` itself
                         (the prompt ends before it, so ``eval/exact_match`` is the paper's: the model must
                         emit ``=``): the same with ``=`` given, every target after it right

Exact match needs no decoding: greedy generation reproduces the answer exactly when, and only when,
every answer token is the argmax given the true prefix (by induction over the answer: while the
generated prefix equals the true one, each generated token is the teacher-forced argmax; the first
wrong one is generated wrong). Greedy decoding (decode.py) stays for the verbs that show answers.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F



def as_tensors(batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens long, loss_mask bool, answer_start long) of a task Batch, on ``device``."""
    tokens = torch.as_tensor(batch.tokens, dtype=torch.long).to(device)
    mask = torch.as_tensor(batch.loss_mask, dtype=torch.bool).to(device)
    start = torch.as_tensor(batch.answer_start, dtype=torch.long).to(device)
    return tokens, mask, start


def masked_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over the positions where ``loss_mask`` is True
    (logits[:, t] predicts tokens[:, t+1]). Weighted rather than indexed, so it never waits for the GPU."""
    m = loss_mask[:, :-1].float()
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
    return (ce * m).sum() / m.sum().clamp(min=1)


def after_first_target(loss_mask: torch.Tensor) -> torch.Tensor:
    """``loss_mask`` without each row's first target: under the paper preset the ``=`` token, so that what is
    left scores the answer with ``=`` given in the prompt."""
    first = loss_mask.int().cumsum(1) == 1
    return loss_mask & ~first


def teacher_forced_exact(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every answer token (where ``loss_mask`` marks the position before it) is the argmax of
    ``logits`` under teacher forcing; equal to greedy decoding's exact match (see above)."""
    hit = logits[:, :-1].argmax(-1) == tokens[:, 1:]
    return (hit | ~loss_mask[:, :-1]).all(dim=1)


@torch.no_grad()
def evaluate(model, task, batch, device=None, autocast_dtype: torch.dtype | None = None,
             chunk: int = 512) -> dict[str, float]:
    """Evaluate ``model`` on a task Batch (usually the held-out side); returns the metrics above.

    Answers are scored against the batch's own tokens, which the task generated with its solver; ``task``
    says whether to add ``eval/exact_match_given_eq`` (paper preset). The model's train/eval mode is restored.
    """
    given_eq = getattr(task, "preset", "quietlab") == "paper"
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    seq_len = batch.tokens.shape[1]
    pos_correct = torch.zeros(seq_len, device=device)
    pos_count = torch.zeros(seq_len, device=device)
    loss_sum, n_tokens, n_exact, n_exact_given_eq = 0.0, 0, 0, 0
    try:
        for lo in range(0, len(batch), chunk):
            tokens, mask, _ = as_tensors(batch.take(slice(lo, lo + chunk)), device)
            with autocast:
                logits = model(tokens)
            logits = logits.float()
            m, target = mask[:, :-1], tokens[:, 1:]
            loss_sum += float(F.cross_entropy(logits[:, :-1][m], target[m], reduction="sum"))
            n_tokens += int(m.sum())
            n_exact += int(teacher_forced_exact(logits, tokens, mask).sum())
            if given_eq:
                n_exact_given_eq += int(teacher_forced_exact(logits, tokens, after_first_target(mask)).sum())
            correct = (logits[:, :-1].argmax(-1) == target)[m].float()
            index = (torch.cumsum(m, dim=1) - 1)[m]  # i-th answer token of its row
            pos_correct.index_add_(0, index, correct)
            pos_count.index_add_(0, index, torch.ones_like(correct))
    finally:
        model.train(was_training)
    out = {
        "eval/loss": loss_sum / max(n_tokens, 1),
        "eval/token_acc": float(pos_correct.sum()) / max(n_tokens, 1),
        "eval/exact_match": n_exact / max(len(batch), 1),
    }
    if given_eq:
        out["eval/exact_match_given_eq"] = n_exact_given_eq / max(len(batch), 1)
    for i, (c, n) in enumerate(zip(pos_correct.tolist(), pos_count.tolist())):
        if n:
            out[f"eval/pos_acc/{i}"] = c / n
    return out
