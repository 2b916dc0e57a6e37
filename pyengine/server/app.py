"""The HTTP server: OpenAI- and Ollama-compatible endpoints over one loaded Model (FastAPI).

Concurrency: each request generates on its own sequence of the Model (own KV cache; at most
``--parallel`` at once, later requests queue for a free one). Forward passes are
serialised by the Model's FIFO compute lock, one prompt or one token at a time, so concurrent
streams interleave token by token (a fair queue at step granularity, not a batched decode).
Idle sequences keep their cache: a request whose prompt starts like an earlier one (a chat's
next turn) reuses that prefix. A client that disconnects stops its generation at the next token.

Errors come back in each API's own shape: OpenAI ``{"error": {"message", "type", "param",
"code"}}``, Ollama ``{"error": "..."}``, with HTTP 400 (bad input), 404 (unknown model), 413
(body too large), and the server keeps serving.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import GenerationStats, Model
from ..errors import PromptTooLongError, PyEngineError
from ..sampling import SamplingParams
from . import grammar
from .textproc import StopScanner, ThinkSplitter, fim_prompt, fim_stop_ids, parse_tool_calls

DEFAULT_MAX_BODY = 8 * 1024 * 1024
OLLAMA_API_VERSION = "0.6.0"  # the Ollama API level these endpoints follow


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_


class ServerState:
    def __init__(self, model: Model, name: str, max_body: int = DEFAULT_MAX_BODY):
        self.model = model
        self.name = name
        self.max_body = max_body
        self.created = int(time.time())
        self.executor = ThreadPoolExecutor(max_workers=max(4, 2 * model.max_sequences),
                                           thread_name_prefix="pyengine-gen")
        self.active = 0
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        return {self.name, f"{self.name}:latest"}

    def check_model(self, requested) -> None:
        if requested is None:
            raise APIError(400, "'model' is required", param="model")
        if not isinstance(requested, str):
            raise APIError(400, "'model' must be a string", param="model")
        if requested not in self.names():
            raise APIError(404, f"model '{requested}' not found; this server serves '{self.name}'",
                           code="model_not_found", param="model")


# --- request validation -----------------------------------------------------------------------

def _num(body: dict, key: str, lo: float | None, hi: float | None, default, integer: bool = False):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", param=key)
    if v != v or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise APIError(400, f"'{key}' must be {rng}, got {v!r}", param=key)
    return int(v) if integer else float(v)


def _stops(v, param="stop") -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v) and len(v) <= 16:
        return [s for s in v if s]
    raise APIError(400, f"'{param}' must be a string or a list of up to 16 strings", param=param)


def _sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed) -> dict:
    d = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty,
             seed=seed)
    try:
        SamplingParams(**d).validate()
    except PyEngineError as e:
        raise APIError(400, str(e)) from None
    return d


def _constraint(state: ServerState, response_format) -> Any:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise APIError(400, "'response_format' must be an object", param="response_format")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    try:
        if kind == "json_object":
            return grammar.JsonConstraint(state.model, None)
        if kind == "json_schema":
            js = response_format.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                raise APIError(400, "'response_format.json_schema' must be an object with a 'schema' object",
                               param="response_format")
            return grammar.JsonConstraint(state.model, js.get("schema") or {"type": "object"})
    except PyEngineError as e:
        raise APIError(400, str(e), param="response_format") from None
    raise APIError(400, f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                   param="response_format")


def _tool_names(tools) -> set[str]:
    out = set()
    for t in tools or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.add(fn["name"])
    return out


_RESERVED = {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "time_limit"}


def _tokens_for_chat(state: ServerState, messages, tools, template_kwargs=None) -> tuple[list[int], str]:
    if template_kwargs is None:
        template_kwargs = {}
    if not isinstance(template_kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() and k not in _RESERVED
                                                        for k in template_kwargs):
        raise APIError(400, "'chat_template_kwargs' must be an object of template variables "
                            "(e.g. {\"enable_thinking\": false})", param="chat_template_kwargs")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    if tools is not None and not isinstance(tools, list):
        raise APIError(400, "'tools' must be a list", param="tools")
    try:
        text = state.model.apply_chat_template(messages, add_generation_prompt=True, tools=tools or None,
                                               **template_kwargs)
        ids = state.model.encode_chat_text(text)
    except PyEngineError as e:
        raise APIError(400, str(e), param="messages") from None
    return ids, text


def _check_context(state: ServerState, ids: list[int]) -> None:
    n_ctx = state.model.n_ctx
    if len(ids) >= n_ctx:
        raise APIError(400, f"the prompt is {len(ids)} tokens but the context holds {n_ctx} "
                            f"(at least one token must be left to generate); shorten the conversation or "
                            f"restart the server with a larger --ctx", code="context_length_exceeded",
                       param="messages")


# --- running a generation in a worker thread --------------------------------------------------

class Job:
    """One generation: runs in the executor, hands its pieces to the event loop; ``cancel()``
    (client gone) stops it at the next token and gives its sequence back."""

    def __init__(self, state: ServerState, ids: list[int], max_tokens: int, sampling: dict,
                 processor=None, extra_stop_ids=()):
        self.state = state
        self.ids = ids
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.processor = processor
        self.extra_stop_ids = extra_stop_ids
        self.stats = GenerationStats()
        self.cancelled = threading.Event()
        self.t0 = time.perf_counter()

    async def pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def put(item):
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shutting down)
                self.cancelled.set()

        def work():
            gen = None
            try:
                gen = self.state.model.generate(self.ids, max_tokens=self.max_tokens, stats=self.stats,
                                                logits_processor=self.processor,
                                                extra_stop_ids=self.extra_stop_ids, drop_partial_char=True,
                                                **self.sampling)
                for piece in gen:
                    if self.cancelled.is_set():
                        self.stats.stop_reason = "cancelled"
                        break
                    put(("piece", piece))
                put(("done", None))
            except BaseException as e:  # reported to the request
                put(("error", e))
            finally:
                if gen is not None:
                    gen.close()  # gives the sequence back to the pool

        loop.run_in_executor(self.state.executor, work)
        try:
            while True:
                kind, val = await q.get()
                if kind == "piece":
                    yield val
                elif kind == "done":
                    return
                else:
                    if isinstance(val, PromptTooLongError):
                        raise APIError(400, str(val), code="context_length_exceeded")
                    if isinstance(val, PyEngineError):
                        raise APIError(400, str(val))
                    raise val
        finally:
            self.cancelled.set()

    @property
    def finish_reason(self) -> str:
        r = self.stats.stop_reason
        return "stop" if r == "end of text" else "length"

    async def text_until_stop(self, stops: list[str]) -> tuple[str, str]:
        """The whole generated text, cut before the first of ``stops`` (generation ends
        there), and the OpenAI finish reason: "stop" when a stop string or the end of text
        ended it, else "length"."""
        scan = StopScanner(stops)
        out = []
        async for piece in self.pieces():
            out.append(scan.push(piece))
            if scan.hit:
                break
        if not scan.hit:
            out.append(scan.flush())
        return "".join(out), ("stop" if scan.hit else self.finish_reason)


class _ReplicaHeader:
    """Pure ASGI middleware (streaming and disconnects pass straight through): every response
    says which process answered, ``X-PyEngine-Replica: host:pid`` (scale-out, Ray Serve)."""

    def __init__(self, app):
        self.app = app
        self.value = f"{socket.gethostname()}:{os.getpid()}".encode("latin-1")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(msg):
            if msg["type"] == "http.response.start":
                msg = dict(msg, headers=list(msg.get("headers", [])) + [(b"x-pyengine-replica", self.value)])
            await send(msg)

        await self.app(scope, receive, send_with_header)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


# --- the app ----------------------------------------------------------------------------------

def create_app(model: Model, name: str, *, max_body: int = DEFAULT_MAX_BODY, cors_origins=("*",)):
    state = ServerState(model, name, max_body=max_body)
    app = FastAPI(title="pyengine", version=__version__, docs_url=None, redoc_url=None)
    app.state.pyengine = state
    app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                       allow_headers=["*"], allow_credentials=False)

    def error_response(path: str, e: APIError):
        if path.startswith("/api/"):
            return JSONResponse({"error": e.message}, status_code=e.status)
        return JSONResponse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}},
                            status_code=e.status)

    app.add_middleware(_ReplicaHeader)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(request.url.path, e)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        return error_response(request.url.path, APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                          type_="server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return error_response(request.url.path, APIError(e.status_code, str(e.detail), type_="invalid_request_error"))

    async def read_json(request: Request) -> dict:
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > state.max_body:
            raise APIError(413, f"request body is {int(n)} bytes; the limit is {state.max_body} "
                                "(restart the server with a larger --max-body)", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > state.max_body:
                raise APIError(413, f"request body exceeds the {state.max_body}-byte limit", code="body_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def sse(obj) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode("utf-8")

    # ---- OpenAI -------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": state.created,
                                            "owned_by": "pyengine"}]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        state.check_model(model_id)
        return {"id": state.name, "object": "model", "created": state.created, "owned_by": "pyengine"}

    def openai_sampling(body: dict) -> tuple[dict, int]:
        if _num(body, "n", 1, 1, 1, integer=True) != 1:
            raise APIError(400, "'n' must be 1", param="n")
        if body.get("logprobs") or body.get("top_logprobs"):
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        for k in ("presence_penalty", "frequency_penalty"):
            _num(body, k, -2.0, 2.0, 0.0)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _num({"max_tokens": max_tokens}, "max_tokens", 1, None, None, integer=True)
        if max_tokens is None:
            max_tokens = state.model.n_ctx
        samp = _sampling(_num(body, "temperature", 0.0, 2.0, 1.0), _num(body, "top_p", 0.0, 1.0, 1.0) or 1e-9,
                         _num(body, "top_k", 0, None, 0, integer=True), _num(body, "min_p", 0.0, 1.0, 0.0),
                         _num(body, "repeat_penalty", 0.01, None, 1.0),
                         _num(body, "seed", 0, None, None, integer=True))
        return samp, max_tokens

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        state.check_model(body.get("model"))
        samp, max_tokens = openai_sampling(body)
        stops = _stops(body.get("stop"))
        tools = body.get("tools")
        if body.get("tool_choice") == "none":
            tools = None
        ids, text = _tokens_for_chat(state, body.get("messages"), tools, body.get("chat_template_kwargs"))
        _check_context(state, ids)
        proc = _constraint(state, body.get("response_format"))
        stream = bool(body.get("stream", False))
        so = body.get("stream_options") or {}
        include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
        job = Job(state, ids, max_tokens, samp, proc)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        in_think = text.rstrip().endswith("<think>")

        def usage():
            st = job.stats
            return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.generated_tokens,
                    "total_tokens": st.prompt_tokens + st.generated_tokens,
                    "prompt_tokens_details": {"cached_tokens": st.prompt_reused}}

        def chunk(delta: dict, finish=None):
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if not stream:
            full, finish = await job.text_until_stop(stops)
            split = ThinkSplitter(in_think)
            parts = split.push(full) + split.flush()
            reasoning = "".join(t for k, t in parts if k == "reasoning")
            content = "".join(t for k, t in parts if k == "content")
            msg: dict = {"role": "assistant", "content": content}
            if reasoning:
                msg["reasoning_content"] = reasoning
            if tools:
                content2, calls = parse_tool_calls(content, _tool_names(tools))
                if calls:
                    msg["content"] = content2
                    msg["tool_calls"] = calls
                    finish = "tool_calls"
            return {"id": cid, "object": "chat.completion", "created": created, "model": state.name,
                    "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
                    "usage": usage(), "system_fingerprint": f"pyengine-{__version__}"}

        # streaming: input errors were raised above, before the response started; a failure
        # during generation arrives as an SSE {"error": ...} event before [DONE]
        agen = job.pieces()

        async def events():
            yield sse(chunk({"role": "assistant", "content": ""}))
            scan = StopScanner(stops)
            split = ThinkSplitter(in_think)
            held = []  # with tools, the text is parsed for tool calls at the end
            try:
                async for piece in agen:
                    txt = scan.push(piece)
                    if txt:
                        if tools:
                            held.append(txt)
                        else:
                            for kind, t in split.push(txt):
                                yield sse(chunk({"reasoning_content": t} if kind == "reasoning" else {"content": t}))
                    if scan.hit:
                        break
                tail = "" if scan.hit else scan.flush()
                finish = "stop" if scan.hit else job.finish_reason
                if tools:
                    held.append(tail)
                    content, calls = parse_tool_calls("".join(held), _tool_names(tools))
                    if content:
                        yield sse(chunk({"content": content}))
                    if calls:
                        yield sse(chunk({"tool_calls": [dict(c, index=i) for i, c in enumerate(calls)]}))
                        finish = "tool_calls"
                else:
                    for kind, t in split.push(tail) + split.flush():
                        yield sse(chunk({"reasoning_content": t} if kind == "reasoning" else {"content": t}))
                yield sse(chunk({}, finish))
                if include_usage:
                    u = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.name,
                         "choices": [], "usage": usage()}
                    yield sse(u)
            except APIError as e:
                yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
            finally:
                await agen.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        state.check_model(body.get("model"))
        samp, max_tokens = openai_sampling(body)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            max_tokens = 16  # OpenAI's default for completions
        stops = _stops(body.get("stop"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
        suffix = body.get("suffix")
        extra_stop = ()
        tok = state.model.tokenizer
        if suffix is not None:
            if not isinstance(suffix, str):
                raise APIError(400, "'suffix' must be a string", param="suffix")
            try:
                text = fim_prompt(tok, prompt, suffix)
            except PyEngineError as e:
                raise APIError(400, str(e), param="suffix") from None
            ids = state.model.tokenize(text, add_bos=True, parse_special=True)
            extra_stop = fim_stop_ids(tok)
        else:
            ids = state.model.tokenize(prompt, add_bos=True, parse_special=False)
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        _check_context(state, ids)
        proc = _constraint(state, body.get("response_format"))
        echo = bool(body.get("echo", False))
        job = Job(state, ids, max_tokens, samp, proc, extra_stop_ids=extra_stop)
        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def usage():
            st = job.stats
            return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.generated_tokens,
                    "total_tokens": st.prompt_tokens + st.generated_tokens}

        def choice(text, finish=None):
            return {"id": cid, "object": "text_completion", "created": created, "model": state.name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

        if not body.get("stream", False):
            text, finish = await job.text_until_stop(stops)
            r = choice((prompt if echo else "") + text, finish)
            r["usage"] = usage()
            return r

        agen = job.pieces()

        async def events():
            scan = StopScanner(stops)
            try:
                if echo:
                    yield sse(choice(prompt))
                async for piece in agen:
                    t = scan.push(piece)
                    if t:
                        yield sse(choice(t))
                    if scan.hit:
                        break
                if not scan.hit:
                    t = scan.flush()
                    if t:
                        yield sse(choice(t))
                yield sse(choice("", "stop" if scan.hit else job.finish_reason))
            except APIError as e:
                yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
            finally:
                await agen.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---- Ollama -------------------------------------------------------------------------------
    def details() -> dict:
        gf = state.model.gguf
        md = gf.metadata
        ftype = md.get("general.file_type")
        from ..gguf_file import summarize_types

        try:
            quant = max(summarize_types(gf).items(), key=lambda kv: kv[1][1])[0]
        except Exception:  # a summary is cosmetic
            quant = str(ftype)
        n_params = sum(int(t.n_elements) if hasattr(t, "n_elements") else 0 for t in gf.tensors.values())
        return {"parent_model": "", "format": "gguf", "family": gf.architecture, "families": [gf.architecture],
                "parameter_size": f"{n_params / 1e6:.0f}M" if n_params else "", "quantization_level": quant}

    @app.get("/api/version")
    async def ollama_version():
        return {"version": OLLAMA_API_VERSION}

    @app.get("/")
    async def root():  # Ollama answers "Ollama is running" here; some clients probe it
        return PlainTextResponse("pyengine is running (OpenAI API at /v1, Ollama API at /api)")

    @app.get("/api/tags")
    async def ollama_tags():
        m = state.model
        return {"models": [{"name": f"{state.name}:latest", "model": f"{state.name}:latest",
                            "modified_at": datetime.fromtimestamp(m.path.stat().st_mtime, timezone.utc).isoformat(),
                            "size": m.file_size, "digest": "", "details": details()}]}

    @app.get("/api/ps")
    async def ollama_ps():
        m = state.model
        return {"models": [{"name": f"{state.name}:latest", "model": f"{state.name}:latest", "size": m.file_size,
                            "digest": "", "details": details(), "expires_at": "2100-01-01T00:00:00Z",
                            "size_vram": 0, "context_length": m.n_ctx}]}

    @app.post("/api/show")
    async def ollama_show(request: Request):
        body = await read_json(request)
        state.check_model(body.get("model", body.get("name")))
        m = state.model
        arch = m.gguf.architecture
        info = {"general.architecture": arch, f"{arch}.context_length": m.config.context_length,
                f"{arch}.embedding_length": m.config.dim, f"{arch}.block_count": m.config.n_layers}
        return {"modelfile": f"FROM {state.name}\nPARAMETER num_ctx {m.n_ctx}\n",
                "parameters": f"num_ctx                        {m.n_ctx}",
                "template": m.tokenizer.chat_template or "", "details": details(), "model_info": info,
                "capabilities": ["completion"] + (["tools"] if "tools" in (m.tokenizer.chat_template or "") else []),
                "modified_at": _now_iso()}

    def ollama_options(body: dict) -> tuple[dict, int, list[str]]:
        opts = body.get("options") or {}
        if not isinstance(opts, dict):
            raise APIError(400, "'options' must be an object")
        try:
            num_ctx = _num(opts, "num_ctx", 1, None, None, integer=True)
            n = _num(opts, "num_predict", -2, None, -1, integer=True)
            samp = _sampling(_num(opts, "temperature", 0.0, None, 0.8), _num(opts, "top_p", 0.0, 1.0, 0.9) or 1e-9,
                             _num(opts, "top_k", 0, None, 40, integer=True), _num(opts, "min_p", 0.0, 1.0, 0.0),
                             _num(opts, "repeat_penalty", 0.01, None, 1.1),
                             _num(opts, "seed", -1, None, None, integer=True))
            samp["repeat_last_n"] = _num(opts, "repeat_last_n", -1, None, 64, integer=True)
        except APIError as e:
            e.message = f"options: {e.message}"
            raise
        if num_ctx is not None and num_ctx > state.model.n_ctx:
            raise APIError(400, f"options.num_ctx {num_ctx} exceeds this server's context of {state.model.n_ctx} "
                                "tokens (restart it with a larger --ctx)")
        return samp, (state.model.n_ctx if n < 0 else max(n, 1)), _stops(opts.get("stop"), "options.stop")

    def ollama_format(fmt):
        if fmt in (None, ""):
            return None
        if fmt == "json":
            return _constraint(state, {"type": "json_object"})
        if isinstance(fmt, dict):
            return _constraint(state, {"type": "json_schema", "json_schema": {"schema": fmt}})
        raise APIError(400, "'format' must be \"json\" or a JSON schema object")

    def final_stats(job: Job, reason: str) -> dict:
        st = job.stats
        total = int((time.perf_counter() - job.t0) * 1e9)
        return {"done": True, "done_reason": reason, "total_duration": total, "load_duration": 0,
                "prompt_eval_count": st.prompt_processed or st.prompt_tokens,
                "prompt_eval_duration": int(st.prompt_seconds * 1e9), "eval_count": st.generated_tokens,
                "eval_duration": int(st.generate_seconds * 1e9)}

    async def ollama_run(job: Job, stops: list[str], stream: bool, make, tools=None, in_think=False):
        """NDJSON stream (or one object) of ``make(text, extra)`` pieces, then the final record."""
        async def gen():
            scan = StopScanner(stops)
            held = []
            try:
                async for piece in job.pieces():
                    t = scan.push(piece)
                    if t:
                        if tools is not None:
                            held.append(t)
                        else:
                            yield t
                    if scan.hit:
                        break
                t = "" if scan.hit else scan.flush()
                if tools is not None:
                    held.append(t)
                    yield ("tools", "".join(held))
                elif t:
                    yield t
            finally:
                pass
            job.stats.stop_reason = "stop-string" if scan.hit else job.stats.stop_reason

        def reason():
            r = job.stats.stop_reason
            return "stop" if r in ("end of text", "stop-string") else "length"

        if not stream:
            text, tool_text = [], None
            async for t in gen():
                if isinstance(t, tuple):
                    tool_text = t[1]
                else:
                    text.append(t)
            rec = make("".join(text) if tool_text is None else tool_text, final=True, tools=tools)
            rec.update(final_stats(job, reason()))
            return rec

        agen = gen()

        async def lines():
            try:
                async for t in agen:
                    if isinstance(t, tuple):
                        yield (json.dumps(make(t[1], final=False, tools=tools), ensure_ascii=False) + "\n").encode()
                    else:
                        yield (json.dumps(make(t, final=False), ensure_ascii=False) + "\n").encode()
                rec = make("", final=True)
                rec.update(final_stats(job, reason()))
                yield (json.dumps(rec, ensure_ascii=False) + "\n").encode()
            except APIError as e:
                yield (json.dumps({"error": e.message}) + "\n").encode()
            finally:
                await agen.aclose()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/api/chat")
    async def ollama_chat(request: Request):
        body = await read_json(request)
        state.check_model(body.get("model"))
        samp, max_tokens, stops = ollama_options(body)
        msgs = body.get("messages")
        if isinstance(msgs, list):
            msgs = [dict(m, content=m.get("content") or "") if isinstance(m, dict) else m for m in msgs]
            for m in msgs:
                if not isinstance(m, dict):
                    continue
                if m.get("images"):
                    raise APIError(400, "images are not supported: this server runs text-only models")
                m.pop("images", None)
                m.pop("thinking", None)  # an earlier turn's reasoning is not sent back to the model
                if m.get("tool_calls"):  # Ollama gives tool-call arguments as objects already
                    m["tool_calls"] = [dict(tc, function=dict(tc.get("function") or {},
                                                             arguments=json.dumps((tc.get("function") or {}).get("arguments", {}))))
                                       for tc in m["tool_calls"] if isinstance(tc, dict)]
        tools = body.get("tools") or None
        ids, text = _tokens_for_chat(state, msgs, tools)
        _check_context(state, ids)
        proc = ollama_format(body.get("format"))
        job = Job(state, ids, max_tokens, samp, proc)
        in_think = text.rstrip().endswith("<think>")

        def make(t, final=False, tools=None):
            msg: dict = {"role": "assistant", "content": t}
            if tools is not None:
                content, calls = parse_tool_calls(t, _tool_names(tools))
                msg["content"] = content or ""
                if calls:
                    msg["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                                       "arguments": json.loads(c["function"]["arguments"])}}
                                         for c in calls]
            else:
                split = ThinkSplitter(in_think)
                parts = split.push(t) + split.flush()
                if any(k == "reasoning" for k, _ in parts) and final:
                    msg["thinking"] = "".join(x for k, x in parts if k == "reasoning")
                    msg["content"] = "".join(x for k, x in parts if k == "content")
            return {"model": f"{state.name}:latest", "created_at": _now_iso(), "message": msg, "done": False}

        return await ollama_run(job, stops, bool(body.get("stream", True)), make, tools=tools, in_think=in_think)

    @app.post("/api/generate")
    async def ollama_generate(request: Request):
        body = await read_json(request)
        state.check_model(body.get("model"))
        samp, max_tokens, stops = ollama_options(body)
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string")
        if not prompt and not body.get("suffix"):
            # Ollama loads the model on an empty prompt: answer that it is ready
            return {"model": f"{state.name}:latest", "created_at": _now_iso(), "response": "", "done": True,
                    "done_reason": "load"}
        suffix = body.get("suffix")
        extra_stop = ()
        tok = state.model.tokenizer
        if suffix:
            try:
                text = fim_prompt(tok, prompt, str(suffix))
            except PyEngineError as e:
                raise APIError(400, str(e)) from None
            ids = state.model.tokenize(text, add_bos=True, parse_special=True)
            extra_stop = fim_stop_ids(tok)
        elif body.get("raw"):
            ids = state.model.tokenize(prompt, add_bos=True, parse_special=True)
        else:
            sysmsg = body.get("system")
            msgs = ([{"role": "system", "content": str(sysmsg)}] if sysmsg else []) + [{"role": "user", "content": prompt}]
            ids, _ = _tokens_for_chat(state, msgs, None)
        _check_context(state, ids)
        proc = ollama_format(body.get("format"))
        job = Job(state, ids, max_tokens, samp, proc, extra_stop_ids=extra_stop)

        def make(t, final=False, tools=None):
            return {"model": f"{state.name}:latest", "created_at": _now_iso(), "response": t, "done": False}

        return await ollama_run(job, stops, bool(body.get("stream", True)), make)

    return app
