"""The engine: a loaded model on a backend, with its tokenizer, KV cache and generation loop."""
from __future__ import annotations

import contextlib
import os
import threading
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
    """What one generation did. ``prompt_tokens`` is the whole prompt; of it,
    ``prompt_reused`` tokens were already in the sequence's KV cache (a common prefix with
    what it held: a chat's earlier turns) and ``prompt_processed`` were run through the model."""
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    time_to_first_token: float = 0.0
    stop_reason: str = ""
    token_ids: list = field(default_factory=list)
    prompt_reused: int = 0
    prompt_processed: int = 0

    @property
    def prompt_tps(self) -> float:
        n = self.prompt_processed or self.prompt_tokens
        return n / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        # decode speed: tokens after the first, which comes out of the prompt pass
        n = self.generated_tokens - 1
        return n / self.generate_seconds if n > 0 and self.generate_seconds else 0.0

    def summary(self) -> str:
        reused = f" ({self.prompt_reused} reused from cache)" if self.prompt_reused else ""
        return (f"prompt {self.prompt_tokens} tok{reused}, {self.prompt_tps:.1f} tok/s | "
                f"generated {self.generated_tokens} tok, {self.generate_tps:.1f} tok/s | "
                f"first token {self.time_to_first_token * 1000:.0f} ms"
                + (f" | stopped: {self.stop_reason}" if self.stop_reason else ""))


class _FairLock:
    """A FIFO lock: threads get it in the order they asked (a plain Lock lets one thread
    take it again and again, starving the others). Not reentrant."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def __enter__(self):
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while self._serving != ticket:
                    self._cond.wait()
            except BaseException:  # Ctrl-C while waiting: give the ticket up, or the line stalls
                self._abandoned.add(ticket)
                self._advance()
                raise

    def _advance(self) -> None:  # the condition is held
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._advance()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Sequence_:
    """One token sequence's state: its own KV cache, the ids in it (``n_past = len(ids)``) and,
    on backends that compile one (cpu), the single-call decode step bound to *that* cache —
    built when the cache is created (the trace writes scratch rows into the cache, so it must
    run before any real position is stored).

    A sequence is used by one thread at a time (the Model hands them out; see
    :meth:`Model.sequence`). Forward passes of different sequences of one Model are
    serialised by the Model's compute lock, in arrival order, one prompt chunk or one decode
    step at a time, so concurrent generations interleave token by token.
    """

    def __init__(self, model: "Model"):
        self.model = model
        self.cache = None
        self.step = None
        self.ids: list[int] = []
        self.last_used = 0.0

    @property
    def n_past(self) -> int:
        return len(self.ids)

    def _ensure_cache(self) -> None:
        if self.cache is None:
            m = self.model
            self.cache = m._new_cache()
            with m._compute:
                self.step = m.backend.make_decode_step(m.arch.forward, self.cache)

    def truncate(self, n: int) -> None:
        """Forget every position from ``n`` on (what is stored there is overwritten later)."""
        del self.ids[max(0, int(n)):]

    def reset(self) -> None:
        self.ids = []

    def prefill(self, ids: Sequence[int], reuse: bool = True) -> tuple[np.ndarray, int]:
        """Bring the cache to hold exactly ``ids``; the logits after the last one ``(n_vocab,)``
        and how many leading ids were already in the cache (kept, not recomputed).

        At least the last id is always run, since its logits are what comes out.
        """
        m = self.model
        arr = m._check_ids(ids)
        m._check_fits(len(arr))
        ids = arr.tolist()
        self._ensure_cache()
        k = common_prefix(self.ids, ids) if reuse else 0
        k = min(k, len(ids) - 1)
        self.ids = self.ids[:k]  # positions >= k are now free; kept only if the forward succeeds
        with m._compute:
            out = m.arch.forward(m.backend, arr[k:], k, self.cache, last_only=True)
            logits = check_finite_logits(np.asarray(m.backend.to_numpy(out), dtype=np.float32).reshape(-1))
        self.ids = ids
        self.last_used = time.monotonic()
        return logits, k

    def decode(self, token_id: int) -> np.ndarray:
        """Append ``token_id`` at position ``n_past``; its logits ``(n_vocab,)``."""
        m = self.model
        if self.cache is None or not self.ids:
            return self.prefill([token_id], reuse=False)[0]
        if self.n_past >= m.n_ctx:
            raise PromptTooLongError(f"context is full ({m.n_ctx} tokens); raise it with --ctx")
        ids = m._check_ids([token_id])
        with m._compute:
            if self.step is not None:  # the backend's compiled single-call decode step
                out = self.step(int(ids[0]), self.n_past)
            else:
                out = m.arch.forward(m.backend, ids, self.n_past, self.cache, last_only=True)
            logits = check_finite_logits(np.asarray(m.backend.to_numpy(out), dtype=np.float32).reshape(-1))
        self.ids.append(int(ids[0]))
        self.last_used = time.monotonic()
        return logits


class Model:
    """A GGUF model ready to run. Create with :func:`pyengine.load`.

    Threads: a Model may be shared by several threads. Each :meth:`generate` runs on its own
    :class:`Sequence_` (own KV cache and position), taken from a pool of ``max_sequences``
    (a caller beyond that waits for one to free up); forward passes are serialised by a FIFO
    compute lock one prompt or one token at a time, so concurrent generations interleave
    and never share KV state: with the same seed each gives the text it gives alone.
    The pool keeps finished sequences' caches, and a new generation takes the idle one with
    the longest common prefix, so a repeated conversation prefix is not recomputed.
    The low-level :meth:`prefill` / :meth:`decode` / :attr:`n_past` API works on one default
    sequence and is for a single thread.
    """

    def __init__(self, gf: GGUFFile, backend: Backend, n_ctx: int | None = None, max_sequences: int = 4,
                 weights: str = "auto", progress: bool = False):
        from .models import build
        from .tokenizer import Tokenizer
        from .weight_pages import place_weights

        self.gguf = gf
        self.path = gf.path
        self.file_size = gf.file_size
        # before build(): architectures may take row slices of a tensor (phi3's fused qkv)
        self.weights_placement = place_weights(gf, weights, backend.name, progress)  # one line, for -v
        self.arch = build(gf)  # the architecture's graph: a models.common.Transformer
        self.config = self.arch.cfg
        self.tokenizer = Tokenizer.from_metadata(gf.metadata)
        self.backend = backend
        self.n_vocab = self.config.n_vocab
        ctx_max = self.config.context_length
        n_ctx = check_n_ctx(n_ctx)
        if n_ctx and int(n_ctx) > ctx_max:  # never capped silently
            raise PyEngineError(f"n_ctx {int(n_ctx)} is above the model's context length {ctx_max}")
        self.n_ctx = int(n_ctx or min(ctx_max, DEFAULT_N_CTX))
        backend.prepare(gf.tensors)
        self._compute = _FairLock()
        self._pool_cond = threading.Condition()
        self.max_sequences = max(1, int(max_sequences))
        self._default = Sequence_(self)
        self._idle: list[Sequence_] = [self._default]
        self._n_seqs = 1
        self._last_seq = self._default
        self.last_stats: GenerationStats | None = None

    # -- the default sequence (single-threaded low-level API; kept for compatibility) -----
    @property
    def n_past(self) -> int:
        return self._last_seq.n_past

    @property
    def _cache(self):
        return self._default.cache

    @property
    def _step(self):
        return self._default.step

    @_step.setter
    def _step(self, fn):  # benchmarks wrap the compiled step to count native calls
        self._default.step = fn

    # -- text ------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- chat --------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, **extra) -> str:
        """The prompt text for OpenAI-style ``messages`` in this model's chat format: the
        file's own Jinja template rendered in a sandbox (or the Gemma/ChatML fallback for a
        file without one). ``tools``: OpenAI tool definitions, given to the template."""
        from .chat_template import apply_chat_template

        return apply_chat_template(self.tokenizer, messages, add_generation_prompt=add_generation_prompt,
                                   tools=tools, **extra)

    def chat_tokens(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None, **extra) -> list[int]:
        """Token ids of the rendered conversation. The BOS is added once: when the template
        already writes it (Llama 3, Gemma), the tokenizer does not add a second one."""
        text = self.apply_chat_template(messages, add_generation_prompt, tools, **extra)
        return self.encode_chat_text(text)

    def encode_chat_text(self, text: str) -> list[int]:
        ids = self.tokenize(text, add_bos=True, parse_special=True)
        bos = self.tokenizer.bos_id
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    # -- cost --------------------------------------------------------------------
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one generated token reads, from the file's tensor table: the
        figure that bounds generation speed (tokens/s <= memory bandwidth / this).

        Every tensor counts once (matrices, norms, biases, MoE routers, shared experts),
        except two whose use depends on the token:

        * the token embedding: one row, the token's own -- unless no ``output.weight`` is
          in the file (the output projection is tied to the embedding), then all of it,
          since every logit reads its row;
        * MoE expert stacks (``*_exps``, ``n_expert`` experts on the outermost axis): the
          router picks ``top_k`` experts per layer, so ``top_k / n_expert`` of the bytes.

        The KV cache and the activations are not weights and are not counted.
        """
        tensors = self.gguf.tensors
        emb = tensors.get("token_embd.weight")
        routing = getattr(self.config, "routing", None)  # MoE configurations only
        total = 0
        for name, t in tensors.items():
            if t is emb and "output.weight" in tensors:
                total += t.row_bytes
            elif "_exps." in name and routing is not None:
                total += t.n_bytes // t.shape[0] * routing.top_k
            else:
                total += t.n_bytes
        return total

    def kv_cache_bytes(self) -> int:
        """Bytes of one sequence's KV cache at full ``n_ctx`` (pages are touched as positions fill)."""
        return self.arch.kv_cache_bytes(self.n_ctx)

    # -- forward passes -----------------------------------------------------------
    def _new_cache(self):
        return self.arch.kv_cache(self.backend, self.n_ctx)

    def _check_ids(self, ids) -> np.ndarray:
        """``ids`` as int32 ``(n,)``: integers only (no floats, strings or bools cast silently), in range."""
        if not isinstance(ids, np.ndarray):  # Python values: bools and floats would be cast silently
            for x in (ids if isinstance(ids, (list, tuple)) else [ids]):
                if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                    raise PyEngineError(f"token ids must be integers, got {x!r}")
        arr = np.asarray(ids).reshape(-1)
        if arr.size and arr.dtype.kind not in "iu":
            raise PyEngineError(f"token ids must be integers, got an array of {arr.dtype}")
        if arr.size == 0:
            raise PyEngineError("no tokens to process (empty prompt)")
        if arr.min() < 0 or arr.max() >= self.n_vocab:
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise PyEngineError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return arr.astype(np.int32)

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
        with self._compute:
            out = self.arch.forward(self.backend, ids, 0, cache, last_only=False)
            return np.asarray(self.backend.to_numpy(out), dtype=np.float32)

    def reset(self) -> None:
        self._default.reset()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the default sequence and run the whole prompt as one batch; the last
        position's logits ``(n_vocab,)``."""
        self._last_seq = self._default
        return self._default.prefill(ids, reuse=False)[0]

    def decode(self, token_id: int) -> np.ndarray:
        """One step on the default sequence: append ``token_id`` at position ``n_past``; its logits."""
        self._last_seq = self._default
        return self._default.decode(token_id)

    # -- sequences ---------------------------------------------------------------------
    @contextlib.contextmanager
    def sequence(self, prompt_ids: Sequence[int] = (), timeout: float | None = None):
        """A sequence for one generation, exclusively the caller's until the ``with`` ends.

        Takes the idle sequence whose cache shares the longest prefix with ``prompt_ids``
        (ties: the least recently used), creates one while fewer than ``max_sequences`` exist,
        else waits for one to be returned.
        """
        with self._pool_cond:
            while True:
                if self._idle:
                    best = max(self._idle, key=lambda s: (common_prefix(s.ids, prompt_ids),
                                                          s is not self._default, -s.last_used))
                    if common_prefix(best.ids, prompt_ids) == 0 and best.ids and \
                            self._n_seqs < self.max_sequences:
                        best = None  # nothing to reuse: keep that cached conversation, make a new one
                    if best is not None:
                        self._idle.remove(best)
                        seq = best
                        break
                if self._n_seqs < self.max_sequences:
                    self._n_seqs += 1
                    seq = Sequence_(self)
                    break
                if not self._pool_cond.wait(timeout):
                    raise PyEngineError(f"all {self.max_sequences} sequences of the model are busy")
        try:
            yield seq
        finally:
            with self._pool_cond:
                self._idle.append(seq)
                self._pool_cond.notify()

    # -- generation -----------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, *, add_bos: bool = True,
                 parse_special: bool = True, stop_at_eos: bool = True, sequence: "Sequence_ | None" = None,
                 stats: GenerationStats | None = None, logits_processor=None, extra_stop_ids=(),
                 drop_partial_char: bool = False, **sampling) -> Iterator[str]:
        """Stream the continuation of ``prompt`` as text pieces.

        ``sampling``: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed
        (see :class:`pyengine.sampling.SamplingParams`); temperature 0 is greedy.
        Statistics of the run land in ``self.last_stats`` (and in ``stats`` if given: with
        several threads, pass your own). ``sequence``: run on this sequence (a chat keeps
        one, so each turn reuses its cache); by default one is taken from the pool.
        ``logits_processor(history, logits) -> logits`` runs before sampling (constrained
        decoding masks tokens there). ``extra_stop_ids``: more ids that end the text (an
        infill's FIM markers). ``drop_partial_char``: when the token limit cuts a multi-byte
        character in half, leave its bytes out instead of ending with U+FFFD (the server
        reports such a cut as finish_reason "length"). Safe to call from several threads
        (see :class:`Model`).
        """
        from .sampling import Sampler, SamplingParams

        # None: no limit of its own (the text ends at end of text or when the context is full)
        max_tokens = self.n_ctx if max_tokens is None else check_max_tokens(max_tokens)
        sampler = Sampler(SamplingParams(**sampling))
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_bos=add_bos, parse_special=parse_special)
        else:
            ids = list(prompt)
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(ids)
        self.last_stats = stats
        self._check_fits(len(ids))
        if max_tokens <= 0:
            return
        if sequence is not None:
            self._last_seq = sequence
            yield from self._generate_on(sequence, ids, max_tokens, sampler, stats, stop_at_eos, logits_processor,
                                         extra_stop_ids, drop_partial_char)
            return
        with self.sequence(ids) as seq:
            self._last_seq = seq
            yield from self._generate_on(seq, ids, max_tokens, sampler, stats, stop_at_eos, logits_processor,
                                         extra_stop_ids, drop_partial_char)

    def _generate_on(self, seq: Sequence_, ids, max_tokens, sampler, stats, stop_at_eos, logits_processor,
                     extra_stop_ids=(), drop_partial_char=False):
        stop_ids = self.tokenizer.stop_ids | frozenset(extra_stop_ids or ())
        t0 = time.perf_counter()
        logits, reused = seq.prefill(ids)
        stats.prompt_reused = reused
        stats.prompt_processed = len(ids) - reused
        history = list(ids)
        stream = self.tokenizer.stream()
        t_first = None
        while True:
            if logits_processor is not None:
                logits = logits_processor(stats.token_ids, logits)
            tok = sampler.sample(logits, history)
            now = time.perf_counter()
            if t_first is None:
                t_first = now
                stats.time_to_first_token = now - t0
                stats.prompt_seconds = now - t0
            if stop_at_eos and tok in stop_ids:
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
            if seq.n_past >= self.n_ctx:
                stats.stop_reason = f"context full ({self.n_ctx} tokens; raise it with --ctx)"
                break
            logits = seq.decode(tok)
        tail = stream.flush()
        if tail and not drop_partial_char:
            yield tail
        if t_first is not None:
            stats.generate_seconds = time.perf_counter() - t_first


def load(model: str | os.PathLike, backend: str = "auto", n_ctx: int | None = None,
         progress: bool = True, max_sequences: int = 4, weights: str = "auto") -> Model:
    """See :func:`pyengine.load`."""
    from .registry import resolve

    path = resolve(str(model), pull_if_missing=True, progress=progress)
    gf = open_gguf(Path(path))
    return Model(gf, make_backend(backend), n_ctx=n_ctx, max_sequences=max_sequences, weights=weights,
                 progress=progress)
