"""Gemma 3: Llama's skeleton with Gemma's quirks, all kept here.

- the embedding is scaled by sqrt(dim) on the way in (and the matrix is tied to the head);
- QK-norm: q and k are RMS-normalised per head (own weights) before rope;
- rope pairs dims (i, i + head_dim/2) (NEOX mode);
- sliding-window attention (window ``sliding_window``) on five layers out of six; every
  sixth layer (il % 6 == 5) attends globally. Local layers use rope base 10,000, global
  ones the file's ``rope.freq_base`` (1e6);
- query scale 1/sqrt(head_dim);
- post-norms: the attention output and the FFN output are RMS-normalised again before
  they join the residual stream;
- GeGLU FFN: gelu_tanh(h Wgate^T) * h Wup^T.

GGUF norm weights already include Gemma's "+1" (the converter adds it), so every norm
here is a plain ``rmsnorm(x) * w``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Backend, KVCache
from ..errors import ModelFileError
from ..gguf_file import GGUFFile
from . import llama

SWA_PATTERN = 6  # five sliding-window layers, then one global
ROPE_BASE_LOCAL = 10000.0


@dataclass
class Config(llama.Config):
    sliding_window: int = 512
    rope_base_local: float = ROPE_BASE_LOCAL

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        base = llama.Config.from_gguf(gf)
        if gf.arch_key("final_logit_softcapping") or gf.arch_key("attn_logit_softcapping"):
            raise ModelFileError(f"{gf.path}: Gemma logit soft-capping is not supported")
        return cls(**vars(base), sliding_window=int(gf.arch_key("attention.sliding_window", 512)))

    def is_local(self, layer: int) -> bool:
        return layer % SWA_PATTERN != SWA_PATTERN - 1


class Layer(llama.Layer):
    def __init__(self, gf: GGUFFile, i: int):
        super().__init__(gf, i)
        t = lambda s: gf.tensor(f"blk.{i}.{s}.weight")  # noqa: E731
        self.q_norm = t("attn_q_norm")                  # (head_dim,)
        self.k_norm = t("attn_k_norm")                  # (head_dim,)
        self.post_attn_norm = t("post_attention_norm")  # (dim,)
        self.post_ffn_norm = t("post_ffw_norm")         # (dim,)


class Model(llama.Model):
    Layer = Layer

    @classmethod
    def expected_shapes(cls, c: Config) -> dict:
        want = super().expected_shapes(c)
        for i in range(c.n_layers):
            b = f"blk.{i}."
            for name, n in (("attn_q_norm", c.head_dim), ("attn_k_norm", c.head_dim),
                            ("post_attention_norm", c.dim), ("post_ffw_norm", c.dim)):
                want[b + name + ".weight"] = llama.Want((n,), ("F32", "F16", "BF16"))
        return want

    def forward(self, ops: Backend, ids: np.ndarray, pos0: int, cache: KVCache, last_only: bool = True):
        c = self.cfg
        n = len(ids)
        pos = np.arange(pos0, pos0 + n, dtype=np.int32)
        x = ops.scale(ops.embed(self.tok_embd, ids), np.sqrt(c.dim))  # (n, dim)
        scale = 1.0 / np.sqrt(c.head_dim)
        for i, L in enumerate(self.layers):
            local = c.is_local(i)
            base = c.rope_base_local if local else c.rope_base
            h = ops.rmsnorm(x, L.attn_norm, c.norm_eps)
            q = ops.rmsnorm(ops.matmul(L.wq, h), L.q_norm, c.norm_eps)  # per-head norm
            k = ops.rmsnorm(ops.matmul(L.wk, h), L.k_norm, c.norm_eps)
            q = ops.rope(q, pos, c.n_heads, c.head_dim, base, True, c.n_rot)
            k = ops.rope(k, pos, c.n_kv_heads, c.head_dim, base, True, c.n_rot)
            v = ops.matmul(L.wv, h)
            ops.kv_write(cache, i, pos0, k, v)
            a = ops.attention(q, cache, i, pos0, c.n_heads, c.n_kv_heads, c.head_dim, scale,
                              window=c.sliding_window if local else 0)
            x = ops.add(x, ops.rmsnorm(ops.matmul(L.wo, a), L.post_attn_norm, c.norm_eps))
            h = ops.rmsnorm(x, L.ffn_norm, c.norm_eps)
            g = ops.gelu_mul(ops.matmul(L.w_gate, h), ops.matmul(L.w_up, h))
            x = ops.add(x, ops.rmsnorm(ops.matmul(L.w_down, g), L.post_ffn_norm, c.norm_eps))
        if last_only:
            x = x[n - 1:n]
        x = ops.rmsnorm(x, self.output_norm, c.norm_eps)
        return ops.matmul(self.output, x)  # (n or 1, n_vocab)
