"""Llama (and the many models that share its GGUF layout, e.g. SmolLM2).

One block, for the residual stream ``x (n, dim)``::

    h = rmsnorm(x) ; q, k, v = h Wq^T, h Wk^T, h Wv^T ; rope(q), rope(k)
    x = x + attention(q, K, V) Wo^T
    h = rmsnorm(x) ; x = x + (silu(h Wgate^T) * h Wup^T) Wdown^T

llama.cpp's converter permutes Wq/Wk so that rope pairs adjacent dims (NORM mode).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Backend, KVCache
from ..errors import ModelFileError
from ..gguf_file import GGUFFile, Want


@dataclass
class Config:
    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float
    rope_base: float
    n_rot: int
    context_length: int

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        gf.expect_scalars()
        a = gf.arch_key
        dim = int(gf.require(f"{gf.architecture}.embedding_length"))
        n_heads = int(gf.require(f"{gf.architecture}.attention.head_count"))
        head_dim = int(a("attention.key_length", dim // n_heads))
        scaling = a("rope.scaling.type")
        if scaling not in (None, "none") and float(a("rope.scaling.factor", 1.0)) != 1.0:
            raise ModelFileError(f"{gf.path}: rope scaling {scaling!r} is not supported yet")
        tokens = gf.metadata.get("tokenizer.ggml.tokens")
        n_vocab = int(a("vocab_size", len(tokens) if tokens is not None else gf.tensor("token_embd.weight").rows))
        return cls(
            n_vocab=n_vocab,
            dim=dim,
            n_layers=int(gf.require(f"{gf.architecture}.block_count")),
            n_heads=n_heads,
            n_kv_heads=int(a("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            ffn_dim=int(gf.require(f"{gf.architecture}.feed_forward_length")),
            norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(a("rope.freq_base", 10000.0)),
            n_rot=int(a("rope.dimension_count", head_dim)),
            context_length=int(a("context_length", 2048)),
        )


class Layer:
    def __init__(self, gf: GGUFFile, i: int):
        t = lambda s: gf.tensor(f"blk.{i}.{s}.weight")  # noqa: E731
        self.attn_norm = t("attn_norm")  # (dim,) F32
        self.wq = t("attn_q")            # (n_heads*head_dim, dim)
        self.wk = t("attn_k")            # (n_kv_heads*head_dim, dim)
        self.wv = t("attn_v")            # (n_kv_heads*head_dim, dim)
        self.wo = t("attn_output")       # (dim, n_heads*head_dim)
        self.ffn_norm = t("ffn_norm")    # (dim,) F32
        self.w_gate = t("ffn_gate")      # (ffn_dim, dim)
        self.w_up = t("ffn_up")          # (ffn_dim, dim)
        self.w_down = t("ffn_down")      # (dim, ffn_dim)


class Model:
    Layer = Layer  # an architecture with extra per-layer tensors overrides this

    def __init__(self, cfg: Config, gf: GGUFFile):
        self.cfg = cfg
        self.tok_embd = gf.tensor("token_embd.weight")  # (n_vocab, dim)
        self.layers = [self.Layer(gf, i) for i in range(cfg.n_layers)]
        self.output_norm = gf.tensor("output_norm.weight")  # (dim,)
        # tied embeddings: no output.weight means the embedding matrix doubles as the head
        self.output = gf.tensors.get("output.weight", self.tok_embd)  # (n_vocab, dim)
        self.check(cfg, gf)

    @classmethod
    def expected_shapes(cls, c: Config) -> dict:
        """Tensor name -> shape (or :class:`Want`) the config implies; for ``gf.check_shapes``."""
        vec = lambda n: Want((n,), ("F32", "F16", "BF16"))  # noqa: E731  norms: float vectors
        q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        want = {"token_embd.weight": (c.n_vocab, c.dim), "output_norm.weight": vec(c.dim),
                "output.weight": Want((c.n_vocab, c.dim), optional=True)}
        for i in range(c.n_layers):
            b = f"blk.{i}."
            want.update({b + "attn_norm.weight": vec(c.dim), b + "attn_q.weight": (q, c.dim),
                         b + "attn_k.weight": (kv, c.dim), b + "attn_v.weight": (kv, c.dim),
                         b + "attn_output.weight": (c.dim, q), b + "ffn_norm.weight": vec(c.dim),
                         b + "ffn_gate.weight": (c.ffn_dim, c.dim), b + "ffn_up.weight": (c.ffn_dim, c.dim),
                         b + "ffn_down.weight": (c.dim, c.ffn_dim)})
        return want

    def check(self, c: Config, gf: GGUFFile) -> None:
        """Config values against each other, then every tensor's shape and type (one-line errors)."""
        a = gf.architecture
        gf.expect(c.n_heads % c.n_kv_heads == 0, f"{a}.attention.head_count_kv", f"a divisor of {c.n_heads}")
        gf.expect(0 < c.n_rot <= c.head_dim and c.n_rot % 2 == 0, f"{a}.rope.dimension_count",
                  f"an even number in 2..{c.head_dim} (head_dim)")
        tokens = gf.metadata.get("tokenizer.ggml.tokens")
        if tokens is not None:
            gf.expect(len(tokens) == c.n_vocab, "tokenizer.ggml.tokens",
                      f"{c.n_vocab} tokens (the model's vocabulary), got {len(tokens)}")
        gf.check_shapes(self.expected_shapes(c))

    @property
    def kv_width(self) -> int:
        return self.cfg.n_kv_heads * self.cfg.head_dim

    def forward(self, ops: Backend, ids: np.ndarray, pos0: int, cache: KVCache, last_only: bool = True):
        c = self.cfg
        n = len(ids)
        pos = np.arange(pos0, pos0 + n, dtype=np.int32)
        x = ops.embed(self.tok_embd, ids)  # (n, dim)
        scale = 1.0 / np.sqrt(c.head_dim)
        for i, L in enumerate(self.layers):
            h = ops.rmsnorm(x, L.attn_norm, c.norm_eps)
            q = ops.rope(ops.matmul(L.wq, h), pos, c.n_heads, c.head_dim, c.rope_base, False, c.n_rot)
            k = ops.rope(ops.matmul(L.wk, h), pos, c.n_kv_heads, c.head_dim, c.rope_base, False, c.n_rot)
            v = ops.matmul(L.wv, h)
            ops.kv_write(cache, i, pos0, k, v)
            a = ops.attention(q, cache, i, pos0, c.n_heads, c.n_kv_heads, c.head_dim, scale)
            x = ops.add(x, ops.matmul(L.wo, a))
            h = ops.rmsnorm(x, L.ffn_norm, c.norm_eps)
            g = ops.silu_mul(ops.matmul(L.w_gate, h), ops.matmul(L.w_up, h))
            x = ops.add(x, ops.matmul(L.w_down, g))
        if last_only:
            x = x[n - 1:n]
        x = ops.rmsnorm(x, self.output_norm, c.norm_eps)
        return ops.matmul(self.output, x)  # (n or 1, n_vocab)
