"""Mixture-of-experts: the routing spec, the moe_ffn op on every tier, and the MoE
architectures on tiny random-weight GGUF files written here with gguf.GGUFWriter.

- route(): softmax / sigmoid gating, top-k, normalisation, scaling, selection bias and
  group-limited routing against a per-token brute force written independently;
- moe_ffn on numba / cpu == the NumPy spec (F32: rounding level), experts are views of
  the file's bytes;
- qwen3moe (F32, Q8_0): numba / cpu logits vs numpy, incremental decode vs full pass;
- the cpu backend's decode step routes inside the replayed call, bit for bit the op by op step;
  an expert type without a native kernel is refused out loud (op by op, status says why).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tiny_gguf import random_init, write_tensors
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from pyengine.backends.moe import MoERouting, expert, moe_ffn_reference, route
from pyengine.backends.numpy_backend import NumpyBackend
from pyengine.errors import ModelFileError
from pyengine.gguf_file import open_gguf
from pyengine.models import build

from conftest import TINY_IDS as IDS
from conftest import (add_arch_metadata, assert_incremental_decode_matches, assert_replay_matches_op_by_op,
                      assert_tier_matches_numpy, backend, cpu_decode_step, full_logits, native_built,
                      outer_tensors)
from test_models_ops import cuda_emu  # noqa: F401  (the emulator fixture)

V, D, L, H, HKV, HD = 80, 64, 2, 4, 2, 16
E, K, F = 8, 2, 32      # experts, used per token, expert ffn width


TIERS = ["numba"] + (["cpu"] if native_built() else [])


# -- routing -----------------------------------------------------------------------------------

def brute_route(logits, r: MoERouting):
    """Per token, by enumeration: the allowed expert set, then the k best by score."""
    n, n_e = logits.shape
    sel_all, w_all = [], []
    for t in range(n):
        z = logits[t].astype(np.float64)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum() if r.gating == "softmax" else 1 / (1 + np.exp(-z))
        s = p + (0 if r.bias is None else r.bias)
        allowed = set(range(n_e))
        if r.n_group > 1:
            size = n_e // r.n_group
            score = [sum(sorted(s[g * size:(g + 1) * size])[-2:]) for g in range(r.n_group)]
            best = max(itertools.combinations(range(r.n_group), r.n_group_used),
                       key=lambda gs: sum(score[g] for g in gs))
            allowed = {g * size + i for g in best for i in range(size)}
        order = sorted(allowed, key=lambda e: -s[e])[:r.top_k]
        w = np.array([p[e] for e in order])
        if r.norm:
            w = w / max(w.sum(), 6.103515625e-5)
        if r.scale not in (0.0, 1.0):
            w = w * r.scale
        sel_all.append(order)
        w_all.append(w)
    return np.array(sel_all), np.array(w_all)


ROUTINGS = {
    "softmax-norm": MoERouting(top_k=2, norm=True),
    "softmax": MoERouting(top_k=3),
    "sigmoid-norm-scale": MoERouting(top_k=2, gating="sigmoid", norm=True, scale=2.5),
    "sigmoid-bias-groups": MoERouting(top_k=3, gating="sigmoid", norm=True, n_group=4, n_group_used=2,
                                      bias=np.linspace(-0.3, 0.3, 16).astype(np.float32)),
    "softmax-groups": MoERouting(top_k=2, n_group=4, n_group_used=1, scale=16.0),
}


@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_route_matches_brute_force(name):
    r = ROUTINGS[name]
    n_e = 16 if r.n_group or r.bias is not None else 8
    logits = np.random.default_rng(1).standard_normal((20, n_e)).astype(np.float32) * 2
    sel, w = route(logits, r)
    want_sel, want_w = brute_route(logits, r)
    np.testing.assert_array_equal(sel, want_sel)
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    if r.norm and r.scale in (0.0, 1.0):
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def test_group_limit_and_bias_change_the_choice():
    logits = np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32) * 2
    free = route(logits, MoERouting(top_k=3, gating="sigmoid"))[0]
    grouped = route(logits, MoERouting(top_k=3, gating="sigmoid", n_group=4, n_group_used=1))[0]
    assert (np.sort(free) != np.sort(grouped)).any()
    assert ((grouped // 4) == (grouped[:, :1] // 4)).all()          # one group per token
    bias = np.zeros(16, np.float32)
    bias[5] = 10.0
    sel, w = route(logits, MoERouting(top_k=3, gating="sigmoid", bias=bias))
    assert (sel[:, 0] == 5).all()
    p = 1 / (1 + np.exp(-logits[:, 5]))                           # the weight stays the unbiased p
    np.testing.assert_allclose(w[:, 0], p, rtol=1e-5)


def test_bad_routing_is_one_line_error():
    with pytest.raises(ModelFileError, match="gating"):
        MoERouting(top_k=2, gating="softplus")
    with pytest.raises(ModelFileError, match="exceeds"):
        route(np.zeros((1, 4), np.float32), MoERouting(top_k=5))


# -- the op on every tier --------------------------------------------------------------------

def _qtensor(name, a, qtype):
    from pyengine.tensor import QTensor

    a = np.ascontiguousarray(a, dtype=np.float32)
    if qtype == "F32":
        raw = a.reshape(-1).view(np.uint8)
    else:
        raw = np.ascontiguousarray(quantize(a, GGMLQuantizationType.Q8_0)).reshape(-1).view(np.uint8)
    return QTensor(name, qtype, a.shape, raw)


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("rname", ["softmax-norm", "sigmoid-bias-groups"])
@pytest.mark.parametrize("n", [1, 7])
def test_moe_ffn_tiers_match_spec(tier, qtype, rname, n):
    r = ROUTINGS[rname]
    n_e = 16
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, D)).astype(np.float32)
    ws = dict(router=rng.standard_normal((n_e, D)) / 4, gate=rng.standard_normal((n_e, F, D)) / 8,
              up=rng.standard_normal((n_e, F, D)) / 8, down=rng.standard_normal((n_e, D, F)) / 6)
    qt = {k: _qtensor(k, v, qtype) for k, v in ws.items()}
    ref = NumpyBackend().moe_ffn(x, qt["router"], qt["gate"], qt["up"], qt["down"], r)
    assert np.abs(ref).max() > 0.1
    be = backend(tier)
    got = be.to_numpy(be.moe_ffn(be.from_numpy(x), qt["router"], qt["gate"], qt["up"], qt["down"], r))
    if qtype == "F32" or tier == "numba":
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
    else:  # 8-bit activations in the cpu kernels; a near-tie may route differently, so per token
        err = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert np.median(err) < 3e-2, err


def test_reference_is_the_per_token_formula():
    """moe_ffn_reference against the formula written out for one token with explicit experts."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, D)).astype(np.float32)
    router = rng.standard_normal((E, D)).astype(np.float32)
    g, u = rng.standard_normal((2, E, F, D)).astype(np.float32) / 8
    d = rng.standard_normal((E, D, F)).astype(np.float32) / 6
    logits = (router @ x[0]).astype(np.float64)
    top = np.argsort(-logits)[:K]
    p = np.exp(logits[top] - logits.max())
    p = p / p.sum()                                   # softmax over all, renormalised over the k
    want = sum(p[j] * d[e] @ (g[e] @ x[0] / (1 + np.exp(-(g[e] @ x[0]))) * (u[e] @ x[0]))
               for j, e in enumerate(top))
    got = moe_ffn_reference(x, router, g, u, d, MoERouting(top_k=K, norm=True))
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


def test_experts_are_views_of_the_file_bytes():
    t = _qtensor("exps", np.random.default_rng(5).standard_normal((E, F, D)), "Q8_0")
    for e in (0, 3, E - 1):
        x = expert(t, e)
        assert x.shape == (F, D) and np.shares_memory(x.raw, t.raw)
        assert x.raw.nbytes * E == t.raw.nbytes
        assert x.raw.__array_interface__["data"][0] - t.raw.__array_interface__["data"][0] == e * x.raw.nbytes
    assert expert(t, 2) is expert(t, 2)


# -- qwen3moe files --------------------------------------------------------------------------

def write_qwen3moe(path, qtype="F32", seed=0, extra=None, drop=(), meta=()):
    meta = dict(meta)
    rng = np.random.default_rng(seed)

    mat, norm = random_init(rng)
    t = outer_tensors(mat, norm, V, D)
    for i in range(L):
        p = f"blk.{i}."
        t.update({p + "attn_norm.weight": norm(D), p + "attn_q.weight": mat(H * HD, D, s=2 / math.sqrt(D)),
                  p + "attn_k.weight": mat(HKV * HD, D, s=2 / math.sqrt(D)), p + "attn_v.weight": mat(HKV * HD, D),
                  p + "attn_q_norm.weight": norm(HD), p + "attn_k_norm.weight": norm(HD),
                  p + "attn_output.weight": mat(D, H * HD), p + "ffn_norm.weight": norm(D),
                  p + "ffn_gate_inp.weight": mat(E, D, s=1.0),
                  p + "ffn_gate_exps.weight": mat(E, F, D), p + "ffn_up_exps.weight": mat(E, F, D),
                  p + "ffn_down_exps.weight": mat(E, D, F, s=2.0 / math.sqrt(F))})
    t.update(extra or {})
    for name in drop:
        t.pop(name)
    arch = "qwen3moe"
    w = GGUFWriter(str(path), arch)
    add_arch_metadata(w, arch, {"block_count": L, "context_length": 64, "embedding_length": D,
                                "feed_forward_length": 6 * F, "attention.head_count": H,
                                "attention.head_count_kv": HKV, "attention.key_length": HD,
                                "attention.value_length": HD, "rope.dimension_count": HD, "vocab_size": V,
                                "expert_count": E, "expert_used_count": K, "expert_feed_forward_length": F,
                                "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 1000000.0, **meta})
    return write_tensors(w, t, qtype, path)


@pytest.fixture(scope="module")
def qfiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("moe")
    return {q: write_qwen3moe(d / f"qwen3moe-{q}.gguf", q) for q in ("F32", "Q8_0")}


def test_qwen3moe_config_and_routing_spread(qfiles):
    arch = build(open_gguf(qfiles["F32"]))
    c = arch.cfg
    assert (c.n_expert, c.routing.top_k, c.expert_ffn_dim, c.routing.norm, c.routing.gating) == (E, K, F, True,
                                                                                                  "softmax")
    # the test prompt uses most experts, several tokens share one (the grouped prefill path)
    be = NumpyBackend()
    x = be.embed(arch.tok_embd, np.asarray(IDS, np.int32))
    h = be.rmsnorm(x, arch.layers[0].ffn_norm, c.norm_eps)
    sel, _ = route(be.matmul(arch.layers[0].router, h), c.routing)
    counts = np.bincount(sel.reshape(-1), minlength=E)
    assert (counts > 0).sum() >= E - 2 and counts.max() >= 3


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("tier", TIERS)
def test_qwen3moe_tiers_match_numpy(qfiles, tier, qtype):
    _, ref = full_logits(qfiles[qtype], NumpyBackend())
    assert np.isfinite(ref).all() and ref.std() > 0.5
    be = backend(tier)
    if tier == "numba" and qtype != "F32":
        # numba computes the numpy spec (int8 activations) up to float32 summation order, which
        # the rounding can turn into a whole-step flip (measured: one value at x*127/amax =
        # -19.499996, then the last token off by 0.15); the wiring is compared on unrounded
        # activations, float32 rounding only (as in test_models.py)
        ref = full_logits(qfiles[qtype], NumpyBackend(quantize_activations=False))[1]
        be = type(be)(quantize_activations=False)
    _, got = full_logits(qfiles[qtype], be)
    assert_tier_matches_numpy(got, ref, qtype, tier)


@pytest.mark.parametrize("tier", ["numpy"] + TIERS)
def test_qwen3moe_incremental_decode_matches_full_pass(qfiles, tier):
    be = backend(tier)
    arch, ref = full_logits(qfiles["F32"], be)
    assert_incremental_decode_matches(be, arch, ref)


def test_qwen3moe_top_k_matters(qfiles):
    be = NumpyBackend()
    arch, ref = full_logits(qfiles["F32"], be)
    from dataclasses import replace

    arch.cfg.routing = replace(arch.cfg.routing, top_k=1)
    out = arch.forward(be, np.asarray(IDS, np.int32), 0, arch.kv_cache(be, 32), False)
    assert np.abs(out - ref).max() > 1e-2


@pytest.mark.parametrize("extra,drop,match", [
    ({"blk.0.ffn_gate.weight": np.ones((F, D))}, (), "blk.0.ffn_gate.weight"),   # a dense FFN too: unused
    ({}, ("blk.1.ffn_up_exps.weight",), "blk.1.ffn_up_exps.weight"),
    ({"blk.0.ffn_down_exps.weight": np.ones((E, D, F + 32))}, (), "ffn_down_exps"),
])
def test_qwen3moe_bad_files_fail_in_one_line(tmp_path, extra, drop, match):
    path = write_qwen3moe(tmp_path / "x.gguf", extra=extra, drop=drop)
    with pytest.raises(ModelFileError, match=match) as e:
        build(open_gguf(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["expert_count", "expert_used_count"])
def test_qwen3moe_without_experts_fails_in_one_line(tmp_path, key):
    path = write_qwen3moe(tmp_path / "x.gguf", meta={key: 0})
    with pytest.raises(ModelFileError, match="expert_count and expert_used_count") as e:
        build(open_gguf(path))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_qwen3moe_decode_step_replays_routing(qfiles, qtype):
    """The routing runs inside the replayed single call (a moe_ffn node per layer), and the
    replayed step is the op-by-op step bit for bit, cache included."""
    be, arch, ca, cb, step = cpu_decode_step(qfiles[qtype])
    assert step.__self__.ops().count("moe_ffn") == L
    assert_replay_matches_op_by_op(be, arch, step, ca, cb, IDS)


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_decode_step_refuses_experts_without_native_kernel(qfiles, monkeypatch):
    """No replay node for a type the kernels lack: the step runs op by op and says why."""
    from pyengine.backends import moe
    from pyengine.backends.cpu_backend import CpuBackend

    be = CpuBackend()
    arch = build(open_gguf(qfiles["F32"]))
    cache = arch.kv_cache(be, 32)
    monkeypatch.setattr(moe, "native_args", lambda *a: None)  # as for a type the kernels lack
    assert be.make_decode_step(arch.forward, cache) is None
    assert be.decode_step_status.startswith("op by op") and "moe_ffn" in be.decode_step_status


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_native_moe_rejects_bad_arguments():
    from pyengine import _C
    from pyengine.backends.cpu_backend import native_type
    from pyengine.backends.moe import native_args

    qt = {k: _qtensor(k, np.ones(s), "F32") for k, s in
          dict(router=(E, D), gate=(E, F, D), up=(E, F, D), down=(E, D, F)).items()}
    args = native_args(qt["router"], qt["gate"], qt["up"], qt["down"], MoERouting(top_k=2), native_type)
    x = np.ones((2, D), np.float32)
    with pytest.raises(ValueError, match="top_k"):
        _C.moe_ffn(x, np.empty_like(x), **dict(args, top_k=E + 1))
    with pytest.raises(ValueError, match="down"):
        _C.moe_ffn(x, np.empty_like(x), **dict(args, down=args["down"][:-4]))
    with pytest.raises(ValueError, match="x must be"):
        _C.moe_ffn(np.ones((2, D + 1), np.float32), np.empty((2, D + 1), np.float32), **args)
    # sizes whose byte counts overflow int64 must not wrap into a small number an array matches
    nothing = np.empty(0, np.uint8)
    with pytest.raises(ValueError, match="router.*overflows"):
        _C.moe_ffn(x, np.empty_like(x), **dict(args, n_expert=2**62, router=nothing))
    with pytest.raises(ValueError, match="gate.*overflows"):
        _C.moe_ffn(x, np.empty_like(x), **dict(args, ffn=2**60, gate=nothing, up=nothing, down=nothing))


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_native_moe_same_result_for_any_thread_count():
    """The experts' gate/up and down run as one matmul_group each, whose rows are shared out
    (and taken over by halves, ThreadPool::parallel_shares) across threads: more threads than
    cores must give the one-thread result bit for bit."""
    from pyengine import _C
    from pyengine.backends.cpu_backend import native_type
    from pyengine.backends.moe import native_args

    rng = np.random.default_rng(5)
    e, f, d = 8, 96, 128
    qt = {k: _qtensor(k, rng.standard_normal(s) * 0.1, "Q8_0" if k != "router" else "F32") for k, s in
          dict(router=(e, d), gate=(e, f, d), up=(e, f, d), down=(e, d, f)).items()}
    args = native_args(qt["router"], qt["gate"], qt["up"], qt["down"], MoERouting(top_k=3), native_type)
    old = _C.get_num_threads()
    try:
        for n in (1, 3, 9):
            x = rng.standard_normal((n, d)).astype(np.float32)
            outs = []
            for nt in (1, 2, 5):
                _C.set_num_threads(nt)
                out = np.full_like(x, np.nan)
                _C.moe_ffn(x, out, **args)
                outs.append(out)
            assert np.isfinite(outs[0]).all()
            for o in outs[1:]:
                np.testing.assert_array_equal(o, outs[0])
    finally:
        _C.set_num_threads(old)


# -- the benchmark generator (pyengine/testing/synthetic.py) at test scale ---------------------

@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
@pytest.mark.parametrize("shape", ["tiny-ds2", "tiny-qwen3moe"])
def test_synthetic_moe_files_load_and_run(tmp_path, shape):
    """The Q4_K_M-like MoE files the speed benchmark uses load (every tensor used), take
    llama-quantize's fallback types where rows are not whole super-blocks, and run on cpu as
    on the NumPy reference."""
    from pyengine.backends.cpu_backend import CpuBackend
    from pyengine.testing.synthetic import make_synthetic

    path = make_synthetic(shape, tmp_path, tokenizer="bytes")
    gf = open_gguf(path)
    arch = build(gf)
    types = {t.type_name for t in gf.tensors.values()}
    assert {"Q4_K", "Q6_K", "F32"} <= types
    if shape == "tiny-ds2":  # attn_k_b rows of 64: Q4_K falls back to Q5_0
        assert gf.tensors["blk.1.attn_k_b.weight"].type_name == "Q5_0"
        assert not arch.layers[0].moe and arch.layers[1].moe
    ids = np.array([1, 5, 9, 200, 7], np.int32)
    outs = []
    for be in (NumpyBackend(), CpuBackend()):
        cache = arch.kv_cache(be, 16)
        outs.append(be.to_numpy(arch.forward(be, ids, 0, cache, False)))
    ref, got = outs
    assert np.isfinite(got).all() and ref.std() > 0.1
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 5e-2


def test_qwen3moe_on_the_cuda_kernels_emulated(qfiles, cuda_emu):  # noqa: F811
    """The cuda backend's moe_ffn (routing on the host, each chosen expert uploaded at first
    use) on the CUDA kernels' CPU emulator (tests/test_models_ops.py)."""
    from pyengine.backends.cuda_backend import CudaBackend

    emu = cuda_emu
    _, ref = full_logits(qfiles["F32"], NumpyBackend())
    be = CudaBackend(native=emu)
    _, got = full_logits(qfiles["F32"], be)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def _mapped_rss(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                cur = len(head) >= 6 and head[-1] == str(path)
            elif cur and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not native_built() or not __import__("os").path.exists("/proc/self/smaps"),
                    reason="needs pyengine._C and /proc/self/smaps")
def test_decode_touches_only_the_chosen_experts(tmp_path):
    """The experts stay memory-mapped: one decoded token brings into memory the k of E experts
    it uses per layer, not the whole expert tensors. (Experts of 2 MiB: the kernel may map a
    file's pages in folios of up to 2 MiB, so smaller experts would blur the count.)"""
    from pyengine.backends.cpu_backend import CpuBackend

    e, k, f, d = 16, 2, 512, 1024
    rng = np.random.default_rng(0)
    big = {}
    for i in range(L):
        p = f"blk.{i}."
        big.update({p + "ffn_gate_inp.weight": rng.standard_normal((e, d), dtype=np.float32),
                    p + "ffn_gate_exps.weight": rng.standard_normal((e, f, d), dtype=np.float32) / 32,
                    p + "ffn_up_exps.weight": rng.standard_normal((e, f, d), dtype=np.float32) / 32,
                    p + "ffn_down_exps.weight": rng.standard_normal((e, d, f), dtype=np.float32) / 22})
    global D, E, K, F  # the writer's shapes, for this file only
    saved = (D, E, K, F)
    D, E, K, F = d, e, k, f
    try:
        path = write_qwen3moe(tmp_path / "big.gguf", extra=big)
    finally:
        D, E, K, F = saved
    del big
    gf = open_gguf(path)
    arch = build(gf)
    expert_bytes = sum(t.n_bytes for n, t in gf.tensors.items() if "_exps" in n)
    be = CpuBackend()
    cache = arch.kv_cache(be, 8)
    before = _mapped_rss(path)
    arch.forward(be, np.asarray([7], np.int32), 0, cache, True)
    touched = _mapped_rss(path) - before
    used = expert_bytes * k / e                       # the chosen experts' bytes (1/8 of them)
    assert used * 0.9 <= touched <= 2 * used + 4 * 2**20, (touched, used, expert_bytes)
