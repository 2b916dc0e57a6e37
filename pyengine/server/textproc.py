"""Text post-processing shared by the APIs: stop strings, ``<think>`` reasoning, tool calls, FIM."""
from __future__ import annotations

import json
import re
import uuid

from ..errors import PyEngineError


class StopScanner:
    """Cuts the stream at the first stop string. Text that might be the start of a stop
    string is held back until it is known not to be one, so a stop string never leaks."""

    def __init__(self, stops):
        self.stops = [s for s in (stops or []) if s]
        self.buf = ""
        self.hit = False

    def push(self, piece: str) -> str:
        if not self.stops:
            return piece
        if self.hit:
            return ""
        self.buf += piece
        first = -1
        for s in self.stops:
            i = self.buf.find(s)
            if i >= 0 and (first < 0 or i < first):
                first = i
        if first >= 0:
            out, self.buf, self.hit = self.buf[:first], "", True
            return out
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:k]):
                    keep = k
                    break
        out = self.buf[:len(self.buf) - keep]
        self.buf = self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class ThinkSplitter:
    """Splits a reasoning model's output into ``reasoning`` (inside ``<think>…</think>``) and
    ``content``. ``in_think``: the prompt already opened the block (DeepSeek-R1 templates end
    the generation prompt with ``<think>\\n``). Tags split across pieces are held back."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self, in_think: bool = False):
        self.in_think = in_think
        self.buf = ""
        self.started = False  # some content was emitted: a later <think> is plain text
        self.after_close = in_think  # drop the newlines that follow <think> / </think>

    def push(self, piece: str) -> list[tuple[str, str]]:
        self.buf += piece
        out: list[tuple[str, str]] = []
        while self.buf:
            if self.after_close:  # newlines right after a tag are layout, not text
                self.buf = self.buf.lstrip("\n")
                if not self.buf:
                    break
                self.after_close = False
            if self.in_think:
                i = self.buf.find(self.CLOSE)
                if i >= 0:
                    if i:
                        out.append(("reasoning", self.buf[:i]))
                    self.buf = self.buf[i + len(self.CLOSE):]
                    self.in_think = False
                    self.started = True
                    self.after_close = True
                    continue
                keep = _partial_suffix(self.buf, self.CLOSE)
                if len(self.buf) > keep:
                    out.append(("reasoning", self.buf[:len(self.buf) - keep]))
                    self.buf = self.buf[len(self.buf) - keep:]
                break
            if not self.started:
                s = self.buf.lstrip()
                if s.startswith(self.OPEN):
                    self.buf = s[len(self.OPEN):]
                    self.in_think = True
                    self.after_close = True
                    continue
                if self.OPEN.startswith(s):  # maybe the start of <think>: wait
                    break
            self.started = True
            out.append(("content", self.buf))
            self.buf = ""
        return out

    def flush(self) -> list[tuple[str, str]]:
        if not self.buf:
            return []
        kind = "reasoning" if self.in_think else "content"
        out, self.buf = [(kind, self.buf)], ""
        return out


def _partial_suffix(buf: str, tag: str) -> int:
    for k in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:k]):
            return k
    return 0


_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def _call(name: str, args) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name,
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}}


def parse_tool_calls(text: str, tool_names=None) -> tuple[str | None, list[dict]]:
    """Qwen2.5 / Hermes format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    blocks become OpenAI ``tool_calls`` (arguments as a JSON string); the rest is the content.
    A block that is not valid JSON with a name stays in the content.

    Small Qwen models often answer with the bare object, without the tags: a reply that is
    exactly one JSON object ``{"name", "arguments"}`` naming one of ``tool_names`` (the tools
    the request declared) is taken as that call too (llama.cpp's Hermes parser does the same)."""
    if tool_names and "<tool_call>" not in text:
        s = text.strip()
        if s.startswith("```"):
            s = s.strip("`").removeprefix("json").strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj.get("name") in tool_names and \
                    isinstance(obj.get("arguments", obj.get("parameters")), (dict, str)):
                return None, [_call(obj["name"], obj.get("arguments", obj.get("parameters")))]
    calls = []
    rest = []
    pos = 0
    for m in _TOOL_CALL.finditer(text):
        try:
            obj = json.loads(m.group(1).strip())
            name = obj["name"]
            args = obj.get("arguments", obj.get("parameters", {}))
            if not isinstance(name, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        rest.append(text[pos:m.start()])
        pos = m.end()
        calls.append(_call(name, args))
    rest.append(text[pos:])
    content = "".join(rest).strip() if calls else text
    return (content or None) if calls else content, calls


_FIM_STYLES = [
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),        # StarCoder / SmolLM
    ("<PRE>", "<SUF>", "<MID>"),                             # CodeLlama
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),   # DeepSeek-Coder
]


def fim_prompt(tokenizer, prefix: str, suffix: str) -> str:
    """Prefix-suffix-middle prompt with the model's own FIM tokens (PSM order)."""
    for pre, suf, mid in _FIM_STYLES:
        if all(tokenizer.token_to_id(t) is not None for t in (pre, suf, mid)):
            return f"{pre}{prefix}{suf}{suffix}{mid}"
    raise PyEngineError("this model has no fill-in-the-middle tokens, so 'suffix' cannot be used")


def fim_stop_ids(tokenizer) -> set[int]:
    """Tokens that end an infill besides EOS: the FIM markers and file separators."""
    out = set()
    for style in _FIM_STYLES:
        for t in style:
            i = tokenizer.token_to_id(t)
            if i is not None:
                out.add(i)
    for t in ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<file_sep>", "<|endoftext|>"):
        i = tokenizer.token_to_id(t)
        if i is not None:
            out.add(i)
    return out
