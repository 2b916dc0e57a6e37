#!/usr/bin/env python3
"""Make llama.cpp reference data ("goldens") for one real GGUF file, in the format of
tests/data/golden/ (see tests/data/golden/README.llama.cpp.md):

    tokenize.json   [{text, add_bos, parse_special, ids}]   llama.cpp's token ids
    greedy.json     [{prompt, prompt_ids, continuation_ids, continuation_text}]  greedy, 64 tokens
    logits_K_J.npz  {ids: int32 (all ids of prompt K), start: int32, logits: float16 (rows, n_vocab)}
                    chunk J of llama.cpp's logits for prompt K, rows start .. start + rows
    info.json       provenance

Needs llama.cpp's Python binding (the ``llama_cpp`` package of the llama-cpp-python sdist) on
PYTHONPATH and ``LLAMA_CPP_LIB_PATH`` pointing to a llama.cpp build's shared libraries — see
the recipe of the build used (``--recipe``). Not used by the tests (they read the committed data).

    LLAMA_CPP_LIB_PATH=/work/llama.cpp/build/bin PYTHONPATH=/work/llama.cpp/py \
      python benchmarks/make_goldens.py MODEL.gguf tests/data/golden/NAME --threads 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

TOKENIZE_TEXTS = [
    ("Hello world", False),
    ("def fibonacci(n):\n    return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)", False),
    ("离线使用大语言模型的好处是保护隐私。", False),
    ("数字 1234567890 和 3.14159", False),
    ("emoji 🦙🚀 and CJK 日本語 한국어", False),
    ("   leading spaces\t\ttabs\n\nnewlines", False),
    ("<|im_start|>user\nhi<|im_end|>", False),
    ("I'm can't we'll THEY'RE", False),
    ("https://example.com/path?q=1&x=2", False),
    ("class Foo:\n\tpass\n", False),
    ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n<|fim_middle|>", True),
]
GREEDY_PROMPTS = [
    "def quicksort(arr):",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "用Python写一个函数，判断一个数是否为质数。<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    "# Read a CSV file with pandas and print the first rows\n",
]
LOGITS_PROMPTS = [
    "def softmax(x):\n",
    "<|im_start|>user\n本地部署大模型需要多少内存？<|im_end|>\n<|im_start|>assistant\n",
]
N_GREEDY = 64
CHUNK_ROWS = 8


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 24), b""):
            h.update(b)
    return h.hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipe", default=os.environ.get("LLAMA_CPP_RECIPE", ""),
                   help="file describing the llama.cpp build (its first line goes into info.json)")
    args = p.parse_args(argv)

    import llama_cpp

    llm = llama_cpp.Llama(str(args.model), n_ctx=512, n_batch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, logits_all=True, verbose=False)
    n_vocab = llm.n_vocab()
    args.out.mkdir(parents=True, exist_ok=True)

    def tok(text: str, add_bos: bool, special: bool) -> list[int]:
        return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)]

    def logits_of(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)  # (len(ids), n_vocab)

    tokenize = []
    for text, special in TOKENIZE_TEXTS:
        for add_bos in (True, False):
            tokenize.append({"text": text, "add_bos": add_bos, "parse_special": special,
                             "ids": tok(text, add_bos, special)})

    greedy = []
    for prompt in GREEDY_PROMPTS:
        ids = tok(prompt, True, True)
        llm.reset()
        llm.eval(ids)
        cont = []
        for _ in range(N_GREEDY):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            cont.append(nxt)
            llm.eval([nxt])
        text = llm.detokenize(cont).decode("utf-8", errors="replace")
        greedy.append({"prompt": prompt, "prompt_ids": ids, "continuation_ids": cont,
                       "continuation_text": text})
        print(f"greedy {prompt[:30]!r}: {text[:60]!r}")

    prompts_info = []
    for k, prompt in enumerate(LOGITS_PROMPTS):
        ids = tok(prompt, True, True)
        lg = logits_of(ids)
        for j, s in enumerate(range(0, len(ids), CHUNK_ROWS)):
            np.savez_compressed(args.out / f"logits_{k}_{j}.npz", ids=np.asarray(ids, np.int32),
                                start=np.int32(s), logits=lg[s:s + CHUNK_ROWS].astype(np.float16))
        prompts_info.append({"prompt": prompt, "n_tokens": len(ids)})

    build = Path(args.recipe).read_text().splitlines()[0] if args.recipe else "unknown build"
    info = {
        "model_file": args.model.name,
        "model_sha256": sha256(args.model),
        "n_vocab": n_vocab,
        "reference": f"llama.cpp ({build}) through llama-cpp-python 0.3.36's llama_cpp binding, "
                     f"CPU, {args.threads} threads",
        "how": "benchmarks/make_goldens.py: tokenize with add_bos as listed and special tokens parsed "
               "where parse_special; greedy = argmax of llama.cpp's logits, 64 tokens, prompts with BOS "
               "as the model asks and special tokens parsed; logits of every position of each logits "
               f"prompt, float16, in chunks of {CHUNK_ROWS} rows",
        "logits_prompts": prompts_info,
    }
    (args.out / "info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    (args.out / "tokenize.json").write_text(json.dumps(tokenize, indent=1, ensure_ascii=False) + "\n")
    (args.out / "greedy.json").write_text(json.dumps(greedy, indent=1, ensure_ascii=False) + "\n")
    total = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"{args.out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
