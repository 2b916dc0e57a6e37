"""Qwen2 / Qwen2.5 (incl. Qwen2.5-Coder, DeepSeek-R1-Distill-Qwen): Llama's block with
biases on the q, k and v projections (``blk.N.attn_{q,k,v}.bias``) and rope on pairs
``(i, i + head_dim/2)`` (NEOX mode); rope base from the file (1e6 for Qwen2.5)."""
from __future__ import annotations

from dataclasses import dataclass

from . import common


@dataclass
class Config(common.Config):
    neox: bool = True
    features: frozenset = frozenset({"qkv_bias"})


Transformer = common.Transformer
