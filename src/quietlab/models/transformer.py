"""Decoder-only Transformer++ (the quiet-features paper's model): pre-norm RMSNorm, RoPE, SwiGLU MLP,
no biases, untied embeddings.

Activations are handed out by name, only when asked (``capture``), and may be edited in flight
(``edit``), which is how probes and ablations reach the residual stream:

- ``hook_embed``                    token embeddings, the input of block 0      (B, T, d_model)
- ``blocks.{l}.hook_resid_post``    the output of block l, l = 0 .. n_layers-1  (B, T, d_model)
- ``blocks.{l}.attn.hook_pattern``  block l's attention probabilities           (B, n_heads, T, T)

(TransformerLens names; ``models.hooks`` builds and labels them.)

    logits = model(tokens)
    logits, acts = model(tokens, capture=["blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"])
    logits = model(tokens, edit={"blocks.1.hook_resid_post": fn})  # fn(x, positions) -> x; positions: (T,)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache, rope_cache
from .hooks import EMBED, attn_pattern, resid_post, residual_hooks

Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TransformerConfig:
    vocab_size: int
    seq_len: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int | None = None  # SwiGLU hidden size; default 8/3·d_model rounded up to a multiple of 8
    attention: str = "softmax"  # softmax | temperature | normsoftmax | heat
    tau: float | None = None  # temperature / NormSoftmax cap; default √d_head
    norm_form: str = "std"  # NormSoftmax: std or var
    heat_start: float = 3.0  # heat: inverse temperature at step 0
    heat_fraction: float = 0.5  # heat: fraction of training over which β anneals to 1/√d_head
    rope_base: float = 10000.0
    rope_pairs: str = "halves"  # halves: (x_i, x_{i+d/2}) | interleaved: (x_2i, x_2i+1), Llama's and the paper's
    norm_eps: float = 1e-6  # RMSNorm epsilon (the paper: 1e-5)
    init: str = "gpt2"  # gpt2: N(0, 0.02), residual projections scaled | torch_default: PyTorch's (the paper's)

    def __post_init__(self):
        if self.d_mlp is None:
            self.d_mlp = 8 * math.ceil(8 * self.d_model / 3 / 8)
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "d_mlp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, allowed in (("rope_pairs", ("halves", "interleaved")), ("init", ("gpt2", "torch_default"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not self.norm_eps >= 0:
            raise ValueError(f"norm_eps must be >= 0, got {self.norm_eps}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must split into {self.n_heads} heads of even size (RoPE)")

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


#: devices on which SwiGLU computes a hidden size that is not a multiple of 8 zero-padded to one
PADDED_HIDDEN_DEVICES = ("cuda",)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)).

    On a GPU a hidden size that is not a multiple of 8 is computed zero-padded to one. The paper's sizes,
    int(8d/3) rounded up to even (22, 42, ..., 1366), leave every hidden activation's rows 2-element aligned,
    and cuBLAS then runs its products on slow kernels for unaligned operands (a quarter to a third of a
    paper-grid pack's step on an H100: benchmarks/results/h100-2026-12-05-s22/). The padded units are
    exactly zero (silu(0) · 0), and their weights' gradients are dropped by the padding's backward, so the
    function and every parameter's gradient are the unpadded ones; the parameters keep the model's shape."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_mlp, bias=False)
        self.up = nn.Linear(d_model, d_mlp, bias=False)
        self.down = nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x):
        pad = (-self.gate.out_features) % 8 if x.device.type in PADDED_HIDDEN_DEVICES else 0
        if not pad:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        gate, up = (F.pad(w.weight, (0, 0, 0, pad)) for w in (self.gate, self.up))
        return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), F.pad(self.down.weight, (0, pad)))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.attention, cfg.tau, cfg.norm_form,
                                        cfg.heat_start, cfg.heat_fraction, cfg.rope_pairs == "interleaved")
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_mlp)

    def forward(self, x, cos, sin, cache=None, layer=0, want_pattern=False):
        a, pattern = self.attn(self.attn_norm(x), cos, sin, cache, layer, want_pattern)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), pattern


DENSE_GRAD_VOCAB = 1024  # vocabularies up to this size may take the embedding's gradient as a matrix product


def dense_embedding_grad(x: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``x`` = ``weight[tokens]`` (the embedding's output), its values unchanged, with the weight's gradient
    computed as one_hot(tokens)ᵀ · grad, a matrix product in the weight's dtype, instead of by accumulating
    each token's rows (vocabularies of at most ``DENSE_GRAD_VOCAB``; larger ones keep ``x``): under torch's
    deterministic algorithms a CUDA index-accumulate serialises repeated indices, and a task's few tokens
    repeat thousands of times a batch (1.7 ms of the paper preset's 14.5 ms packed BFS step;
    benchmarks/pack_step_profile.py)."""
    if weight.shape[0] > DENSE_GRAD_VOCAB:
        return x
    with torch.autocast(weight.device.type, enabled=False):
        one_hot = tokens[..., None] == torch.arange(weight.shape[0], device=tokens.device)  # F.one_hot fails under vmap
        through = one_hot.to(weight.dtype) @ weight
    return x.detach() + (through - through.detach())  # x's values, exactly; the gradient through the product


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_cache(cfg.seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the projections into the residual stream
            for w in (block.attn.proj.weight, block.mlp.down.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.init == "torch_default":  # PyTorch's own: Embedding N(0, 1), Linear U(±1/√fan_in)
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.reset_parameters()

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def tap_names(self) -> list[str]:
        n = self.config.n_layers
        return residual_hooks(n) + [attn_pattern(l) for l in range(n)]

    def n_params(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed.weight.numel() + self.lm_head.weight.numel()
        return total

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1], read by the heat-treatment schedule."""
        for block in self.blocks:
            block.attn.progress.fill_(float(fraction))

    def new_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        cfg = self.config
        p = self.embed.weight
        return KVCache(cfg.n_layers, batch, cfg.n_heads, cfg.seq_len, cfg.d_model // cfg.n_heads,
                       device or p.device, dtype or p.dtype)

    def forward(self, tokens: torch.Tensor, capture: Iterable[str] = (), edit: dict[str, Edit] | None = None,
                cache: KVCache | None = None):
        """Logits (B, T, vocab); with ``capture``, also a dict of the named activations."""
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's seq_len {self.config.seq_len}")
        capture = set(capture)
        acts: dict[str, torch.Tensor] = {}
        positions = torch.arange(start, start + T, device=tokens.device)
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]

        x = self.embed(tokens)
        if self.embed.weight.is_cuda and torch.is_grad_enabled() and torch.are_deterministic_algorithms_enabled():
            x = dense_embedding_grad(x, self.embed.weight, tokens)
        if capture or edit:
            x = self._tap(EMBED, x, positions, capture, edit, acts)
        for l, block in enumerate(self.blocks):
            # the layer index only where the cache needs it: every block is then called alike, so a
            # compiled block's code is reused by all of them (regional compilation, train/loop.py)
            x, pattern = (block(x, cos, sin, cache, l, want_pattern=attn_pattern(l) in capture) if cache is not None
                          else block(x, cos, sin, want_pattern=attn_pattern(l) in capture))
            if pattern is not None and attn_pattern(l) in capture:
                acts[attn_pattern(l)] = pattern
            if capture or edit:
                x = self._tap(resid_post(l), x, positions, capture, edit, acts)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.norm(x))
        return (logits, acts) if capture else logits

    @staticmethod
    def _tap(name, x, positions, capture, edit, acts):
        if edit and name in edit:
            x = edit[name](x, positions)
        if name in capture:
            acts[name] = x
        return x
