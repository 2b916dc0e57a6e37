"""Fuzzing GGUF headers and tensor tables (issue 11, item 8).

Hypothesis builds hostile variants of a tiny valid llama model (tests/hostile_gguf.py):
wrap-around and zero-width shapes, dimension counts, retyped tensors, moved / overlapping
/ misaligned offsets, header values of the wrong type or range, removed keys, deep
arrays, NaN weights, truncations and byte flips. Every file is loaded and asked for two
tokens on the numpy and cpu backends in a subprocess with a time and memory limit
(resource.setrlimit); each outcome must be a normal result (ids inside the vocabulary)
or one PyEngineError line. A signal, a hang, a non-PyEngineError exception or a
multi-line message fails the test and leaves the offending file in the test's tmp dir.

Cases are batched (BATCH files per subprocess). The default run is small enough for CI
(FUZZ_EXAMPLES cases, about a minute); set PYENGINE_FUZZ_EXAMPLES=N for a longer run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hostile_gguf as H  # noqa: E402
from conftest import native_built  # noqa: E402

BATCH = 10
FUZZ_EXAMPLES = int(os.environ.get("PYENGINE_FUZZ_EXAMPLES", "30"))
MEM_LIMIT = 3 << 30  # bytes of address space per child
TIME_LIMIT = 240  # seconds per batch
BACKENDS = ["numpy"] + (["cpu"] if native_built() else [])

HARNESS = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
import numpy as np
import pyengine
from pyengine.errors import PyEngineError
for path in sys.argv[1:]:
    for backend in {backends!r}:
        print(json.dumps({{"start": path, "backend": backend}}), flush=True)
        try:
            m = pyengine.load(path, backend=backend, n_ctx=16, progress=False)
            list(m.generate([1, 5], max_tokens=2, temperature=0, stop_at_eos=False))
            ids = m.last_stats.token_ids
            ok = len(ids) == 2 and all(0 <= i < m.n_vocab for i in ids)
            res = {{"outcome": "ok" if ok else "bad-result", "ids": ids}}
        except PyEngineError as e:
            res = {{"outcome": "error", "type": type(e).__name__, "msg": str(e)}}
        except BaseException as e:
            res = {{"outcome": "other", "type": type(e).__name__, "msg": str(e)[:300]}}
        res.update(path=path, backend=backend)
        print(json.dumps(res), flush=True)
"""

# ---------------------------------------------------------------- strategies

INTERESTING = [0, 1, 2, 31, 32, 255, 256, 257, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63,
               2**64 - 1]
u64 = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1), st.integers(0, 4096))
type_ids = st.one_of(st.sampled_from([0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30]), st.integers(0, 2**32 - 1))


def _scalar_values():
    return st.one_of(
        st.tuples(st.just(H.U8), st.integers(0, 255)), st.tuples(st.just(H.I8), st.integers(-128, 127)),
        st.tuples(st.just(H.U16), st.integers(0, 2**16 - 1)), st.tuples(st.just(H.I16), st.integers(-2**15, 2**15 - 1)),
        st.tuples(st.just(H.U32), st.one_of(st.sampled_from([0, 1, 3, 48, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))),
        st.tuples(st.just(H.I32), st.integers(-2**31, 2**31 - 1)),
        st.tuples(st.just(H.U64), u64), st.tuples(st.just(H.I64), st.integers(-2**63, 2**63 - 1)),
        st.tuples(st.just(H.F32), st.floats(width=32, allow_nan=True, allow_infinity=True)),
        st.tuples(st.just(H.F64), st.floats(allow_nan=True, allow_infinity=True)),
        st.tuples(st.just(H.BOOL), st.booleans()),
        st.tuples(st.just(H.STR), st.text(max_size=8)),
    )


def _values():
    scalars = _scalar_values()
    arrays = st.one_of(
        st.tuples(st.just(H.ARR), st.tuples(st.just(H.I32), st.lists(st.integers(-5, 300), max_size=6))),
        st.tuples(st.just(H.ARR), st.tuples(st.just(H.STR), st.lists(st.text(max_size=3), max_size=6))),
        st.tuples(st.just(H.ARR), st.tuples(st.just(H.F32), st.lists(st.floats(width=32), max_size=6))),
        st.integers(1, 600).map(lambda d: (H.ARR, _nested(d))),
    )
    return st.one_of(scalars, arrays)


def _nested(depth):
    v = (H.U8, [1])
    for _ in range(depth):
        v = (H.ARR, [v])
    return v


def mutation():
    t = st.integers(0, 40)  # tensor index (mod the count)
    k = st.integers(0, 40)  # metadata index (mod the count)
    return st.one_of(
        st.tuples(st.just("dim"), t, st.integers(0, 3), u64),
        st.tuples(st.just("ndims"), t, st.lists(u64, max_size=5)),
        st.tuples(st.just("retype"), t, type_ids),
        st.tuples(st.just("retype_known"), t, st.sampled_from(sorted(H.TYPES))),
        # lies the byte layout cannot reveal: shape or type changed together with the data
        st.tuples(st.just("reshape_data"), t, st.lists(st.sampled_from([1, 2, 32, 64, 128, 256, 512, 37]),
                                                       min_size=1, max_size=4)),
        st.tuples(st.just("retype_data"), t, st.sampled_from(sorted(H.TYPES))),
        st.tuples(st.just("offset"), t, st.one_of(st.sampled_from([-1, 1, 4, 16, 32, -32, 64]), u64)),
        st.tuples(st.just("offset_like"), t, t),
        st.tuples(st.just("meta"), k, _values()),
        st.tuples(st.just("drop_meta"), k),
        st.tuples(st.just("drop_tensor"), t),
        st.tuples(st.just("alignment"), st.sampled_from([0, 1, 2, 8, 16, 24, 64, 4096, 2**31])),
        st.tuples(st.just("poison"), t, st.integers(0, 2**20), st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x00\x7c", b"\xff\x7f"])),
        st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
        st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.integers(1, 255)),
        st.tuples(st.just("header_flip"), st.integers(0, 4096), st.integers(1, 255)),
    )


case_strategy = st.tuples(st.sampled_from(["llama", "gemma3"]),
                          st.sampled_from(["Q8_0", "Q4_0", "Q4_K", "Q6_K", "F16", "F32"]),
                          st.lists(mutation(), min_size=1, max_size=3))


def _relayout(spec) -> None:
    """Offsets packed again after a tensor's data changed size."""
    at, al = 0, spec.alignment
    for tn in spec.tensors:
        tn.offset = at
        at = (at + len(tn.data) + al - 1) // al * al


def build(case) -> bytes:
    """The hostile file for ``case`` = (architecture, matrix type, mutations)."""
    arch, matrix_type, muts = case
    spec = H.tiny_llama(matrix_type, n_layers=1, arch=arch)
    _relayout(spec)  # explicit offsets, so mutations can move them
    byte_muts = []
    for m in muts:
        kind, args = m[0], m[1:]
        ts = spec.tensors
        if kind == "dim" and ts:
            tn = ts[args[0] % len(ts)]
            if tn.ne:
                tn.ne[args[1] % len(tn.ne)] = args[2]
        elif kind == "ndims" and ts:
            ts[args[0] % len(ts)].ne = list(args[1])
        elif kind in ("retype", "retype_known") and ts:
            ts[args[0] % len(ts)].type = args[1]
        elif kind in ("reshape_data", "retype_data") and ts:
            tn = ts[args[0] % len(ts)]
            if kind == "reshape_data":
                tn.ne = list(args[1])
            else:
                tn.type = args[1]
            _, bs, _ = H.TYPES[tn.type] if isinstance(tn.type, str) else (0, 1, 4)
            rows = 1
            for d_ in tn.ne[1:]:
                rows *= d_
            if tn.ne and tn.ne[0] % bs == 0 and 0 < rows * tn.ne[0] <= 1 << 20:  # else the data stays
                tn.data = H.weight_bytes(tn.type if isinstance(tn.type, str) else "F32", rows, tn.ne[0],
                                         __import__("numpy").random.default_rng(rows))
            _relayout(spec)
        elif kind == "offset" and ts:
            tn = ts[args[0] % len(ts)]
            tn.offset = (tn.offset + args[1]) % 2**64
        elif kind == "offset_like" and ts:
            ts[args[0] % len(ts)].offset = ts[args[1] % len(ts)].offset
        elif kind == "meta" and spec.meta:
            entry = spec.meta[args[0] % len(spec.meta)]
            entry[1], entry[2] = args[1]
        elif kind == "drop_meta" and spec.meta:
            del spec.meta[args[0] % len(spec.meta)]
        elif kind == "drop_tensor" and ts:
            del ts[args[0] % len(ts)]
        elif kind == "alignment":
            spec.set("general.alignment", H.U32, args[0])
        elif kind == "poison" and ts:
            tn = ts[args[0] % len(ts)]
            if tn.data:
                d = bytearray(tn.data)
                i = args[1] % len(d)
                d[i:i + len(args[2])] = args[2]
                tn.data = bytes(d[:len(tn.data)])
        else:
            byte_muts.append(m)
    data = bytearray(H.encode(spec))
    for m in byte_muts:
        if m[0] == "truncate":
            data = data[:int(len(data) * m[1])]
        elif m[0] == "flip" and data:
            data[min(len(data) - 1, int(len(data) * m[1]))] ^= m[2]
        elif m[0] == "header_flip" and data:
            data[min(len(data) - 1, m[1])] ^= m[2]
    return bytes(data)


def run_batch(paths: list[Path]) -> list[dict]:
    """Run the harness over ``paths``; returns the outcomes, or fails on a crash or hang."""
    code = HARNESS.format(mem=MEM_LIMIT, backends=BACKENDS)
    env = dict(os.environ, PYENGINE_CACHE=str(paths[0].parent / "cache"), OMP_NUM_THREADS="1")
    try:
        p = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                           timeout=TIME_LIMIT, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        last = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        pytest.fail(f"fuzz batch hung for {TIME_LIMIT} s; last started: {last[-1] if last else None}")
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0:
        started = [ln for ln in lines if "start" in ln]
        last = started[-1] if started else None
        case = Path(last["start"]).with_suffix(".txt") if last else None
        what = case.read_text() if case and case.exists() else ""
        pytest.fail(f"fuzz child died (returncode {p.returncode}) on {last} (case {what}): {p.stderr[-800:]}")
    return [ln for ln in lines if "outcome" in ln]


STATS: dict[str, int] = {}


def check_outcomes(results: list[dict], n_files: int) -> None:
    assert len(results) == n_files * len(BACKENDS), results
    for r in results:
        STATS[r["outcome"]] = STATS.get(r["outcome"], 0) + 1
        case = Path(r["path"]).with_suffix(".txt")
        what = case.read_text() if case.exists() else ""
        assert r["outcome"] in ("ok", "error"), f"{r['path']} on {r['backend']}: {r}; case {what}"
        if r["outcome"] == "error":
            assert "\n" not in r["msg"] and r["msg"], r


# no shrinking: a batch runs in one child, and a failure names its file and mutations
@settings(max_examples=max(1, -(-FUZZ_EXAMPLES // BATCH)), deadline=None, database=None,
          suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
@given(st.lists(case_strategy, min_size=BATCH, max_size=BATCH))
def test_fuzz_gguf_load_and_generate(tmp_path_factory, cases):
    d = tmp_path_factory.mktemp("fuzz")
    paths = []
    for i, case in enumerate(cases):
        p = d / f"case{i}.gguf"
        p.write_bytes(build(case))
        (d / f"case{i}.txt").write_text(repr(case))
        paths.append(p)
    check_outcomes(run_batch(paths), len(paths))


def test_fuzz_harness_sees_a_valid_model_and_a_crash(tmp_path):
    """The harness can fail: a valid file is "ok" on every backend, and a child that dies
    by a signal is reported as a failure."""
    ps = []
    for arch in ("llama", "gemma3"):
        ps.append(tmp_path / f"ok-{arch}.gguf")
        ps[-1].write_bytes(H.encode(H.tiny_llama("Q8_0", n_layers=1, arch=arch)))
    res = run_batch(ps)
    assert [r["outcome"] for r in res] == ["ok"] * 2 * len(BACKENDS), res
    crash = tmp_path / "crash.gguf"
    crash.write_bytes(b"")
    global HARNESS
    saved = HARNESS
    HARNESS = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    try:
        with pytest.raises(pytest.fail.Exception, match="fuzz child died"):
            run_batch([crash])
    finally:
        HARNESS = saved


def test_fuzz_report():
    """Prints the outcome counts of this session's fuzz run (-s to see them)."""
    print(f"fuzz outcomes over {FUZZ_EXAMPLES} requested cases x {BACKENDS}: {STATS}")
