"""The numba tier: the quantized matmul and the transformer ops as numba JIT functions.

The readable middle step between the NumPy reference (``pyengine.quants`` and
``backends/numpy_backend.py``) and the hand-written SIMD C++ kernels: the same GGUF
block formats, walked block by block with the bit unpacking spelled out, compiled by
LLVM instead of interpreted.

Matmul, ``x (n, cols) @ W.T``, is a port of the spec :func:`pyengine.quants.matmul`: for a
quantized weight type the activations are first quantized to int8 per block (32 or 256 values) and
decoded again with the spec's own :func:`pyengine.quants.matmul_activations` (as every
native tier quantizes them), then multiplied in float32; float weights (F32, F16, BF16)
take ``x`` as it is. So this tier equals the spec up to float32 summation order. Per type
(named as ggml spells the type, ``ggml_types.GGMLType.ident``):

* ``matmul_<type>_numba(w, x)``, e.g. :func:`matmul_q4_K_numba`: one output element of
  ``quants.matmul_<type>``, the dot product of one weight row (``w``: its bytes) with the
  decoded activations ``x`` (float32), block by block, unpacking the quants in
  registers; nothing dequantized is stored;
* ``dequantize_<type>_numba(w, y)``, e.g. :func:`dequantize_q4_K_numba`: the row's values
  into ``y``, as ``quants.dequantize_<type>``.

:func:`_matmul_kernel` runs ``prange`` over chunks of rows. For a few tokens each row
is dotted with every token straight from its bytes (they stay in L1 across tokens);
from ``_DEQUANT_MIN_TOKENS`` tokens on, each row is dequantized once into a scratch
row and dotted with the tokens as plain float32, which amortises the unpacking.
The full matrix is never dequantized.

Compile time: an integer ``kind`` picks the type, so there is one compiled matmul and
one row gather for all types; the per-type row functions are compiled once each and
linked in, the type dispatch is inlined, and the wrappers normalise every argument
(read-only uint8 weights, C-contiguous float32) so nothing is specialised twice.
``cache=True`` keeps the machine code on disk: only the first run in a checkout pays
for LLVM (about 20 s of CPU for the matmul).

Numba details that matter for speed (each worth 2-5x here):
* integer arithmetic is promoted to int64, which does not convert to float in wide
  SIMD lanes; :func:`_fq` truncates to int32 first so LLVM narrows the unpacking;
* kernels take row *slices*, not base offsets, so indices are provably non-negative
  (numba's negative-index wraparound otherwise blocks vectorisation);
* tiny helpers are inlined at numba level (``inline="always"``); the per-type row
  functions are ordinary calls, once per row and token.

Floating point: ``FASTMATH`` lets LLVM reassociate sums (so reductions vectorise) and
fuse multiply-adds, but keeps IEEE infinities/NaNs (masked attention scores,
overflowing ``exp``, extreme fp16 scales) and exact ``exp``/``tanh``/``cos``.
The elementwise ops and rope use no fast-math at all, to round like the reference.
"""
from __future__ import annotations

import numpy as np

from . import quants
from .errors import BackendUnavailableError
from .ggml_types import SUPPORTED, ggml_type

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    raise BackendUnavailableError("numba backend: numba is not installed (pip install numba)") from None

FASTMATH = {"reassoc", "contract", "nsz"}

# The integer ``kind`` of a weight type is its index in the one list of supported types,
# which starts with the three float types (the kernels test ``kind <= K_BF16``).
KINDS = SUPPORTED
KIND_OF = {name: i for i, name in enumerate(KINDS)}
assert KINDS[:3] == ("F32", "F16", "BF16"), KINDS
(K_F32, K_F16, K_BF16, K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0, K_Q2_K, K_Q3_K, K_Q4_K, K_Q5_K, K_Q6_K,
 K_IQ4_NL, K_IQ4_XS) = (KIND_OF[t] for t in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K",
                                             "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"))

# From this many tokens on, matmul dequantizes each row once instead of unpacking it per token.
_DEQUANT_MIN_TOKENS = 4
_ROWS_PER_CHUNK = 16


# -- scalar helpers ----------------------------------------------------------------

_F16_0 = np.float32(16.0)
_F32_0 = np.float32(32.0)

# 2**(e - 25) for a half-precision exponent field e: value = (1024 + mantissa) * _POW2[e]
_POW2 = np.array([2.0 ** (e - 25) for e in range(32)], dtype=np.float32)


@njit(cache=True, inline="always")
def _f16(raw, o):
    """The IEEE binary16 stored little-endian at ``raw[o:o+2]``, as float32 (exact)."""
    h = np.int32(raw[o]) | (np.int32(raw[o + 1]) << 8)
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:  # zero or subnormal: m * 2^-24
        v = np.float32(m) * _POW2[1]
    elif e == 31:  # inf / nan
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:  # normal: (1 + m/1024) * 2^(e-15)
        v = np.float32(m + 1024) * _POW2[e]
    return -v if h & 0x8000 else v


@njit(cache=True, inline="always")
def _fq(v):
    """A small integer (an unpacked quant) as float32, through int32 (see module docstring)."""
    return np.float32(np.int32(v))


@njit(cache=True, inline="always")
def _i8(b):
    """Byte ``b`` (0..255) read as a signed int8."""
    v = np.int32(b)
    return v - ((v & 0x80) << 1)


@njit(cache=True, inline="always")
def _u32(raw, o):
    """The little-endian uint32 at ``raw[o:o+4]`` (as int64, to shift freely)."""
    return (np.int64(raw[o]) | (np.int64(raw[o + 1]) << 8)
            | (np.int64(raw[o + 2]) << 16) | (np.int64(raw[o + 3]) << 24))


@njit(cache=True, inline="always")
def _scale_min_k4(raw, sc, j):
    """6-bit scale and min of sub-block ``j`` (0..7) from the 12 packed bytes at ``raw[sc:]``.

    Bytes 0-3: low 6 bits = scales 0-3, top 2 bits = high bits of scales 4-7.
    Bytes 4-7: low 6 bits = mins 0-3, top 2 bits = high bits of mins 4-7.
    Bytes 8-11: low nibble = low 4 bits of scales 4-7, high nibble = of mins 4-7.
    """
    if j < 4:
        s = np.int32(raw[sc + j]) & 63
        m = np.int32(raw[sc + j + 4]) & 63
    else:
        s = (np.int32(raw[sc + j + 4]) & 0xF) | ((np.int32(raw[sc + j - 4]) >> 6) << 4)
        m = (np.int32(raw[sc + j + 4]) >> 4) | ((np.int32(raw[sc + j]) >> 6) << 4)
    return np.float32(s), np.float32(m)


# Per type: matmul_<type>_numba(w, x) is the dot product of one weight row, ``w`` its bytes,
# with ``x`` (float32, as many values as the row); dequantize_<type>_numba(w, y) writes the
# row's values into ``y``. Both walk the row block by block.
# Two shapes that LLVM needs to vectorise well:
# * row slices rather than offsets, so every index is provably non-negative;
# * for 32-value blocks, a small ``acc`` array of per-lane partial sums carried across
#   blocks (as a C++ kernel keeps a __m512 accumulator). A scalar sum per block makes
#   LLVM unroll the 16-step inner loop and vectorise across blocks with gathers instead,
#   2-4x slower.

# Each type's block decode is written once, as small inlined helpers that both functions
# call: one for the block's header (offsets and scales), one for the quants of one
# position (e.g. the low and high nibble of one byte). The two functions differ only in
# what they do with the decoded values (multiply-add with ``x``, or store).

@njit(cache=True, inline="always")
def _nibbles(w, i, bias):
    """The low and high nibble of byte ``w[i]``, minus ``bias``, as float32."""
    q = w[i]
    return _fq((q & 0xF) - bias), _fq((q >> 4) - bias)


@njit(cache=True, inline="always")
def _nibbles_5(w, i, qh, j, bias):
    """Q5_0 / Q5_1 quants j and j+16: the nibbles of ``w[i]`` topped by bits j and j+16 of
    ``qh`` as their 5th bit, minus ``bias``, as float32."""
    q = w[i]
    lo = (q & 0xF) | (((qh >> j) & 1) << 4)
    hi = (q >> 4) | (((qh >> (j + 16)) & 1) << 4)
    return _fq(lo - bias), _fq(hi - bias)


@njit(cache=True, inline="always")
def _block_d(w, b, size):
    """Block ``b`` of ``size`` bytes that starts with a f16 scale d: (offset of its quants, d)."""
    o = size * b
    return o + 2, _f16(w, o)


@njit(cache=True, inline="always")
def _block_dm(w, b, size):
    """Block ``b`` that starts with f16 d and f16 m (Q4_1): (offset of its quants, d, m)."""
    o = size * b
    return o + 4, _f16(w, o), _f16(w, o + 2)


# -- Q4_0: d (f16) | qs[16]; value j = d*(qs[j]&15 - 8), value j+16 = d*(qs[j]>>4 - 8) ------

@njit(cache=True, fastmath=FASTMATH)
def matmul_q4_0_numba(w, x):
    """One output element of ``quants.matmul_q4_0``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    acc = np.zeros(16, dtype=np.float32)  # one SIMD register of partial sums (see above)
    for b in range(x.size // 32):
        qs, d = _block_d(w, b, 18)
        for j in range(16):
            q0, q1 = _nibbles(w, qs + j, 8)
            acc[j] += d * (q0 * x[32 * b + j] + q1 * x[32 * b + j + 16])
    return acc.sum()


@njit(cache=True)
def dequantize_q4_0_numba(w, y):
    """``quants.dequantize_q4_0`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 32):
        qs, d = _block_d(w, b, 18)
        for j in range(16):
            q0, q1 = _nibbles(w, qs + j, 8)
            y[32 * b + j] = d * q0
            y[32 * b + j + 16] = d * q1


# -- Q4_1: d (f16) | m (f16) | qs[16]; value = d*nibble + m ------------------------------

@njit(cache=True, fastmath=FASTMATH)
def matmul_q4_1_numba(w, x):
    """One output element of ``quants.matmul_q4_1``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    acc = np.zeros(16, dtype=np.float32)  # d * q * x
    acc_m = np.zeros(16, dtype=np.float32)  # m * x
    for b in range(x.size // 32):
        qs, d, m = _block_dm(w, b, 20)
        for j in range(16):
            q0, q1 = _nibbles(w, qs + j, 0)
            x0 = x[32 * b + j]
            x1 = x[32 * b + j + 16]
            acc[j] += d * (q0 * x0 + q1 * x1)
            acc_m[j] += m * (x0 + x1)
    return acc.sum() + acc_m.sum()


@njit(cache=True)
def dequantize_q4_1_numba(w, y):
    """``quants.dequantize_q4_1`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 32):
        qs, d, m = _block_dm(w, b, 20)
        for j in range(16):
            q0, q1 = _nibbles(w, qs + j, 0)
            y[32 * b + j] = d * q0 + m
            y[32 * b + j + 16] = d * q1 + m


# -- Q5_0: d (f16) | qh (u32, bit j = 5th bit of value j) | qs[16]; value = d*(q5 - 16) --

@njit(cache=True, fastmath=FASTMATH)
def matmul_q5_0_numba(w, x):
    """One output element of ``quants.matmul_q5_0``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    acc = np.zeros(16, dtype=np.float32)
    for b in range(x.size // 32):
        qs, d = _block_d(w, b, 22)  # qs: the offset of qh here; the nibbles follow it
        qh = _u32(w, qs)
        for j in range(16):
            q0, q1 = _nibbles_5(w, qs + 4 + j, qh, j, 16)
            acc[j] += d * (q0 * x[32 * b + j] + q1 * x[32 * b + j + 16])
    return acc.sum()


@njit(cache=True)
def dequantize_q5_0_numba(w, y):
    """``quants.dequantize_q5_0`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 32):
        qs, d = _block_d(w, b, 22)
        qh = _u32(w, qs)
        for j in range(16):
            q0, q1 = _nibbles_5(w, qs + 4 + j, qh, j, 16)
            y[32 * b + j] = d * q0
            y[32 * b + j + 16] = d * q1


# -- Q5_1: d (f16) | m (f16) | qh (u32) | qs[16]; value = d*q5 + m ----------------------

@njit(cache=True, fastmath=FASTMATH)
def matmul_q5_1_numba(w, x):
    """One output element of ``quants.matmul_q5_1``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    acc = np.zeros(16, dtype=np.float32)  # d * q * x
    acc_m = np.zeros(16, dtype=np.float32)  # m * x
    for b in range(x.size // 32):
        qs, d, m = _block_dm(w, b, 24)  # qs: the offset of qh here; the nibbles follow it
        qh = _u32(w, qs)
        for j in range(16):
            q0, q1 = _nibbles_5(w, qs + 4 + j, qh, j, 0)
            x0 = x[32 * b + j]
            x1 = x[32 * b + j + 16]
            acc[j] += d * (q0 * x0 + q1 * x1)
            acc_m[j] += m * (x0 + x1)
    return acc.sum() + acc_m.sum()


@njit(cache=True)
def dequantize_q5_1_numba(w, y):
    """``quants.dequantize_q5_1`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 32):
        qs, d, m = _block_dm(w, b, 24)
        qh = _u32(w, qs)
        for j in range(16):
            q0, q1 = _nibbles_5(w, qs + 4 + j, qh, j, 0)
            y[32 * b + j] = d * q0 + m
            y[32 * b + j + 16] = d * q1 + m


# -- Q8_0: d (f16) | qs[32] (int8); value = d*q ------------------------------------------

@njit(cache=True, fastmath=FASTMATH)
def matmul_q8_0_numba(w, x):
    """One output element of ``quants.matmul_q8_0``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    acc = np.zeros(32, dtype=np.float32)
    for b in range(x.size // 32):
        qs, d = _block_d(w, b, 34)
        for j in range(32):
            acc[j] += d * (_fq(_i8(w[qs + j])) * x[32 * b + j])
    return acc.sum()


@njit(cache=True)
def dequantize_q8_0_numba(w, y):
    """``quants.dequantize_q8_0`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 32):
        qs, d = _block_d(w, b, 34)
        for j in range(32):
            y[32 * b + j] = d * _fq(_i8(w[qs + j]))


# -- Q4_K: d (f16) | dmin (f16) | scales[12] | qs[128]; 256 values --------------------------
# Four groups of 64 values: group g reads qs[32g : 32g+32], low nibbles are sub-block 2g,
# high nibbles sub-block 2g+1. value = d*scale[s]*q - dmin*min[s].

@njit(cache=True, inline="always")
def _f16_pair(w, o):
    """The two f16 at ``w[o:o+4]`` (a K-quant block's d and dmin), as float32."""
    return _f16(w, o), _f16(w, o + 2)


@njit(cache=True, inline="always")
def _k4_group(w, o, d, dmin, qs, g):
    """Group ``g`` of the Q4_K / Q5_K block at ``w[o:]`` (its d and dmin decoded) whose nibbles
    start at ``w[o+qs:]``: (offset of its 32 nibble bytes, d0, c0, d1, c1), the values of the
    low nibbles being d0*q - c0 and of the high nibbles d1*q - c1."""
    s0, m0 = _scale_min_k4(w, o + 4, 2 * g)
    s1, m1 = _scale_min_k4(w, o + 4, 2 * g + 1)
    return o + qs + 32 * g, d * s0, dmin * m0, d * s1, dmin * m1


@njit(cache=True, fastmath=FASTMATH)
def matmul_q4_K_numba(w, x):
    """One output element of ``quants.matmul_q4_K``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    s = np.float32(0.0)
    for b in range(x.size // 256):
        d, dmin = _f16_pair(w, 144 * b)
        for g in range(4):
            qs, d0, c0, d1, c1 = _k4_group(w, 144 * b, d, dmin, 16, g)
            xg = 256 * b + 64 * g
            sg = np.float32(0.0)
            for l in range(32):
                q0, q1 = _nibbles(w, qs + l, 0)
                sg += (d0 * q0 - c0) * x[xg + l] + (d1 * q1 - c1) * x[xg + 32 + l]
            s += sg
    return s


@njit(cache=True)
def dequantize_q4_K_numba(w, y):
    """``quants.dequantize_q4_K`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 256):
        d, dmin = _f16_pair(w, 144 * b)
        for g in range(4):
            qs, d0, c0, d1, c1 = _k4_group(w, 144 * b, d, dmin, 16, g)
            for l in range(32):
                q0, q1 = _nibbles(w, qs + l, 0)
                y[256 * b + 64 * g + l] = d0 * q0 - c0
                y[256 * b + 64 * g + 32 + l] = d1 * q1 - c1


# -- Q5_K: d | dmin | scales[12] | qh[32] | qs[128]; Q4_K plus a 5th bit per value -----------
# In group g, bit 2g of qh[l] tops value l and bit 2g+1 tops value 32+l.

@njit(cache=True, inline="always")
def _q5_K_pair(w, o, qs, g, l):
    """Values l and 32+l of group ``g`` of the Q5_K block at ``w[o:]`` (nibbles at ``w[qs:]``),
    5-bit, as float32."""
    q = w[qs + l]
    h = w[o + 16 + l]
    return _fq((q & 0xF) | (((h >> (2 * g)) & 1) << 4)), _fq((q >> 4) | (((h >> (2 * g + 1)) & 1) << 4))


@njit(cache=True, fastmath=FASTMATH)
def matmul_q5_K_numba(w, x):
    """One output element of ``quants.matmul_q5_K``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    s = np.float32(0.0)
    for b in range(x.size // 256):
        d, dmin = _f16_pair(w, 176 * b)
        for g in range(4):
            qs, d0, c0, d1, c1 = _k4_group(w, 176 * b, d, dmin, 48, g)
            xg = 256 * b + 64 * g
            sg = np.float32(0.0)
            for l in range(32):
                q0, q1 = _q5_K_pair(w, 176 * b, qs, g, l)
                sg += (d0 * q0 - c0) * x[xg + l] + (d1 * q1 - c1) * x[xg + 32 + l]
            s += sg
    return s


@njit(cache=True)
def dequantize_q5_K_numba(w, y):
    """``quants.dequantize_q5_K`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 256):
        d, dmin = _f16_pair(w, 176 * b)
        for g in range(4):
            qs, d0, c0, d1, c1 = _k4_group(w, 176 * b, d, dmin, 48, g)
            for l in range(32):
                q0, q1 = _q5_K_pair(w, 176 * b, qs, g, l)
                y[256 * b + 64 * g + l] = d0 * q0 - c0
                y[256 * b + 64 * g + 32 + l] = d1 * q1 - c1


# -- Q6_K: ql[128] | qh[64] | scales[16] (int8) | d (f16); 256 values ----------------------
# Two halves of 128 values. In half h, for l < 32, with a = ql[64h+l], b = ql[64h+32+l],
# c = qh[32h+l]: values l, l+32, l+64, l+96 are (a&15, b&15, a>>4, b>>4) topped by the bit
# pairs (0-1, 2-3, 4-5, 6-7) of c, minus 32, times d*scales[8h + l//16 + (0, 2, 4, 6)].

@njit(cache=True, inline="always")
def _q6_K_half(w, b, half):
    """Half ``half`` of the Q6_K block ``b``: (offset of its ql, of its qh, of its 8 scales, d)."""
    o = 210 * b
    return o + 64 * half, o + 128 + 32 * half, o + 192 + 8 * half, _f16(w, o + 208)


@njit(cache=True, inline="always")
def _q6_K_quad(w, ql, qh, l):
    """Values l, l+32, l+64, l+96 of a Q6_K half (``ql``, ``qh`` its offsets), before the
    scales: q = low 4 bits | high 2 bits << 4, minus 32; written as low + 16*high - 32 in
    float32 (exact), which vectorises better than the int64 bit-or numba emits."""
    qa = w[ql + l]
    qb = w[ql + l + 32]
    c = w[qh + l]
    return (_fq(qa & 0xF) + _F16_0 * _fq(c & 3) - _F32_0, _fq(qb & 0xF) + _F16_0 * _fq((c >> 2) & 3) - _F32_0,
            _fq(qa >> 4) + _F16_0 * _fq((c >> 4) & 3) - _F32_0, _fq(qb >> 4) + _F16_0 * _fq(c >> 6) - _F32_0)


@njit(cache=True, fastmath=FASTMATH)
def matmul_q6_K_numba(w, x):
    """One output element of ``quants.matmul_q6_K``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    s = np.float32(0.0)
    for b in range(x.size // 256):
        for half in range(2):
            ql, qh, sc, d = _q6_K_half(w, b, half)
            xh = 256 * b + 128 * half
            for i in range(2):  # l in [16i, 16i+16) share the scales i, i+2, i+4, i+6
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                s3 = np.float32(0.0)
                s4 = np.float32(0.0)
                for l in range(16 * i, 16 * i + 16):
                    q1, q2, q3, q4 = _q6_K_quad(w, ql, qh, l)
                    s1 += q1 * x[xh + l]
                    s2 += q2 * x[xh + l + 32]
                    s3 += q3 * x[xh + l + 64]
                    s4 += q4 * x[xh + l + 96]
                s += (d * _fq(_i8(w[sc + i])) * s1 + d * _fq(_i8(w[sc + i + 2])) * s2
                      + d * _fq(_i8(w[sc + i + 4])) * s3 + d * _fq(_i8(w[sc + i + 6])) * s4)
    return s


@njit(cache=True)
def dequantize_q6_K_numba(w, y):
    """``quants.dequantize_q6_K`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 256):
        for half in range(2):
            ql, qh, sc, d = _q6_K_half(w, b, half)
            yh = y[256 * b + 128 * half:256 * b + 128 * half + 128]  # this half's 128 values
            for l in range(32):
                k = sc + l // 16
                q1, q2, q3, q4 = _q6_K_quad(w, ql, qh, l)
                yh[l] = (d * _fq(_i8(w[k]))) * q1
                yh[l + 32] = (d * _fq(_i8(w[k + 2]))) * q2
                yh[l + 64] = (d * _fq(_i8(w[k + 4]))) * q3
                yh[l + 96] = (d * _fq(_i8(w[k + 6]))) * q4


# -- Q2_K: scales[16] | qs[64] | d (f16) | dmin (f16); 16 sub-blocks of 16 ------------------
# Value 128c + 32j + l is bits 2j..2j+1 of qs[32c + l]; sub-block k = value // 16 has
# scale (d * (scales[k] & 15)) and min (dmin * (scales[k] >> 4)): x = dl*q - ml.
# Sub-block k (values 16k .. 16k+15) is c = k // 8, j = (k // 2) % 4, l in 16*(k % 2) + 0..15.

@njit(cache=True, inline="always")
def _q2_K_sub(w, b, d, dmin, k):
    """Sub-block ``k`` of the Q2_K block ``b`` (its d and dmin decoded): (offset of its 16 quant
    bytes, the shift of its 2 bits in them, dl, ml)."""
    o = 84 * b
    sc = w[o + k]
    dl = d * _fq(sc & 0xF)
    ml = dmin * _fq(sc >> 4)
    return o + 16 + 32 * (k >> 3) + 16 * (k & 1), 2 * ((k >> 1) & 3), dl, ml


@njit(cache=True, fastmath=FASTMATH)
def matmul_q2_K_numba(w, x):
    """One output element of ``quants.matmul_q2_K``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    s = np.float32(0.0)
    for b in range(x.size // 256):
        d, dmin = _f16_pair(w, 84 * b + 80)
        for cj in range(8):
            for h in range(2):  # the two sub-blocks of 16 that share a shift: as two nested loops,
                # not one loop over k, this dot measured ~1.45x faster
                qs, sh, dl, ml = _q2_K_sub(w, b, d, dmin, 2 * cj + h)
                xv = 256 * b + 32 * cj + 16 * h
                sq = np.float32(0.0)
                sx = np.float32(0.0)
                for l in range(16):
                    xl = x[xv + l]
                    sq += _fq((w[qs + l] >> sh) & 3) * xl
                    sx += xl
                s += dl * sq - ml * sx
    return s


@njit(cache=True)
def dequantize_q2_K_numba(w, y):
    """``quants.dequantize_q2_K`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 256):
        d, dmin = _f16_pair(w, 84 * b + 80)
        for k in range(16):
            qs, sh, dl, ml = _q2_K_sub(w, b, d, dmin, k)
            for l in range(16):
                y[256 * b + 16 * k + l] = dl * _fq((w[qs + l] >> sh) & 3) - ml


# -- Q3_K: hmask[32] | qs[64] | scales[12] | d (f16); 16 sub-blocks of 16 -------------------
# Low 2 bits as Q2_K; bit 4c+j of hmask[l] is the 3rd bit of value 128c + 32j + l;
# x = (d * sc[k]) * (q - 4) with sc[k] the signed 6-bit scale of _scale_q3_k.

@njit(cache=True, inline="always")
def _scale_q3_k(raw, o, k):
    """Signed scale of sub-block ``k``: low nibble of byte k (k < 8) or high nibble of byte k-8,
    top 2 bits from byte 8 + k%4 at bit 2*(k//4); minus 32."""
    if k < 8:
        lo = np.int32(raw[o + k]) & 0xF
    else:
        lo = np.int32(raw[o + k - 8]) >> 4
    hi = (np.int32(raw[o + 8 + (k & 3)]) >> (2 * (k >> 2))) & 3
    return np.float32((lo | (hi << 4)) - 32)


@njit(cache=True, inline="always")
def _q3_K_q(w, b, k, l):
    """Value ``l`` (0..15) of sub-block ``k`` of the Q3_K block ``b``, before its scale: q - 4."""
    o = 110 * b
    c = k >> 3
    j = (k >> 1) & 3
    i = 16 * (k & 1) + l  # the byte of qs (in its 32) and of hmask
    lo = (w[o + 32 + 32 * c + i] >> (2 * j)) & 3
    hb = (w[o + i] >> (4 * c + j)) & 1
    return _fq(lo + 4 * hb - 4)


@njit(cache=True, fastmath=FASTMATH)
def matmul_q3_K_numba(w, x):
    """One output element of ``quants.matmul_q3_K``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    s = np.float32(0.0)
    for b in range(x.size // 256):
        d = _f16(w, 110 * b + 108)
        for k in range(16):
            xv = 256 * b + 16 * k
            sq = np.float32(0.0)
            for l in range(16):
                sq += _q3_K_q(w, b, k, l) * x[xv + l]
            s += (d * _scale_q3_k(w, 110 * b + 96, k)) * sq
    return s


@njit(cache=True)
def dequantize_q3_K_numba(w, y):
    """``quants.dequantize_q3_K`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 256):
        d = _f16(w, 110 * b + 108)
        for k in range(16):
            dl = d * _scale_q3_k(w, 110 * b + 96, k)
            for l in range(16):
                y[256 * b + 16 * k + l] = dl * _q3_K_q(w, b, k, l)


# -- IQ4_NL: d (f16) | qs[16]; IQ4_XS: d | scales_h (u16) | scales_l[4] | qs[128] -----------
# A nibble indexes the 16 levels _IQ4 (nibbles laid out as Q4_0); IQ4_XS has 8 sub-blocks
# of 32, each with a signed 6-bit scale: x = (d * sc[j]) * level.

_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


@njit(cache=True, inline="always")
def _iq4_pair(w, i):
    """The levels indexed by the low and high nibble of byte ``w[i]``."""
    q = w[i]
    return _IQ4[q & 0xF], _IQ4[q >> 4]


@njit(cache=True, fastmath=FASTMATH)
def matmul_iq4_nl_numba(w, x):
    """One output element of ``quants.matmul_iq4_nl``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    acc = np.zeros(16, dtype=np.float32)
    for b in range(x.size // 32):
        qs, d = _block_d(w, b, 18)
        for j in range(16):
            q0, q1 = _iq4_pair(w, qs + j)
            acc[j] += d * (q0 * x[32 * b + j] + q1 * x[32 * b + j + 16])
    return acc.sum()


@njit(cache=True)
def dequantize_iq4_nl_numba(w, y):
    """``quants.dequantize_iq4_nl`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 32):
        qs, d = _block_d(w, b, 18)
        for j in range(16):
            q0, q1 = _iq4_pair(w, qs + j)
            y[32 * b + j] = d * q0
            y[32 * b + j + 16] = d * q1


@njit(cache=True, inline="always")
def _iq4_xs_sub(w, b, j):
    """Sub-block ``j`` of the IQ4_XS block ``b``: (offset of its 16 nibble bytes, d * its signed scale)."""
    o = 136 * b
    lo = (np.int32(w[o + 4 + (j >> 1)]) >> (4 * (j & 1))) & 0xF
    h = np.int32(w[o + 2]) | (np.int32(w[o + 3]) << 8)
    return o + 8 + 16 * j, _f16(w, o) * np.float32((lo | (((h >> (2 * j)) & 3) << 4)) - 32)


@njit(cache=True, fastmath=FASTMATH)
def matmul_iq4_xs_numba(w, x):
    """One output element of ``quants.matmul_iq4_xs``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    s = np.float32(0.0)
    for b in range(x.size // 256):
        for j in range(8):
            qs, dl = _iq4_xs_sub(w, b, j)
            xj = 256 * b + 32 * j
            sq = np.float32(0.0)
            for i in range(16):
                q0, q1 = _iq4_pair(w, qs + i)
                sq += q0 * x[xj + i] + q1 * x[xj + 16 + i]
            s += dl * sq
    return s


@njit(cache=True)
def dequantize_iq4_xs_numba(w, y):
    """``quants.dequantize_iq4_xs`` of the row ``w`` (its bytes), written into ``y``."""
    for b in range(y.size // 256):
        for j in range(8):
            qs, dl = _iq4_xs_sub(w, b, j)
            for i in range(16):
                q0, q1 = _iq4_pair(w, qs + i)
                y[256 * b + 32 * j + i] = dl * q0
                y[256 * b + 32 * j + 16 + i] = dl * q1


# -- F32 / F16 / BF16 rows (exact) -------------------------------------------------------

@njit(cache=True, fastmath=FASTMATH)
def matmul_f32_numba(w, x):
    """One output element of ``quants.matmul_f32``: the row ``w`` (its bytes) dotted
    with ``x``, the activations as that matmul decodes them."""
    wf = w.view(np.float32)
    s = np.float32(0.0)
    for j in range(x.size):
        s += wf[j] * x[j]
    return s


@njit(cache=True)
def _dequantize_float(kind, w, y):
    if kind == K_F32:
        y[:] = w.view(np.float32)
    elif kind == K_BF16:  # the top half of a float32
        bits = y.view(np.uint32)
        h16 = w.view(np.uint16)
        for j in range(y.size):
            bits[j] = np.uint32(np.int64(h16[j]) << 16)
    else:
        dequantize_f16_numba(w, y)


@njit(cache=True)
def dequantize_f16_numba(w, y):
    """IEEE half -> float32, exact, in two branch-free (vectorisable) passes over bit patterns."""
    bits = y.view(np.uint32)
    h16 = w.view(np.uint16)
    for j in range(y.size):
        h = np.int64(h16[j])
        o = (h & 0x7FFF) << 13  # exponent and mantissa moved to their float32 places
        e = o & 0x0F800000  # the half's exponent field
        o += 112 << 23  # rebias the exponent: 15 -> 127
        o = o + (112 << 23) if e == 0x0F800000 else o  # inf / nan: exponent 255
        o = o + (1 << 23) if e == 0 else o  # zero / subnormal: (1 + m/1024) * 2^-14, fixed below
        sign = 0 if e == 0 else (h & 0x8000) << 16
        bits[j] = np.uint32(o | sign)
    for j in range(y.size):
        h = h16[j]
        if (h & 0x7C00) == 0:  # zero / subnormal: (1 + m/1024) * 2^-14 - 2^-14 = m * 2^-24, exact
            v = y[j] - _POW2[11]
            y[j] = -v if h & 0x8000 else v


# -- dispatch on the type (inlined into the kernels, so it is not compiled on its own) --

@njit(cache=True, inline="always")
def _vec_dot(kind, w, x):
    """``matmul_<type>_numba`` for ``kind`` (F16 / BF16 go through _dequantize_row instead)."""
    if kind == K_F32:
        return matmul_f32_numba(w, x)
    if kind == K_Q4_0:
        return matmul_q4_0_numba(w, x)
    if kind == K_Q4_1:
        return matmul_q4_1_numba(w, x)
    if kind == K_Q5_0:
        return matmul_q5_0_numba(w, x)
    if kind == K_Q5_1:
        return matmul_q5_1_numba(w, x)
    if kind == K_Q8_0:
        return matmul_q8_0_numba(w, x)
    if kind == K_Q4_K:
        return matmul_q4_K_numba(w, x)
    if kind == K_Q5_K:
        return matmul_q5_K_numba(w, x)
    if kind == K_Q6_K:
        return matmul_q6_K_numba(w, x)
    if kind == K_Q2_K:
        return matmul_q2_K_numba(w, x)
    if kind == K_Q3_K:
        return matmul_q3_K_numba(w, x)
    if kind == K_IQ4_NL:
        return matmul_iq4_nl_numba(w, x)
    return matmul_iq4_xs_numba(w, x)


@njit(cache=True, inline="always")
def _dequantize_row(kind, w, y):
    if kind <= K_BF16:
        _dequantize_float(kind, w, y)
    elif kind == K_Q4_0:
        dequantize_q4_0_numba(w, y)
    elif kind == K_Q4_1:
        dequantize_q4_1_numba(w, y)
    elif kind == K_Q5_0:
        dequantize_q5_0_numba(w, y)
    elif kind == K_Q5_1:
        dequantize_q5_1_numba(w, y)
    elif kind == K_Q8_0:
        dequantize_q8_0_numba(w, y)
    elif kind == K_Q4_K:
        dequantize_q4_K_numba(w, y)
    elif kind == K_Q5_K:
        dequantize_q5_K_numba(w, y)
    elif kind == K_Q6_K:
        dequantize_q6_K_numba(w, y)
    elif kind == K_Q2_K:
        dequantize_q2_K_numba(w, y)
    elif kind == K_Q3_K:
        dequantize_q3_K_numba(w, y)
    elif kind == K_IQ4_NL:
        dequantize_iq4_nl_numba(w, y)
    else:
        dequantize_iq4_xs_numba(w, y)


# -- matmul and row gather -----------------------------------------------------------------

@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _matmul_kernel(kind, raw, rows, cols, row_bytes, x, n, out):
    """out[t*rows + r] = <row r of W, x[t*cols : (t+1)*cols]> (x and out flat float32)."""
    n_chunks = (rows + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    direct = (kind == K_F32 or kind > K_BF16) and n < _DEQUANT_MIN_TOKENS
    for c in prange(n_chunks):
        r0 = c * _ROWS_PER_CHUNK
        r1 = min(rows, r0 + _ROWS_PER_CHUNK)
        if direct:  # unpack the row's blocks for every token (its bytes stay in L1)
            for r in range(r0, r1):
                w = raw[r * row_bytes:(r + 1) * row_bytes]
                for t in range(n):
                    out[t * rows + r] = _vec_dot(kind, w, x[t * cols:(t + 1) * cols])
        else:  # dequantize each row once, then plain float32 dots
            wf = np.empty(cols, dtype=np.float32)
            for r in range(r0, r1):
                _dequantize_row(kind, raw[r * row_bytes:(r + 1) * row_bytes], wf)
                for t in range(n):
                    xt = x[t * cols:(t + 1) * cols]
                    s = np.float32(0.0)
                    for j in range(cols):
                        s += wf[j] * xt[j]
                    out[t * rows + r] = s


@njit(cache=True)
def _get_rows_kernel(kind, raw, cols, row_bytes, ids, out):
    """out[i*cols : (i+1)*cols] = row ids[i], dequantized (a few rows: no threads needed)."""
    for i in range(ids.shape[0]):
        r = ids[i]
        _dequantize_row(kind, raw[r * row_bytes:(r + 1) * row_bytes], out[i * cols:(i + 1) * cols])


def weight_bytes(raw) -> np.ndarray:
    """``raw`` as a read-only C-contiguous 1-D uint8 array: mmaps, arrays and bytes all
    get the same numba type, so each kernel is compiled once."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        a = np.frombuffer(raw, dtype=np.uint8)
    else:
        a = np.asarray(raw)
        if a.dtype != np.uint8:
            a = np.ascontiguousarray(a).view(np.uint8)
        a = np.ascontiguousarray(a.reshape(-1))
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _geometry(type_name: str, shape, raw: np.ndarray) -> tuple[int, int, int, int]:
    """(kind, rows, cols, bytes per row) of a weight (1-D shapes are one row)."""
    name = type_name.upper()
    if name not in KIND_OF:
        raise NotImplementedError(f"numba backend: no kernel for GGML type {type_name} (have {', '.join(KINDS)})")
    shape = tuple(int(s) for s in shape)
    rows, cols = (1, shape[0]) if len(shape) == 1 else (int(np.prod(shape[:-1])), shape[-1])
    row_bytes = ggml_type(name).n_bytes(cols)
    if raw.size < rows * row_bytes:
        raise ValueError(f"{name} {shape}: needs {rows * row_bytes} bytes, got {raw.size}")
    return KIND_OF[name], rows, cols, row_bytes


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def matmul(type_name: str, raw, shape, x, quantize_activations: bool = True) -> np.ndarray:
    """``x (n, cols) @ W.T`` for ``W (rows, cols)`` stored as GGUF ``type_name`` bytes -> float32 ``(n, rows)``.

    The port of :func:`pyengine.quants.matmul`: the activations go through the spec's own
    :func:`pyengine.quants.matmul_activations` (int8 per 32 or 256 values and back, for a quantized
    type), then each output element is ``matmul_<type>_numba`` of one row with one token.
    ``quantize_activations=False`` multiplies by ``x`` as it is (the exact float product).
    """
    raw = weight_bytes(raw)
    kind, rows, cols, row_bytes = _geometry(type_name, shape, raw)
    x = _f32(x)
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"matmul: x has shape {x.shape}, expected (n, {cols})")
    xq = _f32(quants.matmul_activations(KINDS[kind], x)) if quantize_activations else x  # (n, cols) multiplied by
    n = x.shape[0]
    out = np.empty(n * rows, dtype=np.float32)
    if n and rows and cols:
        _matmul_kernel(kind, raw, rows, cols, row_bytes, xq.reshape(-1), n, out)
    else:
        out[:] = 0.0
    out = out.reshape(n, rows)
    return quants.nan_rows_of_non_finite_tokens(KINDS[kind], x, out) if quantize_activations else out


def get_rows(type_name: str, raw, shape, ids) -> np.ndarray:
    """Rows ``ids`` of ``W (rows, cols)`` (an embedding table) as float32 ``(len(ids), cols)``."""
    raw = weight_bytes(raw)
    kind, rows, cols, row_bytes = _geometry(type_name, shape, raw)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise IndexError(f"get_rows: row id out of range [0, {rows})")
    out = np.empty(ids.size * cols, dtype=np.float32)
    if ids.size and cols:
        _get_rows_kernel(kind, raw, cols, row_bytes, ids, out)
    return out.reshape(ids.size, cols)


def dequantize(type_name: str, raw, n_elements: int) -> np.ndarray:
    """All ``n_elements`` values as a flat float32 array (small tensors: norm weights)."""
    return get_rows(type_name, raw, (1, n_elements), np.zeros(1, dtype=np.int64)).reshape(-1)


# -- transformer ops -------------------------------------------------------------------------
# Activations are C-contiguous float32; kernels take them flattened to 1-D.

@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _rmsnorm_kernel(x, g, eps, out):
    """Each run of ``len(g)`` values of ``x``: ``v / sqrt(mean(v^2) + eps) * g``."""
    gs = g.size
    for k in prange(x.size // gs):
        v = x[k * gs:(k + 1) * gs]
        y = out[k * gs:(k + 1) * gs]
        ss = 0.0  # float64: the mean of squares is accurate regardless of the group size
        for j in range(gs):
            ss += np.float64(v[j]) * np.float64(v[j])
        rms = np.sqrt(np.float32(ss / gs) + eps)
        for j in range(gs):
            y[j] = v[j] / rms * g[j]


@njit(parallel=True, cache=True)
def _rope_kernel(x, positions, n_heads, head_dim, inv_freq, neox, freq_scale, ext_factor, lo, hi, mscale, out):
    """Rotate pairs of the first ``2*len(inv_freq)`` dims of every head in place in ``out``
    (a copy of ``x``). NORM pairs (2i, 2i+1), NEOX pairs (i, i + n_rot/2).

    Scaling (base.RopeScaling; the identity is freq_scale 1, ext_factor 0, mscale 1):
    ``inv_freq`` already holds the frequency factors; the angle is ``freq_scale * extrap``,
    mixed with ``extrap`` on YaRN's ramp between pair indices lo and hi."""
    half = inv_freq.size
    width = n_heads * head_dim
    for t in prange(positions.size):
        for i in range(half):
            extrap = np.float64(positions[t]) * inv_freq[i]  # float64 angle, as the reference
            theta = freq_scale * extrap
            if ext_factor != 0.0:
                y = (i - lo) / max(0.001, hi - lo)
                ramp = (1.0 - min(1.0, max(0.0, y))) * ext_factor
                theta = theta * (1.0 - ramp) + extrap * ramp
            c = np.float32(np.cos(theta) * mscale)
            s = np.float32(np.sin(theta) * mscale)
            for h in range(n_heads):
                base = t * width + h * head_dim
                if neox:
                    ia = base + i
                    ib = base + i + half
                else:
                    ia = base + 2 * i
                    ib = base + 2 * i + 1
                a = x[ia]
                b = x[ib]
                out[ia] = a * c - b * s
                out[ib] = a * s + b * c


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_kernel(q, k, v, pos0, n, n_heads, n_kv_heads, head_dim, kv_width, scale, window, softcap, out):
    """Causal (optionally sliding-window) grouped-query attention, one (token, head) per task.

    q, out: (n, n_heads*head_dim) flat; k, v: (n_ctx, kv_width) flat caches holding
    positions 0 .. pos0+n-1. Query at position p sees keys j <= p with p - j < window
    (window > 0). Scores ``scale * q.k`` (then ``softcap * tanh(score / softcap)`` when
    softcap > 0) and the softmax are float32, as the reference.
    """
    group = n_heads // n_kv_heads
    q_width = n_heads * head_dim
    for task in prange(n * n_heads):
        t = task // n_heads
        h = task % n_heads
        p = pos0 + t
        j0 = max(0, p - window + 1) if window > 0 else 0
        qv = q[t * q_width + h * head_dim:t * q_width + (h + 1) * head_dim]
        kv_off = (h // group) * head_dim
        scores = np.empty(p + 1 - j0, dtype=np.float32)
        mx = np.float32(-np.inf)
        for j in range(j0, p + 1):
            kj = k[j * kv_width + kv_off:j * kv_width + kv_off + head_dim]
            s = np.float32(0.0)
            for e in range(head_dim):
                s += qv[e] * kj[e]
            s = s * scale
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            scores[j - j0] = s
            mx = max(mx, s)
        total = np.float32(0.0)
        for i in range(scores.size):
            scores[i] = np.exp(scores[i] - mx)
            total += scores[i]
        o = out[t * q_width + h * head_dim:t * q_width + (h + 1) * head_dim]
        o[:] = 0.0
        for j in range(j0, p + 1):
            pj = scores[j - j0] / total
            vj = v[j * kv_width + kv_off:j * kv_width + kv_off + head_dim]
            for e in range(head_dim):
                o[e] += pj * vj[e]


@njit(parallel=True, cache=True)
def _softcap_kernel(x, cap, out):
    for i in prange(x.size):
        out[i] = cap * np.tanh(x[i] / cap)


@njit(parallel=True, cache=True)
def _silu_mul_kernel(gate, up, out):
    one = np.float32(1.0)
    for i in prange(gate.size):
        g = gate[i]
        out[i] = g / (one + np.exp(-g)) * up[i]


@njit(parallel=True, cache=True)
def _gelu_mul_kernel(gate, up, out):
    # GELU, tanh approximation, in float32 as the spec writes it (numpy_backend.gelu_tanh):
    # 0.5 x (1 + tanh(y)) = x / (1 + exp(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3)
    one = np.float32(1.0)
    c = np.float32(-2.0 * 0.7978845608028654)
    a = np.float32(0.044715)
    for i in prange(gate.size):
        x = gate[i]
        out[i] = x / (one + np.exp(c * (x + a * x * x * x))) * up[i]


def rmsnorm(x, g, eps: float) -> np.ndarray:
    """RMS-normalise every group of ``len(g)`` values of ``x (n, k*len(g))`` and scale by ``g``."""
    x = _f32(x)
    g = _f32(g).reshape(-1)
    if x.shape[-1] % g.size:
        raise ValueError(f"rmsnorm: width {x.shape[-1]} is not a multiple of the weight length {g.size}")
    out = np.empty_like(x)
    _rmsnorm_kernel(x.reshape(-1), g, np.float32(eps), out.reshape(-1))
    return out


def rope(x, positions, n_heads: int, head_dim: int, freq_base: float, neox: bool,
         n_rot: int | None = None, scaling=None) -> np.ndarray:
    """Rotary embedding of ``x (n, n_heads*head_dim)`` at ``positions (n,)`` (see Backend.rope;
    ``scaling``: a base.RopeScaling or None)."""
    n_rot = head_dim if n_rot is None else int(n_rot)
    if n_rot % 2 or not 0 < n_rot <= head_dim:
        raise ValueError(f"rope: n_rot={n_rot} must be even and in (0, {head_dim}]")
    x = _f32(x)
    positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
    if x.shape != (positions.size, n_heads * head_dim):
        raise ValueError(f"rope: x has shape {x.shape}, expected ({positions.size}, {n_heads * head_dim})")
    # theta_i = pos * base^(-2i/n_rot), the exponent computed exactly as the reference does
    inv_freq = float(freq_base) ** (-np.arange(n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
    fs, ext, lo, hi, mscale = 1.0, 0.0, 0.0, 0.0, 1.0
    if scaling is not None and not scaling.is_identity:
        if scaling.freq_factors is not None:
            ff = np.asarray(scaling.freq_factors, dtype=np.float32).reshape(-1)
            if ff.size != n_rot // 2:
                raise ValueError(f"rope: {ff.size} frequency factors for n_rot {n_rot}")
            inv_freq = inv_freq / ff.astype(np.float64)
        fs, ext, mscale = float(scaling.freq_scale), float(scaling.ext_factor), float(scaling.attn_factor)
        if ext != 0.0:
            lo, hi = scaling.corr_dims(n_rot, float(freq_base))
            mscale *= 1.0 + 0.1 * np.log(1.0 / fs)
    out = x.copy()
    _rope_kernel(x.reshape(-1), positions, int(n_heads), int(head_dim), inv_freq, bool(neox), fs, ext,
                 float(lo), float(hi), float(mscale), out.reshape(-1))
    return out


def attention(q, k_cache, v_cache, pos0: int, n_heads: int, n_kv_heads: int, head_dim: int,
              scale: float, window: int = 0, softcap: float = 0.0) -> np.ndarray:
    """Causal attention of ``q (n, H*hd)`` at positions ``pos0..pos0+n-1`` over the caches
    ``k_cache, v_cache (n_ctx, Hkv*hd)`` (positions ``0..pos0+n-1`` filled)."""
    q = _f32(q)
    k_cache = _f32(k_cache)
    v_cache = _f32(v_cache)
    n = q.shape[0]
    if n_heads % n_kv_heads or q.shape[1] != n_heads * head_dim or k_cache.shape[1] != n_kv_heads * head_dim:
        raise ValueError("attention: head layout does not match q / cache widths")
    if pos0 + n > k_cache.shape[0]:
        raise ValueError(f"attention: positions up to {pos0 + n} exceed the cache ({k_cache.shape[0]})")
    out = np.empty_like(q)
    if n:
        _attention_kernel(q.reshape(-1), k_cache.reshape(-1), v_cache.reshape(-1), int(pos0), n, int(n_heads),
                          int(n_kv_heads), int(head_dim), k_cache.shape[1], np.float32(scale), int(window),
                          np.float32(softcap), out.reshape(-1))
    return out


def softcap(x, cap: float) -> np.ndarray:
    """``cap * tanh(x / cap)``."""
    x = _f32(x)
    out = np.empty_like(x)
    _softcap_kernel(x.reshape(-1), np.float32(cap), out.reshape(-1))
    return out


def _same_shape(gate, up):
    gate, up = _f32(gate), _f32(up)
    if gate.shape != up.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} differ in shape")
    return gate, up


def silu_mul(gate, up) -> np.ndarray:
    """SwiGLU: ``silu(gate) * up``."""
    gate, up = _same_shape(gate, up)
    out = np.empty_like(gate)
    _silu_mul_kernel(gate.reshape(-1), up.reshape(-1), out.reshape(-1))
    return out


def gelu_mul(gate, up) -> np.ndarray:
    """GeGLU: ``gelu_tanh(gate) * up``."""
    gate, up = _same_shape(gate, up)
    out = np.empty_like(gate)
    _gelu_mul_kernel(gate.reshape(-1), up.reshape(-1), out.reshape(-1))
    return out


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel now, on tiny inputs, so the first
    real call does not pay for it. One call covers all weight types: the kernels take the
    type as an argument."""
    rng = np.random.default_rng(0)
    raw = np.zeros(ggml_type("Q8_0").n_bytes(64), dtype=np.uint8)
    matmul("Q8_0", raw, (2, 32), np.zeros((1, 32), dtype=np.float32))
    get_rows("Q8_0", raw, (2, 32), [1])
    x = rng.standard_normal((2, 8)).astype(np.float32)
    rmsnorm(x, np.ones(4, dtype=np.float32), 1e-6)
    rope(x, np.arange(2), 2, 4, 10000.0, False)
    silu_mul(x, x)
    gelu_mul(x, x)
    softcap(x, 5.0)
    attention(x, x[:, :4], x[:, :4], 0, 2, 1, 4, 0.5)
