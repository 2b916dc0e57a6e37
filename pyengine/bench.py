"""Benchmarks: memory bandwidth, quantized matmul kernels, and whole models (``pyengine bench``).

Three measurements, each reported next to the machine's *measured* memory read
bandwidth, because on a CPU the speed of token generation is set by how fast the
weights stream from DRAM:

* :func:`measure_bandwidth` -- a multi-threaded streaming read over a buffer far
  larger than the last-level cache (1 GiB by default), best of a few passes, at one
  thread and at all threads. This is the ceiling every other figure is compared to.
* :func:`run_kernel_bench` (``pyengine bench kernels``) -- every quantized
  matrix-vector / matrix-matrix kernel (NumPy reference, numba, each native SIMD
  variant) on model-sized shapes. Each kernel is first *validated* against the NumPy
  reference (NMSE <= 5e-4); a kernel that fails is reported and never timed. Then
  the median time per call gives effective GB/s of weight bytes, GFLOP/s and the
  percentage of measured bandwidth.
* :func:`run_model_bench` (``pyengine bench MODEL``) -- llama-bench's two numbers:
  ``pp512`` (a 512-token prompt processed as one batch, tokens/s) and ``tg128``
  (128 tokens generated one at a time, tokens/s), plus time to first token, peak
  resident memory, the share of a decode step spent in Python, and the effective
  GB/s of generation.

:func:`make_synthetic` writes Llama-shaped GGUF files with random but valid weights
in llama.cpp's Q4_K_M type mix (``benchmarks/make_synthetic.py`` is its command line).

All timings on a shared machine are noisy: compare two things as a ratio measured in
one run, alternating the two sides (``benchmarks/compare_llamacpp.py`` does that).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import PyEngineError
from .ggml_types import ggml_type

#: validation threshold: normalised mean squared error against the NumPy reference
NMSE_MAX = 5e-4

# --------------------------------------------------------------------------------
# machine and threads
# --------------------------------------------------------------------------------


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """Use ``n`` threads in the native kernels and numba (default: all cores). Returns n."""
    n = int(n or n_cores())
    if n < 1:
        raise PyEngineError(f"--threads must be at least 1 (got {n})")
    try:
        from . import _C

        _C.set_num_threads(n)
    except (ImportError, AttributeError):
        pass
    os.environ["NUMBA_NUM_THREADS"] = os.environ.get("NUMBA_NUM_THREADS", str(max(n, n_cores())))
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    return n


def machine_info() -> dict:
    """CPU model, cores, native SIMD features: printed with every benchmark."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": model, "cores": n_cores(), "python": platform.python_version(),
            "numpy": np.__version__, "os": platform.platform(), "loadavg": loadavg()}
    try:
        from . import _C

        feats = _C.cpu_features()
        if isinstance(feats, dict):  # {"avx2": True, ..., "logical_cores": 2}
            feats = [k for k, v in feats.items() if v is True]
        info["cpu_features"] = list(feats)
    except (ImportError, AttributeError):
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return info


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: above the core count, other processes share our cores and
    every timing (and the bandwidth probe) is depressed -- record it with every result."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def busy_others(samples: int = 20, interval: float = 0.02) -> float | None:
    """Mean number of runnable tasks besides the caller, sampled from /proc/loadavg's
    ``running/total`` field over ``samples * interval`` seconds while we idle.

    Unlike the load average (a 1-minute mean that also counts our own benchmark
    threads), this says how many cores *other* processes are using right now:
    above ``cores - threads`` they share our cores and timings are depressed.
    """
    vals = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                vals.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return None
        time.sleep(interval)
    return statistics.fmean(vals)


def peak_rss_bytes() -> dict:
    """Peak resident memory of this process: ``ru_maxrss`` and ``/proc/self/status`` VmHWM."""
    out = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["vmhwm"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------------
# 1. memory read bandwidth
# --------------------------------------------------------------------------------

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
    del buf
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


# --------------------------------------------------------------------------------
# 2. kernel benchmark
# --------------------------------------------------------------------------------

#: (type, rows, cols) of the weights the real models multiply by, see the README
MODEL_CASES: list[tuple[str, int, int, str]] = [
    ("Q8_0", 262144, 640, "gemma3-270m output (tied embedding)"),
    ("Q5_0", 2048, 640, "gemma3-270m ffn_gate/up"),
    ("Q6_K", 640, 2048, "gemma3-270m ffn_down"),
    ("Q4_K", 640, 1024, "gemma3-270m attn_output"),
    ("Q4_1", 1536, 576, "smollm2-135m ffn_gate/up"),
    ("Q8_0", 49152, 576, "smollm2-135m output (tied embedding)"),
]
GENERIC_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
#: the Q4_K_M mix's types, then the other common quantizations (Q5_K_M, Q3_K_M, Q2_K, IQ4_XS, ...)
DEFAULT_TYPES = ["Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q5_K", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL", "Q5_1", "BF16"]
DEFAULT_BATCH = [1, 64]
#: weights are copied until the rotation spans this many bytes, so each timed call
#: reads its weights from DRAM, not from a cache warmed by the previous call
COLD_BYTES = 256 << 20


@dataclass
class Kernel:
    label: str  # "numpy", "numba", "cpu/avx512" ...
    backend: str
    variant: str | None
    fn: Callable[[np.ndarray, tuple[int, int], np.ndarray], np.ndarray]  # (raw, (rows, cols), x (n, cols)) -> (n, rows)


@dataclass
class KernelResult:
    type: str
    rows: int
    cols: int
    n: int
    kernel: str
    backend: str
    variant: str | None
    status: str  # ok | invalid | unsupported | error
    message: str = ""
    nmse: float | None = None
    ms: float | None = None  # per call, by ``stat``: the figure GB/s and GFLOP/s come from
    ms_median: float | None = None
    ms_min: float | None = None  # fastest call
    stat: str = "median"
    reps: int = 0
    copies: int = 1
    weight_bytes: int = 0
    gbps: float | None = None
    gflops: float | None = None
    pct_bandwidth: float | None = None
    bandwidth_gbps: float | None = None
    speedup_vs_numpy: float | None = None
    note: str = ""


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            r, c = part.lower().split("x")
            out.append((int(r), int(c)))
        except ValueError:
            raise PyEngineError(f"bad shape {part!r}: write ROWSxCOLS, e.g. 4096x11008") from None
        if out[-1][0] <= 0 or out[-1][1] <= 0:
            raise PyEngineError(f"bad shape {part!r}: sizes must be positive")
    return out


def parse_list(text: str | None, what: str) -> list[str]:
    items = [p.strip() for p in (text or "").split(",") if p.strip()]
    if text is not None and not items:
        raise PyEngineError(f"empty {what} list")
    return items


def dequantize(type_name: str, raw: np.ndarray, n_elements: int) -> np.ndarray:
    """float32 values of ``raw``: pyengine's NumPy reference (gguf.quants if absent)."""
    try:
        from .quants import dequantize as deq
    except ImportError:  # pragma: no cover - quants is part of the package
        from gguf.quants import dequantize as gdeq
        from gguf import GGMLQuantizationType

        return gdeq(raw, GGMLQuantizationType[type_name]).reshape(-1).astype(np.float32)
    return deq(type_name, raw, n_elements).reshape(-1)


def reference_matmul(type_name: str, raw: np.ndarray, shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """The ground truth: dequantize with the NumPy reference, multiply in float64."""
    rows, cols = shape
    w = dequantize(type_name, raw, rows * cols).reshape(rows, cols)
    out = np.empty((x.shape[0], rows), dtype=np.float64)
    step = max(1, (1 << 26) // max(cols, 1))  # bound the float64 temporary to ~512 MiB
    xd = x.astype(np.float64)
    for r0 in range(0, rows, step):
        out[:, r0:r0 + step] = xd @ w[r0:r0 + step].astype(np.float64).T
    return out


def _numpy_kernel(type_name: str):
    def fn(raw, shape, x):
        rows, cols = shape
        w = dequantize(type_name, raw, rows * cols).reshape(rows, cols)
        return x @ w.T
    return fn


def _kernels_module():
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels


def native_variants() -> list[str]:
    """The native SIMD variants this CPU can run, per ``pyengine._C.kernel_variants()``."""
    try:
        from . import _C

        v = _C.kernel_variants()
    except (ImportError, AttributeError):
        return []
    if isinstance(v, dict):
        v = [k for k, ok in v.items() if ok]
    return [str(s) for s in v]


def collect_kernels(type_name: str, backends: Sequence[str] | None = None,
                    variants: Sequence[str] | None = None) -> list[Kernel]:
    """The kernels to benchmark: the NumPy reference first, then numba, then each native variant.

    ``backends``/``variants`` restrict the list (None: everything available here).
    """
    km = _kernels_module()
    avail = ["numpy"]
    if km is not None:
        try:
            avail = list(dict.fromkeys(["numpy", *km.available_backends()]))
        except Exception:  # noqa: BLE001 - a broken backend must not break the benchmark
            pass
    want = list(backends) if backends else avail
    unknown = [b for b in want if b not in ("numpy", "numba", "cpu", "cuda")]
    if unknown:
        raise PyEngineError(f"unknown kernel backend {unknown[0]!r} (choose from: numpy, numba, cpu)")
    missing = [b for b in want if b not in avail]
    if missing:
        raise PyEngineError(f"kernel backend {missing[0]!r} is not available here (available: {', '.join(avail)})")
    out: list[Kernel] = []
    for b in want:
        if b == "numpy":
            if km is not None:
                out.append(Kernel("numpy", "numpy", None, _bind(km.matmul, type_name, "numpy", None)))
            else:
                out.append(Kernel("numpy", "numpy", None, _numpy_kernel(type_name)))
        elif b == "cpu":
            nt = getattr(km, "native_types", None)
            if nt is not None and type_name not in nt():
                continue  # no native kernel for this type: nothing to time
            vs = native_variants() or ["auto"]
            if variants:
                bad = [v for v in variants if v not in vs]
                if bad:
                    raise PyEngineError(f"native variant {bad[0]!r} is not available on this CPU "
                                        f"(available: {', '.join(vs)})")
                vs = [v for v in vs if v in variants]
            for v in vs:
                out.append(Kernel(f"cpu/{v}", "cpu", v, _bind(km.matmul, type_name, "cpu", v)))
        else:
            out.append(Kernel(b, b, None, _bind(km.matmul, type_name, b, None)))
    return out


def _bind(matmul, type_name, backend, variant):
    def fn(raw, shape, x):
        if variant is None:
            return matmul(type_name, raw, shape, x, backend=backend)
        return matmul(type_name, raw, shape, x, backend=backend, variant=variant)
    return fn


def nmse(y: np.ndarray, ref: np.ndarray) -> float:
    """sum((y - ref)^2) / sum(ref^2); inf if y has the wrong shape or non-finite values."""
    y = np.asarray(y, dtype=np.float64)
    if y.size != ref.size:
        return math.inf
    y = y.reshape(ref.shape)
    if not np.all(np.isfinite(y)):
        return math.inf
    den = float(np.sum(ref * ref))
    num = float(np.sum((y - ref) ** 2))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def time_calls(fn: Callable[[int], Any], n_items: int, min_reps: int = 5, min_time: float = 0.25,
               max_reps: int = 5000, max_time: float = 3.0) -> tuple[float, float, int]:
    """(median, min) seconds of ``fn(i)`` (``i`` cycling over ``n_items``) timed one call at a time, and the count.

    Stops once it has ``min_reps`` calls and ``min_time`` seconds, or at ``max_reps`` /
    ``max_time`` (always at least one call). The median shrugs off the odd call slowed
    down by another process on a shared machine.
    """
    times = []
    start = time.perf_counter()
    i = 0
    while True:
        t0 = time.perf_counter()
        fn(i % n_items)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        i += 1
        el = t1 - start
        if (len(times) >= min_reps and el >= min_time) or len(times) >= max_reps or el >= max_time:
            break
    return statistics.median(times), min(times), len(times)


def bench_case(type_name: str, rows: int, cols: int, n: int, kernels: Sequence[Kernel], bw_gbps: float,
               rng: np.random.Generator, cold: bool = True, min_time: float = 0.25,
               ref_max_time: float = 2.0, log: Callable[[str], None] | None = None,
               stat: str = "median") -> list[KernelResult]:
    """Validate then time every kernel on one (type, shape, batch) case."""
    t = ggml_type(type_name)
    if cols % t.block_size:
        raise PyEngineError(f"{type_name} {rows}x{cols}: cols must be a multiple of the block size {t.block_size}")
    try:
        from .quants import random_raw

        raw = random_raw(type_name, rows * cols, rng)
    except ImportError:  # pragma: no cover
        raw = synthetic_raw(type_name, rows, cols, rng, 1.0 / math.sqrt(cols)).reshape(-1)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    ref = reference_matmul(type_name, raw, (rows, cols), x)
    nbytes = raw.nbytes
    flops = 2.0 * rows * cols * n
    copies = max(1, min(4096, -(-COLD_BYTES // nbytes))) if cold else 1
    results: list[KernelResult] = []
    numpy_ms = None
    pool: list[np.ndarray] | None = None
    for k in kernels:
        r = KernelResult(type_name, rows, cols, n, k.label, k.backend, k.variant, "ok", weight_bytes=nbytes,
                         bandwidth_gbps=bw_gbps)
        results.append(r)
        try:
            y = k.fn(raw, (rows, cols), x)
        except NotImplementedError as e:
            r.status, r.message = "unsupported", str(e) or "not implemented"
            continue
        except Exception as e:  # noqa: BLE001 - report and go on with the next kernel
            msg = str(e).splitlines()[0] if str(e) else ""
            unsupported = any(w in msg.lower() for w in ("support", "no kernel"))
            r.status, r.message = ("unsupported" if unsupported else "error"), f"{type(e).__name__}: {msg}"
            continue
        r.nmse = nmse(y, ref)
        if not r.nmse <= NMSE_MAX:
            r.status = "invalid"
            r.message = f"NMSE {r.nmse:.3g} > {NMSE_MAX:g} against the NumPy reference: not timed"
            if log:
                log(f"  ! {k.label} {type_name} {rows}x{cols} n={n}: {r.message}")
            continue
        is_ref = k.backend == "numpy"
        if is_ref or copies == 1:
            items = [raw]
        else:
            if pool is None:
                pool = [raw] + [raw.copy() for _ in range(copies - 1)]
            items = pool
            for w in items:  # first touch of every copy (page faults, prepared-weight caches)
                k.fn(w, (rows, cols), x)
        if is_ref:
            sec, best, reps = time_calls(lambda i: k.fn(items[i], (rows, cols), x), 1, min_reps=3, min_time=0.0,
                                   max_reps=3, max_time=ref_max_time)
        else:
            sec, best, reps = time_calls(lambda i: k.fn(items[i], (rows, cols), x), len(items), min_time=min_time,
                                   max_time=max(3.0, 10 * min_time))
        r.ms_median, r.ms_min, r.reps, r.copies, r.stat = sec * 1e3, best * 1e3, reps, len(items), stat
        if stat == "min":
            sec = best
        r.ms = sec * 1e3
        r.gbps = nbytes / sec / 1e9
        r.gflops = flops / sec / 1e9
        r.pct_bandwidth = 100.0 * r.gbps / bw_gbps if bw_gbps else None
        if is_ref:
            numpy_ms = r.ms
            r.note = "dequantize + matmul per call"
    for r in results:
        if numpy_ms and r.ms and r.backend != "numpy":
            r.speedup_vs_numpy = numpy_ms / r.ms
    return results


def format_result(r: KernelResult) -> str:
    shape = f"{r.rows}x{r.cols}"
    head = f"{r.type:<5} {shape:<11} n={r.n:<3} {r.kernel:<11}"
    if r.status != "ok":
        return f"{head} {r.status.upper()}: {r.message}"
    s = f"{head} {r.ms:9.3f} ms {r.gbps:7.1f} GB/s"
    if r.pct_bandwidth is not None:
        s += f" ({r.pct_bandwidth:3.0f}% of {r.bandwidth_gbps:.1f} GB/s)"
    s += f" {r.gflops:8.1f} GFLOP/s"
    if r.speedup_vs_numpy:
        v = r.speedup_vs_numpy
        s += f"  x{v:,.0f} vs numpy" if v >= 10 else f"  x{v:.2f} vs numpy"
    return s


def plot_kernels(results: list[dict], bw: dict | None, threads: int, path: str | os.PathLike, title: str = "") -> None:
    """Roofline-style PNG: achieved GB/s per matrix-vector kernel vs the measured bandwidth
    (left), and GFLOP/s against arithmetic intensity with the bandwidth roof (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PyEngineError("--plot needs matplotlib: pip install matplotlib") from None
    ok = [r for r in results if r["status"] == "ok"]
    if not ok:
        raise PyEngineError("nothing to plot: no kernel was timed")
    bwv = bandwidth_at(bw, threads)
    labels = list(dict.fromkeys(r["kernel"] for r in ok))
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(16, 8), gridspec_kw={"width_ratios": [1.6, 1]})
    mv = [r for r in ok if r["n"] == 1]
    cases = list(dict.fromkeys((r["type"], r["rows"], r["cols"]) for r in mv))
    width = 0.8 / max(1, len(labels))
    for j, lab in enumerate(labels):
        xs, ys = [], []
        for i, c in enumerate(cases):
            for r in mv:
                if (r["type"], r["rows"], r["cols"]) == c and r["kernel"] == lab:
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    ys.append(r["gbps"])
        a1.bar(xs, ys, width, label=lab, color=colors[lab])
    if bwv:
        a1.axhline(bwv, color="k", ls="--", lw=1.2, label=f"measured read bandwidth {bwv:.1f} GB/s ({threads} thr)")
        a1.axhline(0.8 * bwv, color="k", ls=":", lw=1, label="80% of it (Q4_K/Q6_K target)")
    a1.set_xticks(range(len(cases)))
    a1.set_xticklabels([f"{t} {r}x{c}" for t, r, c in cases], fontsize=7, rotation=35, ha="right")
    a1.set_yscale("log")
    a1.set_ylabel("effective GB/s of weight bytes (log)")
    a1.set_title("matrix-vector (n=1): weight streaming speed")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    for r in ok:
        ai = 2.0 * r["rows"] * r["cols"] * r["n"] / r["weight_bytes"]
        a2.scatter(ai, r["gflops"], color=colors[r["kernel"]], marker="o" if r["n"] == 1 else "s", s=22)
    ais = [2.0 * r["rows"] * r["cols"] * r["n"] / r["weight_bytes"] for r in ok]
    xr = np.logspace(math.log10(min(ais) / 2), math.log10(max(ais) * 2), 50)
    if bwv:
        a2.plot(xr, bwv * xr, "k--", lw=1.2, label=f"bandwidth roof {bwv:.1f} GB/s x FLOP/byte")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("arithmetic intensity (FLOP per weight byte); circles n=1, squares n>1")
    a2.set_ylabel("GFLOP/s")
    a2.set_title("roofline")
    if bwv:
        a2.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_kernel_bench(types: Sequence[str] | None = None, shapes: Sequence[tuple[int, int]] | None = None,
                     batch: Sequence[int] | None = None, backends: Sequence[str] | None = None,
                     variants: Sequence[str] | None = None, threads: int | None = None, seed: int = 0,
                     bw: dict | None = None, bw_bytes: int = 1 << 30, cold: bool = True, min_time: float = 0.25,
                     model_cases: bool | str | None = None, log: Callable[[str], None] | None = print,
                     kernels_for: Callable[[str], list[Kernel]] | None = None, stat: str = "median",
                     reprobe: bool = True) -> dict:
    """The kernel benchmark; returns a JSON-ready dict (``results`` holds one entry per kernel and case).

    ``types`` x ``shapes`` are crossed; with neither given, the default types on the
    generic Llama shapes plus the real models' (type, shape) cases are run;
    ``model_cases="only"`` runs just the real models' cases.
    ``reprobe``: probe bandwidth again (3 passes) before each (type, shape); every
    %-of-bandwidth is against the best probe of the run (``reference_bandwidth_gbps``).
    """
    threads = set_threads(threads)
    if types is not None:
        for tn in types:
            if tn.upper() not in _known_types():
                raise PyEngineError(f"unknown type {tn!r} (known: {', '.join(_known_types())})")
        types = [tn.upper() for tn in types]
    if model_cases is None:
        model_cases = types is None and shapes is None
    cases: list[tuple[str, int, int]] = []
    if model_cases != "only":
        for tn in (types or DEFAULT_TYPES):
            for r, c in (shapes or GENERIC_SHAPES):
                cases.append((tn, r, c))
    if model_cases:
        cases += [(tn, r, c) for tn, r, c, _ in MODEL_CASES if (tn, r, c) not in cases]
    batch = list(batch or DEFAULT_BATCH)
    if bw is None and bw_bytes > 0:
        if log:
            log(f"measuring memory read bandwidth ({bw_bytes / 2**30:.2g} GiB buffer) ...")
        bw = measure_bandwidth(bw_bytes, threads)
    bwv = bandwidth_at(bw, threads) if bw else None
    pbuf = probe_buffer(bw_bytes) if (reprobe and bw_bytes > 0) else None
    info = machine_info()
    if log:
        log(f"{info['cpu']}, {info['cores']} cores; {threads} threads; "
            f"native variants: {', '.join(native_variants()) or 'none'}")
        log(format_bandwidth(bw))
    rng = np.random.default_rng(seed)
    results: list[KernelResult] = []
    probes = [bwv] if bwv else []
    for tn, r, c in cases:
        ks = kernels_for(tn) if kernels_for else collect_kernels(tn, backends, variants)
        if pbuf is not None:
            # The VM's share of the memory bus drifts (18-35 GB/s within minutes here), and any
            # one probe can be caught by a burst of outside traffic: probe again before each
            # case, and compare every kernel with the best probe of the whole run.
            probes.append(bandwidth_at(measure_bandwidth(threads=threads, repeats=3, thread_counts=[threads],
                                                         buffer=pbuf), threads))
        for n in batch:
            rs = bench_case(tn, r, c, n, ks, None, rng, cold=cold, min_time=min_time, log=log, stat=stat)
            results += rs
            if log:
                for x in rs:
                    log(format_result(x))
    del pbuf
    ref_bw = max(probes) if probes else None
    for x in results:
        if x.gbps is not None and ref_bw:
            x.bandwidth_gbps = ref_bw
            x.pct_bandwidth = 100.0 * x.gbps / ref_bw
    if log and ref_bw:
        log("")
        log(f"=== against the best bandwidth probe of this run: {ref_bw:.1f} GB/s at {threads} threads "
            f"({len(probes)} probes, {min(probes):.1f} .. {ref_bw:.1f}) ===")
        for x in results:
            log(format_result(x))
    if log and info.get("loadavg"):
        log(f"load average: {info['loadavg'][0]} at the start, {loadavg()[0]} at the end ({n_cores()} cores)")
    return {"kind": "kernels", "machine": info, "threads": threads, "bandwidth": bw, "loadavg_end": loadavg(),
            "bandwidth_probes_gbps": probes, "reference_bandwidth_gbps": ref_bw, "nmse_max": NMSE_MAX,
            "cold": cold, "stat": stat, "results": [asdict(x) for x in results]}


def _known_types() -> list[str]:
    from .ggml_types import SUPPORTED

    return list(SUPPORTED)


# --------------------------------------------------------------------------------
# 3. synthetic Llama-shaped models in the Q4_K_M mix
# --------------------------------------------------------------------------------

#: dims of the synthetic models; vocab comes from the tokenizer (49152 for SmolLM2's)
SYNTHETIC_SHAPES: dict[str, dict] = {
    "tiny": dict(dim=256, n_layers=2, ffn=512, n_heads=4, n_kv_heads=2, ctx=2048),
    "1B": dict(dim=2048, n_layers=16, ffn=8192, n_heads=32, n_kv_heads=8, ctx=4096),
    "7B": dict(dim=4096, n_layers=32, ffn=11008, n_heads=32, n_kv_heads=32, ctx=4096),
}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits`` (src/llama-quant.cpp): the layers Q4_K_M gives Q6_K
    for attn_v and ffn_down -- the first and last eighth, and every third in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def q4_k_m_type(name: str, n_layers: int) -> str:
    """The type llama.cpp's Q4_K_M recipe gives tensor ``name`` of a Llama model (untied output)."""
    if name.endswith("norm.weight"):
        return "F32"
    if name == "output.weight":
        return "Q6_K"
    if name.startswith("blk.") and (".attn_v." in name or ".ffn_down." in name):
        return "Q6_K" if use_more_bits(int(name.split(".")[1]), n_layers) else "Q4_K"
    return "Q4_K"


def synthetic_tensors(shape: dict, n_vocab: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, NumPy shape, type) of every tensor of a Llama model, in file order."""
    d, L, f = shape["dim"], shape["n_layers"], shape["ffn"]
    kv = d // shape["n_heads"] * shape["n_kv_heads"]
    out = [("token_embd.weight", (n_vocab, d)), ("output_norm.weight", (d,)), ("output.weight", (n_vocab, d))]
    for i in range(L):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (d, d)), (p + "attn_k.weight", (kv, d)),
                (p + "attn_v.weight", (kv, d)), (p + "attn_output.weight", (d, d)), (p + "ffn_norm.weight", (d,)),
                (p + "ffn_gate.weight", (f, d)), (p + "ffn_up.weight", (f, d)), (p + "ffn_down.weight", (d, f))]
    return [(name, shp, q4_k_m_type(name, L)) for name, shp in out]


# scale fields (fp16) and, for the types with an offset, the offset field and its
# ratio to d that centres the decoded values around zero
_SCALES = {"Q4_0": ("d", None, 0), "Q4_1": ("d", "m", -8.0), "Q5_0": ("d", None, 0), "Q5_1": ("d", "m", -16.0),
           "Q8_0": ("d", None, 0), "Q4_K": ("d", "dmin", 7.5), "Q5_K": ("d", "dmin", 15.5), "Q6_K": ("d", None, 0)}
_UNIT_RMS: dict[str, float] = {}


def _block_dtype(type_name: str) -> np.dtype:
    from .quants import BLOCK_DTYPES

    return BLOCK_DTYPES[type_name]


def _unit_rms(type_name: str) -> float:
    """RMS of the decoded values of random blocks with d = 1 (to pick d for a target RMS)."""
    if type_name not in _UNIT_RMS:
        rng = np.random.default_rng(12345)
        raw = _random_blocks(type_name, 256 * 64, rng, 1.0)
        _UNIT_RMS[type_name] = float(np.sqrt(np.mean(dequantize(type_name, raw, 256 * 64).astype(np.float64) ** 2)))
    return _UNIT_RMS[type_name]


def _random_blocks(type_name: str, n_elements: int, rng: np.random.Generator, d: float) -> np.ndarray:
    t = ggml_type(type_name)
    nb = t.n_bytes(n_elements)
    raw = rng.bit_generator.random_raw((nb + 7) // 8).view(np.uint8)[:nb]  # fastest random bytes
    b = raw.view(_block_dtype(type_name))
    dfield, mfield, ratio = _SCALES[type_name]
    dv = (d * rng.uniform(0.5, 1.5, len(b))).astype(np.float16)
    b[dfield] = dv
    if mfield:
        b[mfield] = (dv.astype(np.float32) * np.float32(ratio)).astype(np.float16)
    if type_name == "Q8_0":  # ggml's quantizers never write -128
        qs = b["qs"]
        np.maximum(qs, -127, out=qs)
        b["qs"] = qs
    return raw


def synthetic_raw(type_name: str, rows: int, cols: int, rng: np.random.Generator, rms: float) -> np.ndarray:
    """Random valid weights of ``type_name`` whose decoded values have about this RMS:
    ``(rows, row_bytes)`` uint8, or float32 ``(rows, cols)`` for F32."""
    if type_name == "F32":
        return (rng.standard_normal((rows, cols)) * rms).astype(np.float32)
    if type_name not in _SCALES:
        raise PyEngineError(f"synthetic weights of type {type_name} are not supported "
                            f"(supported: {', '.join(_SCALES)}, F32)")
    raw = _random_blocks(type_name, rows * cols, rng, rms / _unit_rms(type_name))
    return raw.reshape(rows, -1)


def _gpt2_byte_chars() -> list[str]:
    # GPT-2's byte -> printable unicode map (the byte-level BPE alphabet)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    k = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def _tokenizer_metadata(source: str | os.PathLike | None) -> tuple[dict, str]:
    """``tokenizer.*`` metadata: copied from a GGUF file, or a built-in byte-level vocabulary.

    ``source``: a .gguf path, ``"auto"`` (SmolLM2-135M from the model cache when there,
    else built-in) or ``"bytes"`` (built-in: 3 specials, 256 byte tokens, padding, no merges).
    """
    if source == "auto":
        cand = None
        try:
            from .registry import model_path

            cand = model_path("smollm2-135m")
        except Exception:  # noqa: BLE001 - no registry entry / cache dir: use the built-in vocab
            pass
        source = str(cand) if cand is not None and Path(cand).exists() else "bytes"
    if source == "bytes":
        n_vocab = 49152
        toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _gpt2_byte_chars()
        types = [3, 3, 3] + [1] * 256
        toks += [f"<unused_{i}>" for i in range(n_vocab - len(toks))]
        types += [5] * (n_vocab - len(types))
        md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": toks,
              "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["Ġ t"],
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
              "tokenizer.ggml.add_bos_token": False}
        return md, "built-in byte-level vocabulary"
    from .gguf_file import open_gguf

    gf = open_gguf(source, check_types=False)
    md = {k: v for k, v in gf.metadata.items() if k.startswith("tokenizer.") and k != "tokenizer.chat_template"}
    if "tokenizer.ggml.tokens" not in md:
        raise PyEngineError(f"{source}: no tokenizer.ggml.tokens metadata to copy")
    return md, str(source)


def _add_kv(w, key: str, val) -> None:
    from gguf import GGUFValueType

    if isinstance(val, np.ndarray):
        sub = {np.dtype("int32"): GGUFValueType.INT32, np.dtype("float32"): GGUFValueType.FLOAT32,
               np.dtype("uint32"): GGUFValueType.UINT32, np.dtype("bool"): GGUFValueType.BOOL,
               np.dtype("uint8"): GGUFValueType.UINT8, np.dtype("int8"): GGUFValueType.INT8}[val.dtype]
        w.add_key_value(key, val.tolist(), GGUFValueType.ARRAY, sub_type=sub)
    elif isinstance(val, list):
        w.add_array(key, val)
    elif isinstance(val, bool):
        w.add_bool(key, val)
    elif isinstance(val, int):
        (w.add_uint32 if val >= 0 else w.add_int32)(key, val)
    elif isinstance(val, float):
        w.add_float32(key, val)
    else:
        w.add_string(key, str(val))


def make_synthetic(shape: str = "1B", out_dir: str | os.PathLike = "benchmarks/out", seed: int = 0,
                   tokenizer: str | os.PathLike = "auto", overwrite: bool = True,
                   progress: bool = False) -> Path:
    """Write ``synthetic-<shape>-Q4_K_M.gguf`` (architecture ``llama``) into ``out_dir``; returns its path.

    Weights are random but valid blocks (finite fp16 scales, decoded RMS about
    1/sqrt(cols) so activations stay finite through every layer), in llama.cpp's
    Q4_K_M mix; norms are ones. Tensors are generated and written one at a time, so
    memory stays at the size of the largest tensor (~165 MB for "7B"'s output).
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    if shape not in SYNTHETIC_SHAPES:
        raise PyEngineError(f"unknown synthetic shape {shape!r} (choose from: {', '.join(SYNTHETIC_SHAPES)})")
    s = SYNTHETIC_SHAPES[shape]
    tok_md, tok_src = _tokenizer_metadata(tokenizer)
    n_vocab = len(tok_md["tokenizer.ggml.tokens"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"synthetic-{shape}-Q4_K_M.gguf"
    if path.exists() and not overwrite:
        return path
    tmp = path.with_suffix(".gguf.part")
    specs = synthetic_tensors(s, n_vocab)
    w = GGUFWriter(str(tmp), "llama")
    w.add_name(f"pyengine synthetic {shape} (random weights)")
    w.add_string("general.description", "random but valid weights for benchmarking; the text it writes is noise")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["dim"])
    w.add_block_count(s["n_layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["n_heads"])
    w.add_head_count_kv(s["n_kv_heads"])
    w.add_rope_dimension_count(s["dim"] // s["n_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)
    w.add_string("pyengine.synthetic.tokenizer_source", os.path.basename(tok_src))
    for k, v in tok_md.items():
        _add_kv(w, k, v)
    for name, shp, tn in specs:
        gt = ggml_type(tn)
        n_el = int(np.prod(shp))
        if tn == "F32":
            w.add_tensor_info(name, shp, np.dtype(np.float32), n_el * 4)
        else:
            byte_shape = (*shp[:-1], gt.n_bytes(shp[-1]))
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), gt.n_bytes(n_el), raw_dtype=GGMLQuantizationType[tn])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    it = specs
    if progress:
        from tqdm import tqdm

        total = sum(ggml_type(tn).n_bytes(int(np.prod(shp))) for _, shp, tn in specs)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=path.name)
    try:
        for name, shp, tn in it:
            if tn == "F32":
                arr = np.ones(shp, dtype=np.float32)
            else:
                rows = int(np.prod(shp[:-1]))
                rms = 0.05 if name == "token_embd.weight" else 1.0 / math.sqrt(shp[-1])
                arr = synthetic_raw(tn, rows, shp[-1], rng, rms)
            w.write_tensor_data(arr)
            if progress:
                bar.update(arr.nbytes)
            del arr
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if progress:
            bar.close()
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------
# 4. whole-model benchmark (llama-bench's pp / tg)
# --------------------------------------------------------------------------------


def weight_bytes_per_token(model) -> int:
    """Weight bytes one decode step reads: every weight once, but only one row of the
    token embedding -- unless the output projection is tied to it (then all of it)."""
    arch = getattr(model, "arch", None)
    tensors = model.gguf.tensors
    emb = getattr(arch, "tok_embd", None) or tensors.get("token_embd.weight")
    out = getattr(arch, "output", None) or tensors.get("output.weight") or emb
    total = 0
    for t in tensors.values():
        if t is emb:
            continue
        total += t.n_bytes
    if emb is not None:
        total += emb.n_bytes if out is emb else emb.row_bytes
    return total


class _OpTimer:
    """Accumulates wall time spent inside the outermost calls of the wrapped functions."""

    def __init__(self):
        self.depth = 0
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn):
        def wrapped(*a, **kw):
            if self.depth:
                return fn(*a, **kw)
            self.depth = 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self.depth = 0
        return wrapped


_NOT_OPS = {"prepare", "kv_cache", "name", "description", "make_decode_step"}


def python_share(model, n_steps: int = 8, seed: int = 1) -> dict:
    """Fraction of a decode step's wall time spent in Python, outside the backend's ops.

    Method: every public method of the backend instance (matmul, rmsnorm, attention,
    rope, ...) and, when present, every function of the native module ``pyengine._C``
    is wrapped with ``time.perf_counter`` (only the outermost call counts, so an op
    calling another is not counted twice). ``n_steps`` extra decode steps -- not the
    timed tg steps -- are run; the share is ``1 - time inside ops / step time``. What
    is left is the model code, the engine, argument checks and dispatch, i.e. the
    Python interpreter's part; the wrapper's own ~0.2 us per call counts as Python.
    ``native`` is the same measured at the ``_C`` boundary (glue in the backend's
    Python methods then counts as Python too); None if ``_C`` is not used. A decode
    step the backend compiled into one call (``Backend.make_decode_step``) counts as
    one native op.
    """
    backend = model.backend
    t_ops = _OpTimer()
    t_nat = _OpTimer()
    patched: list[tuple[Any, str, Any, bool]] = []
    for name in dir(backend):
        if name.startswith("_") or name in _NOT_OPS:
            continue
        fn = getattr(backend, name, None)
        if callable(fn) and not isinstance(fn, type):
            patched.append((backend, name, fn, name in vars(backend)))
            setattr(backend, name, t_ops.wrap(fn))
    try:
        from . import _C
    except ImportError:
        _C = None
    if _C is not None:
        for name in dir(_C):
            fn = getattr(_C, name)
            if not name.startswith("_") and callable(fn) and not isinstance(fn, type):
                patched.append((_C, name, fn, True))
                setattr(_C, name, t_nat.wrap(fn))
    rng = np.random.default_rng(seed)
    try:
        model.prefill([int(rng.integers(model.n_vocab))])
        step = getattr(model, "_step", None)
        if callable(step):
            # the backend compiled the whole decode step into one (native) call: it is an op
            patched.append((model, "_step", step, True))
            model._step = t_ops.wrap(t_nat.wrap(step))
        model.decode(int(rng.integers(model.n_vocab)))  # settle
        t_ops.seconds = t_nat.seconds = 0.0
        t_ops.calls = t_nat.calls = 0
        t0 = time.perf_counter()
        for _ in range(n_steps):
            model.decode(int(rng.integers(model.n_vocab)))
        total = time.perf_counter() - t0
    finally:
        for obj, name, fn, own in reversed(patched):
            if own:
                setattr(obj, name, fn)
            else:  # was a class method: drop the instance attribute
                delattr(obj, name)
    share = max(0.0, 1.0 - t_ops.seconds / total)
    nat = max(0.0, 1.0 - t_nat.seconds / total) if t_nat.calls else None
    return {"python_share": share, "python_share_native_boundary": nat, "step_ms": 1e3 * total / n_steps,
            "op_calls_per_step": t_ops.calls / n_steps, "native_calls_per_step": t_nat.calls / n_steps,
            "steps": n_steps, "method": "perf_counter around every backend op (outermost) on extra decode steps"}


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    xs = list(xs)
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_model_bench(model: str, n_prompt: int = 512, n_gen: int = 128, reps: int = 3, threads: int | None = None,
                    backend: str = "auto", seed: int = 0, bw: dict | None = None, bw_bytes: int = 1 << 30,
                    python_steps: int = 8, log: Callable[[str], None] | None = print) -> dict:
    """llama-bench-style pp / tg of ``model`` (a .gguf path or registry name); returns a JSON-ready dict.

    pp<N>: ``reps`` times, a prompt of ``n_prompt`` random token ids processed as one
    batch by ``Model.prefill`` (cache reset each time): tokens/s = N / seconds.
    tg<N>: ``reps`` times, after a one-token prompt, ``n_gen`` tokens fed one at a
    time through ``Model.decode`` (random ids, as llama-bench does): tokens/s = N /
    seconds. One untimed warm-up of each comes first (JIT, weight preparation).
    Memory bandwidth is probed after the tests (and after reading the peak RSS, so
    the probe's buffer does not count in it).
    """
    import pyengine

    threads = set_threads(threads)
    if n_prompt < 0 or n_gen < 0 or reps < 1:
        raise PyEngineError("-p and -n must be >= 0 and -r >= 1")
    t0 = time.perf_counter()
    m = pyengine.load(model, backend=backend, n_ctx=max(n_prompt, n_gen + 1, 64) + 8)
    load_s = time.perf_counter() - t0
    n_vocab = int(getattr(m, "n_vocab", None) or m.config.n_vocab)
    rng = np.random.default_rng(seed)
    info = machine_info()
    res: dict[str, Any] = {
        "kind": "model", "model": str(getattr(m, "path", model)), "model_size": int(m.file_size),
        "backend": m.backend.name, "backend_description": m.backend.description, "threads": threads,
        "machine": info, "bandwidth": None, "load_s": load_s, "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
        "tests": [],
    }
    if log:
        log(f"{info['cpu']}, {info['cores']} cores; {threads} threads; backend {m.backend.name}: "
            f"{m.backend.description}")
        log(f"loaded {res['model']} ({m.file_size / 1e6:.0f} MB) in {load_s:.2f} s")
    if n_prompt:
        ids = rng.integers(0, n_vocab, n_prompt)
        m.prefill(ids)  # warm-up
        samples = []
        for _ in range(reps):
            ids = rng.integers(0, n_vocab, n_prompt)
            t0 = time.perf_counter()
            logits = m.prefill(ids)
            int(np.argmax(logits))  # the first token is ready once this returns
            samples.append(time.perf_counter() - t0)
        res["tests"].append(_test_entry(f"pp{n_prompt}", n_prompt, 0, samples))
        res["ttft_ms"] = 1e3 * statistics.fmean(samples)
        if log:
            log(_test_line(res["tests"][-1]))
    if n_gen:
        m.prefill([int(rng.integers(n_vocab))])
        for _ in range(min(4, n_gen)):
            m.decode(int(rng.integers(n_vocab)))  # warm-up
        samples = []
        for _ in range(reps):
            m.prefill([int(rng.integers(n_vocab))])
            toks = rng.integers(0, n_vocab, n_gen)
            t0 = time.perf_counter()
            for tk in toks:
                m.decode(int(tk))
            samples.append(time.perf_counter() - t0)
        res["tests"].append(_test_entry(f"tg{n_gen}", 0, n_gen, samples))
        bpt = weight_bytes_per_token(m)
        res["tg_bytes_per_token"] = bpt
        res["tg_effective_gbps"] = bpt * res["tests"][-1]["avg_ts"] / 1e9
        if log:
            log(_test_line(res["tests"][-1]))
        if python_steps:
            res["python"] = python_share(m, python_steps)
    res["peak_rss"] = peak_rss_bytes()
    res["loadavg_end"] = loadavg()
    del m
    if bw is None and bw_bytes > 0:
        if log:
            log(f"measuring memory read bandwidth ({bw_bytes / 2**30:.2g} GiB buffer) ...")
        bw = measure_bandwidth(bw_bytes, threads)
    res["bandwidth"] = bw
    bwv = bandwidth_at(bw, threads)
    if log and bw:
        log(format_bandwidth(bw))
    if bwv and "tg_bytes_per_token" in res:
        res["tg_bandwidth_bound_ts"] = bwv * 1e9 / res["tg_bytes_per_token"]
        res["tg_pct_of_bandwidth"] = 100.0 * res["tg_effective_gbps"] / bwv
    return res


def _test_entry(name, n_prompt, n_gen, samples):
    n = n_prompt or n_gen
    ts = [n / s for s in samples]
    avg, sd = _mean_sd(ts)
    return {"name": name, "n_prompt": n_prompt, "n_gen": n_gen, "samples_s": samples, "samples_ts": ts,
            "avg_ts": avg, "stddev_ts": sd}


def _test_line(t):
    return f"  {t['name']:<6} {t['avg_ts']:9.2f} ± {t['stddev_ts']:.2f} tok/s  ({len(t['samples_ts'])} runs)"


def format_model_table(res: dict) -> str:
    bwv = bandwidth_at(res["bandwidth"], res["threads"])
    rows = [("model", f"{Path(res['model']).name} ({res['model_size'] / 1e6:.0f} MB)"),
            ("backend", f"{res['backend']} ({res['backend_description']}), {res['threads']} threads")]
    for t in res["tests"]:
        rows.append((t["name"], f"{t['avg_ts']:.2f} ± {t['stddev_ts']:.2f} tokens/s"))
    if "ttft_ms" in res:
        rows.append(("time to first token", f"{res['ttft_ms']:.1f} ms for a {res['n_prompt']}-token prompt "
                                            f"(load: {res['load_s']:.2f} s)"))
    if "tg_effective_gbps" in res:
        rows.append(("tg weight bytes/token", f"{res['tg_bytes_per_token'] / 1e6:.1f} MB"))
        s = f"{res['tg_effective_gbps']:.1f} GB/s"
        if bwv:
            s += (f" = {res['tg_pct_of_bandwidth']:.0f}% of measured {bwv:.1f} GB/s "
                  f"(bound: {res['tg_bandwidth_bound_ts']:.1f} tokens/s)")
        rows.append(("tg effective bandwidth", s))
    if res.get("python"):
        p = res["python"]
        s = f"{100 * p['python_share']:.0f}% of a {p['step_ms']:.2f} ms decode step outside backend ops"
        if p.get("python_share_native_boundary") is not None:
            s += f" ({100 * p['python_share_native_boundary']:.0f}% outside native _C calls)"
        rows.append(("python share", s))
    la = res["machine"].get("loadavg")
    if la:
        rows.append(("load average", f"{la[0]} at the start, {(res.get('loadavg_end') or [la[0]])[0]} at the end "
                                     f"({res['machine']['cores']} cores; above that, timings are depressed)"))
    pr = res["peak_rss"]
    rows.append(("peak RSS", f"{max(pr.values()) / 1e6:.0f} MB (ru_maxrss {pr['ru_maxrss'] / 1e6:.0f} MB"
                             + (f", VmHWM {pr['vmhwm'] / 1e6:.0f} MB)" if "vmhwm" in pr else ")")))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


# --------------------------------------------------------------------------------
# 5. command line
# --------------------------------------------------------------------------------

BENCH_EPILOG = """\
what the numbers mean:
  pp512   prompt processing: one 512-token prompt run as a single batch, in tokens
          per second (the prefill a chat pays before the first word appears).
  tg128   text generation: 128 tokens produced one at a time, in tokens per second
          (the speed you watch text appear at). Each step reads every weight once,
          so it is bounded by memory bandwidth: tokens/s <= GB/s / GB per token.
  GB/s    effective bandwidth = bytes of weights read / time. Compared with the
          machine's measured read bandwidth (a streaming read of a 1 GiB buffer,
          measured in the same run), it says how close to the hardware limit we are.
  python share  the part of a decode step spent in Python outside the backend's
          compute ops (wall time around every op call, on a few extra steps).

examples:
  pyengine bench gemma3-270m                      pp512 and tg128, 3 runs each
  pyengine bench model.gguf -p 128 -n 32 -r 5 -t 2 --json
  pyengine bench kernels                          every kernel on default shapes
  pyengine bench kernels --types Q4_K --shapes 4096x4096 --batch 1 --plot k.png
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pyengine bench`` (``bench MODEL`` and ``bench kernels``) on the CLI's subparsers."""
    b = subparsers.add_parser(
        "bench", help="measure speed: a whole model (pp512/tg128) or the matmul kernels",
        description="Benchmark a model like llama.cpp's llama-bench (pp = prompt tokens/s processed as one "
                    "batch, tg = generated tokens/s one at a time), or with MODEL = 'kernels' every quantized "
                    "matmul kernel against memory bandwidth. Memory read bandwidth is measured first, in the "
                    "same run, and every speed is also given as a share of it.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("target", metavar="MODEL|kernels",
                   help="a .gguf path or registry name to benchmark end to end, or the word 'kernels'")
    b.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    b.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results as JSON to FILE (or stdout with no FILE; the table then goes to stderr)")
    b.add_argument("--bw-size", type=float, default=1.0, metavar="GIB",
                   help="bandwidth probe buffer in GiB; keep it far above the last-level cache (default 1; "
                        "0 skips the probe and the %% figures)")
    b.add_argument("--seed", type=int, default=0, help="random seed for token ids / weights (default 0)")
    g = b.add_argument_group("model benchmark (pyengine bench MODEL)")
    g.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N",
                   help="prompt length of the pp test; 0 skips it (default 512 -> pp512)")
    g.add_argument("-n", "--n-gen", type=int, default=128, metavar="N",
                   help="tokens generated in the tg test; 0 skips it (default 128 -> tg128)")
    g.add_argument("-r", "--repetitions", type=int, default=3, metavar="R",
                   help="timed runs of each test, reported as mean ± sd (default 3)")
    g.add_argument("--backend", default=None,
                   help="model: auto|numpy|numba|cpu|cuda (default auto); kernels: comma list of "
                        "numpy,numba,cpu (default: all available)")
    g.add_argument("--python-steps", type=int, default=8, metavar="N",
                   help="extra decode steps used to measure the python share; 0 skips it (default 8)")
    k = b.add_argument_group("kernel benchmark (pyengine bench kernels)")
    k.add_argument("--types", default=None, help=f"comma list of weight types (default {','.join(DEFAULT_TYPES)} "
                                                 "plus the real models' own type/shape cases)")
    k.add_argument("--shapes", default=None, help="comma list of ROWSxCOLS weight shapes, e.g. 4096x4096,11008x4096 "
                                                  "(rows = outputs, cols = inputs; default: Llama-7B-like shapes)")
    k.add_argument("--batch", default=None, help="comma list of activation rows n: 1 = matrix-vector (generation), "
                                                 ">1 = matrix-matrix (prompt); default 1,64")
    k.add_argument("--model-cases", action="store_true",
                   help="only the real models' own weights: " + ", ".join(f"{r}x{c} {t}" for t, r, c, _ in MODEL_CASES))
    k.add_argument("--variants", default=None, help="native variants to include, e.g. avx2,avx512 (default: all "
                                                    "this CPU runs)")
    k.add_argument("--no-reprobe", action="store_true",
                   help="probe bandwidth only at the start (default: also before each weight type/shape, "
                        "and compare all kernels with the best probe of the run: a shared VM's memory bus drifts)")
    k.add_argument("--hot", action="store_true",
                   help="reuse one weight copy so it may sit in cache (default: rotate copies over 256 MB "
                        "so every call streams weights from DRAM, as in a real model)")
    k.add_argument("--min-time", type=float, default=0.25, metavar="S",
                   help="seconds of timed calls per kernel and case, at least 5 calls (default 0.25)")
    k.add_argument("--stat", choices=["median", "min"], default="median",
                   help="per-call time to report: median (default) or min, the least disturbed call on a busy "
                        "machine; both are in the JSON")
    k.add_argument("--plot", default=None, metavar="FILE.png",
                   help="write a roofline-style PNG (needs matplotlib)")
    b.set_defaults(func=cmd_bench)
    return b


def _out(args):
    # with --json to stdout, the human-readable table goes to stderr
    stream = sys.stderr if args.json == "-" else sys.stdout
    return lambda s: print(s, file=stream, flush=True)


def _write_json(args, obj) -> None:
    text = json.dumps(obj, indent=1, default=float)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


def cmd_bench(args) -> int:
    if args.target == "kernels":
        return cmd_kernels(args)
    return cmd_model(args)


def cmd_kernels(args) -> int:
    log = _out(args)
    batch = None
    if args.batch is not None:
        try:
            batch = [int(v) for v in parse_list(args.batch, "batch")]
        except ValueError:
            raise PyEngineError(f"--batch takes a comma list of integers, got {args.batch!r}") from None
        if any(v < 1 for v in batch):
            raise PyEngineError("--batch sizes must be >= 1")
    res = run_kernel_bench(
        types=parse_list(args.types, "type") if args.types is not None else None,
        shapes=parse_shapes(args.shapes) if args.shapes is not None else None, batch=batch,
        backends=parse_list(args.backend, "backend") if args.backend else None,
        variants=parse_list(args.variants, "variant") if args.variants else None,
        model_cases="only" if args.model_cases else None,
        threads=args.threads, seed=args.seed, bw_bytes=int(args.bw_size * 2**30), cold=not args.hot,
        min_time=args.min_time, log=log, stat=args.stat, reprobe=not args.no_reprobe)
    if args.json:
        _write_json(args, res)
    if args.plot:
        ref = res.get("reference_bandwidth_gbps")
        plot_kernels(res["results"], {"gbps": {str(res["threads"]): ref}} if ref else res["bandwidth"],
                     res["threads"], args.plot,
                     title=f"{res['machine']['cpu']}, {res['threads']} threads")
        log(f"plot written to {args.plot}")
    return check_kernel_results(res)


def check_kernel_results(res: dict) -> int:
    bad = [r for r in res["results"] if r["status"] in ("invalid", "error")]
    if bad:
        first = bad[0]
        raise PyEngineError(
            f"{len(bad)} kernel result(s) failed validation or raised, e.g. {first['kernel']} {first['type']} "
            f"{first['rows']}x{first['cols']} n={first['n']}: {first['message']}")
    return 0


def cmd_model(args) -> int:
    log = _out(args)
    backend = args.backend or "auto"
    if "," in backend:
        raise PyEngineError("the model benchmark takes one --backend (auto, numpy, numba, cpu or cuda)")
    res = run_model_bench(args.target, n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.repetitions,
                          threads=args.threads, backend=backend, seed=args.seed,
                          bw_bytes=int(args.bw_size * 2**30), python_steps=args.python_steps, log=log)
    log(format_model_table(res))
    if args.json:
        _write_json(args, res)
    return 0


def main(argv=None) -> int:
    """``python -m pyengine.bench ...`` = ``pyengine bench ...``."""
    p = argparse.ArgumentParser(prog="python -m pyengine.bench")
    sub = p.add_subparsers(dest="command")
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(["bench", *argv])
    try:
        return int(args.func(args) or 0)
    except PyEngineError as e:
        print(f"pyengine: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
