"""Constrained decoding: JSON output (any object, or one matching a JSON Schema) through llguidance.

Why llguidance (and not xgrammar): it installs as one self-contained wheel with no dependencies
(xgrammar requires torch, transformers and triton: gigabytes for a CPU engine), computes the
allowed-token mask of a step in well under a millisecond with its lexer/parser split, and
supports the full JSON-Schema subset OpenAI's ``json_schema`` uses. It is maintained by
Microsoft (guidance) and used by llama.cpp and vLLM.

How it plugs in: :class:`JsonConstraint` is a ``logits_processor`` for
:meth:`pyengine.engine.Model.generate`: before each sampling step it consumes the token sampled
last, asks the matcher for the bitmask of allowed next tokens and sets every other logit to
-inf; once the grammar is complete only the end-of-text token stays allowed.
"""
from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from ..errors import PyEngineError

_lock = threading.Lock()
_tokenizers: dict = {}


def available() -> bool:
    try:
        import llguidance  # noqa: F401

        return True
    except ImportError:
        return False


def _lltokenizer(model):
    """The model's vocabulary as llguidance wants it (built once per model: ~1 s on 150k tokens)."""
    import llguidance

    key = id(model.tokenizer)
    with _lock:
        hit = _tokenizers.get(key)
        if hit is not None and hit[0] is model.tokenizer:
            return hit[1]
        tok = model.tokenizer
        pieces = []
        for i in range(tok.n_vocab):
            b = tok.token_bytes(i)
            if tok.is_control(i):  # special tokens are marked with a leading 0xFF
                b = b"\xff" + tok.id_to_token(i).encode("utf-8")
            pieces.append(b)

        class _Wrap:
            eos_token_id = tok.eos_id if tok.eos_id is not None else 0
            bos_token_id = tok.bos_id
            tokens = pieces
            special_token_ids = [i for i in range(tok.n_vocab) if tok.is_control(i)]

            def __call__(self, s):
                if isinstance(s, bytes):
                    s = s.decode("utf-8", "surrogateescape")
                return tok.encode(s, add_bos=False, parse_special=False)

        eos = sorted(tok.stop_ids) or [_Wrap.eos_token_id]
        ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrap()), n_vocab=model.n_vocab, eos_token=eos)
        _tokenizers[key] = (model.tokenizer, ll)
        return ll


def check_schema(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise PyEngineError("response_format json_schema: 'schema' must be a JSON object")


class JsonConstraint:
    """Masks every token that would make the output leave ``schema`` (None: any JSON object)."""

    def __init__(self, model, schema: dict | None = None):
        if not available():
            raise PyEngineError("structured output needs llguidance: pip install llguidance")
        import llguidance

        if schema is not None:
            check_schema(schema)
        self.model = model
        ll = _lltokenizer(model)
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema if schema is not None else {"type": "object"},
                defaults={"whitespace_flexible": False})
        except ValueError as e:
            raise PyEngineError(f"response_format: invalid JSON schema: {e}") from None
        err = llguidance.LLMatcher.validate_grammar(grammar, ll)
        if err and not err.startswith("WARNING"):
            raise PyEngineError(f"response_format: the JSON schema cannot be used: {' '.join(err.split())[:200]}")
        self.matcher = llguidance.LLMatcher(ll, grammar, log_level=0)
        self._n = model.n_vocab
        self._words = (self._n + 31) // 32
        self._seen = 0

    def __call__(self, generated: list[int], logits: np.ndarray) -> np.ndarray:
        m = self.matcher
        for t in generated[self._seen:]:
            if not m.consume_token(int(t)):
                raise PyEngineError(f"constrained decoding: token {t} rejected: {m.get_error()}")
        self._seen = len(generated)
        if m.is_error():
            raise PyEngineError(f"constrained decoding failed: {m.get_error()}")
        mask = np.frombuffer(m.compute_bitmask(), dtype=np.uint32)[:self._words]
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:self._n].astype(bool)
        if m.is_accepting() or m.is_stopped():  # complete: the end-of-text tokens are allowed
            for s in self.model.tokenizer.stop_ids:
                allowed[s] = True
        if not allowed.any():
            raise PyEngineError("constrained decoding: the grammar allows no token")
        out = np.array(logits, dtype=np.float32, copy=True)
        out[~allowed] = -np.inf
        return out


def validate_json(text: str, schema: dict | None) -> Any:
    return json.loads(text)
