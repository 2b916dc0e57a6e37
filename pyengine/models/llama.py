"""Llama (and the many models that share its GGUF layout: SmolLM2, Mistral, Llama 3.x).

The plain block of :mod:`.common`: SwiGLU FFN, rope on adjacent pairs (llama.cpp's
converter permutes Wq/Wk so that rope pairs adjacent dims: NORM mode). Optional q/k/v
biases as llama.cpp allows them. Mistral is this architecture with a SentencePiece vocab.

Rope scaling, read as llama.cpp reads it:
- Llama 3.1's ``rope_freqs.weight`` (n_rot/2 values): pair i's frequency is divided by
  its factor (the "llama3" scaling is baked into these factors by the converter);
- ``rope.scaling.type`` ``linear`` (angles / factor) or ``yarn`` (see common.rope_scaling_from_gguf).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .. import quants
from ..backends.base import RopeScaling
from ..gguf_file import GGUFFile
from . import common


@dataclass
class Config(common.Config):
    features: frozenset = frozenset({"qkv_bias"})


class Transformer(common.Transformer):
    def load_extra(self, W: common.Weights, gf: GGUFFile) -> None:
        t = W.opt("rope_freqs.weight", (self.cfg.n_rot // 2,))
        if t is not None:  # Llama 3.1: per-pair frequency factors
            ff = quants.dequantize(t.type_name, t.raw, t.n_elements).reshape(-1)
            sc = self.cfg.rope_scaling or RopeScaling(n_ctx_orig=self.cfg.context_length)
            self.cfg.rope_scaling = replace(sc, freq_factors=ff)
