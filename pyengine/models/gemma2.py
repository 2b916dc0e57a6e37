"""Gemma 2: Gemma 3's skeleton without QK-norm, and with soft-capping.

- embedding scaled by sqrt(dim), tied head, GeGLU, post-norms (as Gemma 3);
- NEOX rope, base ``rope.freq_base`` (``rope.freq_base_swa`` on local layers if given), the
  file's rope scaling on every layer (llama.cpp gives Gemma 2's local layers the same scale);
- alternating attention: pattern 2 (``attention.sliding_window_pattern`` overrides):
  even layers use a sliding window of ``attention.sliding_window`` (default 4096), odd
  layers attend globally;
- attention logit soft-capping: scores ``s = scale * q.k`` become ``cap * tanh(s / cap)``
  before the softmax (``attn_logit_softcapping``, default 50);
- final logit soft-capping: ``cap * tanh(logits / cap)`` (``final_logit_softcapping``, default 30);
- query scale 1/sqrt(head_dim), or 1/sqrt(dim / n_heads) for the 27B (46 layers).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..gguf_file import GGUFFile
from . import common
from .gemma3 import gemma_scales


@dataclass
class Config(common.Config):
    neox: bool = True
    act: str = "gelu"
    swa_rope_scaled: bool = True
    features: frozenset = frozenset({"post_norms"})

    @classmethod
    def own_from_gguf(cls, gf: GGUFFile, kw: dict) -> dict:
        a = gf.arch_key
        return dict(gemma_scales(kw, big=kw["n_layers"] == 46),  # 46 layers: the 27B
                    attn_softcap=float(a("attn_logit_softcapping", 50.0)),
                    final_softcap=float(a("final_logit_softcapping", 30.0)),
                    sliding_window=int(a("attention.sliding_window", 4096)),
                    swa_layers=common.swa_pattern(gf, kw["n_layers"], 2),
                    rope_base_swa=float(a("rope.freq_base_swa", kw["rope_base"])))


Transformer = common.Transformer
