"""Multi-head latent attention (DeepSeek-V2's MLA, absorbed form): the ``mla_attention`` op.

For ``q (n, H*(dn+r))`` and ``kv (n, R+r)`` (the projections ``h Wq^T`` and
``h Wkv_a^T``) at positions ``pos0..pos0+n-1`` (``R`` kv_lora_rank, ``r`` rope dims, ``dn``
nope dims, ``dv`` value dims; ``wk_b (H, R, dn)``, ``wv_b (H, dv, R)``)::

    c      = rmsnorm(kv[:, :R], kv_norm)          # the latent
    k_pe   = rope(kv[:, R:])                      # one rope key shared by all heads
    cache <- [c, k_pe] at each position           # R + r per token: the compressed cache
    q_h    = [Wk_b[h] q_nope_h, rope(q_pe_h)]     # the key up-projection absorbed into the query
    a_h    = softmax_j(scale * q_h . [c, k_pe]_j) # causal, over the cached positions
    out_h  = Wv_b[h] (sum_j a_hj c_j)             # the value up-projection after the sum

returns ``out (n, H*dv)`` (before ``Wo``). The cache is the backend's KV cache of width
``R + r``, made with ``keys_are_values=True``: the attention op's keys and values are the same
cached rows (the values use their first R dims, the latent), so the backend may keep one copy
(``cache.k is cache.v``; every backend does) and ``kv_write`` gets the row as ``k`` and ``v``.

:func:`mla_attention_composed` is the spec written with a backend's own ops (numpy: the
reference); the cpu backend runs it natively (``_C.mla_attention``, csrc/mla.cpp) and its
decode step replays it as one node.
"""
from __future__ import annotations

import numpy as np

from ..tensor import QTensor
from .moe import expert


def mla_attention_composed(ops, q, kv, cache, layer, pos0, wk_b: QTensor, wv_b: QTensor, kv_norm: QTensor,
                           eps, n_heads, qk_nope, n_rot, freq_base, neox, scaling, scale):
    H, dn, r = int(n_heads), int(qk_nope), int(n_rot)
    kvn = np.asarray(ops.to_numpy(kv), dtype=np.float32)
    n, W = kvn.shape
    R, dv = W - r, wv_b.shape[1]
    pos = np.arange(pos0, pos0 + n, dtype=np.int32)
    extra = {} if scaling is None else {"scaling": scaling}
    qh = np.asarray(ops.to_numpy(q), dtype=np.float32).reshape(n, H, dn + r)
    q_pe = ops.rope(ops.from_numpy(np.ascontiguousarray(qh[:, :, dn:]).reshape(n, H * r)), pos, H, r, freq_base,
                    neox, r, **extra)                                             # (n, H*r)
    k_pe = ops.rope(ops.from_numpy(np.ascontiguousarray(kvn[:, R:])), pos, 1, r, freq_base, neox, r, **extra)
    lat = ops.rmsnorm(ops.from_numpy(np.ascontiguousarray(kvn[:, :R])), kv_norm, eps)  # (n, R)
    qcat = np.empty((n, H, W), dtype=np.float32)                                  # [q_abs_h, q_pe_h]
    q_pe = np.asarray(ops.to_numpy(q_pe)).reshape(n, H, r)
    for h in range(H):
        qn = ops.from_numpy(np.ascontiguousarray(qh[:, h, :dn]))
        qcat[:, h, :R] = ops.to_numpy(ops.matmul(expert(wk_b, h), qn))
        qcat[:, h, R:] = q_pe[:, h]
    kcat = ops.from_numpy(np.concatenate([ops.to_numpy(lat), ops.to_numpy(k_pe)], axis=1))  # (n, R + r)
    ops.kv_write(cache, layer, pos0, kcat, kcat)
    a = np.asarray(ops.to_numpy(ops.attention(ops.from_numpy(qcat.reshape(n, H * W)), cache, layer, pos0, H, 1, W,
                                              scale))).reshape(n, H, W)
    o = np.empty((n, H, dv), dtype=np.float32)
    for h in range(H):  # each head's latent sum through its value up-projection
        o[:, h] = ops.to_numpy(ops.matmul(expert(wv_b, h), ops.from_numpy(np.ascontiguousarray(a[:, h, :R]))))
    return ops.from_numpy(o.reshape(n, H * dv))


def native_args(wk_b: QTensor, wv_b: QTensor, kv_norm_f32: np.ndarray, eps, n_heads, qk_nope, n_rot, freq_base,
                neox, scaling, scale, native_type) -> dict | None:
    """Keyword arguments of ``_C.mla_attention`` / ``DecodeGraph.add_mla_attention``, or None
    when a weight type has no native kernel."""
    if not (native_type(wk_b.type_name) and native_type(wv_b.type_name)):
        return None
    from .base import RopeScaling

    sc = (scaling or RopeScaling()).kwargs()
    return dict(kv_norm=kv_norm_f32, eps=float(eps), wk_type=wk_b.type_name, wk=wk_b.raw, wv_type=wv_b.type_name,
                wv=wv_b.raw, n_heads=int(n_heads), kv_lora_rank=int(wk_b.shape[1]), qk_nope=int(qk_nope),
                n_rot=int(n_rot), v_head=int(wv_b.shape[1]), freq_base=float(freq_base), neox=bool(neox),
                scale=float(scale), **sc)
