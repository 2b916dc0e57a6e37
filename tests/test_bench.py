"""Smoke tests of the benchmark harness (pyengine.bench) and the synthetic model writer
(pyengine.testing.synthetic): each can fail, none times anything against a target (targets
live in benchmarks/README.md)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pyengine import bench, quants
from pyengine.bench import bandwidth, model as model_bench
from pyengine.bench import kernels as kernel_bench
from pyengine.errors import PyEngineError
from pyengine.gguf_file import open_gguf
from pyengine.testing import synthetic
from pyengine.testing.blocks import random_raw


def test_bandwidth_is_positive_and_finite():
    bw = bandwidth.measure_bandwidth(32 << 20, threads=2, repeats=1)
    assert set(bw["gbps"]) == {"1", "2"}
    for v in bw["gbps"].values():
        assert math.isfinite(v) and v > 0.05  # even a slow VM streams more than 50 MB/s
    assert bw["gbps_1"] == bw["gbps"]["1"] and bw["gbps_all"] == bw["gbps"]["2"]
    assert bandwidth.bandwidth_at(bw, 2) == bw["gbps"]["2"]
    assert bandwidth.bandwidth_at(bw, 16) == bw["gbps"]["2"]  # nearest measured count


def test_nmse():
    ref = np.array([[1.0, -2.0, 3.0]])
    assert kernel_bench.nmse(ref, ref) == 0.0
    assert kernel_bench.nmse(ref * 1.01, ref) == pytest.approx(1e-4)
    assert kernel_bench.nmse(np.array([[1.0, np.nan, 3.0]]), ref) == math.inf
    assert kernel_bench.nmse(np.ones(4), ref) == math.inf  # wrong shape


def _numpy_kernel(type_name):
    return kernel_bench.collect_kernels(type_name, backends=["numpy"])[0].fn


def _small_kernel_bench(**kw):
    bw = bandwidth.measure_bandwidth(16 << 20, threads=1, repeats=1)
    return kernel_bench.run_kernel_bench(types=["Q4_K", "Q8_0"], shapes=[(64, 512)], batch=[1, 3], backends=["numpy"],
                                         bw=bw, threads=1, min_time=0.01, log=None, reprobe=False, **kw)


def test_kernel_bench_validates_and_reports(tmp_path):
    res = _small_kernel_bench()
    res = json.loads(json.dumps(res))  # JSON-serialisable
    assert res["kind"] == "kernels" and res["threads"] == 1
    rs = res["results"]
    assert [(r["type"], r["n"]) for r in rs] == [("Q4_K", 1), ("Q4_K", 3), ("Q8_0", 1), ("Q8_0", 3)]
    for r in rs:
        assert r["status"] == "ok", r
        assert 1e-7 < r["nmse"] < 5e-4  # the NumPy kernel is the spec: int8 activation rounding (~3e-5) only
        assert r["ms"] > 0 and r["reps"] >= 1
        assert r["weight_bytes"] == {"Q4_K": 64 * 512 // 256 * 144, "Q8_0": 64 * 512 // 32 * 34}[r["type"]]
        assert r["gbps"] == pytest.approx(r["weight_bytes"] / r["ms"] / 1e6)
        assert r["gflops"] == pytest.approx(2 * 64 * 512 * r["n"] / r["ms"] / 1e6)
        assert r["pct_bandwidth"] == pytest.approx(100 * r["gbps"] / r["bandwidth_gbps"])
    assert res["reference_bandwidth_gbps"] == res["bandwidth"]["gbps"]["1"]  # reprobe off: the one probe
    assert kernel_bench.check_kernel_results(res) == 0
    line = kernel_bench.format_result(kernel_bench.KernelResult(**rs[0]))
    assert "Q4_K" in line and "64x512" in line and "GB/s" in line and "GFLOP/s" in line
    pytest.importorskip("matplotlib")
    png = tmp_path / "k.png"
    kernel_bench.plot_kernels(rs, res["bandwidth"], 1, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_bench_refuses_a_wrong_kernel(monkeypatch):
    """A kernel returning garbage is reported as invalid and never timed; the CLI then fails."""
    calls = {"bad": 0, "slightly_off": 0}

    def kernels_for(type_name):
        ref = _numpy_kernel(type_name)

        def bad(raw, shape, x):
            calls["bad"] += 1
            return np.random.default_rng(0).standard_normal((x.shape[0], shape[0])).astype(np.float32)

        def slightly_off(raw, shape, x):  # every output 5% too large: NMSE 2.5e-3 > 5e-4
            calls["slightly_off"] += 1
            return ref(raw, shape, x) * np.float32(1.05)

        return [kernel_bench.Kernel("numpy", "numpy", None, ref),
                kernel_bench.Kernel("cpu/bad", "cpu", "bad", bad),
                kernel_bench.Kernel("cpu/off", "cpu", "off", slightly_off)]

    res = _small_kernel_bench(kernels_for=kernels_for)
    by = {(r["kernel"], r["type"], r["n"]): r for r in res["results"]}
    for t in ("Q4_K", "Q8_0"):
        for n in (1, 3):
            assert by[("numpy", t, n)]["status"] == "ok"
            for k in ("cpu/bad", "cpu/off"):
                r = by[(k, t, n)]
                assert r["status"] == "invalid" and r["ms"] is None and r["gbps"] is None
                assert r["nmse"] > kernel_bench.NMSE_MAX and "not timed" in r["message"]
    assert calls == {"bad": 4, "slightly_off": 4}  # one validation call per case, no timing calls
    with pytest.raises(PyEngineError, match="failed validation"):
        kernel_bench.check_kernel_results(res)


def test_kernel_bench_reports_a_raising_kernel():
    def kernels_for(type_name):
        def boom(raw, shape, x):
            raise RuntimeError("segfault avoided")
        return [kernel_bench.Kernel("numpy", "numpy", None, _numpy_kernel(type_name)),
                kernel_bench.Kernel("numba", "numba", None, boom)]

    res = kernel_bench.run_kernel_bench(types=["Q4_0"], shapes=[(32, 64)], batch=[1], bw={"gbps": {"1": 10.0}},
                                        threads=1, min_time=0.0, log=None, kernels_for=kernels_for, reprobe=False)
    r = res["results"][1]
    assert r["status"] == "error" and "segfault avoided" in r["message"]


def test_kernel_bench_on_available_backends():
    """Whatever kernels are built here (numba, native variants) must pass validation on a small shape."""
    ks = kernel_bench.collect_kernels("Q4_K")
    assert ks[0].backend == "numpy"
    res = kernel_bench.run_kernel_bench(types=["Q4_K", "Q6_K"], shapes=[(64, 512)], batch=[1, 4],
                                        bw={"gbps": {"1": 10.0}}, threads=2, min_time=0.0, cold=False, log=None,
                                        reprobe=False)
    assert {r["kernel"] for r in res["results"]} >= {"numpy"}
    bad = [r for r in res["results"] if r["status"] in ("invalid", "error")]
    assert not bad, bad


def test_kernel_bench_times_a_form_on_the_tiers_that_make_it():
    """A load-time form is timed as a copied model runs it: on the tiers the cpu backend gives it to
    (a panel form on AVX2 only, Q5_0_R on AVX-512 only), and validated there against the spec."""
    from pyengine import kernels
    from pyengine.backends.cpu_backend import form_pays_off

    if not kernels.native_available():
        pytest.skip("pyengine._C not importable")
    for form in ("Q5_0_P", "Q5_0_R", "Q4_K_R"):
        got = [k.variant for k in kernel_bench.collect_kernels(form)]
        assert got == [v for v in kernels.kernel_variants() if form_pays_off(form, v)], form
    res = kernel_bench.run_kernel_bench(types=["Q5_0_P", "IQ4_NL_P"], shapes=[(64, 288)], batch=[1, 4],
                                        bw={"gbps": {"1": 10.0}}, threads=2, min_time=0.0, cold=False, log=None,
                                        reprobe=False)
    bad = [r for r in res["results"] if r["status"] in ("invalid", "error")]
    assert not bad, bad


def test_parse_errors_are_one_line():
    assert bench.parse_shapes("4096x4096, 11008x4096") == [(4096, 4096), (11008, 4096)]
    for text in ("4096", "4096xabc", "0x32"):
        with pytest.raises(PyEngineError):
            bench.parse_shapes(text)
    with pytest.raises(PyEngineError, match="unknown type"):
        kernel_bench.run_kernel_bench(types=["Q9_K"], shapes=[(32, 256)], bw={"gbps": {"1": 1.0}}, log=None)
    with pytest.raises(PyEngineError, match="not available"):
        kernel_bench.collect_kernels("Q4_K", backends=["cuda"])


def test_use_more_bits_matches_llama_cpp_q4_k_m():
    # llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2
    q6 = [i for i in range(32) if synthetic.use_more_bits(i, 32)]
    assert q6 == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(16) if synthetic.use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    mat, vec = (4096, 4096), (4096,)
    assert synthetic.q4_k_m_type("output.weight", mat, 32) == "Q6_K"
    assert synthetic.q4_k_m_type("token_embd.weight", mat, 32) == "Q4_K"
    assert synthetic.q4_k_m_type("blk.5.ffn_down.weight", mat, 32) == "Q4_K"
    assert synthetic.q4_k_m_type("blk.6.attn_v.weight", mat, 32) == "Q6_K"
    assert synthetic.q4_k_m_type("blk.6.ffn_down_exps.weight", (8, 4096, 4096), 32) == "Q6_K"
    assert synthetic.q4_k_m_type("blk.6.ffn_up.weight", mat, 32) == "Q4_K"
    assert synthetic.q4_k_m_type("blk.6.ffn_norm.weight", vec, 32) == "F32"
    assert synthetic.q4_k_m_type("blk.6.ffn_gate_inp.weight", (64, 4096), 32) == "F32"
    # rows that are not whole 256-value super-blocks: llama-quantize's fallbacks
    assert synthetic.q4_k_m_type("blk.5.ffn_down_exps.weight", (64, 2048, 1408), 32) == "Q5_0"
    assert synthetic.q4_k_m_type("blk.6.ffn_down_exps.weight", (64, 2048, 1408), 32) == "Q8_0"


@pytest.mark.parametrize("t", ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                               "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_synthetic_weights_have_the_requested_scale(t):
    """random_raw's rms mode: decoded values of about that RMS, centred on zero."""
    rng = np.random.default_rng(0)
    for rms in (0.05, 1 / np.sqrt(4096)):
        w = quants.dequantize(t, random_raw(t, 64 * 512, rng, rms=rms), 64 * 512).astype(np.float64)
        assert np.all(np.isfinite(w))
        assert 0.7 * rms < np.sqrt(np.mean(w ** 2)) < 1.4 * rms, t
        assert abs(np.mean(w)) < 0.2 * rms, t
    with pytest.raises(PyEngineError, match="rms="):
        random_raw(t, 256, rng, "extreme", rms=0.05)


def test_make_synthetic_tiny(tmp_path):
    path = synthetic.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    assert path.name == "synthetic-tiny-Q4_K_M.gguf" and not list(tmp_path.glob("*.part"))
    gf = open_gguf(path)
    s = synthetic.SYNTHETIC_SHAPES["tiny"]
    assert gf.architecture == "llama"
    assert gf.arch_key("embedding_length") == s["dim"] and gf.arch_key("block_count") == s["n_layers"]
    assert gf.arch_key("attention.head_count_kv") == s["n_kv_heads"]
    assert gf.metadata["general.file_type"] == 15
    assert len(gf.metadata["tokenizer.ggml.tokens"]) == 49152 == gf.arch_key("vocab_size")
    kv = s["dim"] // s["n_heads"] * s["n_kv_heads"]
    expect = {
        "token_embd.weight": ("Q4_K", (49152, 256)), "output.weight": ("Q6_K", (49152, 256)),
        "output_norm.weight": ("F32", (256,)), "blk.0.attn_k.weight": ("Q4_K", (kv, 256)),
        "blk.0.attn_v.weight": ("Q4_K", (kv, 256)), "blk.1.attn_v.weight": ("Q6_K", (kv, 256)),
        "blk.0.ffn_down.weight": ("Q4_K", (256, 512)), "blk.1.ffn_down.weight": ("Q6_K", (256, 512)),
        "blk.1.ffn_gate.weight": ("Q4_K", (512, 256)),
    }
    for name, (t, shp) in expect.items():
        assert (gf.tensors[name].type_name, gf.tensors[name].shape) == (t, shp), name
    assert len(gf.tensors) == 3 + 9 * s["n_layers"]
    assert np.all(np.asarray(gf.tensors["blk.1.ffn_norm.weight"].raw.view(np.float32)) == 1.0)
    w = quants.dequantize("Q6_K", gf.tensors["output.weight"].raw, 49152 * 256)
    assert np.all(np.isfinite(w))


def test_make_synthetic_tiny_runs_a_forward_pass(tmp_path):
    import pyengine

    path = synthetic.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    m = pyengine.load(str(path), backend="numpy", n_ctx=64)
    logits = m.prefill([1, 100, 200, 300])
    assert logits.shape == (49152,) and np.all(np.isfinite(logits))
    assert 0.1 < float(np.std(logits)) < 10  # weights scaled so activations stay O(1)
    step = m.decode(7)
    assert np.all(np.isfinite(step))


# (values per block, bytes per block), written out here so the count below does not lean on
# pyengine's own type table
_BLOCK = {"F32": (1, 4), "Q4_K": (256, 144), "Q6_K": (256, 210), "Q5_0": (32, 22), "Q8_0": (32, 34)}


def _nbytes(shape, t) -> int:
    per, size = _BLOCK[t]
    return int(np.prod(shape)) // per * size


@pytest.mark.parametrize("case", ["dense", "tied", "moe"])
def test_weight_bytes_per_token_against_an_independent_count(tmp_path, case):
    """Model.weight_bytes_per_token counts every tensor once, one embedding row (all of it when
    the output is tied to it) and top_k / n_expert of each expert stack, computed here from the
    writer's own tensor list and block sizes."""
    import pyengine

    if case == "moe":
        s = synthetic.MOE_SHAPES["tiny-qwen3moe"]
        specs = synthetic.moe_tensors(s, 49152)
        path = synthetic.make_synthetic("tiny-qwen3moe", tmp_path, tokenizer="bytes")
    else:
        s = synthetic.SYNTHETIC_SHAPES["tiny"]
        specs = synthetic.llama_tensors(s, 49152)
        if case == "tied":
            specs = [x for x in specs if x[0] != "output.weight"]
        tok = synthetic.tokenizer_metadata("bytes")
        path = synthetic.write_synthetic(tmp_path / "tiny.gguf", "llama", "tiny", synthetic.llama_metadata(s, 49152),
                                         specs, tok)
    want = 0
    for name, shape, t in specs:
        if name == "token_embd.weight" and case != "tied":
            want += _nbytes(shape[1:], t)  # the one row a token looks up
        elif "_exps." in name:
            want += _nbytes(shape, t) * s["n_used"] // s["n_expert"]  # the routed experts only
        else:
            want += _nbytes(shape, t)
    m = pyengine.load(str(path), backend="numpy", n_ctx=16)
    assert m.weight_bytes_per_token() == want
    every = sum(_nbytes(shape, t) for _, shape, t in specs)
    assert (want < every) == (case != "tied")  # one embedding row / the routed experts: fewer bytes


def test_model_bench_on_tiny_model(tmp_path, capsys):
    path = synthetic.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    res = model_bench.run_model_bench(str(path), n_prompt=16, n_gen=4, reps=2, threads=1, backend="numpy",
                                      bw={"gbps": {"1": 10.0}, "method": "given", "size_bytes": 0, "repeats": 0},
                                      python_steps=3, log=None)
    res = json.loads(json.dumps(res))
    names = [t["name"] for t in res["tests"]]
    assert names == ["pp16", "tg4"]
    for t in res["tests"]:
        assert len(t["samples_ts"]) == 2 and all(v > 0 for v in t["samples_ts"])
        assert t["avg_ts"] == pytest.approx(sum(t["samples_ts"]) / 2)
    assert res["ttft_ms"] > 0 and res["peak_rss"]["ru_maxrss"] > 10e6
    assert res["tg_effective_gbps"] == pytest.approx(res["tg_bytes_per_token"] * res["tests"][1]["avg_ts"] / 1e9)
    assert res["tg_pct_of_bandwidth"] == pytest.approx(100 * res["tg_effective_gbps"] / 10.0)
    assert res["tg_bandwidth_bound_ts"] == pytest.approx(10.0e9 / res["tg_bytes_per_token"])
    p = res["python"]
    assert 0.0 <= p["python_share"] <= 1.0 and p["op_calls_per_step"] > 10  # every layer calls several ops
    text = model_bench.format_model_table(res)
    assert "pp16" in text and "tg4" in text and "python share" in text


def test_cli_hook_and_one_line_errors(tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser(prog="pyengine")
    sub = p.add_subparsers(dest="command")
    bench.add_parser(sub)
    args = p.parse_args(["bench", "kernels", "--types", "Q4_0", "--shapes", "32x64", "--batch", "1",
                         "--backend", "numpy", "--bw-size", "0.01", "--min-time", "0", "-t", "1",
                         "--json", str(tmp_path / "k.json")])
    assert args.func(args) == 0
    data = json.loads((tmp_path / "k.json").read_text())
    assert data["results"][0]["type"] == "Q4_0" and data["results"][0]["status"] == "ok"
    assert "Q4_0  32x64" in capsys.readouterr().out
    args = p.parse_args(["bench", str(tmp_path / "missing.gguf"), "--bw-size", "0.01"])
    with pytest.raises(PyEngineError) as e:
        args.func(args)
    assert "\n" not in str(e.value)
    args = p.parse_args(["bench", "kernels", "--shapes", "12x", "--bw-size", "0.01"])
    with pytest.raises(PyEngineError, match="bad shape"):
        args.func(args)


def test_kernel_bench_compares_with_the_best_probe(monkeypatch):
    """With re-probing, every % is against the best probe of the run, whichever case it came before."""
    seq = iter([5.0, 20.0, 8.0, 4.0])
    monkeypatch.setattr(kernel_bench, "measure_bandwidth",
                        lambda *a, **k: {"gbps": {"1": next(seq)}, "method": "fake", "size_bytes": 0, "repeats": 0})
    res = kernel_bench.run_kernel_bench(types=["Q4_0"], shapes=[(32, 64), (64, 64)], batch=[1], threads=1,
                                        bw_bytes=1 << 16, backends=["numpy"], min_time=0.0, cold=False, log=None)
    assert res["bandwidth_probes_gbps"] == [5.0, 20.0, 8.0, 4.0] and res["reference_bandwidth_gbps"] == 20.0
    assert [r["cols"] for r in res["results"]] == [64, 64]
    for r, around in zip(res["results"], (14.0, 6.0)):  # first case between 20 and 8, second between 8 and 4
        assert r["bandwidth_gbps"] == 20.0 and r["pct_bandwidth"] == pytest.approx(5 * r["gbps"])
        assert r["paired_bandwidth_gbps"] == around and r["pct_paired"] == pytest.approx(100 * r["gbps"] / around)


def test_model_cases_only(monkeypatch):
    calls = []
    monkeypatch.setattr(kernel_bench, "bench_case", lambda tn, r, c, n, ks, *a, **k: calls.append((tn, r, c, n)) or [])
    kernel_bench.run_kernel_bench(model_cases="only", batch=[1], bw={"gbps": {"1": 1.0}}, threads=1, log=None,
                                  kernels_for=lambda t: [], reprobe=False)
    assert calls == [(t, r, c, 1) for t, r, c, _ in kernel_bench.MODEL_CASES]


def test_the_engine_does_not_import_the_testing_package(tmp_path):
    """pyengine.testing is tooling: loading a model, generating, and building the whole command
    line (bench included) must not import it; only running a benchmark case does."""
    import subprocess
    import sys

    path = synthetic.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    code = (
        "import sys, pyengine, pyengine.cli, pyengine.server, pyengine.chat\n"
        "pyengine.cli.build_parser()\n"
        f"m = pyengine.load({str(path)!r}, backend='numpy', n_ctx=32)\n"
        "''.join(m.generate([1, 2, 3], max_tokens=2, temperature=0.0))\n"
        "m.weight_bytes_per_token()\n"
        "print(sorted(k for k in sys.modules if k.startswith('pyengine.testing')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_profile_step_script(capsys):
    """benchmarks/profile_step.py: one line per position naming the step and its op kinds (here
    with the weights left mapped, --weights map); bad positions and a missing file are one-line
    errors."""
    import importlib.util
    from pathlib import Path

    from conftest import native_built, real_model_path

    if not native_built():
        pytest.skip("needs pyengine._C")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step", path)
    ps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ps)
    assert ps.main([str(real_model_path("gemma3-270m")), "--positions", "3,70", "--reps", "1", "--top", "2",
                    "--weights", "map"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pos ")]
    assert [ln.split(":")[0] for ln in lines] == ["pos 3", "pos 70"]
    assert all("matmul" in ln and ln.count(",") == 1 for ln in lines)  # --top 2: two kinds
    with pytest.raises(SystemExit):
        ps.main(["x.gguf", "--positions", "a,b"])
    assert "--positions: not a comma list of integers" in capsys.readouterr().err
    assert ps.main(["/nonexistent/model.gguf", "--positions", "3"]) == 2
    assert capsys.readouterr().err.strip().startswith("profile_step: model file not found")


def _bench_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ab_kernels_script(capsys):
    """benchmarks/ab_kernels.py: a build against itself gives bit-identical outputs and one line
    per case; a bad case or a missing module file is a one-line error."""
    from conftest import native_built

    if not native_built():
        pytest.skip("needs pyengine._C")
    from pyengine import _C

    ab = _bench_script("ab_kernels")
    assert ab.main([_C.__file__, _C.__file__, "--variant", "generic", "-r", "2", "Q4_K:8x512", "q8_0:4x64:2",
                    "Q3_K/Q3_K_R:4x512", "Q2_K/Q2_K_R:4x512"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["Q4_K 8x512 n=1 generic", "Q8_0 4x64 n=2 generic",
                                                  "Q3_K/Q3_K_R 4x512 n=1 generic", "Q2_K/Q2_K_R 4x512 n=1 generic"]
    assert all(ln.endswith("outputs bit-identical") and "B/A" in ln for ln in lines)
    assert ab.main([_C.__file__, _C.__file__, "--variant", "generic", "-r", "1", "Q3_K/Q2_K:4x512"]) == 0
    assert capsys.readouterr().out.strip().endswith("outputs DIFFER")  # not the same weights: it says so
    assert ab.main(["/nonexistent/_C.so", _C.__file__, "Q4_K:8x512"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ab.main([_C.__file__, _C.__file__, "Q4K"])
    assert "expected TYPE[/TYPE_B]:ROWSxCOLS" in capsys.readouterr().err


def test_compare_llamacpp_targets():
    """Each file kind is held to its issue's target: the quantization mixes (issue 12) and the
    DeepSeek-V2-Lite-shaped file (issue 13) to tg 1.3x with no pp target, the Qwen3-30B-A3B-shaped
    one to none (issue 13 sets none for it), the Q4_K_M synthetic file to 1.1x."""
    cmp = _bench_script("compare_llamacpp")
    for name in ("synthetic-1B-Q5_K_M.gguf", "synthetic-1B-Q3_K_M.gguf", "synthetic-1B-Q2_K.gguf",
                 "synthetic-1B-IQ4_XS.gguf", "synthetic-ds2-lite-Q4_K_M.gguf"):
        assert cmp.target_for(name) == {"tg": 1.3, "pp": None, "bw_share": None}, name
    assert cmp.target_for("synthetic-qwen3-30b-a3b-Q4_K_M.gguf") == {"tg": None, "pp": None, "bw_share": None}
    assert cmp.target_for("synthetic-1B-Q4_K_M.gguf")["tg"] == 1.1
    assert cmp.target_for("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")["tg"] == 1.3
    assert cmp.target_for("something-else.gguf") is None
