"""Random but valid GGUF blocks of any type: one generator, :func:`random_raw`.

Quant bits are uniformly random bytes; what makes blocks *valid* and *useful* is the
scale fields, which are drawn by a mode:

* property tests of kernels (``scales="normal" | "zero" | "extreme"``): scales spread
  over the whole fp16 range, exact zeros, subnormals and the largest finite values;
* model-like weights (``rms=R``): every block's scale near one value, the offset fields
  set so the decoded values are centred on zero, and that value chosen so the decoded
  weights have a root-mean-square of about ``R`` (e.g. ``1/sqrt(cols)``, which keeps
  activations O(1) through a stack of layers).
"""
from __future__ import annotations

import numpy as np

from .. import quants
from ..ggml_types import BY_NAME, LOAD_FORMS, PANEL_FORMS

SCALE_MODES = ("normal", "zero", "extreme")

#: fp16 / float scale fields of each block type (the first one is ``d``)
SCALE_FIELDS: dict[str, tuple[str, ...]] = {
    "Q4_0": ("d",), "Q4_1": ("d", "m"), "Q5_0": ("d",), "Q5_1": ("d", "m"),
    "Q8_0": ("d",), "Q8_1": ("d",), "Q2_K": ("d", "dmin"), "Q3_K": ("d",), "Q4_K": ("d", "dmin"),
    "Q5_K": ("d", "dmin"), "Q6_K": ("d",), "Q8_K": ("d",), "IQ4_NL": ("d",), "IQ4_XS": ("d",),
}

#: rms mode, types with an offset field: (offset field, offset / d). A value decodes as
#: ``d * s * q + m`` (Q4_1, Q5_1) or ``d * s * q - dmin * mn`` (K-quants) with q uniform on
#: 0..2^bits - 1; the offset at this ratio to d puts the mean of q at zero: Q4_1's
#: m = -8 d (q in 0..15), Q5_1's -16 d (0..31), and for the K-quants, whose sub-block scale
#: s and min mn are both uniform on the same range, dmin = mean(q) * d: 1.5 (Q2_K, q in 0..3),
#: 7.5 (Q4_K), 15.5 (Q5_K).
_CENTRE: dict[str, tuple[str, float]] = {"Q4_1": ("m", -8.0), "Q5_1": ("m", -16.0), "Q2_K": ("dmin", 1.5),
                                         "Q4_K": ("dmin", 7.5), "Q5_K": ("dmin", 15.5)}
#: activation formats: their scale fields are tied to the quants (Q8_1's s, Q8_K's bsums),
#: not weights a model stores
_NOT_WEIGHTS = ("Q8_1", "Q8_K")
_FLOAT_KINDS = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
_UNIT_RMS: dict[str, float] = {}


def random_raw(type_name: str, n_elements: int, rng: np.random.Generator, scales: str = "normal",
               rms: float | None = None, cols: int | None = None) -> np.ndarray:
    """Random but valid bytes of ``n_elements`` values of type ``type_name`` (uint8, 1-D).

    Quant bits are uniformly random; scale fields are finite and drawn by ``scales``:

    * ``"normal"``: ``|d|`` log-uniform in 1e-3 .. 1e-1, random sign;
    * ``"zero"``: like normal, but each scale field is exactly ``±0`` with
      probability 1/2 (so some blocks have every scale zero), and for K-quants a
      quarter of the sub-block scale bytes are zero too;
    * ``"extreme"``: the largest finite magnitudes, the smallest normal, subnormals
      down to the smallest, random sign; never inf or nan.

    For the float types the values themselves follow the mode (``"normal"`` draws
    N(0, 1)). Q8_0/Q8_1/Q8_K quants stay in -127..127 as ggml's quantizers produce,
    Q8_1's ``s`` is ``fp16(d * sum(q))`` and Q8_K's ``bsums`` are the true sums. Q8_K's
    float32 ``d`` is kept below 2**121 in "extreme" so ``d * q`` stays finite.

    ``rms``: model-like weights instead (``scales`` must stay "normal"): ``d`` of each
    block is ``c * U(0.5, 1.5)``, the offset field (if any) centres the values on zero,
    and ``c`` is calibrated once per type so the decoded values' RMS is about ``rms``
    (float types: N(0, rms^2)). Not for the activation formats Q8_1 / Q8_K.

    ``cols``: the row length, which a panel form (``ggml_types.PANEL_FORMS``) needs: it is
    rewritten a row at a time.
    """
    name = str(type_name).upper()
    if name in LOAD_FORMS:  # a load-time form (Q4_K_R, ...): random blocks of its GGUF type, rewritten by the spec
        src = LOAD_FORMS[name]
        if name in PANEL_FORMS and not cols:
            raise quants.QuantError(f"random_raw: {name} is made a row at a time: give cols")
        return quants.repack(name, random_raw(src, n_elements, rng, scales, rms), cols or BY_NAME[src].block_size)
    if name not in _FLOAT_KINDS and name not in SCALE_FIELDS:
        what = "unsupported" if name in BY_NAME else "unknown"
        raise quants.QuantError(f"random_raw: {what} type {type_name!r} "
                                f"(supported: {', '.join([*_FLOAT_KINDS, *SCALE_FIELDS])})")
    if scales not in SCALE_MODES:
        raise quants.QuantError(f"unknown scales mode {scales!r} (use one of: {', '.join(SCALE_MODES)})")
    if rms is not None and (scales != "normal" or name in _NOT_WEIGHTS):
        raise quants.QuantError(f"random_raw: rms= makes weights: scales must be 'normal' and the type a weight "
                                f"type (got {scales!r}, {name})")
    n_bytes = BY_NAME[name].n_bytes(int(n_elements))
    if name in _FLOAT_KINDS:
        return _random_float_values(_FLOAT_KINDS[name], n_elements, rng, scales, rms)
    c = None if rms is None else rms / _unit_rms(name)
    return _blocks(name, n_bytes, rng, scales, c)


def _blocks(name: str, n_bytes: int, rng: np.random.Generator, scales: str, c: float | None) -> np.ndarray:
    """``n_bytes`` of blocks of ``name``: scale fields by mode, or model-like around ``c`` (see random_raw)."""
    raw = rng.integers(0, 256, n_bytes, dtype=np.uint8)
    b = raw.view(quants.BLOCK_DTYPES[name])
    n = len(b)
    if c is not None:
        _weight_scales(name, b, rng, c)
    else:
        for field in SCALE_FIELDS[name]:
            if name == "Q8_K":
                vals = _random_floats("f32", n, rng, scales)
                if scales == "extreme":
                    big = np.abs(vals) > np.float32(2.0 ** 120)
                    vals[big] = np.copysign(np.float32(2.0 ** 120) * rng.uniform(1, 2, big.sum()).astype(np.float32),
                                            vals[big])
            else:
                vals = _random_floats("f16", n, rng, scales)
            b[field] = vals
    if scales == "zero":
        # a quarter of the sub-block scale fields zero (for the offset-coded scales of
        # Q3_K / IQ4_XS, the stored value 32 that decodes to 0)
        if name in ("Q2_K", "Q4_K", "Q5_K", "Q6_K"):
            sc = b["scales"]
            sc[rng.random(sc.shape) < 0.25] = 0
            b["scales"] = sc
        elif name == "Q3_K":
            _zero_scales_q3_k(b, rng)
        elif name == "IQ4_XS":
            _zero_scales_iq4_xs(b, rng)
    if name in ("Q8_0", "Q8_1", "Q8_K"):
        qs = b["qs"]
        qs[qs == -128] = rng.integers(-127, 128, int((qs == -128).sum()), dtype=np.int8)
        b["qs"] = qs
        if name == "Q8_1":
            d = b["d"].astype(np.float32)
            s = d * qs.sum(axis=1, dtype=np.int32).astype(np.float32)
            # keep s finite: where d * sum(q) overflows fp16, mirror the first half of
            # the quants into the second with opposite sign, so that sum(q) = 0
            with np.errstate(over="ignore"):
                over = ~np.isfinite(s.astype(np.float16))
            qs[over, 16:] = -qs[over, :16]
            b["qs"] = qs
            b["s"] = (d * qs.sum(axis=1, dtype=np.int32).astype(np.float32)).astype(np.float16)
        if name == "Q8_K":
            b["bsums"] = qs.reshape(n, 16, 16).sum(axis=2, dtype=np.int16)
    return raw


def _weight_scales(name: str, b: np.ndarray, rng: np.random.Generator, c: float) -> None:
    """rms mode: ``d = c * U(0.5, 1.5)`` per block, the offset field centring the values."""
    d = (c * rng.uniform(0.5, 1.5, len(b))).astype(np.float16)
    b["d"] = d
    if name in _CENTRE:
        field, ratio = _CENTRE[name]
        b[field] = (d.astype(np.float32) * np.float32(ratio)).astype(np.float16)


def _unit_rms(name: str) -> float:
    """RMS of the decoded values of rms-mode blocks with ``c = 1`` (a fixed sample of 64
    super-blocks), so that ``c = rms / _unit_rms`` gives values of RMS about ``rms``."""
    if name not in _UNIT_RMS:
        n = 256 * 64
        raw = _blocks(name, BY_NAME[name].n_bytes(n), np.random.default_rng(12345), "normal", 1.0)
        x = quants.dequantize(name, raw, n).astype(np.float64)
        _UNIT_RMS[name] = float(np.sqrt(np.mean(x * x)))
    return _UNIT_RMS[name]


def _random_float_values(kind: str, n: int, rng: np.random.Generator, mode: str, rms: float | None) -> np.ndarray:
    """Bytes of ``n`` values of a float type (F32 / F16 / BF16) drawn by ``mode`` or ``rms``."""
    if rms is not None:
        vals = _encode_float(kind, rng.standard_normal(n).astype(np.float32) * np.float32(rms))
    elif mode == "normal":
        vals = _encode_float(kind, rng.standard_normal(n).astype(np.float32))
    elif mode == "zero":
        v = rng.standard_normal(n).astype(np.float32)
        v[rng.random(n) < 0.5] = 0.0
        v[rng.random(n) < 0.25] *= -1
        vals = _encode_float(kind, v)
    else:
        vals = _random_floats(kind, n, rng, mode)
    return np.ascontiguousarray(vals).view(np.uint8).reshape(-1)


def _random_floats(kind: str, n: int, rng: np.random.Generator, mode: str) -> np.ndarray:
    """``n`` finite values of float kind ``f16``/``f32``/``bf16`` (returned as that dtype's bits
    for bf16, else as the float dtype) for a scale mode."""
    # (exponent bits, mantissa bits) and the largest finite biased exponent
    ebits, mbits = {"f16": (5, 10), "f32": (8, 23), "bf16": (8, 7)}[kind]
    emax = (1 << ebits) - 2
    if mode in ("normal", "zero"):
        # typical scales: |x| log-uniform in [1e-3, 1e-1], random sign
        v = np.float32(10.0) ** rng.uniform(-3, -1, n).astype(np.float32)
        v *= rng.choice(np.array([-1, 1], dtype=np.float32), n)
        if mode == "zero":
            v[rng.random(n) < 0.5] = 0.0
            v[rng.random(n) < 0.25] *= -1  # some -0.0
        return _encode_float(kind, v)
    # extreme: bit patterns: largest exponent (incl. the max finite value), subnormals
    # (incl. the smallest), the smallest normal; random sign; never inf/nan
    cat = rng.integers(0, 5, n)
    exp = np.where(cat == 0, emax, 0)
    exp = np.where(cat == 2, 1, exp)
    mant = rng.integers(1, 1 << mbits, n, dtype=np.int64)
    mant = np.where(cat == 1, 1, mant)  # smallest subnormal
    mant = np.where(cat == 2, 0, mant)  # smallest normal
    mant = np.where(cat == 3, (1 << mbits) - 1, mant)  # largest finite, exponent set below
    exp = np.where(cat == 3, emax, exp)
    # cat 4: random subnormal (exp 0, random mantissa)
    bits = (exp.astype(np.int64) << mbits) | mant
    bits |= rng.integers(0, 2, n, dtype=np.int64) << (ebits + mbits)
    if kind == "f16":
        return bits.astype(np.uint16).view(np.float16)
    if kind == "bf16":
        return bits.astype(np.uint16)
    return bits.astype(np.uint32).view(np.float32)


def _encode_float(kind: str, v: np.ndarray) -> np.ndarray:
    if kind == "f16":
        return v.astype(np.float16)
    if kind == "f32":
        return v.astype(np.float32)
    return (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # bf16 by truncation


def _zero_scales_q3_k(b: np.ndarray, rng: np.random.Generator) -> None:
    """Set about a quarter of the Q3_K sub-block scales to 0 (stored 6-bit value 32)."""
    sc = b["scales"].copy()  # (n, 12)
    zero = rng.random((len(b), 16)) < 0.25
    for k in range(16):
        z = zero[:, k]
        lo_byte, lo_shift = (k, 0) if k < 8 else (k - 8, 4)
        sc[z, lo_byte] &= np.uint8(~(15 << lo_shift) & 0xFF)  # low 4 bits of 32: 0
        hb, hs = 8 + k % 4, 2 * (k // 4)
        sc[z, hb] = (sc[z, hb] & np.uint8(~(3 << hs) & 0xFF)) | np.uint8(2 << hs)  # top 2 bits of 32: 2
    b["scales"] = sc


def _zero_scales_iq4_xs(b: np.ndarray, rng: np.random.Generator) -> None:
    """Set about a quarter of the IQ4_XS sub-block scales to 0 (stored 6-bit value 32)."""
    lo = b["scales_l"].copy()
    hi = b["scales_h"].copy().astype(np.uint32)
    zero = rng.random((len(b), 8)) < 0.25
    for j in range(8):
        z = zero[:, j]
        lo[z, j // 2] &= np.uint8(~(15 << (4 * (j % 2))) & 0xFF)
        hi[z] = (hi[z] & ~np.uint32(3 << (2 * j))) | np.uint32(2 << (2 * j))
    b["scales_l"] = lo
    b["scales_h"] = hi.astype(np.uint16)
