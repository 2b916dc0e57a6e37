"""Chat templates: the model file's own ``tokenizer.chat_template`` (Jinja) rendered in a sandbox.

A GGUF file carries its chat format as a Jinja template (the Hugging Face convention). We render
it with jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` and the variables real
templates expect (the same set ``transformers`` passes):

* ``messages``: OpenAI-style dicts (``role`` system/user/assistant/tool, ``content``,
  ``tool_calls`` with ``function.arguments`` given to the template as a *mapping*, as the
  templates' ``| tojson`` expects; ``tool_call_id``/``name`` on tool results);
* ``tools`` (OpenAI tool list or None), ``add_generation_prompt``, ``bos_token``,
  ``eos_token``; ``raise_exception(msg)``, ``strftime_now(fmt)``, and the filter ``tojson``
  with HF's signature (no HTML escaping, ``ensure_ascii=False``); ``trim_blocks`` and
  ``lstrip_blocks`` on, ``loopcontrols`` and the ``{% generation %}`` block available.

A template comes from a stranger's file, so the render is bounded:

* the sandbox refuses attribute access to internals (``__class__``, ``__subclasses__``,
  ``mro``, ...), and the immutable variant refuses ``list.append`` and friends;
* every operation that can grow a value in one native call (``*``, ``+``, ``%``, ``**``, ``~``,
  ``{% set %}`` blocks, macro bodies, the string methods and filters that take a width or
  a count) is checked *before* it runs against a size cap (:data:`MAX_VALUE_CHARS`, or 8x the
  conversation's own text if that is larger), and the streamed output against the same cap;
* the whole render runs in a worker thread with a wall-clock budget (:data:`TIME_LIMIT_S`);
  past it an exception is raised inside that thread between two bytecodes (Jinja compiles to
  Python, so a loop that never ends is interrupted there).

Every failure is one line: :class:`ChatTemplateError` (a :class:`~pyengine.errors.PyEngineError`).

Files without a template get a hand-written fallback chosen from the vocabulary's turn tokens:
Gemma (``<start_of_turn>``) or ChatML (``<|im_start|>``); see :func:`fallback_format`.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import re
import threading
import time
from functools import lru_cache
from typing import Any, Sequence

from .errors import PyEngineError

__all__ = ["ChatTemplateError", "render", "apply_chat_template", "fallback_format",
           "normalize_messages", "MAX_VALUE_CHARS", "TIME_LIMIT_S"]

MAX_VALUE_CHARS = 2_000_000     # no string/list the template builds may exceed this (or 8x the input)
MAX_INT_BITS = 4096             # integers the template computes stay below 2**4096
MAX_WIDTH = 100_000             # widths/counts passed to center/indent/ljust/format...
TIME_LIMIT_S = 5.0              # wall-clock budget of one render


class ChatTemplateError(PyEngineError):
    """The model's chat template failed, was refused by the sandbox, or refused the conversation."""


class _Budget(Exception):
    """Raised inside the render thread when its time is up (async exception)."""


# --- the sandbox ------------------------------------------------------------------------------

def _sized(x) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


_BIG_NUMBER = re.compile(r"\d{6,}")  # a width/precision of 100000+ in a format string (linear scan)


def _check_format_string(s: str) -> None:
    if _BIG_NUMBER.search(s):
        raise ChatTemplateError("chat template: a format width of 100000 or more is refused by the sandbox")


_limits = threading.local()  # the cap of the render running in this thread


def _cap() -> int:
    return getattr(_limits, "cap", MAX_VALUE_CHARS)


def _make_env():
    import jinja2
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def too_big(what: str, n: int) -> ChatTemplateError:
        return ChatTemplateError(f"chat template would build a {what} of {n:,} items "
                                 f"(sandbox limit {_cap():,}); refusing the template")

    def checked_join(parts) -> str:
        parts = [p if isinstance(p, str) else str(p) for p in parts]
        n = sum(len(p) for p in parts)
        if n > _cap():
            raise too_big("string", n)
        return "".join(parts)

    class _Gen(CodeGenerator):
        # `a ~ b ~ c` compiles to str_join((a, b, c)): route it through the size check
        def visit_Concat(self, node, frame):
            self.write("environment.checked_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class _Generation(Extension):
        """HF's ``{% generation %}...{% endgeneration %}`` marks assistant text; it renders its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    class Env(ImmutableSandboxedEnvironment):
        code_generator_class = _Gen
        intercepted_binops = frozenset(["*", "+", "%", "**", "//"])
        concat = staticmethod(checked_join)

        @staticmethod
        def checked_concat(parts):
            return checked_join(["" if p is None else p for p in parts])

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for a, b in ((left, right), (right, left)):
                    n = _sized(a)
                    if n is not None and isinstance(b, int) and n * max(b, 0) > _cap():
                        raise too_big("sequence", n * b)
                if isinstance(left, int) and isinstance(right, int) and \
                        left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise ChatTemplateError("chat template computes an integer too large for the sandbox")
            elif operator == "+":
                a, b = _sized(left), _sized(right)
                if a is not None and b is not None and a + b > _cap():
                    raise too_big("sequence", a + b)
            elif operator == "**":
                if isinstance(left, (int, float)) and isinstance(right, (int, float)) and \
                        abs(left) > 1 and abs(right) * max(abs(left), 2).bit_length() > MAX_INT_BITS:
                    raise ChatTemplateError("chat template computes a power too large for the sandbox")
            elif operator == "%" and isinstance(left, str):
                _check_format_string(left)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            owner = getattr(__obj, "__self__", None)
            if owner is None:  # jinja wraps str.format in a sandboxed formatter
                owner = getattr(getattr(__obj, "__wrapped__", None), "__self__", None)
            if isinstance(owner, str):
                name = getattr(__obj, "__name__", "")
                if name in ("format", "format_map"):
                    _check_format_string(owner)
                for v in list(args) + list(kwargs.values()):
                    if isinstance(v, int) and not isinstance(v, bool) and v > MAX_WIDTH:
                        raise ChatTemplateError(f"chat template: str.{name} with {v} is refused by the sandbox")
                if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                    old, new = args[0], args[1]
                    k = owner.count(old) if old else len(owner) + 1
                    n = len(owner) + k * (len(new) - len(old))
                    if n > _cap():
                        raise too_big("string", n)
                if name == "join" and args:
                    seq = args[0]
                    if isinstance(seq, (list, tuple)) and len(owner) * len(seq) > _cap():
                        raise too_big("string", len(owner) * len(seq))
            return super().call(__context, __obj, *args, **kwargs)

    env = Env(trim_blocks=True, lstrip_blocks=True, autoescape=False, extensions=[loopcontrols, _Generation],
              undefined=jinja2.Undefined)

    def raise_exception(message=""):
        raise ChatTemplateError(f"the model's chat template refused the conversation: {message}")

    def strftime_now(fmt="%Y-%m-%d"):
        _check_format_string(str(fmt))
        return datetime.datetime.now().strftime(str(fmt))

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        if isinstance(indent, int) and indent > 64:
            raise ChatTemplateError("chat template: tojson indent over 64 is refused by the sandbox")
        s = json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                       sort_keys=sort_keys, default=str)
        if len(s) > _cap():
            raise too_big("string", len(s))
        return s

    for g in ("lipsum", "cycler", "joiner"):  # lipsum(10**9) would build gigabytes in one call
        env.globals.pop(g, None)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    env.filters["tojson"] = tojson

    # filters taking a width or count: refuse a huge one before the native call
    for fname in ("center", "indent", "wordwrap", "truncate", "format", "replace", "batch", "slice", "random"):
        orig = env.filters.get(fname)
        if orig is None:
            continue

        def wrapped(*args, __orig=orig, __name=fname, **kwargs):
            vals = list(args) + list(kwargs.values())
            for v in vals[1:] if __name != "format" else vals:
                if isinstance(v, int) and not isinstance(v, bool) and v > MAX_WIDTH:
                    raise ChatTemplateError(f"chat template: filter {__name}({v}) is refused by the sandbox")
                if isinstance(v, str) and __name == "format":
                    _check_format_string(v)
            if __name == "replace" and len(args) >= 3:
                s, old, new = str(args[0]), str(args[1]), str(args[2])
                k = s.count(old) if old else len(s) + 1
                if len(s) + k * (len(new) - len(old)) > _cap():
                    raise too_big("string", len(s) + k * (len(new) - len(old)))
            if __name == "indent" and args:
                s = str(args[0])
                w = args[1] if len(args) > 1 else kwargs.get("width", 4)
                w = len(w) if isinstance(w, str) else int(w or 0)
                if len(s) + (s.count("\n") + 1) * w > _cap():
                    raise too_big("string", len(s) + (s.count("\n") + 1) * w)
            return __orig(*args, **kwargs)

        for attr in ("jinja_pass_arg",):  # keep pass_context / pass_eval_context markers
            if hasattr(orig, attr):
                setattr(wrapped, attr, getattr(orig, attr))
        env.filters[fname] = wrapped
    return env


@lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2

    env = _make_env()
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the model's chat template is not valid Jinja (line {e.lineno}): "
                                f"{_one_line(e.message or str(e))}") from None
    except RecursionError:
        raise ChatTemplateError("the model's chat template nests too deeply to compile") from None


def _one_line(s: str, n: int = 200) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[:n - 3] + "..."


def _async_raise(thread_id: int, exc: type) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def render(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = True,
           tools: Sequence[dict] | None = None, bos_token: str = "", eos_token: str = "",
           time_limit: float = TIME_LIMIT_S, **extra: Any) -> str:
    """``template`` rendered for ``messages`` in the sandbox, within ``time_limit`` seconds and
    the size cap. Raises :class:`ChatTemplateError` (one line) on any failure."""
    import jinja2
    from jinja2.sandbox import SecurityError

    msgs = normalize_messages(messages)
    size_in = len(json.dumps(msgs, ensure_ascii=False, default=str)) + \
        len(json.dumps(tools or [], ensure_ascii=False, default=str)) + len(template)
    cap = max(MAX_VALUE_CHARS, 8 * size_in)
    tmpl = _compile(template)
    ctx = dict(messages=msgs, tools=list(tools) if tools else None,
               add_generation_prompt=bool(add_generation_prompt), bos_token=bos_token,
               eos_token=eos_token, **extra)
    result: dict = {}

    def work():
        _limits.cap = cap
        try:
            out, n = [], 0
            for piece in tmpl.generate(**ctx):
                n += len(piece)
                if n > cap:
                    raise ChatTemplateError(f"the chat template's output exceeds {cap:,} characters "
                                            "(sandbox limit); refusing the template")
                out.append(piece)
            result["text"] = "".join(out)
        except _Budget:
            result["error"] = ChatTemplateError(
                f"the model's chat template did not finish within {time_limit:g} s; refusing it")
        except ChatTemplateError as e:
            result["error"] = e
        except SecurityError as e:
            result["error"] = ChatTemplateError(f"the chat template tried something the sandbox forbids: "
                                                f"{_one_line(e)}")
        except RecursionError:
            result["error"] = ChatTemplateError("the model's chat template recursed too deeply")
        except MemoryError:
            result["error"] = ChatTemplateError("the model's chat template ran out of memory")
        except jinja2.TemplateError as e:
            result["error"] = ChatTemplateError(f"the model's chat template failed: {_one_line(e)}")
        except Exception as e:  # a template is data: any failure in it is the template's
            result["error"] = ChatTemplateError(
                f"the model's chat template failed: {type(e).__name__}: {_one_line(e)}")

    th = threading.Thread(target=work, name="chat-template", daemon=True)
    th.start()
    th.join(time_limit)
    give_up = time.monotonic() + 5.0
    while th.is_alive():  # out of time: interrupt it between two bytecodes, then wait for it
        if time.monotonic() > give_up:  # stuck inside one native call: leave the daemon thread
            raise ChatTemplateError(f"the model's chat template did not finish within {time_limit:g} s; "
                                    "refusing it")
        _async_raise(th.ident, _Budget)
        th.join(0.05)
    if "error" in result:
        raise result["error"]
    if "text" not in result:
        raise ChatTemplateError("the model's chat template did not produce any output")
    return result["text"]


# --- messages -----------------------------------------------------------------------------------

_ROLES = ("system", "user", "assistant", "tool", "developer")


def normalize_messages(messages: Sequence[dict]) -> list[dict]:
    """Validated copies of OpenAI-style messages, in the shape chat templates expect.

    ``content`` given as a list of parts (``[{"type": "text", "text": ...}]``) becomes their
    text; a tool call's ``function.arguments`` given as a JSON string becomes the mapping it
    encodes (templates write it with ``| tojson``).
    """
    if not isinstance(messages, (list, tuple)):
        raise PyEngineError(f"messages must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PyEngineError(f"message {i} must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in _ROLES:
            raise PyEngineError(f"message {i} has role {role!r}; expected one of {', '.join(_ROLES)}")
        mm = dict(m)
        c = m.get("content")
        if isinstance(c, list):
            parts = []
            for p in c:
                if isinstance(p, dict) and p.get("type") == "text":
                    parts.append(str(p.get("text", "")))
                elif isinstance(p, str):
                    parts.append(p)
                else:
                    kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                    raise PyEngineError(f"message {i}: content part of type {kind!r} is not supported "
                                        "(text only)")
            mm["content"] = "".join(parts)
        elif c is None:
            mm["content"] = "" if not m.get("tool_calls") else None
        elif not isinstance(c, str):
            raise PyEngineError(f"message {i}: content must be a string, got {type(c).__name__}")
        if m.get("tool_calls") is not None:
            calls = []
            for tc in m["tool_calls"]:
                if not isinstance(tc, dict):
                    raise PyEngineError(f"message {i}: each tool call must be an object")
                tc = dict(tc)
                fn = dict(tc.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        raise PyEngineError(f"message {i}: tool call arguments are not valid JSON") from None
                tc["function"] = fn
                calls.append(tc)
            mm["tool_calls"] = calls
        if role == "developer":
            mm["role"] = "system"
        out.append(mm)
    return out


def fold_system(messages: Sequence[dict]) -> list[dict] | None:
    """``messages`` with a leading system message merged into the first user message
    (``system + "\\n\\n" + user``), or None when there is no leading system message."""
    if not messages or not isinstance(messages[0], dict) or messages[0].get("role") != "system":
        return None
    system = str(messages[0].get("content") or "")
    rest = [dict(m) for m in messages[1:]]
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{system}\n\n{m.get('content') or ''}" if system else m.get("content")
            return rest
    return [{"role": "user", "content": system}] + rest


# --- fallbacks for files without a template ------------------------------------------------------

def fallback_format(tokenizer) -> str | None:
    """``"gemma"`` or ``"chatml"`` from the vocabulary's turn tokens, or None."""
    if tokenizer.token_to_id("<start_of_turn>") is not None and tokenizer.token_to_id("<end_of_turn>") is not None:
        return "gemma"
    if tokenizer.token_to_id("<|im_start|>") is not None and tokenizer.token_to_id("<|im_end|>") is not None:
        return "chatml"
    return None


def _text(m: dict) -> str:
    return "" if m.get("content") is None else str(m["content"])


def gemma_fallback(msgs: list[dict], add_generation_prompt: bool) -> str:
    # Gemma: system text is folded into the first user turn; "assistant" is "model";
    # contents are stripped of surrounding whitespace.
    out, system = [], ""
    for m in msgs:
        role, content = m["role"], _text(m)
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


def chatml_fallback(msgs: list[dict], add_generation_prompt: bool) -> str:
    out = [f"<|im_start|>{m['role']}\n{_text(m)}<|im_end|>\n" for m in msgs]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def apply_chat_template(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True,
                        tools: Sequence[dict] | None = None, **extra: Any) -> str:
    """The prompt text for ``messages`` with ``tokenizer``'s model's own template (sandboxed), or
    the Gemma/ChatML fallback when the file carries none. Encode the result with
    ``parse_special=True``; see :meth:`pyengine.engine.Model.chat_tokens` for the BOS rule."""
    template = tokenizer.chat_template
    if template:
        def tok_text(i):
            return tokenizer.id_to_token(i) if i is not None else ""
        kw = dict(add_generation_prompt=add_generation_prompt, tools=tools,
                  bos_token=tok_text(tokenizer.bos_id), eos_token=tok_text(tokenizer.eos_id), **extra)
        try:
            return render(template, messages, **kw)
        except ChatTemplateError as e:
            # Templates without a system role (Gemma 2) refuse one: fold its text into the first
            # user turn, as the model's own documentation does, and say nothing was lost.
            folded = fold_system(messages)
            if folded is None or "refused the conversation" not in str(e):
                raise
            return render(template, folded, **kw)
    fmt = fallback_format(tokenizer)
    if fmt is None:
        from .errors import ModelFileError

        raise ModelFileError("the model file has no chat template and its vocabulary has no known turn "
                             "tokens (Gemma <start_of_turn>, ChatML <|im_start|>): it is not a chat model")
    if tools:
        raise PyEngineError("tools need the model's own chat template; this file has none")
    msgs = normalize_messages(messages)
    return gemma_fallback(msgs, add_generation_prompt) if fmt == "gemma" else \
        chatml_fallback(msgs, add_generation_prompt)
