"""Memory read bandwidth: the ceiling every token-generation speed is compared with.

On a CPU, generating a token streams every weight from DRAM once, so
``tokens/s <= bandwidth / weight bytes per token``. :func:`measure_bandwidth` measures that
bandwidth as a multi-threaded streaming read over a buffer far larger than the last-level
cache (1 GiB by default), best of a few passes, at one thread and at all threads.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Sequence

import numpy as np

from ..errors import PyEngineError
from .machine import n_cores

_SUM_U64 = None


def _numba_sum():
    global _SUM_U64
    if _SUM_U64 is None:
        import numba

        @numba.njit(parallel=True, fastmath=True, nogil=True)
        def sum_u64(a):  # pragma: no cover - compiled
            s = np.uint64(0)
            for i in numba.prange(a.size):
                s += a[i]
            return s

        _SUM_U64 = sum_u64
    return _SUM_U64


def _numpy_threaded_sum(a: np.ndarray, threads: int) -> int:
    # fallback without numba: NumPy reductions release the GIL, so chunks in threads run in parallel
    parts = np.array_split(a, threads * 8)
    out = [0] * len(parts)

    def work(k):
        for j in range(k, len(parts), threads):
            out[j] = int(np.add.reduce(parts[j]))

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out)


def probe_buffer(size_bytes: int) -> np.ndarray:
    """The probe's buffer: ``size_bytes`` of uint64 ones, every page touched."""
    buf = np.empty(max(1, int(size_bytes) // 8), dtype=np.uint64)
    buf[:] = 1
    return buf


def measure_bandwidth(size_bytes: int = 1 << 30, threads: int | None = None, repeats: int = 5,
                      thread_counts: Sequence[int] | None = None, buffer: np.ndarray | None = None) -> dict:
    """Streaming read bandwidth in GB/s (1e9 bytes/s), best of ``repeats`` passes.

    Sums a ``size_bytes`` buffer viewed as uint64 in a numba ``prange`` loop (NumPy
    reductions in threads without numba). The buffer should be much larger than the
    last-level cache (the default 1 GiB is); small sizes are for tests only.
    Returns ``{"gbps": {threads: GB/s}, "gbps_1", "gbps_all", "threads", ...}``.
    ``buffer``: a uint64 array of ones to reuse (see :func:`probe_buffer`) for repeated probes.
    """
    threads = int(threads or n_cores())
    counts = sorted(set(thread_counts or (1, threads)))
    buf = probe_buffer(size_bytes) if buffer is None else buffer
    n = buf.size
    try:
        import numba

        f = _numba_sum()
        method = "numba prange sum over uint64"
        prev = numba.get_num_threads()

        def run(k):
            numba.set_num_threads(min(k, numba.config.NUMBA_NUM_THREADS))
            return int(f(buf))
    except ImportError:
        numba = None
        method = "numpy add.reduce over uint64 chunks in threads"
        prev = None

        def run(k):
            return _numpy_threaded_sum(buf, k)

    best = {k: math.inf for k in counts}
    try:
        run(counts[-1])  # compile / warm up
        for _ in range(max(1, repeats)):
            for k in counts:  # interleaved, so a burst of load elsewhere hits every count alike
                t0 = time.perf_counter()
                s = run(k)
                best[k] = min(best[k], time.perf_counter() - t0)
                if s != n:
                    raise PyEngineError(f"bandwidth probe summed {s}, expected {n}: broken reduction")
        gbps = {k: buf.nbytes / best[k] / 1e9 for k in counts}
    finally:
        if numba is not None and prev is not None:
            numba.set_num_threads(prev)
    return {"size_bytes": n * 8, "repeats": repeats, "method": method, "threads": threads,
            "gbps": {str(k): v for k, v in gbps.items()},
            "gbps_1": gbps.get(1, float("nan")), "gbps_all": gbps[max(gbps)]}


def bandwidth_at(bw: dict | None, threads: int) -> float | None:
    """Measured GB/s for ``threads`` threads (the nearest measured count); None without a measurement."""
    if not bw:
        return None
    g = {int(k): v for k, v in bw["gbps"].items()}
    k = min(g, key=lambda c: (abs(c - threads), -c))
    return g[k]


def format_bandwidth(bw: dict | None) -> str:
    if not bw:
        return "memory read bandwidth: not measured (--bw-size 0)"
    parts = [f"{v:.1f} GB/s at {k} thread{'s' if int(k) > 1 else ''}" for k, v in bw["gbps"].items()]
    return (f"memory read bandwidth: {', '.join(parts)}"
            + (f" ({bw['method']}, {bw['size_bytes'] / 2**30:.2g} GiB, best of {bw['repeats']})" if "method" in bw else ""))
