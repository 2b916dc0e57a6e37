"""The whole-model benchmark (``pyengine bench MODEL``): llama-bench's pp / tg.

``pp512``: a 512-token prompt processed as one batch, tokens/s; ``tg128``: 128 tokens
generated one at a time, tokens/s; plus time to first token, peak resident memory, the
share of a decode step spent in Python (:func:`python_share`), and the effective GB/s of
generation: :meth:`pyengine.engine.Model.weight_bytes_per_token` times tokens/s, next to
the machine's measured read bandwidth.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import PyEngineError
from .bandwidth import bandwidth_at, format_bandwidth, measure_bandwidth
from .machine import loadavg, machine_info, peak_rss_bytes, set_threads


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
        from .. import _C
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
                    python_steps: int = 8, log: Callable[[str], None] | None = print, weights: str = "auto") -> dict:
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
    m = pyengine.load(model, backend=backend, n_ctx=max(n_prompt, n_gen + 1, 64) + 8, weights=weights)
    load_s = time.perf_counter() - t0
    n_vocab = int(getattr(m, "n_vocab", None) or m.config.n_vocab)
    rng = np.random.default_rng(seed)
    info = machine_info()
    res: dict[str, Any] = {
        "kind": "model", "model": str(getattr(m, "path", model)), "model_size": int(m.file_size),
        "backend": m.backend.name, "backend_description": m.backend.description, "threads": threads,
        "weights": getattr(m, "weights_placement", ""),
        "machine": info, "bandwidth": None, "load_s": load_s, "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
        "tests": [],
    }
    if log:
        log(f"{info['cpu']}, {info['cores']} cores; {threads} threads; backend {m.backend.name}: "
            f"{m.backend.description}")
        log(f"loaded {res['model']} ({m.file_size / 1e6:.0f} MB) in {load_s:.2f} s; weights: {res['weights']}")
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
        bpt = m.weight_bytes_per_token()
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
