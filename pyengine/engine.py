"""The engine: a loaded model on a backend, with its tokenizer, KV cache and generation loop."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .backends.base import Backend
from .errors import BackendUnavailableError, PromptTooLongError, PyEngineError
from .errors import check_finite_logits, check_max_tokens, check_n_ctx
from .gguf_file import GGUFFile, open_gguf

BACKENDS = ("numpy", "numba", "cpu", "cuda")
DEFAULT_N_CTX = 4096


def make_backend(name: str) -> Backend:
    """A backend instance by name; ``auto`` picks the fastest one that works here."""
    name = (name or "auto").lower()
    if name == "auto":
        for cand in ("cuda", "cpu", "numba", "numpy"):
            try:
                return make_backend(cand)
            except BackendUnavailableError:
                continue
    if name == "numpy":
        from .backends.numpy_backend import NumpyBackend

        return NumpyBackend()
    if name == "numba":
        try:
            from .backends.numba_backend import NumbaBackend
        except ImportError as e:
            raise BackendUnavailableError(f"numba backend unavailable: {e}") from None
        return NumbaBackend()
    if name == "cpu":
        try:
            from .backends.cpu_backend import CpuBackend
        except ImportError as e:
            raise BackendUnavailableError(
                f"cpu backend unavailable: the native extension is not built ({e}); "
                "reinstall without PYENGINE_NO_NATIVE") from None
        return CpuBackend()
    if name == "cuda":
        try:
            from .backends.cuda_backend import CudaBackend
        except ImportError as e:
            raise BackendUnavailableError(f"cuda backend unavailable: {e}") from None
        return CudaBackend()
    raise PyEngineError(f"unknown backend {name!r} (choose from: auto, {', '.join(BACKENDS)})")


def backend_report() -> list[tuple[str, bool, str]]:
    """(name, usable, description or the reason it is not) for every backend."""
    out = []
    for name in BACKENDS:
        try:
            b = make_backend(name)
            out.append((name, True, b.description or name))
        except PyEngineError as e:
            out.append((name, False, str(e)))
        except Exception as e:  # a broken backend must not break `doctor`
            out.append((name, False, f"{type(e).__name__}: {e}"))
    return out


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    time_to_first_token: float = 0.0
    stop_reason: str = ""
    token_ids: list = field(default_factory=list)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        # decode speed: tokens after the first, which comes out of the prompt pass
        n = self.generated_tokens - 1
        return n / self.generate_seconds if n > 0 and self.generate_seconds else 0.0

    def summary(self) -> str:
        return (f"prompt {self.prompt_tokens} tok, {self.prompt_tps:.1f} tok/s | "
                f"generated {self.generated_tokens} tok, {self.generate_tps:.1f} tok/s | "
                f"first token {self.time_to_first_token * 1000:.0f} ms"
                + (f" | stopped: {self.stop_reason}" if self.stop_reason else ""))


class Model:
    """A GGUF model ready to run. Create with :func:`pyengine.load`."""

    def __init__(self, gf: GGUFFile, backend: Backend, n_ctx: int | None = None):
        from .models import build
        from .tokenizer import Tokenizer

        self.gguf = gf
        self.path = gf.path
        self.file_size = gf.file_size
        self.arch = build(gf)
        self.config = self.arch.cfg
        self.tokenizer = Tokenizer.from_metadata(gf.metadata)
        self.backend = backend
        self.n_vocab = self.config.n_vocab
        ctx_max = self.config.context_length
        self.n_ctx = min(int(check_n_ctx(n_ctx) or min(ctx_max, DEFAULT_N_CTX)), ctx_max)
        backend.prepare(gf.tensors)
        self._cache = None
        self._step = None
        self.n_past = 0
        self.last_stats: GenerationStats | None = None

    # -- text ------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- forward passes -----------------------------------------------------------
    def _new_cache(self):
        return self.backend.kv_cache(self.config.n_layers, self.n_ctx, self.arch.kv_width)

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        if ids.size == 0:
            raise PyEngineError("no tokens to process (empty prompt)")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise PyEngineError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return ids

    def _check_fits(self, n: int, start: int = 0) -> None:
        if start + n > self.n_ctx:
            raise PromptTooLongError(
                f"prompt is {n} tokens but the context holds {self.n_ctx - start} "
                f"(n_ctx {self.n_ctx}; the model allows up to {self.config.context_length}: raise it with --ctx)")

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` from a fresh full forward pass: ``(len(ids), n_vocab)`` float32."""
        ids = self._check_ids(ids)
        self._check_fits(len(ids))
        cache = self._new_cache()
        out = self.arch.forward(self.backend, ids, 0, cache, last_only=False)
        return np.asarray(self.backend.to_numpy(out), dtype=np.float32)

    def reset(self) -> None:
        self.n_past = 0

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the cache, run the whole prompt as one batch; the last position's logits ``(n_vocab,)``."""
        ids = self._check_ids(ids)
        self._check_fits(len(ids))
        if self._cache is None:
            self._cache = self._new_cache()
            self._step = self.backend.make_decode_step(self.arch.forward, self._cache)
        out = self.arch.forward(self.backend, ids, 0, self._cache, last_only=True)
        self.n_past = len(ids)
        return check_finite_logits(np.asarray(self.backend.to_numpy(out), dtype=np.float32).reshape(-1))

    def decode(self, token_id: int) -> np.ndarray:
        """One step: append ``token_id`` at position ``n_past``; its logits ``(n_vocab,)``."""
        if self._cache is None or self.n_past == 0:
            return self.prefill([token_id])
        if self.n_past >= self.n_ctx:
            raise PromptTooLongError(f"context is full ({self.n_ctx} tokens); raise it with --ctx")
        ids = self._check_ids([token_id])
        if self._step is not None:  # the backend's compiled single-call decode step
            out = self._step(int(ids[0]), self.n_past)
        else:
            out = self.arch.forward(self.backend, ids, self.n_past, self._cache, last_only=True)
        self.n_past += 1
        return check_finite_logits(np.asarray(self.backend.to_numpy(out), dtype=np.float32).reshape(-1))

    # -- generation -----------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, *, add_bos: bool = True,
                 parse_special: bool = True, stop_at_eos: bool = True, **sampling) -> Iterator[str]:
        """Stream the continuation of ``prompt`` as text pieces.

        ``sampling``: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed
        (see :class:`pyengine.sampling.SamplingParams`); temperature 0 is greedy.
        Statistics of the run land in ``self.last_stats``.
        """
        from .sampling import Sampler, SamplingParams

        sampler = Sampler(SamplingParams(**sampling))
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_bos=add_bos, parse_special=parse_special)
        else:
            ids = list(prompt)
        stats = GenerationStats(prompt_tokens=len(ids))
        self.last_stats = stats
        self._check_fits(len(ids))
        if check_max_tokens(max_tokens) <= 0:
            return
        t0 = time.perf_counter()
        logits = self.prefill(ids)
        history = list(ids)
        stream = self.tokenizer.stream()
        t_first = None
        while True:
            tok = sampler.sample(logits, history)
            now = time.perf_counter()
            if t_first is None:
                t_first = now
                stats.time_to_first_token = now - t0
                stats.prompt_seconds = now - t0
            if stop_at_eos and tok in self.tokenizer.stop_ids:
                stats.stop_reason = "end of text"
                break
            history.append(tok)
            stats.token_ids.append(tok)
            stats.generated_tokens += 1
            piece = stream.push(tok)
            if piece:
                yield piece
            stats.generate_seconds = time.perf_counter() - t_first
            if stats.generated_tokens >= max_tokens:
                stats.stop_reason = ""
                break
            if self.n_past >= self.n_ctx:
                stats.stop_reason = f"context full ({self.n_ctx} tokens; raise it with --ctx)"
                break
            logits = self.decode(tok)
        tail = stream.flush()
        if tail:
            yield tail
        if t_first is not None:
            stats.generate_seconds = time.perf_counter() - t_first


def load(model: str | os.PathLike, backend: str = "auto", n_ctx: int | None = None,
         progress: bool = True) -> Model:
    """See :func:`pyengine.load`."""
    from .registry import resolve

    path = resolve(str(model), pull_if_missing=True, progress=progress)
    gf = open_gguf(Path(path))
    return Model(gf, make_backend(backend), n_ctx=n_ctx)
