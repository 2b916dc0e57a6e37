"""The CUDA kernels and CudaBackend against the NumPy reference.

Every test runs on two "devices":

* ``gpu``: the real kernels in ``pyengine._C.cuda`` on an NVIDIA GPU (marked ``cuda``;
  skipped, with the reason, where pyengine was built without CUDA or there is no GPU);
* ``emu``: the very same ``kernels/cuda/*.cu`` compiled by the host C++ compiler
  against the CPU emulator in ``kernels/cuda/emu`` (one fiber per GPU thread, real
  warp shuffles and barriers), so the kernels' logic is tested on any machine.
  Skipped when there is no C++ compiler or no source tree.

and with both kernel sets: ``tuned`` (what the backend uses) and ``simple`` (the
straightforward GPU-side oracle).

Oracles: ``pyengine.quants.dequantize`` for weights and the NumPy backend's reference
functions for the ops. Quantized matrix products are compared by normalised mean
squared error (the tuned kernels quantize activations to 8 bits, as llama.cpp does);
the other ops elementwise.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyengine import quants
from pyengine.backends import numpy_backend as nb
from pyengine.backends.cuda_backend import CudaBackend, DeviceArray, cuda_status
from pyengine.errors import BackendUnavailableError
from pyengine.ggml_types import ggml_type
from pyengine.tensor import QTensor
from pyengine.testing.blocks import random_raw

from conftest import load_cuda_emulator

ROOT = Path(__file__).resolve().parents[1]
# (overridable to test a modified copy of the kernels, e.g. for mutation checks)
EMU_BUILDER = Path(os.environ.get("PYENGINE_CUDA_EMU_BUILDER", ROOT / "kernels" / "cuda" / "emu" / "build_emu.py"))

EXAMPLES = int(os.environ.get("PYENGINE_CUDA_EXAMPLES", "15"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KERNEL_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")
FLOAT_TYPES = ("F32", "F16", "BF16")
MODES = ("normal", "zero", "extreme")
NMSE_TOL = 5e-4


# ---------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------
def _load_emulator():
    return load_cuda_emulator(EMU_BUILDER)


def _load_gpu():
    ok, reason, _ = cuda_status()
    if not ok:
        pytest.skip(f"no usable NVIDIA GPU: {reason}")
    from pyengine import _C

    return _C


@pytest.fixture(scope="session")
def emu_module():
    return _load_emulator()


@pytest.fixture(scope="session", params=[pytest.param("gpu", marks=pytest.mark.cuda), "emu"])
def native(request):
    """The extension module whose ``.cuda`` kernels are under test."""
    if request.param == "gpu":
        return _load_gpu()
    return request.getfixturevalue("emu_module")


@pytest.fixture(scope="session", params=["tuned", "simple"])
def backend(native, request):
    return CudaBackend(native=native, simple=request.param == "simple")


@pytest.fixture(scope="session")
def ref():
    return nb.NumpyBackend(quantize_activations=False)  # as the simple kernels; tuned ones: by NMSE


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def nmse(y: np.ndarray, r: np.ndarray) -> float:
    y = np.asarray(y, np.float64)
    r = np.asarray(r, np.float64)
    assert y.shape == r.shape, (y.shape, r.shape)
    assert np.all(np.isfinite(y)), "non-finite output"
    den = float(np.sum(r * r))
    num = float(np.sum((y - r) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def assert_close(y, r, rtol=1e-5, atol_frac=1e-6):
    """Elementwise, with an absolute slack relative to the largest reference value."""
    y = np.asarray(y, np.float32)
    r = np.asarray(r, np.float32)
    assert y.shape == r.shape, (y.shape, r.shape)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    np.testing.assert_allclose(y, r, rtol=rtol, atol=atol_frac * scale + 1e-30)


def assert_dot_close(got: np.ndarray, x: np.ndarray, W: np.ndarray, rel: float = 2e-5) -> None:
    """``got ~ x @ W.T`` up to float32 rounding: error <= rel * sum |x_i w_i| for every output."""
    x = np.asarray(x, np.float64)
    want = x @ W.T
    bound = rel * (np.abs(x) @ np.abs(W).T) + 1e-37
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(np.isfinite(got)), "non-finite output"
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"at {worst}: got {got[worst]}, want {want[worst]}, bound {bound[worst]}"


def weight(type_name: str, rows: int, cols: int, rng, scales: str = "normal", name: str = "w") -> QTensor:
    raw = random_raw(type_name, rows * cols, rng, scales=scales)
    return QTensor(name, type_name, (rows, cols), raw)


def vector(values: np.ndarray, name: str = "norm") -> QTensor:
    v = np.ascontiguousarray(values, dtype=np.float32)
    return QTensor(name, "F32", (v.size,), v.view(np.uint8))


def dense(w: QTensor) -> np.ndarray:
    return quants.dequantize(w.type_name, w.raw, w.n_elements).reshape(w.shape)


def cols_for(type_name: str, data) -> int:
    block = ggml_type(type_name).block_size
    if block == 256:
        return 256 * data.draw(st.integers(1, 6), label="blocks")
    if block == 32:
        return 32 * data.draw(st.integers(1, 40), label="blocks")
    return data.draw(st.integers(1, 300), label="cols")


# ---------------------------------------------------------------------------------
# availability and errors
# ---------------------------------------------------------------------------------
def test_status_reports_reason():
    ok, reason, info = cuda_status()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason and isinstance(info, dict)
    if not ok:
        with pytest.raises(BackendUnavailableError) as e:
            CudaBackend()
        assert str(e.value) == reason and "\n" not in reason


def test_built_without_cuda_message():
    class NoCuda:
        has_cuda = False

    ok, reason, _ = cuda_status(NoCuda())
    assert not ok and reason == "pyengine was built without CUDA (nvcc not found at build time, or PYENGINE_CUDA=OFF)"
    with pytest.raises(BackendUnavailableError, match="built without CUDA"):
        CudaBackend(native=NoCuda())


def test_no_gpu_message(emu_module, monkeypatch):
    monkeypatch.setenv("PYENGINE_CUDA_EMU_NO_DEVICE", "1")
    info = emu_module.cuda_device_info()
    assert info["available"] is False and "cudaErrorNoDevice" in info["error"]
    with pytest.raises(BackendUnavailableError, match=r"^no NVIDIA GPU found: cudaErrorNoDevice"):
        CudaBackend(native=emu_module)


def test_device_info_fields(native):
    info = native.cuda_device_info()
    assert info["available"] is True
    assert info["memory_total"] >= info["memory_free"] > 0
    assert len(info["compute_capability"]) == 2 and info["name"]
    assert info["runtime_version"] > 0


def test_upload_out_of_memory_names_sizes(emu_module, monkeypatch, rng=np.random.default_rng(0)):
    be = CudaBackend(native=emu_module)
    used = emu_module.cuda.mem_info()
    monkeypatch.setenv("PYENGINE_CUDA_EMU_MEM", str(used[1] - used[0] + 64 * 1024))  # 64 KiB free
    tensors = {"a": weight("Q8_0", 64, 2048, rng, name="a"), "b": weight("Q8_0", 64, 2048, rng, name="b")}
    with pytest.raises(BackendUnavailableError, match=r"needs 0\.3 MiB of GPU memory for its weights, but only 0\.1 MiB of .* is free on pyengine CUDA"):
        be.prepare(tensors)
    with pytest.raises(emu_module.cuda.CudaOutOfMemoryError, match=r"cannot allocate 1\.0 MiB .* free of"):
        emu_module.cuda.Buffer(1 << 20)


def test_buffer_checks(native):
    c = native.cuda
    b = c.Buffer(64)
    a = np.arange(16, dtype=np.float32)
    b.upload(a)
    out = np.zeros(16, np.float32)
    b.download(out)
    np.testing.assert_array_equal(out, a)
    with pytest.raises(ValueError, match="holds 64 bytes, needs 68"):
        b.upload(np.zeros(17, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        b.upload(np.zeros((4, 8), np.float32)[:, ::2])
    y = c.Buffer(4 * 4)
    with pytest.raises(ValueError, match="buffer 'y' holds 16 bytes, needs 32"):
        c.matmul(0, b, 2, 4, b, 4, y, simple=True)  # y would need 4*2 floats
    with pytest.raises(ValueError, match="whole number of 32-value blocks"):
        c.matmul(ggml_type("Q4_0").id, b, 1, 40, b, 1, y)
    with pytest.raises(ValueError, match="n_heads \\(6\\) is not a multiple of n_kv_heads \\(4\\)"):
        c.attention(b, b, b, 1, 0, 6, 4, 2, 1.0, 0, y)
    b.free()
    with pytest.raises(ValueError, match="has been freed"):
        b.download(out)


# ---------------------------------------------------------------------------------
# weights: matmul and embedding rows
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("type_name", KERNEL_TYPES + FLOAT_TYPES)
@SETTINGS
@given(data=st.data())
def test_matmul(backend, type_name, data):
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    rows = data.draw(st.integers(1, 70), label="rows")
    cols = cols_for(type_name, data)
    n = data.draw(st.sampled_from([1, 2, 3, 4, 5, 8, 9, 13]), label="n")
    # F32/BF16 "extreme" values reach 3e38: any product overflows float32, kernels or not
    modes = MODES if type_name not in ("F32", "BF16") else ("normal", "zero")
    mode = data.draw(st.sampled_from(modes), label="scales")
    xmag = data.draw(st.sampled_from([1e-3, 1.0, 1e3]), label="x magnitude")
    w = weight(type_name, rows, cols, rng, scales=mode)
    x = (rng.standard_normal((n, cols)) * xmag).astype(np.float32)
    if data.draw(st.booleans(), label="zero block"):
        x[:, : min(32, cols)] = 0.0  # 32 zeros: an all-zero activation block (scale 0) for the 32-value types
    W = dense(w).astype(np.float64)
    got = backend.to_numpy(backend.matmul(w, backend.from_numpy(x)))
    assert got.shape == (n, rows)
    if backend.simple or type_name in FLOAT_TYPES:
        assert_dot_close(got, x, W)  # float32 all the way
    else:
        # the tuned kernels quantize x as the spec does first: exact (up to float32 sums)
        # against the spec's activations ...
        assert_dot_close(got, quants.matmul_activations(type_name, x), W)
        # ... and within the usual 8-bit-activation error of the float result (NMSE is a
        # ratio of sums: it only means something over enough outputs and enough activation
        # scales, see tests/test_kernels.py::test_matmul_matches_reference)
        if rows * n >= 16 and n * cols // quants.act_block(type_name) >= 16:
            assert nmse(got, x.astype(np.float64) @ W.T) <= NMSE_TOL


@pytest.mark.parametrize("type_name", KERNEL_TYPES)
def test_matmul_tuned_vs_simple_on_model_shapes(native, type_name):
    """Decode (n=1) and prompt (n=37) at a real model's width, tuned kernel vs the simple oracle."""
    rng = np.random.default_rng(7)
    tuned, simple = CudaBackend(native=native), CudaBackend(native=native, simple=True)
    w = weight(type_name, 96, 1024 if ggml_type(type_name).block_size == 256 else 576, rng)
    for n in (1, 37):
        x = rng.standard_normal((n, w.cols)).astype(np.float32)
        a = tuned.to_numpy(tuned.matmul(w, x))
        b = simple.to_numpy(simple.matmul(w, x))
        assert nmse(a, b) <= NMSE_TOL
        assert nmse(b, x @ dense(w).T) <= 1e-10


def test_unsupported_type_runs_as_f32(backend):
    """Types the kernels lack (Q8_K) are dequantized on the host once and run as F32."""
    rng = np.random.default_rng(3)
    for t in ("Q8_K",):
        w = weight(t, 9, 256, rng)
        x = rng.standard_normal((3, 256)).astype(np.float32)
        assert nmse(backend.to_numpy(backend.matmul(w, x)), x @ dense(w).T) <= 1e-10


@pytest.mark.parametrize("type_name", KERNEL_TYPES + FLOAT_TYPES)
@SETTINGS
@given(data=st.data())
def test_embed(backend, ref, type_name, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    rows = data.draw(st.integers(1, 40), label="rows")
    cols = cols_for(type_name, data)
    w = weight(type_name, rows, cols, rng, scales=data.draw(st.sampled_from(MODES), label="scales"))
    ids = rng.integers(0, rows, data.draw(st.integers(1, 12), label="n"))
    got = backend.to_numpy(backend.embed(w, ids))
    assert_close(got, ref.embed(w, ids), rtol=1e-6)


def test_embed_rejects_bad_ids(backend):
    w = weight("Q8_0", 4, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="out of range"):
        backend.embed(w, np.array([0, 4]))


def test_prepare_uploads_once(backend):
    rng = np.random.default_rng(5)
    tensors = {"w": weight("Q4_K", 8, 256, rng), "n": vector(rng.standard_normal(256))}
    backend.prepare(tensors)
    handles = {k: t.cache[backend._key] for k, t in tensors.items()}
    backend.prepare(tensors)
    assert all(t.cache[backend._key] is handles[k] for k, t in tensors.items())
    assert handles["w"].type_id == ggml_type("Q4_K").id and handles["n"].type_id == 0


# ---------------------------------------------------------------------------------
# elementwise and normalisation
# ---------------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(1, 9), g=st.integers(1, 300), k=st.integers(1, 4), eps=st.sampled_from([1e-6, 1e-5, 1e-2]),
       mag=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**32 - 1))
def test_rmsnorm(backend, ref, n, g, k, eps, mag, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k * g)) * mag).astype(np.float32)
    w = vector(rng.standard_normal(g))
    got = backend.to_numpy(backend.rmsnorm(backend.from_numpy(x), w, eps))
    assert_close(got, ref.rmsnorm(x, w, eps), rtol=2e-5, atol_frac=2e-6)


@SETTINGS
@given(shape=st.tuples(st.integers(1, 7), st.integers(1, 700)), mag=st.sampled_from([1e-2, 1.0, 30.0]),
       s=st.floats(-8, 8, width=32), seed=st.integers(0, 2**32 - 1))
def test_elementwise(backend, ref, shape, mag, s, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * mag).astype(np.float32)
    b = (rng.standard_normal(shape) * mag).astype(np.float32)
    row = (rng.standard_normal((1, shape[1])) * mag).astype(np.float32)
    da, db = backend.from_numpy(a), backend.from_numpy(b)
    assert_close(backend.to_numpy(backend.add(da, db)), ref.add(a, b), rtol=1e-6)
    assert_close(backend.to_numpy(backend.add(da, backend.from_numpy(row))), ref.add(a, row), rtol=1e-6)
    assert_close(backend.to_numpy(backend.scale(da, s)), ref.scale(a, s), rtol=1e-6)
    assert_close(backend.to_numpy(backend.silu_mul(da, db)), ref.silu_mul(a, b), rtol=1e-5)
    assert_close(backend.to_numpy(backend.gelu_mul(da, db)), ref.gelu_mul(a, b), rtol=1e-5)


def test_gates_extremes(backend, ref):
    g = np.array([[-1e30, -100.0, -20.0, -0.0, 0.0, 1e-30, 20.0, 100.0, 1e30, 3.0, -3.0, 0.5]], np.float32)
    u = np.full_like(g, 2.0)
    for op in ("silu_mul", "gelu_mul"):
        got = backend.to_numpy(getattr(backend, op)(g, u))
        with np.errstate(over="ignore"):
            want = getattr(ref, op)(g, u)
        assert_close(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------------
# rope and attention
# ---------------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(1, 6), n_heads=st.integers(1, 5), half=st.integers(1, 40), rot_frac=st.sampled_from([1.0, 0.5, 0.25]),
       neox=st.booleans(), base=st.sampled_from([10000.0, 1e6]), pos0=st.sampled_from([0, 5, 1000, 100000]),
       seed=st.integers(0, 2**32 - 1))
def test_rope(backend, n, n_heads, half, rot_frac, neox, base, pos0, seed):
    rng = np.random.default_rng(seed)
    head_dim = 2 * half
    n_rot = max(2, 2 * int(half * rot_frac))
    x = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    pos = (pos0 + rng.permutation(n)).astype(np.int32)
    got = backend.to_numpy(backend.rope(backend.from_numpy(x), pos, n_heads, head_dim, base, neox, n_rot))
    want = nb.rope_reference(x, pos, n_heads, head_dim, base, neox, n_rot)
    assert_close(got, want, rtol=1e-4, atol_frac=1e-5)


def fill_cache(be, rng, n_layers, n_ctx, kvw, upto, layer):
    cache = be.kv_cache(n_layers, n_ctx, kvw)
    k = rng.standard_normal((upto, kvw)).astype(np.float32)
    v = rng.standard_normal((upto, kvw)).astype(np.float32)
    # two writes, like a prompt then a decode step
    cut = upto // 2
    be.kv_write(cache, layer, 0, be.from_numpy(k[:cut]), be.from_numpy(v[:cut]))
    be.kv_write(cache, layer, cut, be.from_numpy(k[cut:]), be.from_numpy(v[cut:]))
    return cache, k, v


@SETTINGS
@given(n=st.integers(1, 6), pos0=st.integers(0, 40), n_kv_heads=st.integers(1, 3), group=st.integers(1, 3),
       head_dim=st.sampled_from([8, 32, 40, 64, 96, 128, 256, 264]), window=st.sampled_from([0, 1, 3, 17]),
       splits=st.sampled_from([None, 1, 2, 3, 7]), sharp=st.sampled_from([0.1, 1.0, 8.0]),
       seed=st.integers(0, 2**32 - 1))
def test_attention(backend, n, pos0, n_kv_heads, group, head_dim, window, splits, sharp, seed):
    rng = np.random.default_rng(seed)
    H = n_kv_heads * group
    t = pos0 + n
    cache, k, v = fill_cache(backend, rng, 2, t + 3, n_kv_heads * head_dim, t, layer=1)
    q = (rng.standard_normal((n, H * head_dim)) * sharp).astype(np.float32)
    scale = 1.0 / np.sqrt(head_dim)
    got = backend.to_numpy(backend.attention(backend.from_numpy(q), cache, 1, pos0, H, n_kv_heads, head_dim, scale,
                                             window=window, n_splits=splits))
    want = nb.attention_reference(q, k, v, pos0, H, n_kv_heads, head_dim, scale, window)
    assert_close(got, want, rtol=1e-4, atol_frac=1e-5)


def test_kv_cache_layers_are_separate(backend):
    rng = np.random.default_rng(11)
    cache = backend.kv_cache(3, 8, 16)
    k = rng.standard_normal((2, 16)).astype(np.float32)
    backend.kv_write(cache, 1, 3, k, -k)
    ks = [backend.to_numpy(cache.k[i]) for i in range(3)]
    assert not ks[0].any() and not ks[2].any()
    np.testing.assert_array_equal(ks[1][3:5], k)
    np.testing.assert_array_equal(backend.to_numpy(cache.v[1])[3:5], -k)
    with pytest.raises(ValueError, match="outside the cache"):
        backend.kv_write(cache, 0, 7, k, k)


# ---------------------------------------------------------------------------------
# CudaBackend vs NumpyBackend over a whole decoder block
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("neox,gelu,window", [(False, False, 0), (True, True, 5)])
def test_block_sequence_matches_numpy(backend, ref, neox, gelu, window):
    """Prompt then decode steps through embed, norm, rope, attention, gated MLP and the head."""
    rng = np.random.default_rng(21)
    d, H, Hkv, hd, ffn, vocab = 256, 4, 2, 64, 512, 50
    types = iter(["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q4_K", "F16"])
    W = {
        "emb": weight("Q6_K", vocab, d, rng, name="emb"),
        "wq": weight(next(types), H * hd, d, rng, name="wq"),
        "wk": weight(next(types), Hkv * hd, d, rng, name="wk"),
        "wv": weight(next(types), Hkv * hd, d, rng, name="wv"),
        "wo": weight(next(types), d, H * hd, rng, name="wo"),
        "gate": weight(next(types), ffn, d, rng, name="gate"),
        "up": weight(next(types), ffn, d, rng, name="up"),
        "down": weight(next(types), d, ffn, rng, name="down"),
        "n1": vector(1 + 0.1 * rng.standard_normal(d), "n1"),
        "n2": vector(1 + 0.1 * rng.standard_normal(d), "n2"),
        "qn": vector(1 + 0.1 * rng.standard_normal(hd), "qn"),
    }
    backend.prepare(W)

    def run(be, ids, pos0, cache):
        n = len(ids)
        pos = np.arange(pos0, pos0 + n, dtype=np.int32)
        x = be.scale(be.embed(W["emb"], ids), 16.0)
        h = be.rmsnorm(x, W["n1"], 1e-6)
        q = be.rope(be.rmsnorm(be.matmul(W["wq"], h), W["qn"], 1e-6), pos, H, hd, 10000.0, neox)
        k = be.rope(be.matmul(W["wk"], h), pos, Hkv, hd, 10000.0, neox)
        be.kv_write(cache, 0, pos0, k, be.matmul(W["wv"], h))
        a = be.attention(q, cache, 0, pos0, H, Hkv, hd, 1 / 8, window=window)
        x = be.add(x, be.matmul(W["wo"], a))
        h = be.rmsnorm(x, W["n2"], 1e-6)
        gate = (be.gelu_mul if gelu else be.silu_mul)(be.matmul(W["gate"], h), be.matmul(W["up"], h))
        x = be.add(x, be.matmul(W["down"], gate))
        x = x[n - 1:n]
        return be.to_numpy(be.matmul(W["emb"], be.rmsnorm(x, W["n1"], 1e-6)))

    c_gpu, c_ref = backend.kv_cache(1, 16, Hkv * hd), ref.kv_cache(1, 16, Hkv * hd)
    steps = [rng.integers(0, vocab, 6), [3], [7], [1]]
    pos0 = 0
    for ids in steps:
        got = run(backend, np.asarray(ids), pos0, c_gpu)
        want = run(ref, np.asarray(ids), pos0, c_ref)
        assert got.shape == want.shape == (1, vocab)
        assert nmse(got, want) <= (1e-8 if backend.simple else 5e-3)
        pos0 += len(ids)


def test_device_array_slices(backend):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    d = backend.from_numpy(x)
    assert isinstance(d, DeviceArray) and d.shape == (6, 4) and len(d) == 6
    np.testing.assert_array_equal(backend.to_numpy(d[2:5]), x[2:5])
    np.testing.assert_array_equal(backend.to_numpy(d[5:6]), x[5:6])
    np.testing.assert_array_equal(np.asarray(d), x)
    with pytest.raises(TypeError):
        d[1]


# ---------------------------------------------------------------------------------
# memory safety of the kernels (opt-in: slow)
# ---------------------------------------------------------------------------------
@pytest.mark.skipif(not os.environ.get("PYENGINE_CUDA_ASAN"),
                    reason="set PYENGINE_CUDA_ASAN=1 to rerun the emulator tests under AddressSanitizer (slow)")
def test_emulated_kernels_under_address_sanitizer():
    """Every emulator test again, with exact-size device buffers, under ASan: any read or
    write of a kernel outside its buffers fails (it would be an illegal address on a GPU)."""
    def lib(name):
        return subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()

    env = dict(os.environ, PYENGINE_CUDA_EMU_ASAN="1", ASAN_OPTIONS="detect_leaks=0", PYENGINE_CUDA_ASAN="",
               LD_PRELOAD=f"{lib('libasan.so')} {lib('libstdc++.so')}")
    code = ("import sys, pytest\n"
            "from pyengine.backends import cuda_backend as cb\n"
            "cb._Pool.size_class = staticmethod(lambda n: max(int(n), 4))\n"
            f"sys.exit(pytest.main([{str(Path(__file__))!r}, '-q', '-p', 'no:cacheprovider', '-k', 'emu']))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
