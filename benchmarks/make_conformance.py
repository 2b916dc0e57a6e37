#!/usr/bin/env python3
"""Make the llama.cpp conformance data of tests/data/conformance/ (see the README there).

For each synthetic case of tests/synthetic_gguf.py: write the source file, quantize it with
llama.cpp's ``llama-quantize`` (``--token-embedding-type f16 --output-tensor-type f16``, then
the case's mix), record how to rebuild the quantized file byte for byte without llama.cpp
(``recipe.json`` + ``quantized.npz``), and store llama.cpp's logits for two token sequences
(``logits.npz``: top-k per position plus the full-vocabulary log-sum-exp).

Needs a llama.cpp build (``--llama-cpp``: its ``build/bin`` holds ``llama-quantize`` and the
shared libraries) and the ``llama_cpp`` binding of the llama-cpp-python sdist on PYTHONPATH.
The tests never run this; they read the committed data.

    PYTHONPATH=/work/llama.cpp/py LLAMA_CPP_LIB_PATH=/work/llama.cpp/build/bin \\
      python benchmarks/make_conformance.py --llama-cpp /work/llama.cpp --cases llama,qwen2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import synthetic_gguf as sg  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog, then it runs back home to sleep.",
    "def add(a, b):\n    return a + b  # 本地部署大模型需要多少内存？",
]
TOP_K = 64


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source dir with build/bin")
    p.add_argument("--vocab-dir", type=Path, default=None,
                   help="llama.cpp's models/ folder (default: <llama-cpp>/models)")
    p.add_argument("--cases", default=",".join(sg.ARCHS))
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "conformance")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="keep the GGUF files here")
    args = p.parse_args(argv)

    os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(args.llama_cpp / "build" / "bin"))
    import llama_cpp

    vocab_dir = args.vocab_dir or args.llama_cpp / "models"
    build = (args.llama_cpp / "RECIPE.txt").read_text().splitlines()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="conformance-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        t0 = time.perf_counter()
        a = sg.ARCHS[name]
        vocab = sg.vocab_path(vocab_dir, a)
        src, q = work / f"{name}.src.gguf", work / f"{name}.{a.ftype}.gguf"
        sg.make_source(a, vocab, src)
        cmd = [str(args.llama_cpp / "build" / "bin" / "llama-quantize"),
               "--token-embedding-type", "f16", "--output-tensor-type", "f16",
               str(src), str(q), a.ftype, str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
            raise SystemExit(f"{name}: llama-quantize failed")
        recipe, raw = sg.make_recipe(a, src, q, vocab)

        llm = llama_cpp.Llama(str(q), n_ctx=128, n_batch=128, n_threads=args.threads,
                              n_threads_batch=args.threads, logits_all=True, verbose=False)
        arrays, seqs, pmax = {}, [], []
        for k, text in enumerate(TEXTS):
            ids = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]
            llm.reset()
            llm.eval(ids)
            lg = np.array(llm.scores[: len(ids)], dtype=np.float64)   # (n, n_vocab)
            m = lg.max(axis=-1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=-1)))      # (n,)
            top = np.argsort(-lg, axis=-1, kind="stable")[:, :TOP_K]   # (n, K)
            arrays[f"ids_{k}"] = np.asarray(ids, np.int32)
            arrays[f"top_ids_{k}"] = top.astype(np.int32)
            arrays[f"top_logits_{k}"] = np.take_along_axis(lg, top, axis=-1).astype(np.float32)
            arrays[f"lse_{k}"] = lse
            pmax.append(np.exp(arrays[f"top_logits_{k}"][:, 0] - lse))
            seqs.append({"text": text, "n_tokens": len(ids)})
        del llm
        pmax = np.concatenate(pmax)
        d = args.out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False) + "\n")
        np.savez_compressed(d / "quantized.npz", **raw)
        np.savez_compressed(d / "logits.npz", **arrays)
        types = {}
        for _, _, t, _ in recipe["tensors"]:
            types[t] = types.get(t, 0) + 1
        info = {
            "case": name, "architecture": a.arch, "vocab": f"ggml-vocab-{a.vocab}.gguf",
            "mix": a.ftype, "quantized_sha256": recipe["sha256"],
            "tensor_types": {str(k): v for k, v in sorted(types.items())},
            "reference": f"llama.cpp ({build}) through llama-cpp-python 0.3.36's llama_cpp binding, "
                         f"CPU, {args.threads} threads, logits_all",
            "how": "benchmarks/make_conformance.py: tests/synthetic_gguf.make_source, then "
                   f"llama-quantize --token-embedding-type f16 --output-tensor-type f16 SRC DST {a.ftype}; "
                   f"tokens: llama.cpp's tokenizer, BOS as the vocab asks, special tokens parsed; "
                   f"logits: top {TOP_K} per position (float32) and the full-vocabulary logsumexp",
            "sequences": seqs,
            "top1_prob": {"mean": round(float(pmax.mean()), 3), "min": round(float(pmax.min()), 3),
                          "share_over_0.3": round(float((pmax > 0.3).mean()), 3)},
        }
        (d / "info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {size / 1e6:.2f} MB, p(top1) mean {pmax.mean():.3f} min {pmax.min():.3f}, "
              f"{time.perf_counter() - t0:.0f} s")
        if not args.work:
            src.unlink()
            q.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
