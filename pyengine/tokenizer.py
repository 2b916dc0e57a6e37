"""Tokenizers built from GGUF metadata, matching llama.cpp token for token.

Two families, chosen by ``tokenizer.ggml.model``:

* ``"llama"`` -- SentencePiece-style (SPM). Spaces become ``▁`` (U+2581), the text is
  split into characters and adjacent pieces are merged greedily by *score*: the
  highest-scoring pair whose concatenation is a vocabulary entry goes first (ties:
  leftmost). Pieces that are not in the vocabulary fall back to ``<0xXX>`` byte tokens.
* ``"gpt2"`` -- byte-level BPE. A pre-tokenizer (a list of regexes chosen by
  ``tokenizer.ggml.pre``) cuts the text into words; each word's UTF-8 bytes are mapped
  to printable characters (GPT-2's byte-to-unicode table) and merged by *rank*, the
  position of the pair in ``tokenizer.ggml.merges`` (lowest first, ties: leftmost).

Before either runs, special tokens are cut out of the text (llama.cpp's
``tokenizer_st_partition``): every candidate token, longest text first, splits every
remaining raw-text fragment at each of its occurrences. USER_DEFINED tokens (Gemma's
whitespace runs, ``\\n``, HTML tags ...) are always cut out this way; CONTROL and
UNKNOWN tokens (``<bos>``, ``<|im_end|>`` ...) only when ``parse_special`` is true.

Decoding follows llama.cpp's ``token_to_piece``: normal SPM tokens turn ``▁`` back into
spaces, ``<0xXX>`` tokens give one byte, normal BPE tokens go back through the byte
table, and control / user-defined tokens give their text verbatim (control and unknown
tokens give nothing when ``skip_special``). Unlike llama.cpp we never apply its
"clean_up_tokenization_spaces" pass, so decoding is lossless.
"""
from __future__ import annotations

import codecs
import heapq
import re
from typing import Iterable, Sequence

import numpy as np
import regex

from .errors import ModelFileError

# GGUF token types (tokenizer.ggml.token_type), as llama.cpp numbers them.
TOKEN_UNDEFINED, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = 0, 1, 2, 3
TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 4, 5, 6

SUPPORTED_MODELS = ("llama", "gpt2")

# Texts llama.cpp treats as "end of generation" besides EOS (llama-vocab.cpp, EOG list).
END_OF_TURN_TEXTS = (
    "<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "_<EOT>", "<end_of_utterance>",
)

# --- pre-tokenizer regexes (facts from llama.cpp's llm_tokenizer_bpe) -----------------
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class _Pre:
    def __init__(self, patterns: Sequence[str], ignore_merges: bool = False, add_bos: bool = False):
        self.patterns = tuple(patterns)
        self.ignore_merges = ignore_merges
        self.add_bos = add_bos  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


_PRE_DEFAULT = _Pre([r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"])
_PRE_GPT2 = _Pre([_GPT2])
_PRE_STARCODER = _Pre([r"\p{N}", _GPT2])  # digits one by one, then GPT-2's rules
_PRE_LLAMA3 = _Pre([_LLAMA3], ignore_merges=True, add_bos=True)
_PRE_DBRX = _Pre([_LLAMA3])
_PRE_QWEN2 = _Pre([_QWEN2])

PRE_TOKENIZERS: dict[str, _Pre] = {
    "default": _PRE_DEFAULT,
    **dict.fromkeys(("gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"), _PRE_GPT2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"), _PRE_STARCODER),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _PRE_LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _PRE_DBRX),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _PRE_QWEN2),
}


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
        self._types = types
        self._types_list: list[int] | None = None
        self._tok2id: dict[str, int] = dict(zip(tokens, range(n)))  # later duplicates win
        self._piece_cache: dict[int, bytes] = {}
        self._special_index: dict[bool, tuple] = {}

        self._bos = self._special_id(md, "bos", 1 if model == "llama" else 11)
        self._eos = self._special_id(md, "eos", 2 if model == "llama" else 11)
        self._unk = self._special_id(md, "unknown", 0 if model == "llama" else None)
        self._eot = self._special_id(md, "eot", None)
        self._eom = self._special_id(md, "eom", None)
        self._add_bos = bool(md.get("tokenizer.ggml.add_bos_token", self._default_add_bos()))
        self._add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
        tmpl = md.get("tokenizer.chat_template")
        self._chat_template = tmpl if isinstance(tmpl, str) else None

        stop = {i for i in (self._eos, self._eot, self._eom) if i is not None}
        for text in END_OF_TURN_TEXTS:
            i = self._tok2id.get(text)
            if i is not None:
                stop.add(i)
        self._stop_ids = frozenset(stop)

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
        if not all(isinstance(t, str) for t in tokens[:8]):
            raise ModelFileError("tokenizer metadata 'tokenizer.ggml.tokens' is not a list of strings")
        tokens = list(tokens)
        types = md.get("tokenizer.ggml.token_type")
        if types is None:
            types = np.full(len(tokens), TOKEN_NORMAL, dtype=np.int32)
        types = np.asarray(types, dtype=np.int32)
        if types.shape != (len(tokens),):
            raise ModelFileError(f"tokenizer metadata is inconsistent: {len(tokens)} tokens but "
                                 f"{types.size} token types")
        if model == "llama":
            return SPMTokenizer(md, tokens, types)
        return BPETokenizer(md, tokens, types)

    def _default_add_bos(self) -> bool:
        return False

    def _special_id(self, md: dict, name: str, default: int | None) -> int | None:
        key = f"tokenizer.ggml.{name}_token_id"
        if key not in md:
            return default
        v = md[key]
        try:
            v = int(v)
        except (TypeError, ValueError):
            raise ModelFileError(f"tokenizer metadata {key!r} is not an integer: {v!r}") from None
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
        i = int(token_id)
        if not 0 <= i < self._n:
            raise ValueError(f"token id {i} is outside the vocabulary (0..{self._n - 1})")
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
        """Split ``text`` into raw-text fragments (str) and special token ids (int)."""
        text2id, lens, first, rank = self._specials(parse_special)
        if first is None:
            return [text]
        found: set[int] = set()
        get = text2id.get
        for m in first.finditer(text):
            p = m.start()
            for n in lens[text[p]]:
                i = get(text[p:p + n])
                if i is not None:
                    found.add(i)
        if not found:
            return [text]
        frags: list = [text]
        for i in sorted(found, key=rank.__getitem__):
            t = self._tokens[i]
            new: list = []
            for f in frags:
                if type(f) is int or t not in f:
                    new.append(f)
                    continue
                for k, part in enumerate(f.split(t)):
                    if k:
                        new.append(i)
                    if part:
                        new.append(part)
            frags = new
        return frags

    # --- decoding -----------------------------------------------------------------
    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """What ``token_id`` contributes to the byte stream (llama.cpp's token_to_piece)."""
        b = self._piece_cache.get(token_id)
        if b is None:
            i = self._check(token_id)
            b = self._piece(i, int(self._types[i]))
            self._piece_cache[i] = b
        if skip_special and b and int(self._types[token_id]) in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return b""
        return b

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

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` ([{"role", "content"}]) in the model's chat format.

        Encode the result with ``parse_special=True`` (and ``add_bos=True``: the BOS is
        the tokenizer's job, not the template's).
        """
        fmt = self.chat_format
        if fmt is None:
            raise ModelFileError("unsupported chat template (pyengine knows the Gemma "
                                 "<start_of_turn> and ChatML <|im_start|> formats)")
        msgs = [(str(m.get("role", "user")), "" if m.get("content") is None else str(m["content"]))
                for m in messages]
        if fmt == "gemma":
            return _gemma_chat(msgs, add_generation_prompt)
        return _chatml_chat(msgs, add_generation_prompt, _chatml_default_system(self._chat_template))


def _gemma_chat(msgs: list[tuple[str, str]], add_generation_prompt: bool) -> str:
    # Gemma: system text is folded into the first user turn; "assistant" is "model";
    # contents are stripped of surrounding whitespace.
    out = []
    system = ""
    for role, content in msgs:
        if role == "system":
            system += content.strip()
            continue
        role = "model" if role == "assistant" else role
        out.append(f"<start_of_turn>{role}\n")
        if system:
            out.append(system + "\n\n")
            system = ""
        out.append(content.strip() + "<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def _chatml_chat(msgs: list[tuple[str, str]], add_generation_prompt: bool,
                 default_system: str | None) -> str:
    out = []
    if default_system is not None and msgs and msgs[0][0] != "system":
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for role, content in msgs:
        out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


_DEFAULT_SYSTEM = re.compile(
    r"""messages\[0\]\[['"]role['"]\]\s*!=\s*['"]system['"].{0,80}?"""
    r"""(['"])<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>(?:\n|\\n)\1""", re.S)


def _chatml_default_system(template: str | None) -> str | None:
    """A ChatML template's built-in system prompt (SmolLM2 adds one when the
    conversation has none), or None."""
    if not template:
        return None
    m = _DEFAULT_SYSTEM.search(template)
    if not m:
        return None
    return m.group(2).replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')


class SPMTokenizer(Tokenizer):
    """``tokenizer.ggml.model = "llama"``: score-driven bigram merges plus byte fallback."""

    kind = "spm"

    def __init__(self, md: dict, tokens: list[str], types: np.ndarray):
        super().__init__(md, tokens, types, "llama")
        scores = md.get("tokenizer.ggml.scores")
        if scores is None:
            self._scores = [0.0] * self._n
        else:
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (self._n,):
                raise ModelFileError(f"tokenizer metadata is inconsistent: {self._n} tokens but "
                                     f"{scores.size} scores")
            self._scores = scores.tolist()
        self._add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        # byte -> id of its <0xXX> token (falling back to the one-character token, then UNK)
        self._byte_ids: list[int | None] = [None] * 256
        for i in np.nonzero(types == TOKEN_BYTE)[0].tolist():
            t = self._tokens[i]
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                try:
                    self._byte_ids[int(t[3:5], 16)] = i
                except ValueError:
                    pass
        for b in range(256):
            if self._byte_ids[b] is None:
                for key in (f"<0x{b:02X}>", chr(b) if b < 128 else None):
                    if key is not None and key in self._tok2id:
                        self._byte_ids[b] = self._tok2id[key]
                        break
                else:
                    self._byte_ids[b] = self._unk

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
                    if bid is not None:
                        out.append(bid)
            i = nxt[i]

    def _piece(self, i: int, ttype: int) -> bytes:
        t = self._tokens[i]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            return t.encode("utf-8")
        if ttype == TOKEN_NORMAL:
            return t.replace("\u2581", " ").encode("utf-8")
        if ttype == TOKEN_BYTE:
            try:
                return bytes([int(t[3:5], 16)])
            except ValueError:
                return b""
        return b""  # UNUSED / UNDEFINED: llama.cpp prints nothing


def _split_merge(m: str) -> list[str]:
    k = m.find(" ", 1)
    return [m] if k < 0 else [m[:k], m[k + 1:]]


class BPETokenizer(Tokenizer):
    """``tokenizer.ggml.model = "gpt2"``: regex pre-tokenizer plus byte-level BPE merges."""

    kind = "bpe"
    _CACHE_MAX = 100_000

    def __init__(self, md: dict, tokens: list[str], types: np.ndarray):
        pre_name = md.get("tokenizer.ggml.pre", "default")
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise ModelFileError(f"unsupported pre-tokenizer {pre_name!r} for a gpt2 tokenizer "
                                 f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        self.pre_name = pre_name
        self._pre = pre
        super().__init__(md, tokens, types, "gpt2")
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise ModelFileError("the gpt2 tokenizer has no merges (metadata key "
                                 "'tokenizer.ggml.merges' is missing)")
        try:
            # merges are "left right"; llama.cpp splits at the first space after the first
            # character, and the earliest of duplicate pairs wins
            pairs = [m.split(" ", 1) if m[:1] != " " else _split_merge(m) for m in merges]
        except (AttributeError, TypeError):
            raise ModelFileError("tokenizer metadata 'tokenizer.ggml.merges' is not a list of strings") from None
        # (a merge without a space becomes a 1-tuple key that no lookup can hit)
        self._ranks: dict[tuple, int] = dict(zip(
            map(tuple, reversed(pairs)), range(len(pairs) - 1, -1, -1)))
        self._patterns = [regex.compile(p) for p in pre.patterns]
        self._cache: dict[str, tuple[int, ...]] = {}

    def _default_add_bos(self) -> bool:
        return self._pre.add_bos

    def _split(self, text: str) -> list[str]:
        """llama.cpp's unicode_regex_split: each regex cuts every piece further; text
        between matches stays a piece of its own."""
        pieces = [text]
        for pat in self._patterns:
            new = []
            for s in pieces:
                pos = 0
                for m in pat.finditer(s):
                    a, b = m.span()
                    if a == b:
                        continue
                    if a > pos:
                        new.append(s[pos:a])
                    new.append(s[a:b])
                    pos = b
                if pos < len(s):
                    new.append(s[pos:])
            pieces = new
        return pieces

    def _encode_fragments(self, fragments: list, out: list[int]) -> None:
        cache = self._cache
        for f in fragments:
            if type(f) is int:
                out.append(f)
                continue
            for word in self._split(f):
                ids = cache.get(word)
                if ids is None:
                    ids = self._bpe(_utf8(word).decode("latin-1").translate(_LATIN1_TO_GPT2))
                    if len(cache) >= self._CACHE_MAX:
                        cache.clear()
                    cache[word] = ids
                out.extend(ids)

    def _bpe(self, word: str) -> tuple[int, ...]:
        vocab = self._tok2id
        if self._pre.ignore_merges:
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
            r = ranks.get((word[i], word[i + 1]))
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
                r = ranks.get((word[p:left], word[left:left + size]))
                if r is not None:
                    push(heap, (r, p, left, length[p] + size))
            if r2 >= 0:
                r = ranks.get((word[left:r2], word[r2:r2 + length[r2]]))
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
                # llama.cpp falls back to single-byte strings of the piece's UTF-8
                for b in piece.encode("utf-8"):
                    if b < 0x80 and chr(b) in vocab:
                        out.append(vocab[chr(b)])
            i = nxt[i]
        return tuple(out)

    def _piece(self, i: int, ttype: int) -> bytes:
        t = self._tokens[i]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            return t.encode("utf-8")
        if ttype == TOKEN_NORMAL:
            c2b = _CHAR_TO_BYTE
            if all(c in c2b for c in t):
                return bytes(c2b[c] for c in t)
            return b"".join(bytes([c2b[c]]) if c in c2b else c.encode("utf-8") for c in t)
        return b""  # BYTE / UNUSED / UNDEFINED: llama.cpp prints nothing for BPE vocabularies


__all__ = ["Tokenizer", "SPMTokenizer", "BPETokenizer", "StreamDecoder", "PRE_TOKENIZERS",
           "SUPPORTED_MODELS"]
