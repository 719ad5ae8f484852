"""Causal self-attention with every softmax variant of the Eureka paper behind one switch.

With L = q·kᵀ (unscaled logits, one row per query over the keys it may see) and d the head size:

- ``softmax``      softmax(L / √d)                                    (fused SDPA kernel)
- ``temperature``  softmax(L / τ), any τ > 0; lower τ = sharper         (fused SDPA kernel)
- ``normsoftmax``  softmax(L / min(τ, σ(L))), σ the row's standard deviation over the visible keys,
                   unbiased as the Eureka study's ``norm_softmax_std`` (``norm_form="var"``: the biased
                   variance, its ``norm_softmax``); τ defaults to √d, so attention is never
                   softer than standard and is sharpened when the logits are nearly constant
- ``heat``         softmax(β(t)·L) with β following a half-cosine from ``heat_start`` down to the
                   standard 1/√d over the first ``heat_fraction`` of training, then constant
                   (fused SDPA kernel; the training loop calls ``set_progress``)

``causal=False`` and ``cos=None`` (no RoPE) give the bidirectional attention of the ViT (models/vit.py).
``rescale_qk_grad`` is the Eureka study's Q/K gradient-rescaling control, applied after backward.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .logit_variance import logit_variance

VARIANTS = ("softmax", "temperature", "normsoftmax", "heat")
NORM_FORMS = ("std", "var")
QK_GRAD_MODES = ("mean_grad", "per_head_to_value_grad", "mean_to_value_grad")


_CAUSAL_PAD = {"multiple": 0}  # padded_causal_attention's setting (0: sequences as they are)


@contextlib.contextmanager
def padded_causal_attention(multiple: int):
    """Within it, causal attention pads its sequences with zeros at the end to a multiple of ``multiple``
    (and drops the padding's outputs): a query sees only the keys before it, so the real positions' outputs
    are unchanged, but the attention's products get lengths the GPU's matrix kernels are aligned for (at 52
    tokens cuBLAS falls back to kernels for 2-element alignment). Read when the forward is traced, so a
    compiled function keeps the setting it was traced under."""
    before = _CAUSAL_PAD["multiple"]
    _CAUSAL_PAD["multiple"] = multiple
    try:
        yield
    finally:
        _CAUSAL_PAD["multiple"] = before


def heat_inverse_temperature(progress: torch.Tensor | float, start: float, d_head: int, fraction: float):
    """β at training progress p ∈ [0, 1]: half-cosine from ``start`` to 1/√d over p ∈ [0, fraction]."""
    end = 1.0 / math.sqrt(d_head)
    p = torch.as_tensor(progress, dtype=torch.float32)
    t = torch.clamp(p / max(fraction, 1e-12), 0.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + torch.cos(math.pi * t))


def rope_cache(seq_len: int, d_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x (B, H, T, d) by position-dependent angles (T, d/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same rotation with the pairs interleaved, (x[..., 2i], x[..., 2i+1]), as Llama's code
    (and the quiet-features paper) pair them. Equal to apply_rope up to a fixed permutation of the
    head's dimensions."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class KVCache:
    """Keys and values of every layer for batched incremental decoding."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, d_head: int, device, dtype):
        shape = (batch, n_heads, max_len, d_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, variant: str = "softmax", tau: float | None = None,
                 norm_form: str = "std", heat_start: float = 3.0, heat_fraction: float = 0.5,
                 rope_interleaved: bool = False, causal: bool = True, proj_bias: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if variant not in VARIANTS:
            raise ValueError(f"attention must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if norm_form not in NORM_FORMS:
            raise ValueError(f"norm_form must be one of {', '.join(NORM_FORMS)}, got {norm_form!r}")
        if tau is not None and tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.variant, self.norm_form = variant, norm_form
        self.tau = float(tau) if tau is not None else math.sqrt(self.d_head)
        self.heat_start, self.heat_fraction = heat_start, heat_fraction
        self.rope = apply_rope_interleaved if rope_interleaved else apply_rope
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # rows ordered [q; k; v]
        self.proj = nn.Linear(d_model, d_model, bias=proj_bias)
        self.causal = causal
        self.register_buffer("progress", torch.zeros(()), persistent=True)

    def inverse_temperature(self) -> torch.Tensor | float:
        if self.variant == "heat":
            return heat_inverse_temperature(self.progress, self.heat_start, self.d_head, self.heat_fraction)
        return 1.0 / self.tau if self.variant == "temperature" else 1.0 / math.sqrt(self.d_head)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, want_pattern: bool = False):
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        if cos is not None:  # q and k rotated together: half the (small, strided) operations
            (q, k), v = self.rope(qkv[:2], cos, sin), qkv[2]
        else:
            q, k, v = qkv
        causal = self.causal and (cache is None or cache.length == 0)
        if cache is not None:
            if T > 1 and cache.length:
                raise ValueError("a KV cache takes a whole prompt once, then one token at a time")
            k, v = cache.append(layer, k, v)
        pattern = None
        if self.variant == "normsoftmax" and not causal and not want_pattern:
            y = self._normsoftmax_fused(q, k, v)
        elif self.variant == "normsoftmax" or want_pattern:
            y, pattern = self._explicit(q, k, v, causal)
        else:
            beta = self.inverse_temperature()
            if isinstance(beta, torch.Tensor):  # heat: a tensor, so a compiled graph need not change
                q, beta = q * beta.to(q.dtype), 1.0
            multiple = _CAUSAL_PAD["multiple"]
            pad = (-T) % multiple if multiple and causal and T > 1 else 0
            if pad:
                q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1, scale=beta)
            if pad:
                y = y[:, :, :T]
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))
        return y, pattern

    def _normsoftmax_fused(self, q, k, v):
        """NormSoftmax without a mask through the fused kernel: a row's variance over all keys is
        var_j(q_i·k_j) = q_iᵀ C q_i with C the keys' biased covariance, so each query is divided by its
        min(τ, spread) and attention runs at scale 1. The products run in the inputs' dtype, accumulated
        in float32 (under bf16 autocast the scaled queries are read in bf16 by the attention anyway: float32
        copies of q and k cost more memory traffic than the attention); on CUDA one Triton kernel each way
        (models/logit_variance.py)."""
        var = logit_variance(q, k).clamp_min(0)
        n = k.shape[-2]
        scale = 1.0 / self._normsoftmax_divisor(var, n / max(n - 1, 1))
        return F.scaled_dot_product_attention(q * scale.to(q.dtype), k, v, scale=1.0)

    def _normsoftmax_divisor(self, var, unbiasing):
        """min(τ, spread) of rows whose logits have biased variance ``var``: the variance itself, or (std form)
        the unbiased standard deviation, ``unbiasing`` being n / (n − 1) for rows of n visible keys."""
        # clamp before the root: a query that sees one key has zero variance, and sqrt's slope there is infinite
        spread = var if self.norm_form == "var" else (var * unbiasing).clamp(min=1e-12).sqrt()
        return torch.clamp(spread, min=1e-6).clamp(max=self.tau)

    def _explicit(self, q, k, v, causal: bool):
        """The plain computation: needed by NormSoftmax and whenever the pattern is asked for."""
        logits = (q @ k.transpose(-2, -1)).float()  # (B, H, Tq, Tk), unscaled
        Tq, Tk = logits.shape[-2:]
        visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
        if causal and Tq > 1:
            visible = torch.tril(visible, diagonal=Tk - Tq)
        if self.variant == "normsoftmax":
            n_visible = visible.sum(-1, keepdim=True)
            mean = logits.masked_fill(~visible, 0).sum(-1, keepdim=True) / n_visible
            var = ((logits - mean) ** 2).masked_fill(~visible, 0).sum(-1, keepdim=True) / n_visible
            scaled = logits / self._normsoftmax_divisor(var, n_visible / (n_visible - 1).clamp(min=1))
        else:
            scaled = logits * self.inverse_temperature()
        pattern = torch.softmax(scaled.masked_fill(~visible, float("-inf")), dim=-1)
        return (pattern.to(v.dtype) @ v), pattern


@torch.no_grad()
def rescale_qk_grad(attn: CausalSelfAttention, mode: str) -> None:
    """The Eureka study's control (``--scale_qkv_grad``), on ``attn.qkv.weight.grad`` in place after backward.

    ``mean_grad``: G_Q, G_K and G_V each rescaled to the layer's mean |G|; ``per_head_to_value_grad``:
    head h's G_Q and G_K rescaled to mean |G_V,h|; ``mean_to_value_grad``: G_Q and G_K to mean |G_V|."""
    if mode not in QK_GRAD_MODES:
        raise ValueError(f"qk gradient mode must be one of {', '.join(QK_GRAD_MODES)}, got {mode!r}")
    g = attn.qkv.weight.grad
    if g is None:
        return
    parts = g.view(3, attn.n_heads, attn.d_head, g.shape[1])  # [q; k; v] x heads
    tiny = torch.finfo(g.dtype).tiny
    if mode == "mean_grad":
        target = g.abs().mean()
        for i in range(3):
            parts[i].mul_(target / parts[i].abs().mean().clamp_min(tiny))
    elif mode == "mean_to_value_grad":
        target = parts[2].abs().mean()
        for i in range(2):
            parts[i].mul_(target / parts[i].abs().mean().clamp_min(tiny))
    else:
        target = parts[2].abs().mean(dim=(1, 2), keepdim=True)  # (H, 1, 1)
        for i in range(2):
            parts[i].mul_(target / parts[i].abs().mean(dim=(1, 2), keepdim=True).clamp_min(tiny))
