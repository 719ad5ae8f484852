"""Compute accounting, as the quiet-features paper counts it.

Kaplan et al. (2020, Table 1) count the forward pass of a decoder at

    C_forward per token = 2·N + 2·n_layers·n_ctx·d_model

where N is the number of non-embedding parameters (every weight except the token embedding and the
output head; RMSNorm gains included) and the second term is the attention over a context of n_ctx
tokens (here the task's ``seq_len``). The backward pass costs twice the forward, so training costs

    C per token = 3 · C_forward = 6·N + 6·n_layers·n_ctx·d_model

and a run of S steps of B examples of T tokens costs C = S · B · T · (6·N + 6·n_layers·n_ctx·d_model),
the paper's "C = 6 · tokens · non-embedding params, plus attention".
"""

from __future__ import annotations

import math

from ..models.transformer import TransformerConfig


def non_embedding_params(config: TransformerConfig) -> int:
    """N: what ``Transformer(config).n_params(non_embedding=True)`` counts, from the config alone.

    Per block: q, k, v and output projections 4·d², SwiGLU gate/up/down 3·d·d_mlp, two RMSNorm gains
    2·d; plus the final RMSNorm gain d.
    """
    d, f = config.d_model, config.d_mlp
    per_block = 4 * d * d + 3 * d * f + 2 * d
    return config.n_layers * per_block + d


def flops_per_token(config: TransformerConfig) -> int:
    """Training FLOPs per token: 6·N + 6·n_layers·n_ctx·d_model (forward + backward, Kaplan et al.)."""
    return 6 * non_embedding_params(config) + 6 * config.n_layers * config.seq_len * config.d_model


def flops_per_step(config: TransformerConfig, batch_size: int, tokens_per_example: int | None = None) -> int:
    """FLOPs of one optimizer step on ``batch_size`` examples of ``tokens_per_example`` (default seq_len)."""
    tokens = config.seq_len if tokens_per_example is None else tokens_per_example
    return batch_size * tokens * flops_per_token(config)


def steps_for_flops(flops: float, config: TransformerConfig, batch_size: int, tokens_per_example: int) -> int:
    """How many whole steps a budget of ``flops`` buys (rounded down); a ValueError if not even one."""
    if not (flops > 0 and math.isfinite(flops)):
        raise ValueError(f"the compute budget must be a positive number of FLOPs, got {flops!r}")
    if batch_size < 1 or tokens_per_example < 1:
        raise ValueError(f"batch_size and tokens_per_example must be >= 1, got {batch_size} and {tokens_per_example}")
    per_step = flops_per_step(config, batch_size, tokens_per_example)
    steps = int(flops // per_step)
    if steps < 1:
        raise ValueError(f"a budget of {flops:.3g} FLOPs is less than one step of this model "
                         f"({per_step:.3g} FLOPs per step of {batch_size} examples); raise --flops")
    return steps


# --- the paper preset's accounting (PAPER_PROTOCOL §3) ------------------------------------------------
def paper_flops_per_token(n_layers: int, d_model: int, ctx: float) -> float:
    """The paper's F = 12·L·d² + L·ctx·d per token (its N = 12·L·d², no norms, SwiGLU counted as 8·d²);
    a run of budget C trains on C / (6·F) tokens."""
    return 12 * n_layers * d_model**2 + n_layers * ctx * d_model


def paper_steps_for_flops(flops: float, n_layers: int, d_model: int, ctx: float, batch_size: int) -> int:
    """The paper's steps = ceil(tokens / (batch · ctx)) with tokens = C / (6·F), ctx the task's mean
    context (``mean_context``)."""
    if not (flops > 0 and math.isfinite(flops)):
        raise ValueError(f"the compute budget must be a positive number of FLOPs, got {flops!r}")
    if batch_size < 1 or not ctx > 0:
        raise ValueError(f"batch_size must be >= 1 and ctx > 0, got {batch_size} and {ctx}")
    tokens = flops / (6 * paper_flops_per_token(n_layers, d_model, ctx))
    return math.ceil(tokens / (batch_size * ctx))


def mean_context(batch) -> float:
    """The paper's ctx of a task Batch: the mean number of tokens up to and including each row's first
    end token (the loss mask's last position predicts it)."""
    last = batch.loss_mask.shape[1] - 1 - batch.loss_mask[:, ::-1].argmax(axis=1)
    return float((last + 2).mean())
