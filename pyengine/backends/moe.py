"""Mixture-of-experts feed-forward: the routing and the ``moe_ffn`` op's NumPy specification.

One MoE layer, for the normalised residual ``x (n, d)`` (llama.cpp's ``build_moe_ffn``)::

    logits = x R^T                               # router R (E, d): one score per expert
    p      = softmax(logits) | sigmoid(logits)   # routing.gating
    s      = p + b                               # selection scores; b = exp_probs_b (DeepSeek-V3), else 0
    groups: with G = n_group > 1 the E experts form G groups of E/G; a group scores the sum of
            its two best s; only the n_group_used best groups compete (the others' s = -inf)
    sel    = top_k(s)                            # k = routing.top_k experts per token, best first
    w      = p[sel]                              # weights from the UNbiased probabilities
    w      = w / max(sum(w), 2^-14)              # routing.norm (Qwen3-MoE: always)
    w      = w * scale                           # routing.scale when it is not 0 or 1
    out    = sum_j w_j * Down_j (silu(Gate_j x) * Up_j x)   # j over sel, slot order

The experts are 3-D tensors ``(E, rows, cols)`` in the file (``ffn_{gate,up,down}_exps``);
:func:`expert` cuts expert ``e`` out as a 2-D :class:`QTensor` over the same memory-mapped
bytes (nothing copied, so only the experts a token uses are ever read from disk).

:func:`moe_ffn_grouped` is the implementation the numba / cpu / cuda backends share: the
router runs as one matmul, the routing in NumPy, then every selected expert runs ONCE on
all the tokens that chose it (prefill groups tokens by expert) and the results are
accumulated per token in slot order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelFileError
from ..ggml_types import ggml_type
from ..tensor import QTensor

#: llama.cpp clamps the weight sum to the smallest normal F16 before dividing
NORM_MIN = np.float32(6.103515625e-5)


@dataclass(frozen=True, eq=False)
class MoERouting:
    """How a token picks its experts and weighs them (see the module doc)."""

    top_k: int
    gating: str = "softmax"            # "softmax" or "sigmoid"
    norm: bool = False                 # divide the k weights by their sum
    scale: float = 1.0                 # multiply the weights (0 or 1: unchanged)
    n_group: int = 0                   # group-limited routing: groups of experts (0/1: off)
    n_group_used: int = 0              # groups that compete
    bias: np.ndarray | None = None     # (E,) float32 selection bias (exp_probs_b), or None

    def __post_init__(self):
        if self.gating not in ("softmax", "sigmoid"):
            raise ModelFileError(f"expert gating {self.gating!r} is not supported (softmax, sigmoid)")
        if self.top_k < 1:
            raise ModelFileError(f"expert_used_count {self.top_k} must be at least 1")

    def key(self) -> tuple:
        b = None if self.bias is None else np.asarray(self.bias, np.float32).tobytes()
        return (int(self.top_k), self.gating, bool(self.norm), float(self.scale), int(self.n_group),
                int(self.n_group_used), b)


def expert(t: QTensor, e: int) -> QTensor:
    """Expert ``e`` of a 3-D expert tensor ``(E, rows, cols)``: a 2-D view of its bytes (cached)."""
    views = t.cache.get("experts")
    if views is None:
        if len(t.shape) != 3:
            raise ModelFileError(f"expert tensor {t.name!r} has shape {tuple(t.shape)}, expected 3-D")
        n_e, rows, cols = t.shape
        nb = ggml_type(t.type_name).n_bytes(rows * cols)
        views = [QTensor(f"{t.name}[{i}]", t.type_name, (rows, cols), t.raw[i * nb:(i + 1) * nb])
                 for i in range(n_e)]
        t.cache["experts"] = views
    return views[e]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)


def route(logits: np.ndarray, r: MoERouting) -> tuple[np.ndarray, np.ndarray]:
    """``(experts (n, k) int32, weights (n, k) float32)`` for router ``logits (n, E)``."""
    logits = np.asarray(logits, dtype=np.float32)
    n, n_e = logits.shape
    k = int(r.top_k)
    if k > n_e:
        raise ModelFileError(f"expert_used_count {k} exceeds expert_count {n_e}")
    if r.gating == "softmax":
        p = _softmax(logits)
    else:
        p = (np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))).astype(np.float32)
    s = p if r.bias is None else p + np.asarray(r.bias, np.float32).reshape(1, n_e)
    if r.n_group > 1:
        g = int(r.n_group)
        if n_e % g or not 0 < r.n_group_used <= g:
            raise ModelFileError(f"expert groups: {n_e} experts in {g} groups, {r.n_group_used} used")
        sg = s.reshape(n, g, n_e // g)
        top2 = -np.sort(-sg, axis=-1)[..., :2]                      # (n, g, 2) each group's two best
        gscore = top2.sum(axis=-1)                                  # (n, g)
        keep = np.argsort(-gscore, axis=-1, kind="stable")[:, :r.n_group_used]
        mask = np.full((n, g), True)
        np.put_along_axis(mask, keep, False, axis=-1)
        s = np.where(np.repeat(mask, n_e // g, axis=-1), np.float32(-np.inf), s)
    sel = np.argsort(-s, axis=-1, kind="stable")[:, :k].astype(np.int32)  # (n, k) best first
    w = np.take_along_axis(p, sel, axis=-1)                          # (n, k)
    if r.norm:
        w = w / np.maximum(w.sum(axis=-1, keepdims=True), NORM_MIN)
    if r.scale not in (0.0, 1.0):
        w = w * np.float32(r.scale)
    return sel, w.astype(np.float32, copy=False)


def moe_ffn_reference(x: np.ndarray, router: np.ndarray, gate: np.ndarray, up: np.ndarray,
                      down: np.ndarray, routing: MoERouting) -> np.ndarray:
    """The spec: ``x (n, d)``, router ``(E, d)``, gate/up ``(E, f, d)``, down ``(E, d, f)`` as float32."""
    sel, w = route(x @ router.T, routing)
    out = np.zeros(x.shape, dtype=np.float32)
    for t in range(x.shape[0]):
        for j in range(sel.shape[1]):
            e = sel[t, j]
            g, u = gate[e] @ x[t], up[e] @ x[t]
            h = g / (np.float32(1.0) + np.exp(-g)) * u             # silu(gate) * up
            out[t] += w[t, j] * (down[e] @ h)
    return out


def moe_ffn_grouped(ops, x, router: QTensor, gate_exps: QTensor, up_exps: QTensor, down_exps: QTensor,
                    routing: MoERouting):
    """``moe_ffn`` through a backend's own ops: one router matmul, routing in NumPy, each used
    expert once over the tokens that chose it, weighted sum per token in slot order."""
    logits = ops.to_numpy(ops.matmul(router, x))                   # (n, E)
    sel, w = route(logits, routing)
    xn = np.asarray(ops.to_numpy(x), dtype=np.float32)
    n, k = sel.shape
    ys = np.zeros((n, k, xn.shape[1]), dtype=np.float32)            # (n, k, d) each slot's expert output
    for e in np.unique(sel):
        tok, slot = np.nonzero(sel == e)                            # the tokens (and slots) routed to e
        xe = ops.from_numpy(np.ascontiguousarray(xn[tok]))
        h = ops.silu_mul(ops.matmul(expert(gate_exps, int(e)), xe), ops.matmul(expert(up_exps, int(e)), xe))
        ys[tok, slot] = ops.to_numpy(ops.matmul(expert(down_exps, int(e)), h))
    out = w[:, 0:1] * ys[:, 0]
    for j in range(1, k):                                           # slot order, as the spec
        out += w[:, j:j + 1] * ys[:, j]
    return ops.from_numpy(out)


def load_experts(W, name: str, shape: tuple) -> QTensor:
    """A 3-D expert tensor from the file (``W`` a models.common.Weights), shape checked. It is
    marked as used through its per-expert parts only, so a backend that uploads every tensor
    ahead of time (cuda) skips the whole and uploads the experts as they are first chosen."""
    t = W.get(name, shape)
    t.cache["split_into_parts"] = True
    return t


def native_args(router: QTensor, gate_exps: QTensor, up_exps: QTensor, down_exps: QTensor,
                routing: MoERouting, native_type) -> dict | None:
    """The keyword arguments of ``_C.moe_ffn`` / ``DecodeGraph.add_moe_ffn`` (the mapped bytes,
    nothing copied), or None when a tensor's type has no native kernel (``native_type(name)``)."""
    if not all(native_type(t.type_name) for t in (router, gate_exps, up_exps, down_exps)):
        return None
    n_e, ffn, dim = gate_exps.shape
    bias = None if routing.bias is None else np.ascontiguousarray(routing.bias, dtype=np.float32)
    return dict(router_type=router.type_name, router=router.raw, gate_type=gate_exps.type_name, gate=gate_exps.raw,
                up_type=up_exps.type_name, up=up_exps.raw, down_type=down_exps.type_name, down=down_exps.raw,
                n_expert=int(n_e), dim=int(dim), ffn=int(ffn), top_k=int(routing.top_k), gating=routing.gating,
                norm=bool(routing.norm), scale=float(routing.scale), n_group=int(routing.n_group),
                n_group_used=int(routing.n_group_used), bias=bias)
