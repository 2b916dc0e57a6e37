"""The numba tier (pyengine.numba_kernels, NumbaBackend) against the NumPy reference.

Oracles: the spec :func:`pyengine.quants.matmul` for the matmul (weights by
``quants.dequantize``, itself tested against gguf.quants; for quantized types the
activations quantized to int8 per block (32 or 256 values) and decoded, which the numba tier does with
the spec's own function), the reference functions of ``backends/numpy_backend.py`` for the
ops, and NumpyBackend method by method. The numba matmul's only difference from the spec
is float32 summation order (test_matmul_matches_spec, tight); against the exact product
with unquantized activations, the activation rounding is held to the 5e-4 NMSE contract
of every tier (reported by test_report_nmse with ``-s``).

Float32 tolerances below are in units of EPS (float32 machine epsilon, 2**-23), scaled by
the magnitude of what was summed or rotated, never by the answer alone.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyengine import quants
from pyengine.backends.numpy_backend import NumpyBackend, attention_reference, gelu_tanh, rope_reference, silu
from pyengine.errors import BackendUnavailableError
from pyengine.ggml_types import ggml_type
from pyengine.tensor import QTensor
from pyengine.testing.blocks import random_raw

from conftest import nmse

try:
    import numba  # noqa: F401

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed: the numba tier is optional "
                                                         "(pip install numba)")
if HAVE_NUMBA:
    from pyengine import numba_kernels as nk
    from pyengine.backends.numba_backend import NumbaBackend

EPS = float(np.finfo(np.float32).eps)
NMSE_MAX = 5e-4
QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")
FLOAT_TYPES = ("F32", "F16", "BF16")
TYPES = QUANT_TYPES + FLOAT_TYPES
MODES = ("normal", "zero", "extreme")
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def block_cols(t: str) -> int:
    """Granularity of the row length drawn for type ``t`` (float types: any length)."""
    return ggml_type(t).block_size


def weights(t: str, rows: int, cols: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    return random_raw(t, rows * cols, rng, scales=mode)


def reference_matmul(t: str, raw: np.ndarray, rows: int, cols: int, x: np.ndarray) -> np.ndarray:
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols).astype(np.float64)
    return x.astype(np.float64) @ w.T


@st.composite
def matmul_cases(draw, t: str):
    bs = block_cols(t)
    rows = draw(st.integers(1, 40))
    cols = bs * draw(st.integers(1, 4 if bs == 256 else 12)) if bs > 1 else draw(st.integers(1, 300))
    # n < 4 takes the unpack-per-token path, n >= 4 the dequantize-row-once path
    n = draw(st.one_of(st.integers(1, 3), st.integers(4, 64)))
    mode = draw(st.sampled_from(MODES))
    if t in ("F32", "BF16") and mode == "extreme":
        mode = "zero"  # values near 3e38 overflow any float32 matmul, reference included
    seed = draw(st.integers(0, 2**32 - 1))
    return rows, cols, n, mode, seed


# -- matmul ------------------------------------------------------------------------------

@needs_numba
@pytest.mark.parametrize("t", TYPES)
@SETTINGS
@given(data=st.data())
def test_matmul_matches_spec(t, data):
    """|numba - quants.matmul| <= 8 EPS * sum_i |w_i| |xq_i| per output (xq: the spec's decoded
    activations). Both round only their float32 sums; measured max 2.0e-7 = 1.7 EPS over 900
    random cases of every type and scales mode (tests/test_kernels.py SPEC_TOL has the same
    check at 1e-6 = 8.4 EPS, through pyengine.kernels)."""
    rows, cols, n, mode, seed = data.draw(matmul_cases(t))
    rng = np.random.default_rng(seed)
    raw = weights(t, rows, cols, mode, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y = nk.matmul(t, raw, (rows, cols), x)
    spec = quants.matmul(t, raw, (rows, cols), x)
    assert y.shape == (n, rows) and y.dtype == np.float32
    assert np.isfinite(y).all(), f"{t} {mode}: non-finite output where the spec is finite"
    xq = quants.matmul_activations(t, x).astype(np.float64)
    mag = np.abs(xq) @ np.abs(quants.dequantize(t, raw, rows * cols).reshape(rows, cols).astype(np.float64)).T
    err = np.abs(y.astype(np.float64) - spec)
    assert np.all(err <= 8 * EPS * mag), \
        f"{t} {mode} rows={rows} cols={cols} n={n}: max err/mag {np.max(err / np.maximum(mag, 1e-300)):.3g}"


@needs_numba
@pytest.mark.parametrize("n", [1, 5])  # both code paths
def test_matmul_keeps_non_finite_tokens_non_finite(n):
    rng = np.random.default_rng(8)
    raw = weights("Q6_K", 3, 256, "normal", rng)
    x = rng.standard_normal((n, 256)).astype(np.float32)
    x[n - 1, 7] = np.inf
    y = nk.matmul("Q6_K", raw, (3, 256), x)
    spec = quants.matmul("Q6_K", raw, (3, 256), x)
    assert np.isnan(y[n - 1]).all() and np.isnan(spec[n - 1]).all()
    assert np.isfinite(y[:n - 1]).all()


@needs_numba
@pytest.mark.parametrize("t", QUANT_TYPES)
def test_matmul_direct_and_dequant_paths_agree(t):
    # The same rows through both code paths (n < 4 and n >= 4) give the same dot products
    # up to float32 summation order.
    rng = np.random.default_rng(7)
    rows, cols = 19, 512
    raw = weights(t, rows, cols, "normal", rng)
    x = rng.standard_normal((6, cols)).astype(np.float32)
    many = nk.matmul(t, raw, (rows, cols), x)
    w = quants.dequantize(t, raw, rows * cols).reshape(rows, cols)
    xq = quants.matmul_activations(t, x)  # what both paths multiply by
    for i in range(6):
        one = nk.matmul(t, raw, (rows, cols), x[i:i + 1])[0]
        terms = np.abs(w).astype(np.float64) @ np.abs(xq[i]).astype(np.float64)  # sum of |w_j xq_j|
        assert np.all(np.abs(one - many[i]) <= 2 * cols * EPS * terms), t


@needs_numba
def test_matmul_accepts_bytes_memmap_like_and_rejects_bad_shapes():
    rng = np.random.default_rng(3)
    raw = weights("Q8_0", 5, 64, "normal", rng)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    ref = nk.matmul("Q8_0", raw, (5, 64), x)
    ro = raw.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(nk.matmul("Q8_0", bytes(raw), (5, 64), x), ref)
    np.testing.assert_array_equal(nk.matmul("Q8_0", ro, (5, 64), x.astype(np.float64)), ref)
    with pytest.raises(ValueError):
        nk.matmul("Q8_0", raw, (5, 64), x[:, :32])
    with pytest.raises(ValueError):
        nk.matmul("Q8_0", raw[:-1], (5, 64), x)
    with pytest.raises(ValueError):
        nk.matmul("Q8_0", raw, (5, 48), x[:, :48])  # not a whole number of blocks
    with pytest.raises(NotImplementedError):
        nk.matmul("IQ2_XXS", raw, (1, 256), x[:, :0])


# -- get_rows ----------------------------------------------------------------------------

@needs_numba
@pytest.mark.parametrize("t", TYPES)
@SETTINGS
@given(data=st.data())
def test_get_rows_exact(t, data):
    bs = block_cols(t)
    rows = data.draw(st.integers(1, 30))
    cols = bs * data.draw(st.integers(1, 3)) if bs > 1 else data.draw(st.integers(1, 200))
    mode = data.draw(st.sampled_from(MODES))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    raw = weights(t, rows, cols, mode, rng)
    ids = rng.integers(0, rows, data.draw(st.integers(1, 10)))
    got = nk.get_rows(t, raw, (rows, cols), ids)
    ref = quants.dequantize(t, raw, rows * cols).reshape(rows, cols)[ids]
    # decoding is a couple of exact float32 products: the same bits as the reference
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=f"{t} {mode}")


@needs_numba
def test_get_rows_rejects_out_of_range_ids():
    raw = weights("Q4_0", 4, 32, "normal", np.random.default_rng(0))
    with pytest.raises(IndexError):
        nk.get_rows("Q4_0", raw, (4, 32), [4])
    with pytest.raises(IndexError):
        nk.get_rows("Q4_0", raw, (4, 32), [-1])


@needs_numba
def test_f16_decoding_covers_every_half():
    # all 65536 half bit patterns (zeros, subnormals, normals, inf, nan) decode like NumPy
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = nk.get_rows("F16", h.view(np.uint8), (1, h.size), [0])[0]
    ref = h.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))


# -- ops ---------------------------------------------------------------------------------

@needs_numba
@SETTINGS
@given(n=st.integers(1, 9), groups=st.integers(1, 4), gs=st.integers(1, 96), eps=st.sampled_from([1e-6, 1e-5]),
       mag=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**32 - 1))
def test_rmsnorm(n, groups, gs, eps, mag, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, groups * gs)) * mag).astype(np.float32)
    g = rng.standard_normal(gs).astype(np.float32)
    y = nk.rmsnorm(x, g, eps)
    xg = x.reshape(n, groups, gs)
    ref = (xg / np.sqrt(np.mean(xg * xg, axis=-1, keepdims=True) + np.float32(eps)) * g).reshape(n, -1)
    # mean of squares: reference sums in float32 (error <= log2(gs) EPS relative), ours in
    # float64; then one sqrt, one division, one product
    tol = (np.log2(gs) + 8) * EPS * np.abs(ref) + 1e-38
    assert np.all(np.abs(y - ref) <= tol)


@needs_numba
@SETTINGS
@given(n=st.integers(1, 7), n_heads=st.integers(1, 4), half_dim=st.integers(1, 16), neox=st.booleans(),
       partial=st.booleans(), base=st.sampled_from([10000.0, 1e6]), seed=st.integers(0, 2**32 - 1))
def test_rope(n, n_heads, half_dim, neox, partial, base, seed):
    rng = np.random.default_rng(seed)
    head_dim = 2 * half_dim
    n_rot = 2 * int(rng.integers(1, half_dim + 1)) if partial else None
    x = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    pos = rng.integers(0, 40000, n)
    y = nk.rope(x, pos, n_heads, head_dim, base, neox, n_rot)
    ref = rope_reference(x, pos, n_heads, head_dim, base, neox, n_rot)
    # same float64 angles; cos/sin may differ by an ulp between libms before the float32 cast
    assert np.all(np.abs(y - ref) <= 4 * EPS * np.abs(x).max())
    if n_rot is not None:  # dims past n_rot are untouched, bit for bit
        xh = x.reshape(n, n_heads, head_dim)
        np.testing.assert_array_equal(y.reshape(n, n_heads, head_dim)[..., n_rot:], xh[..., n_rot:])


@needs_numba
@SETTINGS
@given(n_kv_heads=st.integers(1, 3), group=st.integers(1, 3), head_dim=st.sampled_from([4, 16, 64]),
       pos0=st.integers(0, 40), n=st.integers(1, 12), window=st.sampled_from([0, 0, 1, 3, 16]),
       seed=st.integers(0, 2**32 - 1))
def test_attention(n_kv_heads, group, head_dim, pos0, n, window, seed):
    rng = np.random.default_rng(seed)
    n_heads = n_kv_heads * group
    t = pos0 + n
    k = rng.standard_normal((t + 5, n_kv_heads * head_dim)).astype(np.float32)  # 5 unused slots
    v = rng.standard_normal((t + 5, n_kv_heads * head_dim)).astype(np.float32)
    k[t:] = np.nan  # positions past the last query must never be read
    v[t:] = np.nan
    q = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    scale = 1.0 / np.sqrt(head_dim)
    y = nk.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    ref = attention_reference(q, k[:t], v[:t], pos0, n_heads, n_kv_heads, head_dim, scale, window)
    # a score carries <= head_dim EPS * scale * sum|q_i k_i| of rounding, which moves the
    # softmax weights by as much relatively; the output is a convex mix of v rows
    qa = np.abs(q).reshape(n, n_heads, head_dim).astype(np.float64)
    ka = np.abs(k[:t]).reshape(t, n_kv_heads, head_dim).astype(np.float64)
    qk = max(float((qa[:, h] @ ka[:, h // group].T).max()) for h in range(n_heads)) * scale
    tol = (2 * head_dim * EPS * qk + 4 * t * EPS) * np.abs(v[:t]).max()
    assert np.isfinite(y).all()
    assert np.abs(y - ref).max() <= tol


@needs_numba
@SETTINGS
@given(n=st.integers(1, 5), width=st.integers(1, 300), mag=st.sampled_from([1.0, 10.0, 100.0]),
       seed=st.integers(0, 2**32 - 1))
def test_gated_activations(n, width, mag, seed):
    rng = np.random.default_rng(seed)
    gate = (rng.standard_normal((n, width)) * mag).astype(np.float32)
    up = rng.standard_normal((n, width)).astype(np.float32)
    tiny = 1e-30  # exp overflowing to inf one ulp earlier in one libm: x/inf = 0 vs ~1e-37
    with np.errstate(over="ignore"):  # the reference's exp(-gate) overflows for gate << 0
        ref = silu(gate) * up
    got = nk.silu_mul(gate, up)
    assert got.dtype == np.float32 and got.shape == gate.shape
    assert np.all(np.abs(got - ref) <= 8 * EPS * np.abs(ref) + tiny)  # a few roundings, no cancellation
    got, ref = nk.gelu_mul(gate, up), gelu_tanh(gate) * up
    assert got.dtype == np.float32 and got.shape == gate.shape
    # 1 + tanh(z) cancels for z << 0: an ulp of tanh (~EPS) is then an absolute error of
    # ~EPS * |0.5 gate up|
    assert np.all(np.abs(got - ref) <= 8 * EPS * (np.abs(ref) + np.abs(gate * up)) + tiny)


# -- the backend, method by method against NumpyBackend -----------------------------------

def qtensor(name: str, t: str, shape: tuple[int, ...], rng, mode: str = "normal") -> QTensor:
    n = int(np.prod(shape))
    return QTensor(name, t, shape, random_raw(t, n, rng, scales=mode))


@needs_numba
@pytest.mark.parametrize("t", ["Q4_K", "Q6_K", "Q8_0", "Q4_1", "F16", "Q2_K", "Q3_K", "IQ4_XS"])
def test_backend_weights_match_numpy_backend(t):
    rng = np.random.default_rng(11)
    nb, rb = NumbaBackend(), NumpyBackend()
    cols = 512
    w = qtensor("w", t, (37, cols), rng)
    for n in (1, 5):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        assert nmse(nb.matmul(w, x), rb.matmul(w, x).astype(np.float64)) <= 1e-10  # both: the spec
    ids = np.array([0, 36, 5, 5])
    np.testing.assert_array_equal(nb.embed(w, ids), rb.embed(w, ids))
    assert nb.embed(w, ids).dtype == np.float32


@needs_numba
def test_backend_ops_match_numpy_backend():
    rng = np.random.default_rng(5)
    nb, rb = NumbaBackend(), NumpyBackend()
    n, H, Hkv, hd = 4, 4, 2, 16
    x = rng.standard_normal((n, H * hd)).astype(np.float32)
    y = rng.standard_normal((n, H * hd)).astype(np.float32)
    for wlen in (H * hd, hd):  # per-token norm and per-head (QK) norm
        w = qtensor("norm", "F32", (wlen,), rng)
        np.testing.assert_allclose(nb.rmsnorm(x, w, 1e-6), rb.rmsnorm(x, w, 1e-6), rtol=16 * EPS, atol=0)
    np.testing.assert_array_equal(nb.add(x, y), rb.add(x, y))
    np.testing.assert_array_equal(nb.scale(x, 0.3), rb.scale(x, 0.3))
    np.testing.assert_allclose(nb.silu_mul(x, y), rb.silu_mul(x, y), rtol=8 * EPS, atol=8 * EPS)
    np.testing.assert_allclose(nb.gelu_mul(x, y), rb.gelu_mul(x, y), rtol=8 * EPS, atol=8 * EPS)
    pos = np.arange(3, 3 + n)
    for neox in (False, True):
        np.testing.assert_allclose(nb.rope(x, pos, H, hd, 1e4, neox, 8), rb.rope(x, pos, H, hd, 1e4, neox, 8),
                                   rtol=0, atol=4 * EPS * np.abs(x).max())
    # KV cache: two prefill chunks and a decode step, full and sliding-window attention
    caches = {b.name: b.kv_cache(2, 16, Hkv * hd) for b in (nb, rb)}
    pos0 = 0
    for step in (5, 3, 1):
        k = rng.standard_normal((step, Hkv * hd)).astype(np.float32)
        v = rng.standard_normal((step, Hkv * hd)).astype(np.float32)
        q = rng.standard_normal((step, H * hd)).astype(np.float32)
        for b in (nb, rb):
            b.kv_write(caches[b.name], 1, pos0, k, v)
        for window in (0, 4):
            got = nb.attention(q, caches["numba"], 1, pos0, H, Hkv, hd, 0.25, window)
            ref = rb.attention(q, caches["numpy"], 1, pos0, H, Hkv, hd, 0.25, window)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        pos0 += step
    np.testing.assert_array_equal(caches["numba"].k[1], caches["numpy"].k[1])
    assert not caches["numba"].k[0].any()  # layer 0 untouched
    nb.prepare({})
    assert nb.name == "numba" and "numba" in nb.description


# -- without numba ------------------------------------------------------------------------

def test_missing_numba_is_a_one_line_backend_error(monkeypatch):
    # Pretend numba is not installed: importing the tier must raise the user-facing error
    # (one line, says what to install), not a bare ImportError traceback.
    import pyengine
    import pyengine.backends

    for name in ("pyengine.numba_kernels", "pyengine.backends.numba_backend"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    # `from .. import numba_kernels` would reuse the package attribute instead of importing
    monkeypatch.delattr(pyengine, "numba_kernels", raising=False)
    monkeypatch.delattr(pyengine.backends, "numba_backend", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    for name in ("pyengine.numba_kernels", "pyengine.backends.numba_backend"):
        with pytest.raises(BackendUnavailableError) as exc:
            importlib.import_module(name)
        msg = str(exc.value)
        assert "numba" in msg and "pip install numba" in msg and "\n" not in msg
        monkeypatch.delitem(sys.modules, name, raising=False)


# -- report ---------------------------------------------------------------------------------

@needs_numba
def test_report_nmse():
    """Measured NMSE per type against the exact product (4096 columns, n = 1 and 8): the
    activation rounding the spec prescribes; printed with ``pytest -s``."""
    rng = np.random.default_rng(2024)
    lines = []
    for t in TYPES:
        raw = weights(t, 64, 4096, "normal", rng)
        for n in (1, 8):
            x = rng.standard_normal((n, 4096)).astype(np.float32)
            e = nmse(nk.matmul(t, raw, (64, 4096), x), reference_matmul(t, raw, 64, 4096, x))
            assert e <= NMSE_MAX
            lines.append(f"{t:5s} n={n}: NMSE {e:.2e}")
    print("\nnumba matmul NMSE vs the exact float64 product (unquantized x):\n  " + "\n  ".join(lines))
