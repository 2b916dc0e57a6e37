"""The kernel benchmark (``pyengine bench kernels``): every quantized matmul kernel against
the machine's memory bandwidth.

Every kernel -- the NumPy reference, numba, each native SIMD variant -- runs on
model-sized weights of each type. Each is first *validated* against the NumPy
reference in float64 (NMSE <= 5e-4 on the same random weights and activations); a kernel
that fails is reported and never timed. Then the median (or min) time per call gives
effective GB/s of weight bytes and GFLOP/s. The two batch sizes say different things:
at n = 1 (matrix-vector, token generation) a kernel streams its weights once per call,
so its figure of merit is the **percentage of measured bandwidth**; at n = 64
(matrix-matrix, prompt processing) each weight byte feeds 64 rows, the kernel is bound
by arithmetic, and its figure is **GFLOP/s**.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import kernels, quants
from ..errors import PyEngineError
from ..ggml_types import LOAD_FORMS, ggml_type
from .bandwidth import bandwidth_at, format_bandwidth, measure_bandwidth, probe_buffer
from .machine import loadavg, machine_info, n_cores, set_threads

#: validation threshold: normalised mean squared error against the NumPy reference
NMSE_MAX = 5e-4

#: (type, rows, cols, what) of the weights the real models multiply by, see the README
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
DEFAULT_TYPES = ["Q4_K", "Q4_K_R", "Q6_K", "Q6_K_R", "Q8_0", "Q5_0", "Q5_0_R", "Q5_0_P", "Q5_K", "Q5_K_R", "Q3_K",
                 "Q3_K_R", "Q2_K", "Q2_K_R", "IQ4_XS", "IQ4_XS_R", "IQ4_NL", "IQ4_NL_P", "Q4_0", "Q4_0_P", "Q4_1",
                 "Q4_1_P", "Q5_1", "Q5_1_R", "Q5_1_P", "BF16"]
# Q4_K_R, ..., Q5_0_P, ... (the _R and _P names): the forms the cpu backend gives those types when it copies the
# weights at load (ggml_types.LOAD_FORMS), on the tiers it gives them to (cpu_backend.form_pays_off), benchmarked as
# what a copied model runs: random blocks of the GGUF type, converted by quants.repack; the
# NumPy reference and numba have no kernel for them.
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
    # the mean of the probes just before and just after this (type, shape) case: the memory
    # bus of a VM switches between regimes (32 and 50 GB/s within one run here), so the
    # probe taken in the same minute is the fair comparison; pct_bandwidth stays against the best
    pct_paired: float | None = None
    paired_bandwidth_gbps: float | None = None
    speedup_vs_numpy: float | None = None
    note: str = ""


def reference_matmul(type_name: str, raw: np.ndarray, shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """The ground truth: dequantize with the NumPy reference, multiply in float64."""
    rows, cols = shape
    w = quants.dequantize(type_name, raw, rows * cols, cols=cols).reshape(rows, cols)
    out = np.empty((x.shape[0], rows), dtype=np.float64)
    step = max(1, (1 << 26) // max(cols, 1))  # bound the float64 temporary to ~512 MiB
    xd = x.astype(np.float64)
    for r0 in range(0, rows, step):
        out[:, r0:r0 + step] = xd @ w[r0:r0 + step].astype(np.float64).T
    return out


def collect_kernels(type_name: str, backends: Sequence[str] | None = None,
                    variants: Sequence[str] | None = None) -> list[Kernel]:
    """The kernels to benchmark: the NumPy reference first, then numba, then each native variant.

    ``backends``/``variants`` restrict the list (None: everything available here).
    """
    avail = kernels.available_backends()
    want = list(backends) if backends else avail
    unknown = [b for b in want if b not in ("numpy", "numba", "cpu", "cuda")]
    if unknown:
        raise PyEngineError(f"unknown kernel backend {unknown[0]!r} (choose from: numpy, numba, cpu)")
    missing = [b for b in want if b not in avail]
    if missing:
        raise PyEngineError(f"kernel backend {missing[0]!r} is not available here (available: {', '.join(avail)})")
    out: list[Kernel] = []
    for b in want:
        if type_name in LOAD_FORMS and b != "cpu":
            continue  # a form only the cpu backend makes and runs
        if b == "numpy":
            out.append(Kernel("numpy", "numpy", None, _bind(type_name, "numpy", None)))
        elif b == "cpu":
            if type_name not in kernels.native_types() and not (type_name in LOAD_FORMS and kernels.native_available()):
                continue  # no native kernel for this type: nothing to time
            vs = kernels.kernel_variants() or ["auto"]
            if variants:
                bad = [v for v in variants if v not in vs]
                if bad:
                    raise PyEngineError(f"native variant {bad[0]!r} is not available on this CPU "
                                        f"(available: {', '.join(vs)})")
                vs = [v for v in vs if v in variants]
            if type_name in LOAD_FORMS:  # only the tiers the cpu backend gives it to (form_pays_off)
                from ..backends.cpu_backend import form_pays_off

                vs = [v for v in vs if form_pays_off(type_name, v)]
            for v in vs:
                out.append(Kernel(f"cpu/{v}", "cpu", v, _bind(type_name, "cpu", v)))
        else:
            out.append(Kernel(b, b, None, _bind(type_name, b, None)))
    return out


def _bind(type_name, backend, variant):
    def fn(raw, shape, x):
        return kernels.matmul(type_name, raw, shape, x, backend=backend, variant=variant or "auto")
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


def weight_pool(raw: np.ndarray, copies: int) -> list[np.ndarray]:
    """``copies`` copies of ``raw`` in the memory the engine's cpu backend keeps weights in:
    one anonymous buffer, in 2 MiB pages where the kernel lends them (pyengine.weight_pages)."""
    from ..weight_pages import anonymous_buffer, huge_pages_usable, padded

    step = padded(raw.nbytes)
    buf = anonymous_buffer(step * copies, huge=huge_pages_usable())  # (copies * step,) uint8
    pool = [buf[i * step:i * step + raw.nbytes] for i in range(copies)]
    for w in pool:
        w[:] = raw
    return pool


def bench_case(type_name: str, rows: int, cols: int, n: int, kernels: Sequence[Kernel], bw_gbps: float,
               rng: np.random.Generator, cold: bool = True, min_time: float = 0.25,
               ref_max_time: float = 2.0, log: Callable[[str], None] | None = None,
               stat: str = "median") -> list[KernelResult]:
    """Validate then time every kernel on one (type, shape, batch) case."""
    t = ggml_type(type_name)
    if cols % t.block_size:
        raise PyEngineError(f"{type_name} {rows}x{cols}: cols must be a multiple of the block size {t.block_size}")
    from ..testing.blocks import random_raw  # here, not at the top: `pyengine` builds its parser from this package

    raw = random_raw(type_name, rows * cols, rng, cols=cols)  # a load-time form: random blocks of its type, rewritten
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
                pool = weight_pool(raw, copies)
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
        s += f" ({r.pct_bandwidth:3.0f}% of {r.bandwidth_gbps:.1f} GB/s"
        if r.pct_paired is not None:
            s += f"; {r.pct_paired:3.0f}% of {r.paired_bandwidth_gbps:.1f} probed around it"
        s += ")"
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
    %-of-bandwidth is against the best probe of the run (``reference_bandwidth_gbps``), and
    ``pct_paired`` against the mean of the probes just before and after the kernel's case.
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
            f"native variants: {', '.join(kernels.kernel_variants()) or 'none'}")
        log(format_bandwidth(bw))
        log(f"timed weights: {weight_pages_note()}")
    rng = np.random.default_rng(seed)
    results: list[KernelResult] = []
    probes = [bwv] if bwv else []

    def reprobe_now():
        probes.append(bandwidth_at(measure_bandwidth(threads=threads, repeats=3, thread_counts=[threads],
                                                     buffer=pbuf), threads))

    case_of: list[int] = []  # per result: the index in probes of the probe just before its case
    for tn, r, c in cases:
        ks = kernels_for(tn) if kernels_for else collect_kernels(tn, backends, variants)
        if pbuf is not None:
            # The VM's share of the memory bus drifts (18-35 GB/s within minutes here, and
            # regimes of 32 and 50 GB/s in one run): probe again before each case (and once
            # after the last); every kernel is compared with the best probe of the whole run
            # and with the two probes around its case.
            reprobe_now()
        for n in batch:
            rs = bench_case(tn, r, c, n, ks, None, rng, cold=cold, min_time=min_time, log=log, stat=stat)
            results += rs
            case_of += [len(probes) - 1] * len(rs)
            if log:
                for x in rs:
                    log(format_result(x))
    if pbuf is not None and cases:
        reprobe_now()
        for x, i in zip(results, case_of):
            if x.gbps is not None:
                x.paired_bandwidth_gbps = (probes[i] + probes[i + 1]) / 2
                x.pct_paired = 100.0 * x.gbps / x.paired_bandwidth_gbps
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
            "cold": cold, "stat": stat, "weight_pages": weight_pages_note(), "results": [asdict(x) for x in results]}


def weight_pages_note() -> str:
    from ..weight_pages import huge_pages_usable

    return ("copies in 2 MiB pages, as the cpu backend keeps a model's weights" if huge_pages_usable() else
            "copies in 4 KiB pages (no transparent huge pages here; the cpu backend maps the file)")


def check_kernel_results(res: dict) -> int:
    bad = [r for r in res["results"] if r["status"] in ("invalid", "error")]
    if bad:
        first = bad[0]
        raise PyEngineError(
            f"{len(bad)} kernel result(s) failed validation or raised, e.g. {first['kernel']} {first['type']} "
            f"{first['rows']}x{first['cols']} n={first['n']}: {first['message']}")
    return 0


def _known_types() -> list[str]:
    from ..ggml_types import SUPPORTED

    return list(SUPPORTED) + list(LOAD_FORMS)
