#!/usr/bin/env python3
"""Write mixture-of-experts GGUF files with random but valid weights in a Q4_K_M-like mix.

    python benchmarks/make_synthetic_moe.py --shapes ds2-lite --out /data/syn     # ~10 GB
    python benchmarks/make_synthetic_moe.py --shapes tiny-ds2,tiny-qwen3moe --out /tmp/syn

Shapes:
- ``ds2-lite``: DeepSeek-V2-Lite (deepseek2): dim 2048, 27 layers, 16 heads, MLA with
  kv_lora_rank 512, rope 64, nope 128, v 128, no q LoRA; layer 0 dense (FFN 10944); 26 MoE
  layers of 64 routed experts (6 used, softmax, weights x1, not normalised; expert FFN 1408)
  plus 2 shared experts; YaRN (factor 40 of 4096, mscale_all_dim 0.707) as the real file says.
- ``qwen3-30b-a3b``: Qwen3-30B-A3B (qwen3moe): dim 2048, 48 layers, 32 heads, 4 KV heads,
  head_dim 128, 128 experts (8 used, expert FFN 768). ~17 GB: only where the disk allows.
- ``tiny-ds2``, ``tiny-qwen3moe``: the same layouts at dim 256 (for tests).

Types: Q4_K for the matrices, Q6_K for ``output.weight`` and for the ``ffn_down*`` matrices of
the layers llama.cpp's ``use_more_bits`` picks; a matrix whose row is not a whole number of
256-blocks falls back as llama-quantize does (Q4_K -> Q5_0, Q6_K -> Q8_0: V2-Lite's expert
down projections (1408 columns) and ``attn_k_b`` (128)); norms, routers (``ffn_gate_inp``)
F32. The tokenizer metadata is copied from ``--tokenizer`` (a GGUF file) as
benchmarks/make_synthetic.py does. Tensors are generated and written one at a time.
Weights are noise: the text is noise; this is for speed and memory (bytes read per token).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from pyengine.bench import _add_kv, _tokenizer_metadata, synthetic_raw, use_more_bits
from pyengine.errors import PyEngineError
from pyengine.ggml_types import ggml_type

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


def tensor_type(name: str, shape: tuple, n_layers: int) -> str:
    if len(shape) == 1 or "norm" in name or "ffn_gate_inp" in name or name.endswith(".bias"):
        return "F32"
    t = "Q4_K"
    if name == "output.weight":
        t = "Q6_K"
    elif name.startswith("blk.") and ".ffn_down" in name and use_more_bits(int(name.split(".")[1]), n_layers):
        t = "Q6_K"
    if shape[-1] % 256:
        t = _FALLBACK[t]
    return t


def moe_tensors(s: dict, n_vocab: int) -> list[tuple[str, tuple, str]]:
    """(name, NumPy shape, type) of every tensor, in file order."""
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
    return [(n, shp, tensor_type(n, shp, L)) for n, shp in specs]


def _metadata(s: dict, n_vocab: int) -> dict:
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


def make_synthetic_moe(shape: str, out_dir: str | os.PathLike, seed: int = 0, tokenizer: str = "auto",
                       overwrite: bool = True) -> Path:
    from gguf import GGMLQuantizationType, GGUFWriter

    if shape not in MOE_SHAPES:
        raise PyEngineError(f"unknown MoE shape {shape!r} (choose from: {', '.join(MOE_SHAPES)})")
    s = MOE_SHAPES[shape]
    tok_md, tok_src = _tokenizer_metadata(tokenizer)
    n_vocab = len(tok_md["tokenizer.ggml.tokens"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"synthetic-{shape}-Q4_K_M.gguf"
    if path.exists() and not overwrite:
        return path
    tmp = path.with_suffix(".gguf.part")
    specs = moe_tensors(s, n_vocab)
    w = GGUFWriter(str(tmp), s["arch"])
    w.add_name(f"pyengine synthetic {shape} (random weights)")
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)
    for k, v in _metadata(s, n_vocab).items():
        _add_kv(w, k, v)
    for k, v in tok_md.items():
        _add_kv(w, k, v)
    for name, shp, tn in specs:
        n_el = int(np.prod(shp))
        if tn == "F32":
            w.add_tensor_info(name, shp, np.dtype(np.float32), n_el * 4)
        else:
            gt = ggml_type(tn)
            w.add_tensor_info(name, (*shp[:-1], gt.n_bytes(shp[-1])), np.dtype(np.uint8), gt.n_bytes(n_el),
                              raw_dtype=GGMLQuantizationType[tn])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    try:
        for name, shp, tn in specs:
            if tn == "F32":
                arr = (np.ones(shp, np.float32) if "norm" in name
                       else (rng.standard_normal(shp) / math.sqrt(shp[-1])).astype(np.float32))
            else:
                rows = int(np.prod(shp[:-1]))
                rms = 0.05 if name == "token_embd.weight" else 1.0 / math.sqrt(shp[-1])
                arr = synthetic_raw(tn, rows, shp[-1], rng, rms)
            w.write_tensor_data(arr)
            del arr
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny-ds2", help=f"comma list of {', '.join(MOE_SHAPES)}")
    p.add_argument("--out", default="benchmarks/out", help="output directory (default benchmarks/out, git-ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default="auto", help="GGUF file whose tokenizer.* metadata is copied (auto: "
                   "SmolLM2-135M from the model cache, else a byte-level vocabulary)")
    p.add_argument("--keep", action="store_true", help="do not rewrite files that already exist")
    a = p.parse_args(argv)
    try:
        for shape in [x.strip() for x in a.shapes.split(",") if x.strip()]:
            t0 = time.time()
            path = make_synthetic_moe(shape, a.out, a.seed, a.tokenizer, overwrite=not a.keep)
            print(f"{path}  {path.stat().st_size / 2**30:.2f} GiB  ({time.time() - t0:.0f} s)")
    except PyEngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
