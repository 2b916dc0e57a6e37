"""The ops the architectures beyond Llama need, on every CPU tier against the NumPy spec:
``add_bias`` (Qwen2), ``softcap`` and attention soft-capping (Gemma 2), rope scaling
(Llama 3.1 frequency factors, linear, YaRN; Phi-3 LongRoPE).

The spec itself is checked against independent formulations: linear scaling equals
rope at fractional positions, uniform frequency factors equal linear scaling, and YaRN
equals a direct per-pair transcription of ggml's ``rope_yarn`` (ggml-cpu/ops.cpp) and
``ggml_rope_yarn_corr_dims`` (ggml.c).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyengine.backends import numpy_backend as nb
from pyengine.backends.base import KVCache, RopeScaling
from pyengine.tensor import QTensor

from conftest import load_cuda_emulator, native_built

HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FAST = settings(max_examples=20, deadline=None, suppress_health_check=HEALTH)


def f32_weight(w, name="w") -> QTensor:
    w = np.ascontiguousarray(w, dtype=np.float32)
    return QTensor(name, "F32", w.shape, w.reshape(-1).view(np.uint8))


def tiers():
    out = ["numba"]
    if native_built():
        from pyengine import _C

        out += [f"cpu-{v}" for v in _C.ops_variants()]
    return out + ["cuda-emu-tuned", "cuda-emu-simple"]


@pytest.fixture(scope="session")
def cuda_emu():
    """kernels/cuda/*.cu compiled against the CPU emulator (see tests/test_cuda.py)."""
    from pathlib import Path

    return load_cuda_emulator(Path(__file__).resolve().parents[1] / "kernels" / "cuda" / "emu" / "build_emu.py")


@pytest.fixture(params=tiers())
def ops(request):
    """A backend of the tier (cpu-<variant> switches the native kernel variant; cuda-emu-*:
    the CUDA kernels on the CPU emulator, tuned and simple)."""
    name = request.param
    if name == "numba":
        from pyengine.backends.numba_backend import NumbaBackend

        yield NumbaBackend()
        return
    if name.startswith("cuda-emu"):
        from pyengine.backends.cuda_backend import CudaBackend

        yield CudaBackend(native=request.getfixturevalue("cuda_emu"), simple=name.endswith("simple"))
        return
    from pyengine import _C
    from pyengine.backends.cpu_backend import CpuBackend

    prev = _C.set_ops_variant(name.split("-", 1)[1])
    try:
        yield CpuBackend()
    finally:
        _C.set_ops_variant(prev)


REF = nb.NumpyBackend()


# ----------------------------------------------------------------------------- add_bias / softcap

@FAST
@given(n=st.integers(1, 40), d=st.sampled_from([1, 7, 16, 33, 896]), seed=st.integers(0, 2**31))
def test_add_bias(ops, n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    b = f32_weight(rng.standard_normal(d))
    want = REF.add_bias(x, b)
    np.testing.assert_array_equal(want, x + b.raw.view(np.float32))  # the spec: a plain row broadcast
    np.testing.assert_array_equal(ops.add_bias(x, b), want)  # one IEEE addition: exact on every tier


@FAST
@given(n=st.integers(1, 9), d=st.sampled_from([1, 5, 16, 100, 1000]), cap=st.sampled_from([0.5, 5.0, 30.0, 50.0]),
       mag=st.sampled_from([0.1, 10.0, 1000.0]), seed=st.integers(0, 2**31))
def test_softcap(ops, n, d, cap, mag, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * mag).astype(np.float32)
    want = REF.softcap(x, cap)
    np.testing.assert_allclose(want, cap * np.tanh(x.astype(np.float64) / cap), rtol=1e-6, atol=1e-6 * cap)
    assert np.all(np.abs(want) <= cap)
    np.testing.assert_allclose(ops.softcap(x, cap), want, rtol=2e-6, atol=1e-6 * cap)


# ----------------------------------------------------------------------------- attention soft-capping

def _cache(ops, k, v, n_ctx):
    cache = ops.kv_cache(1, n_ctx, k.shape[1])
    ops.kv_write(cache, 0, 0, k, v)
    return cache


@FAST
@given(n=st.integers(1, 12), pos0=st.integers(0, 80), n_kv=st.sampled_from([1, 2]), group=st.sampled_from([1, 4]),
       hd=st.sampled_from([16, 64, 256]), window=st.sampled_from([0, 0, 3, 17]), cap=st.sampled_from([0.0, 1.0, 50.0]),
       sharp=st.sampled_from([1.0, 8.0]), seed=st.integers(0, 2**31))
def test_attention_softcap(ops, n, pos0, n_kv, group, hd, window, cap, sharp, seed):
    rng = np.random.default_rng(seed)
    H, t = n_kv * group, pos0 + n
    q = (rng.standard_normal((n, H * hd)) * sharp).astype(np.float32)
    k = rng.standard_normal((t, n_kv * hd)).astype(np.float32)
    v = rng.standard_normal((t, n_kv * hd)).astype(np.float32)
    scale = 1.0 / math.sqrt(hd)
    want = nb.attention_reference(q, k, v, pos0, H, n_kv, hd, scale, window, cap)
    if cap:  # the spec: softmax of cap * tanh(scale q.k / cap) over the visible keys
        qh, kh, vh = q.reshape(n, H, hd), k.reshape(t, n_kv, hd), v.reshape(t, n_kv, hd)
        for i in (0, n - 1):
            p = pos0 + i
            lo = max(0, p - window + 1) if window else 0
            for h in (0, H - 1):
                s = kh[lo:p + 1, h // group].astype(np.float64) @ qh[i, h].astype(np.float64) * scale
                s = cap * np.tanh(s / cap)
                w = np.exp(s - s.max())
                ref = (w / w.sum()) @ vh[lo:p + 1, h // group]
                np.testing.assert_allclose(want[i, h * hd:(h + 1) * hd], ref, rtol=1e-4, atol=1e-5)
    got = ops.attention(q, _cache(ops, k, v, t + 5), 0, pos0, H, n_kv, hd, scale, window=window,
                        **({"softcap": cap} if cap else {}))
    # float32 scores carry an absolute error of ~eps32 * scale * |q||k| (summation order differs
    # between tiers); the softmax passes it on to the output times |v|. Sharp queries at
    # head_dim 256 make that bound exceed 1e-5 (a fixed atol failed such draws by 1.1e-5).
    score_err = np.finfo(np.float32).eps * scale * np.linalg.norm(q.reshape(n, H, hd), axis=-1).max() \
        * np.linalg.norm(k.reshape(t, n_kv, hd), axis=-1).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=max(1e-5, 4 * score_err * np.abs(v).max()))


# ----------------------------------------------------------------------------- rope scaling

def yarn_ggml(positions, n_rot, base, fs, ext, attn, beta_fast, beta_slow, n_ctx_orig, ff=None):
    """cos/sin (n, n_rot/2) transcribed pair by pair from ggml's rope_yarn (float64 here)."""
    def corr_dim(beta):
        return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))
    lo = max(0.0, math.floor(corr_dim(beta_fast))) if n_ctx_orig else 0.0
    hi = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow))) if n_ctx_orig else 0.0
    theta_scale = base ** (-2.0 / n_rot)
    cos = np.zeros((len(positions), n_rot // 2))
    sin = np.zeros_like(cos)
    for t, p in enumerate(positions):
        theta = float(p)
        for i0 in range(0, n_rot, 2):
            f = 1.0 if ff is None else float(ff[i0 // 2])
            extrap = theta / f
            interp = fs * extrap
            th, m = interp, attn
            if ext != 0.0:
                y = (i0 / 2 - lo) / max(0.001, hi - lo)
                mix = (1 - min(1, max(0, y))) * ext
                th = interp * (1 - mix) + extrap * mix
                m *= 1.0 + 0.1 * math.log(1.0 / fs)
            cos[t, i0 // 2], sin[t, i0 // 2] = math.cos(th) * m, math.sin(th) * m
            theta *= theta_scale
    return cos, sin


def rope_with_table(x, cos, sin, n_heads, hd, n_rot, neox):
    xh = x.reshape(x.shape[0], n_heads, hd).astype(np.float64).copy()
    half = n_rot // 2
    c, s = cos[:, None, :], sin[:, None, :]
    if neox:
        a, b = xh[..., :half].copy(), xh[..., half:n_rot].copy()
        xh[..., :half], xh[..., half:n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = xh[..., 0:n_rot:2].copy(), xh[..., 1:n_rot:2].copy()
        xh[..., 0:n_rot:2], xh[..., 1:n_rot:2] = a * c - b * s, a * s + b * c
    return xh.reshape(x.shape[0], -1)


SCALINGS = {
    "linear": lambda half, rng: RopeScaling(freq_scale=0.25),
    "llama3-factors": lambda half, rng: RopeScaling(freq_factors=rng.uniform(1, 8, half).astype(np.float32),
                                                     n_ctx_orig=8192),
    "yarn": lambda half, rng: RopeScaling(freq_scale=0.25, ext_factor=1.0, attn_factor=0.9, n_ctx_orig=64),
    "yarn-betas": lambda half, rng: RopeScaling(freq_scale=1 / 40, ext_factor=0.5, beta_fast=16, beta_slow=2,
                                                n_ctx_orig=4096),
    "longrope": lambda half, rng: RopeScaling(freq_factors=rng.uniform(1, 3, half).astype(np.float32),
                                              attn_factor=1.19, n_ctx_orig=4096),
}


def test_rope_linear_is_rope_at_scaled_positions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4 * 32)).astype(np.float32)
    pos = np.arange(10, 16)
    got = nb.rope_reference(x, pos, 4, 32, 10000.0, True, 32, RopeScaling(freq_scale=0.25))
    want = nb.rope_reference(x, pos * 0.25, 4, 32, 10000.0, True, 32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    same = nb.rope_reference(x, pos, 4, 32, 10000.0, True, 32,
                             RopeScaling(freq_factors=np.full(16, 4.0, np.float32)))
    np.testing.assert_allclose(same, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(SCALINGS))
@pytest.mark.parametrize("neox,n_rot", [(True, 64), (False, 64), (False, 32)])
def test_rope_scaled_spec_matches_ggml_formula(kind, neox, n_rot):
    rng = np.random.default_rng(1)
    hd, H = 64, 3
    sc = SCALINGS[kind](n_rot // 2, rng)
    pos = np.array([0, 1, 7, 100, 5000, 70000])
    x = rng.standard_normal((len(pos), H * hd)).astype(np.float32)
    cos, sin = yarn_ggml(pos, n_rot, 500000.0, sc.freq_scale, sc.ext_factor, sc.attn_factor, sc.beta_fast,
                         sc.beta_slow, sc.n_ctx_orig, sc.freq_factors)
    want = rope_with_table(x, cos, sin, H, hd, n_rot, neox)
    got = nb.rope_reference(x, pos, H, hd, 500000.0, neox, n_rot, sc)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    if kind.startswith("yarn"):  # the ramp really mixes: not plain linear scaling
        lin = nb.rope_reference(x, pos, H, hd, 500000.0, neox, n_rot, RopeScaling(freq_scale=sc.freq_scale))
        assert np.abs(got - lin).max() > 1e-2


@pytest.mark.parametrize("kind", sorted(SCALINGS))
@pytest.mark.parametrize("neox,n_rot", [(True, 64), (False, 32)])
def test_rope_scaled_every_tier(ops, kind, neox, n_rot):
    rng = np.random.default_rng(2)
    hd, H = 64, 3
    sc = SCALINGS[kind](n_rot // 2, rng)
    pos = np.array([0, 3, 90, 4000, 65000])
    x = rng.standard_normal((len(pos), H * hd)).astype(np.float32)
    want = REF.rope(x, pos, H, hd, 500000.0, neox, n_rot, sc)
    np.testing.assert_allclose(ops.rope(x, pos, H, hd, 500000.0, neox, n_rot, sc), want, rtol=1e-5, atol=1e-5)
    # the identity scaling changes nothing, bit for bit
    plain = ops.rope(x, pos, H, hd, 500000.0, neox, n_rot)
    np.testing.assert_array_equal(ops.rope(x, pos, H, hd, 500000.0, neox, n_rot, RopeScaling()), plain)


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_native_rope_table_rejects_bad_scaling():
    from pyengine import _C

    pos = np.arange(3, dtype=np.float64)
    c = np.empty((3, 8), np.float32)
    s = np.empty_like(c)
    with pytest.raises(ValueError, match="freq_factors"):
        _C.rope_table(pos, 10000.0, 16, c, s, freq_factors=np.ones(7, np.float32))
    with pytest.raises(ValueError, match="n_ctx_orig"):
        _C.rope_table(pos, 10000.0, 16, c, s, ext_factor=1.0, freq_scale=0.5)
    with pytest.raises(ValueError, match="freq_scale"):
        _C.rope_table(pos, 10000.0, 16, c, s, freq_scale=0.0)
    with pytest.raises(ValueError, match="cap"):
        _C.softcap(c, 0.0, s)
    with pytest.raises(ValueError, match="width"):
        _C.add_bias(c, np.ones(7, np.float32), s)
