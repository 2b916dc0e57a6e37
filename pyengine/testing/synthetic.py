"""GGUF files with random but valid weights in llama.cpp's Q4_K_M type mix, for benchmarks.

Two families of shapes, one writer (:func:`write_synthetic`), one entry point
(:func:`make_synthetic`; ``benchmarks/make_synthetic.py`` is its command line):

* Llama-shaped dense models (``SYNTHETIC_SHAPES``: tiny, 1B, 7B);
* mixture-of-experts models (``MOE_SHAPES``: DeepSeek-V2-Lite, Qwen3-30B-A3B and tiny
  versions of both).

Weights are random blocks from :func:`pyengine.testing.blocks.random_raw` with decoded RMS
``1/sqrt(cols)`` (so activations stay O(1) through every layer; the token embedding 0.05),
norms are ones, F32 routers N(0, 1/cols). Types follow :func:`q4_k_m_type`. The text such a
model writes is noise: the files are for speed and memory (bytes read per token), and
tensors are generated and written one at a time, so memory stays at the size of the
largest tensor (~165 MB for "7B"'s output).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import PyEngineError
from ..ggml_types import ggml_type
from .blocks import random_raw

#: dims of the dense synthetic models; vocab comes from the tokenizer (49152 for SmolLM2's)
SYNTHETIC_SHAPES: dict[str, dict] = {
    "tiny": dict(dim=256, n_layers=2, ffn=512, n_heads=4, n_kv_heads=2, ctx=2048),
    "1B": dict(dim=2048, n_layers=16, ffn=8192, n_heads=32, n_kv_heads=8, ctx=4096),
    "7B": dict(dim=4096, n_layers=32, ffn=11008, n_heads=32, n_kv_heads=32, ctx=4096),
}

#: the mixture-of-experts shapes:
#:
#: - ``ds2-lite``: DeepSeek-V2-Lite (deepseek2): dim 2048, 27 layers, 16 heads, MLA with
#:   kv_lora_rank 512, rope 64, nope 128, v 128, no q LoRA; layer 0 dense (FFN 10944); 26 MoE
#:   layers of 64 routed experts (6 used, softmax, weights x1, not normalised; expert FFN 1408)
#:   plus 2 shared experts; YaRN (factor 40 of 4096) as the real file says. ~10 GB.
#: - ``qwen3-30b-a3b``: Qwen3-30B-A3B (qwen3moe): dim 2048, 48 layers, 32 heads, 4 KV heads,
#:   head_dim 128, 128 experts (8 used, expert FFN 768). ~17 GB: only where the disk allows.
#: - ``tiny-ds2``, ``tiny-qwen3moe``: the same layouts at dim 256 (for tests).
MOE_SHAPES: dict[str, dict] = {
    "ds2-lite": dict(arch="deepseek2", dim=2048, n_layers=27, n_heads=16, kv_lora=512, q_lora=0, rope=64, nope=128,
                     v=128, ffn=10944, n_dense=1, n_expert=64, n_used=6, expert_ffn=1408, n_shared=2, ctx=163840,
                     yarn=dict(factor=40.0, orig=4096, log_mul=0.0707), scale=1.0, norm=False),
    "tiny-ds2": dict(arch="deepseek2", dim=256, n_layers=3, n_heads=4, kv_lora=256, q_lora=0, rope=64, nope=64, v=64,
                     ffn=512, n_dense=1, n_expert=8, n_used=2, expert_ffn=256, n_shared=1, ctx=2048, yarn=None,
                     scale=1.0, norm=False),
    "qwen3-30b-a3b": dict(arch="qwen3moe", dim=2048, n_layers=48, n_heads=32, n_kv_heads=4, head_dim=128,
                          n_expert=128, n_used=8, expert_ffn=768, ffn=6144, ctx=40960),
    "tiny-qwen3moe": dict(arch="qwen3moe", dim=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, n_expert=8,
                          n_used=2, expert_ffn=256, ffn=512, ctx=2048),
}

# llama-quantize's fallback when a row is not a whole number of 256-value super-blocks
_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits`` (src/llama-quant.cpp): the layers Q4_K_M gives Q6_K
    for attn_v and ffn_down -- the first and last eighth, and every third in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def q4_k_m_type(name: str, shape: tuple, n_layers: int) -> str:
    """The type llama.cpp's Q4_K_M recipe gives tensor ``name`` of NumPy shape ``shape``.

    F32 for vectors, norms, biases and MoE routers (``ffn_gate_inp``); Q6_K for
    ``output.weight`` and for ``attn_v`` / ``ffn_down*`` in the :func:`use_more_bits`
    layers; Q4_K for every other matrix. A matrix whose rows are not whole 256-value
    super-blocks falls back as llama-quantize does: Q4_K -> Q5_0, Q6_K -> Q8_0.
    """
    if len(shape) == 1 or "norm" in name or "ffn_gate_inp" in name or name.endswith(".bias"):
        return "F32"
    t = "Q4_K"
    if name == "output.weight":
        t = "Q6_K"
    elif name.startswith("blk.") and (".attn_v." in name or ".ffn_down" in name) \
            and use_more_bits(int(name.split(".")[1]), n_layers):
        t = "Q6_K"
    if shape[-1] % 256:
        t = _FALLBACK[t]
    return t


# --------------------------------------------------------------------------------
# tensor lists and metadata of each family
# --------------------------------------------------------------------------------


def llama_tensors(shape: dict, n_vocab: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, NumPy shape, type) of every tensor of a Llama model (untied output), in file order."""
    d, L, f = shape["dim"], shape["n_layers"], shape["ffn"]
    kv = d // shape["n_heads"] * shape["n_kv_heads"]
    out = [("token_embd.weight", (n_vocab, d)), ("output_norm.weight", (d,)), ("output.weight", (n_vocab, d))]
    for i in range(L):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (d, d)), (p + "attn_k.weight", (kv, d)),
                (p + "attn_v.weight", (kv, d)), (p + "attn_output.weight", (d, d)), (p + "ffn_norm.weight", (d,)),
                (p + "ffn_gate.weight", (f, d)), (p + "ffn_up.weight", (f, d)), (p + "ffn_down.weight", (d, f))]
    return [(name, shp, q4_k_m_type(name, shp, L)) for name, shp in out]


def llama_metadata(s: dict, n_vocab: int) -> dict:
    """``llama.*`` key/values of a dense shape."""
    md = {"context_length": s["ctx"], "embedding_length": s["dim"], "block_count": s["n_layers"],
          "feed_forward_length": s["ffn"], "attention.head_count": s["n_heads"],
          "attention.head_count_kv": s["n_kv_heads"], "rope.dimension_count": s["dim"] // s["n_heads"],
          "rope.freq_base": 10000.0, "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": n_vocab}
    return {f"llama.{k}": v for k, v in md.items()}


def moe_tensors(s: dict, n_vocab: int) -> list[tuple[str, tuple, str]]:
    """(name, NumPy shape, type) of every tensor of a MoE shape, in file order."""
    d, L = s["dim"], s["n_layers"]
    specs = [("token_embd.weight", (n_vocab, d))]
    for i in range(L):
        p = f"blk.{i}."
        specs.append((p + "attn_norm.weight", (d,)))
        if s["arch"] == "deepseek2":
            H, R, r, dn, dv = s["n_heads"], s["kv_lora"], s["rope"], s["nope"], s["v"]
            if s["q_lora"]:
                specs += [(p + "attn_q_a.weight", (s["q_lora"], d)), (p + "attn_q_a_norm.weight", (s["q_lora"],)),
                          (p + "attn_q_b.weight", (H * (dn + r), s["q_lora"]))]
            else:
                specs.append((p + "attn_q.weight", (H * (dn + r), d)))
            specs += [(p + "attn_kv_a_mqa.weight", (R + r, d)), (p + "attn_kv_a_norm.weight", (R,)),
                      (p + "attn_k_b.weight", (H, R, dn)), (p + "attn_v_b.weight", (H, dv, R)),
                      (p + "attn_output.weight", (d, H * dv))]
            dense = i < s["n_dense"]
        else:
            H, Hkv, hd = s["n_heads"], s["n_kv_heads"], s["head_dim"]
            specs += [(p + "attn_q.weight", (H * hd, d)), (p + "attn_k.weight", (Hkv * hd, d)),
                      (p + "attn_v.weight", (Hkv * hd, d)), (p + "attn_q_norm.weight", (hd,)),
                      (p + "attn_k_norm.weight", (hd,)), (p + "attn_output.weight", (d, H * hd))]
            dense = False
        specs.append((p + "ffn_norm.weight", (d,)))
        if dense:
            specs += [(p + "ffn_gate.weight", (s["ffn"], d)), (p + "ffn_up.weight", (s["ffn"], d)),
                      (p + "ffn_down.weight", (d, s["ffn"]))]
            continue
        E, f = s["n_expert"], s["expert_ffn"]
        specs += [(p + "ffn_gate_inp.weight", (E, d)), (p + "ffn_gate_exps.weight", (E, f, d)),
                  (p + "ffn_up_exps.weight", (E, f, d)), (p + "ffn_down_exps.weight", (E, d, f))]
        if s.get("n_shared"):
            fs = f * s["n_shared"]
            specs += [(p + "ffn_gate_shexp.weight", (fs, d)), (p + "ffn_up_shexp.weight", (fs, d)),
                      (p + "ffn_down_shexp.weight", (d, fs))]
    specs += [("output_norm.weight", (d,)), ("output.weight", (n_vocab, d))]
    return [(n, shp, q4_k_m_type(n, shp, L)) for n, shp in specs]


def moe_metadata(s: dict, n_vocab: int) -> dict:
    """``<arch>.*`` key/values of a MoE shape."""
    a, md = s["arch"], {}
    md.update({"block_count": s["n_layers"], "context_length": s["ctx"], "embedding_length": s["dim"],
               "feed_forward_length": s["ffn"], "attention.head_count": s["n_heads"], "vocab_size": n_vocab,
               "expert_count": s["n_expert"], "expert_used_count": s["n_used"],
               "expert_feed_forward_length": s["expert_ffn"], "attention.layer_norm_rms_epsilon": 1e-6})
    if a == "deepseek2":
        R, r = s["kv_lora"], s["rope"]
        md.update({"attention.head_count_kv": 1, "attention.key_length": R + r, "attention.value_length": R,
                   "attention.key_length_mla": s["nope"] + r, "attention.value_length_mla": s["v"],
                   "attention.kv_lora_rank": R, "rope.dimension_count": r, "leading_dense_block_count": s["n_dense"],
                   "expert_shared_count": s["n_shared"], "expert_weights_scale": float(s["scale"]),
                   "expert_weights_norm": bool(s["norm"]), "expert_gating_func": 1, "rope.freq_base": 10000.0})
        if s["q_lora"]:
            md["attention.q_lora_rank"] = s["q_lora"]
        if s.get("yarn"):
            y = s["yarn"]
            md.update({"rope.scaling.type": "yarn", "rope.scaling.factor": y["factor"],
                       "rope.scaling.original_context_length": y["orig"],
                       "rope.scaling.yarn_log_multiplier": y["log_mul"]})
    else:
        md.update({"attention.head_count_kv": s["n_kv_heads"], "attention.key_length": s["head_dim"],
                   "attention.value_length": s["head_dim"], "rope.dimension_count": s["head_dim"],
                   "rope.freq_base": 1000000.0})
    return {f"{a}.{k}": v for k, v in md.items()}


# --------------------------------------------------------------------------------
# tokenizer and the writer
# --------------------------------------------------------------------------------


def tokenizer_metadata(source: str | os.PathLike | None, n_vocab: int = 49152) -> tuple[dict, str]:
    """``tokenizer.*`` metadata: copied from a GGUF file, or a built-in byte-level vocabulary.

    ``source``: a .gguf path, ``"auto"`` (SmolLM2-135M from the model cache when there,
    else built-in) or ``"bytes"`` (built-in: 3 specials, 256 byte tokens, padding to
    ``n_vocab`` tokens, one merge). Returns (metadata, where it came from).
    """
    if source == "auto":
        cand = None
        try:
            from ..registry import model_path

            cand = model_path("smollm2-135m")
        except Exception:  # noqa: BLE001 - no registry entry / cache dir: use the built-in vocab
            pass
        source = str(cand) if cand is not None and Path(cand).exists() else "bytes"
    if source == "bytes":
        from ..tokenizer import _bytes_to_unicode

        byte_chars = _bytes_to_unicode()  # GPT-2's byte -> printable character map
        toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [byte_chars[b] for b in range(256)]
        types = [3, 3, 3] + [1] * 256
        toks += [f"<unused_{i}>" for i in range(n_vocab - len(toks))]
        types += [5] * (n_vocab - len(types))
        md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": toks,
              "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["Ġ t"],
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
              "tokenizer.ggml.add_bos_token": False}
        return md, "built-in byte-level vocabulary"
    from ..gguf_file import open_gguf

    gf = open_gguf(source, check_types=False)
    md = {k: v for k, v in gf.metadata.items() if k.startswith("tokenizer.") and k != "tokenizer.chat_template"}
    if "tokenizer.ggml.tokens" not in md:
        raise PyEngineError(f"{source}: no tokenizer.ggml.tokens metadata to copy")
    return md, str(source)


def add_kv(w, key: str, val) -> None:
    """Add one key/value to a ``gguf.GGUFWriter`` with the GGUF type of the Python value
    (int >= 0: uint32, int < 0: int32, float: float32, arrays by their dtype)."""
    from gguf import GGUFValueType

    if isinstance(val, np.ndarray):
        sub = {np.dtype("int32"): GGUFValueType.INT32, np.dtype("float32"): GGUFValueType.FLOAT32,
               np.dtype("uint32"): GGUFValueType.UINT32, np.dtype("bool"): GGUFValueType.BOOL,
               np.dtype("uint8"): GGUFValueType.UINT8, np.dtype("int8"): GGUFValueType.INT8}[val.dtype]
        w.add_key_value(key, val.tolist(), GGUFValueType.ARRAY, sub_type=sub)
    elif isinstance(val, list):
        w.add_array(key, val)
    elif isinstance(val, bool):
        w.add_bool(key, val)
    elif isinstance(val, int):
        (w.add_uint32 if val >= 0 else w.add_int32)(key, val)
    elif isinstance(val, float):
        w.add_float32(key, val)
    else:
        w.add_string(key, str(val))


def write_synthetic(path: Path, arch: str, name: str, metadata: dict, specs: list[tuple[str, tuple, str]],
                    tokenizer: tuple[dict, str], seed: int = 0, progress: bool = False) -> Path:
    """Write a GGUF file of architecture ``arch`` with the tensors ``specs`` (name, NumPy
    shape, type), the key/values ``metadata`` and ``tokenizer`` (:func:`tokenizer_metadata`'s
    answer); returns ``path``.

    The file is written as ``<path>.part`` and renamed when complete.
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    tok_md, tok_src = tokenizer
    tmp = path.with_suffix(".gguf.part")
    w = GGUFWriter(str(tmp), arch)
    w.add_name(name)
    w.add_string("general.description", "random but valid weights for benchmarking; the text it writes is noise")
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)
    w.add_string("pyengine.synthetic.tokenizer_source", os.path.basename(tok_src))
    for k, v in {**metadata, **tok_md}.items():
        add_kv(w, k, v)
    for tname, shp, tn in specs:
        n_el = int(np.prod(shp))
        if tn == "F32":
            w.add_tensor_info(tname, shp, np.dtype(np.float32), n_el * 4)
        else:
            gt = ggml_type(tn)
            w.add_tensor_info(tname, (*shp[:-1], gt.n_bytes(shp[-1])), np.dtype(np.uint8), gt.n_bytes(n_el),
                              raw_dtype=GGMLQuantizationType[tn])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(ggml_type(tn).n_bytes(int(np.prod(shp))) for _, shp, tn in specs)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=path.name)
    try:
        for tname, shp, tn in specs:
            if "norm" in tname:
                arr = np.ones(shp, dtype=np.float32)
            else:
                rms = 0.05 if tname == "token_embd.weight" else 1.0 / math.sqrt(shp[-1])
                arr = random_raw(tn, int(np.prod(shp)), rng, rms=rms)
                arr = arr.view(np.float32).reshape(shp) if tn == "F32" else arr.reshape(int(np.prod(shp[:-1])), -1)
            w.write_tensor_data(arr)
            if bar is not None:
                bar.update(arr.nbytes)
            del arr
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    os.replace(tmp, path)
    return path


def make_synthetic(shape: str = "1B", out_dir: str | os.PathLike = "benchmarks/out", seed: int = 0,
                   tokenizer: str | os.PathLike = "auto", overwrite: bool = True,
                   progress: bool = False) -> Path:
    """Write ``synthetic-<shape>-Q4_K_M.gguf`` into ``out_dir``; returns its path.

    ``shape``: a dense Llama shape (:data:`SYNTHETIC_SHAPES`, architecture ``llama``) or a
    mixture-of-experts one (:data:`MOE_SHAPES`, its own architecture). ``tokenizer``: see
    :func:`tokenizer_metadata`. ``overwrite=False`` keeps a file that exists.
    """
    if shape in SYNTHETIC_SHAPES:
        s, arch, metadata, tensors = SYNTHETIC_SHAPES[shape], "llama", llama_metadata, llama_tensors
    elif shape in MOE_SHAPES:
        s = MOE_SHAPES[shape]
        arch, metadata, tensors = s["arch"], moe_metadata, moe_tensors
    else:
        raise PyEngineError(f"unknown synthetic shape {shape!r} (choose from: "
                            f"{', '.join([*SYNTHETIC_SHAPES, *MOE_SHAPES])})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"synthetic-{shape}-Q4_K_M.gguf"
    if path.exists() and not overwrite:
        return path
    tok = tokenizer_metadata(tokenizer)
    n_vocab = len(tok[0]["tokenizer.ggml.tokens"])
    return write_synthetic(path, arch, f"pyengine synthetic {shape} (random weights)", metadata(s, n_vocab),
                           tensors(s, n_vocab), tok, seed=seed, progress=progress)
