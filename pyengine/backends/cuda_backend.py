"""The CUDA backend: every op runs on an NVIDIA GPU (kernels in ``kernels/cuda``, bound as ``pyengine._C.cuda``).

Weights are uploaded once, in :meth:`CudaBackend.prepare`, in their GGUF encoding
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, F32, F16
and BF16 are read directly by the kernels; any other type is dequantized to F32 on the
host first, at 4 bytes per weight). Norm vectors are uploaded as float32. Activations are :class:`DeviceArray`
objects that stay in GPU memory from op to op; only :meth:`CudaBackend.to_numpy`
copies back to the host. The KV cache is float32 on the GPU.

All work goes to the default CUDA stream, so it runs in call order; a fault inside a
kernel is reported (as ``pyengine._C.cuda.CudaError``) by the next call that waits
for the GPU, usually ``to_numpy``.

``CudaBackend(simple=True)`` runs the straightforward kernels (one thread per output
value, no activation quantization), the on-GPU oracle the tuned ones are tested against.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import BackendUnavailableError
from ..ggml_types import ggml_type
from ..tensor import QTensor
from .base import Backend, KVCache, _check_same

_F32 = np.dtype(np.float32)


# ---------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------
def _native(mod=None):
    """``mod`` (default pyengine._C) if it has the CUDA kernels, else raise BackendUnavailableError (one line)."""
    if mod is None:
        try:
            from .. import _C as mod
        except ImportError as e:
            raise BackendUnavailableError(
                f"pyengine's native extension is not built ({e}); reinstall pyengine with nvcc on PATH") from None
    if not getattr(mod, "has_cuda", False) or not hasattr(mod, "cuda"):
        raise BackendUnavailableError(
            "pyengine was built without CUDA (nvcc not found at build time, or PYENGINE_CUDA=OFF)")
    return mod


def _gib(n: int) -> str:
    """A byte count for messages: GiB, or MiB below 1 GiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def _min_arch(archs: str) -> int | None:
    """Smallest compute capability (e.g. 80) the kernels were compiled for, from "80,86,89,90"."""
    nums = []
    for a in str(archs).replace(";", ",").split(","):
        digits = "".join(ch for ch in a if ch.isdigit())
        if digits:
            nums.append(int(digits))
    return min(nums) if nums else None


def cuda_status(native=None) -> tuple[bool, str, dict]:
    """Whether the CUDA backend can run here: ``(ok, one-line reason, device facts)``.

    ``native`` is the extension module to ask (default: ``pyengine._C``). Never raises.
    """
    try:
        mod = _native(native)
    except BackendUnavailableError as e:
        return False, str(e), {}
    try:
        raw = dict(mod.cuda_device_info())
    except Exception as e:  # a broken driver must not break `pyengine doctor`
        return False, f"no NVIDIA GPU found: {type(e).__name__}: {e}", {}
    info = {
        "driver": _version(int(raw.get("driver_version", 0))),
        "runtime": _version(int(raw.get("runtime_version", 0))),
        "kernels built for": str(getattr(mod.cuda, "compiled_archs", "?")),
    }
    if not raw.get("available"):
        reason = f"no NVIDIA GPU found: {raw.get('error') or 'no CUDA device'}"
        if not raw.get("driver_version"):
            reason += " (no NVIDIA driver is installed)"
        return False, reason, info
    major, minor = raw["compute_capability"]
    info.update({
        "name": raw["name"],
        "compute capability": f"{major}.{minor}",
        "multiprocessors": raw.get("multiprocessors"),
        "memory": f"{_gib(raw['memory_free'])} free of {_gib(raw['memory_total'])}",
    })
    need = _min_arch(getattr(mod.cuda, "compiled_archs", ""))
    if need is not None and 10 * major + minor < need:
        return False, (f"GPU {raw['name']} has compute capability {major}.{minor}, but pyengine's CUDA kernels "
                       f"were built for {need // 10}.{need % 10} and newer (rebuild with "
                       f"CMAKE_CUDA_ARCHITECTURES={major}{minor})"), info
    return True, (f"{raw['name']} (compute capability {major}.{minor}, {info['memory']}, "
                  f"driver {info['driver']}, runtime {info['runtime']})"), info


# ---------------------------------------------------------------------------------
# device memory
# ---------------------------------------------------------------------------------
class _Pool:
    """Caching allocator: buffers of dropped activations are kept by size class and reused.

    Safe without synchronisation because all work is ordered on one stream: a kernel
    that reuses a buffer runs after every kernel that used it before.
    """

    MAX_CACHED = 2 << 30  # bytes kept for reuse before the cache is dropped

    def __init__(self, cuda):
        self._cuda = cuda
        self._free: dict[int, list] = {}
        self.cached = 0

    @staticmethod
    def size_class(nbytes: int) -> int:
        n = max(int(nbytes), 256)
        if n <= 1 << 20:
            return 1 << (n - 1).bit_length()
        mib = 1 << 20
        return (n + mib - 1) // mib * mib

    def take(self, nbytes: int):
        c = self.size_class(nbytes)
        lst = self._free.get(c)
        if lst:
            self.cached -= c
            return lst.pop()
        try:
            return self._cuda.Buffer(c)
        except self._cuda.CudaOutOfMemoryError:
            self.trim()  # give the cached buffers back and try once more
            return self._cuda.Buffer(c)

    def give(self, buf) -> None:
        if buf.freed:
            return
        c = buf.nbytes
        self._free.setdefault(c, []).append(buf)
        self.cached += c
        if self.cached > self.MAX_CACHED:
            self.trim()

    def trim(self) -> None:
        for lst in self._free.values():
            for b in lst:
                b.free()
        self._free.clear()
        self.cached = 0


class DeviceArray:
    """A C-contiguous float32 array in GPU memory (what :class:`CudaBackend` ops return).

    Supports ``shape``, ``len()``, row slices (``x[a:b]``, copied on the device) and
    ``numpy()`` / ``np.asarray(x)`` (download).
    """

    __slots__ = ("buf", "shape", "_pool", "_cuda")
    dtype = _F32

    def __init__(self, backend: "CudaBackend", shape, buf=None):
        self.shape = tuple(int(s) for s in shape)
        self._cuda = backend._cuda
        if buf is None:
            self._pool = backend._pool
            self.buf = self._pool.take(self.nbytes)
        else:  # a dedicated buffer (KV cache), not returned to the pool
            self._pool = None
            self.buf = buf

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            try:
                pool.give(self.buf)
            except Exception:  # interpreter shutdown
                pass

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 4 * self.size

    def __len__(self) -> int:
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=_F32)
        if out.size:
            self.buf.download(out)
        return out

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __getitem__(self, key):
        if not isinstance(key, slice) or self.ndim < 1:
            raise TypeError("DeviceArray supports only row slices x[a:b]; use to_numpy() for anything else")
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("DeviceArray row slices must have step 1")
        rows = max(0, stop - start)
        row_bytes = 4 * math.prod(self.shape[1:])
        out = DeviceArray(_Owner(self), (rows,) + self.shape[1:])
        if rows:
            self._cuda.copy(out.buf, 0, self.buf, start * row_bytes, rows * row_bytes)
        return out

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype=float32)"


class _Owner:
    """What DeviceArray needs from a backend, taken from an existing array (for slices)."""

    def __init__(self, a: DeviceArray):
        self._cuda = a._cuda
        self._pool = a._pool if a._pool is not None else _Pool(a._cuda)


class _Weight:
    """A weight in GPU memory: its buffer, GGML type id and 2-D shape."""

    __slots__ = ("buf", "type_id", "rows", "cols")

    def __init__(self, buf, type_id: int, rows: int, cols: int):
        self.buf, self.type_id, self.rows, self.cols = buf, type_id, rows, cols


# ---------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------
class CudaBackend(Backend):
    name = "cuda"

    #: largest number of blocks one query's keys are split over (flash-decoding)
    MAX_SPLITS = 32

    def __init__(self, device: int = 0, simple: bool = False, native=None):
        """``device``: CUDA device index. ``simple``: run the oracle kernels.

        ``native``: the extension module (default ``pyengine._C``; the tests pass the
        CPU emulator build). Raises BackendUnavailableError (one line) when CUDA
        cannot run here.
        """
        mod = _native(native)
        ok, reason, info = cuda_status(mod)
        if not ok:
            raise BackendUnavailableError(reason)
        self._mod = mod
        self._cuda = mod.cuda
        if device:
            try:
                self._cuda.set_device(int(device))
            except Exception as e:
                raise BackendUnavailableError(f"CUDA device {device} cannot be used: {e}") from None
        self.device = int(device)
        self.simple = bool(simple)
        raw = dict(mod.cuda_device_info())
        self.device_name = raw["name"]
        self.multiprocessors = int(raw.get("multiprocessors") or 1)
        self.description = (f"cuda {self.device_name} (compute capability {info['compute capability']}, "
                            f"{_gib(raw['memory_total'])}{', simple kernels' if self.simple else ''})")
        self._key = f"cuda:{self.device}:{id(mod)}"  # tensor.cache key of our uploaded form
        self._pool = _Pool(self._cuda)
        self._scratch = None  # grow-only scratch of the tuned matmul / attention

    # -- data movement ---------------------------------------------------------
    def from_numpy(self, x) -> DeviceArray:
        if isinstance(x, DeviceArray):
            return x
        a = np.ascontiguousarray(x, dtype=_F32)
        if a.ndim == 0:
            a = a.reshape(1)
        out = DeviceArray(self, a.shape)
        if a.size:
            out.buf.upload(a)
        return out

    def to_numpy(self, x) -> np.ndarray:
        if isinstance(x, DeviceArray):
            return x.numpy()
        return np.asarray(x)

    def _dev(self, x) -> DeviceArray:
        return x if isinstance(x, DeviceArray) else self.from_numpy(x)

    def _new(self, shape) -> DeviceArray:
        return DeviceArray(self, shape)

    def _scratch_buf(self, nbytes: int):
        if nbytes <= 0:
            return None
        if self._scratch is None or self._scratch.nbytes < nbytes:
            self._scratch = None  # free the old one first
            self._scratch = self._cuda.Buffer(_Pool.size_class(nbytes))
        return self._scratch

    def _upload_ints(self, v: np.ndarray):
        """int32 vector -> pooled device buffer (returned to the pool by the caller)."""
        a = np.ascontiguousarray(v, dtype=np.int32).reshape(-1)
        buf = self._pool.take(max(a.nbytes, 4))
        if a.size:
            buf.upload(a)
        return buf

    # -- weights -----------------------------------------------------------------
    def _upload_plan(self, w: QTensor):
        """(bytes to upload as uint8, type id, rows, cols) for weight ``w``."""
        rows = int(math.prod(w.shape[:-1])) if len(w.shape) > 1 else 1
        cols = int(w.shape[-1]) if w.shape else 1
        t = ggml_type(w.type_name)
        if len(w.shape) > 1 and self._cuda.type_supported(t.id):
            return w, t.id, rows, cols  # the raw GGUF bytes, read directly by the kernels
        return None, 0, rows, cols  # vectors, and types the kernels lack: float32

    @staticmethod
    def _f32_bytes(w: QTensor) -> np.ndarray:
        if w.type_name.upper() == "F32":
            return np.ascontiguousarray(w.raw)
        from .. import quants

        return np.ascontiguousarray(quants.dequantize(w.type_name, w.raw, w.n_elements), dtype=_F32).view(np.uint8)

    def _upload(self, w: QTensor, plan) -> _Weight:
        src, type_id, rows, cols = plan
        data = np.ascontiguousarray(src.raw) if src is not None else self._f32_bytes(w)
        buf = self._cuda.Buffer(max(int(data.nbytes), 1))
        buf.upload(data)
        return _Weight(buf, type_id, rows, cols)

    def prepare(self, tensors: dict[str, QTensor]) -> None:
        """Upload every weight once (checked against free GPU memory first)."""
        todo = []
        seen = set()
        for w in tensors.values():
            if id(w) in seen or self._key in w.cache or w.cache.get("split_into_parts"):
                continue  # (a fused tensor the model split: its parts upload at first use)
            seen.add(id(w))
            plan = self._upload_plan(w)
            nbytes = w.n_bytes if plan[0] is not None else 4 * w.n_elements
            todo.append((w, plan, nbytes))
        total = sum(n for _, _, n in todo)
        free, mem_total = self._cuda.mem_info()
        if total > free:
            raise BackendUnavailableError(
                f"the model needs {_gib(total)} of GPU memory for its weights, but only {_gib(free)} of "
                f"{_gib(mem_total)} is free on {self.device_name}; try a smaller model or the cpu backend")
        done = 0
        for w, plan, nbytes in todo:
            try:
                w.cache[self._key] = self._upload(w, plan)
            except self._cuda.CudaOutOfMemoryError as e:
                free, mem_total = self._cuda.mem_info()
                raise BackendUnavailableError(
                    f"out of GPU memory uploading the model ({_gib(total)} of weights; {_gib(done)} uploaded, "
                    f"{_gib(free)} of {_gib(mem_total)} free on {self.device_name}): {e}") from None
            done += nbytes

    def _weight(self, w: QTensor) -> _Weight:
        dw = w.cache.get(self._key)
        if dw is None:  # not seen by prepare(): upload now
            try:
                dw = w.cache[self._key] = self._upload(w, self._upload_plan(w))
            except self._cuda.CudaOutOfMemoryError as e:
                raise BackendUnavailableError(f"out of GPU memory uploading weight {w.name!r}: {e}") from None
        return dw

    def _vector(self, w: QTensor) -> _Weight:
        """A norm weight as float32 on the device (uploaded as such by prepare)."""
        dw = self._weight(w)
        if dw.type_id != 0:  # a 2-D float/quantized tensor used as a vector: convert once
            key = self._key + ":f32"
            dw = w.cache.get(key)
            if dw is None:
                dw = w.cache[key] = self._upload(w, (None, 0, 1, w.n_elements))
        return dw

    def embed(self, w: QTensor, ids: np.ndarray) -> DeviceArray:
        ids = np.asarray(ids).reshape(-1)
        dw = self._weight(w)
        if ids.size and (ids.min() < 0 or ids.max() >= dw.rows):
            raise ValueError(f"token id out of range 0..{dw.rows - 1} of {w.name!r}")
        out = self._new((ids.size, dw.cols))
        if ids.size:
            idb = self._upload_ints(ids)
            self._cuda.get_rows(dw.type_id, dw.buf, dw.rows, dw.cols, idb, ids.size, out.buf, simple=self.simple)
            self._pool.give(idb)
        return out

    def matmul(self, w: QTensor, x) -> DeviceArray:
        x = self._dev(x)
        dw = self._weight(w)
        n = x.shape[0] if x.ndim > 1 else 1
        if x.size != n * dw.cols:
            raise ValueError(f"matmul: x {x.shape} does not match weight {w.name!r} ({dw.rows}, {dw.cols})")
        y = self._new((n, dw.rows))
        if n:
            sb = 0 if self.simple else self._cuda.matmul_scratch_bytes(dw.type_id, n, dw.cols)
            self._cuda.matmul(dw.type_id, dw.buf, dw.rows, dw.cols, x.buf, n, y.buf,
                              scratch=self._scratch_buf(sb), simple=self.simple)
        return y

    def add_bias(self, x, b: QTensor) -> DeviceArray:
        x = self._dev(x)
        db = self._vector(b)
        nb = db.rows * db.cols
        if x.ndim < 1 or x.shape[-1] != nb:
            raise ValueError(f"add_bias: x {x.shape} does not end in the bias length {nb} of {b.name!r}")
        out = self._new(x.shape)
        if x.size:
            self._cuda.add(x.buf, x.size, db.buf, nb, out.buf, simple=self.simple)
        return out

    def softcap(self, x, cap: float) -> DeviceArray:
        return self._with_constant(self._cuda.softcap, x, cap)

    def _with_constant(self, kernel, x, c: float) -> DeviceArray:
        """``kernel(x, c)`` elementwise into a new array, ``c`` rounded to float32 as the kernel takes it."""
        x = self._dev(x)
        out = self._new(x.shape)
        if x.size:
            kernel(x.buf, x.size, float(np.float32(c)), out.buf, simple=self.simple)
        return out

    # -- elementwise and normalisation -------------------------------------------
    def rmsnorm(self, x, w: QTensor, eps: float) -> DeviceArray:
        x = self._dev(x)
        dw = self._vector(w)
        g = dw.rows * dw.cols
        n = x.shape[0] if x.ndim > 1 else 1
        d = x.size // n if n else 0
        if n and d % g:
            raise ValueError(f"rmsnorm: width {d} is not a multiple of the weight length {g}")
        out = self._new(x.shape)
        if x.size:
            self._cuda.rmsnorm(x.buf, n, d, dw.buf, g, float(eps), out.buf, simple=self.simple)
        return out

    def add(self, a, b) -> DeviceArray:
        a, b = self._dev(a), self._dev(b)
        if b.size > a.size:
            a, b = b, a  # a + b == b + a: broadcast the smaller one
        if b.size == 0 or a.size % b.size or (b.ndim and a.shape[-1] % b.shape[-1]):
            raise ValueError(f"add: shapes {a.shape} and {b.shape} do not broadcast by rows")
        out = self._new(a.shape)
        if a.size:
            self._cuda.add(a.buf, a.size, b.buf, b.size, out.buf, simple=self.simple)
        return out

    def scale(self, x, s: float) -> DeviceArray:
        return self._with_constant(self._cuda.scale, x, s)

    def _gate(self, fn, gate, up) -> DeviceArray:
        gate, up = self._dev(gate), self._dev(up)
        if gate.shape != up.shape:
            raise ValueError(f"gate {gate.shape} and up {up.shape} differ in shape")
        out = self._new(gate.shape)
        if gate.size:
            fn(gate.buf, up.buf, gate.size, out.buf, simple=self.simple)
        return out

    def silu_mul(self, gate, up) -> DeviceArray:
        return self._gate(self._cuda.silu_mul, gate, up)

    def gelu_mul(self, gate, up) -> DeviceArray:
        return self._gate(self._cuda.gelu_mul, gate, up)

    # -- position and attention --------------------------------------------------
    def _rope_kwargs(self, scaling) -> dict:
        """RopeScaling -> keyword arguments of the kernel (frequency factors uploaded once)."""
        if scaling is None or scaling.is_identity:
            return {}
        kw = scaling.kwargs()
        ff = kw.pop("freq_factors")
        if ff is not None:
            key = ff.tobytes()
            cache = self.__dict__.setdefault("_ff_bufs", {})
            buf = cache.get(key)
            if buf is None:
                buf = cache[key] = self._cuda.Buffer(max(ff.nbytes, 4))
                buf.upload(ff)
            kw["freq_factors"] = buf
        return kw

    def rope(self, x, positions: np.ndarray, n_heads: int, head_dim: int, freq_base: float, neox: bool,
             n_rot: int | None = None, scaling=None) -> DeviceArray:
        x = self._dev(x)
        n_rot = head_dim if n_rot is None else int(n_rot)
        positions = np.asarray(positions).reshape(-1)
        n = positions.size
        if x.size != n * n_heads * head_dim:
            raise ValueError(f"rope: x {x.shape} is not ({n}, {n_heads}*{head_dim})")
        out = self._new(x.shape)
        if n:
            pb = self._upload_ints(positions)
            self._cuda.rope(x.buf, n, int(n_heads), int(head_dim), pb, float(freq_base), bool(neox), n_rot, out.buf,
                            simple=self.simple, **self._rope_kwargs(scaling))
            self._pool.give(pb)
        return out

    def kv_cache(self, n_layers: int, n_ctx: int, kv_width: int, keys_are_values: bool = False) -> KVCache:
        """Keys and values as ``(n_ctx, kv_width)`` device rows; one buffer per layer for both
        when ``keys_are_values`` (MLA: the attention kernel reads the same rows as keys and values)."""
        nbytes = 4 * int(n_ctx) * int(kv_width)
        k, v = [], []
        try:
            for _ in range(int(n_layers)):
                for lst in ((v,) if keys_are_values else (k, v)):
                    buf = self._cuda.Buffer(max(nbytes, 4))
                    buf.zero()
                    lst.append(DeviceArray(self, (n_ctx, kv_width), buf=buf))
        except self._cuda.CudaOutOfMemoryError as e:
            k.clear(), v.clear()
            copies = 1 if keys_are_values else 2
            raise BackendUnavailableError(
                f"the KV cache ({_gib(copies * n_layers * nbytes)} for {n_ctx} positions) does not fit in GPU memory; "
                f"use a shorter context: {e}") from None
        return KVCache(v if keys_are_values else k, v, int(n_ctx))

    def kv_write(self, cache: KVCache, layer: int, pos0: int, k, v) -> None:
        if cache.keys_are_values:
            _check_same(k, v)
        k, v = self._dev(k), self._dev(v)
        n = k.shape[0]
        kv_width = cache.k[layer].shape[1]
        if k.shape != (n, kv_width) or v.shape != (n, kv_width):
            raise ValueError(f"kv_write: k {k.shape} / v {v.shape} are not ({n}, {kv_width})")
        if pos0 < 0 or pos0 + n > cache.n_ctx:
            raise ValueError(f"kv_write: positions {pos0}..{pos0 + n - 1} outside the cache of {cache.n_ctx}")
        off, nbytes = 4 * pos0 * kv_width, 4 * n * kv_width
        if not cache.keys_are_values:
            self._cuda.copy(cache.k[layer].buf, off, k.buf, 0, nbytes)
        self._cuda.copy(cache.v[layer].buf, off, v.buf, 0, nbytes)

    def _splits(self, n: int, n_heads: int, n_keys: int, head_dim: int) -> int:
        """Key slices per query: enough blocks to fill the GPU when there are few queries."""
        if self.simple or head_dim > self._cuda.ATTN_MAX_HEAD_DIM:
            return 1
        blocks = n * n_heads
        want = 2 * self.multiprocessors
        if blocks >= want:
            return 1
        return max(1, min(self.MAX_SPLITS, -(-want // blocks), -(-n_keys // 256)))

    def attention(self, q, cache: KVCache, layer: int, pos0: int, n_heads: int, n_kv_heads: int, head_dim: int,
                  scale: float, window: int = 0, softcap: float = 0.0, n_splits: int | None = None) -> DeviceArray:
        """See :meth:`Backend.attention`. ``n_splits`` (tests) forces the flash-decoding split."""
        q = self._dev(q)
        n = q.shape[0]
        if q.size != n * n_heads * head_dim:
            raise ValueError(f"attention: q {q.shape} is not ({n}, {n_heads}*{head_dim})")
        if pos0 + n > cache.n_ctx:
            raise ValueError(f"attention: positions up to {pos0 + n - 1} outside the cache of {cache.n_ctx}")
        out = self._new(q.shape)
        if n:
            s = int(n_splits) if n_splits else self._splits(n, n_heads, pos0 + n, head_dim)
            sb = 0 if self.simple else self._cuda.attention_scratch_bytes(n, n_heads, head_dim, s)
            self._cuda.attention(q.buf, cache.k[layer].buf, cache.v[layer].buf, n, int(pos0), int(n_heads),
                                 int(n_kv_heads), int(head_dim), float(scale), int(window), out.buf, n_splits=s,
                                 scratch=self._scratch_buf(sb), simple=self.simple,
                                 **({"softcap": float(softcap)} if softcap else {}))
        return out

    def mla_attention(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope, n_rot,
                      freq_base, neox, scaling, scale):
        from .mla import mla_attention_composed

        return mla_attention_composed(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope,
                                      n_rot, freq_base, neox, scaling, scale)

    def moe_ffn(self, x, router, gate_exps, up_exps, down_exps, routing) -> DeviceArray:
        """See :meth:`Backend.moe_ffn`: routing on the host, each chosen expert uploaded at first use."""
        from .moe import moe_ffn_grouped

        return moe_ffn_grouped(self, x, router, gate_exps, up_exps, down_exps, routing)

    def synchronize(self) -> None:
        """Wait for the GPU (raises CudaError if a kernel failed)."""
        self._cuda.synchronize()
