"""Every architecture on tiny random-weight GGUF files written here with gguf.GGUFWriter.

For each architecture (and rope-scaling variant):
- numba and cpu logits agree with the NumPy reference (F32 weights: float32-rounding
  level; Q8_0 weights: the cpu kernels quantize activations, so a relative bound);
- decoding token by token through the KV cache gives the full pass's logits (positions,
  sliding windows, cache writes);
- the cpu backend's replayed single-call decode step is the op-by-op step bit for bit
  (and the architecture is not refused by the replay);
- a tensor the model does not use fails the load with one line naming it.

The hooks are checked against their meaning too: a zero bias / unit factors change
nothing, a fused projection gives what the separate ones give.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from tiny_gguf import random_init, write_tensors
from gguf import GGUFWriter

from pyengine.backends.numpy_backend import NumpyBackend
from pyengine.errors import ModelFileError
from pyengine.gguf_file import open_gguf
from pyengine.models import build

from conftest import TINY_IDS as IDS
from conftest import (add_arch_metadata, assert_incremental_decode_matches, assert_replay_matches_op_by_op,
                      assert_tier_matches_numpy, backend, cpu_decode_step, full_logits, native_built,
                      outer_tensors)
from test_models_ops import cuda_emu  # noqa: F401  (the emulator fixture)

V, D, L, H, HKV, HD, FF = 80, 64, 3, 4, 2, 16, 96

# architecture -> what its file holds (beyond the plain Llama tensors) and its metadata
SPECS = {
    "llama": dict(),
    "llama-llama3": dict(arch="llama", rope_freqs=True, meta={"rope.freq_base": 500000.0}),
    "llama-linear": dict(arch="llama", meta={"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}),
    "llama-yarn": dict(arch="llama", meta={"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                           "rope.scaling.original_context_length": 16}),
    "qwen2": dict(qkv_bias=True, meta={"rope.freq_base": 1000000.0}),
    "qwen3": dict(qk_norm=True, head_dim=24),
    "gemma2": dict(post_norms=True, tied=True,
                   meta={"attention.sliding_window": 4, "attn_logit_softcapping": 2.0,
                         "final_logit_softcapping": 3.0}),
    "gemma3": dict(qk_norm=True, post_norms=True, tied=True,
                   meta={"attention.sliding_window": 3, "attention.sliding_window_pattern": 2,
                         "rope.freq_base": 1000000.0}),
    "phi3": dict(fused_qkv=True, fused_up=True, longrope=True,
                 meta={"rope.scaling.attn_factor": 1.19, "rope.scaling.original_context_length": 16}),
    "glm4": dict(fused_qkv=True, qkv_bias=True, post_norms=True, fused_up=True, n_rot=8),
}


def write_model(path, spec_name: str, qtype: str = "F32", seed: int = 0, extra: dict | None = None,
                drop=()):
    spec = SPECS[spec_name]
    arch = spec.get("arch", spec_name)
    hd = spec.get("head_dim", HD)
    rng = np.random.default_rng(seed)

    mat, norm = random_init(rng)

    q_w, kv_w = H * hd, HKV * hd
    tensors = outer_tensors(mat, norm, V, D, tied=spec.get("tied", False))
    for i in range(L):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = norm(D)
        wq, wk, wv = mat(q_w, D, s=2.0 / math.sqrt(D)), mat(kv_w, D, s=2.0 / math.sqrt(D)), mat(kv_w, D)
        bq, bk, bv = (rng.standard_normal(n) * 0.5 for n in (q_w, kv_w, kv_w))
        if spec.get("fused_qkv"):
            tensors[p + "attn_qkv.weight"] = np.concatenate([wq, wk, wv])
            if spec.get("qkv_bias"):
                tensors[p + "attn_qkv.bias"] = np.concatenate([bq, bk, bv])
        else:
            tensors[p + "attn_q.weight"], tensors[p + "attn_k.weight"], tensors[p + "attn_v.weight"] = wq, wk, wv
            if spec.get("qkv_bias"):
                tensors[p + "attn_q.bias"], tensors[p + "attn_k.bias"], tensors[p + "attn_v.bias"] = bq, bk, bv
        if spec.get("qk_norm"):
            tensors[p + "attn_q_norm.weight"] = norm(hd)
            tensors[p + "attn_k_norm.weight"] = norm(hd)
        tensors[p + "attn_output.weight"] = mat(D, q_w)
        if spec.get("post_norms"):
            tensors[p + "post_attention_norm.weight"] = norm(D)
            tensors[p + "post_ffw_norm.weight"] = norm(D)
        tensors[p + "ffn_norm.weight"] = norm(D)
        gate, up = mat(FF, D), mat(FF, D)
        if spec.get("fused_up"):
            tensors[p + "ffn_up.weight"] = np.concatenate([gate, up])
        else:
            tensors[p + "ffn_gate.weight"], tensors[p + "ffn_up.weight"] = gate, up
        tensors[p + "ffn_down.weight"] = mat(D, FF)
    n_rot = spec.get("n_rot", hd)
    if spec.get("rope_freqs"):
        tensors["rope_freqs.weight"] = rng.uniform(1.0, 8.0, n_rot // 2)
    if spec.get("longrope"):
        tensors["rope_factors_long.weight"] = rng.uniform(1.0, 6.0, n_rot // 2)
        tensors["rope_factors_short.weight"] = rng.uniform(1.0, 1.5, n_rot // 2)
    tensors.update(extra or {})
    for name in ([drop] if isinstance(drop, str) else drop):
        tensors.pop(name, None)

    w = GGUFWriter(str(path), arch)
    add_arch_metadata(w, arch, {"block_count": L, "context_length": 64, "embedding_length": D,
                                "feed_forward_length": FF, "attention.head_count": H, "attention.head_count_kv": HKV,
                                "attention.key_length": hd, "attention.value_length": hd,
                                "rope.dimension_count": n_rot, "attention.layer_norm_rms_epsilon": 1e-6,
                                "vocab_size": V, **spec.get("meta", {})})
    return write_tensors(w, tensors, qtype, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("arch")
    return {(s, q): write_model(d / f"{s}-{q}.gguf", s, q) for s in SPECS for q in ("F32", "Q8_0")}


OTHER_TIERS = ["numba"] + (["cpu"] if native_built() else []) + ["cuda-emu"]


def _tier_cases():
    # The CUDA emulator takes seconds per model, so by default it runs llama's wiring only and
    # every architecture under -m slow: each CUDA op is checked on the emulator by default in
    # test_models_ops.py, and each architecture's wiring on the other tiers here.
    return [pytest.param(spec, tier, qtype, id=f"{spec}-{tier}-{qtype}",
                         marks=[pytest.mark.slow] if tier == "cuda-emu" and spec != "llama" else [])
            for spec in sorted(SPECS) for tier in OTHER_TIERS for qtype in ("F32", "Q8_0")]


@pytest.mark.parametrize("spec,tier,qtype", _tier_cases())
def test_tiers_match_numpy(request, files, spec, tier, qtype):
    path = files[(spec, qtype)]
    _, ref = full_logits(path, NumpyBackend(), IDS)
    assert np.isfinite(ref).all() and ref.std() > 0.5  # peaked logits: the comparison means something
    if tier == "cuda-emu":  # the CUDA kernels on the CPU emulator (tests/test_models_ops.py)
        if qtype != "F32":
            pytest.skip("the emulator is slow: the quantized CUDA matmuls are covered by test_cuda.py")
        from pyengine.backends.cuda_backend import CudaBackend

        be = CudaBackend(native=request.getfixturevalue("cuda_emu"))
    else:
        be = backend(tier)
    if tier == "numba" and qtype != "F32":
        # numba computes the numpy spec (int8 activations) up to float32 summation order, which
        # the rounding can turn into whole-step flips (measured on llama-yarn: 17.8% of the logits
        # past 2e-3); the wiring is compared on unrounded activations, float32 rounding only
        ref = full_logits(path, NumpyBackend(quantize_activations=False), IDS)[1]
        be = type(be)(quantize_activations=False)
    _, got = full_logits(path, be, IDS)
    assert_tier_matches_numpy(got, ref, qtype, tier)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_incremental_decode_matches_full_pass(files, spec):
    be = NumpyBackend()
    path = files[(spec, "F32")]
    arch, ref = full_logits(path, be, IDS)
    assert_incremental_decode_matches(be, arch, ref, IDS)


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_decode_step_replay_is_op_by_op(files, spec, qtype):
    be, arch, ca, cb, step = cpu_decode_step(files[(spec, qtype)])
    assert_replay_matches_op_by_op(be, arch, step, ca, cb, IDS)


# -- every tensor consumed -------------------------------------------------------------------

@pytest.mark.parametrize("spec,extra", [
    ("llama", "blk.0.attn_q_norm.weight"),   # a Qwen3/Gemma tensor in a Llama file
    ("gemma2", "blk.1.attn_q.bias"),         # a bias Gemma 2 has no use for
    ("qwen2", "blk.7.ffn_up.weight"),        # a layer past block_count
    ("phi3", "mystery.weight"),
])
def test_unused_tensor_fails_naming_it(tmp_path, spec, extra):
    path = write_model(tmp_path / "x.gguf", spec, extra={extra: np.ones(HD)})
    with pytest.raises(ModelFileError) as e:
        build(open_gguf(path))
    msg = str(e.value)
    assert extra in msg and "\n" not in msg


def test_missing_tensor_fails_naming_it(tmp_path):
    path = write_model(tmp_path / "x.gguf", "qwen3", drop="blk.2.attn_k_norm.weight")
    with pytest.raises(ModelFileError, match="blk.2.attn_k_norm.weight"):
        build(open_gguf(path))


# -- the hooks mean what they say ------------------------------------------------------------

def test_biases_and_factors_are_applied(tmp_path):
    """qwen2's biases change the result (dropping them from the model does); llama with
    unit frequency factors == llama without them, with real factors it differs."""
    be = NumpyBackend()
    path = write_model(tmp_path / "q.gguf", "qwen2")
    arch = build(open_gguf(path))
    with_b = arch.forward(be, np.asarray(IDS, np.int32), 0, arch.kv_cache(be, 32), False)
    for layer in arch.layers:
        layer.bq = layer.bk = layer.bv = None
    without = arch.forward(be, np.asarray(IDS, np.int32), 0, arch.kv_cache(be, 32), False)
    assert np.abs(with_b - without).max() > 1e-2

    p1 = write_model(tmp_path / "l1.gguf", "llama-llama3", seed=3)
    a1 = build(open_gguf(p1))
    assert a1.cfg.rope_scaling is not None and a1.cfg.rope_scaling.freq_factors is not None
    ones = write_model(tmp_path / "l2.gguf", "llama-llama3", seed=3, extra={"rope_freqs.weight": np.ones(HD // 2)})
    plain = write_model(tmp_path / "l3.gguf", "llama-llama3", seed=3, drop="rope_freqs.weight")
    _, lo = full_logits(ones, be, IDS)
    _, lp = full_logits(plain, be, IDS)
    _, lf = full_logits(p1, be, IDS)
    np.testing.assert_allclose(lo, lp, rtol=1e-5, atol=1e-5)
    assert np.abs(lf - lp).max() > 1e-2


def test_fused_qkv_and_up_equal_separate(tmp_path):
    """phi3's fused attn_qkv / ffn_up, split by rows at load, == the same matrices given
    separately (a phi3 file may hold either)."""
    from pyengine import quants

    be = NumpyBackend()
    fused = write_model(tmp_path / "f.gguf", "phi3", seed=5)
    gf = open_gguf(fused)

    def f32(name):
        t = gf.tensors[name]
        return quants.dequantize(t.type_name, t.raw, t.n_elements).reshape(t.shape)
    extra, drop = {}, []
    for i in range(L):
        p = f"blk.{i}."
        q, k, v = np.split(f32(p + "attn_qkv.weight"), [H * HD, H * HD + HKV * HD])
        up = f32(p + "ffn_up.weight")
        extra.update({p + "attn_q.weight": q, p + "attn_k.weight": k, p + "attn_v.weight": v,
                      p + "ffn_gate.weight": up[:FF], p + "ffn_up.weight": up[FF:]})
        drop.append(p + "attn_qkv.weight")
    sep = write_model(tmp_path / "s.gguf", "phi3", seed=5, extra=extra, drop=drop)
    _, a = full_logits(fused, be, IDS)
    arch_b, b = full_logits(sep, be, IDS)
    assert arch_b.layers[0].wq.name == "blk.0.attn_q.weight"
    assert build(open_gguf(fused)).layers[0].wq.name.startswith("blk.0.attn_qkv.weight[")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_phi3_long_factors_follow_the_context(files):
    arch = build(open_gguf(files[("phi3", "F32")]))
    from pyengine.backends.base import KVCache

    short = arch.rope_scaling(0, KVCache([], [], 16))[1]
    long = arch.rope_scaling(0, KVCache([], [], 17))[1]
    np.testing.assert_array_equal(short.freq_factors, arch.factors_short)
    np.testing.assert_array_equal(long.freq_factors, arch.factors_long)
    assert short.attn_factor == pytest.approx(1.19) and long.attn_factor == pytest.approx(1.19)


def test_window_patterns():
    """Gemma 2 alternates (pattern 2: even layers local); Gemma 3 reads its pattern from the file."""
    from pyengine.models import gemma2, gemma3  # noqa: F401
    from pyengine.models.common import swa_pattern

    class GF:
        def __init__(self, meta):
            self.meta = meta
            self.path = "x"

        def arch_key(self, k, d=None):
            return self.meta.get(k, d)

    assert swa_pattern(GF({}), 6, 2) == (True, False, True, False, True, False)
    assert swa_pattern(GF({}), 7, 6) == (True,) * 5 + (False, True)
    assert swa_pattern(GF({"attention.sliding_window_pattern": 3}), 6, 6) == (True, True, False) * 2
    assert swa_pattern(GF({"attention.sliding_window_pattern": [True, False, False]}), 3, 6) == (True, False, False)


@pytest.mark.parametrize("spec,field,value", [
    ("gemma2", "attn_softcap", 0.0), ("gemma2", "final_softcap", 0.0), ("gemma2", "sliding_window", 0),
    ("gemma3", "sliding_window", 0), ("gemma3", "rope_base_swa", 1000000.0), ("glm4", "n_rot", HD),
    ("llama-yarn", "rope_scaling", None), ("llama-linear", "rope_scaling", None), ("qwen2", "neox", False),
])
def test_each_hook_matters_on_the_test_files(files, spec, field, value):
    """Each hook changes the tiny model's logits, so the cross-tier tests above exercise it."""
    be = NumpyBackend()
    arch, ref = full_logits(files[(spec, "F32")], be, IDS)
    setattr(arch.cfg, field, value)
    out = arch.forward(be, np.asarray(IDS, np.int32), 0, arch.kv_cache(be, 32), False)
    assert np.abs(out - ref).max() > 1e-3


def test_cache_size_counts_keys_and_values(files):
    be = NumpyBackend()
    arch, _ = full_logits(files[("llama", "F32")], be, IDS)
    cache = arch.kv_cache(be, 32)
    assert not cache.keys_are_values
    assert sum(a.nbytes for a in cache.k + cache.v) == arch.kv_cache_bytes(32) == 2 * L * 32 * HKV * HD * 4


@pytest.mark.parametrize("meta,want", [
    ({}, None),
    ({"rope.scaling.factor": 2.0}, dict(freq_scale=0.5, ext_factor=0.0)),  # no type: llama.cpp reads "linear"
    ({"rope.scaling.type": "none", "rope.scaling.factor": 2.0}, None),
    ({"rope.scaling.type": "linear", "rope.scaling.factor": 8.0}, dict(freq_scale=0.125)),
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0, "rope.scaling.original_context_length": 16},
     dict(freq_scale=0.25, ext_factor=1.0, n_ctx_orig=16, attn_factor=1.0 / (1.0 + 0.1 * math.log(4.0)) *
          (1.0 + 0.1 * math.log(4.0)))),
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0, "rope.scaling.yarn_log_multiplier": 0.1},
     dict(attn_factor=(0.1 * math.log(4) + 1) / (0.01 * math.log(4) + 1) / (1 + 0.1 * math.log(4)))),
])
def test_rope_scaling_metadata(tmp_path, meta, want):
    SPECS["tmp"] = dict(arch="llama", meta=meta)
    try:
        path = write_model(tmp_path / "r.gguf", "tmp")
    finally:
        SPECS.pop("tmp")
    sc = build(open_gguf(path)).cfg.rope_scaling
    if want is None:
        assert sc is None
    else:
        for k, v in want.items():
            assert getattr(sc, k) == pytest.approx(v), k


def test_unknown_rope_scaling_is_one_line_error(tmp_path):
    SPECS["tmp"] = dict(arch="llama", meta={"rope.scaling.type": "dynamic-ntk", "rope.scaling.factor": 2.0})
    try:
        path = write_model(tmp_path / "r.gguf", "tmp")
    finally:
        SPECS.pop("tmp")
    with pytest.raises(ModelFileError, match="dynamic-ntk"):
        build(open_gguf(path))


def test_cuda_prepare_skips_fused_tensors_the_model_split(files, cuda_emu):  # noqa: F811
    """A fused attn_qkv / ffn_up is used as its row parts: uploading the whole too would
    double its GPU memory."""
    from pyengine.backends.cuda_backend import CudaBackend

    gf = open_gguf(files[("phi3", "F32")])
    arch = build(gf)
    be = CudaBackend(native=cuda_emu)
    be.prepare(gf.tensors)
    fused = gf.tensors["blk.0.attn_qkv.weight"]
    assert not any(k.startswith("cuda") for k in fused.cache)
    assert any(k.startswith("cuda") for k in gf.tensors["blk.0.attn_output.weight"].cache)
    be.matmul(arch.layers[0].wq, np.ones((1, D), np.float32))  # the part uploads on first use
    assert any(k.startswith("cuda") for k in arch.layers[0].wq.cache)
