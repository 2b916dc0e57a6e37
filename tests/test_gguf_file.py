"""The GGUF parser against gguf.GGUFReader, and one-line errors for bad files."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from pyengine.errors import ModelFileError
from pyengine.gguf_file import open_gguf
from pyengine.models import build


def write_tiny(path, arch="llama", extra_tensor=None):
    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_uint32("test.u32", 7)
    w.add_float32("test.f32", 0.5)
    w.add_bool("test.flag", True)
    w.add_string("test.text", "离线 offline ✓")
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.strings", ["a", "中文", ""])
    rng = np.random.default_rng(0)
    w.add_tensor("norm.weight", rng.standard_normal(64).astype(np.float32))
    w.add_tensor("mat.weight", rng.standard_normal((3, 64)).astype(np.float16))
    q8 = np.zeros((2, 34 * 2), dtype=np.uint8)  # 2 rows of 64 Q8_0 values (2 blocks each)
    w.add_tensor("q.weight", q8, raw_shape=(2, 68), raw_dtype=GGMLQuantizationType.Q8_0)
    if extra_tensor:
        extra_tensor(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_parser_agrees_with_gguf_reader(tmp_path):
    p = write_tiny(tmp_path / "tiny.gguf")
    ours = open_gguf(p)
    ref = GGUFReader(str(p))
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        want = field.contents()
        got = ours.metadata[key]
        if isinstance(got, np.ndarray):
            got = got.tolist()
        if isinstance(want, float):
            assert got == pytest.approx(want)
        else:
            assert got == want, key
    assert set(ours.tensors) == {t.name for t in ref.tensors}
    for t in ref.tensors:
        q = ours.tensors[t.name]
        assert q.type_name == t.tensor_type.name
        assert q.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
        assert q.n_bytes == t.n_bytes
        assert bytes(q.raw) == bytes(np.asarray(t.data).reshape(-1).view(np.uint8))
    assert ours.metadata["test.text"] == "离线 offline ✓"
    assert ours.metadata["test.strings"] == ["a", "中文", ""]


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        open_gguf(tmp_path / "nope.gguf")


def test_wrong_magic(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        open_gguf(p)


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_file(tmp_path, keep):
    p = write_tiny(tmp_path / "tiny.gguf")
    data = p.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:max(24, int(len(data) * keep))])
    with pytest.raises(ModelFileError, match="truncated") as e:
        open_gguf(cut)
    assert "\n" not in str(e.value)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    def add_iq2(w):  # a type pyengine names but has no kernel for
        w.add_tensor("odd.weight", np.zeros((1, 66), dtype=np.uint8), raw_shape=(1, 66),
                     raw_dtype=GGMLQuantizationType.IQ2_XXS)

    p = write_tiny(tmp_path / "iq2.gguf", extra_tensor=add_iq2)
    with pytest.raises(ModelFileError, match=r"odd\.weight.*IQ2_XXS.*not support"):
        open_gguf(p)


def test_unknown_architecture(tmp_path):
    p = write_tiny(tmp_path / "arch.gguf", arch="mamba9")
    with pytest.raises(ModelFileError, match="architecture 'mamba9' is not supported"):
        build(open_gguf(p))


def test_missing_tensor_is_named(tmp_path):
    p = write_tiny(tmp_path / "tiny.gguf")
    gf = open_gguf(p)
    with pytest.raises(ModelFileError, match="blk.0.attn_q.weight"):
        gf.tensor("blk.0.attn_q.weight")


def test_real_models_open(real_model_name):
    from conftest import real_model_path

    gf = open_gguf(real_model_path(real_model_name))
    from pyengine.models import ARCHITECTURES

    assert gf.architecture in ARCHITECTURES
    assert gf.tensors["token_embd.weight"].shape[0] == len(gf.metadata["tokenizer.ggml.tokens"])
