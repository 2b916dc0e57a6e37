"""The backend contract: the handful of ops a transformer forward pass is made of.

Architectures (``pyengine/models/*.py``) are written only in terms of these ops, so
one model file runs on every backend. Activations are 2-D ``(n_tokens, width)``
arrays of the backend's own kind (NumPy arrays on the CPU backends); per-head ops
take the head layout as arguments instead of reshaping, so a device backend never
has to materialise a view. Weights arrive as :class:`~pyengine.tensor.QTensor`;
a backend may keep a prepared form of a weight in ``tensor.cache[self.name]``.

Shapes below: ``n`` tokens in this call, ``d`` model width, ``H`` query heads,
``Hkv`` key/value heads, ``hd`` head dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tensor import QTensor


@dataclass(frozen=True, eq=False)
class RopeScaling:
    """How rope's angles are scaled: the parameters of llama.cpp's ``ggml_rope_ext``.

    For pair ``i`` (of ``n_rot/2``) at position ``p``, with ``f_i = base ** (-2i / n_rot)``:

    - ``extrap = p * f_i / freq_factors[i]`` (Llama 3.1's ``rope_freqs``, Phi-3's LongRoPE
      factors divide each pair's frequency; none: 1);
    - ``interp = freq_scale * extrap`` (linear scaling: ``freq_scale = 1 / factor``);
    - without YaRN (``ext_factor == 0``) the angle is ``interp`` and ``mscale = attn_factor``;
    - with YaRN the angle is ``interp * (1 - r) + extrap * r`` with the ramp
      ``r = (1 - clamp((i - lo) / max(0.001, hi - lo), 0, 1)) * ext_factor``, where
      ``lo = max(0, floor(c(beta_fast)))``, ``hi = min(n_rot - 1, ceil(c(beta_slow)))`` and
      ``c(b) = n_rot * ln(n_ctx_orig / (2 pi b)) / (2 ln base)``; and
      ``mscale = attn_factor * (1 + 0.1 ln(1 / freq_scale))``;
    - the pair turns by that angle and both outputs are multiplied by ``mscale``.

    The default instance changes nothing.
    """

    freq_factors: np.ndarray | None = None  # (n_rot/2,) float32, or None
    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0

    @property
    def is_identity(self) -> bool:
        return (self.freq_factors is None and self.freq_scale == 1.0 and self.ext_factor == 0.0
                and self.attn_factor == 1.0)

    def key(self) -> tuple:
        """A hashable identity of the scaling (for caches of rope tables)."""
        ff = None if self.freq_factors is None else np.asarray(self.freq_factors, np.float32).tobytes()
        return (ff, float(self.freq_scale), float(self.ext_factor), float(self.attn_factor),
                float(self.beta_fast), float(self.beta_slow), int(self.n_ctx_orig))

    def kwargs(self) -> dict:
        """The keyword arguments of ``_C.rope_table`` / ``DecodeGraph.add_rope``."""
        ff = None if self.freq_factors is None else np.ascontiguousarray(self.freq_factors, dtype=np.float32)
        return dict(freq_factors=ff, freq_scale=float(self.freq_scale), ext_factor=float(self.ext_factor),
                    attn_factor=float(self.attn_factor), beta_fast=float(self.beta_fast),
                    beta_slow=float(self.beta_slow), n_ctx_orig=int(self.n_ctx_orig))

    def corr_dims(self, n_rot: int, freq_base: float) -> tuple[float, float]:
        """YaRN's ramp ends (lo, hi) in pair indices."""
        def c(beta):
            return n_rot * math.log(self.n_ctx_orig / (beta * 2.0 * math.pi)) / (2.0 * math.log(freq_base))
        return max(0.0, math.floor(c(self.beta_fast))), min(float(n_rot - 1), math.ceil(c(self.beta_slow)))

    def angles(self, positions: np.ndarray, freq_base: float, n_rot: int) -> tuple[np.ndarray, np.ndarray]:
        """``(angle (n, n_rot/2) float64, mscale)``: the spec of the scaled rope (see the class doc)."""
        half = n_rot // 2
        inv_freq = freq_base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
        if self.freq_factors is not None:
            ff = np.asarray(self.freq_factors, dtype=np.float32).reshape(-1)
            if ff.size != half:
                raise ValueError(f"rope: {ff.size} frequency factors for n_rot {n_rot} (need {half})")
            inv_freq = inv_freq / ff.astype(np.float64)
        extrap = np.asarray(positions, dtype=np.float64).reshape(-1)[:, None] * inv_freq[None, :]
        theta = self.freq_scale * extrap
        mscale = float(self.attn_factor)
        if self.ext_factor != 0.0:
            lo, hi = self.corr_dims(n_rot, freq_base)
            y = (np.arange(half, dtype=np.float64) - lo) / max(0.001, hi - lo)
            ramp = (1.0 - np.clip(y, 0.0, 1.0)) * self.ext_factor
            theta = theta * (1.0 - ramp) + extrap * ramp
            mscale *= 1.0 + 0.1 * math.log(1.0 / self.freq_scale)
        return theta, mscale


class KVCache:
    """Keys and values of every layer, preallocated for ``n_ctx`` positions."""

    def __init__(self, k: Any, v: Any, n_ctx: int):
        self.k = k  # per layer: (n_ctx, Hkv*hd)
        self.v = v  # per layer: (n_ctx, Hkv*hd)
        self.n_ctx = n_ctx

    @property
    def keys_are_values(self) -> bool:
        """One copy per layer serves as both keys and values (``k is v``; MLA's compressed rows)."""
        return self.k is self.v


def _check_same(k: Any, v: Any) -> None:
    """A cache whose keys are its values takes only writes with ``k is v``."""
    if k is not v:
        raise ValueError("kv_write: this cache stores its keys as its values (one copy); pass the same array as k and v")


class HostKVCacheMixin:
    """``kv_cache`` / ``kv_write`` for backends whose activations are host NumPy arrays:
    per layer one float32 array each for keys and values, shape ``(n_ctx, kv_width)`` (one
    array for both when the keys are the values)."""

    def kv_cache(self, n_layers: int, n_ctx: int, kv_width: int, keys_are_values: bool = False) -> KVCache:
        v = [np.zeros((n_ctx, kv_width), dtype=np.float32) for _ in range(n_layers)]  # each (n_ctx, kv_width)
        k = v if keys_are_values else [np.zeros((n_ctx, kv_width), dtype=np.float32) for _ in range(n_layers)]
        return KVCache(k, v, n_ctx)

    def kv_write(self, cache: KVCache, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[0]
        if pos0 + n > cache.n_ctx:
            raise ValueError(f"kv_write: positions up to {pos0 + n} exceed the cache ({cache.n_ctx})")
        if cache.keys_are_values:
            _check_same(k, v)
        else:
            cache.k[layer][pos0:pos0 + n] = k
        cache.v[layer][pos0:pos0 + n] = v


class Backend:
    name = "base"
    #: one line for ``--verbose`` and ``pyengine doctor`` (e.g. "cpu avx512-vnni, 2 threads")
    description = ""

    # -- data movement ---------------------------------------------------------
    def from_numpy(self, x: np.ndarray) -> Any:
        return x

    def to_numpy(self, x: Any) -> np.ndarray:
        return x

    # -- weights -----------------------------------------------------------------
    def embed(self, w: QTensor, ids: np.ndarray) -> Any:
        """Rows ``ids`` of the embedding ``w (vocab, d)`` as float32 ``(n, d)``."""
        raise NotImplementedError

    def matmul(self, w: QTensor, x: Any) -> Any:
        """``x (n, cols) @ w.T`` for ``w (rows, cols)`` in its GGUF encoding -> ``(n, rows)``."""
        raise NotImplementedError

    def add_bias(self, x: Any, b: QTensor) -> Any:
        """``x (n, d) + b`` for every row, ``b (d,)`` a bias vector (Qwen2's q/k/v biases)."""
        raise NotImplementedError

    # -- elementwise and normalisation -------------------------------------------
    def rmsnorm(self, x: Any, w: QTensor, eps: float) -> Any:
        """RMS-normalise each group of ``len(w)`` values of ``x (n, k*len(w))`` and scale by ``w``.

        With ``len(w) == d`` this is the usual per-token norm; with ``len(w) == hd``
        it normalises every head separately (Gemma's QK-norm).
        """
        raise NotImplementedError

    def add(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def scale(self, x: Any, s: float) -> Any:
        raise NotImplementedError

    def softcap(self, x: Any, cap: float) -> Any:
        """Logit soft-capping: ``cap * tanh(x / cap)`` (Gemma 2's final logits)."""
        raise NotImplementedError

    def silu_mul(self, gate: Any, up: Any) -> Any:
        """SwiGLU: ``silu(gate) * up``."""
        raise NotImplementedError

    def gelu_mul(self, gate: Any, up: Any) -> Any:
        """GeGLU with the tanh approximation of GELU: ``gelu_tanh(gate) * up``."""
        raise NotImplementedError

    # -- position and attention --------------------------------------------------
    def rope(self, x: Any, positions: np.ndarray, n_heads: int, head_dim: int,
             freq_base: float, neox: bool, n_rot: int | None = None, scaling: RopeScaling | None = None) -> Any:
        """Rotary embedding of ``x (n, n_heads*head_dim)`` at ``positions (n,)``.

        Pair ``i`` of the first ``n_rot`` dims of each head turns by
        ``pos * freq_base ** (-2i / n_rot)``. ``neox=False`` pairs adjacent dims
        ``(2i, 2i+1)`` (llama.cpp's NORM mode); ``neox=True`` pairs ``(i, i + n_rot/2)``.
        ``scaling`` (see :class:`RopeScaling`) changes the angles and scales the result;
        models pass it only when it is not the identity.
        """
        raise NotImplementedError

    def kv_cache(self, n_layers: int, n_ctx: int, kv_width: int, keys_are_values: bool = False) -> KVCache:
        """A cache of ``n_ctx`` positions per layer. ``keys_are_values``: the model's key and value
        at a position are one row (MLA caches the compressed ``[latent, rope key]`` once and
        attends with it as both); the backend may then store one copy, and ``kv_write`` gets the
        same array as ``k`` and ``v``."""
        raise NotImplementedError

    def kv_write(self, cache: KVCache, layer: int, pos0: int, k: Any, v: Any) -> None:
        """Store ``k, v (n, Hkv*hd)`` at positions ``pos0 .. pos0+n-1`` of ``layer``."""
        raise NotImplementedError

    def attention(self, q: Any, cache: KVCache, layer: int, pos0: int, n_heads: int,
                  n_kv_heads: int, head_dim: int, scale: float, window: int = 0, softcap: float = 0.0) -> Any:
        """Causal attention of ``q (n, H*hd)`` at positions ``pos0..pos0+n-1`` over cached keys.

        Query at position ``p`` sees keys at positions ``j <= p``, and with
        ``window > 0`` only those with ``p - j < window`` (sliding window).
        Query head ``h`` uses key/value head ``h // (H // Hkv)`` (grouped-query).
        Scores are ``scale * q.k``, with ``softcap > 0`` then ``softcap * tanh(score / softcap)``
        (Gemma 2); softmax in float32. Returns ``(n, H*hd)``. Models pass ``softcap`` only
        when it is not 0.
        """
        raise NotImplementedError

    # -- mixture of experts --------------------------------------------------------
    def moe_ffn(self, x: Any, router: QTensor, gate_exps: QTensor, up_exps: QTensor, down_exps: QTensor,
                routing) -> Any:
        """Routed SwiGLU experts on ``x (n, d)``: router ``(E, d)``, experts ``(E, f, d)`` /
        ``(E, d, f)``; each token runs its ``routing.top_k`` best experts (a
        :class:`~pyengine.backends.moe.MoERouting`) and sums their outputs weighted. Spec:
        :func:`pyengine.backends.moe.moe_ffn_reference`."""
        raise NotImplementedError

    def mla_attention(self, q: Any, kv: Any, cache: KVCache, layer: int, pos0: int, wk_b: QTensor, wv_b: QTensor,
                      kv_norm: QTensor, eps: float, n_heads: int, qk_nope: int, n_rot: int, freq_base: float,
                      neox: bool, scaling: RopeScaling | None, scale: float) -> Any:
        """DeepSeek-V2's multi-head latent attention over the compressed cache (width
        kv_lora_rank + n_rot): ``(n, H*v_head)`` from the projections q, kv. Spec:
        :mod:`pyengine.backends.mla`."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------
    def prepare(self, tensors: dict[str, QTensor]) -> None:
        """Called once after loading (e.g. to upload weights); default: nothing."""

    #: why the decode step runs the way it does, for ``generate -v`` / ``doctor`` (set by make_decode_step)
    decode_step_status: str = "op by op (this backend has no compiled decode step)"

    def make_decode_step(self, forward, cache: KVCache):
        """Optionally compile one decode step into a single call.

        ``forward(ops, ids, pos0, cache, last_only)`` is the architecture's forward pass
        (``Transformer.forward``). Return a callable ``step(token_id, pos) -> logits (1, n_vocab)``
        that does exactly what ``forward(self, [token_id], pos, cache, True)`` does (the same
        logits, shape included, and the same cache effects), or ``None`` to let the engine
        call ``forward`` op by op (the default).
        """
        return None
