"""Phi-3 / Phi-3.5: Llama's block with fused projections, split by rows at load time
(each part a view of the file's bytes):

- ``attn_qkv`` (q_w + 2 kv_w, dim) = [Wq; Wk; Wv] (separate attn_q/k/v also accepted);
- ``ffn_up`` (2 ffn_dim, dim) = [Wgate; Wup] (SwiGLU on the fused up, llama.cpp's SWIGLU);
- NEOX rope. LongRoPE (128k models): ``rope_factors_long`` / ``rope_factors_short``
  (n_rot/2 frequency factors each); the long ones are used when the context (the KV
  cache) is longer than ``rope.scaling.original_context_length``, as llama.cpp chooses;
  ``rope.scaling.attn_factor`` multiplies cos/sin.

llama.cpp runs Phi-3's sliding window as full attention (its converter's window metadata
is not trusted); so do we.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .. import quants
from ..backends.base import KVCache, RopeScaling
from ..gguf_file import GGUFFile
from . import common


@dataclass
class Config(common.Config):
    neox: bool = True
    features: frozenset = frozenset({"fused_qkv", "fused_up"})


def _factors(t) -> "object":
    return None if t is None else quants.dequantize(t.type_name, t.raw, t.n_elements).reshape(-1)


class Transformer(common.Transformer):
    def load_extra(self, W: common.Weights, gf: GGUFFile) -> None:
        half = (self.cfg.n_rot // 2,)
        self.factors_long = _factors(W.opt("rope_factors_long.weight", half))
        self.factors_short = _factors(W.opt("rope_factors_short.weight", half))
        sc = self.cfg.rope_scaling
        self.n_ctx_orig = int(gf.arch_key("rope.scaling.original_context_length", self.cfg.context_length))
        self._scalings = {}
        for name, ff in (("long", self.factors_long), ("short", self.factors_short)):
            if ff is not None:
                self._scalings[name] = replace(sc or RopeScaling(n_ctx_orig=self.n_ctx_orig), freq_factors=ff)

    def rope_scaling(self, layer: int, cache: KVCache):
        base, sc = self.cfg.rope_for(layer)
        which = "long" if cache.n_ctx > self.n_ctx_orig else "short"
        return base, self._scalings.get(which, sc)
