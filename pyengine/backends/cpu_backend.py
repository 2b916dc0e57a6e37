"""The native CPU backend: every op runs in ``pyengine._C`` (AVX-512 where the CPU has it).

Weights stay in their GGUF encoding, memory-mapped: ``matmul`` and ``embed`` hand
``w.raw`` straight to the quantized kernels (``_C.matmul`` / ``_C.get_rows``); norm
weights (F32 in every GGUF we run) are read as a float32 view of the same bytes.

Activations are float32 NumPy arrays. Every op returns a freshly allocated array, so a
result stays valid however long the caller keeps it (allocating a (n, d) float32
array costs well under a microsecond; the kernels are the cost). The one thing cached
between calls is the rotary cos/sin table of the last few (positions, base) pairs: a
forward pass asks for the same table for q and k of every layer.

Non-contract extras: :meth:`rmsnorm_add` and :meth:`add_rmsnorm`, one pass instead of two
over the residual stream. No architecture calls them (models/common.py runs ``add`` then
``rmsnorm``); they run in their own tests only.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from .. import _C
from ..errors import BackendUnavailableError, ModelFileError
from ..ggml_types import PANEL_FORMS
from ..tensor import QTensor
from .base import Backend, KVCache, _check_same

_F32 = np.dtype(np.float32)


def _act(x) -> np.ndarray:
    """``x`` as float32 with a contiguous last axis (rows may be strided); no copy when it already is."""
    if isinstance(x, np.ndarray) and x.dtype == _F32 and (x.ndim == 0 or x.strides[-1] == 4 or x.shape[-1] <= 1):
        return x
    return np.ascontiguousarray(x, dtype=np.float32)


def _contig(x) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (no copy when it already is)."""
    if isinstance(x, np.ndarray) and x.dtype == _F32 and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(x, dtype=np.float32)


def _forced_tier() -> str:
    """The tier ``$PYENGINE_CPU_VARIANT`` forces ("" when unset or "auto")."""
    forced = os.environ.get("PYENGINE_CPU_VARIANT", "").strip().lower()
    return "" if forced == "auto" else forced


def _isa_label() -> str:
    """A short name for the instruction set the kernels use here (e.g. "avx512-vnni"): the
    widest the CPU has, or the tier forced with ``$PYENGINE_CPU_VARIANT`` (benchmarks force
    avx2 on an AVX-512 machine, and their rows must say so)."""
    forced = _forced_tier()
    if forced:
        return forced
    feats = {}
    try:
        feats = dict(_C.cpu_features())
    except Exception:  # an older extension: fall back to the op variant
        pass
    on = {str(k).lower().replace("-", "_") for k, v in feats.items() if v}
    if {"avx512f", "avx512_vnni"} <= on or {"avx512f", "avx512vnni"} <= on:
        return "avx512-vnni"
    if "avx512f" in on:
        return "avx512"
    if {"avx2", "avx_vnni"} <= on:
        return "avx2-vnni"
    if "avx2" in on:
        return "avx2"
    return str(_C.ops_variant())


def matmul_tier() -> str:
    """The matmul kernel tier ``variant="auto"`` runs here: ``$PYENGINE_CPU_VARIANT`` when set,
    else the widest this CPU and build have ("generic", "avx2" or "avx512")."""
    return _forced_tier() or str(_C.kernel_variants()[-1])


#: the tiers on which a load-time form was measured faster than its GGUF type (benchmarks/ab_kernels.py
#: TYPE/FORM), for a form not on both SIMD tiers; at most one form per GGUF type and tier. The panel
#: forms are the AVX2 tier's (which reads them itself: 0.58-0.80 of the per-block time for one token,
#: 2026-12-08); the AVX-512 tier, whose 16-block panels are already 86-88% of a fast bus, would only
#: rewrite them back (kernels/cpu/matmul_kernels.h, panel_forms), so it keeps Q5_0_R / Q5_1_R.
#: (Q6_K_R was AVX2-only, at 1.06-1.18 of Q6_K's time on AVX-512 when measured before the forms'
#: unpackers were reviewed; re-measured 2026-12-07 at 0.89-0.95 for one token, 1.02-1.03 for 4-64:
#: rewritten on both tiers since.)
FORM_TIERS: dict[str, tuple[str, ...]] = {"Q5_0_R": ("avx512",), "Q5_1_R": ("avx512",),
                                          **{f: ("avx2",) for f in PANEL_FORMS}}


def form_pays_off(form: str, tier: str) -> bool:
    """Whether matrices are rewritten into ``form`` when ``tier`` runs the kernels."""
    return tier in FORM_TIERS.get(form, ("avx2", "avx512"))


def repack_copied(tensors: dict[str, QTensor], names) -> dict[str, int]:
    """Rewrite, in place, the copied matrices of a type that has a load-time form
    (``ggml_types.LOAD_FORMS``: Q3_K -> Q3_K_R, Q4_K -> Q4_K_R, ...; same bytes per block, same
    values, bit-identical matmul results, see kernels/cpu/quants.h) into that form, when the
    tier that runs was measured faster with it (:func:`form_pays_off`; never the generic tier,
    which only undoes it). Only copies: a mapped file is read-only and stays as it is. Returns
    {form: matrices rewritten}."""
    from ..ggml_types import BY_NAME, LOAD_FORMS

    tier = matmul_tier()
    form_of = {t: f for f, t in LOAD_FORMS.items() if form_pays_off(f, tier)}
    done: dict[str, int] = {}
    if not hasattr(_C, "repack"):
        return done
    jobs = []  # (form, whole rows of one tensor: ~16 MiB, cols)
    for name in names:
        t = tensors[name]
        form = form_of.get(t.type_name.upper())
        if form is None or len(t.shape) != 2 or not t.raw.flags.writeable:
            continue
        cols = int(t.shape[1])  # QTensor.shape is (rows, cols)
        rb = BY_NAME[t.type_name.upper()].n_bytes(cols)
        step = max(1, (16 << 20) // rb) * rb
        jobs += [(form, t.raw[o:o + step], cols) for o in range(0, t.raw.nbytes, step)]
        t.type_name = form
        t.cache.clear()
        done[form] = done.get(form, 0) + 1
    if jobs:  # the conversion releases the GIL: one worker per core (0.4-1.3 GB/s each)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            list(pool.map(lambda job: _C.repack(job[0], job[1], job[1], job[2]), jobs))
    return done


_NATIVE_TYPES: dict[str, bool] = {}


def native_type(type_name: str) -> bool:
    """Whether ``_C.matmul`` / ``_C.get_rows`` take weights of this GGML type (probed once per type)."""
    ok = _NATIVE_TYPES.get(type_name)
    if ok is None:
        from ..ggml_types import ggml_type

        try:
            t = ggml_type(type_name)
            bs = t.block_size if t.block_size > 1 else 32
            w = np.zeros(t.n_bytes(bs), dtype=np.uint8)
            _C.matmul(t.name, w, 1, bs, np.zeros((1, bs), np.float32), np.empty((1, 1), np.float32))
            _C.get_rows(t.name, w, 1, bs, np.zeros(1, np.int32), np.empty((1, bs), np.float32))
            ok = True
        except ValueError:
            ok = False
        _NATIVE_TYPES[type_name] = ok
    return ok


class CpuBackend(Backend):
    name = "cpu"

    #: rope tables kept (positions x base): a Gemma 3 step uses two bases
    ROPE_TABLES = 8

    decode_step_status = "native single-call decode step, built at the first prompt"

    def __init__(self, n_threads: int | None = None):
        missing = [f for f in ("matmul", "get_rows", "attention", "rmsnorm", "rope") if not hasattr(_C, f)]
        if missing:
            raise BackendUnavailableError(
                f"cpu backend unavailable: pyengine._C lacks {', '.join(missing)} "
                "(the extension is older than the Python code: rebuild it)")
        if n_threads is not None and hasattr(_C, "set_num_threads"):
            _C.set_num_threads(int(n_threads))
        self._rope_tables: OrderedDict = OrderedDict()
        threads = self.n_threads()
        self.description = f"cpu {_isa_label()}, {threads} thread{'s' if threads != 1 else ''}"

    @staticmethod
    def n_threads() -> int:
        for f in ("get_num_threads", "num_threads"):
            if hasattr(_C, f):
                return int(getattr(_C, f)())
        return 1

    # -- data movement ---------------------------------------------------------
    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        return _contig(x)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    # -- weights -----------------------------------------------------------------
    def embed(self, w: QTensor, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        out = np.empty((ids.size, w.cols), dtype=np.float32)
        _C.get_rows(w.type_name, w.raw, w.rows, w.cols, ids, out)
        return out

    def matmul(self, w: QTensor, x: np.ndarray) -> np.ndarray:
        x = _contig(x)
        out = np.empty((x.shape[0], w.rows), dtype=np.float32)
        _C.matmul(w.type_name, w.raw, w.rows, w.cols, x, out)  # weights stay in their GGUF encoding
        return out

    def prepare(self, tensors) -> None:
        """Refuse, at load, a matrix whose type has no native kernel (never a silent float32 copy)."""
        for w in tensors.values():
            if len(w.shape) > 1 and not native_type(w.type_name):
                raise ModelFileError(f"cpu backend: tensor {w.name!r} has type {w.type_name}, which has no native "
                                     f"kernel (use backend='numpy' or 'numba')")

    @staticmethod
    def _vector(w: QTensor) -> np.ndarray:
        """A 1-D weight (norm scales) as float32: a view of the mapped bytes for F32."""
        v = w.cache.get("cpu_f32")
        if v is None:
            if w.type_name.upper() == "F32":
                v = w.raw.view(np.float32).reshape(-1)
            else:  # not seen in practice; dequantized once and kept
                from .. import quants

                v = np.ascontiguousarray(quants.dequantize(w.type_name, w.raw, w.n_elements), dtype=np.float32)
            w.cache["cpu_f32"] = v
        return v

    def add_bias(self, x: np.ndarray, b: QTensor) -> np.ndarray:
        x = _act(x)
        out = np.empty(x.shape, dtype=np.float32)
        _C.add_bias(x, self._vector(b), out)
        return out

    # -- elementwise and normalisation -------------------------------------------
    def rmsnorm(self, x: np.ndarray, w: QTensor, eps: float) -> np.ndarray:
        x = _act(x)
        out = np.empty(x.shape, dtype=np.float32)
        _C.rmsnorm(x, self._vector(w), float(eps), out)
        return out

    def rmsnorm_add(self, x: np.ndarray, w: QTensor, eps: float, residual: np.ndarray) -> np.ndarray:
        """``residual + rmsnorm(x, w, eps)`` in one pass (Gemma's post-norms)."""
        x, residual = _contig(x), _contig(residual)
        out = np.empty(residual.shape, dtype=np.float32)
        _C.rmsnorm_add(x, self._vector(w), float(eps), residual, out)
        return out

    def add_rmsnorm(self, a: np.ndarray, b: np.ndarray, w: QTensor, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """``s = a + b`` and ``rmsnorm(s, w, eps)`` in one pass; returns both."""
        a, b = _contig(a), _contig(b)
        s = np.empty(a.shape, dtype=np.float32)
        nrm = np.empty(a.shape, dtype=np.float32)
        _C.add_rmsnorm(a, b, self._vector(w), float(eps), s, nrm)
        return s, nrm

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if getattr(a, "shape", None) != getattr(b, "shape", None):  # broadcasting: NumPy's rules
            return np.add(a, b, dtype=np.float32)
        a, b = _contig(a), _contig(b)
        out = np.empty(a.shape, dtype=np.float32)
        _C.add(a, b, out)
        return out

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        x = _contig(x)
        out = np.empty(x.shape, dtype=np.float32)
        _C.scale(x, float(np.float32(s)), out)
        return out

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        x = _contig(x)
        out = np.empty(x.shape, dtype=np.float32)
        _C.softcap(x, float(np.float32(cap)), out)
        return out

    def _gate(self, fn, gate, up) -> np.ndarray:
        gate, up = _contig(gate), _contig(up)
        if gate.shape != up.shape:
            raise ValueError(f"gate {gate.shape} and up {up.shape} differ in shape")
        out = np.empty(gate.shape, dtype=np.float32)
        fn(gate, up, out)
        return out

    def silu_mul(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return self._gate(_C.silu_mul, gate, up)

    def gelu_mul(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return self._gate(_C.gelu_mul, gate, up)

    # -- position and attention --------------------------------------------------
    def _rope_table(self, positions: np.ndarray, freq_base: float, n_rot: int,
                    scaling=None) -> tuple[np.ndarray, np.ndarray]:
        pos = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1)
        if scaling is not None and scaling.is_identity:
            scaling = None
        key = (float(freq_base), int(n_rot), pos.tobytes(), None if scaling is None else scaling.key())
        tab = self._rope_tables.get(key)
        if tab is None:
            cos = np.empty((pos.size, n_rot // 2), dtype=np.float32)
            sin = np.empty_like(cos)
            _C.rope_table(pos, float(freq_base), int(n_rot), cos, sin, **({} if scaling is None else scaling.kwargs()))
            tab = (cos, sin)
            self._rope_tables[key] = tab
            if len(self._rope_tables) > self.ROPE_TABLES:
                self._rope_tables.popitem(last=False)
        else:
            self._rope_tables.move_to_end(key)
        return tab

    def rope(self, x, positions, n_heads, head_dim, freq_base, neox, n_rot=None, scaling=None):
        n_rot = head_dim if n_rot is None else int(n_rot)
        x = _act(x)
        cos, sin = self._rope_table(positions, freq_base, n_rot, scaling)
        out = np.empty((x.shape[0], n_heads * head_dim), dtype=np.float32)
        _C.rope(x, out, cos, sin, int(n_heads), int(head_dim), n_rot, bool(neox))
        return out

    def kv_cache(self, n_layers: int, n_ctx: int, kv_width: int, keys_are_values: bool = False) -> KVCache:
        """Values as ``(n_ctx, kv_width)`` rows; keys as transposed panels
        ``(ceil(n_ctx/64), kv_width, 64)`` (see kernels/cpu/ops.h), the layout the attention
        kernel reads without any per-call repacking. :meth:`keys` gives them back as rows.
        ``keys_are_values`` (MLA): the rows only, read as keys too; half the memory."""
        v = [np.zeros((n_ctx, kv_width), dtype=np.float32) for _ in range(n_layers)]  # each (n_ctx, kv_width)
        if keys_are_values:
            return KVCache(v, v, n_ctx)
        blk = int(_C.ATTN_KEY_BLOCK)
        n_blocks = -(-n_ctx // blk)
        k = [np.zeros((n_blocks, kv_width, blk), dtype=np.float32) for _ in range(n_layers)]  # (n_blocks, kv_width, 64)
        return KVCache(k, v, n_ctx)

    def kv_write(self, cache: KVCache, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[0]
        if pos0 < 0 or pos0 + n > cache.n_ctx:
            raise ValueError(f"kv_write: positions {pos0}..{pos0 + n - 1} outside the cache (n_ctx {cache.n_ctx})")
        if cache.keys_are_values:
            _check_same(k, v)
        else:
            _C.kv_store(_act(k), cache.k[layer], int(pos0))
        cache.v[layer][pos0:pos0 + n] = v

    @staticmethod
    def keys(cache: KVCache, layer: int) -> np.ndarray:
        """The keys of ``layer`` as ``(n_ctx, kv_width)`` rows (a copy; for inspection and tests)."""
        kt = cache.k[layer]
        if cache.keys_are_values:
            return kt.copy()
        return kt.transpose(0, 2, 1).reshape(-1, kt.shape[1])[:cache.n_ctx].copy()

    # -- mixture of experts --------------------------------------------------------
    def moe_ffn(self, x, router, gate_exps, up_exps, down_exps, routing):
        """Natively (``_C.moe_ffn``: routing and the chosen experts only, tokens grouped by
        expert); a weight type without a native kernel runs through the ops instead."""
        from .moe import moe_ffn_grouped, native_args

        args = native_args(router, gate_exps, up_exps, down_exps, routing, native_type)
        if args is None or not hasattr(_C, "moe_ffn"):
            return moe_ffn_grouped(self, x, router, gate_exps, up_exps, down_exps, routing)
        x = _contig(x)
        out = np.empty(x.shape, dtype=np.float32)
        _C.moe_ffn(x, out, **args)
        return out

    def mla_attention(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope, n_rot,
                      freq_base, neox, scaling, scale):
        """Natively (``_C.mla_attention``); a weight type without a native kernel runs through the ops."""
        from .mla import mla_attention_composed, native_args

        args = native_args(wk_b, wv_b, self._vector(kv_norm), eps, n_heads, qk_nope, n_rot, freq_base, neox,
                           scaling, scale, native_type)
        if args is None or not hasattr(_C, "mla_attention"):
            return mla_attention_composed(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads,
                                          qk_nope, n_rot, freq_base, neox, scaling, scale)
        if not cache.keys_are_values:
            raise ValueError("mla_attention: the cache must store one row per position "
                             "(kv_cache(..., keys_are_values=True))")
        q, kv = _contig(q), _contig(kv)
        out = np.empty((q.shape[0], int(n_heads) * int(wv_b.shape[1])), dtype=np.float32)
        _C.mla_attention(q, kv, out, cache.v[layer], int(pos0), **args)
        return out

    # -- a whole decode step in one native call -----------------------------------
    def make_decode_step(self, forward, cache: KVCache):
        """``forward`` for one token traced into a native ``_C.DecodeGraph`` (see backends/cpu_graph.py).

        Returns ``step(token_id, pos0, copy=True) -> logits (1, n_vocab)``, bit-for-bit what
        ``forward(self, [token_id], pos0, cache, True)`` computes, with the same cache
        writes; ``copy=False`` returns the step's own output buffer, overwritten by the
        next step. ``None`` (op by op) when the pass cannot be replayed or when
        ``PYENGINE_NO_GRAPH`` is set.
        """
        from .cpu_graph import build_decode_step

        return build_decode_step(self, forward, cache)

    def attention(self, q, cache, layer, pos0, n_heads, n_kv_heads, head_dim, scale, window=0, softcap=0.0):
        q = _act(q)
        out = np.empty((q.shape[0], n_heads * head_dim), dtype=np.float32)
        keys = None if cache.keys_are_values else cache.k[layer]  # None: the value rows are the keys
        _C.attention(q, keys, cache.v[layer], out, int(pos0), int(n_heads), int(n_kv_heads),
                     int(head_dim), float(scale), int(window or 0), float(softcap or 0.0))
        return out
