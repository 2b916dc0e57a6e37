"""pyengine.kernels.matmul / get_rows on every backend and instruction-set variant.

Two oracles:

* the spec, :func:`pyengine.quants.matmul` (weights by ``quants.dequantize``, itself tested
  against ``gguf.quants``; activations quantized to int8 per block -- 32 values, 256 for the
  super-block types -- and decoded, as the native tiers do it). The scalar ``generic`` tier and the numba tier must equal it up to
  float32 rounding of the sums (``SPEC_TOL``, tight); the SIMD tiers within 1e-6 of the
  sum of the terms' magnitudes, and the scalar tier to 1e-5 relative;
* the exact product ``x @ W.T`` in float64 with the unquantized ``x``: every backend,
  the spec included, differs from it by the activation rounding, held to a normalized MSE
  bound per type (``NMSE_BOUND``, the per-type error table).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyengine import kernels, quants
from pyengine.ggml_types import LOAD_FORMS, ggml_type
from pyengine.testing.blocks import random_raw

from conftest import nmse

# Normalized MSE bound, sum((y - ref)^2) / sum(ref^2), per weight type. The quantized types
# carry the int8 activation quantization (measured ~3e-5 per 32 values, ~5e-5 for the types
# quantizing them per 256, see test_report_nmse); F16/F32
# weights are multiplied in float32 with x unquantized (float32 rounding only).
NMSE_BOUND = {
    "Q4_0": 5e-4, "Q4_1": 5e-4, "Q5_0": 5e-4, "Q5_1": 5e-4, "Q8_0": 5e-4, "IQ4_NL": 5e-4,
    "Q2_K": 5e-4, "Q3_K": 5e-4, "Q4_K": 5e-4, "Q5_K": 5e-4, "Q6_K": 5e-4, "IQ4_XS": 5e-4,
    "F16": 1e-10, "BF16": 1e-10, "F32": 1e-10,
}
TYPES = tuple(NMSE_BOUND)
SIMD_REL_TOL = 1e-5  # max|simd - generic| / max|generic|
MODES = ("normal", "zero", "extreme")

VARIANTS_HERE = kernels.kernel_variants()
SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (backend, variant) pairs under test; unavailable ones are skipped with the reason.
CASES = [("numpy", "auto"), ("numba", "auto"), ("cpu", "generic"), ("cpu", "avx2"), ("cpu", "avx512")]


def _skip_unavailable(backend: str, variant: str) -> None:
    if backend == "numba" and not kernels.numba_available():
        pytest.skip("numba backend unavailable: pyengine.numba_kernels does not import (numba not installed?)")
    if backend == "cpu":
        if not kernels.native_available():
            pytest.skip("cpu backend unavailable: pyengine._C not importable (built with PYENGINE_NO_NATIVE=1?)")
        if variant not in VARIANTS_HERE:
            pytest.skip(f"kernel variant {variant!r} not runnable on this CPU/build (have: {VARIANTS_HERE})")


def _native():
    from pyengine import _C

    return _C


FLOAT_TYPES = ("F16", "BF16", "F32")


def block_of(t: str) -> int:
    return ggml_type(t).block_size if t not in FLOAT_TYPES else 32


def reference(t: str, raw: np.ndarray, rows: int, cols: int, x: np.ndarray) -> np.ndarray:
    """The exact product of the unquantized ``x`` and the dequantized weight, in float64 (not
    the spec: it lacks the activation rounding every backend has)."""
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols).astype(np.float64)
    return x.astype(np.float64) @ w.T


def make_case(t: str, rows: int, cols: int, n: int, mode: str, seed: int):
    rng = np.random.default_rng(seed)
    if t in ("F32", "BF16") and mode == "extreme":
        mode = "zero"  # float32-range weights near 3e38 overflow any float32 matmul, reference included
    raw = random_raw(t, rows * cols, rng, scales=mode)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    return raw, x


@st.composite
def shapes(draw, t: str, min_rows: int = 17, max_rows: int = 80, max_cols: int = 1536, min_scales: int = 0):
    """(rows, cols, n). ``min_scales``: at least that many activation blocks (int8 scales) in
    all, ``n * cols / act_block >= min_scales``, by taking more tokens where needed."""
    blk = block_of(t)
    rows = draw(st.integers(min_rows, max_rows))  # mostly not a multiple of the SIMD width
    cols = blk * draw(st.integers(1, max(1, max_cols // blk)))
    n = draw(st.one_of(st.integers(1, 6), st.integers(7, 300)))
    return rows, cols, with_scales(t, cols, n, min_scales)


def with_scales(t: str, cols: int, n: int, min_scales: int) -> int:
    """``n`` raised so that ``n`` tokens of ``cols`` values hold at least ``min_scales``
    activation blocks (int8 scales) of type ``t``'s matmul."""
    if not min_scales or t in FLOAT_TYPES:
        return n
    return max(n, -(-min_scales // (cols // quants.act_block(t))))


# ---- accuracy against the NumPy reference --------------------------------------------------
@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("backend,variant", CASES)
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_matmul_matches_reference(t, backend, variant, data, mode, seed):
    _skip_unavailable(backend, variant)
    # At least 17 outputs and 16 activation blocks: the NMSE of a handful of outputs, or of
    # outputs that share a few int8 scales, is itself too noisy to bound (the error of a block
    # is one draw of its rounding, common to every output). Measured over 900 cases (three
    # scale modes) at the smallest such shapes, 17 rows: max NMSE 1.0e-4 for Q4_1 32 x 16
    # tokens, 1.5e-4 for Q5_K 256 x 16, 2.1e-4 / 4.5e-4 for Q4_K 1536 x 3 / 2048 x 2. With
    # 8 blocks one Q4_K case of 900 reached 5.9e-4; with one block (17 x 32 Q4_1, 1 token)
    # 4% of cases exceed 5e-4, with or without the per-256 activation scales.
    rows, cols, n = data.draw(shapes(t, min_scales=16))
    raw, x = make_case(t, rows, cols, n, mode, seed)
    ref = reference(t, raw, rows, cols, x)
    y = kernels.matmul(t, raw, (rows, cols), x, backend=backend, variant=variant)
    assert y.shape == (n, rows) and y.dtype == np.float32
    finite = np.isfinite(ref)
    assert np.isfinite(y[finite]).all(), "NaN/inf where the reference is finite"
    err = nmse(np.where(finite, y, 0), np.where(finite, ref, 0))
    assert err <= NMSE_BOUND[t], f"{t} {backend}/{variant} {rows}x{cols} n={n} {mode}: NMSE {err:.3g}"


# The float weight types at any column count: the SIMD tiers run 8 (AVX2) or 16 (AVX-512)
# columns a step and finish a row with a scalar or masked tail, which the shapes above (whole
# 32-value blocks) never reach; rows 4 at a time and then one by one. Each output within a few
# float32 roundings of its terms' magnitude of the exact product.
@pytest.mark.parametrize("t", FLOAT_TYPES)
@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("cols", [1, 5, 15, 17, 33, 100, 1029])
def test_float_matmul_any_cols(t, variant, cols):
    _skip_unavailable("cpu", variant)
    rng = np.random.default_rng(cols)
    rows = 9
    raw = random_raw(t, rows * cols, rng)
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols).astype(np.float64)
    for n in (1, 3, 7):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        y = kernels.matmul(t, raw, (rows, cols), x, backend="cpu", variant=variant)
        ref = x.astype(np.float64) @ w.T
        scale = np.abs(x).astype(np.float64) @ np.abs(w).T
        assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-30), f"{t} {variant} {rows}x{cols} n={n}"


# ---- the scalar native tier and the numba tier against the spec --------------------------------------
# |tier - quants.matmul| <= SPEC_TOL * sum_i |w_i| |xq_i| per output, xq the spec's decoded activations.
# Both sides round only their float32 sums (the spec's BLAS product, the tier's group epilogue),
# so the difference is a few float32 epsilons of the terms' magnitude. Measured max of
# err / (sum |w_i| |xq_i|) over random cases of every type and scales mode (zero and extreme
# scales included, every fifth case with an all-zero activation block, 1-40 rows, up to 1536
# columns, 1-40 tokens): generic 3.8e-7 over 2,700 cases, numba 2.0e-7 over 900.
SPEC_TOL = 1e-6


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("backend,variant", [("cpu", "generic"), ("numba", "auto")])
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_scalar_tier_and_numba_equal_the_spec(t, backend, variant, data, mode, seed):
    _skip_unavailable(backend, variant)
    rows, cols, n = data.draw(shapes(t, min_rows=1, max_rows=40))
    raw, x = make_case(t, rows, cols, n, mode, seed)
    if n > 2:
        x[1, :32] = 0.0  # an all-zero activation block: dy = 0, y = 0
    spec = quants.matmul(t, raw, (rows, cols), x)
    xq = quants.matmul_activations(t, x).astype(np.float64)
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols).astype(np.float64)
    mag = np.abs(xq) @ np.abs(w).T
    y = kernels.matmul(t, raw, (rows, cols), x, backend=backend, variant=variant)
    assert y.shape == spec.shape and y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - spec)
    assert np.all(err <= SPEC_TOL * mag), \
        f"{t} {backend}/{variant} {rows}x{cols} n={n} {mode}: max err/mag {np.max(err / np.maximum(mag, 1e-300)):.3g}"


# ---- the SIMD tiers against the spec ------------------------------------------------------------------
@pytest.mark.parametrize("t", [t for t in TYPES if t not in FLOAT_TYPES])
@pytest.mark.parametrize("variant", ["avx2", "avx512"])
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_simd_tiers_match_the_spec(t, variant, data, mode, seed):
    """A SIMD tier computes ``xq @ W.T`` with ``xq = quants.matmul_activations(t, x)``
    (``dy * y`` per activation block) and W the reference dequantization, up to float32 rounding of
    its sums (1e-6 of the sum of the terms' magnitudes against the float64 product; measured
    <= 7e-8): nothing beyond the spec's own activation quantization."""
    _skip_unavailable("cpu", variant)
    rows, cols, n = data.draw(shapes(t, min_rows=1, max_rows=40))
    raw, x = make_case(t, rows, cols, n, mode, seed)
    xq = quants.matmul_activations(t, x).astype(np.float64)
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols).astype(np.float64)
    spec = xq @ w.T
    mag = np.abs(xq) @ np.abs(w).T
    y = kernels.matmul(t, raw, (rows, cols), x, backend="cpu", variant=variant)
    finite = np.isfinite(spec)
    err = np.abs(np.where(finite, y, 0) - np.where(finite, spec, 0))
    assert np.all(err <= 1e-6 * np.where(finite, mag, 0) + 1e-37), \
        f"{t} {variant} {rows}x{cols} n={n} {mode}: max err/mag {np.max(err / np.maximum(mag, 1e-300)):.3g}"


# ---- SIMD tiers against the scalar tier --------------------------------------------------------
SIMD = [v for v in ("avx2", "avx512")]


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("variant", SIMD)
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_simd_agrees_with_generic(t, variant, data, mode, seed):
    _skip_unavailable("cpu", variant)
    rows, cols, n = data.draw(shapes(t, min_rows=1, max_rows=70))  # any row count, odd tails
    raw, x = make_case(t, rows, cols, n, mode, seed)
    C = _native()
    a = np.empty((n, rows), np.float32)
    b = np.empty((n, rows), np.float32)
    C.matmul(t, raw, rows, cols, x, a, "generic")
    C.matmul(t, raw, rows, cols, x, b, variant)
    scale = float(np.max(np.abs(a)))
    diff = float(np.max(np.abs(a.astype(np.float64) - b)))
    if scale == 0.0:
        assert diff == 0.0
    else:
        assert diff / scale <= SIMD_REL_TOL, f"{t} {variant} {rows}x{cols} n={n} {mode}: rel diff {diff / scale:.3g}"


@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("t", ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q5_K", "IQ4_XS"])
def test_edge_shapes(t, variant):
    """Panel tails: one block, an odd number of blocks, one row, rows % 16 != 0."""
    _skip_unavailable("cpu", variant)
    blk = block_of(t)
    for rows, nblk, n in [(1, 1, 1), (3, 1, 2), (33, 3, 5), (16, 17, 1), (7, 9, 4)]:
        cols = blk * nblk
        raw, x = make_case(t, rows, cols, n, "normal", rows * 1000 + nblk)
        ref = reference(t, raw, rows, cols, x)
        y = kernels.matmul(t, raw, (rows, cols), x, backend="cpu", variant=variant)
        # few outputs: compare per output against the size of its terms, not by NMSE
        mag = np.abs(x).astype(np.float64) @ np.abs(quants.dequantize(t, raw, rows * cols).reshape(rows, cols)).T
        assert np.all(np.abs(y - ref) <= 0.02 * mag + 1e-30), (rows, cols, n)


def test_one_dimensional_x_and_bytes_input():
    rng = np.random.default_rng(5)
    raw = random_raw("Q4_K", 40 * 512, rng)
    x = rng.standard_normal(512).astype(np.float32)
    y1 = kernels.matmul("Q4_K", bytes(raw), (40, 512), x)
    y2 = kernels.matmul("Q4_K", memoryview(raw), (40, 512), x[None, :])
    assert y1.shape == (40,) and y2.shape == (1, 40)
    np.testing.assert_array_equal(y1, y2[0])
    assert nmse(y1, reference("Q4_K", raw, 40, 512, x[None, :])[0]) <= NMSE_BOUND["Q4_K"]


# ---- few tokens vs many: the same numbers ------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_few_tokens_give_the_same_bits_as_many(t, variant):
    """A decode step (1-4 tokens: the SIMD tiers' gemv, weights unpacked into registers, with
    their own handling of a row's last panel) must give bit for bit what a prompt pass gives
    for the same token (more tokens: pack_w + gemm) -- the engine's decode-equals-full-pass
    check depends on it, and a small model magnifies rounding differences into percent-level
    logit changes. Widths include short rows whose last panel is partly filled (576, 640,
    896 columns for the 32-element types), rows of 1, 2, 4 or 8 blocks (several rows to one
    panel on AVX-512; 67 rows leave a remainder done one by one) and many rows, so a row can
    read past its end; float rows of an odd number of 16-column steps and a masked tail (the
    AVX-512 float tiles' two chains)."""
    _skip_unavailable("cpu", variant)
    blk = block_of(t)
    widths = sorted({blk * k for k in (1, 2, 3, 4, 8, 9, 17, 18, 20, 28)} | ({576, 640, 896} if blk == 32 else set())
                    | ({15, 17, 40, 53, 71, 1000} if t in FLOAT_TYPES else set()))  # odd 16-column steps, masked tails
    for cols in widths:
        rows = 67
        raw, x = make_case(t, rows, cols, 7, "normal", cols)
        many = kernels.matmul(t, raw, (rows, cols), x, backend="cpu", variant=variant)  # 7 tokens
        for n in (1, 2, 3, 4):
            few = kernels.matmul(t, raw, (rows, cols), x[:n], backend="cpu", variant=variant)
            np.testing.assert_array_equal(few, many[:n], err_msg=f"{t} {variant} cols={cols} n={n}")


# ---- Q2_K_R, Q3_K_R, Q4_K_R, ..., Q5_0_P, ...: rearranged when the cpu backend copies the weights ----
# (cpu_backend.repack_copied; ggml_types.LOAD_FORMS)
FORMS = [(src, form) for form, src in LOAD_FORMS.items()]


def _repacked(form: str, raw: np.ndarray, cols: int) -> np.ndarray:
    out = np.empty_like(raw)
    _native().repack(form, raw, out, cols)
    return out


def _form_widths(t: str) -> tuple[int, ...]:
    """Row lengths that cover a type's panels: for the 32-element types rows of 1, 7, 8, 9, 15,
    16, 17, 25, 28 (Qwen2.5-0.5B's 896) and 40 blocks, i.e. panel forms with no whole panel,
    whole panels only, and whole panels plus tails of 1-7 blocks; else 1, 2, 3, 8, 9, 17
    super-blocks."""
    if block_of(t) == 32:
        return tuple(32 * nb for nb in (1, 7, 8, 9, 15, 16, 17, 25, 28, 40))
    return tuple(256 * nb for nb in (1, 2, 3, 8, 9, 17))


@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("t,form", FORMS)
@SETTINGS
@given(data=st.data(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_load_form_gives_the_bits_of_its_type(t, form, variant, data, mode, seed):
    """Same values, same lanes, same arithmetic: a tier's matmul of the form returns what its
    matmul of the blocks it was made from returns, bit for bit (any token count: the gemv and
    the packed-panel path; a tier that does not read a panel form rewrites its rows back)."""
    _skip_unavailable("cpu", variant)
    rows, cols, n = data.draw(shapes(t, min_rows=1, max_rows=70))
    raw, x = make_case(t, rows, cols, n, mode, seed)
    C = _native()
    a = np.empty((n, rows), np.float32)
    b = np.empty((n, rows), np.float32)
    C.matmul(t, raw, rows, cols, x, a, variant)
    C.matmul(form, _repacked(form, raw, cols), rows, cols, x, b, variant)
    np.testing.assert_array_equal(b, a, err_msg=f"{form} {variant} {rows}x{cols} n={n} {mode}")


@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("t,form", FORMS)
def test_load_form_every_token_count_and_width(t, form, variant):
    """The same, over the token counts of test_few_tokens_give_the_same_bits_as_many and the
    widths of _form_widths."""
    _skip_unavailable("cpu", variant)
    C = _native()
    for cols in _form_widths(t):
        rows = 67
        raw, x = make_case(t, rows, cols, 9, "normal", cols)
        rp = _repacked(form, raw, cols)
        for n in (1, 2, 3, 4, 5, 9):
            a = np.empty((n, rows), np.float32)
            b = np.empty((n, rows), np.float32)
            C.matmul(t, raw, rows, cols, x[:n], a, variant)
            C.matmul(form, rp, rows, cols, x[:n], b, variant)
            np.testing.assert_array_equal(b, a, err_msg=f"{form} {variant} cols={cols} n={n}")


@pytest.mark.parametrize("t,form", FORMS)
def test_load_form_repack_is_the_spec_and_rows_decode_alike(t, form):
    """_C.repack writes what quants.repack (the spec) writes, in place or not, and undoes it
    (back=True); rows gathered from the form are the rows of its type; bad arguments are one
    clear error each."""
    if not kernels.native_available():
        pytest.skip("pyengine._C not importable")
    C = _native()
    bb = ggml_type(t).type_size
    cols = 1024 + 96 if block_of(t) == 32 else 1024  # 35 blocks of 32: 4 panels and a tail of 3
    rb = cols // block_of(t) * bb
    rng = np.random.default_rng(11)
    for mode in MODES:
        raw = random_raw(t, 10 * cols, rng, scales=mode)
        rp = _repacked(form, raw, cols)
        np.testing.assert_array_equal(rp, quants.repack(form, raw, cols), err_msg=mode)
        np.testing.assert_array_equal(quants.unrepack(form, rp, cols), raw, err_msg=mode)
        same = raw.copy()
        C.repack(form, same, same, cols)
        np.testing.assert_array_equal(same, rp, err_msg=mode)
        C.repack(form, same, same, cols, True)
        np.testing.assert_array_equal(same, raw, err_msg=mode)
        ids = np.array([0, 7, 3, 9], np.int32)
        a = np.empty((4, cols), np.float32)
        b = np.empty((4, cols), np.float32)
        C.get_rows(t, raw, 10, cols, ids, a)
        C.get_rows(form, rp, 10, cols, ids, b)
        np.testing.assert_array_equal(b, a, err_msg=mode)
        np.testing.assert_array_equal(quants.dequantize(form, rp, 10 * cols, cols=cols).view(np.uint32),
                                      quants.dequantize(t, raw, 10 * cols).view(np.uint32), err_msg=mode)
    with pytest.raises(ValueError, match=f"whole rows of {cols} {t} values"):
        C.repack(form, np.zeros(rb + bb, np.uint8), np.zeros(rb + bb, np.uint8), cols)
    with pytest.raises(ValueError, match="not a positive multiple of the block size"):
        C.repack(form, np.zeros(rb, np.uint8), np.zeros(rb, np.uint8), cols + 1)
    with pytest.raises(ValueError, match="as many bytes"):
        C.repack(form, np.zeros(rb, np.uint8), np.zeros(2 * rb, np.uint8), cols)
    buf = np.zeros(3 * rb, np.uint8)
    with pytest.raises(ValueError, match="not overlap"):
        C.repack(form, buf[:2 * rb], buf[rb:], cols)
    with pytest.raises(ValueError, match=f"{t} is not a load-time form"):
        C.repack(t, np.zeros(rb, np.uint8), np.zeros(rb, np.uint8), cols)


# ---- determinism and threads -------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_thread_count_does_not_change_results(variant):
    _skip_unavailable("cpu", variant)
    C = _native()
    rng = np.random.default_rng(11)
    rows, cols, n = 203, 1024, 37
    raw = random_raw("Q6_K", rows * cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    old = C.get_num_threads()
    outs = []
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            assert C.get_num_threads() == nt
            o = np.empty((n, rows), np.float32)
            C.matmul("Q6_K", raw, rows, cols, x, o, variant)
            outs.append(o)
    finally:
        C.set_num_threads(old)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])  # each output is computed by one thread


# One to four tokens run as gemv shares that a thread which is done takes over by halves
# (ThreadPool::parallel_shares): more threads than cores here, so shares are taken while
# their owner is descheduled. Every row must still be computed exactly once, by the same
# kernel: the outputs equal the one-thread ones bit for bit, including rows on both sides of
# every batch boundary (several hundred rows of 288 bytes: batches of 227 rows).
@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_gemv_shares_do_not_change_results(variant):
    _skip_unavailable("cpu", variant)
    C = _native()
    rng = np.random.default_rng(12)
    old = C.get_num_threads()
    try:
        for rows, cols, n in ((1, 512, 1), (7, 512, 2), (203, 512, 1), (4099, 512, 1), (1000, 512, 4)):
            raw = random_raw("Q4_K", rows * cols, rng)
            x = rng.standard_normal((n, cols)).astype(np.float32)
            outs = []
            for nt in (1, 2, 3, 8):
                C.set_num_threads(nt)
                o = np.full((n, rows), np.nan, np.float32)
                C.matmul("Q4_K", raw, rows, cols, x, o, variant)
                outs.append(o)
            for nt, o in zip((2, 3, 8), outs[1:]):
                np.testing.assert_array_equal(o, outs[0], err_msg=f"{rows}x{cols} n={n}, {nt} threads")
    finally:
        C.set_num_threads(old)


# ---- get_rows ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("backend", ["numpy", "numba", "cpu"])
def test_get_rows(t, backend):
    _skip_unavailable(backend, "generic")
    rng = np.random.default_rng(3)
    rows, cols = 37, 4 * block_of(t) if t not in FLOAT_TYPES else 96
    raw = random_raw(t, rows * cols, rng, scales="extreme" if t not in ("F32", "BF16") else "normal")
    ids = np.array([0, 36, 5, 5, 17], dtype=np.int32)
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols)
    got = kernels.get_rows(t, raw, (rows, cols), ids, backend=backend)
    assert got.shape == (len(ids), cols) and got.dtype == np.float32
    # same formulas as the reference: equal up to one rounding of each value
    tol = 1e-6 * np.abs(w[ids]).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - w[ids]) <= tol)


# ---- measured accuracy per type (printed; run with -s to see it) -------------------------------------
def test_report_nmse(capsys):
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    rng = np.random.default_rng(2024)
    rows, cols, n = 128, 2048, 16
    lines = []
    for t in TYPES:
        raw = random_raw(t, rows * cols, rng)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        ref = reference(t, raw, rows, cols, x)
        per = {v: nmse(kernels.matmul(t, raw, (rows, cols), x, backend="cpu", variant=v), ref) for v in VARIANTS_HERE}
        for v, e in per.items():
            assert e <= NMSE_BOUND[t], (t, v, e)
        lines.append(f"{t:5s} bound {NMSE_BOUND[t]:.0e}  " + "  ".join(f"{v} {e:.2e}" for v, e in per.items()))
    with capsys.disabled():
        print("\nmeasured NMSE per type (128x2048, n=16):\n  " + "\n  ".join(lines))


def test_report_nmse_tail(capsys):
    """The worst NMSE over many small draws like the property test's (17..80 outputs, n = 1..6
    tokens or more to hold 16 activation blocks, every scales mode), per type and ISA: the int8 activation quantization is the only error,
    and every tier must show the same tail (a SIMD tier adds none of its own)."""
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    rng = np.random.default_rng(77)
    lines = []
    for t in [t for t in TYPES if t not in FLOAT_TYPES]:
        worst = dict.fromkeys(VARIANTS_HERE, 0.0)
        for k in range(24):
            rows, nblk, n = int(rng.integers(17, 81)), int(rng.integers(1, 7)), int(rng.integers(1, 7))
            cols = block_of(t) * nblk
            n = with_scales(t, cols, n, 16)  # as the property test (see there)
            raw, x = make_case(t, rows, cols, n, MODES[k % 3], int(rng.integers(2**32)))
            ref = reference(t, raw, rows, cols, x)
            for v in VARIANTS_HERE:
                worst[v] = max(worst[v], nmse(kernels.matmul(t, raw, (rows, cols), x, backend="cpu", variant=v), ref))
        for v, e in worst.items():
            assert e <= NMSE_BOUND[t], (t, v, e)
            assert e <= 1.25 * worst["generic"], f"{t}: {v} tail {e:.3g} above the scalar tier's {worst['generic']:.3g}"
        lines.append(f"{t:6s} " + "  ".join(f"{v} {e:.2e}" for v, e in worst.items()))
    with capsys.disabled():
        print("\nworst NMSE over 24 small draws per type (17-80 rows, 1-6 blocks, n=1-6 or >= 16 scales):\n  " + "\n  ".join(lines))


def test_cpu_backend_refuses_types_without_a_native_kernel():
    """A matrix of a type the kernels lack is an error at load, never a float32 copy."""
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    from pyengine.backends.cpu_backend import CpuBackend
    from pyengine.errors import ModelFileError
    from pyengine.tensor import QTensor

    be = CpuBackend()
    ok = {t: QTensor(f"w.{t}", t, (2, 256), np.zeros(ggml_type(t).n_bytes(512), np.uint8)) for t in kernels.NATIVE_TYPES}
    be.prepare(ok)  # every native type loads
    bad = dict(ok, odd=QTensor("blk.0.ffn_up.weight", "IQ2_XXS", (2, 256), np.zeros(132, np.uint8)))
    with pytest.raises(ModelFileError, match="'blk.0.ffn_up.weight' has type IQ2_XXS, which has no native kernel") as e:
        be.prepare(bad)
    assert "\n" not in str(e.value)
    # a 1-D tensor (a norm) of any type is not a matrix: no kernel needed
    be.prepare({"norm": QTensor("norm", "F32", (256,), np.zeros(1024, np.uint8))})


# ---- the extension's surface and its argument checks ---------------------------------------------------
def test_features_and_variants():
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    C = _native()
    f = C.cpu_features()
    for key in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"):
        assert isinstance(f[key], bool)
    v = C.kernel_variants()
    assert v[0] == "generic"
    assert set(v) <= {"generic", "avx2", "avx512"}
    if "avx512" in v:
        assert f["avx512f"] and f["avx512bw"] and f["avx512vl"] and f["avx512_vnni"]
    if "avx2" in v:
        assert f["avx2"] and f["fma"] and f["f16c"]
    assert C.get_num_threads() >= 1
    assert set(kernels.available_backends()) >= {"numpy", "cpu"}


@pytest.fixture
def args():
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    rng = np.random.default_rng(0)
    raw = random_raw("Q4_0", 8 * 64, rng)
    return raw, rng.standard_normal((3, 64)).astype(np.float32), np.empty((3, 8), np.float32)


def test_bad_arguments_native(args):
    C = _native()
    raw, x, out = args
    with pytest.raises(TypeError, match="w must be a uint8"):
        C.matmul("Q4_0", raw.view(np.int8), 8, 64, x, out)
    with pytest.raises(ValueError, match="needs 288 bytes, got 287"):
        C.matmul("Q4_0", raw[:-1], 8, 64, x, out)
    with pytest.raises(ValueError, match="not a multiple of the block size"):
        C.matmul("Q4_0", raw, 9, 48, x, out)
    with pytest.raises(TypeError, match="x must be a float32"):
        C.matmul("Q4_0", raw, 8, 64, x.astype(np.float64), out)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        C.matmul("Q4_0", raw, 8, 64, np.asfortranarray(x), out)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\)"):
        C.matmul("Q4_0", raw, 8, 64, x[:, :32].copy(), out)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 8\)"):
        C.matmul("Q4_0", raw, 8, 64, x, np.empty((3, 9), np.float32))
    with pytest.raises(TypeError, match="out must be a float32"):
        C.matmul("Q4_0", raw, 8, 64, x, np.empty((3, 8), np.float64))
    ro = np.empty((3, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        C.matmul("Q4_0", raw, 8, 64, x, ro)
    with pytest.raises(ValueError, match="unsupported weight type 'IQ2_XXS'"):
        C.matmul("IQ2_XXS", raw, 8, 64, x, out)
    with pytest.raises(ValueError, match="unknown kernel variant 'sse9'"):
        C.matmul("Q4_0", raw, 8, 64, x, out, "sse9")
    with pytest.raises(TypeError, match="ids must be a int32"):
        C.get_rows("Q4_0", raw, 8, 64, np.array([1], np.int64), np.empty((1, 64), np.float32))
    with pytest.raises(IndexError, match="out of range for 8 rows"):
        C.get_rows("Q4_0", raw, 8, 64, np.array([8], np.int32), np.empty((1, 64), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(1, 64\)"):
        C.get_rows("Q4_0", raw, 8, 64, np.array([1], np.int32), np.empty((1, 63), np.float32))
    C.matmul("Q4_0", raw, 8, 64, x, out)  # and the good call still works


def test_unavailable_variant_is_a_clear_error():
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    missing = [v for v in ("avx2", "avx512") if v not in VARIANTS_HERE]
    if not missing:
        pytest.skip("every variant runs on this CPU")
    raw = np.zeros(18, np.uint8)
    with pytest.raises(ValueError, match="not available on this CPU"):
        _native().matmul("Q4_0", raw, 1, 32, np.zeros((1, 32), np.float32), np.empty((1, 1), np.float32), missing[0])


def test_bad_arguments_python_api():
    raw = np.zeros(18 * 4, np.uint8)
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="needs 72 bytes, got 71"):
        kernels.matmul("Q4_0", raw[:-1], (2, 64), x)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\)"):
        kernels.matmul("Q4_0", raw, (2, 64), np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        kernels.matmul("Q4_0", raw, (2, 64), x, backend="gpu")
    with pytest.raises(ValueError, match="only applies to the cpu backend"):
        kernels.matmul("Q4_0", raw, (2, 64), x, backend="numpy", variant="avx2")
    with pytest.raises(ValueError, match="unknown GGML type"):
        kernels.matmul("Q9_9", raw, (2, 64), x)
    with pytest.raises(IndexError):
        kernels.get_rows("Q4_0", raw, (2, 64), [2])
    if kernels.native_available():
        with pytest.raises(ValueError, match="backend 'cpu' has no kernel for IQ2_XXS"):
            kernels.matmul("IQ2_XXS", np.zeros(66, np.uint8), (1, 256), np.zeros((1, 256), np.float32), backend="cpu")


def test_concurrent_calls_from_python_threads():
    """The GIL is released during compute; calls from several threads must not mix up."""
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    import threading

    rng = np.random.default_rng(9)
    jobs = []
    for t in ("Q4_K", "Q8_0", "Q6_K", "Q4_1"):
        raw = random_raw(t, 96 * 512, rng)
        x = rng.standard_normal((5, 512)).astype(np.float32)
        jobs.append((t, raw, x, kernels.matmul(t, raw, (96, 512), x, backend="cpu")))
    errors = []

    def worker(k):
        t, raw, x, want = jobs[k % len(jobs)]
        for _ in range(20):
            got = kernels.matmul(t, raw, (96, 512), x, backend="cpu")
            if not np.array_equal(got, want):
                errors.append((k, t))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_degrades_without_native(monkeypatch):
    """A PYENGINE_NO_NATIVE install: no 'cpu' backend, 'auto' still answers, 'cpu' says why not."""
    monkeypatch.setattr(kernels, "_native", lambda: None)
    assert "cpu" not in kernels.available_backends()
    assert kernels.kernel_variants() == [] and kernels.cpu_features() == {}
    rng = np.random.default_rng(1)
    raw = random_raw("Q8_0", 20 * 64, rng)
    x = rng.standard_normal((17, 64)).astype(np.float32)
    y = kernels.matmul("Q8_0", raw, (20, 64), x)  # numba or numpy
    assert nmse(y, reference("Q8_0", raw, 20, 64, x)) <= NMSE_BOUND["Q8_0"]
    with pytest.raises(RuntimeError, match="needs the native extension"):
        kernels.matmul("Q8_0", raw, (20, 64), x, backend="cpu")


@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_q8_0_full_int8_range(variant):
    """-128 (which ggml's quantizer never writes, but a file may hold) and +127 weights:
    the AVX2 sign trick and the +128 offset of the other tiers must both stay exact."""
    _skip_unavailable("cpu", variant)
    rng = np.random.default_rng(4)
    rows, cols, n = 24, 256, 20
    raw = random_raw("Q8_0", rows * cols, rng)
    b = raw.view(quants.BLOCK_DTYPES["Q8_0"])
    qs = b["qs"]
    qs[: len(qs) // 2] = np.where(rng.random(qs[: len(qs) // 2].shape) < 0.5, -128, 127)
    b["qs"] = qs
    x = rng.standard_normal((n, cols)).astype(np.float32)
    ref = reference("Q8_0", raw, rows, cols, x)
    y = kernels.matmul("Q8_0", raw, (rows, cols), x, backend="cpu", variant=variant)
    assert nmse(y, ref) <= NMSE_BOUND["Q8_0"]


NEW_TYPES = ("Q5_K", "Q5_1", "BF16", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL")


def test_kernel_bench_covers_the_new_types():
    """`pyengine bench kernels` runs the new types by default, each kernel validated before timing
    (tiny shapes and no bandwidth probe here: this checks the code path, it measures nothing)."""
    from pyengine.bench import kernels as kernel_bench

    assert set(NEW_TYPES) <= set(kernel_bench.DEFAULT_TYPES)
    res = kernel_bench.run_kernel_bench(types=list(NEW_TYPES), shapes=[(32, 512)], batch=[1, 64],
                                        bw={"gbps": {"1": 10.0}}, threads=1, min_time=0.0, cold=False, log=None,
                                        reprobe=False)
    rs = res["results"]
    assert {r["type"] for r in rs} == set(NEW_TYPES)
    for t in NEW_TYPES:
        got = {r["kernel"] for r in rs if r["type"] == t and r["status"] == "ok"}
        want = {"numpy"} | ({f"cpu/{v}" for v in VARIANTS_HERE} if kernels.native_available() else set())
        assert want <= got, (t, [r for r in rs if r["type"] == t and r["status"] != "ok"])
    for r in rs:
        if r["status"] == "ok":
            assert r["nmse"] <= NMSE_BOUND[r["type"]] and r["gbps"] > 0 and r["gflops"] > 0
