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

from typing import Any

import numpy as np

from ..tensor import QTensor


class KVCache:
    """Keys and values of every layer, preallocated for ``n_ctx`` positions."""

    def __init__(self, k: Any, v: Any, n_ctx: int):
        self.k = k  # per layer: (n_ctx, Hkv*hd)
        self.v = v  # per layer: (n_ctx, Hkv*hd)
        self.n_ctx = n_ctx


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

    def silu_mul(self, gate: Any, up: Any) -> Any:
        """SwiGLU: ``silu(gate) * up``."""
        raise NotImplementedError

    def gelu_mul(self, gate: Any, up: Any) -> Any:
        """GeGLU with the tanh approximation of GELU: ``gelu_tanh(gate) * up``."""
        raise NotImplementedError

    # -- position and attention --------------------------------------------------
    def rope(self, x: Any, positions: np.ndarray, n_heads: int, head_dim: int,
             freq_base: float, neox: bool, n_rot: int | None = None) -> Any:
        """Rotary embedding of ``x (n, n_heads*head_dim)`` at ``positions (n,)``.

        Pair ``i`` of the first ``n_rot`` dims of each head turns by
        ``pos * freq_base ** (-2i / n_rot)``. ``neox=False`` pairs adjacent dims
        ``(2i, 2i+1)`` (llama.cpp's NORM mode); ``neox=True`` pairs ``(i, i + n_rot/2)``.
        """
        raise NotImplementedError

    def kv_cache(self, n_layers: int, n_ctx: int, kv_width: int) -> KVCache:
        raise NotImplementedError

    def kv_write(self, cache: KVCache, layer: int, pos0: int, k: Any, v: Any) -> None:
        """Store ``k, v (n, Hkv*hd)`` at positions ``pos0 .. pos0+n-1`` of ``layer``."""
        raise NotImplementedError

    def attention(self, q: Any, cache: KVCache, layer: int, pos0: int, n_heads: int,
                  n_kv_heads: int, head_dim: int, scale: float, window: int = 0) -> Any:
        """Causal attention of ``q (n, H*hd)`` at positions ``pos0..pos0+n-1`` over cached keys.

        Query at position ``p`` sees keys at positions ``j <= p``, and with
        ``window > 0`` only those with ``p - j < window`` (sliding window).
        Query head ``h`` uses key/value head ``h // (H // Hkv)`` (grouped-query).
        Scores are ``scale * q.k``; softmax in float32. Returns ``(n, H*hd)``.
        """
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------
    def prepare(self, tensors: dict[str, QTensor]) -> None:
        """Called once after loading (e.g. to upload weights); default: nothing."""

    def make_decode_step(self, forward, cache: KVCache):
        """Optionally compile one decode step into a single call.

        ``forward(ops, ids, pos0, cache, last_only)`` is the architecture's forward pass.
        Return a callable ``step(token_id, pos) -> logits (n_vocab,)`` that does exactly
        what ``forward(self, [token_id], pos, cache, True)`` does (same cache effects), or
        ``None`` to let the engine call ``forward`` op by op (the default).
        """
        return None
