"""deepseek2 (MLA + MoE) on tiny random-weight GGUF files written here with gguf.GGUFWriter.

Two variants: "lite" (DeepSeek-V2-Lite's shape: no q_lora, softmax gating, unnormalised
weights) and "v3ish" (q_lora, sigmoid gating, normalised and scaled weights, group-limited
routing, exp_probs_b selection bias, YaRN rope). Checked:
- numba / cpu logits vs the NumPy reference; incremental decode vs the full pass;
- the cache holds only the latent and the rope part (R + r per token and layer);
- the absorbed MLA equals plain multi-head attention with K, V expanded from the latent
  (written out here independently);
- the leading dense layer, the shared expert and the YaRN factors are what the file says;
- the cpu backend's native mla_attention == the composed spec, and its decode step replays
  MLA and the routing in one call, bit for bit the op-by-op step.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from tiny_gguf import random_init, write_tensors
from gguf import GGUFWriter

from pyengine import quants
from pyengine.backends.numpy_backend import NumpyBackend
from pyengine.errors import ModelFileError
from pyengine.gguf_file import open_gguf
from pyengine.models import build

from conftest import TINY_IDS as IDS
from conftest import (add_arch_metadata, assert_incremental_decode_matches, assert_replay_matches_op_by_op,
                      assert_tier_matches_numpy, backend, cpu_decode_step, full_logits, native_built,
                      outer_tensors)
from test_models_ops import cuda_emu  # noqa: F401  (the emulator fixture)

V, D, L, H = 80, 64, 3, 4
R, RR, DN, DV, QL = 64, 16, 32, 32, 32      # kv_lora_rank, rope dims, qk_nope, v head, q_lora_rank
FF, E, K, F, NS = 96, 8, 2, 32, 1           # dense ffn, experts, used, expert ffn, shared experts

VARIANTS = {
    "lite": dict(meta={"expert_weights_scale": 1.0, "expert_gating_func": 1}),
    "v3ish": dict(q_lora=True, bias=True,
                  meta={"expert_weights_scale": 2.5, "expert_weights_norm": True, "expert_gating_func": 2,
                        "expert_group_count": 4, "expert_group_used_count": 2,
                        "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                        "rope.scaling.original_context_length": 16,
                        "rope.scaling.yarn_log_multiplier": 0.0707}),
}


def write_deepseek2(path, variant="lite", qtype="F32", seed=0, extra=None, drop=()):
    spec = VARIANTS[variant]
    rng = np.random.default_rng(seed)

    mat, norm = random_init(rng)
    t = outer_tensors(mat, norm, V, D)
    for i in range(L):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = norm(D)
        if spec.get("q_lora"):
            t[p + "attn_q_a.weight"] = mat(QL, D)
            t[p + "attn_q_a_norm.weight"] = norm(QL)
            t[p + "attn_q_b.weight"] = mat(H * (DN + RR), QL, s=2 / math.sqrt(QL))
        else:
            t[p + "attn_q.weight"] = mat(H * (DN + RR), D, s=2 / math.sqrt(D))
        t[p + "attn_kv_a_mqa.weight"] = mat(R + RR, D, s=2 / math.sqrt(D))
        t[p + "attn_kv_a_norm.weight"] = norm(R)
        t[p + "attn_k_b.weight"] = mat(H, R, DN, s=1 / math.sqrt(DN))
        t[p + "attn_v_b.weight"] = mat(H, DV, R)
        t[p + "attn_output.weight"] = mat(D, H * DV)
        t[p + "ffn_norm.weight"] = norm(D)
        if i == 0:  # the leading dense layer
            t.update({p + "ffn_gate.weight": mat(FF, D), p + "ffn_up.weight": mat(FF, D),
                      p + "ffn_down.weight": mat(D, FF)})
        else:
            t.update({p + "ffn_gate_inp.weight": mat(E, D, s=1.0), p + "ffn_gate_exps.weight": mat(E, F, D),
                      p + "ffn_up_exps.weight": mat(E, F, D), p + "ffn_down_exps.weight": mat(E, D, F, s=2 / math.sqrt(F)),
                      p + "ffn_gate_shexp.weight": mat(F * NS, D), p + "ffn_up_shexp.weight": mat(F * NS, D),
                      p + "ffn_down_shexp.weight": mat(D, F * NS)})
            if spec.get("bias"):
                t[p + "exp_probs_b.bias"] = rng.uniform(-0.2, 0.2, E)
    t.update(extra or {})
    for name in drop:
        t.pop(name)
    arch = "deepseek2"
    w = GGUFWriter(str(path), arch)
    meta = {"block_count": L, "context_length": 64, "embedding_length": D, "feed_forward_length": FF,
            "attention.head_count": H, "attention.head_count_kv": 1, "attention.key_length": R + RR,
            "attention.value_length": R, "attention.key_length_mla": DN + RR, "attention.value_length_mla": DV,
            "rope.dimension_count": RR, "vocab_size": V, "attention.kv_lora_rank": R,
            "leading_dense_block_count": 1, "expert_count": E, "expert_used_count": K,
            "expert_feed_forward_length": F, "expert_shared_count": NS}
    if spec.get("q_lora"):
        meta["attention.q_lora_rank"] = QL
    meta.update(spec["meta"], **{"attention.layer_norm_rms_epsilon": 1e-6})
    add_arch_metadata(w, arch, meta)
    return write_tensors(w, t, qtype, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds2")
    return {(v, q): write_deepseek2(d / f"{v}-{q}.gguf", v, q) for v in VARIANTS for q in ("F32", "Q8_0")}


TIERS = ["numba"] + (["cpu"] if native_built() else [])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_reads_the_file(files, variant):
    c = build(open_gguf(files[(variant, "F32")])).cfg
    assert (c.kv_lora_rank, c.qk_rope, c.qk_nope, c.v_head, c.n_dense, c.n_shared) == (R, RR, DN, DV, 1, NS)
    assert c.q_lora_rank == (QL if variant == "v3ish" else 0)
    if variant == "lite":
        assert c.rope_scaling is None and c.kq_scale == pytest.approx(1 / math.sqrt(DN + RR))
        assert (c.routing.gating, c.routing.norm, c.routing.n_group) == ("softmax", False, 0)
    else:  # YaRN as llama.cpp applies it for deepseek2: rope magnitude cancelled, mscale^2 in kq_scale
        m = 1 + 0.1 * (0.0707 / 0.1) * math.log(4.0)
        assert c.kq_scale == pytest.approx(m * m / math.sqrt(DN + RR), rel=1e-6)
        assert c.rope_scaling.attn_factor == pytest.approx(1 / (1 + 0.1 * math.log(4.0)))
        assert c.rope_scaling.freq_scale == pytest.approx(0.25) and c.rope_scaling.ext_factor == 1.0
        r = c.routing
        assert (r.gating, r.norm, r.scale, r.n_group, r.n_group_used) == ("sigmoid", True, 2.5, 4, 2)


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiers_match_numpy(files, variant, tier, qtype):
    _, ref = full_logits(files[(variant, qtype)], NumpyBackend())
    assert np.isfinite(ref).all() and ref.std() > 0.5
    _, got = full_logits(files[(variant, qtype)], backend(tier))
    assert_tier_matches_numpy(got, ref, qtype, tier)


@pytest.mark.parametrize("tier", ["numpy"] + TIERS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_incremental_decode_matches_full_pass(files, variant, tier):
    be = backend(tier)
    arch, ref = full_logits(files[(variant, "F32")], be)
    assert_incremental_decode_matches(be, arch, ref)


def test_cache_holds_the_compressed_latent(files):
    be = NumpyBackend()
    arch, _ = full_logits(files[("lite", "F32")], be)
    assert arch.kv_width == R + RR
    cache = arch.kv_cache(be, 32)
    arch.forward(be, np.asarray(IDS[:3], np.int32), 0, cache, True)
    assert cache.k[1].shape == (32, R + RR)
    # row 0 of layer 0: the normalised latent (its RMS is the kv_a_norm scale's) and k_pe
    lat = cache.k[0][0, :R]
    assert np.isfinite(lat).all() and np.abs(lat).max() > 0 and (cache.k[0][3:] == 0).all()


@pytest.mark.parametrize("tier", ["numpy"] + TIERS)
def test_cache_stores_the_row_once(files, tier):
    # the row is both key and value: one (n_ctx, R + r) float32 array per layer, not two
    be = backend(tier)
    arch, ref = full_logits(files[("lite", "F32")], be)
    cache = arch.kv_cache(be, 32)
    assert cache.keys_are_values and all(k is v for k, v in zip(cache.k, cache.v))
    assert sum(v.nbytes for v in cache.v) == L * 32 * (R + RR) * 4 == arch.kv_cache_bytes(32)
    arch.forward(be, np.asarray(IDS[:3], np.int32), 0, cache, True)
    assert np.abs(cache.v[0][:3]).max() > 0 and not cache.v[0][3:].any()


def _f32(t):
    return quants.dequantize(t.type_name, t.raw, t.n_elements).reshape(t.shape)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_absorbed_mla_equals_expanded_attention(files, variant):
    """Replace the model's attention by plain MHA over K, V expanded from the latent
    (k_h = [Wk_b[h]^T c, k_pe], v_h = Wv_b[h] c): same logits."""
    from pyengine.backends.numpy_backend import attention_reference, rope_reference

    be = NumpyBackend()
    arch, ref = full_logits(files[(variant, "F32")], be)
    c = arch.cfg

    def expanded(ops, Ly, i, h, pos, pos0, cache):
        assert pos0 == 0
        n = h.shape[0]
        if Ly.wq is not None:
            q = h @ _f32(Ly.wq).T
        else:
            qa = h @ _f32(Ly.wq_a).T
            qa = qa / np.sqrt((qa * qa).mean(-1, keepdims=True) + c.norm_eps) * _f32(Ly.q_a_norm)
            q = qa @ _f32(Ly.wq_b).T
        q = q.reshape(n, H, DN + RR)
        kv = h @ _f32(Ly.wkv_a).T
        lat = kv[:, :R] / np.sqrt((kv[:, :R] ** 2).mean(-1, keepdims=True) + c.norm_eps) * _f32(Ly.kv_a_norm)
        base, sc = arch.rope_scaling(i, cache)
        q_pe = rope_reference(np.ascontiguousarray(q[:, :, DN:]).reshape(n, H * RR), pos, H, RR, base, False, RR, sc)
        k_pe = rope_reference(np.ascontiguousarray(kv[:, R:]), pos, 1, RR, base, False, RR, sc)
        wk, wv = _f32(Ly.wk_b), _f32(Ly.wv_b)  # (H, R, DN), (H, DV, R)
        k_nope = np.einsum("hrd,nr->nhd", wk, lat)
        v = np.einsum("hvr,nr->nhv", wv, lat)
        qf = np.concatenate([q[:, :, :DN], q_pe.reshape(n, H, RR)], -1).reshape(n, -1)
        kf = np.concatenate([k_nope, np.repeat(k_pe.reshape(n, 1, RR), H, 1)], -1).reshape(n, -1)
        vf = np.concatenate([v, np.zeros((n, H, DN + RR - DV))], -1).reshape(n, -1).astype(np.float32)
        a = attention_reference(qf.astype(np.float32), kf.astype(np.float32), vf, 0, H, H, DN + RR, c.kq_scale)
        o = a.reshape(n, H, DN + RR)[:, :, :DV].reshape(n, H * DV)
        return o @ _f32(Ly.wo).T

    arch.attention_block = expanded
    _, got = full_logits(None, be, arch=arch)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_shared_expert_and_dense_layer_matter(files):
    be = NumpyBackend()
    arch, ref = full_logits(files[("lite", "F32")], be)
    assert not arch.layers[0].moe and arch.layers[1].moe and arch.layers[2].moe
    for Ly in arch.layers[1:]:
        Ly.shexp = None
    _, no_shared = full_logits(None, be, arch=arch)
    assert np.abs(no_shared - ref).max() > 1e-2


def test_selection_bias_is_applied(files):
    be = NumpyBackend()
    arch, ref = full_logits(files[("v3ish", "F32")], be)
    from dataclasses import replace

    assert arch.layers[1].routing.bias is not None
    for Ly in arch.layers[1:]:
        Ly.routing = replace(Ly.routing, bias=None)
    _, nob = full_logits(None, be, arch=arch)
    assert np.abs(nob - ref).max() > 1e-3


@pytest.mark.parametrize("extra,drop,match", [
    ({"blk.1.attn_kv_b.weight": np.ones((H * (DN + DV), R))}, (), "attn_kv_b"),   # legacy unsplit layout
    ({}, ("blk.2.ffn_up_shexp.weight",), "blk.2.ffn_up_shexp.weight"),
    ({"blk.0.ffn_gate_inp.weight": np.ones((E, D))}, (), "blk.0.ffn_gate_inp.weight"),  # router on a dense layer
])
def test_bad_files_fail_in_one_line(tmp_path, extra, drop, match):
    path = write_deepseek2(tmp_path / "x.gguf", extra=extra, drop=drop)
    with pytest.raises(ModelFileError, match=match) as e:
        build(open_gguf(path))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cpu_decode_step_replays_bit_for_bit(files, variant, qtype):
    """The latent attention (cache write included) and the expert routing run inside the
    replayed single call, which is the op-by-op step bit for bit, compressed cache included."""
    be, arch, ca, cb, step = cpu_decode_step(files[(variant, qtype)])
    kinds = step.__self__.ops()
    assert kinds.count("mla_attention") == L and kinds.count("moe_ffn") == L - 1
    assert_replay_matches_op_by_op(be, arch, step, ca, cb, IDS)


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_native_mla_matches_the_composed_spec(files):
    """_C.mla_attention against mla_attention_composed on the same cpu ops, prefill then decode."""
    from pyengine.backends.cpu_backend import CpuBackend
    from pyengine.backends.mla import mla_attention_composed

    be = CpuBackend()
    arch = build(open_gguf(files[("v3ish", "F32")]))
    c, Ly = arch.cfg, arch.layers[1]
    rng = np.random.default_rng(7)
    base, sc = arch.rope_scaling(1, None)
    caches = [arch.kv_cache(be, 32) for _ in range(2)]
    for pos0, n in ((0, 5), (5, 1), (6, 3)):
        q = rng.standard_normal((n, H * (DN + RR))).astype(np.float32)
        kv = rng.standard_normal((n, R + RR)).astype(np.float32)
        args = (1, pos0, Ly.wk_b, Ly.wv_b, Ly.kv_a_norm, c.norm_eps, H, DN, RR, base, False, sc, c.kq_scale)
        got = be.mla_attention(q, kv, caches[0], *args)
        want = mla_attention_composed(be, q, kv, caches[1], *args)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(caches[0].v[1], caches[1].v[1], rtol=1e-6, atol=1e-6)


def test_mla_bad_arguments_are_one_line_errors(files):
    from pyengine import _C

    if not native_built():
        pytest.skip("needs pyengine._C")
    from pyengine.backends.cpu_backend import CpuBackend, native_type
    from pyengine.backends.mla import native_args

    be = CpuBackend()
    arch = build(open_gguf(files[("lite", "F32")]))
    Ly = arch.layers[0]
    args = native_args(Ly.wk_b, Ly.wv_b, be._vector(Ly.kv_a_norm), 1e-6, H, DN, RR, 10000.0, False, None, 0.1,
                       native_type)
    cache = arch.kv_cache(be, 8)
    q = np.zeros((2, H * (DN + RR)), np.float32)
    kv = np.zeros((2, R + RR), np.float32)
    out = np.empty((2, H * DV), np.float32)
    with pytest.raises(ValueError, match="outside the cache"):
        _C.mla_attention(q, kv, out, cache.v[0], 7, **args)
    with pytest.raises(ValueError, match="kv"):
        _C.mla_attention(q, kv[:, 1:].copy(), out, cache.v[0], 0, **args)
    with pytest.raises(ValueError, match="wv"):
        _C.mla_attention(q, kv, out, cache.v[0], 0, **dict(args, wv=args["wv"][:-4]))
    with pytest.raises(ValueError, match=r"\(n_ctx, kv_lora_rank \+ n_rot\) rows"):  # e.g. key panels
        _C.mla_attention(q, kv, out, np.zeros((1, R + RR, 64), np.float32), 0, **args)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cuda_kernels_emulated(files, variant, cuda_emu):  # noqa: F811
    """The cuda backend on the CUDA kernels' CPU emulator: MLA's head shuffles go through
    to_numpy / from_numpy, the experts through the shared grouped moe_ffn."""
    from pyengine.backends.cuda_backend import CudaBackend

    _, ref = full_logits(files[(variant, "F32")], NumpyBackend())
    be = CudaBackend(native=cuda_emu)
    arch, got = full_logits(files[(variant, "F32")], be)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    cache = arch.kv_cache(be, 8)  # the latent row stored once on the device too
    assert cache.keys_are_values and all(k is v for k, v in zip(cache.k, cache.v))
