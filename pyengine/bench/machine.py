"""The machine a benchmark runs on: cores, CPU model and SIMD features, load, peak memory,
and the one place that sets how many threads pyengine computes with."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

from .. import kernels
from ..errors import PyEngineError


def n_cores() -> int:
    """Cores this process may run on (its CPU affinity on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Compute with ``n`` threads (None: all cores) in the native kernels and in numba; returns n.

    Native: :func:`pyengine.kernels.set_num_threads`. Numba: before numba is first imported, the
    environment variable ``NUMBA_NUM_THREADS`` sizes its thread pool (every thread that
    later runs numba code then uses at most n; with n None an existing value is kept);
    once numba is imported, ``numba.set_num_threads`` (at most its pool size) applies to
    the calling thread.
    """
    explicit = n is not None
    n = int(n if explicit else n_cores())
    if n < 1:
        raise PyEngineError(f"--threads must be at least 1 (got {n})")
    kernels.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is None:
        if explicit or "NUMBA_NUM_THREADS" not in os.environ:
            os.environ["NUMBA_NUM_THREADS"] = str(n)
    else:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
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
    if kernels.native_available():  # {"avx2": True, ..., "logical_cores": 2} -> the flags set
        info["cpu_features"] = [k for k, v in kernels.cpu_features().items() if v is True]
    mem = _proc_bytes("/proc/meminfo", "MemTotal")
    if mem is not None:
        info["mem_total_bytes"] = mem
    return info


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key:  N kB`` line of a /proc file, in bytes; None where there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
    hwm = _proc_bytes("/proc/self/status", "VmHWM")
    if hwm is not None:
        out["vmhwm"] = hwm
    return out
