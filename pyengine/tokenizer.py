"""Tokenizers built from GGUF metadata, matching llama.cpp token for token.

Three kinds, chosen by ``tokenizer.ggml.model``:

* ``"llama"`` -- SentencePiece-style (SPM). Spaces become ``▁`` (U+2581), the text is
  split into characters and adjacent pieces are merged greedily by *score*: the
  highest-scoring pair whose concatenation is a vocabulary entry goes first (ties:
  leftmost). Pieces that are not in the vocabulary fall back to ``<0xXX>`` byte tokens.
* ``"gpt2"`` -- byte-level BPE. A pre-tokenizer (a list of regexes chosen by
  ``tokenizer.ggml.pre``) cuts the text into words; each word's UTF-8 bytes are mapped
  to printable characters (GPT-2's byte-to-unicode table) and merged by *rank*, the
  position of the pair in ``tokenizer.ggml.merges`` (lowest first, ties: leftmost).
* ``"gemma4"`` -- BPE on SentencePiece-style text: spaces become ``▁``, the text is cut
  only at newlines, merges run on the characters, ``<0xXX>`` byte fallback.

Before any of them runs, special tokens are cut out of the text (llama.cpp's
``tokenizer_st_partition``): every candidate token, longest text first, splits every
remaining raw-text fragment at each of its occurrences. USER_DEFINED tokens (Gemma's
whitespace runs, ``\\n``, HTML tags ...) are always cut out this way; CONTROL and
UNKNOWN tokens (``<bos>``, ``<|im_end|>`` ...) only when ``parse_special`` is true. Token
types are first adjusted as llama.cpp does (end-of-turn / fill-in-the-middle texts become
control tokens; Phi-3's special tokens swallow the whitespace after them).

Decoding follows llama.cpp's ``token_to_piece``: normal SPM tokens turn ``▁`` back into
spaces, ``<0xXX>`` tokens give one byte, normal BPE tokens go back through the byte
table, and control / user-defined tokens give their text verbatim (control and unknown
tokens give nothing when ``skip_special``). Unlike llama.cpp we never apply its
"clean_up_tokenization_spaces" pass, so decoding is lossless.

Where llama.cpp loses text silently we refuse it or keep it (the only differences from its
ids, each tested): a byte the vocabulary cannot spell (SmolLM2 has no token for 0x04,
Falcon none for 0x0B) raises :class:`TokenizerError` instead of vanishing, and a literal
``▁`` in the text of a SentencePiece-style vocabulary goes in as its three byte tokens
instead of becoming a space. Token ids given to ``decode`` must be integers.

Checked against llama.cpp (tests/test_tokenizer_llamacpp.py): its own tokenizer suite for
14 vocabularies, and ~200 texts per vocabulary (plus the deepseek-r1-qwen, glm4,
chatglm-bpe and tekken pre-tokenizers and the registry's real models) tokenized by
llama.cpp itself.
"""
from __future__ import annotations

import codecs
import heapq
import re
from typing import Iterable, Sequence

import numpy as np
import regex

from .errors import ModelFileError, PyEngineError


class TokenizerError(PyEngineError, ValueError):
    """Text that cannot be tokenized, or a token id that is not one (bad input, not a bad file)."""

# GGUF token types (tokenizer.ggml.token_type), as llama.cpp numbers them.
TOKEN_UNDEFINED, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = 0, 1, 2, 3
TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 4, 5, 6

SUPPORTED_MODELS = ("llama", "gpt2", "gemma4")

# Texts llama.cpp treats as "end of generation" besides EOS (llama-vocab.cpp, EOG list); a
# token with one of these texts is also made a control token whatever the file says.
END_OF_TURN_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
)
# Fill-in-the-middle tokens found by text when the file names none (llama.cpp does the same);
# they become control tokens, and pad / repo / file-separator ones also end generation.
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>",
                "<PRE>", "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>",
                "<SUF>", "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>",
                "<MID>", "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_OLD_KEYS = {"fim_pre": "prefix", "fim_suf": "suffix", "fim_mid": "middle"}
# gpt-oss: always shown, never control
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# --- pre-tokenizer regexes (facts from llama.cpp's llm_tokenizer_bpe) -----------------
# llama.cpp runs these with std::regex (ECMAScript) or with hand-written equivalents; what
# that means here: every non-ASCII whitespace character is seen as "\v" (see _split), so
# "\s" is exactly llama.cpp's whitespace set, and "$" is written "\Z" (ECMAScript's "$"
# never matches before a final newline). Each regex of a list cuts every piece further.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5: combining marks (\p{M}) stick to the letters before them
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral's tekken: a run of upper-case letters followed by lower-case ones (or the
# reverse) is one word -- "(?=\p{L})[^a-z]" is "a letter that is not ASCII lower case"
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?(?:(?=\p{L})[^a-z])*(?:(?=\p{L})[^A-Z])+"
           r"|[^\r\n\p{L}\p{N}]?(?:(?=\p{L})[^a-z])+(?:(?=\p{L})[^A-Z])*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM: letters of the Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee ...
# blocks (an explicit list of ranges, not \p{L}); ASCII and full-width punctuation; CJK
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a"
    "\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556"
    "\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184"
    "\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM = ["[\r\n]", "\\s?[" + _DEEPSEEK_LETTERS + "]+",
                 "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                 "(?r)\\s+\\Z", _CJK, r"\p{N}+"]  # (?r): searched from the end, linear time
_DEEPSEEK_CODER = ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"]
# the default and falcon lists: llama.cpp's \p{P} also covers these ASCII symbols
_FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"]
_NEWLINES = r"[^\n]+|[\n]+"


class _Pre:
    """One pre-tokenizer: the regex list plus the per-name switches llama.cpp sets."""

    def __init__(self, patterns: Sequence[str], ignore_merges: bool = False, add_bos: bool = False,
                 byte_encode: bool = True, escape_whitespace: bool = False, no_bos: bool = False):
        self.patterns = tuple(patterns)
        self.ignore_merges = ignore_merges    # a word that is a token is never merged
        self.add_bos = add_bos                # default when tokenizer.ggml.add_bos_token is absent
        self.byte_encode = byte_encode        # GPT-2 byte table (False: raw UTF-8, <0xXX> fallback)
        self.escape_whitespace = escape_whitespace  # spaces become U+2581 first (SentencePiece-style)
        self.no_bos = no_bos                  # the default BOS id is "none" (GLM-4)


_PRE_DEFAULT = _Pre([r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"])
_PRE_GPT2 = _Pre([_GPT2])
_PRE_STARCODER = _Pre([r"\p{N}", _GPT2])  # digits one by one, then GPT-2's rules
_PRE_LLAMA3 = _Pre([_LLAMA3], ignore_merges=True, add_bos=True)
_PRE_DBRX = _Pre([_LLAMA3])
_PRE_QWEN2 = _Pre([_QWEN2])
_PRE_GEMMA4 = _Pre([_NEWLINES], byte_encode=False, escape_whitespace=True)

PRE_TOKENIZERS: dict[str, _Pre] = {
    "default": _PRE_DEFAULT,
    **dict.fromkeys(("gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"), _PRE_GPT2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"), _PRE_STARCODER),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _PRE_LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _PRE_DBRX),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _PRE_QWEN2),
    "qwen35": _Pre([_QWEN35]),
    "deepseek-llm": _Pre(_DEEPSEEK_LLM),
    "deepseek-coder": _Pre(_DEEPSEEK_CODER),
    "falcon": _Pre(_FALCON),
    "chatglm-bpe": _Pre([_LLAMA3], no_bos=True),
    **dict.fromkeys(("glm4", "glm5"), _Pre([_LLAMA3], ignore_merges=True, no_bos=True)),
    "tekken": _Pre([_TEKKEN], ignore_merges=True, add_bos=True),
    "gemma4": _PRE_GEMMA4,
}

# llama.cpp's whitespace set beyond ASCII; _split shows each of these to the regexes as
# "\v", as llama.cpp does, so that only "\s" matches them
_NONASCII_SPACE = regex.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")

# Letters, digits, marks, punctuation and symbols added by Unicode 16.0 and 17.0 (ranges of
# code points, inclusive). llama.cpp's character tables stop at Unicode 15.1, so to it these
# are unassigned ("other"), while the regex module knows them: _split shows them to the
# \p{..} regexes as U+E000 (a private-use character, "other" too).
_UNICODE_16_17 = (
    (0x558, 0x558), (0x58b, 0x58c), (0x5c8, 0x5c9), (0x88f, 0x88f), (0x897, 0x897),
    (0xb53, 0xb54), (0xc5c, 0xc5c), (0xcdc, 0xcdc), (0x1acf, 0x1af0), (0x1b4e, 0x1b4f),
    (0x1b7f, 0x1b7f), (0x1c89, 0x1c8a), (0x208f, 0x208f), (0x209d, 0x209f), (0x20c1, 0x20c4),
    (0x2427, 0x2429), (0x2b96, 0x2b96), (0x2e60, 0x2e63), (0x31e4, 0x31e5), (0xa7cb, 0xa7cf),
    (0xa7d2, 0xa7d2), (0xa7d4, 0xa7d4), (0xa7da, 0xa7dd), (0xa7e2, 0xa7e2), (0xa7f1, 0xa7f1),
    (0xab6c, 0xab6d), (0xfbc3, 0xfbd2), (0xfd90, 0xfd91), (0xfdc8, 0xfdce), (0x105c0, 0x105f3),
    (0x107bb, 0x107bf), (0x10940, 0x10959), (0x10d40, 0x10d65), (0x10d69, 0x10d85),
    (0x10d8e, 0x10d8f), (0x10ec2, 0x10ec7), (0x10ec9, 0x10eee), (0x10ef0, 0x10efc),
    (0x11380, 0x11389), (0x1138b, 0x1138b), (0x1138e, 0x1138e), (0x11390, 0x113b5),
    (0x113b7, 0x113c0), (0x113c2, 0x113c2), (0x113c5, 0x113c5), (0x113c7, 0x113ca),
    (0x113cc, 0x113d5), (0x113d7, 0x113d8), (0x113e1, 0x113e2), (0x116d0, 0x116e3),
    (0x11b0a, 0x11b0a), (0x11b60, 0x11b67), (0x11bc0, 0x11be1), (0x11bf0, 0x11bf9),
    (0x11db0, 0x11ddb), (0x11de0, 0x11de9), (0x11df0, 0x11df1), (0x11f5a, 0x11f5a),
    (0x1246f, 0x1246f), (0x12475, 0x1247f), (0x12550, 0x12686), (0x13460, 0x143fa),
    (0x16100, 0x16139), (0x16d40, 0x16d79), (0x16ea0, 0x16eb8), (0x16ebb, 0x16ed3),
    (0x16ff2, 0x16ff6), (0x187f8, 0x187ff), (0x18cd6, 0x18cda), (0x18cff, 0x18cff),
    (0x18d09, 0x18d20), (0x18d80, 0x18df2), (0x18e00, 0x19191), (0x191a0, 0x191d2),
    (0x1b123, 0x1b128), (0x1b168, 0x1b168), (0x1cc00, 0x1ccfc), (0x1cd00, 0x1ceb3),
    (0x1ceba, 0x1ced0), (0x1ced2, 0x1ced4), (0x1cedd, 0x1cefd), (0x1d127, 0x1d128),
    (0x1d1eb, 0x1d1ff), (0x1d250, 0x1d281), (0x1d6a6, 0x1d6a6), (0x1db00, 0x1db1c),
    (0x1df1f, 0x1df24), (0x1df2b, 0x1df81), (0x1df90, 0x1df96), (0x1dfcd, 0x1dfff),
    (0x1e5d0, 0x1e5fa), (0x1e5ff, 0x1e5ff), (0x1e6c0, 0x1e6de), (0x1e6e0, 0x1e6f5),
    (0x1e6fe, 0x1e6ff), (0x1f1ae, 0x1f1ae), (0x1f6d8, 0x1f6d9), (0x1f777, 0x1f77a),
    (0x1f7da, 0x1f7db), (0x1f7f1, 0x1f7ff), (0x1f8b2, 0x1f8bb), (0x1f8c0, 0x1f8c1),
    (0x1f8d0, 0x1f8d8), (0x1fa54, 0x1fa57), (0x1fa89, 0x1fa8f), (0x1fabe, 0x1fabe),
    (0x1fac6, 0x1fac6), (0x1fac8, 0x1fac8), (0x1facc, 0x1facd), (0x1fadc, 0x1fadd),
    (0x1fadf, 0x1fadf), (0x1fae9, 0x1faeb), (0x1faef, 0x1faef), (0x1faf9, 0x1fafa),
    (0x1fbcb, 0x1fbef), (0x1fbfa, 0x1fbfa), (0x2b73a, 0x2b73f), (0x2b81e, 0x2b81e),
    (0x2cea2, 0x2cead), (0x323b0, 0x33479), (0x3d000, 0x3fc3f),
)
_AFTER_15_1 = regex.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _UNICODE_16_17) + "]")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_TO_CHAR = _bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
# bytes.decode("latin-1") gives code points 0..255; translate them to GPT-2's characters
_LATIN1_TO_GPT2 = {b: c for b, c in _BYTE_TO_CHAR.items()}


def _utf8(text: str) -> bytes:
    # "surrogateescape" gives back the raw bytes of undecodable argv/stdin input
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape") if _only_escapes(text) else \
            text.encode("utf-8", "replace")


def _only_escapes(text: str) -> bool:
    return all(not (0xD800 <= ord(c) <= 0xDFFF) or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


class StreamDecoder:
    """Turns a stream of token ids into text, never emitting half a UTF-8 character.

    ``push(id)`` returns the text completed by that token (possibly ``""`` while a
    multi-byte character is still arriving in byte-fallback pieces); ``flush()`` returns
    what is left at the end (an incomplete character becomes U+FFFD).
    """

    def __init__(self, tokenizer: "Tokenizer", skip_special: bool = False):
        self._tok = tokenizer
        self._skip = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self._tok.token_bytes(token_id, self._skip))

    def flush(self) -> str:
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out


class Tokenizer:
    """Common part: vocabulary, special tokens, special-token partition, decoding."""

    kind = "?"

    def __init__(self, md: dict, tokens: list[str], types: np.ndarray, model: str):
        self.model = model
        n = len(tokens)
        self._n = n
        # llama.cpp replaces empty strings so that every token has a distinct, findable text
        if "" in tokens:
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self._tokens = tokens
        self._types = types = np.array(types, dtype=np.int32)  # our own copy: adjusted below
        self._tok2id: dict[str, int] = dict(zip(tokens, range(n)))  # later duplicates win
        self._piece_cache: dict[int, bytes] = {}
        self._special_index: dict[bool, tuple] = {}

        bos, eos, unk = self._default_special_ids()
        self._bos = self._special_id(md, "bos", bos)
        self._eos = self._special_id(md, "eos", eos)
        self._unk = self._special_id(md, "unknown", unk)
        self._eot = self._special_id(md, "eot", None)
        self._eom = self._special_id(md, "eom", None)
        self._add_bos = self._final_add_bos(_flag(md, "tokenizer.ggml.add_bos_token",
                                                  self._default_add_bos()))
        self._add_eos = _flag(md, "tokenizer.ggml.add_eos_token", False)
        tmpl = md.get("tokenizer.chat_template")
        self._chat_template = tmpl if isinstance(tmpl, str) else None

        self._stop_ids = frozenset(self._adjust_types(md))
        self._lstrip, self._rstrip = self._strip_attributes(md)

    def _adjust_types(self, md: dict) -> set[int]:
        """Token types as llama.cpp ends up with them, and its end-of-generation set.

        GGUF files often mark end-of-turn or fill-in-the-middle tokens as normal text;
        llama.cpp recognises them by their text and makes them control tokens (so they are
        not cut out of plain text, are printed verbatim, and are hidden by skip_special).
        """
        types, get = self._types, self._tok2id.get

        def control(i: int) -> None:
            if types[i] not in (TOKEN_CONTROL, TOKEN_UNKNOWN):
                types[i] = TOKEN_CONTROL

        eog: set[int] = set()
        for kind, texts in _FIM_TEXTS.items():
            old = _FIM_OLD_KEYS.get(kind)
            named = self._special_id(md, kind, None)
            if named is None and old is not None:
                named = self._special_id(md, old, None)
            if named is None:
                found = [i for i in map(get, texts) if i is not None]
                for i in found:
                    control(i)
                named = found[0] if found else None
            if named is not None and kind in ("fim_pad", "fim_rep", "fim_sep"):
                eog.add(named)
        for text in END_OF_TURN_TEXTS:
            i = get(text)
            if i is not None:
                eog.add(i)
                control(i)
        for text in _ALWAYS_USER_DEFINED:
            i = get(text)
            if i is not None:
                types[i] = TOKEN_USER_DEFINED
        eog.update(i for i in (self._eos, self._eot, self._eom) if i is not None)
        eog_texts = {self._tokens[i]: i for i in eog}
        # o200k_harmony / solar-open: "<|end|>" ends a message, not the generation
        if "<|end|>" in eog_texts and "<|call|>" in eog_texts and "<|return|>" in eog_texts or \
                "<|end|>" in eog_texts and "<|calls|>" in eog_texts and "<|flush|>" in eog_texts:
            i = eog_texts["<|end|>"]
            eog.discard(i)
            types[i] = TOKEN_USER_DEFINED
        # Gemma 4 / PLaMo: "</s>" is plain text there
        if "</s>" in eog_texts and ("<|tool_response>" in eog_texts or "<|plamo:eos|>" in eog_texts):
            i = eog_texts["</s>"]
            eog.discard(i)
            types[i] = TOKEN_NORMAL
        return eog

    # --- construction -------------------------------------------------------------
    @staticmethod
    def from_metadata(md: dict) -> "Tokenizer":
        """Build the tokenizer a GGUF file describes (its metadata as plain Python)."""
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise ModelFileError("the model file has no tokenizer (metadata key "
                                 "'tokenizer.ggml.model' is missing)")
        if model not in SUPPORTED_MODELS:
            raise ModelFileError(f"unsupported tokenizer model {model!r} "
                                 f"(supported: {', '.join(SUPPORTED_MODELS)})")
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise ModelFileError("tokenizer metadata 'tokenizer.ggml.tokens' is missing or empty")
        if not all(isinstance(t, str) for t in tokens):
            raise ModelFileError("tokenizer metadata 'tokenizer.ggml.tokens' is not a list of strings")
        tokens = list(tokens)
        types = md.get("tokenizer.ggml.token_type")
        if types is None:
            types = np.full(len(tokens), TOKEN_NORMAL, dtype=np.int32)
        types = _int_array(types, "tokenizer.ggml.token_type")
        if types.size < len(tokens):  # (llama.cpp ignores extra ones)
            raise ModelFileError(f"tokenizer metadata is inconsistent: {len(tokens)} tokens but "
                                 f"{types.size} token types")
        types = types[:len(tokens)]
        if model == "llama":
            return SPMTokenizer(md, tokens, types)
        return BPETokenizer(md, tokens, types, model)

    def _strip_attributes(self, md: dict) -> tuple[frozenset, frozenset]:
        """Special tokens that swallow the whitespace before (lstrip) or after (rstrip) them
        when cut out of the text. GGUF does not store this; llama.cpp sets it by model name:
        every special token of Phi-3 but <unk>, <s> and <|endoftext|> rstrips (and </s>);
        the <mask> of jina-v2 / nomic-bert-moe and [MASK] of modern-bert lstrip."""
        def lower(key):
            v = md.get(key)
            return v.lower() if isinstance(v, str) else ""
        name, pre, arch = lower("general.name"), lower("tokenizer.ggml.pre"), lower("general.architecture")
        get = self._tok2id.get
        lstrip: set[int] = set()
        rstrip: set[int] = set()
        if any(k in pre for k in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(k in arch for k in ("nomic-bert-moe", "jina-bert-v3")):
            lstrip.add(get("<mask>"))
        elif "phi-3" in name or "phi3" in name:
            special = (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)
            rstrip.update(np.nonzero(np.isin(self._types, special))[0].tolist())
            rstrip.add(get("</s>"))
            rstrip.difference_update(get(t) for t in ("<unk>", "<s>", "<|endoftext|>"))
        elif "modern-bert" in name:
            lstrip.add(get("[MASK]"))
        lstrip.discard(None)
        rstrip.discard(None)
        return frozenset(lstrip), frozenset(rstrip)

    def _default_special_ids(self) -> tuple:
        """(bos, eos, unknown) ids llama.cpp assumes when the file names none."""
        return None, None, None

    def _default_add_bos(self) -> bool:
        return False

    def _final_add_bos(self, add_bos: bool) -> bool:
        return add_bos

    def _special_id(self, md: dict, name: str, default: int | None) -> int | None:
        key = f"tokenizer.ggml.{name}_token_id"
        if key not in md:
            return default
        v = md[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ModelFileError(f"tokenizer metadata {key!r} is not an integer: {v!r}")
        v = int(v)
        if not 0 <= v < self._n:
            raise ModelFileError(f"tokenizer metadata {key!r} = {v} is outside the vocabulary "
                                 f"(0..{self._n - 1})")
        return v

    # --- properties ---------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._n

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def eot_id(self) -> int | None:
        """The end-of-turn token: ``tokenizer.ggml.eot_token_id`` or a known name."""
        if self._eot is not None:
            return self._eot
        for text in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>"):
            if text in self._tok2id:
                return self._tok2id[text]
        return None

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS, EOT/EOM and known end-of-turn tokens."""
        return self._stop_ids

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    @property
    def add_eos(self) -> bool:
        return self._add_eos

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def tokens(self) -> list[str]:
        return self._tokens

    def token_type(self, token_id: int) -> int:
        return int(self._types[self._check(token_id)])

    def is_control(self, token_id: int) -> bool:
        """True for CONTROL (and UNKNOWN-type) tokens: those ``skip_special`` hides."""
        return int(self._types[self._check(token_id)]) in (TOKEN_CONTROL, TOKEN_UNKNOWN)

    def token_to_id(self, text: str) -> int | None:
        return self._tok2id.get(text)

    def id_to_token(self, token_id: int) -> str:
        return self._tokens[self._check(token_id)]

    def _check(self, token_id) -> int:
        # only true integers: int(1.5), int("5") and True would quietly pass for ids
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise TokenizerError(f"a token id must be an integer, not {type(token_id).__name__} "
                                 f"{token_id!r}")
        i = int(token_id)
        if not 0 <= i < self._n:
            raise TokenizerError(f"token id {i} is outside the vocabulary (0..{self._n - 1})")
        return i

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model} n_vocab={self._n} bos={self._bos} eos={self._eos}>"

    # --- encoding -----------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for ``text``, exactly as llama.cpp's ``llama_tokenize``.

        ``add_bos``: add BOS (and EOS) where the model's metadata asks for them
        (llama.cpp's ``add_special``). ``parse_special``: also recognise control tokens
        such as ``<start_of_turn>`` written in the text.
        """
        out: list[int] = []
        if add_bos and self._add_bos:
            if self._bos is None:
                raise ModelFileError("the model asks for a BOS token but defines none")
            out.append(self._bos)
        if text:
            self._encode_fragments(self._partition(text, parse_special), out)
        if add_bos and self._add_eos:
            if self._eos is None:
                raise ModelFileError("the model asks for an EOS token but defines none")
            out.append(self._eos)
        return out

    def _encode_fragments(self, fragments: list, out: list[int]) -> None:
        raise NotImplementedError

    def _specials(self, parse_special: bool) -> tuple:
        """(text -> id, first char -> sorted lengths, first-char regex) for the tokens
        the partition looks for; built on first use."""
        idx = self._special_index.get(parse_special)
        if idx is not None:
            return idx
        kinds = [TOKEN_USER_DEFINED] + ([TOKEN_CONTROL, TOKEN_UNKNOWN] if parse_special else [])
        ids = np.nonzero(np.isin(self._types, kinds))[0].tolist()
        # llama.cpp sorts by UTF-8 length, longest first; equal texts: the first one wins
        order = sorted(ids, key=lambda i: (-len(self._tokens[i].encode("utf-8")), i))
        rank = {}
        text2id: dict[str, int] = {}
        lengths: dict[str, set[int]] = {}
        for r, i in enumerate(order):
            t = self._tokens[i]
            if t in text2id:
                continue
            text2id[t] = i
            rank[i] = r
            lengths.setdefault(t[0], set()).add(len(t))
        lens = {c: sorted(v) for c, v in lengths.items()}
        first = regex.compile("[" + "".join(regex.escape(c) for c in sorted(lens)) + "]") if lens else None
        idx = (text2id, lens, first, rank)
        self._special_index[parse_special] = idx
        return idx

    def _partition(self, text: str, parse_special: bool) -> list:
        """Split ``text`` into raw-text fragments (str) and special token ids (int).

        llama.cpp takes the special tokens one by one (longest first) and splits every raw
        fragment at each occurrence, left to right. Same result here in one pass over the
        occurrences: all of them, in that order, each taken if its characters are all still
        raw text (the marks below); linear in the number of occurrences instead of
        (distinct tokens x fragments), which a text full of distinct special tokens made
        quadratic.
        """
        text2id, lens, first, rank = self._specials(parse_special)
        if first is None:
            return [text]
        get = text2id.get
        where: dict[int, list[int]] = {}  # token id -> its start positions, in order
        for m in first.finditer(text):
            p = m.start()
            for n in lens[text[p]]:
                i = get(text[p:p + n])
                if i is not None:
                    if i in where:
                        where[i].append(p)
                    else:
                        where[i] = [p]
        if not where:
            return [text]
        size = len(text)
        taken = bytearray(size)  # 1: inside a special token, or whitespace one stripped
        starts: dict[int, tuple[int, int]] = {}
        lstrip, rstrip = self._lstrip, self._rstrip
        ws = " \t\n\v\f\r"  # C isspace
        tokens = self._tokens
        for i in sorted(where, key=rank.__getitem__):
            n = len(tokens[i])
            ls, rs = i in lstrip, i in rstrip
            for p in where[i]:
                if taken.find(1, p, p + n) >= 0:
                    continue
                taken[p:p + n] = b"\x01" * n
                starts[p] = (i, n)
                if rs:  # swallow the whitespace after it (up to the next token)
                    q = p + n
                    while q < size and not taken[q] and text[q] in ws:
                        taken[q] = 1
                        q += 1
                if ls:  # ... or before it
                    q = p - 1
                    while q >= 0 and not taken[q] and text[q] in ws:
                        taken[q] = 1
                        q -= 1
        frags: list = []
        pos = 0
        while pos < size:
            if not taken[pos]:
                end = taken.find(1, pos)
                end = size if end < 0 else end
                frags.append(text[pos:end])
                pos = end
            elif pos in starts:
                i, n = starts[pos]
                frags.append(i)
                pos += n
            else:
                pos += 1  # stripped whitespace
        return frags

    # --- decoding -----------------------------------------------------------------
    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """What ``token_id`` contributes to the byte stream (llama.cpp's token_to_piece)."""
        b = self._piece_cache.get(token_id) if type(token_id) is int else None
        if b is None:
            token_id = self._check(token_id)
            b = self._piece(token_id, int(self._types[token_id]))
            self._piece_cache[token_id] = b
        if skip_special and b and int(self._types[token_id]) in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return b""
        return b

    def _literal_space_ids(self) -> list[int] | None:
        """The byte tokens that spell a literal U+2581 (E2 96 81), or None."""
        ids = [self._tok2id.get(f"<0x{b:02X}>") for b in "\u2581".encode("utf-8")]
        return None if None in ids else ids

    def _literal_space(self, out: list[int]) -> None:
        # SentencePiece-style vocabularies write a space as "▁" (U+2581), so a "▁" that is
        # really in the text would come back as a space; it goes in as its three UTF-8
        # byte tokens instead (llama.cpp does not distinguish the two)
        if self._space_byte_ids is None:
            raise TokenizerError("cannot tokenize U+2581 ('\u2581'): this vocabulary writes "
                                 "spaces with it and has no byte tokens to spell it")
        out.extend(self._space_byte_ids)

    def _piece(self, i: int, ttype: int) -> bytes:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 (e.g. a cut-off character) becomes U+FFFD."""
        return b"".join(self.token_bytes(i, skip_special) for i in ids).decode("utf-8", "replace")

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    # --- chat ---------------------------------------------------------------------
    @property
    def chat_format(self) -> str | None:
        """``"gemma"``, ``"chatml"`` or None: recognised from the template text (or, when
        the file has no template, from the turn tokens in the vocabulary)."""
        t = self._chat_template
        if t is not None:
            if "<start_of_turn>" in t:
                return "gemma"
            if "<|im_start|>" in t:
                return "chatml"
            return None
        if "<start_of_turn>" in self._tok2id and "<end_of_turn>" in self._tok2id:
            return "gemma"
        if "<|im_start|>" in self._tok2id and "<|im_end|>" in self._tok2id:
            return "chatml"
        return None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> str:
        """The prompt text for ``messages`` (OpenAI-style dicts): the file's own Jinja template
        rendered in a sandbox, or a Gemma/ChatML fallback for a file without one (see
        :mod:`pyengine.chat_template`).

        Encode the result with ``parse_special=True``.
        """
        from .chat_template import apply_chat_template

        return apply_chat_template(self, messages, add_generation_prompt=add_generation_prompt, tools=tools)


class SPMTokenizer(Tokenizer):
    """``tokenizer.ggml.model = "llama"``: score-driven bigram merges plus byte fallback."""

    kind = "spm"

    def __init__(self, md: dict, tokens: list[str], types: np.ndarray):
        super().__init__(md, tokens, types, "llama")
        scores = md.get("tokenizer.ggml.scores")
        if scores is None:
            self._scores = [0.0] * self._n
        else:
            scores = np.asarray(scores)
            if scores.ndim != 1 or not (np.issubdtype(scores.dtype, np.floating)
                                        or np.issubdtype(scores.dtype, np.integer)):
                raise ModelFileError("tokenizer metadata 'tokenizer.ggml.scores' is not an array "
                                     "of numbers")
            if scores.size < self._n:  # (llama.cpp ignores extra ones)
                raise ModelFileError(f"tokenizer metadata is inconsistent: {self._n} tokens but "
                                     f"{scores.size} scores")
            self._scores = scores[:self._n].astype(np.float32).tolist()
        self._add_space_prefix = _flag(md, "tokenizer.ggml.add_space_prefix", True)
        self._space_byte_ids = self._literal_space_ids()
        # byte -> id of the token written "<0xXX>", else of the one-character token (ASCII);
        # llama.cpp looks them up by text and fails when neither exists (no UNK fallback)
        get = self._tok2id.get
        self._byte_ids: list[int | None] = [
            get(f"<0x{b:02X}>", get(chr(b)) if b < 0x80 else None) for b in range(256)]

    def _default_special_ids(self) -> tuple:
        return 1, 2, 0

    def _default_add_bos(self) -> bool:
        return True

    def _encode_fragments(self, fragments: list, out: list[int]) -> None:
        prev_special = True
        for f in fragments:
            if type(f) is int:
                out.append(f)
                prev_special = True
                continue
            if self._add_space_prefix and prev_special:
                f = " " + f
            if "\u2581" in f:
                for k, part in enumerate(f.split("\u2581")):
                    if k:
                        self._literal_space(out)
                    self._spm(part.replace(" ", "\u2581"), out)
            else:
                self._spm(f.replace(" ", "\u2581"), out)
            prev_special = False

    def _spm(self, text: str, out: list[int]) -> None:
        n = len(text)
        if n == 0:
            return
        vocab = self._tok2id
        scores = self._scores
        # symbol i starts at character i; length[i] == 0 once merged into its left neighbour
        length = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            t = vocab.get(text[i:i + 2])
            if t is not None:
                heap.append((-scores[t], i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            ll, lr = length[left], length[right]
            if ll == 0 or lr == 0 or ll + lr != size:
                continue  # stale: one side has changed since this pair was queued
            length[left] = size
            length[right] = 0
            r2 = nxt[right]
            nxt[left] = r2
            if r2 >= 0:
                prv[r2] = left
            p = prv[left]
            if p >= 0:
                s = length[p] + size
                t = vocab.get(text[p:p + s])
                if t is not None:
                    push(heap, (-scores[t], p, left, s))
            if r2 >= 0:
                s = size + length[r2]
                t = vocab.get(text[left:left + s])
                if t is not None:
                    push(heap, (-scores[t], left, r2, s))
        i = 0
        byte_ids = self._byte_ids
        while i != -1:
            piece = text[i:i + length[i]]
            t = vocab.get(piece)
            if t is not None:
                out.append(t)
            else:
                for b in _utf8(piece):
                    bid = byte_ids[b]
                    if bid is None:
                        raise TokenizerError(
                            f"cannot tokenize {piece!r}: the vocabulary has neither a token for "
                            f"it nor a byte token for 0x{b:02X}")
                    out.append(bid)
            i = nxt[i]

    def _piece(self, i: int, ttype: int) -> bytes:
        t = self._tokens[i]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            return t.encode("utf-8")
        if ttype == TOKEN_NORMAL:
            return t.replace("\u2581", " ").encode("utf-8")
        if ttype == TOKEN_BYTE:
            return _byte_token(t)
        return b""  # UNUSED / UNDEFINED: llama.cpp prints nothing


def _int_array(v, key: str) -> np.ndarray:
    a = np.asarray(v) if not isinstance(v, np.ndarray) else v
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ModelFileError(f"tokenizer metadata {key!r} is not an array of integers")
    if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise ModelFileError(f"tokenizer metadata {key!r} holds values outside int32")
    return a.astype(np.int32)


def _flag(md: dict, key: str, default: bool) -> bool:
    """A boolean metadata value (GGUF bool, or 0/1)."""
    v = md.get(key, default)
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise ModelFileError(f"tokenizer metadata {key!r} is not a boolean: {v!r}")


def _byte_token(t: str) -> bytes:
    """The byte a ``<0xXX>`` token stands for."""
    if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        try:
            return bytes([int(t[3:5], 16)])
        except ValueError:
            pass
    return b""


class BPETokenizer(Tokenizer):
    """``tokenizer.ggml.model = "gpt2"`` (or ``"gemma4"``): regex pre-tokenizer plus BPE merges.

    ``gpt2``: byte-level -- each word's UTF-8 bytes go through GPT-2's byte table first.
    ``gemma4``: SentencePiece-style BPE -- spaces become ``▁``, the text is cut only at
    newlines, merges run on the raw characters and unknown pieces fall back to ``<0xXX>``.
    """

    kind = "bpe"
    _CACHE_MAX = 100_000

    def __init__(self, md: dict, tokens: list[str], types: np.ndarray, model: str = "gpt2"):
        if model == "gemma4":
            pre_name = "gemma4"  # llama.cpp ignores tokenizer.ggml.pre for this model
        else:
            pre_name = md.get("tokenizer.ggml.pre", "default")
        pre = PRE_TOKENIZERS.get(pre_name) if isinstance(pre_name, str) else None
        if pre is None:
            raise ModelFileError(f"unsupported pre-tokenizer {pre_name!r} for a {model} tokenizer "
                                 f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        self.pre_name = pre_name
        self._pre = pre
        super().__init__(md, tokens, types, model)
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise ModelFileError(f"the {model} tokenizer has no merges (metadata key "
                                 "'tokenizer.ggml.merges' is missing)")
        if not isinstance(merges, (list, tuple)) or not all(isinstance(m, str) for m in merges):
            raise ModelFileError("tokenizer metadata 'tokenizer.ggml.merges' is not a list of strings")
        # merges are "left right"; llama.cpp splits them at the first space after the first
        # character, and the earliest of duplicate pairs wins. The pieces merged never hold
        # a raw space (spaces are "Ġ" or "▁" by then), so the pair (left, right) is found
        # by the string left + " " + right, which is the merge text itself: no splitting
        # needed (a merge with no space after its first character can never be found).
        n = len(merges)
        self._ranks: dict[str, int] = dict(zip(reversed(merges), range(n - 1, -1, -1)))
        self._patterns = [(regex.compile(p), "\\p{" in p) for p in pre.patterns]
        self._cache: dict[str, tuple[int, ...]] = {}
        if pre.byte_encode:
            # a piece outside the vocabulary: llama.cpp looks up each of its UTF-8 bytes as a
            # one-byte string (only ASCII can be one)
            self._fallback = [self._tok2id.get(chr(b)) if b < 0x80 else None for b in range(256)]
        else:
            self._fallback = [self._tok2id.get(f"<0x{b:02X}>") for b in range(256)]
        self._space_byte_ids = self._literal_space_ids() if pre.escape_whitespace else None

    def merge_rank(self, left: str, right: str) -> int | None:
        """Rank of merging ``left`` and ``right`` (lower merges first), or None."""
        return self._ranks.get(left + " " + right)

    def _default_special_ids(self) -> tuple:
        if self.model == "gemma4":
            return None, None, None
        return (None if self._pre.no_bos else 11), 11, None

    def _default_add_bos(self) -> bool:
        return self._pre.add_bos or self.model == "gemma4"

    def _final_add_bos(self, add_bos: bool) -> bool:
        # llama.cpp forces BOS on for Gemma 4 whatever the file says
        return True if self.model == "gemma4" else add_bos

    def _split(self, text: str) -> list[str]:
        """llama.cpp's unicode_regex_split: each regex cuts every piece further; text
        between matches stays a piece of its own.

        The regexes see non-ASCII whitespace as "\\v", and the category ones see characters
        newer than Unicode 15.1 as unassigned (one character for one, so the cuts fall at
        the same places in ``text``), as llama.cpp's std::regex does.
        """
        raw = _NONASCII_SPACE.sub("\v", text) if _NONASCII_SPACE.search(text) else text
        cat = _AFTER_15_1.sub("\ue000", raw) if _AFTER_15_1.search(raw) else raw
        spans = [(0, len(text))]
        for pat, by_category in self._patterns:
            # (llama.cpp runs regexes with \p{..} on a text of character categories, the
            # others on the characters themselves)
            seen = cat if by_category else raw
            new = []
            for lo, hi in spans:
                pos = lo
                for m in pat.finditer(seen, lo, hi):
                    a, b = m.span()
                    if a == b:
                        continue
                    if a > pos:
                        new.append((pos, a))
                    new.append((a, b))
                    pos = b
                if pos < hi:
                    new.append((pos, hi))
            spans = new
        return [text[a:b] for a, b in spans]

    def _encode_fragments(self, fragments: list, out: list[int]) -> None:
        cache = self._cache
        byte_encode = self._pre.byte_encode
        escape = self._pre.escape_whitespace
        for f in fragments:
            if type(f) is int:
                out.append(f)
                continue
            if escape:
                if "\u2581" in f:
                    self._encode_literal_spaces(f, out)
                    continue
                f = f.replace(" ", "\u2581")
            for word in self._split(f):
                ids = cache.get(word)
                if ids is None:
                    sym = _utf8(word).decode("latin-1").translate(_LATIN1_TO_GPT2) if byte_encode else word
                    ids = self._bpe(sym)
                    if len(cache) >= self._CACHE_MAX:
                        cache.clear()
                    cache[word] = ids
                out.extend(ids)

    def _encode_literal_spaces(self, f: str, out: list[int]) -> None:
        # a "▁" written in the text is not a space: it goes in as its three UTF-8 bytes,
        # so that decoding gives it back (llama.cpp turns it into a space)
        for k, part in enumerate(f.split("\u2581")):
            if k:
                self._literal_space(out)
            if part:
                self._encode_fragments([part], out)

    def _bpe(self, word: str) -> tuple[int, ...]:
        vocab = self._tok2id
        if self._pre.ignore_merges or (self.model == "gemma4" and word.strip("\n") == ""):
            # (Gemma 4: a run of newlines that is a token stays whole)
            t = vocab.get(word)
            if t is not None:
                return (t,)
        n = len(word)
        if n == 0:
            return ()
        ranks = self._ranks
        length = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get(word[i] + " " + word[i + 1])
            if r is not None:
                heap.append((r, i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            ll, lr = length[left], length[right]
            if ll == 0 or lr == 0 or ll + lr != size:
                continue  # stale
            length[left] = size
            length[right] = 0
            r2 = nxt[right]
            nxt[left] = r2
            if r2 >= 0:
                prv[r2] = left
            p = prv[left]
            if p >= 0:
                r = ranks.get(word[p:left] + " " + word[left:left + size])
                if r is not None:
                    push(heap, (r, p, left, length[p] + size))
            if r2 >= 0:
                r = ranks.get(word[left:r2] + " " + word[r2:r2 + length[r2]])
                if r is not None:
                    push(heap, (r, left, r2, size + length[r2]))
        out = []
        i = 0
        while i != -1:
            piece = word[i:i + length[i]]
            t = vocab.get(piece)
            if t is not None:
                out.append(t)
            else:
                fb = self._fallback
                for b in piece.encode("utf-8"):
                    t = fb[b]
                    if t is None:
                        raise TokenizerError(self._unencodable(word, piece))
                    out.append(t)
            i = nxt[i]
        return tuple(out)

    def _unencodable(self, word: str, piece: str) -> str:
        if self._pre.byte_encode:
            word = bytes(_CHAR_TO_BYTE.get(c, 0x3F) for c in word).decode("utf-8", "replace")
            raw = bytes(_CHAR_TO_BYTE.get(c, 0x3F) for c in piece)
        else:
            raw = piece.encode("utf-8")
        missing = " ".join(f"0x{b:02X}" for b in dict.fromkeys(raw) if self._fallback[b] is None)
        shown = word if len(word) <= 40 else word[:37] + "..."
        return (f"cannot tokenize {shown!r}: the vocabulary has no token for the byte(s) "
                f"{missing} in it (llama.cpp would silently drop them)")

    def _piece(self, i: int, ttype: int) -> bytes:
        t = self._tokens[i]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            return t.encode("utf-8")
        if ttype == TOKEN_NORMAL:
            if not self._pre.byte_encode:
                return t.replace("\u2581", " ").encode("utf-8")
            c2b = _CHAR_TO_BYTE
            if all(c in c2b for c in t):
                return bytes(c2b[c] for c in t)
            return b"".join(bytes([c2b[c]]) if c in c2b else c.encode("utf-8") for c in t)
        if ttype == TOKEN_BYTE:
            return _byte_token(t)
        return b""  # UNUSED / UNDEFINED: llama.cpp prints nothing


__all__ = ["Tokenizer", "SPMTokenizer", "BPETokenizer", "StreamDecoder", "TokenizerError",
           "PRE_TOKENIZERS", "SUPPORTED_MODELS"]
