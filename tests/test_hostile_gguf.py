"""Hostile GGUF files: each lie in the header is one ModelFileError line at load, naming
the key or tensor, before any kernel sees the file (issue 11, item 1).

Files come from the hand-rolled writer in tests/hostile_gguf.py, which writes whatever
it is told. Each case loads the file and, if loading succeeds, generates two tokens:
a case passes only when a ModelFileError matching its pattern is raised. Loading runs
on the numpy backend in-process (a lie that got past the parser would make the cpu
kernels read out of bounds; test_fuzz_gguf.py covers the cpu backend in subprocesses).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import pyengine
from pyengine.errors import ModelFileError

import hostile_gguf as H


def _embd(s):
    return s.tensor("token_embd.weight")


def _retype(name, t):
    def f(s):
        s.tensor(name).type = t
    return f


def _set(key, vtype, value):
    def f(s):
        s.set(key, vtype, value)
    return f


def _nested(depth):
    v = (H.I32, [1])
    for _ in range(depth):
        v = (H.ARR, [v])
    return v


def _reshape(name, ne, data_bytes=None):
    def f(s):
        t = s.tensor(name)
        t.ne = ne
        if data_bytes is not None:
            t.data = bytes(data_bytes)
    return f


def _offset(name, delta=None, like=None):
    def f(s):
        # offsets as the writer would lay them out, then one moved
        at, al = 0, s.alignment
        for t in s.tensors:
            t.offset = at
            at = (at + len(t.data) + al - 1) // al * al
        t = s.tensor(name)
        t.offset = s.tensor(like).offset if like else t.offset + delta
    return f


def _dup_tensor(s):
    s.tensors.append(copy.deepcopy(s.tensor("output_norm.weight")))


def _extra_rows(s):  # vocabulary 37 tokens, embedding and head 48 rows
    rng = np.random.default_rng(1)
    for name in ("token_embd.weight", "output.weight"):
        t = s.tensor(name)
        t.ne = [256, 48]
        t.data = H.weight_bytes("Q8_0", 48, 256, rng)


CASES = {
    # element counts and byte sizes
    "wraparound_shape": (_reshape("token_embd.weight", [256, 2**62], b""), r"token_embd.weight.*dimension"),
    "wraparound_shape_2d": (_reshape("token_embd.weight", [2**32, 2**32], b""), r"token_embd.weight.*dimension"),
    "huge_product": (_reshape("token_embd.weight", [256, 2**20, 2**20, 2**20]), r"token_embd.weight.*truncated|truncated.*token_embd"),
    "zero_width": (_reshape("token_embd.weight", [0, 40], b""), r"token_embd.weight.*dimension"),
    "zero_rows": (_reshape("blk.0.attn_norm.weight", [256, 0], b""), r"attn_norm.weight.*dimension"),
    "n_dims_0": (_reshape("output_norm.weight", [], b""), r"output_norm.weight.*0 dimensions"),
    # offsets
    "misaligned": (_offset("blk.0.attn_q.weight", delta=4), r"attn_q.weight.*alignment"),
    "overlap": (_offset("blk.1.attn_q.weight", like="blk.0.attn_q.weight"), r"overlaps|does not match"),
    "past_data": (_offset("output.weight", delta=2**40), r"output.weight.*truncated|truncated.*output.weight"),
    "offset_wraps": (_offset("output.weight", delta=2**64 - 2**40), r"output.weight"),
    "duplicate_tensor": (_dup_tensor, r"output_norm.weight.*twice"),
    # retypes
    "retype_smaller": (_retype("blk.0.ffn_up.weight", "Q4_0"), r"does not match its data|follow the last"),
    "retype_bigger": (_retype("blk.1.attn_q.weight", "F16"), r"overlaps|truncated"),
    "retype_norm": (_retype("blk.0.ffn_norm.weight", "F16"), r"does not match its data|ffn_norm"),
    "retype_last": (_retype("output.weight", "Q4_0"), r"follow the last tensor"),
    # header values: type and range
    "alignment_0": (_set("general.alignment", H.U32, 0), r"general.alignment"),
    "alignment_48": (_set("general.alignment", H.U32, 48), r"general.alignment.*power of two"),
    "alignment_str": (_set("general.alignment", H.STR, "32"), r"general.alignment.*integer"),
    "head_count_0": (_set("llama.attention.head_count", H.U32, 0), r"llama.attention.head_count"),
    "head_count_kv_0": (_set("llama.attention.head_count_kv", H.U32, 0), r"head_count_kv"),
    "head_count_kv_3": (_set("llama.attention.head_count_kv", H.U32, 3), r"head_count_kv"),
    "head_count_3": (_set("llama.attention.head_count", H.U32, 3), r"head_count|attn_q.weight"),
    "head_count_float": (_set("llama.attention.head_count", H.F32, 4.0), r"head_count.*integer"),
    # a uniform per-layer array is read as its one value (llama.cpp accepts these); a varying one is refused
    "head_count_per_layer": (_set("llama.attention.head_count", H.ARR, (H.I32, [4, 2])), r"head_count.*not supported"),
    "head_count_per_layer_0": (_set("llama.attention.head_count", H.ARR, (H.I32, [4, 0])), r"head_count.*out of range"),
    "ffn_per_layer_strings": (_set("llama.feed_forward_length", H.ARR, (H.STR, ["a"])), r"feed_forward_length.*integer"),
    "embedding_huge": (_set("llama.embedding_length", H.U32, 2**32 - 1), r"embedding_length"),
    "embedding_str": (_set("llama.embedding_length", H.STR, "256"), r"embedding_length.*integer"),
    "embedding_wrong": (_set("llama.embedding_length", H.U32, 128), r"rope.dimension_count|token_embd.weight.*expected"),
    "block_count_0": (_set("llama.block_count", H.U32, 0), r"block_count"),
    "ffn_wrong": (_set("llama.feed_forward_length", H.U32, 512), r"ffn_gate.weight.*expected"),
    "eps_nan": (_set("llama.attention.layer_norm_rms_epsilon", H.F32, float("nan")), r"epsilon"),
    "freq_base_neg": (_set("llama.rope.freq_base", H.F32, -1.0), r"freq_base"),
    "rope_dims_odd": (_set("llama.rope.dimension_count", H.U32, 63), r"rope.dimension_count"),
    "rope_dims_big": (_set("llama.rope.dimension_count", H.U32, 128), r"rope.dimension_count"),
    "sliding_window_huge": (_set("llama.attention.sliding_window", H.U64, 2**40), r"sliding_window"),
    "context_length_0": (_set("llama.context_length", H.U32, 0), r"context_length"),
    "nested_500": (_set("test.nested", H.ARR, _nested(500)), r"test.nested.*nest"),
    "tokens_not_strings": (_set("tokenizer.ggml.tokens", H.ARR, (H.I32, list(range(len(H.VOCAB))))), r"tokenizer.ggml.tokens"),
    "scores_short": (_set("tokenizer.ggml.scores", H.ARR, (H.F32, [0.0] * 3)), r"tokenizer.ggml.scores"),
    "vocab_size_key": (_set("llama.vocab_size", H.U32, 48), r"tokenizer.ggml.tokens|token_embd"),
    "extra_embedding_rows": (_extra_rows, r"token_embd.weight.*expected|tokenizer.ggml.tokens"),
    # per-architecture shapes
    "attn_v_one_row": (_reshape("blk.0.attn_v.weight", [256, 1], bytes(34 * 8)), r"blk.0.attn_v.weight.*expected"),
    "ffn_norm_half": (_reshape("blk.1.ffn_norm.weight", [128], bytes(512)), r"blk.1.ffn_norm.weight.*expected"),
    "attn_q_transposed_rows": (_reshape("blk.0.attn_k.weight", [128, 256]), r"attn_k.weight.*expected"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_header_is_one_model_file_error(tmp_path, case):
    mutate, pattern = CASES[case]
    spec = H.tiny_llama("Q8_0")
    mutate(spec)
    path = H.write(tmp_path / f"{case}.gguf", spec)
    with pytest.raises(ModelFileError, match=pattern) as ei:
        m = pyengine.load(str(path), backend="numpy", progress=False)
        list(m.generate([1, 5], max_tokens=2, temperature=0))
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg


def test_valid_tiny_model_loads_and_generates(tmp_path):
    """The unmutated file is accepted on both backends with identical greedy text."""
    path = H.write(tmp_path / "ok.gguf", H.tiny_llama("Q8_0"))
    outs = []
    for be in ("numpy", "cpu"):
        m = pyengine.load(str(path), backend=be, progress=False)
        outs.append(list(m.generate([1, 5], max_tokens=3, temperature=0, stop_at_eos=False)))
    assert outs[0] == outs[1] and len(m.last_stats.token_ids) == 3


def test_check_shapes_names_tensor_and_expectation(tmp_path):
    from pyengine.gguf_file import Want, open_gguf

    gf = open_gguf(H.write(tmp_path / "ok.gguf", H.tiny_llama("Q8_0")))
    gf.check_shapes({"output_norm.weight": Want((256,), ("F32",)), "nope.weight": Want((1,), optional=True)})
    with pytest.raises(ModelFileError, match=r"'output_norm.weight' has type F32, expected F16"):
        gf.check_shapes({"output_norm.weight": Want((256,), ("F16",))})
    with pytest.raises(ModelFileError, match=r"'output.weight' has shape \(37, 256\), expected \(41, 256\)"):
        gf.check_shapes({"output.weight": (41, 256)})
    with pytest.raises(ModelFileError, match=r"'nope.weight' is missing"):
        gf.check_shapes({"nope.weight": (1,)})


def test_per_layer_arrays_open_for_other_architectures(tmp_path):
    """Valid files of architectures with per-layer head counts (gemma4, openelm) still open."""
    from pyengine.gguf_file import open_gguf

    spec = H.tiny_llama("Q8_0")
    spec.set("general.architecture", H.STR, "gemma4")
    spec.set("gemma4.attention.head_count_kv", H.ARR, (H.I32, [8, 2]))
    spec.set("gemma4.feed_forward_length", H.ARR, (H.U32, [256, 512]))
    gf = open_gguf(H.write(tmp_path / "g4.gguf", spec))
    assert gf.metadata["gemma4.attention.head_count_kv"].tolist() == [8, 2]


GEMMA_CASES = {
    "sliding_window_huge": (_set("gemma3.attention.sliding_window", H.U64, 2**40), r"sliding_window"),
    "sliding_window_negative": (_set("gemma3.attention.sliding_window", H.I32, -4), r"sliding_window"),
    "q_norm_wrong": (_reshape("blk.0.attn_q_norm.weight", [32], bytes(128)), r"attn_q_norm.weight.*expected"),
    "post_norm_retyped": (_retype("blk.1.post_ffw_norm.weight", "F16"), r"does not match|post_ffw_norm"),
}


@pytest.mark.parametrize("case", sorted(GEMMA_CASES))
def test_hostile_gemma3_header_is_one_model_file_error(tmp_path, case):
    mutate, pattern = GEMMA_CASES[case]
    spec = H.tiny_llama("Q8_0", arch="gemma3")
    mutate(spec)
    path = H.write(tmp_path / f"{case}.gguf", spec)
    for backend in ("numpy", "cpu"):
        with pytest.raises(ModelFileError, match=pattern):
            m = pyengine.load(str(path), backend=backend, progress=False)
            list(m.generate([1, 5], max_tokens=2, temperature=0))


def test_valid_tiny_gemma3_generates(tmp_path):
    path = H.write(tmp_path / "g.gguf", H.tiny_llama("Q4_K", arch="gemma3"))
    outs = [list(pyengine.load(str(path), backend=be, progress=False).generate([1, 5, 6, 7, 8, 9], max_tokens=3,
                                                                                 temperature=0, stop_at_eos=False))
            for be in ("numpy", "cpu")]
    assert outs[0] == outs[1]
