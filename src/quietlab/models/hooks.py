"""Activation names, TransformerLens style: one name per activation in the model, the store, the summary,
the report and the CLI.

- ``hook_embed``                    token embeddings, the input of block 0
- ``blocks.{l}.hook_resid_post``    the residual stream after block l
- ``blocks.{l}.attn.hook_pattern``  block l's attention probabilities

Per-head attention statistics are named after the block's attention module, ``blocks.{l}.attn``.
"""

from __future__ import annotations

import re

EMBED = "hook_embed"
_RESID = re.compile(r"blocks\.(\d+)\.hook_resid_post$")
_ATTN = re.compile(r"blocks\.(\d+)\.attn(?:\.hook_pattern)?$")


def resid_post(layer: int) -> str:
    return f"blocks.{int(layer)}.hook_resid_post"


def attn_pattern(layer: int) -> str:
    return f"blocks.{int(layer)}.attn.hook_pattern"


def attn_module(layer: int) -> str:
    return f"blocks.{int(layer)}.attn"


def residual_hooks(n_layers: int) -> list[str]:
    """The residual stream's names in depth order: the embeddings, then each block's output."""
    return [EMBED] + [resid_post(l) for l in range(n_layers)]


def block_of(name: str) -> int | None:
    """The block index a name belongs to (None for the embeddings or a name of another model)."""
    m = _RESID.match(name) or _ATTN.match(name)
    return int(m.group(1)) if m else None


def depth(name: str) -> tuple[int, str]:
    """Sort key putting names in depth order: the embeddings, then blocks 0, 1, ... (then other names)."""
    if name == EMBED:
        return (-1, "")
    b = block_of(name)
    return (b, "") if b is not None else (1 << 30, str(name))


def hook_label(name) -> str:
    """The human label of a name: "embeddings", "block 3 output", "block 3 attention"; other text as is."""
    if name is None:
        return "—"
    name = str(name)
    if name == EMBED:
        return "embeddings"
    if m := _RESID.match(name):
        return f"block {m.group(1)} output"
    if m := _ATTN.match(name):
        return f"block {m.group(1)} attention"
    return name


def check_hook(name: str, allowed: list[str]) -> str:
    """``name`` if it is one of ``allowed``, else a one-line ValueError listing them."""
    if name not in allowed:
        raise ValueError(f"unknown layer {name!r}; use one of: {', '.join(allowed)}")
    return name
