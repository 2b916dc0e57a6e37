"""The NumPy reference backend: the readable specification every other backend is tested against.

Weights are dequantized to float32 on first use with :func:`pyengine.quants.dequantize`
and kept (so peak memory stays under about twice the dequantized model: the file is
memory-mapped and only touched once per tensor). Embedding rows are dequantized on
demand, never the whole table.

A matmul is the spec's, :func:`pyengine.quants.matmul_dequantized` on the kept weight: for a
quantized weight the activations are quantized to int8 per block (quants.act_block) and decoded first,
as the native tiers do, so this backend computes what the cpu backend computes (up to
float32 rounding) rather than an unquantized product it would only approximate.
"""
from __future__ import annotations

import numpy as np

from .. import quants
from ..tensor import QTensor
from .base import Backend, HostKVCacheMixin, RopeScaling


def dequantized(w: QTensor) -> np.ndarray:
    """``w`` as float32 in its NumPy shape, cached on the tensor."""
    arr = w.cache.get("f32")
    if arr is None:
        arr = quants.dequantize(w.type_name, w.raw, w.n_elements).reshape(w.shape)
        w.cache["f32"] = arr
    return arr


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    # GELU, tanh approximation: 0.5 x (1 + tanh(y)), y = sqrt(2/pi) (x + 0.044715 x^3), computed
    # as the equal x / (1 + exp(-2y)): in float32, 1 + tanh(y) cancels to a few ulps in the
    # negative tail (x ~ -5: half the value lost), the quotient does not
    with np.errstate(over="ignore"):  # x^3 or exp(-2y) = inf far out: the value is then x or -0
        m2y = np.float32(-2.0 * 0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)
        return x / (np.float32(1.0) + np.exp(m2y))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_reference(x: np.ndarray, positions: np.ndarray, n_heads: int, head_dim: int,
                   freq_base: float, neox: bool, n_rot: int | None = None,
                   scaling: RopeScaling | None = None) -> np.ndarray:
    n_rot = head_dim if n_rot is None else n_rot
    n = x.shape[0]
    xh = x.reshape(n, n_heads, head_dim).astype(np.float32, copy=True)
    half = n_rot // 2
    if scaling is None or scaling.is_identity:
        # theta_i = pos * base^(-2i/n_rot), i = 0 .. n_rot/2-1
        inv_freq = freq_base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
        ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (n, half)
        cos = np.cos(ang).astype(np.float32)[:, None, :]
        sin = np.sin(ang).astype(np.float32)[:, None, :]
    else:  # frequency factors, linear, YaRN: see RopeScaling
        ang, mscale = scaling.angles(positions, freq_base, n_rot)
        cos = (np.cos(ang) * mscale).astype(np.float32)[:, None, :]
        sin = (np.sin(ang) * mscale).astype(np.float32)[:, None, :]
    if neox:
        a, b = xh[..., :half].copy(), xh[..., half:n_rot].copy()
        xh[..., :half] = a * cos - b * sin
        xh[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = xh[..., 0:n_rot:2].copy(), xh[..., 1:n_rot:2].copy()
        xh[..., 0:n_rot:2] = a * cos - b * sin
        xh[..., 1:n_rot:2] = a * sin + b * cos
    return xh.reshape(n, n_heads * head_dim)


def softcap_reference(x: np.ndarray, cap: float) -> np.ndarray:
    # soft-capping: cap * tanh(x / cap), in float32
    c = np.float32(cap)
    return (c * np.tanh(x / c)).astype(np.float32, copy=False)


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos0: int, n_heads: int,
                        n_kv_heads: int, head_dim: int, scale: float, window: int = 0,
                        softcap: float = 0.0) -> np.ndarray:
    """q (n, H*hd); k, v (n_kv_tokens, Hkv*hd) holding positions 0..n_kv_tokens-1."""
    n = q.shape[0]
    t = k.shape[0]
    qh = q.reshape(n, n_heads, head_dim).transpose(1, 0, 2)  # (H, n, hd)
    kh = k.reshape(t, n_kv_heads, head_dim).transpose(1, 0, 2)  # (Hkv, t, hd)
    vh = v.reshape(t, n_kv_heads, head_dim).transpose(1, 0, 2)
    group = n_heads // n_kv_heads
    kh = np.repeat(kh, group, axis=0)  # (H, t, hd)
    vh = np.repeat(vh, group, axis=0)
    scores = np.matmul(qh, kh.transpose(0, 2, 1)) * np.float32(scale)  # (H, n, t)
    if softcap > 0:
        scores = softcap_reference(scores, softcap)
    qpos = pos0 + np.arange(n)[:, None]
    kpos = np.arange(t)[None, :]
    masked = kpos > qpos
    if window > 0:
        masked |= (qpos - kpos) >= window
    scores = np.where(masked[None], np.float32(-np.inf), scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = np.matmul(p, vh)  # (H, n, hd)
    return out.transpose(1, 0, 2).reshape(n, n_heads * head_dim).astype(np.float32, copy=False)


class NumpyBackend(HostKVCacheMixin, Backend):
    name = "numpy"

    def __init__(self, quantize_activations: bool = True):
        """``quantize_activations=False`` multiplies by the unrounded activations instead of the
        spec's (``x @ W.T`` in float32): the oracle of kernels that do not quantize (the CUDA
        "simple" set), and a way to measure what the int8 rounding costs a model."""
        self.quantize_activations = bool(quantize_activations)
        self.description = ("numpy reference (float32, dequantized weights, "
                            + ("int8 activations as the native tiers)" if self.quantize_activations
                               else "unquantized activations)"))

    def embed(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), w.cols), dtype=np.float32)
        for i, t in enumerate(ids):
            out[i] = quants.dequantize(w.type_name, w.row_raw(int(t)), w.cols)
        return out

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        if not self.quantize_activations:
            return np.matmul(x, dequantized(w).T)
        return quants.matmul_dequantized(w.type_name, dequantized(w), x)

    def add_bias(self, x: np.ndarray, b: QTensor) -> np.ndarray:
        return x + dequantized(b).reshape(-1)

    def softcap(self, x, cap):
        return softcap_reference(x, cap)

    def rmsnorm(self, x: np.ndarray, w: QTensor, eps: float) -> np.ndarray:
        g = dequantized(w).reshape(-1)
        n, d = x.shape
        xg = x.reshape(n, d // g.size, g.size)
        ms = np.mean(xg * xg, axis=-1, keepdims=True)
        return (xg / np.sqrt(ms + np.float32(eps)) * g).reshape(n, d).astype(np.float32, copy=False)

    def add(self, a, b):
        return a + b

    def scale(self, x, s):
        return x * np.float32(s)

    def silu_mul(self, gate, up):
        return silu(gate) * up

    def gelu_mul(self, gate, up):
        return gelu_tanh(gate) * up

    def rope(self, x, positions, n_heads, head_dim, freq_base, neox, n_rot=None, scaling=None):
        return rope_reference(x, positions, n_heads, head_dim, freq_base, neox, n_rot, scaling)

    def mla_attention(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope, n_rot,
                      freq_base, neox, scaling, scale):
        from .mla import mla_attention_composed

        return mla_attention_composed(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope,
                                      n_rot, freq_base, neox, scaling, scale)

    def moe_ffn(self, x, router, gate_exps, up_exps, down_exps, routing):
        """The routed experts through this backend's own matmul (so each expert product is the
        matmul spec, activations quantized as the native tiers do); with unquantized activations,
        :func:`pyengine.backends.moe.moe_ffn_reference` on the dequantized tensors."""
        from .moe import moe_ffn_grouped, moe_ffn_reference

        if self.quantize_activations:
            return moe_ffn_grouped(self, x, router, gate_exps, up_exps, down_exps, routing)
        return moe_ffn_reference(x, dequantized(router), dequantized(gate_exps), dequantized(up_exps),
                                 dequantized(down_exps), routing)

    def attention(self, q, cache, layer, pos0, n_heads, n_kv_heads, head_dim, scale, window=0, softcap=0.0):
        t = pos0 + q.shape[0]
        return attention_reference(q, cache.k[layer][:t], cache.v[layer][:t], pos0, n_heads,
                                   n_kv_heads, head_dim, scale, window, softcap)
