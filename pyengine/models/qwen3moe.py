"""Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B): Qwen3's attention (QK-norm, NEOX rope, no biases)
with every feed-forward a mixture of experts.

Per layer: ``ffn_gate_inp.weight (E, dim)`` routes each token (softmax over the E experts,
the ``expert_used_count`` best, their weights always renormalised to sum 1, as llama.cpp's
LLM_ARCH_QWEN3MOE does; ``expert_weights_scale`` multiplies them when the file has it), the
experts are ``ffn_{gate,up}_exps.weight (E, f, dim)`` and ``ffn_down_exps.weight (E, dim, f)``
with ``f = expert_feed_forward_length`` (fallback: feed_forward_length / expert_used_count).
No shared expert. Group-limited routing when the file has expert_group_count > 1 (llama.cpp
reads those keys for every architecture). See backends/moe.py for the routing spec.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backends.moe import MoERouting, load_experts
from ..gguf_file import GGUFFile
from . import common


@dataclass
class Config(common.Config):
    neox: bool = True
    features: frozenset = frozenset({"qk_norm"})
    n_expert: int = 0
    expert_ffn_dim: int = 0
    routing: MoERouting | None = None

    @classmethod
    def own_from_gguf(cls, gf: GGUFFile, kw: dict) -> dict:
        n_expert, routing = common.expert_routing_from_gguf(gf, gating="softmax", norm=True)
        f = int(gf.arch_key("expert_feed_forward_length", 0)) or kw["ffn_dim"] // routing.top_k
        return dict(n_expert=n_expert, expert_ffn_dim=f, routing=routing)


class Layer(common.Layer):
    def load_ffn(self, W: common.Weights, i: int, cfg: Config) -> None:
        p, d, e, f = f"blk.{i}.", cfg.dim, cfg.n_expert, cfg.expert_ffn_dim
        self.router = W.get(p + "ffn_gate_inp.weight", (e, d))                   # (E, dim)
        self.gate_exps = load_experts(W, p + "ffn_gate_exps.weight", (e, f, d))  # (E, f, dim)
        self.up_exps = load_experts(W, p + "ffn_up_exps.weight", (e, f, d))      # (E, f, dim)
        self.down_exps = load_experts(W, p + "ffn_down_exps.weight", (e, d, f))  # (E, dim, f)


class Transformer(common.Transformer):
    Layer = Layer

    def ffn_block(self, ops, L: Layer, h):
        return ops.moe_ffn(h, L.router, L.gate_exps, L.up_exps, L.down_exps, self.cfg.routing)
