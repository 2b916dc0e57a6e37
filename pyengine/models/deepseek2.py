"""DeepSeek-V2 / V2-Lite / Coder-V2 (``deepseek2``): Multi-head Latent Attention with a
compressed KV cache, routed + shared experts, leading dense layers. Facts from llama.cpp
(src/models/deepseek2.cpp, llama-context.cpp's YaRN factors), read as it reads the file.

Attention (MLA, "absorbed" form; ``R`` = kv_lora_rank, ``r`` = rope dims, ``dn`` = qk_nope
dims, ``dv`` = v head dims, ``H`` heads)::

    q        = h Wq^T                        or  rmsnorm(h Wq_a^T) Wq_b^T   (q_lora_rank > 0)
    q_nope, q_pe = q per head split (dn, r)
    c, k_pe  = h Wkv_a^T split (R, r);  c = rmsnorm(c, kv_a_norm)
    q_pe, k_pe = rope(q_pe), rope(k_pe)      # NORM mode (adjacent pairs), one k_pe shared by all heads
    q_abs_h  = Wk_b[h] q_nope_h              # (R,): the key up-projection absorbed into the query
    cache   <- [c, k_pe]  (R + r per token: the latent and the rope part, never the expanded K/V)
    a_h      = softmax(kq_scale * [q_abs_h, q_pe_h] . [c, k_pe]_j) over the cached positions j
    o_h      = Wv_b[h] (sum_j a_hj c_j)      # (dv,): the value up-projection after the sum
    out      = [o_1 .. o_H] Wo^T

This is multi-query attention with one key head of width R + r whose values are its first R
dims: the ``mla_attention`` op (spec: backends/mla.py; native on cpu, one node of the replayed
decode step) caches ``[c, k_pe]`` per layer (as keys and, for the attention op's uniform head
width, again as values; the latent's own dims are what the values use).

YaRN (llama.cpp's [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]): the file's ``yarn_log_multiplier`` is
0.1 * mscale_all_dim; the rope's own magnitude correction is cancelled (rope mscale =
``rope.scaling.attn_factor``), and ``kq_scale = m^2 / sqrt(dn + r)`` with
``m = attn_factor * (1 + 0.1 * mscale_all_dim * ln(factor))``.

FFN: layers ``< leading_dense_block_count`` are dense SwiGLU; the others are routed experts
(``expert_gating_func`` 1 softmax / 2 sigmoid, absent: softmax; ``expert_weights_norm``,
``expert_weights_scale``, ``expert_group_count`` / ``expert_group_used_count``,
``exp_probs_b.bias``) plus ``expert_shared_count`` shared experts as one SwiGLU
(``ffn_*_shexp``), summed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..backends.base import Backend, KVCache
from ..backends.moe import MoERouting, load_experts
from ..errors import ModelFileError
from ..gguf_file import GGUFFile
from . import common


@dataclass
class Config(common.Config):
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope: int = 0
    qk_rope: int = 0
    v_head: int = 0
    kq_scale: float = 0.0
    n_dense: int = 0
    n_expert: int = 0
    n_shared: int = 0
    expert_ffn_dim: int = 0
    routing: MoERouting | None = None

    @classmethod
    def own_from_gguf(cls, gf: GGUFFile, kw: dict) -> dict:
        a = gf.arch_key
        k_mla = int(a("attention.key_length_mla", 0) or a("attention.key_length", 0))
        v_mla = int(a("attention.value_length_mla", 0) or a("attention.value_length", 0))
        r = kw["n_rot"]
        R = int(gf.require(f"{gf.architecture}.attention.kv_lora_rank"))
        if not k_mla or not v_mla or k_mla <= r:
            raise ModelFileError(f"{gf.path}: deepseek2 needs attention.key_length(_mla) > rope.dimension_count "
                                 f"and attention.value_length(_mla) (file: {k_mla}, {r}, {v_mla})")
        gating = {0: "softmax", 1: "softmax", 2: "sigmoid"}.get(int(a("expert_gating_func", 0)))
        if gating is None:
            raise ModelFileError(f"{gf.path}: expert_gating_func {a('expert_gating_func')} is not supported "
                                 "(1 softmax, 2 sigmoid)")
        n_dense = int(a("leading_dense_block_count", 0))
        # experts are needed only when some layer is past the leading dense ones
        n_expert, routing = common.expert_routing_from_gguf(gf, gating, norm=bool(a("expert_weights_norm", False)),
                                                            required=n_dense < kw["n_layers"])
        # rope: YaRN's magnitude correction is cancelled in the rope and moved into kq_scale
        # (llama.cpp: attn_factor is the rope's factor; attn_factor_org = attn_factor * (1 + 0.1 ln f),
        # m = attn_factor_org * (1 + 0.1 mscale_all_dim ln f), f = 1 / freq_scale)
        scaling = kw["rope_scaling"]
        rope_attn = float(a("rope.scaling.attn_factor", 1.0))
        f = 1.0 / scaling.freq_scale if scaling is not None else 1.0
        attn_factor = rope_attn
        if scaling is not None and scaling.ext_factor != 0.0:
            attn_factor = rope_attn / (1.0 + 0.1 * math.log(f))
            scaling = replace(scaling, attn_factor=attn_factor)
            if scaling.is_identity:
                scaling = None
        mscale_all_dim = float(a("rope.scaling.yarn_log_multiplier", 0.0)) / 0.1
        mscale = attn_factor * (1.0 + 0.1 * math.log(f)) * (1.0 + 0.1 * mscale_all_dim * math.log(f))
        return dict(head_dim=k_mla, n_kv_heads=1, rope_scaling=scaling, q_lora_rank=int(a("attention.q_lora_rank", 0)),
                    kv_lora_rank=R, qk_nope=k_mla - r, qk_rope=r, v_head=v_mla,
                    kq_scale=mscale * mscale / math.sqrt(k_mla), n_dense=n_dense, n_expert=n_expert,
                    n_shared=int(a("expert_shared_count", 0)),
                    expert_ffn_dim=int(a("expert_feed_forward_length", 0)), routing=routing)


class Layer:
    def __init__(self, W: common.Weights, i: int, cfg: Config):
        p, d, H = f"blk.{i}.", cfg.dim, cfg.n_heads
        R, r, dn, dv = cfg.kv_lora_rank, cfg.qk_rope, cfg.qk_nope, cfg.v_head
        self.attn_norm = W.vec(p + "attn_norm.weight", d)
        if W.has(p + "attn_kv_b.weight"):
            raise ModelFileError(f"{W.gf.path}: {p}attn_kv_b.weight: an old deepseek2 GGUF with the unsplit "
                                 "kv_b projection; reconvert it with attn_k_b / attn_v_b (llama.cpp's MLA layout)")
        self.wq = self.wq_a = self.wq_b = self.q_a_norm = None
        if cfg.q_lora_rank > 0:
            self.wq_a = W.get(p + "attn_q_a.weight", (cfg.q_lora_rank, d))           # (q_lora, dim)
            self.q_a_norm = W.vec(p + "attn_q_a_norm.weight", cfg.q_lora_rank)
            self.wq_b = W.get(p + "attn_q_b.weight", (H * (dn + r), cfg.q_lora_rank))
        else:
            self.wq = W.get(p + "attn_q.weight", (H * (dn + r), d))                  # (H*(dn+r), dim)
        self.wkv_a = W.get(p + "attn_kv_a_mqa.weight", (R + r, d))                   # (R + r, dim)
        self.kv_a_norm = W.vec(p + "attn_kv_a_norm.weight", R)
        self.wk_b = load_experts(W, p + "attn_k_b.weight", (H, R, dn))               # per head (R, dn)
        self.wv_b = load_experts(W, p + "attn_v_b.weight", (H, dv, R))               # per head (dv, R)
        self.wo = W.get(p + "attn_output.weight", (d, H * dv))
        self.ffn_norm = W.vec(p + "ffn_norm.weight", d)
        self.moe = i >= cfg.n_dense
        if not self.moe:
            self.w_gate = W.get(p + "ffn_gate.weight", (cfg.ffn_dim, d))
            self.w_up = W.get(p + "ffn_up.weight", (cfg.ffn_dim, d))
            self.w_down = W.get(p + "ffn_down.weight", (d, cfg.ffn_dim))
            return
        e, f, fs = cfg.n_expert, cfg.expert_ffn_dim, cfg.expert_ffn_dim * cfg.n_shared
        self.router = W.get(p + "ffn_gate_inp.weight", (e, d))
        b = W.opt(p + "exp_probs_b.bias", (e,))
        self.routing = cfg.routing
        if b is not None:  # DeepSeek-V3-style selection bias
            from .. import quants

            self.routing = replace(cfg.routing, bias=quants.dequantize(b.type_name, b.raw, b.n_elements))
        self.gate_exps = load_experts(W, p + "ffn_gate_exps.weight", (e, f, d))
        self.up_exps = load_experts(W, p + "ffn_up_exps.weight", (e, f, d))
        self.down_exps = load_experts(W, p + "ffn_down_exps.weight", (e, d, f))
        self.shexp = None
        if cfg.n_shared > 0:
            self.shexp = (W.get(p + "ffn_gate_shexp.weight", (fs, d)), W.get(p + "ffn_up_shexp.weight", (fs, d)),
                          W.get(p + "ffn_down_shexp.weight", (d, fs)))


def _swiglu(ops: Backend, gate, up, down, h):
    return ops.matmul(down, ops.silu_mul(ops.matmul(gate, h), ops.matmul(up, h)))


class Transformer(common.Transformer):
    Layer = Layer

    @property
    def kv_width(self) -> int:
        """Cached per token and layer: the normalised latent c (R) and the roped k_pe (r)."""
        return self.cfg.kv_lora_rank + self.cfg.qk_rope

    #: mla_attention attends with the cached [c, k_pe] rows as keys and as values: one copy
    keys_are_values = True

    def attention_block(self, ops: Backend, L: Layer, i: int, h, pos: np.ndarray, pos0: int, cache: KVCache):
        c = self.cfg
        if L.wq is not None:
            q = ops.matmul(L.wq, h)                                               # (n, H*(dn + r))
        else:
            q = ops.matmul(L.wq_b, ops.rmsnorm(ops.matmul(L.wq_a, h), L.q_a_norm, c.norm_eps))
        kv = ops.matmul(L.wkv_a, h)                                               # (n, R + r)
        base, scaling = self.rope_scaling(i, cache)
        o = ops.mla_attention(q, kv, cache, i, pos0, L.wk_b, L.wv_b, L.kv_a_norm, c.norm_eps, c.n_heads, c.qk_nope,
                              c.qk_rope, base, c.neox, scaling, c.kq_scale)        # (n, H*dv)
        return ops.matmul(L.wo, o)

    def ffn_block(self, ops: Backend, L: Layer, h):
        if not L.moe:
            return _swiglu(ops, L.w_gate, L.w_up, L.w_down, h)
        out = ops.moe_ffn(h, L.router, L.gate_exps, L.up_exps, L.down_exps, L.routing)
        if L.shexp is not None:
            out = ops.add(out, _swiglu(ops, *L.shexp, h))
        return out
