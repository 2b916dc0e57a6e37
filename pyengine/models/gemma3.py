"""Gemma 3: Llama's skeleton with Gemma's quirks, all kept here.

- the embedding is scaled by sqrt(dim) on the way in (and the matrix is tied to the head);
- QK-norm: q and k are RMS-normalised per head (own weights) before rope;
- rope pairs dims (i, i + head_dim/2) (NEOX mode);
- sliding-window attention (window ``attention.sliding_window``) on the layers the
  pattern makes local: ``attention.sliding_window_pattern`` from the file, else 6 (five
  local layers, then one global: il % 6 < 5 is local). Local layers use rope base
  ``rope.freq_base_swa`` (default 10,000) unscaled, global ones the file's base and scaling;
- query scale 1/sqrt(head_dim) (1/sqrt(dim/n_heads) for the 27B, as llama.cpp);
- post-norms: the attention output and the FFN output are RMS-normalised again before
  they join the residual stream;
- GeGLU FFN: gelu_tanh(h Wgate^T) * h Wup^T; final logit soft-capping if the file asks.

GGUF norm weights already include Gemma's "+1" (the converter adds it), so every norm
here is a plain ``rmsnorm(x) * w``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from . import common

SWA_PATTERN = 6  # five sliding-window layers, then one global (when the file does not say)
ROPE_BASE_LOCAL = 10000.0


def gemma_scales(kw: dict, big: bool) -> dict:
    """Gemma's two scales (Gemma 2 and 3): the embedding times sqrt(dim) on the way in, and
    queries times 1/sqrt(head_dim), or 1/sqrt(dim / n_heads) for the 27B (``big``)."""
    return dict(embed_scale=math.sqrt(kw["dim"]),
                attn_scale=1.0 / math.sqrt(kw["dim"] / kw["n_heads"] if big else kw["head_dim"]))


@dataclass
class Config(common.Config):
    neox: bool = True
    act: str = "gelu"
    features: frozenset = frozenset({"qk_norm", "post_norms"})

    @classmethod
    def own_from_gguf(cls, gf: GGUFFile, kw: dict) -> dict:
        a = gf.arch_key
        window = int(a("attention.sliding_window", 0) or 0)
        swa = common.swa_pattern(gf, kw["n_layers"], SWA_PATTERN) if window > 0 else ()
        return dict(gemma_scales(kw, big=kw["n_layers"] == 62),  # 62 layers: the 27B
                    final_softcap=float(a("final_logit_softcapping", 0.0) or 0.0),
                    sliding_window=window, swa_layers=swa,
                    rope_base_swa=float(a("rope.freq_base_swa", ROPE_BASE_LOCAL)))


Transformer = common.Transformer
