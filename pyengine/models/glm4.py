"""GLM-4 (GLM-4-9B-0414, ``glm4``), as llama.cpp's LLM_ARCH_GLM4 graph runs it:

- q, k, v from a fused ``attn_qkv`` (+ ``attn_qkv.bias``), split by rows at load time
  (or separate attn_q/k/v with biases);
- partial rope: only the first ``rope.dimension_count`` dims of each head turn (NORM mode,
  adjacent pairs); query scale 1/sqrt(head_dim);
- post-norms: the attention output and the FFN output are RMS-normalised before they
  join the residual stream (``post_attention_norm``, ``post_ffw_norm``);
- SwiGLU on a fused ``ffn_up`` (2 ffn_dim, dim) = [Wgate; Wup].

Files with multi-section rope (``rope.dimension_sections``, vision GLM) or NextN layers
are refused: their extra tensors are unused and named in the error.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelFileError
from ..gguf_file import GGUFFile
from . import common


@dataclass
class Config(common.Config):
    features: frozenset = frozenset({"fused_qkv", "qkv_bias", "post_norms", "fused_up"})

    @classmethod
    def own_from_gguf(cls, gf: GGUFFile, kw: dict) -> dict:
        sections = gf.arch_key("rope.dimension_sections")
        if sections is not None and any(int(s) for s in sections):
            raise ModelFileError(f"{gf.path}: GLM-4 multi-section rope (rope.dimension_sections) is not supported")
        return {}


Transformer = common.Transformer
