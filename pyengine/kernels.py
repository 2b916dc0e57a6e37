"""The quantized matmul kernels behind one call, on any backend.

>>> from pyengine import kernels
>>> y = kernels.matmul("Q4_K", raw, (rows, cols), x)        # x (n, cols) or (cols,)

``raw`` is a weight's GGUF bytes (``bytes``, ``memoryview`` or a uint8 array), ``shape``
is ``(rows, cols)`` with ``cols`` the contiguous, reduced dimension, and the result is
``x @ W.T``: float32 ``(n, rows)``, or ``(rows,)`` for a 1-D ``x``.

Backends:

* ``"numpy"`` -- the spec, :func:`pyengine.quants.matmul`: for a quantized weight type ``x``
  is quantized to int8 per block (32 values, 256 for the super-block types) and decoded, the weight dequantized with
  :func:`pyengine.quants.dequantize`, then a float32 matmul. Slow and memory hungry.
* ``"numba"`` -- :func:`pyengine.numba_kernels.matmul` (imported on first use), a port of
  the spec.
* ``"cpu"``   -- the native kernels in ``pyengine._C`` (C++: scalar, AVX2, AVX-512 VNNI;
  multi-threaded), which compute the spec with integer dots.
  ``variant`` picks the instruction set: ``"generic"``, ``"avx2"``, ``"avx512"`` or
  ``"auto"`` (the best this CPU runs); see :func:`kernel_variants`.
* ``"auto"``  -- ``cpu`` when the extension is importable and knows the type, else
  ``numba`` when importable, else ``numpy``.

For a quantized weight type every backend carries the same int8 activation rounding: against the exact
product of ``x`` and the dequantized weight its results differ by a normalized MSE of
about 3e-5 per 32-value scale and 5e-5 per 256 (bound 5e-4, tests/test_kernels.py), and against each other only by float32
summation order.

A build without native code (``PYENGINE_NO_NATIVE=1``) or without numba degrades to
the backends that exist; :func:`available_backends` says which.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .ggml_types import INTERNAL, SUPPORTED, ggml_type

__all__ = [
    "matmul", "get_rows", "available_backends", "native_available", "numba_available",
    "native_types", "kernel_variants", "cpu_features", "set_num_threads", "get_num_threads",
]

#: Weight types the native CPU kernels take: every supported type (tests/test_kernels.py runs each).
NATIVE_TYPES = SUPPORTED

_BACKENDS = ("numpy", "numba", "cpu")


@functools.lru_cache(maxsize=None)
def _native() -> Any:
    try:
        from . import _C  # type: ignore[attr-defined]
    except Exception:  # ImportError, or an extension built for another CPU/ABI: degrade
        return None
    return _C


@functools.lru_cache(maxsize=None)
def _numba() -> Any:
    try:
        from . import numba_kernels
    except Exception:
        return None
    return numba_kernels


def native_available() -> bool:
    """Whether the compiled extension ``pyengine._C`` imports."""
    return _native() is not None


def numba_available() -> bool:
    """Whether :mod:`pyengine.numba_kernels` (and so numba) imports."""
    return _numba() is not None


def available_backends() -> list[str]:
    """The backends usable here, reference first: a subset of ``["numpy", "numba", "cpu"]``."""
    out = ["numpy"]
    if numba_available():
        out.append("numba")
    if native_available():
        out.append("cpu")
    return out


def native_types() -> tuple[str, ...]:
    """Weight types the native kernels take (empty without the extension)."""
    return NATIVE_TYPES if native_available() else ()


def kernel_variants() -> list[str]:
    """Instruction-set variants of the native kernels this CPU runs, slowest first ([] without them)."""
    C = _native()
    return list(C.kernel_variants()) if C is not None else []


def cpu_features() -> dict[str, bool]:
    """CPUID flags as the native extension sees them ({} without it)."""
    C = _native()
    return dict(C.cpu_features()) if C is not None else {}


def set_num_threads(n: int) -> None:
    """Threads of the native kernels (n <= 0: one per core). No-op without the extension."""
    C = _native()
    if C is not None:
        C.set_num_threads(int(n))


def get_num_threads() -> int:
    C = _native()
    return int(C.get_num_threads()) if C is not None else 1


# ---------------------------------------------------------------------------------------------
def _raw_u8(raw) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        a = raw if raw.dtype == np.uint8 else raw.reshape(-1).view(np.uint8)
        return np.ascontiguousarray(a).reshape(-1)
    try:
        return np.frombuffer(raw, dtype=np.uint8)
    except TypeError:
        raise TypeError(f"raw must be bytes, a memoryview or a uint8 array, got {type(raw).__name__}") from None


def _geometry(type_name: str, shape) -> tuple[str, int, int, int]:
    t = ggml_type(type_name)  # ValueError for an unknown name
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, cols), got {shape!r}") from None
    if rows < 0 or cols < 0:
        raise ValueError(f"shape must be non-negative, got {(rows, cols)}")
    return t.name, rows, cols, rows * t.n_bytes(cols)  # n_bytes: ValueError if cols is not whole blocks


def _pick(backend: str, type_name: str) -> str:
    if backend == "auto":
        if native_available() and type_name in NATIVE_TYPES:
            return "cpu"
        return "numba" if numba_available() else "numpy"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (expected one of: auto, {', '.join(_BACKENDS)})")
    if backend == "cpu":
        if not native_available():
            raise RuntimeError("backend 'cpu' needs the native extension pyengine._C, which is not importable "
                               "(installed with PYENGINE_NO_NATIVE=1?)")
        if type_name not in NATIVE_TYPES and type_name not in INTERNAL:  # INTERNAL: load-time forms (Q3_K_R)
            raise ValueError(f"backend 'cpu' has no kernel for {type_name} (it has: {', '.join(NATIVE_TYPES)})")
    if backend == "numba" and not numba_available():
        raise RuntimeError("backend 'numba' is not available (numba not installed?)")
    return backend


def matmul(type_name: str, raw_bytes, shape, x, backend: str = "auto", variant: str = "auto") -> np.ndarray:
    """``x @ W.T`` for ``W (rows, cols)`` given as GGUF bytes of ``type_name``.

    x: float32 ``(n, cols)`` -> ``(n, rows)``, or ``(cols,)`` -> ``(rows,)``.
    backend: ``"auto"``, ``"numpy"``, ``"numba"`` or ``"cpu"``; variant (cpu only):
    ``"auto"``, ``"generic"``, ``"avx2"`` or ``"avx512"``.
    """
    name, rows, cols, n_bytes = _geometry(type_name, shape)
    raw = _raw_u8(raw_bytes)
    if raw.size != n_bytes:
        raise ValueError(f"{name} weight of shape ({rows}, {cols}) needs {n_bytes} bytes, got {raw.size}")
    x = np.asarray(x)
    if x.ndim not in (1, 2) or x.shape[-1] != cols:
        raise ValueError(f"x must have shape (n, {cols}) or ({cols},), got {x.shape}")
    one = x.ndim == 1
    x2 = np.ascontiguousarray(x.reshape(1, cols) if one else x, dtype=np.float32)
    be = _pick(backend, name)
    if variant != "auto" and be != "cpu":
        raise ValueError(f"variant={variant!r} only applies to the cpu backend (got backend {be!r})")

    if be == "cpu":
        out = np.empty((x2.shape[0], rows), dtype=np.float32)
        _native().matmul(name, raw, rows, cols, x2, out, variant)
    elif be == "numba":
        out = np.asarray(_numba().matmul(name, raw, (rows, cols), x2), dtype=np.float32)
    else:
        from . import quants

        out = quants.matmul(name, raw, (rows, cols), x2)
    return out[0] if one else out


def get_rows(type_name: str, raw_bytes, shape, ids, backend: str = "auto") -> np.ndarray:
    """Rows ``ids`` of ``W (rows, cols)`` (an embedding table), dequantized: float32 ``(len(ids), cols)``."""
    name, rows, cols, n_bytes = _geometry(type_name, shape)
    raw = _raw_u8(raw_bytes)
    if raw.size != n_bytes:
        raise ValueError(f"{name} weight of shape ({rows}, {cols}) needs {n_bytes} bytes, got {raw.size}")
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise IndexError(f"row ids must be in [0, {rows})")
    be = _pick(backend, name)
    if be == "cpu":
        out = np.empty((ids.size, cols), dtype=np.float32)
        _native().get_rows(name, raw, rows, cols, np.ascontiguousarray(ids, dtype=np.int32), out)
        return out
    if be == "numba":
        return np.asarray(_numba().get_rows(name, raw, (rows, cols), ids), dtype=np.float32)
    from . import quants

    row_bytes = n_bytes // rows if rows else 0
    out = np.empty((ids.size, cols), dtype=np.float32)
    for i, r in enumerate(ids):
        out[i] = quants.dequantize(name, raw[int(r) * row_bytes:(int(r) + 1) * row_bytes], cols, cols=cols)
    return out
