#!/usr/bin/env python3
"""Write GGUF files with random but valid weights in llama.cpp's Q4_K_M mix, to benchmark big shapes.

    python benchmarks/make_synthetic.py                 # 1B and 7B into benchmarks/out/
    python benchmarks/make_synthetic.py --shapes tiny --out /tmp/syn
    python benchmarks/make_synthetic.py --shapes ds2-lite --out /data/syn     # ~10 GB MoE

Dense Llama shapes: tiny (dim 256, 2 layers; for tests), 1B (dim 2048, 16 layers, FFN 8192,
32 heads, 8 KV heads), 7B (dim 4096, 32 layers, FFN 11008, 32 heads, 32 KV heads).
Mixture-of-experts shapes: ds2-lite (DeepSeek-V2-Lite), qwen3-30b-a3b (Qwen3-30B-A3B) and
tiny-ds2 / tiny-qwen3moe (the same layouts at dim 256); pyengine/testing/synthetic.py
(MOE_SHAPES) lists what each copies, and is the writer of both families.
Types follow Q4_K_M: Q4_K everywhere, Q6_K for output.weight and for attn_v / ffn_down in
the layers llama.cpp's ``use_more_bits`` picks, llama-quantize's fallbacks (Q4_K -> Q5_0,
Q6_K -> Q8_0) where a row is not whole 256-value super-blocks; norms and MoE routers F32.
The tokenizer metadata (vocab 49152) is copied from SmolLM2-135M when it is in the
model cache (``pyengine pull smollm2-135m``), so llama.cpp loads the files too.
The files are written tensor by tensor (7B: ~4 GB, written in under a minute);
benchmarks/out/ is git-ignored -- never commit them. The weights are noise, and so is the
text they write: the files are for speed and memory (bytes read per token).

    python benchmarks/make_synthetic.py --arch llama,qwen2,gemma2 --out /tmp/syn

``--arch`` writes instead the small per-architecture source models of the llama.cpp conformance
suite (tests/synthetic_gguf.py: real tensor names and metadata keys, real llama.cpp vocabularies
from the llama-cpp-python sdist, unquantized; benchmarks/make_conformance.py quantizes them with
llama-quantize and records llama.cpp's logits).
"""
from __future__ import annotations

import argparse
import sys
import time

from pyengine.errors import PyEngineError
from pyengine.testing.synthetic import MOE_SHAPES, SYNTHETIC_SHAPES, make_synthetic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="1B,7B",
                   help=f"comma list of {', '.join([*SYNTHETIC_SHAPES, *MOE_SHAPES])} (default 1B,7B)")
    p.add_argument("--out", default="benchmarks/out", help="output directory (default benchmarks/out, git-ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default="auto",
                   help="GGUF file to copy tokenizer.* metadata from; 'auto' = SmolLM2-135M from the model "
                        "cache if present, else 'bytes' (a built-in byte-level vocabulary)")
    p.add_argument("--arch", default=None,
                   help="comma list of conformance cases (tests/synthetic_gguf.py ARCHS) or 'all'")
    p.add_argument("--vocab-dir", default=None,
                   help="llama.cpp models/ folder with ggml-vocab-*.gguf (default: the llama-cpp-python sdist, pip-fetched)")
    p.add_argument("--keep", action="store_true", help="do not rewrite files that already exist")
    args = p.parse_args(argv)
    if args.arch:
        return write_arch_sources(args)
    try:
        for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
            t0 = time.perf_counter()
            path = make_synthetic(shape, args.out, seed=args.seed, tokenizer=args.tokenizer,
                                  overwrite=not args.keep, progress=True)
            print(f"{path}  {path.stat().st_size / 1e9:.2f} GB  ({time.perf_counter() - t0:.1f} s)")
    except PyEngineError as e:
        print(f"make_synthetic: error: {e}", file=sys.stderr)
        return 1
    return 0


def write_arch_sources(args) -> int:
    from pathlib import Path

    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))
    import synthetic_gguf as sg

    if args.vocab_dir:
        vocab_dir = Path(args.vocab_dir)
    else:
        from llamacpp_sdist import vocab_dir as sdist_vocab_dir

        vocab_dir = sdist_vocab_dir()
    names = list(sg.ARCHS) if args.arch == "all" else [s.strip() for s in args.arch.split(",") if s.strip()]
    unknown = [n for n in names if n not in sg.ARCHS]
    if unknown:
        print(f"make_synthetic: error: unknown case {unknown[0]!r}; known: {', '.join(sg.ARCHS)}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        a = sg.ARCHS[name]
        path = out / f"{name}.src.gguf"
        sha = sg.make_source(a, sg.vocab_path(vocab_dir, a), path)
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  sha256 {sha[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
