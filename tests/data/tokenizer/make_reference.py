"""Write llama.cpp's token ids for a wider set of texts than its own suite, per vocabulary.

Provenance: the ids come from llama.cpp itself (the copy vendored in llama-cpp-python 0.3.36,
ggml build 0c1e570; the library used was built from a tree whose src/llama-vocab.cpp,
unicode.cpp and unicode-data.cpp are byte-identical to the sdist's), called through its
public C API by ``llama_tokenize_ref.cpp`` (this folder) on the ``ggml-vocab-*.gguf`` files
of the same sdist. Vocabularies for pre-tokenizers
that have no file of their own (deepseek-r1-qwen, glm4, chatglm-bpe, tekken) are made by
rewriting the ``tokenizer.ggml.pre`` string of another vocabulary (the files hold no tensors,
so only the header changes).

    g++ -O1 -std=c++17 llama_tokenize_ref.cpp -I$LLAMA/include -I$LLAMA/ggml/include \\
        -L$LLAMA/build/bin -lllama -Wl,-rpath,$LLAMA/build/bin -o /tmp/llama_tokenize_ref
    python make_reference.py /tmp/llama_tokenize_ref

The same texts also go through the tokenizers of the registry's real models
(``llamacpp_model_<registry name>.json``, {model, made_with, cases}).

Output: ``llamacpp_<name>.json`` = {vocab, pre, made_with, cases: [{text, ids, ids_special,
detok_hex}]}: ``ids`` with add_special = parse_special = false (as llama.cpp's suite),
``ids_special`` with both true (BOS/EOS as the file asks, control tokens parsed),
``detok_hex`` the bytes of llama_detokenize(ids, remove_special=false, unparse_special=true)
in hex, or null where they are exactly the text (llama.cpp round-trips it).
"""
from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))
from llamacpp_sdist import vocab_dir  # noqa: E402

# (output name, vocabulary file, replacement tokenizer.ggml.pre or None)
VOCABS = [(n, n, None) for n in (
    "llama-bpe", "llama-spm", "qwen2", "qwen35", "deepseek-llm", "deepseek-coder", "phi-3",
    "falcon", "gpt-2", "starcoder", "refact", "mpt", "command-r", "gemma-4", "aquila",
    "baichuan", "gpt-neox")] + [
    ("deepseek-r1-qwen", "qwen2", "deepseek-r1-qwen"),
    ("glm4", "llama-bpe", "glm4"),
    ("chatglm-bpe", "llama-bpe", "chatglm-bpe"),
    ("tekken", "llama-bpe", "tekken"),
]

FIXED = [
    # whitespace of every kind llama.cpp knows (and some it does not)
    "a\u00a0b\u2003c\u3000d\u0085e\u2028f\u2029g\u202fh\u205fi\u1680j", "x\x0by\x0cz\x1cw\x1fv",
    " \u3000 \u3000\n\u00a0\n", "tab\t\tend\t", "\r\n\r\n  \r \n", "   \n\n\t  x  ", "\u3000\u3000",
    # contractions, case, apostrophes
    "I'M HERE, YOU'RE THERE, WE'LL SEE, IT'S, SHE'D, THEY'VE, DON'T", "'S 'T 're 'Ve x'LL",
    "l'été, c'est l'hôpital", "‘quoted’ “double” 'single'",
    # digits
    "1 12 123 1234 12345 123456 1234567", "٣٤٥٦ ①②③ ¼½ Ⅻ 𝟙𝟚𝟛", "3.14159e-10 0x1F 1_000_000",
    # letters with marks, scripts, CJK, emoji
    "e\u0301 a\u0308 n\u0303 \u0915\u093f\u0928\u094d\u0926\u0940", "Ünïcödé ÉCOLEécole ǅungla ǈ",
    "Γειά σου Κόσμε Привет мир Բարեւ ქართული ᏣᎳᎩ", "日本語のテキスト、句読点。カタカナ ﾊﾝｶｸ",
    "한국어 텍스트입니다 中文标点，符号！？", "مرحبا بالعالم שלום עולם",
    "👩‍👩‍👧‍👦 🇯🇵 🏳️‍🌈 👍🏽 ❤️", "ａｂｃ　ＡＢＣ！＂＃＄％＆（）＊＋，－．／：；＜＝＞？＠［］＾＿｀｛｜｝～",
    # code and mixed case (tekken, deepseek-coder)
    "HTTPServer XMLHttpRequest iPhone McDonald's getHTTPResponseCode ABCdefGHI abcDEF",
    "def f(x):\n    return x**2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "path/to/file.py:12 // comment /* block */ a->b; c::d<e>", "<div class=\"x\">&nbsp;</div>",
    # special-token text and the SentencePiece space mark
    "<s>hi</s> <|endoftext|> <|im_start|>user\nhi<|im_end|> <|begin_of_text|> <bos><eos>",
    "<|user|>\n hi <|end|>\n<|assistant|>\n", "\u2581 a\u2581b \u2581\u2581",
    # controls and odd code points
    "a\x01b\x02c\x07d\x1be\x7ff", "zero\u200bwidth\u200djoiner\ufeffbom", "\ue000\U000f0000 private",
    "", " ", "  ", "\n",
    # characters newer than llama.cpp's Unicode 15.1 tables (16.0: Cyrillic TJE, Arabic pepet,
    # Garay; 17.0: CJK extension J) next to letters, digits and marks
    "a\u1c89b \u1c8a1 x\u0897y \U00010d40\U00010d41 2\U00010d50 \U000323b0\U000323b1 c\u0558",
    "\u2e60!\u20c1$ \U0001fac8\U0001fadc e\u1acfz",
]

POOLS = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "     \t\n\r",
         "'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`", "éèàüöäßçñøåÉÜÖ", "\u0301\u0308\u0327\u093f\u094d",
         "日本語中文한국어テスト", "αβγδЖЯжя", "\u00a0\u2003\u3000\u0085\u2028",
         "😀🚀👍🏽🇯🇵\u200d", "٣٤①½", "，。！？：；（）"]


def texts_for(name: str) -> list[str]:
    suite = []
    inp = vocab_dir() / f"ggml-vocab-{name}.gguf.inp"
    if inp.exists():
        suite = inp.read_bytes().decode("utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    rng = random.Random(8)  # the same random texts for every vocabulary
    rand = []
    for _ in range(120):
        n = rng.randint(1, 40)
        pools = rng.sample(POOLS, rng.randint(1, 4))
        rand.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    seen, out = set(), []
    for t in suite + FIXED + rand:
        if t not in seen and "\0" not in t:
            seen.add(t)
            out.append(t)
    return out


def with_pre(src: Path, pre: str, dst: Path) -> None:
    data = src.read_bytes()
    key = b"tokenizer.ggml.pre"
    k = data.index(struct.pack("<Q", len(key)) + key)
    p = k + 8 + len(key)
    assert struct.unpack_from("<I", data, p)[0] == 8  # a string value
    n = struct.unpack_from("<Q", data, p + 4)[0]
    assert struct.unpack_from("<Q", data, 8)[0] == 0  # no tensors: nothing after the header moves
    val = pre.encode()
    dst.write_bytes(data[:p + 4] + struct.pack("<Q", len(val)) + val + data[p + 12 + n:])


def run(tool: str, gguf: Path, texts: list[str]) -> list[dict]:
    stdin = b"".join(b"%08x" % len(b) + b for b in (t.encode("utf-8") for t in texts))
    r = subprocess.run([tool, str(gguf)], input=stdin, capture_output=True, check=True)
    lines = r.stdout.decode("ascii").splitlines()
    assert len(lines) == 2 * len(texts), (len(lines), len(texts))
    cases = []
    for k, text in enumerate(texts):
        ids = {}
        for line in lines[2 * k:2 * k + 2]:
            head, hexed = line.split("|")
            a, s, *rest = head.split()
            ids[(a, s)] = ([int(x) for x in rest], bytes.fromhex(hexed))
        plain, detok = ids[("0", "0")]
        same = detok == text.encode("utf-8")
        cases.append({"text": text, "ids": plain, "ids_special": ids[("1", "1")][0],
                      "detok_hex": None if same else detok.hex()})
    return cases


# real models of the registry (their tokenizers as users meet them): registry name
MODELS = ("gemma3-270m", "smollm2-135m", "qwen2.5-coder-0.5b")


def main(tool: str) -> None:
    from pyengine.registry import resolve

    for name in MODELS:
        cases = run(tool, Path(resolve(name, pull_if_missing=True, progress=False)), texts_for(""))
        write(f"model_{name}", {"model": name}, cases)
    with tempfile.TemporaryDirectory() as tmp:
        for name, src, pre in VOCABS:
            gguf = vocab_dir() / f"ggml-vocab-{src}.gguf"
            if pre is not None:
                patched = Path(tmp) / f"{name}.gguf"
                with_pre(gguf, pre, patched)
                gguf = patched
            write(name, {"vocab": src, "pre": pre}, run(tool, gguf, texts_for(src)))


def write(name: str, head: dict, cases: list[dict]) -> None:
    head = json.dumps({**head, "made_with": "llama.cpp 0c1e570 (llama-cpp-python 0.3.36) via "
                                           "llama_tokenize_ref.cpp"})
    body = ",\n".join(json.dumps(c, separators=(",", ":"), ensure_ascii=False) for c in cases)
    (HERE / f"llamacpp_{name}.json").write_text(
        head[:-1] + ', "cases": [\n' + body + "\n]}\n", encoding="utf-8")
    print(name, len(cases))


if __name__ == "__main__":
    main(sys.argv[1])
