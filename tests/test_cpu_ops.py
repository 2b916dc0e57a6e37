"""Native CPU ops (pyengine._C) and the ``cpu`` backend against the NumPy reference.

Every op is run in every kernel variant this CPU supports (``_C.ops_variants()``:
"generic" everywhere, "avx2" and "avx512" where CPUID has them) and compared with the
reference functions of ``pyengine/backends/numpy_backend.py`` on random inputs drawn by
hypothesis (shapes from 1 token up to a few hundred, odd widths that exercise the
vector tails, GQA ratios 1/3/4, sliding windows, NEOX and NORM rope, partial rotation).

Tolerances (``np.testing.assert_allclose``: |got - ref| <= atol + rtol * |ref|).
The kernels differ from NumPy only in summation order, FMA contraction and their own
exp(), so all of these are float32-rounding level. "Worst seen" is the largest
|got - ref| over 120 random cases per op (40 per variant; inputs up to 30 in size):

    op                      rtol    atol    worst seen
    add, scale              exact   exact   0 (one IEEE rounding, same as NumPy)
    rope_table (cos, sin)   0       3e-7    6.0e-8  (float64 angles, then rounded)
    rope                    1e-5    1e-6    4.8e-7
    rmsnorm (+ fused forms) 1e-5    1e-6    1.9e-6 on outputs up to ~10 (relative 4e-7)
    silu_mul, gelu_mul      1e-5    1e-6    1.9e-6 on outputs up to ~100 (relative 4e-7)
    attention               1e-4    1e-5    8.7e-6 with scores of std 3; the float32
                                            reference itself is 1.0e-5 from float64 truth
    backend embed           1e-6    1e-6    exact for the float types, 1 ulp for blocks
    backend matmul          relative Frobenius error < 2e-2 (the kernels quantize the
                            activations to int8, as llama.cpp does); catches wiring mistakes

Unwritten KV-cache rows are filled with NaN, so an attention kernel that reads a key it
must not see fails loudly instead of being averaged away. Attention must also be batch
invariant (bit-identical per token however the prompt is split) and thread-count
invariant: tested with exact equality.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

try:
    from pyengine import _C
except ImportError as e:  # built with PYENGINE_NO_NATIVE=1, or not built at all
    pytest.skip(f"pyengine._C is not importable ({e}); the native CPU ops are not built",
                allow_module_level=True)

if not hasattr(_C, "attention"):
    pytest.skip("pyengine._C has no native ops (stale build: reinstall pyengine)", allow_module_level=True)

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyengine import quants
from pyengine.backends import numpy_backend as nb
from pyengine.backends.base import KVCache
from pyengine.ggml_types import ggml_type
from pyengine.tensor import QTensor

VARIANTS = list(_C.ops_variants())
TOL = {
    "rope": dict(rtol=1e-5, atol=1e-6),
    "rmsnorm": dict(rtol=1e-5, atol=1e-6),
    "gate": dict(rtol=1e-5, atol=1e-6),
    "attention": dict(rtol=1e-4, atol=1e-5),
}
# the `variant` fixture only selects the kernel variant: sharing it across examples is intended
HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=HEALTH)


@pytest.fixture(params=VARIANTS)
def variant(request):
    prev = _C.set_ops_variant(request.param)
    yield request.param
    _C.set_ops_variant(prev)


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def f32_weight(w: np.ndarray, name: str = "w") -> QTensor:
    w = np.ascontiguousarray(w, dtype=np.float32)
    return QTensor(name, "F32", w.shape, w.reshape(-1).view(np.uint8))


def strided(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same values as x (2-D) with a row stride larger than its width."""
    pad = int(rng.integers(1, 9))
    wide = np.full((x.shape[0], x.shape[1] + pad), np.nan, dtype=np.float32)
    wide[:, :x.shape[1]] = x
    return wide[:, :x.shape[1]]


def rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return nb.NumpyBackend().rmsnorm(x, f32_weight(w), eps)


# ----------------------------------------------------------------------------- rmsnorm

@FAST
@given(n=st.integers(1, 300), g=st.sampled_from([1, 7, 16, 33, 64, 100, 256, 640]), k=st.integers(1, 4),
       eps=st.sampled_from([1e-6, 1e-5]), mag=st.sampled_from([1e-2, 1.0, 30.0]), seed=st.integers(0, 2**32 - 1),
       stride=st.booleans())
def test_rmsnorm(variant, n, g, k, eps, mag, seed, stride):
    rng = rng_for(seed)
    x = (rng.standard_normal((n, k * g)) * mag).astype(np.float32)
    w = (rng.standard_normal(g) + 1.0).astype(np.float32)
    ref = rmsnorm_ref(x, w, eps)
    xin = strided(x, rng) if stride else x
    out = np.full_like(x, np.nan)
    _C.rmsnorm(xin, w, eps, out)
    np.testing.assert_allclose(out, ref, **TOL["rmsnorm"])


@FAST
@given(n=st.integers(1, 200), g=st.sampled_from([5, 64, 256, 640]), k=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_fused_rmsnorm_forms(variant, n, g, k, seed):
    rng = rng_for(seed)
    a = rng.standard_normal((n, k * g)).astype(np.float32)
    b = rng.standard_normal((n, k * g)).astype(np.float32)
    w = (rng.standard_normal(g) + 1.0).astype(np.float32)
    out = np.empty_like(a)
    _C.rmsnorm_add(a, w, 1e-6, b, out)  # b + rmsnorm(a)
    np.testing.assert_allclose(out, b + rmsnorm_ref(a, w, 1e-6), **TOL["rmsnorm"])
    s, nrm = np.empty_like(a), np.empty_like(a)
    _C.add_rmsnorm(a, b, w, 1e-6, s, nrm)  # s = a + b; rmsnorm(s)
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_allclose(nrm, rmsnorm_ref(a + b, w, 1e-6), **TOL["rmsnorm"])
    # in place: out aliasing the residual
    r = b.copy()
    _C.rmsnorm_add(a, w, 1e-6, r, r)
    np.testing.assert_allclose(r, b + rmsnorm_ref(a, w, 1e-6), **TOL["rmsnorm"])


# -------------------------------------------------------------------------------- rope

def rope_native(x, positions, n_heads, head_dim, base, neox, n_rot, out=None):
    half = n_rot // 2
    cos = np.empty((len(positions), half), np.float32)
    sin = np.empty_like(cos)
    _C.rope_table(np.asarray(positions, np.float64), base, n_rot, cos, sin)
    if out is None:
        out = np.full((x.shape[0], n_heads * head_dim), np.nan, np.float32)
    _C.rope(x, out, cos, sin, n_heads, head_dim, n_rot, neox)
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), n_rot=st.integers(1, 128).map(lambda h: 2 * h), base=st.sampled_from([10000.0, 1e6, 500.0]),
       seed=st.integers(0, 2**32 - 1))
def test_rope_table(n, n_rot, base, seed):
    pos = rng_for(seed).integers(0, 200000, size=n)
    cos = np.empty((n, n_rot // 2), np.float32)
    sin = np.empty_like(cos)
    _C.rope_table(pos.astype(np.float64), base, n_rot, cos, sin)
    inv_freq = base ** (-np.arange(n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]
    np.testing.assert_allclose(cos, np.cos(ang).astype(np.float32), rtol=0, atol=3e-7)
    np.testing.assert_allclose(sin, np.sin(ang).astype(np.float32), rtol=0, atol=3e-7)


@FAST
@given(n=st.integers(1, 300), n_heads=st.integers(1, 9), head_dim=st.sampled_from([2, 6, 32, 64, 80, 128, 256]),
       rot_frac=st.sampled_from([1.0, 0.5, 0.25, 0.3]), neox=st.booleans(),
       base=st.sampled_from([10000.0, 1e6]), pos0=st.integers(0, 5000), shuffle=st.booleans(),
       mode=st.sampled_from(["out", "inplace", "strided"]), seed=st.integers(0, 2**32 - 1))
def test_rope(variant, n, n_heads, head_dim, rot_frac, neox, base, pos0, shuffle, mode, seed):
    rng = rng_for(seed)
    n_rot = max(2, int(head_dim * rot_frac) // 2 * 2)
    x = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    pos = np.arange(pos0, pos0 + n)
    if shuffle:
        pos = rng.permutation(pos)
    ref = nb.rope_reference(x, pos, n_heads, head_dim, base, neox, n_rot)
    if mode == "inplace":
        got = x.copy()
        rope_native(got, pos, n_heads, head_dim, base, neox, n_rot, out=got)
    elif mode == "strided":
        got = rope_native(strided(x, rng), pos, n_heads, head_dim, base, neox, n_rot)
    else:
        got = rope_native(x, pos, n_heads, head_dim, base, neox, n_rot)
    np.testing.assert_allclose(got, ref, **TOL["rope"])
    if n_rot < head_dim:  # the unrotated tail passes through bit for bit
        xh, gh = x.reshape(n, n_heads, head_dim), got.reshape(n, n_heads, head_dim)
        np.testing.assert_array_equal(gh[..., n_rot:], xh[..., n_rot:])


# ------------------------------------------------------------------- gates, add, scale

@FAST
@given(shape=st.sampled_from([(1, 1), (1, 15), (1, 17), (3, 640), (1, 2048), (37, 100), (300, 64)]),
       mag=st.sampled_from([0.1, 3.0, 30.0]), seed=st.integers(0, 2**32 - 1))
def test_gates_add_scale(variant, shape, mag, seed):
    rng = rng_for(seed)
    g = (rng.standard_normal(shape) * mag).astype(np.float32)
    u = rng.standard_normal(shape).astype(np.float32)
    out = np.full_like(g, np.nan)
    with np.errstate(over="ignore"):  # the reference's exp(-x) overflows to inf for x << 0 (harmless)
        ref_silu, ref_gelu = nb.silu(g) * u, nb.gelu_tanh(g) * u
    _C.silu_mul(g, u, out)
    np.testing.assert_allclose(out, ref_silu, **TOL["gate"])
    _C.gelu_mul(g, u, out)
    np.testing.assert_allclose(out, ref_gelu, **TOL["gate"])
    _C.add(g, u, out)
    np.testing.assert_array_equal(out, g + u)
    s = float(np.float32(rng.uniform(-5, 5)))
    _C.scale(g, s, out)
    np.testing.assert_array_equal(out, g * np.float32(s))
    # in place
    h = g.copy()
    _C.gelu_mul(h, u, h)
    np.testing.assert_allclose(h, ref_gelu, **TOL["gate"])


def test_gates_extremes(variant):
    g = np.array([[-1e30, -200.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 200.0, 1e30,
                   -np.inf, np.inf, 3.0, -3.0, 0.5]], np.float32)
    u = np.ones_like(g)
    out = np.empty_like(g)
    with np.errstate(over="ignore", invalid="ignore"):
        ref_silu = nb.silu(g)
        ref_gelu = nb.gelu_tanh(g)
    _C.silu_mul(g, u, out)
    fin = np.isfinite(g)
    np.testing.assert_allclose(out[fin], ref_silu[fin], **TOL["gate"])
    _C.gelu_mul(g, u, out)
    np.testing.assert_allclose(out[fin], ref_gelu[fin], **TOL["gate"])
    assert np.isnan(_C_nan_gate()).all()


def _C_nan_gate():
    g = np.full((1, 20), np.nan, np.float32)
    out = np.zeros_like(g)
    _C.silu_mul(g, np.ones_like(g), out)
    return out


# --------------------------------------------------------------------------- attention

BLK = int(_C.ATTN_KEY_BLOCK)


def panels_of(k: np.ndarray, t: int) -> np.ndarray:
    """Key panels (n_blocks, width, 64) holding rows [0, t) of k; every other slot NaN."""
    kt = np.full((-(-k.shape[0] // BLK), k.shape[1], BLK), np.nan, np.float32)
    _C.kv_store(np.ascontiguousarray(k[:t]), kt, 0)
    return kt


def attention_case(rng, n, pos0, n_kv_heads, group, head_dim, window, extra=3, sharp=1.0):
    H = n_kv_heads * group
    t = pos0 + n
    q = (rng.standard_normal((n, H * head_dim)) * sharp).astype(np.float32)
    k = np.full((t + extra, n_kv_heads * head_dim), np.nan, np.float32)  # rows >= t: never written
    v = np.full_like(k, np.nan)
    k[:t] = rng.standard_normal((t, n_kv_heads * head_dim))
    v[:t] = rng.standard_normal((t, n_kv_heads * head_dim))
    scale = 1.0 / np.sqrt(head_dim)
    ref = nb.attention_reference(q, k[:t], v[:t], pos0, H, n_kv_heads, head_dim, scale, window)
    return q, k, v, scale, ref


@pytest.mark.parametrize("env,want", [({"PYENGINE_CPU_VARIANT": "avx2"}, "avx2"),
                                      ({"PYENGINE_CPU_VARIANT": "avx2", "PYENGINE_OPS": "generic"}, "generic"),
                                      ({"PYENGINE_OPS": "generic"}, "generic")])
def test_forced_tier_picks_the_op_table_too(env, want):
    # a tier forced for the matmuls (benchmarks' AVX2 rows on an AVX-512 CPU) runs that tier's
    # attention, norms and rope as well; PYENGINE_OPS alone still picks the op table
    import os
    import subprocess
    import sys

    if want not in VARIANTS:
        pytest.skip(f"no {want} op table on this CPU")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYENGINE_CPU_VARIANT", "PYENGINE_OPS")}
    got = subprocess.run([sys.executable, "-c", "from pyengine import _C; print(_C.ops_variant())"],
                         env={**clean, **env}, capture_output=True, text=True, check=True).stdout.strip()
    assert got == want


def test_kv_store_layout():
    rng = rng_for(11)
    k = rng.standard_normal((150, 48)).astype(np.float32)
    kt = np.zeros((3, 48, BLK), np.float32)
    _C.kv_store(k[:70], kt, 0)
    _C.kv_store(k[70:71], kt, 70)
    _C.kv_store(k[71:150], kt, 71)
    np.testing.assert_array_equal(kt.transpose(0, 2, 1).reshape(-1, 48)[:150], k)
    assert not kt.transpose(0, 2, 1).reshape(-1, 48)[150:].any()
    with pytest.raises(ValueError, match="outside the cache"):
        _C.kv_store(k[:10], kt, 190)


def within_budget(n, pos0, n_kv_heads, group, head_dim, budget=2e7):
    """(head_dim, pos0) shrunk until an example is under ~2e7 multiply-adds (the generic variant stays quick)."""
    work = lambda hd: n * (pos0 + n) * n_kv_heads * group * hd  # noqa: E731
    while head_dim > 8 and work(head_dim) > budget:
        head_dim //= 2
    if work(head_dim) > budget:
        pos0 = max(0, int(budget / (n * n_kv_heads * group * head_dim)) - n)
    return head_dim, pos0


@settings(max_examples=30, deadline=None, suppress_health_check=HEALTH)
@given(n=st.integers(1, 300), pos0=st.integers(0, 300), n_kv_heads=st.integers(1, 2), group=st.sampled_from([1, 3, 4]),
       head_dim=st.sampled_from([8, 20, 48, 64, 80, 128, 256]), window=st.sampled_from([0, 0, 1, 5, 64, 100, 512]),
       panels=st.booleans(), sharp=st.sampled_from([1.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_attention(variant, n, pos0, n_kv_heads, group, head_dim, window, panels, sharp, seed):
    head_dim, pos0 = within_budget(n, pos0, n_kv_heads, group, head_dim)
    rng = rng_for(seed)
    q, k, v, scale, ref = attention_case(rng, n, pos0, n_kv_heads, group, head_dim, window, sharp=sharp)
    kin = panels_of(k, pos0 + n) if panels else k
    out = np.full_like(q, np.nan)
    _C.attention(q, kin, v, out, pos0, n_kv_heads * group, n_kv_heads, head_dim, scale, window)
    np.testing.assert_allclose(out, ref, **TOL["attention"])


@settings(max_examples=30, deadline=None, suppress_health_check=HEALTH)
@given(n=st.integers(1, 200), pos0=st.integers(0, 300), n_kv_heads=st.integers(1, 2), group=st.sampled_from([1, 4, 16]),
       head_dim=st.sampled_from([8, 20, 48, 64, 80, 576]), window=st.sampled_from([0, 0, 5, 100]),
       sharp=st.sampled_from([1.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_attention_keys_are_values(variant, n, pos0, n_kv_heads, group, head_dim, window, sharp, seed):
    # k = None: key j is value row j (MLA's single-copy cache); rows past the last position are
    # NaN and must not be read
    head_dim, pos0 = within_budget(n, pos0, n_kv_heads, group, head_dim)
    rng = rng_for(seed)
    q, _, v, scale, _ = attention_case(rng, n, pos0, n_kv_heads, group, head_dim, window, sharp=sharp)
    t = pos0 + n
    ref = nb.attention_reference(q, v[:t], v[:t], pos0, n_kv_heads * group, n_kv_heads, head_dim, scale, window)
    out = np.full_like(q, np.nan)
    _C.attention(q, None, v, out, pos0, n_kv_heads * group, n_kv_heads, head_dim, scale, window)
    np.testing.assert_allclose(out, ref, **TOL["attention"])
    # bit for bit the same token by token (a decode step) as in the whole call (the prompt)
    one = np.empty_like(q[:1])
    for i in {0, n // 2, n - 1}:
        _C.attention(q[i:i + 1], None, v, one, pos0 + i, n_kv_heads * group, n_kv_heads, head_dim, scale, window)
        np.testing.assert_array_equal(one[0], out[i])


@pytest.mark.parametrize("H,Hkv,hd", [(4, 1, 256), (9, 3, 64), (8, 8, 64)], ids=["gemma3", "smollm2", "mha"])
@pytest.mark.parametrize("n,pos0,window", [(1, 511, 0), (1, 700, 512), (2, 40, 0), (7, 100, 16), (64, 0, 0),
                                            (200, 50, 0), (130, 300, 128)])
def test_attention_model_shapes(variant, H, Hkv, hd, n, pos0, window):
    rng = rng_for(n * 1000 + pos0)
    q, k, v, scale, ref = attention_case(rng, n, pos0, Hkv, H // Hkv, hd, window)
    for kin in (k, panels_of(k, pos0 + n)):
        out = np.full_like(q, np.nan)
        _C.attention(q, kin, v, out, pos0, H, Hkv, hd, scale, window)
        np.testing.assert_allclose(out, ref, **TOL["attention"])


@settings(max_examples=15, deadline=None, suppress_health_check=HEALTH)
@given(n=st.integers(2, 150), pos0=st.integers(0, 200), group=st.sampled_from([1, 3, 4]),
       head_dim=st.sampled_from([16, 64, 256]), window=st.sampled_from([0, 10, 100]),
       cuts=st.lists(st.integers(1, 149), max_size=4), seed=st.integers(0, 2**32 - 1))
def test_attention_is_batch_invariant(variant, n, pos0, group, head_dim, window, cuts, seed):
    # A token's output must not depend on which other tokens share the call: a prompt
    # processed whole, in chunks or one token at a time gives the same bits. (Matmuls
    # that quantize activations turn even 1-ulp differences into visible logit drift.)
    rng = rng_for(seed)
    q, k, v, scale, _ = attention_case(rng, n, pos0, 2, group, head_dim, window)
    kt = panels_of(k, pos0 + n)
    H = 2 * group
    whole = np.empty_like(q)
    _C.attention(q, kt, v, whole, pos0, H, 2, head_dim, scale, window)
    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    pieces = np.empty_like(q)
    for a, b in zip(bounds[:-1], bounds[1:]):
        _C.attention(q[a:b], kt, v, pieces[a:b], pos0 + a, H, 2, head_dim, scale, window)
    np.testing.assert_array_equal(pieces, whole)
    one = np.empty_like(q[:1])
    for i in rng.choice(n, size=min(n, 5), replace=False):
        _C.attention(q[i:i + 1], kt, v, one, pos0 + i, H, 2, head_dim, scale, window)
        np.testing.assert_array_equal(one[0], whole[i])


@pytest.mark.parametrize("keys", ["panels", "values"])
def test_attention_threads_do_not_change_results(variant, keys):
    # values: key j is value row j (k = None), in MLA's shape (16 heads on one 576-wide row)
    if not hasattr(_C, "set_num_threads"):
        pytest.skip("no thread pool in this build")
    rng = rng_for(9)
    n, pos0, group, hd = (100, 30, 4, 64) if keys == "panels" else (3, 300, 16, 576)
    q, k, v, scale, ref = attention_case(rng, n, pos0, 1, group, hd, 0)
    kin = panels_of(k, pos0 + n)
    if keys == "values":
        kin, ref = None, nb.attention_reference(q, v[:pos0 + n], v[:pos0 + n], pos0, group, 1, hd, scale, 0)
    prev = _C.get_num_threads()
    outs = []
    try:
        for th in (1, 2, 3):
            _C.set_num_threads(th)
            out = np.empty_like(q)
            _C.attention(q, kin, v, out, pos0, group, 1, hd, scale, 0)
            outs.append(out)
    finally:
        _C.set_num_threads(prev)
    np.testing.assert_allclose(outs[0], ref, **TOL["attention"])
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_attention_strided_q_and_out(variant):
    # q as the first columns of a fused QKV activation; out as a slice of a wider buffer
    rng = rng_for(7)
    q, k, v, scale, ref = attention_case(rng, 20, 30, 1, 4, 64, 0)
    qkv = np.concatenate([q, rng.standard_normal((20, 128)).astype(np.float32)], axis=1)
    wide = np.full((20, q.shape[1] + 5), np.nan, np.float32)
    for kin in (k, panels_of(k, 50)):
        _C.attention(qkv[:, :q.shape[1]], kin, v, wide[:, :q.shape[1]], 30, 4, 1, 64, scale, 0)
        np.testing.assert_allclose(wide[:, :q.shape[1]], ref, **TOL["attention"])
        assert np.isnan(wide[:, q.shape[1]:]).all()


def test_attention_rejects_bad_arguments():
    q = np.zeros((2, 64), np.float32)
    k = np.zeros((8, 64), np.float32)
    out = np.zeros_like(q)
    with pytest.raises(ValueError, match="float32"):
        _C.attention(q.astype(np.float64), k, k, out, 0, 1, 1, 64, 1.0)
    with pytest.raises(ValueError, match="cache holds"):
        _C.attention(q, k, k, out, 7, 1, 1, 64, 1.0)
    with pytest.raises(ValueError, match="multiple"):
        _C.attention(np.zeros((2, 192), np.float32), np.zeros((8, 128), np.float32), np.zeros((8, 128), np.float32),
                     np.zeros((2, 192), np.float32), 0, 3, 2, 64, 1.0)
    with pytest.raises(ValueError, match="overlaps"):
        _C.attention(q, k, k, q, 0, 1, 1, 64, 1.0)
    with pytest.raises(ValueError, match="key panels"):
        _C.attention(q, np.zeros((1, 64, 32), np.float32), k, out, 0, 1, 1, 64, 1.0)
    with pytest.raises(ValueError, match="cache holds"):
        _C.attention(q, np.zeros((1, 64, BLK), np.float32), np.zeros((80, 64), np.float32), out, 63, 1, 1, 64, 1.0)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros_like(q)
        ro.flags.writeable = False
        _C.attention(q, k, k, ro, 0, 1, 1, 64, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        _C.rmsnorm(q, np.ones(64, np.float32), 1e-6, np.zeros((64, 2), np.float32).T)
    with pytest.raises(ValueError):
        _C.rope(q, np.zeros_like(q), np.zeros((2, 32), np.float32), np.zeros((2, 32), np.float32), 1, 64, 66, True)
    with pytest.raises(ValueError, match="differ in size"):
        _C.add(q, np.zeros((3, 64), np.float32), out)


# -------------------------------------------------------------- CpuBackend vs NumPy

needs_weights = pytest.mark.skipif(not (hasattr(_C, "matmul") and hasattr(_C, "get_rows")),
                                   reason="pyengine._C has no matmul/get_rows yet (quantized kernels not built)")


@pytest.fixture(scope="module")
def backends():
    if not (hasattr(_C, "matmul") and hasattr(_C, "get_rows")):
        pytest.skip("pyengine._C has no matmul/get_rows yet: CpuBackend cannot be constructed")
    from pyengine.backends.cpu_backend import CpuBackend

    return CpuBackend(), nb.NumpyBackend()


def random_weight(type_name: str, rows: int, cols: int, rng: np.random.Generator) -> QTensor:
    """A weight with random contents in type_name's encoding (finite, moderate scales)."""
    t = ggml_type(type_name)
    if type_name == "F32":
        return f32_weight(rng.standard_normal((rows, cols)) * 0.1, "w")
    if type_name == "F16":
        raw = (rng.standard_normal(rows * cols) * 0.1).astype("<f2").view(np.uint8)
        return QTensor("w", "F16", (rows, cols), raw)
    if type_name == "BF16":  # the top halves of float32 values
        raw = ((rng.standard_normal(rows * cols) * 0.1).astype(np.float32).view(np.uint32) >> 16).astype("<u2")
        return QTensor("w", "BF16", (rows, cols), raw.view(np.uint8))
    dt = quants.BLOCK_DTYPES[type_name]
    n_blocks = rows * cols // t.block_size
    blocks = np.frombuffer(rng.integers(0, 256, n_blocks * dt.itemsize, dtype=np.uint8).tobytes(), dtype=dt).copy()
    for name in dt.names:  # the fp16 scales: small and finite
        if dt[name] == np.dtype("<f2"):
            blocks[name] = rng.uniform(0.001, 0.01, n_blocks).astype("<f2")
    return QTensor("w", type_name, (rows, cols), blocks.view(np.uint8).reshape(-1))


def test_backend_description(backends):
    cpu, _ = backends
    assert cpu.name == "cpu"
    assert re.fullmatch(r"cpu [a-z0-9-]+, \d+ threads?", cpu.description), cpu.description


@needs_weights
@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_backend_weights(backends, type_name):
    cpu, ref = backends
    rng = rng_for(len(type_name))
    w = random_weight(type_name, 96, 512, rng)
    ids = np.array([0, 95, 3, 3, 50], dtype=np.int32)
    np.testing.assert_allclose(cpu.embed(w, ids), ref.embed(w, ids), rtol=1e-6, atol=1e-6)
    for n in (1, 5, 64):
        x = rng.standard_normal((n, 512)).astype(np.float32)
        got, want = cpu.matmul(w, x), ref.matmul(w, x)
        assert got.shape == want.shape == (n, 96) and got.dtype == np.float32
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 2e-2, f"{type_name} n={n}: relative error {err:.3g}"


def test_backend_elementwise(backends, variant):
    cpu, ref = backends
    rng = rng_for(3)
    for n in (1, 9, 200):
        x = rng.standard_normal((n, 640)).astype(np.float32)
        y = rng.standard_normal((n, 640)).astype(np.float32)
        for g in (640, 64):
            w = f32_weight(rng.standard_normal(g) + 1, "norm")
            np.testing.assert_allclose(cpu.rmsnorm(x, w, 1e-6), ref.rmsnorm(x, w, 1e-6), **TOL["rmsnorm"])
        w = f32_weight(rng.standard_normal(640) + 1, "norm")
        np.testing.assert_allclose(cpu.rmsnorm_add(x, w, 1e-6, y), y + ref.rmsnorm(x, w, 1e-6), **TOL["rmsnorm"])
        s, nrm = cpu.add_rmsnorm(x, y, w, 1e-6)
        np.testing.assert_array_equal(s, x + y)
        np.testing.assert_allclose(nrm, ref.rmsnorm(x + y, w, 1e-6), **TOL["rmsnorm"])
        np.testing.assert_array_equal(cpu.add(x, y), ref.add(x, y))
        np.testing.assert_array_equal(cpu.scale(x, np.sqrt(640.0)), ref.scale(x, np.sqrt(640.0)))
        np.testing.assert_allclose(cpu.silu_mul(x, y), ref.silu_mul(x, y), **TOL["gate"])
        np.testing.assert_allclose(cpu.gelu_mul(x, y), ref.gelu_mul(x, y), **TOL["gate"])
        a = cpu.from_numpy(x)
        np.testing.assert_array_equal(cpu.to_numpy(a), x)
    # inputs are never modified, results never alias each other
    x = rng.standard_normal((4, 256)).astype(np.float32)
    keep = x.copy()
    r1 = cpu.rope(x, np.arange(4), 2, 128, 1e4, True)
    r2 = cpu.rope(x, np.arange(4), 2, 128, 1e4, True)
    np.testing.assert_array_equal(x, keep)
    assert r1 is not r2 and not np.shares_memory(r1, r2)


def test_backend_rope(backends, variant):
    cpu, ref = backends
    rng = rng_for(4)
    for n, H, hd, n_rot, neox, base in [(1, 4, 256, None, True, 1e6), (7, 9, 64, None, False, 1e4),
                                        (33, 2, 128, 64, True, 1e4), (5, 3, 64, 32, False, 5e5)]:
        x = rng.standard_normal((n, H * hd)).astype(np.float32)
        for pos in (np.arange(10, 10 + n, dtype=np.int32), rng.integers(0, 30000, n)):
            for _ in range(2):  # the second call reads the cached table
                np.testing.assert_allclose(cpu.rope(x, pos, H, hd, base, neox, n_rot),
                                           ref.rope(x, pos, H, hd, base, neox, n_rot), **TOL["rope"])


def test_backend_kv_attention_sequence(backends, variant):
    # a prompt, then decode steps, layer by layer, with and without a sliding window
    cpu, ref = backends
    rng = rng_for(5)
    H, Hkv, hd, n_ctx = 4, 1, 256, 160
    caches = cpu.kv_cache(2, n_ctx, Hkv * hd), ref.kv_cache(2, n_ctx, Hkv * hd)
    assert isinstance(caches[0], KVCache) and caches[0].n_ctx == n_ctx
    pos0 = 0
    for n in (37, 1, 1, 90, 1, 2):
        for layer, window in ((0, 0), (1, 24)):
            k = rng.standard_normal((n, Hkv * hd)).astype(np.float32)
            v = rng.standard_normal((n, Hkv * hd)).astype(np.float32)
            q = rng.standard_normal((n, H * hd)).astype(np.float32)
            outs = []
            for be, cache in zip((cpu, ref), caches):
                be.kv_write(cache, layer, pos0, k, v)
                outs.append(be.attention(q, cache, layer, pos0, H, Hkv, hd, 1 / np.sqrt(hd), window))
            np.testing.assert_allclose(outs[0], outs[1], **TOL["attention"])
        pos0 += n
    np.testing.assert_array_equal(cpu.keys(caches[0], 1)[:pos0], caches[1].k[1][:pos0])
    np.testing.assert_array_equal(caches[0].v[1][:pos0], caches[1].v[1][:pos0])


def test_backend_cache_whose_keys_are_its_values(backends, variant):
    # MLA's cache: one row per position serves as key and value; one copy on the cpu backend
    cpu, ref = backends
    rng = rng_for(6)
    H, W, n_ctx = 16, 96, 100
    caches = cpu.kv_cache(2, n_ctx, W, keys_are_values=True), ref.kv_cache(2, n_ctx, W, keys_are_values=True)
    for c in caches:
        assert c.keys_are_values and all(k is v for k, v in zip(c.k, c.v))
    pos0 = 0
    for n in (21, 1, 1, 50):
        for layer in (0, 1):
            kv = rng.standard_normal((n, W)).astype(np.float32)
            q = rng.standard_normal((n, H * W)).astype(np.float32)
            outs = []
            for be, cache in zip((cpu, ref), caches):
                be.kv_write(cache, layer, pos0, kv, kv)
                outs.append(be.attention(q, cache, layer, pos0, H, 1, W, 1 / np.sqrt(W)))
            np.testing.assert_allclose(outs[0], outs[1], **TOL["attention"])
        pos0 += n
    np.testing.assert_array_equal(cpu.keys(caches[0], 1)[:pos0], caches[1].k[1][:pos0])
    with pytest.raises(ValueError, match="same array"):
        cpu.kv_write(caches[0], 0, 0, kv, kv.copy())
