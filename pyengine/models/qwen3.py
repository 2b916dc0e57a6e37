"""Qwen3 (dense): Llama's block with QK-norm (q and k RMS-normalised per head with their
own weights, before rope), NEOX rope, no q/k/v biases, head_dim from
``attention.key_length`` (128, not dim / n_heads)."""
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
                   features=frozenset({"qk_norm"}))


Model = common.Model
