"""GGML quantization formats in NumPy: the readable reference every native kernel is tested against.

A quantized GGUF weight is a sequence of fixed-size *blocks*. Each block encodes
``block_size`` consecutive values (32 for the classic formats, 256 for the
"K-quants") in ``type_size`` bytes: a few scale fields (usually fp16) plus packed
small integers. This module spells every block out twice:

* as a NumPy structured dtype (:data:`BLOCK_DTYPES`), so ``raw.view(BLOCK_DTYPES["Q4_K"])``
  turns the bytes of a tensor into an array of blocks with named fields;
* as one ``dequantize_<type>(blocks)`` function per type whose docstring gives the
  layout byte by byte and the formula, vectorised over all blocks at once.

:func:`dequantize` is the entry point the engine uses (bytes in, float32 out);
:func:`matmul` (and ``matmul_<type>``, e.g. :func:`matmul_q4_K`) is the spec of the matmul
every tier computes: activations quantized to int8 per block of the weight type (32 values,
or 256 for the K-quants and IQ4_XS: :func:`act_block`) exactly as the native kernels do it
(:func:`quantize_act_q8`) and decoded, weights dequantized, then the float product.
:func:`quantize_q8_0`, :func:`quantize_q8_1` and :func:`quantize_q8_K` produce ggml's 8-bit
activation formats, rounding exactly as ggml's reference C code does;
random but valid blocks for tests: ``pyengine.testing.blocks``.

Names spell the type as ggml does in identifiers (``GGMLType.ident``): ``dequantize_q4_K``,
``matmul_iq4_xs``.

Conventions: everything is little-endian; "fp16" is IEEE binary16; ``q`` is the
stored small integer; ``x`` the decoded float32 value. Products are evaluated in
float32 in the order the formulas are written (``d*sc*q`` means ``(d*sc)*q``),
which is also ggml's scalar order, so results are bit-exact with
``gguf.quants``. A compiled kernel that fuses multiply-adds may differ in the
last bit; compare such kernels within float32 rounding, not bit for bit.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import PyEngineError
from .ggml_types import BY_NAME, INTERNAL, LOAD_FORMS, PANEL_FORMS, SUPPORTED, GGMLType

QK = 32  # values per block of the classic formats (Q4_0 .. Q8_1)
QK_K = 256  # values per super-block of the K-quants


class QuantError(PyEngineError, ValueError):
    """Bad input to this module: unknown type, wrong byte count, wrong element count."""


# ---------------------------------------------------------------------------------
# Block layouts. Field order and sizes are the on-disk byte order; no padding.
# ---------------------------------------------------------------------------------
_F16 = "<f2"
BLOCK_DTYPES: dict[str, np.dtype] = {
    # d | 16 bytes of nibbles
    "Q4_0": np.dtype([("d", _F16), ("qs", "u1", (16,))]),
    # d | m | 16 bytes of nibbles
    "Q4_1": np.dtype([("d", _F16), ("m", _F16), ("qs", "u1", (16,))]),
    # d | 32-bit mask of 5th bits | 16 bytes of nibbles
    "Q5_0": np.dtype([("d", _F16), ("qh", "<u4"), ("qs", "u1", (16,))]),
    # d | m | 32-bit mask of 5th bits | 16 bytes of nibbles
    "Q5_1": np.dtype([("d", _F16), ("m", _F16), ("qh", "<u4"), ("qs", "u1", (16,))]),
    # d | 32 signed bytes
    "Q8_0": np.dtype([("d", _F16), ("qs", "i1", (32,))]),
    # d | s = d * sum(qs) | 32 signed bytes
    "Q8_1": np.dtype([("d", _F16), ("s", _F16), ("qs", "i1", (32,))]),
    # d | dmin | 12 bytes of packed 6-bit scales and mins | 128 bytes of nibbles
    "Q4_K": np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", (12,)), ("qs", "u1", (128,))]),
    # d | dmin | 12 bytes of packed scales and mins | 32 bytes of 5th bits | 128 bytes of nibbles
    "Q5_K": np.dtype([("d", _F16), ("dmin", _F16), ("scales", "u1", (12,)), ("qh", "u1", (32,)),
                      ("qs", "u1", (128,))]),
    # 128 bytes of low nibbles | 64 bytes of 2-bit high parts | 16 int8 scales | d
    "Q6_K": np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", _F16)]),
    # 16 bytes of 4-bit scale | 4-bit min | 64 bytes of 2-bit quants | d | dmin
    "Q2_K": np.dtype([("scales", "u1", (16,)), ("qs", "u1", (64,)), ("d", _F16), ("dmin", _F16)]),
    # 32 bytes of 3rd bits | 64 bytes of 2-bit quants | 12 bytes of packed 6-bit scales | d
    "Q3_K": np.dtype([("hmask", "u1", (32,)), ("qs", "u1", (64,)), ("scales", "u1", (12,)), ("d", _F16)]),
    # d | 16 bytes of 4-bit indices into the non-linear table IQ4_VALUES
    "IQ4_NL": np.dtype([("d", _F16), ("qs", "u1", (16,))]),
    # d | 16 top-2-bit scale pairs | 4 bytes of low scale nibbles | 128 bytes of 4-bit indices
    "IQ4_XS": np.dtype([("d", _F16), ("scales_h", "<u2"), ("scales_l", "u1", (4,)), ("qs", "u1", (128,))]),
    # d (float32!) | 256 signed bytes | 16 int16 sums of groups of 16 qs
    "Q8_K": np.dtype([("d", "<f4"), ("qs", "i1", (256,)), ("bsums", "<i2", (16,))]),
}

# The plain float "formats": one value per "block".
_FLOAT_DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}

for _name, _dt in {**BLOCK_DTYPES, **_FLOAT_DTYPES}.items():
    _t = BY_NAME[_name]
    assert _dt.itemsize == _t.type_size, f"{_name}: block dtype is {_dt.itemsize} bytes, GGUF says {_t.type_size}"
    assert _name not in BLOCK_DTYPES or _t.block_size in (QK, QK_K), _name
del _name, _dt, _t


def _as_blocks(type_name: str, blocks) -> np.ndarray:
    """Accept structured blocks, or raw uint8 (any shape, C-contiguous) of whole blocks."""
    dt = BLOCK_DTYPES[type_name]
    if isinstance(blocks, np.ndarray) and blocks.dtype == dt:
        return blocks.reshape(-1)
    return _raw_u8(blocks).view(dt)


def _raw_u8(raw) -> np.ndarray:
    """``raw`` as a flat uint8 array, copying only if it is not contiguous."""
    if isinstance(raw, np.ndarray):
        a = raw if raw.flags.c_contiguous else np.ascontiguousarray(raw)
        return a.reshape(-1).view(np.uint8)
    return np.frombuffer(raw, dtype=np.uint8)


def _out(out: np.ndarray | None, n_blocks: int, block_size: int) -> np.ndarray:
    if out is None:
        return np.empty((n_blocks, block_size), dtype=np.float32)
    return out.reshape(n_blocks, block_size)


# ---------------------------------------------------------------------------------
# Float types
# ---------------------------------------------------------------------------------
def dequantize_f32(raw) -> np.ndarray:
    """F32: 4 bytes per value, IEEE binary32. Returned as a read-through view (no copy)."""
    return _raw_u8(raw).view("<f4")


def dequantize_f16(raw) -> np.ndarray:
    """F16: 2 bytes per value, IEEE binary16; widened exactly to float32."""
    return _raw_u8(raw).view(_F16).astype(np.float32)


def dequantize_bf16(raw) -> np.ndarray:
    """BF16: 2 bytes per value, the top 16 bits of a float32: ``x = bits << 16`` reinterpreted."""
    bits = _raw_u8(raw).view("<u2").astype(np.uint32)
    bits <<= 16
    return bits.view(np.float32)


# ---------------------------------------------------------------------------------
# Classic 32-value blocks
# ---------------------------------------------------------------------------------
def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: byte j holds value j (low nibble) and value j+16 (high nibble)."""
    n = qs.shape[0]
    q = np.empty((n, 2, 16), dtype=np.uint8)
    np.bitwise_and(qs, 0x0F, out=q[:, 0])
    np.right_shift(qs, 4, out=q[:, 1])
    return q.reshape(n, 32)


def _high_bits_32(qh: np.ndarray) -> np.ndarray:
    """32-bit little-endian mask -> (n, 32) uint8 holding 16 where bit j is set (the 5th bit of value j)."""
    shifts = np.arange(32, dtype=np.uint32)
    return (((qh[:, None] >> shifts) & 1) << 4).astype(np.uint8)


def dequantize_q4_0(blocks, out=None) -> np.ndarray:
    """Q4_0: 32 values in 18 bytes, symmetric 4-bit.

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-17   qs     byte ``j`` (0..15): low nibble = q of value ``j``,
                  high nibble = q of value ``j + 16``
    ====== ====== =====================================================

    ``x = d * (q - 8)`` with ``q`` in 0..15, so ``x`` spans ``-8d .. 7d``.
    """
    b = _as_blocks("Q4_0", blocks)
    d = b["d"].astype(np.float32)[:, None]
    q = _nibbles_32(b["qs"]).view(np.int8)
    q -= 8
    return np.multiply(d, q, out=_out(out, len(b), 32))


def dequantize_q4_1(blocks, out=None) -> np.ndarray:
    """Q4_1: 32 values in 20 bytes, 4-bit with an offset.

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-3    m      fp16 offset (the block minimum)
    4-19   qs     nibbles as in Q4_0: byte ``j`` = values ``j`` (low), ``j+16`` (high)
    ====== ====== =====================================================

    ``x = d * q + m`` with ``q`` in 0..15.
    """
    b = _as_blocks("Q4_1", blocks)
    d = b["d"].astype(np.float32)[:, None]
    m = b["m"].astype(np.float32)[:, None]
    o = np.multiply(d, _nibbles_32(b["qs"]), out=_out(out, len(b), 32))
    o += m
    return o


def dequantize_q5_0(blocks, out=None) -> np.ndarray:
    """Q5_0: 32 values in 22 bytes, symmetric 5-bit.

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-5    qh     little-endian uint32; bit ``j`` is the 5th (value 16) bit of value ``j``
    6-21   qs     low 4 bits as in Q4_0: byte ``j`` = values ``j`` (low), ``j+16`` (high)
    ====== ====== =====================================================

    ``q = nibble | (bit << 4)`` in 0..31; ``x = d * (q - 16)``.
    """
    b = _as_blocks("Q5_0", blocks)
    d = b["d"].astype(np.float32)[:, None]
    q = _nibbles_32(b["qs"])
    q |= _high_bits_32(b["qh"])
    q = q.view(np.int8)
    q -= 16
    return np.multiply(d, q, out=_out(out, len(b), 32))


def dequantize_q5_1(blocks, out=None) -> np.ndarray:
    """Q5_1: 32 values in 24 bytes, 5-bit with an offset.

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-3    m      fp16 offset
    4-7    qh     little-endian uint32; bit ``j`` is the 5th bit of value ``j``
    8-23   qs     low 4 bits as in Q4_0
    ====== ====== =====================================================

    ``q = nibble | (bit << 4)`` in 0..31; ``x = d * q + m``.
    """
    b = _as_blocks("Q5_1", blocks)
    d = b["d"].astype(np.float32)[:, None]
    m = b["m"].astype(np.float32)[:, None]
    q = _nibbles_32(b["qs"])
    q |= _high_bits_32(b["qh"])
    o = np.multiply(d, q, out=_out(out, len(b), 32))
    o += m
    return o


def dequantize_q8_0(blocks, out=None) -> np.ndarray:
    """Q8_0: 32 values in 34 bytes, symmetric 8-bit.

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-33   qs     int8 ``q`` of values 0..31, in order
    ====== ====== =====================================================

    ``x = d * q``.
    """
    b = _as_blocks("Q8_0", blocks)
    d = b["d"].astype(np.float32)[:, None]
    return np.multiply(d, b["qs"], out=_out(out, len(b), 32))


def dequantize_q8_1(blocks, out=None) -> np.ndarray:
    """Q8_1: 32 values in 36 bytes; Q8_0 plus a precomputed sum (an activation format).

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-3    s      fp16 ``d * sum(q)`` (lets a kernel apply Q4_1/Q5_1 offsets cheaply)
    4-35   qs     int8 ``q`` of values 0..31
    ====== ====== =====================================================

    ``x = d * q`` (``s`` is redundant for decoding).
    """
    b = _as_blocks("Q8_1", blocks)
    d = b["d"].astype(np.float32)[:, None]
    return np.multiply(d, b["qs"], out=_out(out, len(b), 32))


# ---------------------------------------------------------------------------------
# K-quants: 256-value super-blocks
# ---------------------------------------------------------------------------------
def unpack_scales_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of Q4_K/Q5_K -> (sc, m), each (n, 8) uint8 in 0..63.

    Eight 6-bit scales ``sc[0..7]`` and eight 6-bit mins ``m[0..7]`` share 96 bits.
    With ``b`` the 12 bytes:

    * sub-blocks 0..3: ``sc[j] = b[j] & 63``, ``m[j] = b[j+4] & 63``;
    * sub-blocks 4..7: the low 4 bits sit in ``b[j+4]`` (scale low nibble, min high
      nibble) and the top 2 bits are the spare top bits of ``b[j-4]`` (scale) and
      ``b[j]`` (min): ``sc[j] = (b[j+4] & 15) | (b[j-4] >> 6) << 4``,
      ``m[j] = (b[j+4] >> 4) | (b[j] >> 6) << 4``.
    """
    b = scales.reshape(-1, 12)
    lo, mid, hi = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = np.empty((len(b), 8), dtype=np.uint8)
    m = np.empty((len(b), 8), dtype=np.uint8)
    sc[:, :4] = lo & 63
    m[:, :4] = mid & 63
    sc[:, 4:] = (hi & 15) | ((lo >> 6) << 4)
    m[:, 4:] = (hi >> 4) | ((mid >> 6) << 4)
    return sc, m


def _nibbles_k(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 256 values in 8 sub-blocks of 32: bytes ``32g .. 32g+31`` hold
    sub-block ``2g`` in their low nibbles and sub-block ``2g+1`` in their high nibbles."""
    n = qs.shape[0]
    g = qs.reshape(n, 4, 32)
    q = np.empty((n, 4, 2, 32), dtype=np.uint8)
    np.bitwise_and(g, 0x0F, out=q[:, :, 0])
    np.right_shift(g, 4, out=q[:, :, 1])
    return q.reshape(n, 8, 32)


def _scale_min_apply(b: np.ndarray, q: np.ndarray, out) -> np.ndarray:
    """``x = (d*sc[s]) * q - dmin*m[s]`` for q (n, 8, 32)."""
    n = len(b)
    sc, m = unpack_scales_k4(b["scales"])
    ds = b["d"].astype(np.float32)[:, None] * sc  # (n, 8) float32
    dm = b["dmin"].astype(np.float32)[:, None] * m
    o = _out(out, n, QK_K).reshape(n, 8, 32)
    np.multiply(ds[:, :, None], q, out=o)
    o -= dm[:, :, None]
    return o.reshape(n, QK_K)


def dequantize_q4_K(blocks, out=None) -> np.ndarray:
    """Q4_K: 256 values in 144 bytes; 8 sub-blocks of 32, each with its own 6-bit scale and min.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-1     d      fp16 super-scale for the sub-block scales
    2-3     dmin   fp16 super-scale for the sub-block mins
    4-15    scales 8 six-bit scales ``sc`` and 8 six-bit mins ``m``, packed
                   as described in :func:`unpack_scales_k4`
    16-143  qs     4-bit ``q``: 4 groups of 32 bytes; group ``g`` holds sub-block
                   ``2g`` in the low nibbles and ``2g+1`` in the high nibbles
    ======= ====== =====================================================

    For value ``l`` of sub-block ``s``: ``x = d*sc[s] * q - dmin*m[s]``.
    """
    b = _as_blocks("Q4_K", blocks)
    return _scale_min_apply(b, _nibbles_k(b["qs"]), out)


def dequantize_q5_K(blocks, out=None) -> np.ndarray:
    """Q5_K: 256 values in 176 bytes; Q4_K plus a 5th bit per value.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-1     d      fp16 super-scale for the sub-block scales
    2-3     dmin   fp16 super-scale for the sub-block mins
    4-15    scales packed 6-bit scales and mins (:func:`unpack_scales_k4`)
    16-47   qh     byte ``l`` (0..31), bit ``s``: the 5th bit of value ``l`` of sub-block ``s``
    48-175  qs     low 4 bits, laid out as Q4_K's ``qs``
    ======= ====== =====================================================

    ``q = nibble | (bit << 4)`` in 0..31; ``x = d*sc[s] * q - dmin*m[s]``.
    """
    b = _as_blocks("Q5_K", blocks)
    q = _nibbles_k(b["qs"])  # (n, 8, 32)
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    q |= ((b["qh"][:, None, :] >> shifts) & 1) << 4
    return _scale_min_apply(b, q, out)


def dequantize_q6_K(blocks, out=None) -> np.ndarray:
    """Q6_K: 256 values in 210 bytes; 16 sub-blocks of 16, each with an int8 scale.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-127   ql     low 4 bits of each value
    128-191 qh     high 2 bits of each value
    192-207 scales int8 scale ``sc[k]`` of values ``16k .. 16k+15``
    208-209 d      fp16 super-scale
    ======= ====== =====================================================

    The 256 values are two halves of 128; half ``h`` uses ``ql[64h : 64h+64]``
    and ``qh[32h : 32h+32]``. Within a half, for ``l`` in 0..31:

    * value ``l``      = ``ql[l]    & 15`` | bits 0-1 of ``qh[l]`` << 4
    * value ``l + 32`` = ``ql[l+32] & 15`` | bits 2-3 of ``qh[l]`` << 4
    * value ``l + 64`` = ``ql[l]    >> 4`` | bits 4-5 of ``qh[l]`` << 4
    * value ``l + 96`` = ``ql[l+32] >> 4`` | bits 6-7 of ``qh[l]`` << 4

    (so the low nibbles of the 64 ``ql`` bytes are values 0..63 in order, the high
    nibbles values 64..127). ``q`` is 0..63; ``x = d*sc[k] * (q - 32)`` with
    ``k = value_index // 16``.
    """
    b = _as_blocks("Q6_K", blocks)
    n = len(b)
    ql = b["ql"].reshape(n, 2, 64)
    qh = b["qh"].reshape(n, 2, 32)
    q = np.empty((n, 2, 128), dtype=np.uint8)
    np.bitwise_and(ql, 0x0F, out=q[:, :, :64])
    np.right_shift(ql, 4, out=q[:, :, 64:])
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    hi = ((qh[:, :, None, :] >> shifts) & 3) << 4  # (n, 2, 4, 32): value 32*i + l of each half
    q |= hi.reshape(n, 2, 128)
    qi = q.view(np.int8).reshape(n, 16, 16)
    qi -= 32
    ds = b["d"].astype(np.float32)[:, None] * b["scales"]  # (n, 16) float32
    o = _out(out, n, QK_K).reshape(n, 16, 16)
    np.multiply(ds[:, :, None], qi, out=o)
    return o.reshape(n, QK_K)


# ---------------------------------------------------------------------------------
# Low-bit K-quants: 16 sub-blocks of 16 values
# ---------------------------------------------------------------------------------
def _crumbs_k(qs: np.ndarray) -> np.ndarray:
    """64 bytes of 2-bit fields -> 256 values, (n, 16, 16).

    Two chunks of 32 bytes; chunk ``c``, bit pair ``j`` (bits ``2j, 2j+1``) of byte ``l``
    is value ``128c + 32j + l``. So value ``v`` sits in byte ``32*(v // 128) + v % 32`` at
    shift ``2 * ((v // 32) % 4)``; the 16 sub-blocks of 16 are consecutive values.
    """
    n = qs.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    q = (qs.reshape(n, 2, 1, 32) >> shifts) & 3  # (n, chunk c, pair j, byte l)
    return q.reshape(n, 16, 16)


def dequantize_q2_K(blocks, out=None) -> np.ndarray:
    """Q2_K: 256 values in 84 bytes; 16 sub-blocks of 16, 2-bit quants, 4-bit scale and min.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-15    scales byte ``k``: low nibble = scale ``sc[k]``, high nibble = min
                   ``m[k]`` of sub-block ``k`` (values ``16k .. 16k+15``)
    16-79   qs     2-bit ``q``: byte ``32c + l`` holds values ``128c + l``
                   (bits 0-1), ``128c + 32 + l`` (bits 2-3), ``128c + 64 + l``
                   (bits 4-5), ``128c + 96 + l`` (bits 6-7), for ``c`` in 0..1
    80-81   d      fp16 super-scale of the scales
    82-83   dmin   fp16 super-scale of the mins
    ======= ====== =====================================================

    ``x = (d*sc[k]) * q - dmin*m[k]`` with ``q`` in 0..3.
    """
    b = _as_blocks("Q2_K", blocks)
    n = len(b)
    sc = b["scales"]
    dl = b["d"].astype(np.float32)[:, None] * (sc & 15)  # (n, 16) float32
    ml = b["dmin"].astype(np.float32)[:, None] * (sc >> 4)
    o = _out(out, n, QK_K).reshape(n, 16, 16)
    np.multiply(dl[:, :, None], _crumbs_k(b["qs"]), out=o)
    o -= ml[:, :, None]
    return o.reshape(n, QK_K)


def unpack_scales_q3_K(scales: np.ndarray) -> np.ndarray:
    """The 12 packed bytes of Q3_K -> (n, 16) int8 scales in -32..31.

    Sixteen 6-bit values ``u[k]``, stored offset by 32 (``sc = u - 32``). With ``b`` the
    12 bytes: the low 4 bits of ``u[k]`` are the low nibble of ``b[k]`` for ``k < 8`` and
    the high nibble of ``b[k-8]`` for ``k >= 8``; the top 2 bits of ``u[k]`` are bits
    ``2*(k // 4)`` and ``2*(k // 4) + 1`` of ``b[8 + k % 4]``.
    """
    b = scales.reshape(-1, 12)
    n = len(b)
    lo = np.empty((n, 16), dtype=np.uint8)
    np.bitwise_and(b[:, :8], 15, out=lo[:, :8])
    np.right_shift(b[:, :8], 4, out=lo[:, 8:])
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, :, None]
    hi = ((b[:, None, 8:12] >> shifts) & 3).reshape(n, 16)  # index 4*(k // 4) + k % 4 = k
    u = lo | (hi << 4)
    return u.view(np.int8) - np.int8(32)


def dequantize_q3_K(blocks, out=None) -> np.ndarray:
    """Q3_K: 256 values in 110 bytes; 16 sub-blocks of 16, 3-bit quants, signed 6-bit scales.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-31    hmask  the 3rd (value 4) bit: bit ``b`` of byte ``l`` belongs to
                   value ``32b + l``
    32-95   qs     low 2 bits, laid out as Q2_K's ``qs`` (byte ``32c + l``,
                   bit pair ``j`` = value ``128c + 32j + l``)
    96-107  scales 16 six-bit scales, packed (:func:`unpack_scales_q3_K`)
    108-109 d      fp16 super-scale
    ======= ====== =====================================================

    ``q = low2 | hbit << 2`` in 0..7 and ``x = (d*sc[k]) * (q - 4)`` for value ``v`` of
    sub-block ``k = v // 16`` (ggml writes it as ``low2 - (hbit ? 0 : 4)``).
    """
    b = _as_blocks("Q3_K", blocks)
    n = len(b)
    q = _crumbs_k(b["qs"])  # (n, 16, 16) uint8
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    hbit = ((b["hmask"][:, None, :] >> shifts) & 1).reshape(n, 16, 16)  # value 32b + l
    q |= hbit << 2
    qi = q.view(np.int8)
    qi -= 4
    dl = b["d"].astype(np.float32)[:, None] * unpack_scales_q3_K(b["scales"])  # (n, 16) float32
    o = _out(out, n, QK_K).reshape(n, 16, 16)
    np.multiply(dl[:, :, None], qi, out=o)
    return o.reshape(n, QK_K)


# ---------------------------------------------------------------------------------
# Q3_K_R: Q3_K with its bits in the SIMD tiers' lane order (made at load, never in a file)
# ---------------------------------------------------------------------------------
def _q3kr_tables() -> tuple[np.ndarray, np.ndarray]:
    """(value, hbit): for half ``c``, byte ``p`` (0..31) and bit pair ``k`` (0..3) of a
    Q3_K_R block, the index of the value it holds and the bit of ``hb[p]`` with its 3rd bit."""
    c, p, k = np.meshgrid(np.arange(2), np.arange(32), np.arange(4), indexing="ij")  # each (2, 32, 4)
    lane = p // 4
    value = 128 * c + 16 * (2 * (lane % 4) + lane // 4) + 4 * k + p % 4
    hbit = (k & 1) + 4 * (k >> 1) + 2 * (1 - c)
    return value, hbit.astype(np.uint8)


_Q3KR_VALUE, _Q3KR_HBIT = _q3kr_tables()
_PAIRS = (2 * np.arange(4)).astype(np.uint8)  # the shifts of the four 2-bit fields of a byte


def _ql_of_qs(qs: np.ndarray) -> np.ndarray:
    """Q2_K / Q3_K ``qs`` (n, 64) -> the Q2_K_R / Q3_K_R ``ql`` (n, 64) of the same values."""
    low = _crumbs_k(qs).reshape(len(qs), 256)[:, _Q3KR_VALUE]  # (n, 2, 32, 4)
    return np.bitwise_or.reduce(low << _PAIRS, axis=3).reshape(len(qs), 64)


def _qs_of_ql(ql: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_ql_of_qs`."""
    n = len(ql)
    lv = np.empty((n, 256), dtype=np.uint8)
    lv[:, _Q3KR_VALUE] = (ql.reshape(n, 2, 32, 1) >> _PAIRS) & 3
    lv = lv.reshape(n, 2, 4, 32)  # (n, c, j, l): value 128c + 32j + l
    return np.bitwise_or.reduce(lv << _PAIRS[None, None, :, None], axis=2).reshape(n, 64)


def repack_q3_K(raw) -> np.ndarray:
    """Q3_K blocks -> Q3_K_R blocks (uint8, same size): the same values, the bits reordered.

    Q3_K keeps value ``128c + 32j + l`` in bit pair ``j`` of ``qs[32c + l]`` and bit ``4c + j``
    of ``hmask[l]`` (:func:`dequantize_q3_K`): a SIMD tier that holds one 16-value group per
    32-bit lane has to shuffle those bytes into lanes first. Q3_K_R stores them in that order.
    Each half ``c`` of the super-block (8 groups of 16) is 32 bytes; byte ``p`` stands for
    elements ``4k + p % 4`` (``k = 0..3``) of group ``2 (L % 4) + L // 4``, ``L = p // 4``
    (the AVX2 tier's lane order; the AVX-512 tier permutes whole dwords):

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-31    hb     3rd bits: byte ``p``, half 0: bits 2, 3, 6, 7 for ``k`` = 0, 1,
                   2, 3; half 1: bits 0, 1, 4, 5 (``hb & 0x44``, resp.
                   ``(hb << 2) & 0x44``, puts ``k`` = 0, 2 next to ``ql``'s pairs 0, 2)
    32-95   ql     low 2 bits: byte ``32c + p``, bit pair ``k``
    96-109         scales and d, as Q3_K
    ======= ====== =====================================================
    """
    b = _as_blocks("Q3_K", raw)
    n = len(b)
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    high = ((b["hmask"][:, None, :] >> shifts) & 1).reshape(n, 256)[:, _Q3KR_VALUE]  # (n, 2, 32, 4)
    out = np.empty((n, 110), dtype=np.uint8)
    out[:, :32] = np.bitwise_or.reduce(high << _Q3KR_HBIT, axis=(1, 3))
    out[:, 32:96] = _ql_of_qs(b["qs"])
    out[:, 96:] = b.view(np.uint8).reshape(n, 110)[:, 96:]
    return out.reshape(-1)


def unrepack_q3_K(raw) -> np.ndarray:
    """Q3_K_R blocks -> the Q3_K blocks they were made from (the inverse of :func:`repack_q3_K`)."""
    r = _raw_u8(raw).reshape(-1, 110)
    n = len(r)
    hv = np.empty((n, 256), dtype=np.uint8)
    hv[:, _Q3KR_VALUE] = (r[:, None, :32, None] >> _Q3KR_HBIT) & 1
    out = np.empty((n, 110), dtype=np.uint8)
    hv = hv.reshape(n, 8, 32)  # (n, b, l): value 32b + l
    out[:, :32] = np.bitwise_or.reduce(hv << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    out[:, 32:96] = _qs_of_ql(r[:, 32:96])
    out[:, 96:] = r[:, 96:]
    return out.reshape(-1)


#: half c's sub-block scale byte in Q2_K_R order: byte 8c + L of Q2_K_R is byte _Q2KR_SCALES[8c + L] of Q2_K
_Q2KR_SCALES = np.array([8 * c + 2 * (L % 4) + L // 4 for c in range(2) for L in range(8)])


def repack_q2_K(raw) -> np.ndarray:
    """Q2_K blocks -> Q2_K_R blocks (uint8, same size): the same values, bytes reordered.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-15    scales Q2_K's scale bytes (scale | min << 4), half ``c``'s eight at
                   ``8c + L`` for group ``2 (L % 4) + L // 4`` (the lane order)
    16-79   ql     low 2 bits as Q3_K_R's ``ql`` (:func:`repack_q3_K`)
    80-83          d, dmin as Q2_K
    ======= ====== =====================================================
    """
    b = _as_blocks("Q2_K", raw)
    n = len(b)
    out = np.empty((n, 84), dtype=np.uint8)
    out[:, :16] = b["scales"][:, _Q2KR_SCALES]
    out[:, 16:80] = _ql_of_qs(b["qs"])
    out[:, 80:] = b.view(np.uint8).reshape(n, 84)[:, 80:]
    return out.reshape(-1)


def unrepack_q2_K(raw) -> np.ndarray:
    """Q2_K_R blocks -> the Q2_K blocks they were made from (the inverse of :func:`repack_q2_K`)."""
    r = _raw_u8(raw).reshape(-1, 84)
    out = np.empty((len(r), 84), dtype=np.uint8)
    out[:, _Q2KR_SCALES] = r[:, :16]
    out[:, 16:80] = _qs_of_ql(r[:, 16:80])
    out[:, 80:] = r[:, 80:]
    return out.reshape(-1)


#: Q4_K_R's nibble order: byte p of chunk m holds (low nibble) value _Q4KR_LO[m, p] and (high)
#: _Q4KR_HI[m, p] of the super-block; group l = p // 4 is values 32 l .. 32 l + 31
_Q4KR_LO = np.array([[32 * (p // 4) + 4 * m + p % 4 for p in range(32)] for m in range(4)])
_Q4KR_HI = _Q4KR_LO + 16


def _nibble_values(qs: np.ndarray, run: int) -> np.ndarray:
    """(n, 128) nibble bytes in runs of ``run`` bytes, each run holding ``run`` values in its low
    nibbles and the next ``run`` in its high ones (Q4_K: 32, IQ4_XS: 16) -> (n, 256) values in order."""
    n = len(qs)
    halves = (qs.reshape(n, 128 // run, 1, run) >> np.array([0, 4], dtype=np.uint8)[None, None, :, None]) & 15
    return halves.reshape(n, 256)


def _nibble_bytes(q: np.ndarray, run: int) -> np.ndarray:
    """The inverse of :func:`_nibble_values`: (n, 256) values -> (n, 128) bytes."""
    g = q.reshape(len(q), 128 // run, 2, run)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(len(q), 128)


def _q4kr_bytes(q: np.ndarray) -> np.ndarray:
    """(n, 256) 4-bit values -> their 128 bytes in Q4_K_R's order (:func:`repack_q4_K`)."""
    return (q[:, _Q4KR_LO] | (q[:, _Q4KR_HI] << 4)).reshape(len(q), 128)


def _q4kr_values(ch: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_q4kr_bytes`: (n, 128) bytes in Q4_K_R's order -> (n, 256) values."""
    q = np.empty((len(ch), 256), dtype=np.uint8)
    q[:, _Q4KR_LO] = ch.reshape(len(ch), 4, 32) & 15
    q[:, _Q4KR_HI] = ch.reshape(len(ch), 4, 32) >> 4
    return q


def repack_q4_K(raw) -> np.ndarray:
    """Q4_K blocks -> Q4_K_R blocks (uint8, same size): the same values, nibbles reordered.

    Q4_K's group ``j = 2c + s`` (32 values) is nibble ``s`` of ``qs[32c .. 32c + 31]``
    (:func:`dequantize_q4_K`); a SIMD tier holding one group per 32-bit lane transposes those
    bytes first. Q4_K_R stores them transposed: chunk ``m`` (bytes ``16 + 32m ..``, 32 bytes),
    byte ``p``, lane ``l = p // 4``, holds element ``4m + p % 4`` of group ``l`` in its low
    nibble and element ``4(m + 4) + p % 4`` in its high nibble. Bytes 0-15 (d, dmin, scales)
    are Q4_K's.
    """
    return _q4kr_nibbles("Q4_K", raw, 16, 32, back=False)


def unrepack_q4_K(raw) -> np.ndarray:
    """Q4_K_R blocks -> the Q4_K blocks they were made from (the inverse of :func:`repack_q4_K`)."""
    return _q4kr_nibbles("Q4_K", raw, 16, 32, back=True)


def _q4kr_nibbles(t: str, raw, at: int, run: int, back: bool) -> np.ndarray:
    """Blocks of ``t`` whose 128 nibble bytes start at byte ``at`` (in runs of ``run`` bytes, as
    :func:`_nibble_values` reads them) with those bytes put in Q4_K_R's order (``back``: out of
    it); the other bytes as they are."""
    bb = BY_NAME[t].type_size
    r = _as_blocks(t, raw).view(np.uint8).reshape(-1, bb)
    out = r.copy()
    qs = r[:, at:at + 128]
    out[:, at:at + 128] = _nibble_bytes(_q4kr_values(qs), run) if back else _q4kr_bytes(_nibble_values(qs, run))
    return out.reshape(-1)


def repack_iq4_xs(raw) -> np.ndarray:
    """IQ4_XS blocks -> IQ4_XS_R blocks (uint8, same size): the same values, nibbles reordered.

    IQ4_XS's group ``j`` (32 values) is ``qs[16j .. 16j + 15]``, element ``l`` in the low nibble of
    byte ``l`` and element ``16 + l`` in the high one (:func:`dequantize_iq4_xs`). IQ4_XS_R keeps
    bytes 0-7 (``d``, ``scales_h``, ``scales_l``) and stores the 128 nibble bytes in Q4_K_R's
    order (:func:`repack_q4_K`): chunk ``m`` (bytes ``8 + 32m ..``), byte ``p``, holds element
    ``4m + p % 4`` of group ``p // 4`` in its low nibble and ``4(m + 4) + p % 4`` in its high one.
    """
    return _q4kr_nibbles("IQ4_XS", raw, 8, 16, back=False)


def unrepack_iq4_xs(raw) -> np.ndarray:
    """IQ4_XS_R blocks -> the IQ4_XS blocks they were made from (the inverse of :func:`repack_iq4_xs`)."""
    return _q4kr_nibbles("IQ4_XS", raw, 8, 16, back=True)


#: Q5_K_R's 5th bits: bit 2m + s of hb byte p is the 5th bit of value _Q5KR_HB[p, 2m + s] of the
#: super-block, the value whose nibble is in byte p of chunk m of Q4_K_R's order (low nibble s = 0)
_Q5KR_HB = np.stack([_Q4KR_LO, _Q4KR_HI], axis=2).transpose(1, 0, 2).reshape(32, 8)


def repack_q5_K(raw) -> np.ndarray:
    """Q5_K blocks -> Q5_K_R blocks (uint8, same size): the same values, bits reordered.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-15           d, dmin, scales as Q5_K
    16-47   hb     byte ``p``, bit ``2m + s``: the 5th bit of the value whose
                   low 4 bits are nibble ``s`` of byte ``p`` of chunk ``m`` below
                   (element ``4(m + 4s) + p % 4`` of group ``p // 4``)
    48-175  qs     the low 4 bits in Q4_K_R's order (:func:`repack_q4_K`)
    ======= ====== =====================================================

    A SIMD tier then tops each vector of nibbles with one shift of ``hb`` and one mask.
    """
    b = _as_blocks("Q5_K", raw)
    n = len(b)
    q = np.empty((n, 256), dtype=np.uint8)  # the 5-bit values, in value order (group j: 32j ..)
    q.reshape(n, 8, 32)[:] = _nibbles_k(b["qs"]) | (((b["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4)
    out = np.empty((n, 176), dtype=np.uint8)
    out[:, :16] = b.view(np.uint8).reshape(n, 176)[:, :16]
    bits = (q[:, _Q5KR_HB] >> 4) << np.arange(8, dtype=np.uint8)  # (n, 32, 8)
    out[:, 16:48] = np.bitwise_or.reduce(bits, axis=2)
    out[:, 48:] = _q4kr_bytes(q & 15)
    return out.reshape(-1)


def unrepack_q5_K(raw) -> np.ndarray:
    """Q5_K_R blocks -> the Q5_K blocks they were made from (the inverse of :func:`repack_q5_K`)."""
    r = _raw_u8(raw).reshape(-1, 176)
    n = len(r)
    q = _q4kr_values(r[:, 48:])
    q[:, _Q5KR_HB] |= ((r[:, 16:48, None] >> np.arange(8, dtype=np.uint8)) & 1) << 4
    g = q.reshape(n, 8, 32)  # group j = 2c + s
    out = np.empty((n, 176), dtype=np.uint8)
    out[:, :16] = r[:, :16]
    out[:, 16:48] = np.bitwise_or.reduce((g >> 4) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    out[:, 48:] = _nibble_bytes(g.reshape(n, 256) & 15, 32)
    return out.reshape(-1)


#: Q5_0_R / Q5_1_R's 5th bits: bit 8b + k of qh' is bit _Q5R_QH[8b + k] = 4k + b of the GGUF qh
#: (the 5th bit of element 4k + b); bits 8b + 4 .. 8b + 7 hold k = 4 .. 7
_Q5R_QH = np.array([4 * k + b for b in range(4) for k in range(8)], dtype=np.uint32)


def _permute_bits32(words: np.ndarray, src_bit: np.ndarray) -> np.ndarray:
    """Bit i of each result = bit src_bit[i] of the matching uint32 word."""
    w = words.astype(np.uint32)[:, None]
    return np.bitwise_or.reduce(((w >> src_bit) & 1) << np.arange(32, dtype=np.uint32), axis=1).astype(np.uint32)


def _repack_q5(t: str, raw, back: bool) -> np.ndarray:
    bb = BY_NAME[t].type_size
    b = _as_blocks(t, _raw_u8(raw).reshape(-1, bb)).copy()
    if back:
        inv = np.empty(32, dtype=np.uint32)
        inv[_Q5R_QH] = np.arange(32, dtype=np.uint32)
        b["qh"] = _permute_bits32(b["qh"], inv)
    else:
        b["qh"] = _permute_bits32(b["qh"], _Q5R_QH)
    return b.view(np.uint8).reshape(-1)


def repack_q5_0(raw) -> np.ndarray:
    """Q5_0 blocks -> Q5_0_R blocks (uint8, same size): only the 32 fifth bits move.

    Q5_0's ``qh`` holds the 5th bit of element ``e`` at bit ``e``; a SIMD tier holding one block
    per 32-bit lane reads elements ``4k .. 4k + 3`` in vector ``k``. Q5_0_R's ``qh`` holds at bit
    ``8b + k`` the 5th bit of element ``4k + b`` (``b`` = 0..3, ``k`` = 0..7): one shift by
    ``4 - k`` moves the four bits of vector ``k`` to bit 4 of their bytes. ``d`` and ``qs`` as Q5_0.
    """
    return _repack_q5("Q5_0", raw, back=False)


def unrepack_q5_0(raw) -> np.ndarray:
    """Q5_0_R blocks -> the Q5_0 blocks they were made from (the inverse of :func:`repack_q5_0`)."""
    return _repack_q5("Q5_0", raw, back=True)


def repack_q5_1(raw) -> np.ndarray:
    """Q5_1 blocks -> Q5_1_R blocks: ``qh`` reordered as :func:`repack_q5_0`'s; ``d``, ``m``, ``qs`` as Q5_1."""
    return _repack_q5("Q5_1", raw, back=False)


def unrepack_q5_1(raw) -> np.ndarray:
    """Q5_1_R blocks -> the Q5_1 blocks they were made from (the inverse of :func:`repack_q5_1`)."""
    return _repack_q5("Q5_1", raw, back=True)


def _panel_rows(form: str, raw, cols: int, back: bool) -> np.ndarray:
    """The panel forms (Q4_0_P, Q4_1_P, Q5_0_P, Q5_1_P, IQ4_NL_P), a row of ``cols // 32`` blocks
    at a time: its first ``8 * (nb // 8)`` blocks as panels of 8, the rest left as blocks.

    A panel is the bytes of its 8 blocks with each field of the block (``d``; ``m``; ``qh``;
    ``qs``, in block order) stored for the 8 side by side, in units of ``u = min(field bytes, 4)``:
    unit ``k`` of block ``l``'s field at ``8 u k + u l`` from the field's start, which is 8 times
    the field's offset in the block. Q4_0_P, 8 blocks of 18 bytes:

    ======== =====================================================
    bytes    in the panel
    ======== =====================================================
    0-15     ``d`` of blocks 0..7 (fp16 each)
    16-143   ``qs`` dword ``k`` of blocks 0..7 at ``16 + 32k + 4l``
    ======== =====================================================

    (Q4_1_P: ``d``, then the 8 ``m`` at 16-31, ``qs`` from 32; Q5_0_P: ``d``, the 8 ``qh`` at
    16-47, ``qs`` from 48; Q5_1_P: ``d``, ``m``, ``qh``, ``qs`` from 64.) A SIMD tier with one block
    per 32-bit lane loads each field as one vector. Q5_0_P / Q5_1_P's blocks, panels and the rest,
    are Q5_0_R / Q5_1_R's (:func:`repack_q5_0`): their 5th bits in that order.
    """
    src = LOAD_FORMS[form]
    dt = BLOCK_DTYPES[src]
    bb, nb = dt.itemsize, cols // 32
    r = _raw_u8(raw).reshape(-1, nb, bb)
    n, full = len(r), nb // 8 * 8
    five = {"Q5_0": repack_q5_0, "Q5_1": repack_q5_1}.get(src)  # blocks in Q5_0_R / Q5_1_R order first
    out = five(r).reshape(r.shape) if five is not None and not back else r.copy()
    blocks = out[:, :full].reshape(n, full // 8, 8, bb)  # (row, panel, block l, byte); back: panel bytes
    panels = np.empty_like(blocks)
    o = 0
    for name in dt.names:  # field bytes o .. o + f of block l <-> panel bytes 8o .. 8o + 8f as (k, l, u)
        f = dt.fields[name][0].itemsize
        u = min(f, 4)
        if back:
            field = blocks.reshape(n, -1, 8 * bb)[:, :, 8 * o:8 * (o + f)].reshape(n, -1, f // u, 8, u)
            panels[:, :, :, o:o + f] = field.transpose(0, 1, 3, 2, 4).reshape(n, -1, 8, f)
        else:
            field = blocks[:, :, :, o:o + f].reshape(n, -1, 8, f // u, u)
            panels.reshape(n, -1, 8 * bb)[:, :, 8 * o:8 * (o + f)] = field.transpose(0, 1, 3, 2, 4).reshape(n, -1, 8 * f)
        o += f
    out[:, :full] = panels.reshape(n, full, bb)
    if five is not None and back:
        out = _repack_q5(src, out, back=True)
    return out.reshape(-1)


def repack(form: str, raw, cols: int) -> np.ndarray:
    """Rows of ``cols`` values of the GGUF type a load-time form is made from
    (``ggml_types.LOAD_FORMS``) -> the same rows in ``form`` (uint8, same size): the spec of
    ``_C.repack``. The per-block forms' layouts: :func:`repack_q4_K` and its neighbours; the panel
    forms': :func:`_panel_rows`."""
    form = _check_form(form, raw, cols)
    if form in PANEL_FORMS:
        return _panel_rows(form, raw, cols, back=False)
    return globals()["repack_" + BY_NAME[LOAD_FORMS[form]].ident](raw)


def unrepack(form: str, raw, cols: int) -> np.ndarray:
    """The inverse of :func:`repack`: rows of ``form`` -> the GGUF rows they were made from."""
    form = _check_form(form, raw, cols)
    if form in PANEL_FORMS:
        return _panel_rows(form, raw, cols, back=True)
    return globals()["unrepack_" + BY_NAME[LOAD_FORMS[form]].ident](raw)


def _check_form(form: str, raw, cols: int) -> str:
    """``form`` upper-cased, after checking that it is a load-time form and that ``raw`` is whole
    rows of ``cols`` values of it (one :class:`QuantError` line otherwise)."""
    name = str(form).upper()
    if name not in LOAD_FORMS:
        raise QuantError(f"{form!r} is not a load-time form (those are: {', '.join(LOAD_FORMS)})")
    t = BY_NAME[LOAD_FORMS[name]]
    cols = int(cols)
    if cols <= 0 or cols % t.block_size:
        raise QuantError(f"{name}: cols={cols} is not a positive multiple of the block size {t.block_size}")
    n = _raw_u8(raw).size
    if n % t.n_bytes(cols):
        raise QuantError(f"{name}: {n} bytes are not whole rows of {cols} values ({t.n_bytes(cols)} bytes each)")
    return name


def _q6k_fields(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q6_K blocks -> (low 4 bits, top 2 bits) of every value, each (n, 256) uint8 in value order."""
    n = len(b)
    ql = b["ql"].reshape(n, 2, 1, 2, 32)  # (n, half, nibble, chunk, l)
    low = ((ql >> np.array([0, 4], dtype=np.uint8)[None, None, :, None, None]) & 15).reshape(n, 256)
    high = ((b["qh"].reshape(n, 2, 1, 32) >> _PAIRS[None, None, :, None]) & 3).reshape(n, 256)
    return low, high  # value 128h + 32j + l: j = 2 nibble + chunk


def repack_q6_K(raw) -> np.ndarray:
    """Q6_K blocks -> Q6_K_R blocks (uint8, same size): the same values in Q3_K_R's lane order.

    With ``(h, p, k)`` standing for element ``4k + p % 4`` of group ``2 (L % 4) + L // 4`` of
    half ``h`` (``L = p // 4``, as in :func:`repack_q3_K`): ``ql[64h + p]`` holds the low 4 bits
    of ``k = 0`` (low nibble) and ``k = 2`` (high), ``ql[64h + 32 + p]`` those of ``k = 1, 3``,
    ``qh[32h + p]`` bits ``2k, 2k+1`` the top 2 bits of ``k``; the scales of half ``h`` at
    ``192 + 8h + L`` in that group order (as Q2_K_R's); ``d`` as Q6_K.
    """
    b = _as_blocks("Q6_K", raw)
    n = len(b)
    low, high = _q6k_fields(b)
    low, high = low[:, _Q3KR_VALUE], high[:, _Q3KR_VALUE]  # each (n, 2, 32, 4): half, byte p, k
    out = np.empty((n, 210), dtype=np.uint8)
    ql = out[:, :128].reshape(n, 2, 2, 32)  # (n, half, chunk k % 2, p)
    ql[:] = np.moveaxis(low[..., 0:2] | (low[..., 2:4] << 4), 3, 2)
    out[:, 128:192] = np.bitwise_or.reduce(high << _PAIRS, axis=3).reshape(n, 64)
    out[:, 192:208] = b.view(np.uint8).reshape(n, 210)[:, 192:208][:, _Q2KR_SCALES]
    out[:, 208:] = b.view(np.uint8).reshape(n, 210)[:, 208:]
    return out.reshape(-1)


def unrepack_q6_K(raw) -> np.ndarray:
    """Q6_K_R blocks -> the Q6_K blocks they were made from (the inverse of :func:`repack_q6_K`)."""
    r = _raw_u8(raw).reshape(-1, 210)
    n = len(r)
    ql = np.moveaxis(r[:, :128].reshape(n, 2, 2, 32), 2, 3)  # (n, half, p, k % 2)
    low = np.empty((n, 256), dtype=np.uint8)
    high = np.empty((n, 256), dtype=np.uint8)
    low[:, _Q3KR_VALUE] = np.concatenate([ql & 15, ql >> 4], axis=3)
    high[:, _Q3KR_VALUE] = (r[:, 128:192].reshape(n, 2, 32, 1) >> _PAIRS) & 3
    low = low.reshape(n, 2, 2, 2, 32)  # (n, half, nibble j // 2, chunk j % 2, l)
    out = np.empty((n, 210), dtype=np.uint8)
    out[:, :128] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    out[:, 128:192] = np.bitwise_or.reduce(high.reshape(n, 2, 4, 32) << _PAIRS[None, None, :, None], axis=2).reshape(n, 64)
    out[:, 192 + _Q2KR_SCALES] = r[:, 192:208]
    out[:, 208:] = r[:, 208:]
    return out.reshape(-1)


# ---------------------------------------------------------------------------------
# Non-linear 4-bit ("IQ4"): a nibble indexes a fixed table of 16 int8 levels
# ---------------------------------------------------------------------------------
#: the 16 levels of IQ4_NL / IQ4_XS (ggml's ``kvalues_iq4nl``): denser near zero
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


def dequantize_iq4_nl(blocks, out=None) -> np.ndarray:
    """IQ4_NL: 32 values in 18 bytes, a 4-bit index into :data:`IQ4_VALUES`.

    ====== ====== =====================================================
    bytes  field  meaning
    ====== ====== =====================================================
    0-1    d      fp16 scale
    2-17   qs     byte ``j``: low nibble = index of value ``j``, high nibble =
                  index of value ``j + 16`` (as Q4_0)
    ====== ====== =====================================================

    ``x = d * IQ4_VALUES[i]``.
    """
    b = _as_blocks("IQ4_NL", blocks)
    d = b["d"].astype(np.float32)[:, None]
    return np.multiply(d, IQ4_VALUES[_nibbles_32(b["qs"])], out=_out(out, len(b), 32))


def unpack_scales_iq4_xs(scales_h: np.ndarray, scales_l: np.ndarray) -> np.ndarray:
    """IQ4_XS's scale fields -> (n, 8) int8 scales in -32..31.

    Sub-block ``j``: low 4 bits = nibble ``j % 2`` of ``scales_l[j // 2]`` (low nibble
    first), top 2 bits = bits ``2j, 2j+1`` of the uint16 ``scales_h``; stored offset by 32.
    """
    n = scales_h.shape[0]
    lo = np.empty((n, 4, 2), dtype=np.uint8)
    np.bitwise_and(scales_l, 15, out=lo[:, :, 0])
    np.right_shift(scales_l, 4, out=lo[:, :, 1])
    hi = (scales_h[:, None] >> (2 * np.arange(8, dtype=np.uint16))) & 3  # (n, 8)
    u = lo.reshape(n, 8) | (hi.astype(np.uint8) << 4)
    return u.view(np.int8) - np.int8(32)


def dequantize_iq4_xs(blocks, out=None) -> np.ndarray:
    """IQ4_XS: 256 values in 136 bytes; 8 sub-blocks of 32 with signed 6-bit scales.

    ======= ======== =====================================================
    bytes   field    meaning
    ======= ======== =====================================================
    0-1     d        fp16 super-scale
    2-3     scales_h uint16: bits ``2j, 2j+1`` = top bits of scale ``j``
    4-7     scales_l low 4 bits of the scales, two per byte (low nibble first)
    8-135   qs       16 bytes per sub-block ``j`` (bytes ``16j .. 16j+15``), nibbles
                     as IQ4_NL: byte ``i`` = values ``i`` (low), ``i + 16`` (high)
    ======= ======== =====================================================

    ``x = (d*sc[j]) * IQ4_VALUES[i]`` (:func:`unpack_scales_iq4_xs` gives ``sc``).
    """
    b = _as_blocks("IQ4_XS", blocks)
    n = len(b)
    dl = b["d"].astype(np.float32)[:, None] * unpack_scales_iq4_xs(b["scales_h"], b["scales_l"])
    v = IQ4_VALUES[_nibbles_32(b["qs"].reshape(n * 8, 16))].reshape(n, 8, 32)
    o = _out(out, n, QK_K).reshape(n, 8, 32)
    np.multiply(dl[:, :, None], v, out=o)
    return o.reshape(n, QK_K)


def dequantize_q8_K(blocks, out=None) -> np.ndarray:
    """Q8_K: 256 values in 292 bytes; the activation format of K-quant dot products.

    ======= ====== =====================================================
    bytes   field  meaning
    ======= ====== =====================================================
    0-3     d      **float32** scale
    4-259   qs     int8 ``q`` of values 0..255
    260-291 bsums  int16 ``bsums[k] = sum(q[16k : 16k+16])`` (redundant, for kernels)
    ======= ====== =====================================================

    ``x = d * q``.
    """
    b = _as_blocks("Q8_K", blocks)
    return np.multiply(b["d"][:, None], b["qs"], out=_out(out, len(b), QK_K))


#: type name -> block dequantizer ``f(blocks, out=None) -> (n_blocks, block_size) float32``
BLOCK_DEQUANTIZERS: dict[str, Callable[..., np.ndarray]] = {
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
    "Q5_0": dequantize_q5_0,
    "Q5_1": dequantize_q5_1,
    "Q8_0": dequantize_q8_0,
    "Q8_1": dequantize_q8_1,
    "Q2_K": dequantize_q2_K,
    "Q3_K": dequantize_q3_K,
    "Q4_K": dequantize_q4_K,
    "Q5_K": dequantize_q5_K,
    "Q6_K": dequantize_q6_K,
    "Q8_K": dequantize_q8_K,
    "IQ4_NL": dequantize_iq4_nl,
    "IQ4_XS": dequantize_iq4_xs,
}
_FLOAT_DEQUANTIZERS = {"F32": dequantize_f32, "F16": dequantize_f16, "BF16": dequantize_bf16}

#: every type :func:`dequantize` accepts: the weight types pyengine runs (``ggml_types.SUPPORTED``)
#: plus the two activation formats Q8_1 and Q8_K, which are decoded but never a weight of a matmul
DEQUANT_TYPES: tuple[str, ...] = SUPPORTED + ("Q8_1", "Q8_K")

# Blocks dequantized per step: large enough that NumPy's per-call overhead vanishes,
# small enough that the temporaries stay in cache (and a huge table never needs
# several times its own size in scratch memory).
_CHUNK_VALUES = 1 << 18


def _check(type_name: str) -> tuple[str, GGMLType]:
    name = str(type_name).upper()
    if name in INTERNAL:  # a load-time form of a GGUF type (Q3_K_R, Q2_K_R)
        return name, INTERNAL[name]
    if name not in DEQUANT_TYPES:
        what = "unsupported" if name in BY_NAME else "unknown"
        raise QuantError(f"{what} type {type_name!r} for dequantize (supported: {', '.join(DEQUANT_TYPES)})")
    return name, BY_NAME[name]


def dequantize(type_name: str, raw, n_elements: int, cols: int | None = None) -> np.ndarray:
    """Decode ``n_elements`` values of GGML type ``type_name`` from ``raw`` -> float32 ``(n_elements,)``.

    ``raw`` is bytes, a memoryview or a uint8 ndarray (typically a slice of a
    memory-mapped file); it is read in place, not copied. For F32 the result is a
    view of ``raw`` itself. ``cols``: the row length, needed by the panel forms only
    (``ggml_types.PANEL_FORMS``, rewritten a row at a time). Raises :class:`QuantError` (a
    ValueError) for an unknown or unsupported type, an element count that is not a whole
    number of blocks, or a byte count that does not match.
    """
    name, t = _check(type_name)
    n_elements = int(n_elements)
    if n_elements < 0 or n_elements % t.block_size:
        raise QuantError(f"{name}: n_elements {n_elements} is not a multiple of the block size {t.block_size}")
    u8 = _raw_u8(raw)
    want = n_elements // t.block_size * t.type_size
    if u8.size != want:
        raise QuantError(f"{name}: {n_elements} elements need {want} bytes, got {u8.size}")
    if name in _FLOAT_DEQUANTIZERS:
        return _FLOAT_DEQUANTIZERS[name](u8)
    if name in LOAD_FORMS:  # a load-time form (ggml_types.LOAD_FORMS): the blocks it was made from
        if name in PANEL_FORMS and (cols is None or cols <= 0 or cols % 32 or n_elements % cols):
            raise QuantError(f"{name}: a panel form needs the row length cols (a multiple of 32 dividing "
                             f"{n_elements}), got {cols}")
        rows_of = cols if name in PANEL_FORMS else (n_elements or t.block_size)  # a per-block form: any whole rows
        return dequantize(LOAD_FORMS[name], unrepack(name, u8, rows_of), n_elements)
    f = BLOCK_DEQUANTIZERS[name]
    blocks = u8.view(BLOCK_DTYPES[name])
    out = np.empty((len(blocks), t.block_size), dtype=np.float32)
    step = max(1, _CHUNK_VALUES // t.block_size)
    for i in range(0, len(blocks), step):
        f(blocks[i:i + step], out=out[i:i + step])
    return out.reshape(n_elements)


# ---------------------------------------------------------------------------------
# Quantizers for activations (ggml's reference rounding)
# ---------------------------------------------------------------------------------
def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C ``roundf``: to the nearest integer, halves away from zero. Exact in float32
    (``a - floor(a)`` is exact, so no ``+ 0.5`` double-rounding)."""
    a = np.abs(v)
    r = np.floor(a)
    r += (a - r) >= 0.5
    return np.copysign(r, v)


def _blocks_of(x, block_size: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.size % block_size:
        raise QuantError(f"{what}: length {x.size} is not a multiple of {block_size}")
    return x.reshape(-1, block_size)


def _q8_32(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared by Q8_0 and Q8_1: float32 ``d = amax/127`` and ``q = roundf(x * (1/d))``."""
    amax = np.abs(xb).max(axis=1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _round_half_away(xb * inv[:, None]).astype(np.int8)
    return d, q


def quantize_q8_0(x) -> np.ndarray:
    """float32 values (length a multiple of 32) -> Q8_0 bytes, as ggml's ``quantize_row_q8_0_ref``.

    Per block: ``amax = max|x|``, ``d = amax / 127`` (float32), ``q = roundf(x / d)``
    computed as ``x * (1/d)`` (0 when ``d == 0``); ``d`` is stored rounded to fp16 (the
    quants are *not* recomputed for the rounded ``d``). Input must be finite, and a
    block's ``amax`` either 0 or above about ``127 * FLT_MIN`` (else ``1/d``
    overflows: ggml's result is undefined there, and so is this one).
    """
    xb = _blocks_of(x, QK, "quantize_q8_0")
    d, q = _q8_32(xb)
    blocks = np.empty(len(xb), dtype=BLOCK_DTYPES["Q8_0"])
    with np.errstate(over="ignore"):  # amax > 127 * 65504 gives d = inf, as in ggml
        blocks["d"] = d.astype(np.float16)
    blocks["qs"] = q
    return blocks.view(np.uint8)


def quantize_q8_1(x) -> np.ndarray:
    """float32 values (length a multiple of 32) -> Q8_1 bytes, as ``quantize_row_q8_1_ref``.

    Same ``d`` and ``q`` as :func:`quantize_q8_0`; additionally ``s = fp16(sum(q) * d)``
    with the float32 ``d`` (before its fp16 rounding).
    """
    xb = _blocks_of(x, QK, "quantize_q8_1")
    d, q = _q8_32(xb)
    blocks = np.empty(len(xb), dtype=BLOCK_DTYPES["Q8_1"])
    with np.errstate(over="ignore"):  # overflow to inf, as in ggml
        blocks["d"] = d.astype(np.float16)
        blocks["s"] = (q.sum(axis=1, dtype=np.int32).astype(np.float32) * d).astype(np.float16)
    blocks["qs"] = q
    return blocks.view(np.uint8)


def quantize_q8_K(x) -> np.ndarray:
    """float32 values (length a multiple of 256) -> Q8_K bytes, as ``quantize_row_q8_K_ref``.

    Per block of 256: ``max`` is the first value of largest magnitude (sign kept);
    ``iscale = -127 / max`` (float32); ``q = min(127, nearest_int(iscale * x))`` where
    ggml's ``nearest_int`` rounds halves to *even* (unlike Q8_0's ``roundf``);
    ``d = 1 / iscale`` stored as float32 (so ``d`` has the opposite sign of ``max``,
    and ``max`` itself becomes ``q = -127``); ``bsums[k]`` = sum of ``q[16k:16k+16]``.
    An all-zero block gets ``d = 0``, ``q = 0``, ``bsums = 0`` (ggml leaves that
    block's bsums unwritten). Input must be finite, and a block's largest magnitude
    either 0 or above about ``127 / FLT_MAX`` (else ``iscale`` overflows).
    """
    xb = _blocks_of(x, QK_K, "quantize_q8_K")
    n = len(xb)
    idx = np.abs(xb).argmax(axis=1)  # first index of the largest |x|
    mx = xb[np.arange(n), idx]
    zero = mx == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / np.where(zero, np.float32(1), mx))
        iscale = iscale.astype(np.float32)
        d = np.where(zero, np.float32(0), np.float32(1) / np.where(zero, np.float32(1), iscale))
    q = np.minimum(np.rint(xb * iscale[:, None]), 127).astype(np.int8)
    blocks = np.empty(n, dtype=BLOCK_DTYPES["Q8_K"])
    blocks["d"] = d.astype(np.float32)
    blocks["qs"] = q
    blocks["bsums"] = q.reshape(n, 16, 16).sum(axis=2, dtype=np.int16)
    return blocks.view(np.uint8)


def quantize_act_q8(x, block: int = QK) -> tuple[np.ndarray, np.ndarray]:
    """float32 activations ``(..., cols)`` -> ``(y, dy)`` as the native CPU matmul quantizes them.

    Per ``block`` consecutive values of a row (32, or 256 for the super-block weight types,
    see :func:`act_block`): ``amax = max|x|`` (float32); if ``amax < 1e-30`` (or NaN) the
    block is all zero with ``dy = 0``; else ``y = nearbyint(x * (127/amax))`` (float32
    product, ties to even, clamped to -128..127) and ``dy = amax / 127``. ``y`` is int8
    ``(..., cols)``, ``dy`` float32 ``(..., cols // block)``.

    With these, every native tier computes exactly ``(dy * y) @ W.T`` up to float32
    rounding of its sums: the integer dot of a group is exact, and its zero point
    (integer ``C``) or float min (``E * SY``) is the same identity in real numbers (see
    kernels/cpu/matmul_kernels.h). :func:`dequantize_act_q8` gives ``dy * y``.
    """
    x = np.asarray(x, dtype=np.float32)
    if block not in (QK, QK_K):
        raise QuantError(f"quantize_act_q8: block {block} is neither {QK} nor {QK_K}")
    if x.shape[-1] % block:
        raise QuantError(f"quantize_act_q8: row length {x.shape[-1]} is not a multiple of {block}")
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = np.abs(xb).max(axis=-1)
    ok = amax >= np.float32(1e-30)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        idv = np.where(ok, np.float32(127) / np.where(ok, amax, np.float32(1)), np.float32(0)).astype(np.float32)
        y = np.clip(np.rint(xb * idv[..., None]), -128, 127)
    y = np.where(ok[..., None], y, 0).astype(np.int8).reshape(x.shape)
    dy = np.where(ok, amax / np.float32(127), np.float32(0)).astype(np.float32)
    return y, dy


def dequantize_act_q8(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dy * y`` per block (the block size is ``cols // dy.shape[-1]``): the activations a
    native matmul effectively multiplies by."""
    block = y.shape[-1] // dy.shape[-1]
    yb = y.reshape(*y.shape[:-1], y.shape[-1] // block, block).astype(np.float32)
    return (dy[..., None] * yb).reshape(y.shape)


def act_block(type_name: str) -> int:
    """How many activation values share one int8 scale in a matmul with ``type_name`` weights:
    the weight type's own block, 32 for Q4_0 .. Q8_0 and IQ4_NL, 256 for the K-quants and
    IQ4_XS. This is llama.cpp's choice too (it quantizes the activations to Q8_0/Q8_1 for the
    32-element types and to Q8_K for the super-block ones), and it matters there: a hidden state
    with a huge outlier (Qwen2.5's first token) keeps far fewer levels for its small values
    with one scale per 256, and matching that is what makes the logits agree with llama.cpp."""
    return BY_NAME[_matmul_type(type_name)].block_size


# ---------------------------------------------------------------------------------
# The matmul every tier computes
# ---------------------------------------------------------------------------------
#: weight types :func:`matmul` takes (the one list, ``ggml_types.SUPPORTED``)
MATMUL_TYPES: tuple[str, ...] = SUPPORTED


def matmul_activations(type_name: str, x) -> np.ndarray:
    """The float32 activations a matmul with ``type_name`` weights multiplies by, ``(..., cols)``.

    Float weights (F32, F16, BF16): ``x`` itself. Quantized weights: ``x`` quantized to int8 per
    :func:`act_block` values (32, or 256 for the super-block types) and decoded again, ``dy * y``
    with ``(y, dy)`` from :func:`quantize_act_q8` (``y = nearbyint(x * 127/amax)``,
    ``dy = amax/127``). So the activations carry a rounding error of at most
    ``dy/2 = amax/254`` per value, the same one every native tier has.
    """
    name = _matmul_type(type_name)
    x = np.asarray(x, dtype=np.float32)
    if name in _FLOAT_DTYPES:
        return x
    return dequantize_act_q8(*quantize_act_q8(x, act_block(name)))


def matmul_dequantized(type_name: str, w: np.ndarray, x) -> np.ndarray:
    """:func:`matmul` with the weight already dequantized, ``w (rows, cols)`` float32: the float
    product ``matmul_activations(type_name, x) @ w.T`` (the NumPy backend keeps ``w``)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.matmul(matmul_activations(type_name, x), w.T).astype(np.float32, copy=False)
    return nan_rows_of_non_finite_tokens(type_name, x, out)


def nan_rows_of_non_finite_tokens(type_name: str, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """For quantized weights, NaN in every output of a token whose activations hold a NaN or an
    Inf (``x (..., cols)``, ``out (..., rows)``, written in place and returned).

    The int8 quantization would turn a non-finite value into ordinary numbers (its block's
    ``amax`` is NaN or Inf); in float arithmetic it makes the token's outputs non-finite. The
    native tiers keep the float behaviour this way (csrc/dispatch.cpp), so a broken model never
    yields finite-looking logits, and so does the spec. Float weights need nothing: their
    product propagates NaN and Inf by itself."""
    name = _matmul_type(type_name)
    if name not in _FLOAT_DTYPES and x.size:
        bad = ~np.isfinite(x).all(axis=-1)
        if bad.any():
            out[bad] = np.float32(np.nan)
    return out


def matmul(type_name: str, raw, shape, x) -> np.ndarray:
    """``x @ W.T`` for ``W (rows, cols)`` stored as GGUF ``type_name`` bytes, exactly as every tier
    computes it: float32 ``x (n, cols)`` -> ``(n, rows)``, or ``(cols,)`` -> ``(rows,)``.

    The spec is two decodings and a float product::

        W  = dequantize(type_name, raw).reshape(rows, cols)
        xq = matmul_activations(type_name, x)      # dy * y per act_block values; x itself for F32/F16/BF16
        out = xq @ W.T                             # float32

    Why a native tier computes the same number up to float32 rounding of its sums: a group of
    G weights that share one scale (G = 32, or 16 for Q2_K/Q3_K/Q6_K) decodes as
    ``w_i = D * q_i - E`` with small unsigned integers ``q_i`` and two floats per group
    (``dequantize_q4_K``: ``D = d*sc``, ``E = dmin*m``; zero-point types such as Q4_0 have
    ``E = off * D``, ``off = 8``). With the activations ``x_i ~ dy * y_i`` of the activation block
    the group lies in (32 or 256 values, :func:`act_block`; ``y_i = nearbyint(x_i * 127/amax)``
    in -128..127, ``dy = amax/127``)::

        sum_i w_i * (dy y_i) = D dy * sum_i q_i y_i  -  E dy * sum_i y_i

    ``sum_i q_i y_i`` is a sum of at most 32 products of a byte and an int8, below 2**21 in
    magnitude: exact in int32 (and exact again in float32), which is why the native tiers
    can compute it with integer SIMD instructions and still agree with this float spec.
    For zero-point types the second term is the integer ``off * sum(y)`` folded into the same
    exact dot; for types with a real min it is the float ``E * (dy * sum(y))``. Only the
    float scaling of each group and the sum over groups round, so a tier differs from this
    spec by float32 rounding of a sum whose terms are ``|w_i| |dy y_i|`` (measured in
    tests/test_kernels.py), never by the activation quantization, which is part of the spec.
    Float weights are not quantized: ``x @ W.T`` in float32. A token whose activations hold a
    NaN or an Inf gets NaN in every output (:func:`nan_rows_of_non_finite_tokens`), as in float
    arithmetic and in the native tiers.
    """
    name = _matmul_type(type_name)
    rows, cols = (int(s) for s in shape)
    w = dequantize(name, raw, rows * cols).reshape(rows, cols)
    return matmul_dequantized(name, w, x)


def _matmul_type(type_name: str) -> str:
    name = str(type_name).upper()
    if name not in MATMUL_TYPES:
        what = "unsupported" if name in BY_NAME else "unknown"
        raise QuantError(f"{what} weight type {type_name!r} for matmul (supported: {', '.join(MATMUL_TYPES)})")
    return name


def _matmul_of(type_name: str) -> Callable[..., np.ndarray]:
    """``matmul_<type>(raw, shape, x)``: :func:`matmul` for one weight type."""
    def f(raw, shape, x) -> np.ndarray:
        return matmul(type_name, raw, shape, x)

    f.__name__ = f.__qualname__ = "matmul_" + BY_NAME[type_name].ident
    f.__doc__ = (f"``x @ W.T`` for {type_name} weights as every tier computes it: "
                 + ("``x`` not quantized" if type_name in _FLOAT_DTYPES else
                    f"``x`` quantized to int8 per {BY_NAME[type_name].block_size} values, then decoded")
                 + f", ``W`` by :func:`dequantize_{BY_NAME[type_name].ident}`. See :func:`matmul`.")
    return f


# One per weight type, named as ggml spells the type (GGMLType.ident); the numba tier's
# port of each is numba_kernels.matmul_<type>_numba.
matmul_f32 = _matmul_of("F32")
matmul_f16 = _matmul_of("F16")
matmul_bf16 = _matmul_of("BF16")
matmul_q4_0 = _matmul_of("Q4_0")
matmul_q4_1 = _matmul_of("Q4_1")
matmul_q5_0 = _matmul_of("Q5_0")
matmul_q5_1 = _matmul_of("Q5_1")
matmul_q8_0 = _matmul_of("Q8_0")
matmul_q2_K = _matmul_of("Q2_K")
matmul_q3_K = _matmul_of("Q3_K")
matmul_q4_K = _matmul_of("Q4_K")
matmul_q5_K = _matmul_of("Q5_K")
matmul_q6_K = _matmul_of("Q6_K")
matmul_iq4_nl = _matmul_of("IQ4_NL")
matmul_iq4_xs = _matmul_of("IQ4_XS")

#: type name -> its ``matmul_<type>``
MATMULS: dict[str, Callable[..., np.ndarray]] = {t: globals()["matmul_" + BY_NAME[t].ident] for t in MATMUL_TYPES}


def type_table() -> list[tuple[str, int, int, bool]]:
    """(name, values per block, bytes per block, dequantize supported) for every known type."""
    return [(t.name, t.block_size, t.type_size, t.name in DEQUANT_TYPES) for t in BY_NAME.values()]
