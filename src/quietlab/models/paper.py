"""The paper preset's model (PAPER_PROTOCOL §2): Llama-2's Transformer as the quiet-features study
configured it, as a TransformerConfig."""

from __future__ import annotations

from .transformer import TransformerConfig


def paper_d_mlp(d_model: int) -> int:
    """SwiGLU hidden size int(8d/3) rounded up to even: 22, 42, 86, 170, 342, 682, 1366 for d = 8 ... 512."""
    hidden = int(8 * d_model / 3)
    return hidden + hidden % 2


def paper_config(vocab_size: int, seq_len: int, d_model: int, n_layers: int, **options) -> TransformerConfig:
    """4 heads, interleaved RoPE (θ = 10,000), RMSNorm eps 1e-5, PyTorch's default initialisation,
    untied output matrix, no biases. ``options``: other TransformerConfig fields (e.g. ``n_heads``,
    ``attention``), or ``d_mlp`` in place of the paper's."""
    settings = dict(n_heads=4, d_mlp=paper_d_mlp(d_model), rope_pairs="interleaved", norm_eps=1e-5,
                    init="torch_default")
    return TransformerConfig(vocab_size=vocab_size, seq_len=seq_len, d_model=d_model, n_layers=n_layers,
                             **{**settings, **options})
