"""The server's text post-processing: stop strings, <think> reasoning, Qwen tool calls, FIM prompts."""
from __future__ import annotations

import json

import pytest

from pyengine.server.textproc import StopScanner, ThinkSplitter, fim_prompt, parse_tool_calls


def feed(obj, text, size):
    out = []
    for i in range(0, len(text), size):
        r = obj.push(text[i:i + size])
        out.extend(r if isinstance(r, list) else [r])
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_stop_scanner_never_leaks_a_stop_string(size):
    s = StopScanner(["<END>", "\n\n"])
    out = "".join(feed(s, "Hello <EN world <END> more", size))
    assert out == "Hello <EN world " and s.hit
    s = StopScanner(["<END>"])
    out = "".join(feed(s, "no stop here <EN", size)) + s.flush()
    assert out == "no stop here <EN" and not s.hit


@pytest.mark.parametrize("size", [1, 3, 5, 100])
def test_think_splitter(size):
    def run(text, in_think=False):
        sp = ThinkSplitter(in_think)
        parts = feed(sp, text, size) + sp.flush()
        return ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))

    assert run("<think>\nLet me add.\n</think>\n\nIt is 4.") == ("Let me add.\n", "It is 4.")
    assert run("Let me add.\n</think>\n\nIt is 4.", in_think=True) == ("Let me add.\n", "It is 4.")
    assert run("Plain answer with <think> inside.") == ("", "Plain answer with <think> inside.")
    assert run("  <think>unfinished") == ("unfinished", "")


def test_qwen_tool_calls_are_parsed():
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "巴黎"}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Sure."
    assert len(calls) == 1 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "巴黎"}
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>'
    content, calls = parse_tool_calls(two)
    assert content is None and [c["function"]["name"] for c in calls] == ["a", "b"]
    # not JSON: left as text, no call invented
    assert parse_tool_calls("<tool_call>oops</tool_call>") == ("<tool_call>oops</tool_call>", [])


def test_fim_prompt_uses_the_models_tokens():
    class Tok:
        def __init__(self, names):
            self.names = set(names)

        def token_to_id(self, t):
            return 1 if t in self.names else None

    q = Tok(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"])
    assert fim_prompt(q, "a", "b") == "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"
    from pyengine.errors import PyEngineError

    with pytest.raises(PyEngineError, match="fill-in-the-middle"):
        fim_prompt(Tok([]), "a", "b")


def test_bare_json_tool_call_only_for_a_declared_tool():
    bare = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    content, calls = parse_tool_calls(bare, {"get_weather"})
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_tool_calls(bare, {"other_tool"}) == (bare, [])
    assert parse_tool_calls(bare) == (bare, [])
    assert parse_tool_calls('{"name": "get_weather"}', {"get_weather"})[1] == []
