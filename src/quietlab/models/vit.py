"""Vision Transformer of the Eureka study (timm 0.4.12's ViT as its code configures it), nanoGPT-plain.

Conv patch embedding (kernel = stride = patch), a CLS token, learnable position embeddings, pre-LN
blocks (LayerNorm eps 1e-6; attention without qkv bias, its projection and the GELU MLP with biases),
a final LayerNorm and a linear head on the CLS token. Attention is models/attention.py's, bidirectional
and without RoPE, so every variant of the decoder (temperature, NormSoftmax, heat) applies unchanged.

Taps, named as in the decoder (models/hooks.py): ``hook_embed`` (patch + position embeddings, CLS
first), ``blocks.{l}.hook_resid_post`` (B, 1 + P, d), ``blocks.{l}.attn.hook_pattern`` (B, H, 1 + P, 1 + P).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention
from .hooks import EMBED, attn_pattern, resid_post


@dataclass
class ViTConfig:
    image_size: int = 56
    patch_size: int = 4
    channels: int = 3
    n_classes: int = 10
    d_model: int = 256
    n_layers: int = 7
    n_heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.1  # stochastic depth, rising linearly from 0 at the first block to this at the last
    attention: str = "softmax"  # softmax | temperature | normsoftmax | heat
    tau: float | None = None  # divisor of the logits (temperature, NormSoftmax cap); default √d_head
    norm_form: str = "var"  # the study's NormSoftmax default is the variance form
    heat_start: float = 3.0
    heat_fraction: float = 0.5

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch size {self.patch_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"width {self.d_model} does not split into {self.n_heads} heads")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.out = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.attention, cfg.tau, cfg.norm_form,
                                        cfg.heat_start, cfg.heat_fraction, causal=False, proj_bias=True)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.mlp = MLP(cfg.d_model, int(cfg.d_model * cfg.mlp_ratio))
        self.drop_path = drop_path

    def _drop(self, x):
        """Stochastic depth: each example's branch dropped w.p. drop_path while training, rescaled otherwise."""
        if not self.training or self.drop_path == 0:
            return x
        keep = 1 - self.drop_path
        # out of place (no bernoulli_ on a fresh tensor) so that packed models under vmap draw their own masks
        return x * (torch.rand(x.shape[0], 1, 1, device=x.device) < keep).to(x.dtype) / keep

    def forward(self, x, want_pattern: bool = False):
        a, pattern = self.attn(self.attn_norm(x), None, None, want_pattern=want_pattern)
        x = x + self._drop(a)
        return x + self._drop(self.mlp(self.mlp_norm(x))), pattern


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.n_patches, cfg.d_model))
        rates = [cfg.drop_path * l / max(1, cfg.n_layers - 1) for l in range(cfg.n_layers)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():  # the patch conv keeps PyTorch's default init, as in timm
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def tap_names(self) -> list[str]:
        n = self.config.n_layers
        return [EMBED] + [resid_post(l) for l in range(n)] + [attn_pattern(l) for l in range(n)]

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1], read by the heat-treatment schedule."""
        for block in self.blocks:
            block.attn.progress.fill_(float(fraction))

    def forward(self, images: torch.Tensor, capture: Iterable[str] = ()):
        """Logits (B, n_classes); with ``capture``, also a dict of the named activations."""
        capture = set(capture)
        acts: dict[str, torch.Tensor] = {}
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, d)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        if EMBED in capture:
            acts[EMBED] = x
        for l, block in enumerate(self.blocks):
            x, pattern = block(x, want_pattern=attn_pattern(l) in capture)
            if pattern is not None:
                acts[attn_pattern(l)] = pattern
            if resid_post(l) in capture:
                acts[resid_post(l)] = x
        logits = self.head(self.norm(x[:, 0]))
        return (logits, acts) if capture else logits
