"""The cpu backend's replayed decode step (pyengine/backends/cpu_graph.py, csrc/graph.cpp).

The replay must be the op-by-op step bit for bit (logits and KV cache) at every
position, and must refuse (-> None, the engine runs op by op) whatever it cannot replay.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from conftest import native_built, real_model_path

pytestmark = pytest.mark.skipif(not native_built(), reason="needs the native extension pyengine._C")


@lru_cache(maxsize=1)
def model(name: str):
    import pyengine

    return pyengine.load(real_model_path(name), backend="cpu", n_ctx=160)


def arch_of(m, **cfg):
    """A fresh architecture object for m's file (its own config: tests may shrink the window)."""
    from pyengine.models import build

    arch = build(m.gguf)
    for k, v in cfg.items():
        setattr(arch.cfg, k, v)
    return arch


def caches_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.k + a.v, b.k + b.v))


def cache_copy(c):
    from pyengine.backends.base import KVCache

    return KVCache([k.copy() for k in c.k], [v.copy() for v in c.v], c.n_ctx)


def replay_vs_ops(m, arch, prompt, n_steps, check_cache_every=1):
    """Prefill two caches op by op, then decode greedily: one op by op, one replayed. Bit-identical."""
    be = m.backend
    ca, cb = m._new_cache(), m._new_cache()
    step = be.make_decode_step(arch.forward, cb)
    assert step is not None, "the real model's decode step was refused"
    ids = np.asarray(prompt, dtype=np.int32)
    arch.forward(be, ids, 0, ca, True)
    arch.forward(be, ids, 0, cb, True)
    tok, pos = int(ids[-1]), len(ids)
    for i in range(n_steps):
        ref = arch.forward(be, np.array([tok], np.int32), pos, ca, True)
        got = step(tok, pos)
        assert got.shape == ref.shape
        assert np.array_equal(got, ref), (
            f"replayed logits differ at position {pos}: max |diff| {np.abs(got - ref).max():.3g}")
        if i % check_cache_every == 0 or i == n_steps - 1:
            assert caches_equal(ca, cb), f"KV caches differ after position {pos}"
        tok, pos = int(ref.argmax()), pos + 1
    return pos


def test_smollm2_replay_bit_identical_over_a_long_sequence():
    m = model("smollm2-135m")
    prompt = m.tokenize("The history of the printing press begins", add_bos=True)
    # ~130 positions: crosses two 64-position key panels
    end = replay_vs_ops(m, m.arch, prompt, 130 - len(prompt), check_cache_every=16)
    assert end > 128


def test_gemma3_replay_bit_identical_across_the_sliding_window():
    m = model("gemma3-270m")
    # a window of 8 so that a few dozen positions cross it many times (local layers
    # drop keys, global ones keep them); the prompt ends just before a 64-key panel boundary
    arch = arch_of(m, sliding_window=8)
    prompt = m.tokenize("Local inference keeps data private, and " * 6, add_bos=True)[:58]
    replay_vs_ops(m, arch, prompt, 14)


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_replay_at_arbitrary_positions_and_bounds(name):
    m = model(name)
    be = m.backend
    ca = m._new_cache()
    ids = np.asarray(m.tokenize("Positions are inputs, not constants.", add_bos=True), np.int32)
    m.arch.forward(be, ids, 0, ca, True)
    cb = cache_copy(ca)
    step = be.make_decode_step(m.arch.forward, cb)
    assert step is not None
    graph = step.__self__
    assert graph.positions == (0, m.n_ctx - 1)
    # out of order: a later position, then back to an earlier one (overwriting), then the last slot
    for tok, pos in [(17, len(ids) + 5), (300, 3), (1000, len(ids)), (42, m.n_ctx - 1)]:
        ref = m.arch.forward(be, np.array([tok], np.int32), pos, ca, True)
        assert np.array_equal(step(tok, pos), ref), f"position {pos}"
        assert caches_equal(ca, cb)
    with pytest.raises(ValueError, match="position"):
        step(1, m.n_ctx)
    with pytest.raises(ValueError, match="position"):
        step(1, -1)
    with pytest.raises(IndexError, match="token id"):
        step(m.n_vocab + 10, 0)
    assert caches_equal(ca, cb), "a refused step must not touch the cache"


def test_replay_follows_the_kernel_variant_in_use(monkeypatch):
    """The replay calls the kernels the ops would call now: every op and matmul tier, bit for bit."""
    from pyengine import _C

    m = model("smollm2-135m")
    be = m.backend
    ids = np.asarray(m.tokenize("Every tier", add_bos=True), np.int32)
    ca, cb = m._new_cache(), m._new_cache()
    step = be.make_decode_step(m.arch.forward, cb)  # built once, under the default tiers
    variants = list(_C.ops_variants())
    matmul_tiers = list(_C.kernel_variants())[::-1] + ["generic"] * len(variants)
    prev = _C.ops_variant()
    try:
        for ov, mv in zip(variants, matmul_tiers):
            _C.set_ops_variant(ov)
            monkeypatch.setenv("PYENGINE_CPU_VARIANT", mv)
            m.arch.forward(be, ids, 0, ca, True)
            m.arch.forward(be, ids, 0, cb, True)
            for pos, tok in enumerate([7, 99, 1234], start=len(ids)):
                ref = m.arch.forward(be, np.array([tok], np.int32), pos, ca, True)
                assert np.array_equal(step(tok, pos), ref), f"ops {ov}, matmul {mv}, position {pos}"
            assert caches_equal(ca, cb)
    finally:
        _C.set_ops_variant(prev)


def test_tracing_leaves_the_cache_as_it_was():
    m = model("smollm2-135m")
    c = m._new_cache()
    ids = np.asarray(m.tokenize("Something already in the cache", add_bos=True), np.int32)
    m.arch.forward(m.backend, ids, 0, c, True)
    # fill the trace positions (n_ctx // 2 and n_ctx - 1) with something recognisable too
    for L in range(len(c.k)):
        c.v[L][m.n_ctx // 2:] = 7.0
        c.k[L][-1, :, :] = -3.0
    before = cache_copy(c)
    assert m.backend.make_decode_step(m.arch.forward, c) is not None
    assert caches_equal(before, c)


def test_copy_semantics_of_the_step():
    m = model("smollm2-135m")
    c = m._new_cache()
    step = m.backend.make_decode_step(m.arch.forward, c)
    a = step(5, 0)
    b = step(6, 1)
    assert not np.shares_memory(a, b) and not np.array_equal(a, b)
    s1 = step(7, 2, copy=False)
    v1 = s1.copy()
    s2 = step(8, 3, copy=False)
    assert np.shares_memory(s1, s2), "copy=False hands back the step's own buffer"
    assert not np.array_equal(s2, v1)


def test_profile_covers_every_node():
    from pyengine.backends.cpu_graph import profile_by_kind

    m = model("gemma3-270m")
    c = m._new_cache()
    step = m.backend.make_decode_step(m.arch.forward, c)
    prof = profile_by_kind(step, 5, 3, reps=2)
    graph = step.__self__
    assert sum(n for n, _ in prof.values()) == graph.n_nodes
    assert set(prof) == set(graph.ops())
    cfg = m.config
    assert prof["matmul"][0] == 7 * cfg.n_layers + 1 and prof["attention"][0] == cfg.n_layers
    assert all(us > 0 for _, us in prof.values())


# ------------------------------------------------------------------ matmul groups ----------

@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_matmuls_sharing_an_input_run_as_one_group(name):
    """q/k/v (through their bias additions) and gate/up run as one job each; every node is
    still run, and the logits are those of the node-by-node replay, bit for bit (the 0.5B's
    groups mix Q5_0 and Q8_0 rows: two activation packings in one job)."""
    m = model(name)
    c = m._new_cache()
    step = m.backend.make_decode_step(m.arch.forward, c)
    g = step.__self__
    ops = g.ops()
    groups = g.matmul_groups()
    assert len(groups) == 2 * m.config.n_layers
    assert [len(x) for x in groups[:2]] == [3, 2]
    assert all(ops[i] == "matmul" for x in groups for i in x)
    for f in (True, False):
        g.fuse_matmuls = f
        got = [np.array(step(t, p)) for p, t in enumerate([5, 17, 99, 3])]
        if f:
            fused = got
    assert g.fuse_matmuls is False
    assert all(np.array_equal(a, b) for a, b in zip(fused, got))


def _q8_0(rng, rows, cols):
    import gguf

    return gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32),
                                gguf.GGMLQuantizationType.Q8_0)


@pytest.mark.parametrize("between,grouped", [
    ("bias_in_place", True),       # the first matmul's bias added into its own output
    ("writes_input", False),       # a node between them overwrites the shared input
    ("reads_output", False),       # a node between them reads the later matmul's output
])
def test_matmul_group_only_where_moving_it_up_is_safe(between, grouped):
    """A later matmul joins an earlier one's group only when running it early changes nothing:
    the step's result is the node-by-node result either way."""
    from pyengine import _C

    rng = np.random.default_rng(0)
    cols, r1, r2 = 64, 96, 32
    w1, w2 = _q8_0(rng, r1, cols), _q8_0(rng, r2, cols)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    o1, o2, o3 = (np.zeros((1, r), np.float32) for r in (r1, r2, r2))
    b1 = rng.standard_normal(r1).astype(np.float32)
    b2 = rng.standard_normal(r2).astype(np.float32)
    g = _C.DecodeGraph()
    g.add_embed("F32", x.copy().view(np.uint8).ravel(), 1, cols, x)  # the step's input: x = row 0
    g.add_matmul("Q8_0", w1, r1, cols, x, o1)
    if between == "bias_in_place":
        g.add_add_bias(o1, b1, o1)
    elif between == "writes_input":
        g.add_add_bias(x, np.ones(cols, np.float32), x)
    else:
        g.add_add_bias(o2, b2, o3)
    g.add_matmul("Q8_0", w2, r2, cols, x, o2)
    out = np.zeros((1, r2), np.float32)
    g.add_elementwise("add", o2, o3, out)
    g.set_output(out)
    assert g.matmul_groups() == ([[1, 3]] if grouped else [])
    results = []
    for f in (True, False):
        g.fuse_matmuls = f
        o1[:], o2[:], o3[:] = 0, 0, 0
        results.append((g.step(0, 0).copy(), o1.copy(), o3.copy()))
    assert all(np.array_equal(a, b) for a, b in zip(*results))


# ------------------------------------------------------------------ refusals ----------

class Proxy:
    """The ops object a forward pass sees, with some ops replaced."""

    def __init__(self, ops, **override):
        self._ops, self._override = ops, override

    def __getattr__(self, name):
        if name in self._override:
            return self._override[name](self._ops)
        return getattr(self._ops, name)


def wrapped(forward, **override):
    def fwd(ops, ids, pos0, cache, last_only=True):
        return forward(Proxy(ops, **override), ids, pos0, cache, last_only)
    return fwd


REFUSED = {
    # NumPy arithmetic between ops: the next op reads a buffer no op produced
    "numpy_add": dict(add=lambda ops: (lambda a, b: np.add(a, b))),
    # an op the backend has but the recorder does not know (ExtBackend below)
    "unknown_op": dict(silu_mul=lambda ops: (lambda g, u: ops.swish_gated(g, u))),
    # a recorded buffer changed in place behind the backend's back
    "in_place_edit": dict(silu_mul=lambda ops: (lambda g, u: (lambda r: (r.__imul__(np.float32(1.5)), r)[1])(
        ops.silu_mul(g, u)))),
    # a position that is not pos0 + constant
    "position_not_affine": dict(rope=lambda ops: (lambda x, pos, *a, **k: ops.rope(x, np.asarray(pos) * 2, *a, **k))),
    # an embedding of something other than the step's token
    "fixed_token": dict(embed=lambda ops: (lambda w, ids: ops.embed(w, np.full(len(ids), 3, np.int32)))),
    # a broadcasting add ((d,) + (1, d) for one token): fine op by op, not in the replay
    "broadcast": dict(add=lambda ops: (lambda a, b: ops.add(a[0] if len(a) == 1 else a, b))),
}


def ext_backend():
    from pyengine.backends.cpu_backend import CpuBackend

    class ExtBackend(CpuBackend):
        def swish_gated(self, g, u):
            return self.silu_mul(g, u)

    return ExtBackend()


@pytest.mark.parametrize("case", list(REFUSED))
def test_unreplayable_forward_is_refused(case, caplog):
    import logging

    m = model("smollm2-135m")
    be = ext_backend()
    fwd = wrapped(m.arch.forward, **REFUSED[case])
    c = m._new_cache()
    ids = np.asarray(m.tokenize("Refused, yet it runs", add_bos=True), np.int32)
    fwd(be, ids, 0, c)  # op by op it works
    before = cache_copy(c)
    with caplog.at_level(logging.INFO, logger="pyengine.backends.cpu_graph"):
        assert be.make_decode_step(fwd, c) is None
    # refused for what it does (not because tracing crashed), and the cache is untouched
    assert any("runs op by op" in r.message and "tracing failed" not in r.message for r in caplog.records), \
        [r.message for r in caplog.records]
    assert caches_equal(before, c)
    # and the unmodified forward pass is accepted on the same backend and cache
    assert be.make_decode_step(m.arch.forward, c) is not None


def test_fixed_and_offset_positions_replay():
    """Positions that are constant, or pos0 + k, are replayed as such (a synthetic forward)."""
    m = model("smollm2-135m")
    arch, cfg = m.arch, m.config
    be = m.backend

    def fwd(ops, ids, pos0, cache, last_only=True):
        x = ops.embed(arch.tok_embd, ids)
        a = ops.rope(x, np.array([pos0 + 3]), cfg.n_heads, cfg.head_dim, cfg.rope_base, False)
        b = ops.rope(x, np.array([7]), cfg.n_heads, cfg.head_dim, cfg.rope_base, False)
        x = ops.add(a, b)
        return ops.matmul(arch.output, ops.rmsnorm(x, arch.output_norm, cfg.norm_eps))

    c = m._new_cache()
    step = be.make_decode_step(fwd, c)
    assert step is not None
    for tok, pos in [(11, 0), (12, 40), (13, 150)]:
        assert np.array_equal(step(tok, pos), fwd(be, np.array([tok], np.int32), pos, c))


# ------------------------------------------------------------------ engine ----------

@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_engine_decode_uses_the_replay_and_matches(name):
    m = model(name)
    ids = m.tokenize("Local inference keeps data private. 本地推理", add_bos=True)
    k = 4
    m.prefill(ids[:k])
    assert m._step is not None, "the engine did not get a replayed step from the cpu backend"
    replayed = [m.decode(t) for t in ids[k:]]
    step, m._step = m._step, None  # the same engine, op by op
    try:
        m.prefill(ids[:k])
        m._step = None
        op_by_op = [m.decode(t) for t in ids[k:]]
    finally:
        m._step = step
    for i, (a, b) in enumerate(zip(replayed, op_by_op)):
        assert np.array_equal(a, b), f"decode step {i}"
    full = m.logits(ids)[k:]
    inc = np.stack(replayed)
    err = np.abs(inc - full).max() / np.abs(full).max()
    assert err < 2e-3, f"decode differs from the full pass by {err:.2e} (relative)"
    assert (inc.argmax(-1) == full.argmax(-1)).all()


def test_engine_falls_back_when_refused(monkeypatch):
    m = model("smollm2-135m")
    ids = m.tokenize("Fallback still decodes", add_bos=True)
    ref = m.logits(ids)
    m._default.cache = None  # a fresh cache: the engine asks for a step again
    m._default.reset()
    monkeypatch.setattr(m.arch, "forward", wrapped(type(m.arch).forward.__get__(m.arch), **REFUSED["numpy_add"]))
    try:
        m.prefill(ids[:3])
        assert m._step is None
        out = np.stack([m.decode(t) for t in ids[3:]])
    finally:
        monkeypatch.undo()
        m._default.cache = None
        m._default.reset()
    err = np.abs(out - ref[3:]).max() / np.abs(ref).max()
    assert err < 2e-3


def test_env_switch_disables_the_replay(monkeypatch):
    from pyengine.backends.cpu_backend import CpuBackend
    from pyengine.backends.cpu_graph import DISABLE_ENV

    monkeypatch.setenv(DISABLE_ENV, "1")
    be = CpuBackend()
    called = []
    assert be.make_decode_step(lambda *a, **k: called.append(1), be.kv_cache(1, 64, 64)) is None
    assert not called


def test_trace_cost_does_not_grow_with_the_context(monkeypatch):
    """The step is traced at positions 0 and 1 whatever n_ctx is (a trace at position p reads
    p keys per layer, so tracing near n_ctx made the first token slower with a longer context)."""
    from pyengine.backends import cpu_graph

    m = model("smollm2-135m")
    seen = []
    real = cpu_graph._trace

    def spy(inner, forward, cache, token, pos0):
        seen.append(pos0)
        return real(inner, forward, cache, token, pos0)

    monkeypatch.setattr(cpu_graph, "_trace", spy)
    be = m.backend
    cache = m.arch.kv_cache(be, 4096)
    step = be.make_decode_step(m.arch.forward, cache)
    assert step is not None and seen == [0, 1]
    assert be.decode_step_status.startswith("native single-call decode step")
    assert not any(k.any() for k in cache.k) and not any(v.any() for v in cache.v)  # trace writes restored
