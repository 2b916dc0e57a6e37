"""Smoke tests of the benchmark harness (pyengine.bench): each can fail, none times anything
against a target (targets live in benchmarks/README.md)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pyengine import bench
from pyengine.errors import PyEngineError
from pyengine.gguf_file import open_gguf


def test_bandwidth_is_positive_and_finite():
    bw = bench.measure_bandwidth(32 << 20, threads=2, repeats=1)
    assert set(bw["gbps"]) == {"1", "2"}
    for v in bw["gbps"].values():
        assert math.isfinite(v) and v > 0.05  # even a slow VM streams more than 50 MB/s
    assert bw["gbps_1"] == bw["gbps"]["1"] and bw["gbps_all"] == bw["gbps"]["2"]
    assert bench.bandwidth_at(bw, 2) == bw["gbps"]["2"]
    assert bench.bandwidth_at(bw, 16) == bw["gbps"]["2"]  # nearest measured count


def test_nmse():
    ref = np.array([[1.0, -2.0, 3.0]])
    assert bench.nmse(ref, ref) == 0.0
    assert bench.nmse(ref * 1.01, ref) == pytest.approx(1e-4)
    assert bench.nmse(np.array([[1.0, np.nan, 3.0]]), ref) == math.inf
    assert bench.nmse(np.ones(4), ref) == math.inf  # wrong shape


def _small_kernel_bench(**kw):
    return bench.run_kernel_bench(types=["Q4_K", "Q8_0"], shapes=[(64, 512)], batch=[1, 3],
                                  backends=["numpy"], bw=bench.measure_bandwidth(16 << 20, threads=1, repeats=1),
                                  threads=1, min_time=0.01, log=None, reprobe=False, **kw)


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
    assert bench.check_kernel_results(res) == 0
    line = bench.format_result(bench.KernelResult(**rs[0]))
    assert "Q4_K" in line and "64x512" in line and "GB/s" in line and "GFLOP/s" in line
    pytest.importorskip("matplotlib")
    png = tmp_path / "k.png"
    bench.plot_kernels(rs, res["bandwidth"], 1, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_bench_refuses_a_wrong_kernel(monkeypatch):
    """A kernel returning garbage is reported as invalid and never timed; the CLI then fails."""
    calls = {"bad": 0, "slightly_off": 0}

    def kernels_for(type_name):
        ref = bench._numpy_kernel(type_name)

        def bad(raw, shape, x):
            calls["bad"] += 1
            return np.random.default_rng(0).standard_normal((x.shape[0], shape[0])).astype(np.float32)

        def slightly_off(raw, shape, x):  # every output 5% too large: NMSE 2.5e-3 > 5e-4
            calls["slightly_off"] += 1
            return ref(raw, shape, x) * np.float32(1.05)

        return [bench.Kernel("numpy", "numpy", None, ref),
                bench.Kernel("cpu/bad", "cpu", "bad", bad),
                bench.Kernel("cpu/off", "cpu", "off", slightly_off)]

    res = _small_kernel_bench(kernels_for=kernels_for)
    by = {(r["kernel"], r["type"], r["n"]): r for r in res["results"]}
    for t in ("Q4_K", "Q8_0"):
        for n in (1, 3):
            assert by[("numpy", t, n)]["status"] == "ok"
            for k in ("cpu/bad", "cpu/off"):
                r = by[(k, t, n)]
                assert r["status"] == "invalid" and r["ms"] is None and r["gbps"] is None
                assert r["nmse"] > bench.NMSE_MAX and "not timed" in r["message"]
    assert calls == {"bad": 4, "slightly_off": 4}  # one validation call per case, no timing calls
    with pytest.raises(PyEngineError, match="failed validation"):
        bench.check_kernel_results(res)


def test_kernel_bench_reports_a_raising_kernel():
    def kernels_for(type_name):
        def boom(raw, shape, x):
            raise RuntimeError("segfault avoided")
        return [bench.Kernel("numpy", "numpy", None, bench._numpy_kernel(type_name)),
                bench.Kernel("numba", "numba", None, boom)]

    res = bench.run_kernel_bench(types=["Q4_0"], shapes=[(32, 64)], batch=[1], bw={"gbps": {"1": 10.0}},
                                 threads=1, min_time=0.0, log=None, kernels_for=kernels_for, reprobe=False)
    r = res["results"][1]
    assert r["status"] == "error" and "segfault avoided" in r["message"]


def test_kernel_bench_on_available_backends():
    """Whatever kernels are built here (numba, native variants) must pass validation on a small shape."""
    ks = bench.collect_kernels("Q4_K")
    assert ks[0].backend == "numpy"
    res = bench.run_kernel_bench(types=["Q4_K", "Q6_K"], shapes=[(64, 512)], batch=[1, 4], bw={"gbps": {"1": 10.0}},
                                 threads=2, min_time=0.0, cold=False, log=None, reprobe=False)
    assert {r["kernel"] for r in res["results"]} >= {"numpy"}
    bad = [r for r in res["results"] if r["status"] in ("invalid", "error")]
    assert not bad, bad


def test_parse_errors_are_one_line():
    assert bench.parse_shapes("4096x4096, 11008x4096") == [(4096, 4096), (11008, 4096)]
    for text in ("4096", "4096xabc", "0x32"):
        with pytest.raises(PyEngineError):
            bench.parse_shapes(text)
    with pytest.raises(PyEngineError, match="unknown type"):
        bench.run_kernel_bench(types=["Q9_K"], shapes=[(32, 256)], bw={"gbps": {"1": 1.0}}, log=None)
    with pytest.raises(PyEngineError, match="not available"):
        bench.collect_kernels("Q4_K", backends=["cuda"])


def test_use_more_bits_matches_llama_cpp_q4_k_m():
    # llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2
    q6 = [i for i in range(32) if bench.use_more_bits(i, 32)]
    assert q6 == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(16) if bench.use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert bench.q4_k_m_type("output.weight", 32) == "Q6_K"
    assert bench.q4_k_m_type("token_embd.weight", 32) == "Q4_K"
    assert bench.q4_k_m_type("blk.5.ffn_down.weight", 32) == "Q4_K"
    assert bench.q4_k_m_type("blk.6.attn_v.weight", 32) == "Q6_K"
    assert bench.q4_k_m_type("blk.6.ffn_up.weight", 32) == "Q4_K"
    assert bench.q4_k_m_type("blk.6.ffn_norm.weight", 32) == "F32"


def test_synthetic_weights_have_the_requested_scale():
    rng = np.random.default_rng(0)
    for t in ("Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_1"):
        raw = bench.synthetic_raw(t, 64, 512, rng, 0.05)
        w = bench.dequantize(t, raw.reshape(-1), 64 * 512)
        assert np.all(np.isfinite(w))
        assert 0.03 < np.sqrt(np.mean(w.astype(np.float64) ** 2)) < 0.08, t


def test_make_synthetic_tiny(tmp_path):
    path = bench.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    assert path.name == "synthetic-tiny-Q4_K_M.gguf" and not list(tmp_path.glob("*.part"))
    gf = open_gguf(path)
    s = bench.SYNTHETIC_SHAPES["tiny"]
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
    w = bench.dequantize("Q6_K", gf.tensors["output.weight"].raw, 49152 * 256)
    assert np.all(np.isfinite(w))


def test_make_synthetic_tiny_runs_a_forward_pass(tmp_path):
    import pyengine

    path = bench.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    m = pyengine.load(str(path), backend="numpy", n_ctx=64)
    logits = m.prefill([1, 100, 200, 300])
    assert logits.shape == (49152,) and np.all(np.isfinite(logits))
    assert 0.1 < float(np.std(logits)) < 10  # weights scaled so activations stay O(1)
    step = m.decode(7)
    assert np.all(np.isfinite(step))
    assert bench.weight_bytes_per_token(m) == (
        sum(t.n_bytes for n, t in m.gguf.tensors.items() if n != "token_embd.weight")
        + m.gguf.tensors["token_embd.weight"].row_bytes)


def test_model_bench_on_tiny_model(tmp_path, capsys):
    path = bench.make_synthetic("tiny", tmp_path, tokenizer="bytes")
    res = bench.run_model_bench(str(path), n_prompt=16, n_gen=4, reps=2, threads=1, backend="numpy",
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
    text = bench.format_model_table(res)
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
    seq = iter([5.0, 20.0, 8.0])
    monkeypatch.setattr(bench, "measure_bandwidth",
                        lambda *a, **k: {"gbps": {"1": next(seq)}, "method": "fake", "size_bytes": 0, "repeats": 0})
    res = bench.run_kernel_bench(types=["Q4_0"], shapes=[(32, 64), (64, 64)], batch=[1], threads=1,
                                 bw_bytes=1 << 16, backends=["numpy"], min_time=0.0, cold=False, log=None)
    assert res["bandwidth_probes_gbps"] == [5.0, 20.0, 8.0] and res["reference_bandwidth_gbps"] == 20.0
    for r in res["results"]:
        assert r["bandwidth_gbps"] == 20.0 and r["pct_bandwidth"] == pytest.approx(5 * r["gbps"])


def test_model_cases_only(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "bench_case", lambda tn, r, c, n, ks, *a, **k: calls.append((tn, r, c, n)) or [])
    bench.run_kernel_bench(model_cases="only", batch=[1], bw={"gbps": {"1": 1.0}}, threads=1, log=None,
                           kernels_for=lambda t: [], reprobe=False)
    assert calls == [(t, r, c, 1) for t, r, c, _ in bench.MODEL_CASES]
