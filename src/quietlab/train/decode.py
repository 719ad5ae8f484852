"""Batched greedy decoding with a KV cache, and exact-match scoring.

Rows may have prompts of different lengths (graph tasks): decoding starts after the shortest prompt,
and at positions still inside a row's own prompt that row's prompt token is forced instead of the
prediction. A row is finished once it has produced the end token ``.`` (id 0); what follows is padding.
"""

from __future__ import annotations

import torch

PAD_ID = 0


def answer_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """Positions of the answer tokens (EOS included): the loss mask shifted one to the right."""
    out = torch.zeros_like(loss_mask)
    out[:, 1:] = loss_mask[:, :-1]
    return out


def exact_match(generated: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every answer token and the end token equal to the target's."""
    where = answer_positions(loss_mask)
    return ((generated == target) | ~where).all(dim=1)


@torch.no_grad()
def greedy_decode(model, tokens: torch.Tensor, answer_start: torch.Tensor, edit=None, use_cache: bool = True):
    """Complete every row after its prompt ``tokens[i, :answer_start[i]]``; returns (B, T) token ids.

    ``use_cache=False`` recomputes the whole prefix at every step (the reference the cache must equal).
    """
    B, T = tokens.shape
    answer_start = answer_start.to(tokens.device)
    out = tokens.clone()
    first = int(answer_start.min())
    out[:, first:] = torch.where(torch.arange(first, T, device=tokens.device) < answer_start[:, None],
                                 tokens[:, first:], PAD_ID)
    cache = model.new_cache(B) if use_cache else None
    finished = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    logits = model(out[:, :first], edit=edit, cache=cache)
    for t in range(first, T):
        pred = logits[:, -1].argmax(-1)
        forced = t < answer_start
        pred = torch.where(finished, torch.full_like(pred, PAD_ID), pred)
        out[:, t] = torch.where(forced, tokens[:, t], pred)
        finished |= ~forced & (pred == PAD_ID)
        if t + 1 == T or bool(finished.all()):
            break
        logits = model(out[:, t : t + 1], edit=edit, cache=cache) if use_cache else model(out[:, : t + 1], edit=edit)
    return out
