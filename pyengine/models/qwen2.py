"""Qwen2 / Qwen2.5 (incl. Qwen2.5-Coder, DeepSeek-R1-Distill-Qwen): Llama's block with
biases on the q, k and v projections (``blk.N.attn_{q,k,v}.bias``) and rope on pairs
``(i, i + head_dim/2)`` (NEOX mode); rope base from the file (1e6 for Qwen2.5)."""
from __future__ import annotations

from dataclasses import dataclass

from ..gguf_file import GGUFFile
from . import common


@dataclass
class Config(common.Config):
    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        kw = common.Config.base_from_gguf(gf)
        return cls(**kw, neox=True, rope_scaling=common.rope_scaling_from_gguf(gf, kw),
                   features=frozenset({"qkv_bias"}))


Model = common.Model
