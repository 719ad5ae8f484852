"""Models: the decoder-only Transformer++ and its attention variants."""

from .attention import VARIANTS, CausalSelfAttention, KVCache, heat_inverse_temperature
from .transformer import Transformer, TransformerConfig

__all__ = ["VARIANTS", "CausalSelfAttention", "KVCache", "Transformer", "TransformerConfig", "heat_inverse_temperature"]
