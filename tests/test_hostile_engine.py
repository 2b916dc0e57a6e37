"""Hostile inputs at the engine level (issue 11, items 3 and "smaller"): non-finite
values never turn into fluent text, and bad n_ctx / max_tokens are one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

import pyengine
from pyengine.errors import NonFiniteError, PyEngineError

import hostile_gguf as H
from conftest import native_built

QUANT = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"]


def _nan_model(tmp_path, matrix_type, where="blk.0.attn_norm.weight", value=np.nan):
    s = H.tiny_llama(matrix_type)
    t = s.tensor(where)
    a = np.frombuffer(t.data, "<f4").copy()
    a[3] = value
    t.data = a.tobytes()
    return H.write(tmp_path / f"nan_{matrix_type}.gguf", s)


@pytest.mark.parametrize("backend,matrix_type", [("numpy", "Q8_0"), ("numpy", "F16")]
                         + [("cpu", t) for t in QUANT + ["F16"]])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_an_error_not_text(tmp_path, backend, matrix_type, value):
    if backend == "cpu" and not native_built():
        pytest.skip("native extension not built")
    path = _nan_model(tmp_path, matrix_type, value=value)
    m = pyengine.load(str(path), backend=backend, progress=False)
    with pytest.raises(NonFiniteError, match=r"non-finite logits .* model file") as ei:
        list(m.generate([1, 5, 6], max_tokens=4, temperature=0))
    assert "\n" not in str(ei.value)


@pytest.mark.skipif(not native_built(), reason="native extension not built")
@pytest.mark.parametrize("type_name", QUANT)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantized_matmul_propagates_non_finite_activations(type_name, bad):
    """x @ W.T with a NaN/Inf in token 1's activations: token 1's outputs are non-finite
    (as in float arithmetic), token 0's are untouched."""
    from pyengine import _C

    rng = np.random.default_rng(0)
    w = np.frombuffer(H.weight_bytes(type_name, 8, 256, rng), np.uint8).copy()
    x = rng.standard_normal((2, 256)).astype(np.float32)
    ref = np.empty((2, 8), np.float32)
    _C.matmul(type_name, w, 8, 256, x, ref)
    x[1, 17] = bad
    out = np.empty((2, 8), np.float32)
    _C.matmul(type_name, w, 8, 256, x, out)
    assert not np.isfinite(out[1]).any()
    np.testing.assert_array_equal(out[0], ref[0])


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return H.write(tmp_path_factory.mktemp("tiny") / "tiny.gguf", H.tiny_llama("Q8_0"))


@pytest.mark.parametrize("n_ctx", [0, -5, 1.5, "64", True])
def test_bad_n_ctx_is_an_error(tiny_path, n_ctx):
    with pytest.raises(PyEngineError, match="n_ctx must be a positive integer"):
        pyengine.load(str(tiny_path), backend="numpy", n_ctx=n_ctx, progress=False)


def test_good_n_ctx_is_kept(tiny_path):
    assert pyengine.load(str(tiny_path), backend="numpy", n_ctx=32, progress=False).n_ctx == 32
    assert pyengine.load(str(tiny_path), backend="numpy", n_ctx=np.int64(16), progress=False).n_ctx == 16


@pytest.mark.parametrize("max_tokens", [2.5, "3", True])
def test_bad_max_tokens_is_an_error(tiny_path, max_tokens):
    m = pyengine.load(str(tiny_path), backend="numpy", progress=False)
    with pytest.raises(PyEngineError, match="max_tokens must be an integer"):
        list(m.generate([1, 5], max_tokens=max_tokens))


def test_max_tokens_none_means_until_the_context_is_full(tiny_path):
    # None is "no limit" (as OpenAI's null max_tokens): the text ends at end of text or a full context
    m = pyengine.load(str(tiny_path), backend="numpy", n_ctx=8, progress=False)
    list(m.generate([1, 5], max_tokens=None, stop_at_eos=False, temperature=0))
    assert m.last_stats.generated_tokens == 8 - 2 + 1


@pytest.mark.skipif(not native_built(), reason="native extension not built")
@pytest.mark.parametrize("type_name", QUANT)
def test_replayed_decode_step_propagates_non_finite(type_name):
    """The natively replayed decode step (DecodeGraph) runs the same matmul: NaN in, NaN out."""
    from pyengine import _C

    rng = np.random.default_rng(1)
    w = np.frombuffer(H.weight_bytes(type_name, 8, 256, rng), np.uint8).copy()
    emb = np.frombuffer(H.weight_bytes("F32", 4, 256, rng), np.uint8).copy()
    emb.view(np.float32)[2 * 256 + 9] = np.nan  # row 2 holds a NaN
    x = np.zeros((1, 256), np.float32)
    out = np.zeros((1, 8), np.float32)
    g = _C.DecodeGraph()
    g.add_embed("F32", emb, 4, 256, x)
    g.add_matmul(type_name, w, 8, 256, x, out)
    g.set_output(out)
    assert np.isfinite(g.step(1, 0)).all()
    assert not np.isfinite(g.step(2, 0)).any()


@pytest.mark.parametrize("bad", [1.5, "5", True, [1, 2.5], [True, 3], None])
def test_decode_and_logits_take_integer_ids_only(tiny_path, bad):
    # np.asarray(x, dtype=int32) used to cast 1.5 -> 1, '5' -> 5 and True -> 1 without a word
    m = pyengine.load(str(tiny_path), backend="numpy", progress=False)
    m.prefill([1, 2])
    with pytest.raises(PyEngineError, match="integer"):
        m.decode(bad) if not isinstance(bad, list) else m.logits(bad)


def test_numpy_integer_ids_are_fine(tiny_path):
    m = pyengine.load(str(tiny_path), backend="numpy", progress=False)
    assert m.logits(np.array([1, 2], dtype=np.int64)).shape[0] == 2
    m.prefill(np.array([1, 2], dtype=np.uint16))
    assert m.decode(np.int64(3)).ndim == 1


def test_n_ctx_above_the_model_limit_is_an_error_not_a_cap(tiny_path):
    import pyengine.gguf_file as gg

    limit = int(gg.open_gguf(tiny_path).arch_key("context_length", 2048))
    with pytest.raises(PyEngineError, match="above the model's context length"):
        pyengine.load(str(tiny_path), backend="numpy", n_ctx=limit + 1, progress=False)
    assert pyengine.load(str(tiny_path), backend="numpy", n_ctx=limit, progress=False).n_ctx == limit
