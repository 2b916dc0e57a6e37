"""pyengine.quants against independent oracles.

* ``gguf.quants`` (llama.cpp's own Python package) for every type it decodes:
  F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
  IQ4_XS, and Q8_0 quantization.
* For what gguf lacks (Q8_1, Q8_K, their quantizers) a scalar loop per block written
  here straight from ggml's C reference (``quantize_row_q8_1_ref``,
  ``quantize_row_q8_K_ref`` with its ``nearest_int`` bit trick).
* A byte-offset table written here from the GGUF block structs, for the dtypes.
"""
from __future__ import annotations

import math

import gguf.quants as gq
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyengine import quants as Q
from pyengine.testing.blocks import random_raw
from pyengine.ggml_types import BY_NAME

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ("normal", "zero", "extreme")
GGUF_DEQUANT = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                "IQ4_NL", "IQ4_XS")
BLOCK_TYPES = tuple(Q.BLOCK_DTYPES)

# GGUF block sizes in bytes, from the C structs (ggml-common.h), not from pyengine.
EXPECTED_SIZES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q8_1": 36,
                  "Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "Q8_K": 292,
                  "IQ4_NL": 18, "IQ4_XS": 136}

# field -> (byte offset, numpy scalar type, count) of each block struct.
LAYOUT = {
    "Q4_0": {"d": (0, "<f2", 1), "qs": (2, "u1", 16)},
    "Q4_1": {"d": (0, "<f2", 1), "m": (2, "<f2", 1), "qs": (4, "u1", 16)},
    "Q5_0": {"d": (0, "<f2", 1), "qh": (2, "<u4", 1), "qs": (6, "u1", 16)},
    "Q5_1": {"d": (0, "<f2", 1), "m": (2, "<f2", 1), "qh": (4, "<u4", 1), "qs": (8, "u1", 16)},
    "Q8_0": {"d": (0, "<f2", 1), "qs": (2, "i1", 32)},
    "Q8_1": {"d": (0, "<f2", 1), "s": (2, "<f2", 1), "qs": (4, "i1", 32)},
    "Q4_K": {"d": (0, "<f2", 1), "dmin": (2, "<f2", 1), "scales": (4, "u1", 12), "qs": (16, "u1", 128)},
    "Q5_K": {"d": (0, "<f2", 1), "dmin": (2, "<f2", 1), "scales": (4, "u1", 12), "qh": (16, "u1", 32),
             "qs": (48, "u1", 128)},
    "Q2_K": {"scales": (0, "u1", 16), "qs": (16, "u1", 64), "d": (80, "<f2", 1), "dmin": (82, "<f2", 1)},
    "Q3_K": {"hmask": (0, "u1", 32), "qs": (32, "u1", 64), "scales": (96, "u1", 12), "d": (108, "<f2", 1)},
    "IQ4_NL": {"d": (0, "<f2", 1), "qs": (2, "u1", 16)},
    "IQ4_XS": {"d": (0, "<f2", 1), "scales_h": (2, "<u2", 1), "scales_l": (4, "u1", 4), "qs": (8, "u1", 128)},
    "Q6_K": {"ql": (0, "u1", 128), "qh": (128, "u1", 64), "scales": (192, "i1", 16), "d": (208, "<f2", 1)},
    "Q8_K": {"d": (0, "<f4", 1), "qs": (4, "i1", 256), "bsums": (260, "<i2", 16)},
}
# the fields holding floating-point scales (must be finite in valid blocks)
FLOAT_FIELDS = {name: [f for f, (_, dt, _) in lay.items() if dt[1] == "f"] for name, lay in LAYOUT.items()}


def gguf_dequant(name: str, raw: np.ndarray) -> np.ndarray:
    return np.asarray(gq.dequantize(np.asarray(raw, dtype=np.uint8), GT[name]), dtype=np.float32).reshape(-1)


def assert_bit_equal(a: np.ndarray, b: np.ndarray) -> None:
    """Same float32 values, same signs of zeros, same positions of nan."""
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def flat_field(raw_block: bytes, name: str, field: str) -> np.ndarray:
    off, dt, count = LAYOUT[name][field]
    size = np.dtype(dt).itemsize * count
    return np.frombuffer(raw_block[off:off + size], dtype=dt)


# --------------------------------------------------------------------------- layouts
def test_block_itemsizes_are_the_gguf_sizes():
    assert set(Q.BLOCK_DTYPES) == set(EXPECTED_SIZES)
    for name, size in EXPECTED_SIZES.items():
        assert Q.BLOCK_DTYPES[name].itemsize == size, name
        assert BY_NAME[name].type_size == size, name
        assert BY_NAME[name].block_size == (256 if name.endswith(("_K", "_XS")) else 32), name


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_structured_dtype_agrees_with_byte_offsets(name):
    dt = Q.BLOCK_DTYPES[name]
    assert set(dt.names) == set(LAYOUT[name])
    raw = np.random.default_rng(7).integers(0, 256, 3 * dt.itemsize, dtype=np.uint8)
    blocks = raw.view(dt)
    for i in range(3):
        one = raw[i * dt.itemsize:(i + 1) * dt.itemsize].tobytes()
        for field in dt.names:
            got = np.asarray(blocks[field][i]).reshape(-1)
            want = flat_field(one, name, field)
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=f"{name}.{field}")
            assert got.dtype == want.dtype, f"{name}.{field}"


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_block_functions_accept_structured_or_flat_blocks(name):
    raw = random_raw(name, 3 * BY_NAME[name].block_size, np.random.default_rng(1))
    f = Q.BLOCK_DEQUANTIZERS[name]
    a = f(raw.view(Q.BLOCK_DTYPES[name]))
    b = f(raw.reshape(3, -1))
    c = f(raw)
    assert a.shape == (3, BY_NAME[name].block_size)
    assert_bit_equal(a, b)
    assert_bit_equal(a, c)
    assert_bit_equal(a.reshape(-1), Q.dequantize(name, raw, a.size))


# --------------------------------------------------------------------------- hand-made blocks
def test_q4_0_hand_block():
    blk = np.zeros(1, Q.BLOCK_DTYPES["Q4_0"])
    blk["d"] = 0.5
    blk["qs"][0, 0] = 0x9F  # value 0: q=15, value 16: q=9
    blk["qs"][0, 3] = 0x08  # value 3: q=8 -> 0, value 19: q=0 -> -8
    x = Q.dequantize("Q4_0", blk.view(np.uint8), 32)
    want = np.full(32, -4.0, np.float32)  # q=0 everywhere else
    want[0], want[16], want[3], want[19] = 3.5, 0.5, 0.0, -4.0
    np.testing.assert_array_equal(x, want)


def test_q4_k_hand_block_high_sub_blocks():
    # sub-block 5 (a "high" one): sc = (b[9] & 15) | (b[1] >> 6) << 4, m = (b[9] >> 4) | (b[5] >> 6) << 4
    blk = np.zeros(1, Q.BLOCK_DTYPES["Q4_K"])
    blk["d"], blk["dmin"] = 2.0, 0.25
    sc = np.zeros(12, np.uint8)
    sc[1] = 0b10_000011  # sc[1] = 3, top bits 2 -> sc[5] high bits
    sc[5] = 0b01_000111  # m[1] = 7, top bits 1 -> m[5] high bits
    sc[9] = 0x5A  # sc[5] low = 0xA, m[5] low = 0x5
    blk["scales"] = sc
    qs = np.zeros(128, np.uint8)
    qs[64:96] = 0x30  # group 2: sub-block 4 low nibbles 0, sub-block 5 high nibbles 3
    qs[32] = 0x01  # group 1: sub-block 2 value 0 -> q = 1, sub-block 3 value 0 -> 0
    blk["qs"] = qs
    x = Q.dequantize("Q4_K", blk.view(np.uint8), 256).reshape(8, 32)
    sc5, m5 = 0xA | (2 << 4), 0x5 | (1 << 4)
    np.testing.assert_array_equal(x[5], np.float32(2.0 * sc5 * 3 - 0.25 * m5))
    np.testing.assert_array_equal(x[1], np.float32(2.0 * 3 * 0 - 0.25 * 7))
    assert x[2, 0] == 0 and np.all(x[2] == 0)  # sub-block 2: sc = 0 (b[2] = 0), m = 0
    sc_all, m_all = Q.unpack_scales_k4(sc[None])
    assert list(sc_all[0]) == [0, 3, 0, 0, 0, sc5, 0, 0]
    assert list(m_all[0]) == [0, 7, 0, 0, 0, m5, 0, 0]


def test_q2_k_hand_block():
    # value 128c + 32j + l sits in bits 2j..2j+1 of qs[32c + l]; sub-block k = value // 16
    blk = np.zeros(1, Q.BLOCK_DTYPES["Q2_K"])
    blk["d"], blk["dmin"] = 0.5, 0.25
    sc = np.zeros(16, np.uint8)
    sc[2] = 0x3A  # sub-block 2 (values 32..47): scale 10, min 3
    sc[13] = 0xF1  # sub-block 13 (values 208..223): scale 1, min 15
    blk["scales"] = sc
    qs = np.zeros(64, np.uint8)
    qs[5] = 0b0000_0100  # c=0, l=5, j=1: value 37 -> q = 1
    qs[32 + 16] = 0b1100_0000  # c=1, l=16, j=3: value 128 + 96 + 16 = 240 -> q = 3 (sub-block 15: all zero)
    qs[32 + 17] = 0b0011_0000  # c=1, l=17, j=2: value 128 + 64 + 17 = 209 -> q = 3
    blk["qs"] = qs
    x = Q.dequantize("Q2_K", blk.view(np.uint8), 256)
    want = np.zeros(256, np.float32)
    want[32:48] = -0.25 * 3
    want[37] = 0.5 * 10 * 1 - 0.25 * 3
    want[208:224] = -0.25 * 15
    want[209] = 0.5 * 1 * 3 - 0.25 * 15
    np.testing.assert_array_equal(x, want)


def test_q3_k_hand_block():
    # scale k: low nibble of b[k] (k < 8) or high nibble of b[k-8]; top bits in b[8 + k%4] at 2*(k//4)
    blk = np.zeros(1, Q.BLOCK_DTYPES["Q3_K"])
    blk["d"] = 2.0
    sc = np.zeros(12, np.uint8)
    sc[:8] = 0x00
    sc[8:] = 0b10_10_10_10  # every top pair = 2: u = 32 + low -> sc = low nibble
    sc[1] = 0x53  # scale 1 = 3, scale 9 = 5
    sc[9] = 0b11_10_10_10  # scale 13 (k//4 = 3, k%4 = 1): top bits 3 -> u = 48 + 0 -> sc = 16
    blk["scales"] = sc
    qs = np.zeros(64, np.uint8)
    qs[16] = 0b11  # c=0, j=0, l=16: value 16 (sub-block 1), low2 = 3
    qs[32 + 16] = 0b10_00_00_00  # c=1, j=3, l=16: value 240 (sub-block 15, sc 0)
    qs[32 + 8] = 0b01_00  # c=1, j=1, l=8: value 168 (sub-block 10, sc 0)
    qs[32 + 16 + 0] |= 0b00_00_01_00  # c=1, j=1, l=16: value 176 (sub-block 11, sc 0)
    blk["qs"] = qs
    hm = np.zeros(32, np.uint8)
    hm[16] = 1 << 0  # value 16: hbit set -> q = 3 | 4 = 7 -> 3
    hm[0] = 1 << 4  # value 128 (sub-block 8, sc 0)
    hm[2] = 1 << 1  # value 34 (sub-block 2, sc 0)
    hm[17] = 1 << 4  # value 145: sub-block 9 (sc 5), low2 0 + hbit -> q - 4 = 0
    hm[18] = 1 << 5  # value 178 -> sub-block 11, sc 0
    hm[20] = 1 << 6  # value 212 -> sub-block 13 (sc 16), low2 0 -> 0
    blk["hmask"] = hm
    x = Q.dequantize("Q3_K", blk.view(np.uint8), 256)
    scales = Q.unpack_scales_q3_K(sc[None])[0]
    want_sc = np.zeros(16, np.int8)
    want_sc[1], want_sc[9], want_sc[13] = 3, 5, 16
    np.testing.assert_array_equal(scales, want_sc)
    # q - 4 where no bit is set anywhere: -4
    want = np.repeat(2.0 * want_sc.astype(np.float32), 16) * np.float32(-4)
    want[16] = 2.0 * 3 * 3
    want[145] = 0.0
    want[212] = 0.0
    np.testing.assert_array_equal(x, want.astype(np.float32))


def test_iq4_hand_blocks():
    nl = np.zeros(1, Q.BLOCK_DTYPES["IQ4_NL"])
    nl["d"] = 0.5
    nl["qs"][0, 0] = 0xF0  # value 0: index 0 -> -127, value 16: index 15 -> 113
    x = Q.dequantize("IQ4_NL", nl.view(np.uint8), 32)
    want = np.full(32, 0.5 * -127, np.float32)
    want[16] = 0.5 * 113
    np.testing.assert_array_equal(x, want)
    xs = np.zeros(1, Q.BLOCK_DTYPES["IQ4_XS"])
    xs["d"] = 1.0
    xs["scales_l"] = [0x21, 0, 0, 0xF0]  # sub-block 0: low 1, 1: low 2, 7: low 15
    xs["scales_h"] = (2 << 0) | (1 << 2) | (3 << 14)  # top bits: sb0 2, sb1 1, sb7 3
    qs = np.full(128, 0x88, np.uint8)  # index 8 -> level 1
    xs["qs"] = qs
    sc = Q.unpack_scales_iq4_xs(xs["scales_h"], xs["scales_l"])[0]
    assert list(sc) == [1 + 32 - 32, 2 + 16 - 32, -32, -32, -32, -32, -32, 15 + 48 - 32]
    x = Q.dequantize("IQ4_XS", xs.view(np.uint8), 256).reshape(8, 32)
    np.testing.assert_array_equal(x, np.repeat(sc.astype(np.float32), 32).reshape(8, 32))


# --------------------------------------------------------------------------- dequantize vs gguf
@SETTINGS
@given(name=st.sampled_from(GGUF_DEQUANT), n_blocks=st.integers(1, 4), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**32 - 1))
def test_dequantize_matches_gguf_on_random_valid_blocks(name, n_blocks, mode, seed):
    t = BY_NAME[name]
    n = n_blocks * (t.block_size if t.block_size > 1 else 64)
    raw = random_raw(name, n, np.random.default_rng(seed), mode)
    got = Q.dequantize(name, raw, n)
    assert got.shape == (n,)
    assert np.isfinite(got).all()
    assert_bit_equal(got, gguf_dequant(name, raw))


@SETTINGS
@given(name=st.sampled_from(GGUF_DEQUANT), data=st.data())
def test_dequantize_matches_gguf_on_arbitrary_bytes(name, data):
    t = BY_NAME[name]
    n_blocks = data.draw(st.integers(1, 3 if t.block_size > 1 else 48))
    raw = np.frombuffer(data.draw(st.binary(min_size=n_blocks * t.type_size, max_size=n_blocks * t.type_size)),
                        dtype=np.uint8)
    if name in Q.BLOCK_DTYPES:
        blocks = raw.view(Q.BLOCK_DTYPES[name])
        for f in FLOAT_FIELDS[name]:
            assume(np.isfinite(blocks[f].astype(np.float32)).all())
    got = Q.dequantize(name, raw, n_blocks * t.block_size)
    if name not in Q.BLOCK_DTYPES:
        assume(np.isfinite(got).all())
    assert_bit_equal(got, gguf_dequant(name, raw))


def scalar_q8_dequant(name: str, raw: np.ndarray) -> np.ndarray:
    """Q8_1 / Q8_K decoded one value at a time from the byte offsets: x = d * q."""
    off_d, dt_d, _ = LAYOUT[name]["d"]
    off_q, _, count = LAYOUT[name]["qs"]
    size = EXPECTED_SIZES[name]
    out = []
    for i in range(len(raw) // size):
        blk = raw[i * size:(i + 1) * size].tobytes()
        d = np.frombuffer(blk, dt_d, 1, off_d)[0].astype(np.float32)
        for j in range(count):
            out.append(d * np.float32(np.frombuffer(blk, np.int8, 1, off_q + j)[0]))
    return np.array(out, dtype=np.float32)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["Q8_1", "Q8_K"]), n_blocks=st.integers(1, 3), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**32 - 1))
def test_dequantize_q8_1_q8_k_match_scalar_oracle(name, n_blocks, mode, seed):
    n = n_blocks * BY_NAME[name].block_size
    raw = random_raw(name, n, np.random.default_rng(seed), mode)
    got = Q.dequantize(name, raw, n)
    assert np.isfinite(got).all()
    assert_bit_equal(got, scalar_q8_dequant(name, raw))


# --------------------------------------------------------------------------- input forms, copies
def test_dequantize_accepts_bytes_memoryview_and_memmap(tmp_path):
    raw = random_raw("Q6_K", 4 * 256, np.random.default_rng(3))
    ref = Q.dequantize("Q6_K", raw, 1024)
    p = tmp_path / "w.bin"
    p.write_bytes(b"\0" * 10 + raw.tobytes())
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    assert_bit_equal(Q.dequantize("Q6_K", mm[10:], 1024), ref)  # read-only, odd offset
    assert_bit_equal(Q.dequantize("q6_k", raw.tobytes(), 1024), ref)
    assert_bit_equal(Q.dequantize("Q6_K", memoryview(raw.tobytes()), 1024), ref)
    assert_bit_equal(Q.dequantize("Q6_K", raw.reshape(4, 210), 1024), ref)


def test_f32_is_not_copied_and_big_inputs_are_chunked_consistently():
    raw = random_raw("F32", 64, np.random.default_rng(4))
    out = Q.dequantize("F32", raw, 64)
    assert np.shares_memory(out, raw)
    # more blocks than one internal chunk: chunk seams must not show
    n = (Q._CHUNK_VALUES // 32) * 2 + 5
    raw = random_raw("Q8_0", n * 32, np.random.default_rng(5))
    assert_bit_equal(Q.dequantize("Q8_0", raw, n * 32), Q.dequantize_q8_0(raw).reshape(-1))


# --------------------------------------------------------------------------- errors
def one_line_error(fn, *args, match: str):
    with pytest.raises(ValueError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_errors():
    raw = np.zeros(144, np.uint8)
    msg = one_line_error(Q.dequantize, "Q9_X", raw, 256, match="unknown type 'Q9_X'")
    assert "Q4_K" in msg and "F32" in msg  # lists the supported ones
    one_line_error(Q.dequantize, "IQ2_XXS", np.zeros(66, np.uint8), 256, match="unsupported type 'IQ2_XXS'")
    msg = one_line_error(Q.dequantize, "Q4_K", raw, 512, match="need 288 bytes, got 144")
    one_line_error(Q.dequantize, "Q4_K", raw[:-1], 256, match="need 144 bytes, got 143")
    one_line_error(Q.dequantize, "Q4_K", raw, 100, match="100 is not a multiple of the block size 256")
    one_line_error(Q.dequantize, "Q8_0", np.zeros(34, np.uint8), 33, match="not a multiple of the block size 32")
    one_line_error(Q.dequantize, "F16", np.zeros(6, np.uint8), 4, match="need 8 bytes, got 6")
    one_line_error(Q.quantize_q8_0, np.zeros(33, np.float32), match="multiple of 32")
    one_line_error(Q.quantize_q8_1, np.zeros(48, np.float32), match="multiple of 32")
    one_line_error(Q.quantize_q8_K, np.zeros(255, np.float32), match="multiple of 256")
    rng = np.random.default_rng(0)
    one_line_error(random_raw, "Q4_K", 256, rng, "huge", match="scales mode 'huge'")
    one_line_error(random_raw, "Q4_K", 100, rng, match="multiple of the block size")
    one_line_error(random_raw, "IQ2_XXS", 256, rng, match="unsupported type 'IQ2_XXS'")


# --------------------------------------------------------------------------- quantizers
def floats32(n: int, lo: float = -1e5, hi: float = 1e5):
    return hnp.arrays(np.float32, n, elements=st.floats(lo, hi, width=32))


def roundf(v: np.float32) -> int:
    """C roundf on a float32 value (float64 |v| + 0.5 is exact here)."""
    a = math.floor(abs(float(v)) + 0.5)
    return int(math.copysign(a, float(v)))


def nearest_int(f: np.float32) -> int:
    """ggml's nearest_int: add 1.5 * 2**23 in float32 and read the low mantissa bits."""
    val = np.array([np.float32(f) + np.float32(12582912.0)], dtype=np.float32)
    return int((val.view(np.int32)[0] & 0x007FFFFF) - 0x00400000)


def scalar_q8_1(x: np.ndarray) -> bytes:
    out = bytearray()
    for blk in x.reshape(-1, 32):
        amax = np.float32(0)
        for v in blk:
            amax = max(amax, np.float32(abs(v)))
        d = np.float32(amax / np.float32(127))
        inv = np.float32(1) / d if d else np.float32(0)
        qs = [roundf(np.float32(v * inv)) for v in blk]
        with np.errstate(over="ignore"):
            s = np.float16(np.float32(sum(qs)) * d)
            out += np.float16(d).tobytes() + s.tobytes()
        out += np.array(qs, np.int8).tobytes()
    return bytes(out)


def scalar_q8_k(x: np.ndarray) -> bytes:
    out = bytearray()
    for blk in x.reshape(-1, 256):
        amax, mx = np.float32(0), np.float32(0)
        for v in blk:
            if abs(v) > amax:
                amax, mx = np.float32(abs(v)), v
        if not amax:
            out += bytes(4 + 256 + 32)
            continue
        iscale = np.float32(np.float32(-127) / mx)
        qs = [min(127, nearest_int(np.float32(iscale * v))) for v in blk]
        bsums = [sum(qs[16 * k:16 * k + 16]) for k in range(16)]
        out += np.float32(np.float32(1) / iscale).tobytes()
        out += np.array(qs, np.int8).tobytes() + np.array(bsums, "<i2").tobytes()
    return bytes(out)


def test_roundings_at_exact_halves():
    # amax 127 makes d = 1 (Q8_0, ties away from zero) and iscale = -1 (Q8_K, ties to even)
    x = np.zeros(256, np.float32)
    x[0] = 127
    x[1:7] = [2.5, -2.5, 0.5, 1.5, -0.5, 3.5]
    q0 = Q.quantize_q8_0(x).view(Q.BLOCK_DTYPES["Q8_0"])
    assert q0["d"][0] == 1.0
    assert list(q0["qs"][0, :7]) == [127, 3, -3, 1, 2, -1, 4]
    qk = Q.quantize_q8_K(x).view(Q.BLOCK_DTYPES["Q8_K"])
    assert qk["d"][0] == -1.0
    assert list(qk["qs"][0, :7]) == [-127, -2, 2, 0, -2, 0, -4]
    assert qk["bsums"][0, 0] == -127 - 2 + 2 + 0 - 2 + 0 - 4


def near_ties(rng: np.random.Generator, n_blocks: int, block: int) -> np.ndarray:
    """Values within 2 ulps of (k + 1/2) * d: where x*(1/d), x/d and the tie rule all matter."""
    d = (10.0 ** rng.uniform(-3, 1, n_blocks)).astype(np.float32)
    x = ((rng.integers(-126, 126, (n_blocks, block)) + 0.5) * d[:, None]).astype(np.float32)
    x = (x.view(np.int32) + rng.integers(-2, 3, x.shape).astype(np.int32)).view(np.float32)
    x[:, 0] = np.float32(127) * d * rng.choice(np.array([-1, 1], np.float32), n_blocks)
    return x.reshape(-1)


def test_quantize_q8_0_near_ties_matches_gguf():
    x = near_ties(np.random.default_rng(21), 256, 32)
    np.testing.assert_array_equal(Q.quantize_q8_0(x), gq.quantize(x.reshape(1, -1), GT.Q8_0).reshape(-1))
    assert Q.quantize_q8_1(x[:32 * 16]).tobytes() == scalar_q8_1(x[:32 * 16])


def test_quantize_q8_k_near_ties_matches_ggml_reference_loop():
    x = near_ties(np.random.default_rng(22), 6, 256)
    assert Q.quantize_q8_K(x).tobytes() == scalar_q8_k(x)


@SETTINGS
@given(data=st.data(), n_blocks=st.integers(1, 4))
def test_quantize_q8_0_matches_gguf_and_round_trips(data, n_blocks):
    scale = data.draw(st.sampled_from([1e-30, 1e-6, 1.0, 1e3]))
    x = data.draw(floats32(32 * n_blocks, -1e3, 1e3)) * np.float32(scale)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1)
    assume(np.all((amax == 0) | (amax > 1e-30)))  # below ~127*FLT_MIN, 1/d overflows (undefined in ggml)
    got = Q.quantize_q8_0(x)
    assert got.dtype == np.uint8 and got.shape == (34 * n_blocks,)
    np.testing.assert_array_equal(got, gq.quantize(x.reshape(1, -1), GT.Q8_0).reshape(-1))
    # |x - d16*q| <= d/2 (rounding) + 127*|d - d16| (fp16 scale) + float32 rounding
    xb = x.reshape(-1, 32)
    d32 = np.abs(xb).max(axis=1) / np.float32(127)
    d16 = d32.astype(np.float16).astype(np.float32)
    bound = 0.5 * d32 + 127 * np.abs(d32 - d16) + 2.0**-20 * 127 * d32
    err = np.abs(Q.dequantize("Q8_0", got, x.size).reshape(-1, 32) - xb)
    assert np.all(err <= bound[:, None])
    assert np.all(got.view(Q.BLOCK_DTYPES["Q8_0"])["qs"] >= -127)


@settings(max_examples=40, deadline=None)
@given(x=floats32(64), zero_block=st.booleans())
def test_quantize_q8_1_matches_ggml_reference_loop(x, zero_block):
    if zero_block:
        x = x.copy()
        x[:32] = 0
    amax = np.abs(x.reshape(-1, 32)).max(axis=1)
    assume(np.all((amax == 0) | (amax > 1e-30)))  # below ~127*FLT_MIN, 1/d overflows (undefined in ggml)
    got = Q.quantize_q8_1(x)
    assert got.tobytes() == scalar_q8_1(x)
    b = got.view(Q.BLOCK_DTYPES["Q8_1"])
    np.testing.assert_array_equal(b["qs"], Q.quantize_q8_0(x).view(Q.BLOCK_DTYPES["Q8_0"])["qs"])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n_blocks=st.integers(1, 2))
def test_quantize_q8_k_matches_ggml_reference_loop_and_round_trips(data, n_blocks):
    scale = data.draw(st.sampled_from([1e-20, 1e-3, 1.0, 1e4]))
    x = data.draw(floats32(256 * n_blocks, -1e3, 1e3)) * np.float32(scale)
    if data.draw(st.booleans()):
        x[:256] = 0  # an all-zero block
    xb = x.reshape(-1, 256)
    assume(np.all((np.abs(xb).max(axis=1) == 0) | (np.abs(xb).max(axis=1) > 1e-30)))
    got = Q.quantize_q8_K(x)
    assert got.dtype == np.uint8 and got.shape == (292 * n_blocks,)
    assert got.tobytes() == scalar_q8_k(x)
    b = got.view(Q.BLOCK_DTYPES["Q8_K"])
    np.testing.assert_array_equal(b["bsums"], b["qs"].astype(np.int32).reshape(-1, 16, 16).sum(axis=2))
    assert np.all(b["qs"] >= -127)
    d = np.abs(b["d"])
    err = np.abs(Q.dequantize("Q8_K", got, x.size).reshape(-1, 256) - xb)
    amax = np.abs(xb).max(axis=1)
    assert np.all(err <= (0.5 * d + 2.0**-18 * amax)[:, None])
    nz = amax > 0
    # the first largest-magnitude value becomes -127
    first = np.abs(xb).argmax(axis=1)
    assert np.all(b["qs"][nz, first[nz]] == -127)


# --------------------------------------------------------------------------- random_raw
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", Q.DEQUANT_TYPES)
def test_random_raw_is_valid(name, mode):
    t = BY_NAME[name]
    n = 64 * t.block_size
    raw = random_raw(name, n, np.random.default_rng(11), mode)
    assert raw.dtype == np.uint8 and raw.shape == (t.n_bytes(n),)
    again = random_raw(name, n, np.random.default_rng(11), mode)
    np.testing.assert_array_equal(raw, again)  # reproducible from the seed
    x = Q.dequantize(name, raw, n)
    assert np.isfinite(x).all()
    if name in Q.BLOCK_DTYPES:
        b = raw.view(Q.BLOCK_DTYPES[name])
        scales = np.concatenate([b[f].astype(np.float64).reshape(-1) for f in FLOAT_FIELDS[name]])
        values = b[FLOAT_FIELDS[name][0]].astype(np.float64)  # d: its magnitudes characterise the mode
    else:
        scales = values = x.astype(np.float64)
    assert np.isfinite(scales).all()
    if mode == "normal":
        if name in Q.BLOCK_DTYPES:
            assert np.all((np.abs(values) >= 9e-4) & (np.abs(values) <= 0.11))
        assert np.count_nonzero(values == 0) == 0
    if mode == "zero":
        assert 0 < np.count_nonzero(values == 0) < values.size
    if mode == "extreme":
        finfo = {"F32": np.finfo(np.float32), "F16": np.finfo(np.float16), "BF16": None}.get(name)
        if name in Q.BLOCK_DTYPES:
            finfo = np.finfo(np.float32) if name == "Q8_K" else np.finfo(np.float16)
        tiny = np.float64(finfo.smallest_normal) if finfo else 2.0**-126
        assert np.any((values != 0) & (np.abs(values) < tiny))  # subnormals
        top = 2.0**120 if name == "Q8_K" else (float(finfo.max) / 2 if finfo else 1e38)
        assert np.any(np.abs(values) >= top)
    if name in ("Q8_0", "Q8_1", "Q8_K"):
        assert np.all(b["qs"] >= -127)
    if name == "Q8_1":
        want = (b["d"].astype(np.float32) * b["qs"].astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float16)
        np.testing.assert_array_equal(b["s"], want)
    if name == "Q8_K":
        np.testing.assert_array_equal(b["bsums"], b["qs"].astype(np.int32).reshape(-1, 16, 16).sum(axis=2))
        assert np.all(np.abs(b["d"]) < 2.0**121)


def test_random_raw_zero_mode_zeroes_whole_blocks_and_sub_scales():
    # some blocks with every scale zero, but not all
    raw = random_raw("Q4_K", 64 * 256, np.random.default_rng(12), "zero")
    b = raw.view(Q.BLOCK_DTYPES["Q4_K"])
    both = (b["d"] == 0) & (b["dmin"] == 0)
    assert 0 < both.sum() < 64
    assert np.any(Q.dequantize("Q4_K", raw, 64 * 256).reshape(64, 256)[both] == 0)
    sc, m = Q.unpack_scales_k4(b["scales"])
    assert np.any(sc == 0)


@pytest.mark.parametrize("name", ["Q3_K", "IQ4_XS"])
def test_random_raw_zero_mode_zeroes_offset_coded_scales(name):
    b = random_raw(name, 64 * 256, np.random.default_rng(13), "zero").view(Q.BLOCK_DTYPES[name])
    sc = Q.unpack_scales_q3_K(b["scales"]) if name == "Q3_K" else Q.unpack_scales_iq4_xs(b["scales_h"], b["scales_l"])
    frac = float(np.mean(sc == 0))
    assert 0.15 < frac < 0.4, frac  # about a quarter (1/64 would be chance)


# --------------------------------------------------------------------------- native activation spec
def scalar_act_q8(x: np.ndarray, block: int) -> tuple[list[int], list[float]]:
    """The native tiers' activation quantization, one value at a time (kernels/cpu: pack_act)."""
    ys, dys = [], []
    for blk in x.reshape(-1, block):
        amax = np.float32(0)
        for v in blk:
            amax = max(amax, np.float32(abs(v)))
        if not amax >= np.float32(1e-30):
            ys += [0] * block
            dys.append(0.0)
            continue
        idv = np.float32(np.float32(127) / amax)
        ys += [int(min(127, max(-128, np.rint(np.float32(v * idv))))) for v in blk]
        dys.append(float(np.float32(amax / np.float32(127))))
    return ys, dys


@settings(max_examples=40, deadline=None)
@given(data=st.data(), block=st.sampled_from([32, 256]), n_blocks=st.integers(1, 3))
def test_quantize_act_q8_matches_scalar_loop(data, block, n_blocks):
    x = data.draw(floats32(block * n_blocks, -1e4, 1e4))
    if data.draw(st.booleans()):
        x[:block] = 0.0  # an all-zero block
    y, dy = Q.quantize_act_q8(x, block)
    ys, dys = scalar_act_q8(x, block)
    assert y.dtype == np.int8 and dy.dtype == np.float32 and dy.shape == (n_blocks,)
    assert y.tolist() == ys and dy.tolist() == dys
    np.testing.assert_array_equal(Q.dequantize_act_q8(y, dy), np.repeat(dy, block) * y.astype(np.float32))


def test_quantize_act_q8_rounds_ties_to_even():
    x = np.zeros(32, np.float32)
    x[0] = 127.0  # amax 127: id = 1, values are their own quants
    x[1], x[2], x[3] = 0.5, 1.5, -2.5
    y, dy = Q.quantize_act_q8(x)
    assert dy[0] == 1.0 and list(y[:4]) == [127, 0, 2, -2]


def test_act_block_is_the_weight_types_block():
    """One int8 scale per 32 activations for the 32-element types, per 256 for the super-block
    ones (llama.cpp's Q8_0 / Q8_K), so one outlier costs a 256-block its small values' levels."""
    assert {t: Q.act_block(t) for t in Q.MATMUL_TYPES if BY_NAME[t].block_size > 1} == {
        "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "IQ4_NL": 32,
        "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256}
    x = np.zeros(256, np.float32)
    x[0], x[40] = 100.0, 0.3  # 0.3 is 38 levels of its own 32-block, none of the 256-block
    assert Q.matmul_activations("Q4_0", x)[40] != 0 and Q.matmul_activations("Q4_K", x)[40] == 0
    with pytest.raises(Q.QuantError, match="neither"):
        Q.quantize_act_q8(x, 64)


# --------------------------------------------------------------------------- the matmul spec
def test_matmul_spec_multiplies_by_the_quantized_activations():
    """One Q8_0 block by hand: d = 1, q = (2, 5, 0, ...), x = (1, 0.3, 0, ...). amax = 1, so
    y = (127, nearbyint(0.3 * 127) = 38, 0, ...) and dy = 1/127: the spec's answer is
    (2*127 + 5*38) / 127 = 444/127 = 3.49606..., not the unquantized 2*1 + 5*0.3 = 3.5."""
    blk = np.zeros(1, Q.BLOCK_DTYPES["Q8_0"])
    blk["d"] = 1.0
    blk["qs"][0, :2] = (2, 5)
    x = np.zeros(32, np.float32)
    x[:2] = (1.0, 0.3)
    got = Q.matmul("Q8_0", blk.view(np.uint8), (1, 32), x)
    assert got.shape == (1,) and got.dtype == np.float32
    assert abs(float(got[0]) - 444 / 127) <= 4 * float(np.finfo(np.float32).eps)
    assert abs(float(got[0]) - 3.5) > 3e-3
    # and the same through the per-type function and a 2-D x
    np.testing.assert_array_equal(Q.matmul_q8_0(blk.view(np.uint8), (1, 32), x[None]), got[None])


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_matmul_spec_does_not_quantize_float_weights_activations(name):
    rng = np.random.default_rng(4)
    raw = random_raw(name, 5 * 40, rng)
    x = rng.standard_normal((3, 40)).astype(np.float32)  # 40: not even a whole Q8 block
    w = Q.dequantize(name, raw, 5 * 40).reshape(5, 40)
    np.testing.assert_array_equal(Q.matmul(name, raw, (5, 40), x), np.matmul(x, w.T))


@pytest.mark.parametrize("name", Q.MATMUL_TYPES)
def test_matmul_spec_per_type_names(name):
    """One name per thing: ``dequantize_<t>`` and ``matmul_<t>`` with ggml's spelling of the type."""
    ident = BY_NAME[name].ident
    assert ident == (name.lower()[:-2] + "_K" if name.endswith("_K") else name.lower())
    f = Q.MATMULS[name]
    assert f is getattr(Q, "matmul_" + ident) and f.__name__ == "matmul_" + ident
    if name in Q.BLOCK_DEQUANTIZERS:
        assert Q.BLOCK_DEQUANTIZERS[name] is getattr(Q, "dequantize_" + ident)
    rng = np.random.default_rng(5)
    cols = 2 * BY_NAME[name].block_size if BY_NAME[name].block_size > 1 else 64
    raw = random_raw(name, 3 * cols, rng)
    x = rng.standard_normal((2, cols)).astype(np.float32)
    xq = Q.matmul_activations(name, x)
    if BY_NAME[name].block_size > 1:  # quantized weights: x rounded to int8 per block of the type
        np.testing.assert_array_equal(xq, Q.dequantize_act_q8(*Q.quantize_act_q8(x, BY_NAME[name].block_size)))
        assert not np.array_equal(xq, x)
    w = Q.dequantize(name, raw, 3 * cols).reshape(3, cols)
    np.testing.assert_array_equal(f(raw, (3, cols), x), np.matmul(xq, w.T))


def test_matmul_spec_rejects_activation_and_unknown_types():
    for name in ("Q8_K", "Q8_1", "IQ2_XXS", "Q9_9"):
        with pytest.raises(Q.QuantError, match="for matmul"):
            Q.matmul(name, np.zeros(292, np.uint8), (1, 256), np.zeros(256, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_matmul_spec_keeps_non_finite_tokens_non_finite(bad):
    """int8 quantization would turn NaN/Inf into numbers; the spec (like the native tiers) makes
    every output of such a token NaN and leaves the other tokens alone."""
    rng = np.random.default_rng(6)
    raw = random_raw("Q4_K", 4 * 256, rng)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    good = Q.matmul("Q4_K", raw, (4, 256), x)
    x[1, 40] = bad
    got = Q.matmul("Q4_K", raw, (4, 256), x)
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[0], good[0])


# --------------------------------------------------------------------------- Q3_K_R (a load-time form)
def _q3k_with_one_value(v: int, low: int, high: int) -> np.ndarray:
    """A Q3_K block whose value v has low 2 bits ``low`` and 3rd bit ``high``, every other value 0."""
    raw = np.zeros(110, np.uint8)
    c, j, l = v // 128, (v % 128) // 32, v % 32
    raw[32 + 32 * c + l] = low << (2 * j)
    raw[l] = high << (4 * c + j)
    return raw


@pytest.mark.parametrize("v,p,k", [(0, 0, 0), (16, 16, 0), (5, 1, 1), (36, 4, 1), (100, 12, 1), (200, 8, 2), (255, 31, 3)])
def test_q3_K_R_puts_each_value_where_the_layout_says(v, p, k):
    """Hand-worked cases of repack_q3_K's table: value v = 128c + 16g + 4k + b sits in byte p of
    half c with p % 4 = b and group g = 2 (L % 4) + L // 4, L = p // 4; its low bits in bit pair
    k of ql[32c + p], its 3rd bit in hb[p], bit 2, 3, 6, 7 (half 0) or 0, 1, 4, 5 (half 1) for
    k = 0..3."""
    c = v // 128
    r = Q.repack_q3_K(_q3k_with_one_value(v, 2, 0))
    want = np.zeros(110, np.uint8)
    want[32 + 32 * c + p] = 2 << (2 * k)
    np.testing.assert_array_equal(r, want)
    r = Q.repack_q3_K(_q3k_with_one_value(v, 0, 1))
    want = np.zeros(110, np.uint8)
    want[p] = 1 << ([2, 3, 6, 7] if c == 0 else [0, 1, 4, 5])[k]
    np.testing.assert_array_equal(r, want)


@pytest.mark.parametrize("v,p,k", [(0, 0, 0), (16, 16, 0), (36, 4, 1), (200, 8, 2), (255, 31, 3)])
def test_q2_K_R_puts_each_value_where_the_layout_says(v, p, k):
    """Q2_K_R's ql is Q3_K_R's (the same hand-worked cases); its scale bytes of half c sit at
    8c + L for group 2 (L % 4) + L // 4: Q2_K scale byte 8c + g at 8c + 4 (g % 2) + g // 2."""
    c, j, l = v // 128, (v % 128) // 32, v % 32
    raw = np.zeros(84, np.uint8)
    raw[16 + 32 * c + l] = 3 << (2 * j)
    want = np.zeros(84, np.uint8)
    want[16 + 32 * c + p] = 3 << (2 * k)
    np.testing.assert_array_equal(Q.repack_q2_K(raw), want)
    for g, at in [(0, 0), (1, 4), (2, 1), (5, 6), (7, 7), (8, 8), (11, 13), (14, 11)]:
        raw = np.zeros(84, np.uint8)
        raw[g] = 0xA7
        assert np.flatnonzero(Q.repack_q2_K(raw)).tolist() == [at], g


@pytest.mark.parametrize("t,form", [("Q2_K", "Q2_K_R"), ("Q3_K", "Q3_K_R"), ("Q4_K", "Q4_K_R"), ("Q5_K", "Q5_K_R"),
                                    ("Q6_K", "Q6_K_R"), ("Q5_0", "Q5_0_R"), ("Q5_1", "Q5_1_R"),
                                    ("IQ4_XS", "IQ4_XS_R")])
@pytest.mark.parametrize("mode", MODES)
def test_load_form_round_trip_and_values(t, form, mode):
    ident = BY_NAME[t].ident
    bb = BY_NAME[t].type_size
    raw = random_raw(t, 256 * 30, np.random.default_rng(4), scales=mode)
    r = getattr(Q, "repack_" + ident)(raw)
    assert r.dtype == np.uint8 and r.shape == raw.shape
    np.testing.assert_array_equal(getattr(Q, "unrepack_" + ident)(r), raw)
    keep = {"Q3_K": slice(96, 110), "Q2_K": slice(80, 84), "Q4_K": slice(0, 16), "Q5_K": slice(0, 16),
            "Q6_K": slice(208, 210), "Q5_0": slice(0, 2), "Q5_1": slice(0, 4), "IQ4_XS": slice(0, 8)}[t]  # d etc.
    np.testing.assert_array_equal(r.reshape(-1, bb)[:, keep], raw.reshape(-1, bb)[:, keep])
    n = raw.size // bb * BY_NAME[t].block_size
    assert_bit_equal(Q.dequantize(form, r, n), Q.dequantize(t, raw, n))


@pytest.mark.parametrize("v,m,p,nib", [(0, 0, 0, 0), (1, 0, 1, 0), (4, 1, 0, 0), (16, 0, 0, 1), (31, 3, 3, 1),
                                       (32, 0, 4, 0), (100, 1, 12, 0), (255, 3, 31, 1)])
def test_q4_K_R_puts_each_value_where_the_layout_says(v, m, p, nib):
    """Hand-worked cases: value v of Q4_K (group l = v // 32, element e = v % 32) goes to chunk
    m = (e // 4) % 4, byte p = 4 l + e % 4, nibble e // 16 of Q4_K_R."""
    c, s, e = v // 64, (v // 32) % 2, v % 32
    raw = np.zeros(144, np.uint8)
    raw[16 + 32 * c + e] = 9 << (4 * s)
    want = np.zeros(144, np.uint8)
    want[16 + 32 * m + p] = 9 << (4 * nib)
    np.testing.assert_array_equal(Q.repack_q4_K(raw), want)


@pytest.mark.parametrize("v,m,p,nib", [(0, 0, 0, 0), (1, 0, 1, 0), (4, 1, 0, 0), (16, 0, 0, 1), (31, 3, 3, 1),
                                       (32, 0, 4, 0), (100, 1, 12, 0), (255, 3, 31, 1)])
def test_q5_K_R_puts_each_value_where_the_layout_says(v, m, p, nib):
    """Q5_K_R's nibbles go where Q4_K_R's do (the same hand-worked cases, 48 bytes in), and the
    5th bit of value v (bit v // 32 of Q5_K's qh[v % 32]) to bit 2m + nib of hb[p] (byte 16 + p)."""
    c, s, e = v // 64, (v // 32) % 2, v % 32
    raw = np.zeros(176, np.uint8)
    raw[48 + 32 * c + e] = 9 << (4 * s)
    raw[16 + e] = 1 << (v // 32)
    want = np.zeros(176, np.uint8)
    want[48 + 32 * m + p] = 9 << (4 * nib)
    want[16 + p] = 1 << (2 * m + nib)
    np.testing.assert_array_equal(Q.repack_q5_K(raw), want)


@pytest.mark.parametrize("v,m,p,nib", [(0, 0, 0, 0), (1, 0, 1, 0), (4, 1, 0, 0), (16, 0, 0, 1), (31, 3, 3, 1),
                                       (32, 0, 4, 0), (100, 1, 12, 0), (255, 3, 31, 1)])
def test_iq4_xs_R_puts_each_value_where_the_layout_says(v, m, p, nib):
    """IQ4_XS_R's nibbles go where Q4_K_R's do (the same hand-worked cases, 8 bytes in) from
    IQ4_XS's places: value v (group j = v // 32, element e = v % 32) is nibble e // 16 of
    qs[16 j + e % 16] (byte 8 + 16 j + e % 16)."""
    j, e = v // 32, v % 32
    raw = np.zeros(136, np.uint8)
    raw[8 + 16 * j + e % 16] = 9 << (4 * (e // 16))
    want = np.zeros(136, np.uint8)
    want[8 + 32 * m + p] = 9 << (4 * nib)
    np.testing.assert_array_equal(Q.repack_iq4_xs(raw), want)


@pytest.mark.parametrize("t", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"])
def test_panel_form_puts_each_field_where_the_layout_says(t):
    """A row of 9 blocks in the panel form: blocks 0-7 as one panel, field by field (offset o,
    f bytes, unit u = min(f, 4)): byte j of unit k of block l's field at 8o + 8uk + ul; block 8
    (the tail) left as it is. Q5_0 / Q5_1 blocks are first Q5_0_R / Q5_1_R's. Written out with
    loops here against the spec's reshapes; and the form decodes to the row it came from."""
    raw = random_raw(t, 9 * 32, np.random.default_rng(3))
    form = t + "_P"
    blocks = raw.reshape(9, -1)
    if t in ("Q5_0", "Q5_1"):
        blocks = getattr(Q, "repack_" + BY_NAME[t].ident)(raw).reshape(9, -1)
    bb = blocks.shape[1]
    fields = {"Q4_0": (2, 16), "Q4_1": (2, 2, 16), "Q5_0": (2, 4, 16), "Q5_1": (2, 2, 4, 16), "IQ4_NL": (2, 16)}[t]
    want = np.zeros(9 * bb, np.uint8)
    o = 0
    for f in fields:
        u = min(f, 4)
        for l in range(8):
            for k in range(f // u):
                for j in range(u):
                    want[8 * o + 8 * u * k + u * l + j] = blocks[l, o + u * k + j]
        o += f
    want[8 * bb:] = blocks[8]
    got = Q.repack(form, raw, 9 * 32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(Q.unrepack(form, got, 9 * 32), raw)
    assert_bit_equal(Q.dequantize(form, got, 9 * 32, cols=9 * 32), Q.dequantize(t, raw, 9 * 32))
    with pytest.raises(Q.QuantError, match="needs the row length"):
        Q.dequantize(form, got, 9 * 32)
    with pytest.raises(Q.QuantError, match="not whole rows of 192 values"):
        Q.repack(form, raw, 192)  # 9 blocks are not whole rows of 6
    with pytest.raises(Q.QuantError, match="not a positive multiple"):
        Q.unrepack(form, got, 40)
    with pytest.raises(Q.QuantError, match="not a load-time form"):
        Q.repack(t, raw, 9 * 32)


@pytest.mark.parametrize("t,o", [("Q5_0", 2), ("Q5_1", 4)])
@pytest.mark.parametrize("e,bit", [(0, 0), (1, 8), (3, 24), (4, 1), (5, 9), (16, 4), (17, 12), (31, 31), (28, 7)])
def test_q5_0_R_and_q5_1_R_put_each_fifth_bit_where_the_layout_says(t, o, e, bit):
    """The 5th bit of element e (bit e of the GGUF qh) goes to bit 8 (e % 4) + e // 4 of qh'; the
    rest of the block stays."""
    bb = BY_NAME[t].type_size
    raw = np.zeros(bb, np.uint8)
    raw[o:o + 4] = np.frombuffer(np.uint32(1 << e).tobytes(), np.uint8)
    raw[o + 4:] = 0x5A
    raw[0] = 7
    want = raw.copy()
    want[o:o + 4] = np.frombuffer(np.uint32(1 << bit).tobytes(), np.uint8)
    np.testing.assert_array_equal(getattr(Q, "repack_" + BY_NAME[t].ident)(raw), want)


@pytest.mark.parametrize("v,p,k", [(0, 0, 0), (16, 16, 0), (36, 4, 1), (100, 12, 1), (200, 8, 2), (255, 31, 3)])
def test_q6_K_R_puts_each_value_where_the_layout_says(v, p, k):
    """Q6_K_R's value order is Q3_K_R's (the same hand-worked (v, p, k)): low 4 bits in nibble
    k // 2 of ql[64h + 32 (k % 2) + p], top 2 bits in bit pair k of qh[32h + p]; Q6_K keeps value
    128h + 32j + l in nibble j // 2 of ql[64h + 32 (j % 2) + l] and bit pair j of qh[32h + l]."""
    h, j, l = v // 128, (v % 128) // 32, v % 32
    raw = np.zeros(210, np.uint8)
    raw[64 * h + 32 * (j % 2) + l] = 0xB << (4 * (j // 2))
    raw[128 + 32 * h + l] = 2 << (2 * j)
    want = np.zeros(210, np.uint8)
    want[64 * h + 32 * (k % 2) + p] = 0xB << (4 * (k // 2))
    want[128 + 32 * h + p] = 2 << (2 * k)
    np.testing.assert_array_equal(Q.repack_q6_K(raw), want)
    raw = np.zeros(210, np.uint8)
    raw[192 + 13] = 77  # scale of group 13 = half 1, group 5 of it: lane 4 (5 % 2) + 5 // 2 = 6
    assert np.flatnonzero(Q.repack_q6_K(raw)).tolist() == [192 + 8 + 6]
