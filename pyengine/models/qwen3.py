"""Qwen3 (dense): Llama's block with QK-norm (q and k RMS-normalised per head with their
own weights, before rope), NEOX rope, no q/k/v biases, head_dim from
``attention.key_length`` (128, not dim / n_heads)."""
from __future__ import annotations

from dataclasses import dataclass

from . import common


@dataclass
class Config(common.Config):
    neox: bool = True
    features: frozenset = frozenset({"qk_norm"})


Transformer = common.Transformer
