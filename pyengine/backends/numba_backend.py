"""The numba backend: the ops of :mod:`pyengine.numba_kernels` behind the Backend contract.

Weights stay in their GGUF encoding (the memory-mapped bytes); matmul and embedding
lookups read the blocks directly. Small 1-D weights (norms) are decoded once and kept
in ``tensor.cache["numba"]``. Activations are NumPy float32 arrays, as in the NumPy
reference backend; a matmul with a quantized weight first quantizes them to int8 per block
(32 or 256 values, quants.act_block) and decodes them (:func:`pyengine.numba_kernels.matmul`), as the spec does.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError
from ..tensor import QTensor
from .base import Backend, HostKVCacheMixin

try:
    from .. import numba_kernels as nk  # raises BackendUnavailableError without numba
except ImportError as e:  # numba present but broken (e.g. a NumPy it does not support)
    raise BackendUnavailableError(f"numba backend: numba cannot be imported ({e})") from None


class NumbaBackend(HostKVCacheMixin, Backend):
    name = "numba"

    def __init__(self, quantize_activations: bool = True):
        """``quantize_activations=False``: matmuls multiply by the unrounded activations (the
        exact float product), as ``NumpyBackend(quantize_activations=False)``."""
        self.quantize_activations = bool(quantize_activations)
        self.description = f"numba {nk.numba.__version__} JIT, {nk.numba.get_num_threads()} threads"

    # -- weights ---------------------------------------------------------------------
    def _raw(self, w: QTensor) -> np.ndarray:
        """The weight's bytes as the read-only uint8 array the kernels take (cached)."""
        raw = w.cache.get(self.name)
        if raw is None:
            raw = nk.weight_bytes(w.raw)
            w.cache[self.name] = raw
        return raw

    def _vector(self, w: QTensor) -> np.ndarray:
        """A small weight (norm scale) decoded to float32, cached."""
        key = self.name + ":f32"
        v = w.cache.get(key)
        if v is None:
            v = nk.dequantize(w.type_name, w.raw, w.n_elements)
            w.cache[key] = v
        return v

    def embed(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        return nk.get_rows(w.type_name, self._raw(w), w.shape, np.asarray(ids))

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        return nk.matmul(w.type_name, self._raw(w), w.shape, x, self.quantize_activations)

    def add_bias(self, x: np.ndarray, b: QTensor) -> np.ndarray:
        return np.add(x, self._vector(b).reshape(-1), dtype=np.float32)

    # -- elementwise and normalisation -------------------------------------------------
    def rmsnorm(self, x: np.ndarray, w: QTensor, eps: float) -> np.ndarray:
        return nk.rmsnorm(x, self._vector(w), eps)

    def add(self, a, b):
        return a + b

    def scale(self, x, s):
        return x * np.float32(s)

    def softcap(self, x, cap):
        return nk.softcap(x, cap)

    def silu_mul(self, gate, up):
        return nk.silu_mul(gate, up)

    def gelu_mul(self, gate, up):
        return nk.gelu_mul(gate, up)

    # -- position and attention --------------------------------------------------------
    def rope(self, x, positions, n_heads, head_dim, freq_base, neox, n_rot=None, scaling=None):
        return nk.rope(x, positions, n_heads, head_dim, freq_base, neox, n_rot, scaling)

    def attention(self, q, cache, layer, pos0, n_heads, n_kv_heads, head_dim, scale, window=0, softcap=0.0):
        return nk.attention(q, cache.k[layer], cache.v[layer], pos0, n_heads, n_kv_heads, head_dim,
                            scale, window, softcap)

    def mla_attention(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope, n_rot,
                      freq_base, neox, scaling, scale):
        from .mla import mla_attention_composed

        return mla_attention_composed(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope,
                                      n_rot, freq_base, neox, scaling, scale)

    def moe_ffn(self, x, router, gate_exps, up_exps, down_exps, routing):
        from .moe import moe_ffn_grouped  # only the chosen experts' bytes are read

        return moe_ffn_grouped(self, x, router, gate_exps, up_exps, down_exps, routing)

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, tensors: dict[str, QTensor]) -> None:
        """Compile or load the JIT kernels now (seconds the first time in a checkout, then
        well under one), so the first token is not the one that pays."""
        nk.warmup()
