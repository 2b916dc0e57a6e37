"""Chat templates: real templates (llama.cpp's models/templates, the Qwen file's own) rendered in
the sandbox, byte for byte where the format is documented; hostile templates refused in bounded
time and size."""
from __future__ import annotations

import time

import pytest

from llamacpp_sdist import templates_dir
from pyengine.chat_template import ChatTemplateError, apply_chat_template, render
from pyengine.errors import PyEngineError

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
]


class FakeTok:
    """Just what apply_chat_template reads from a tokenizer."""

    def __init__(self, template, bos="<s>", eos="</s>", vocab=()):
        self.chat_template = template
        self._names = [bos, eos]
        self.bos_id, self.eos_id = 0, 1
        self._vocab = set(vocab)

    def id_to_token(self, i):
        return self._names[i]

    def token_to_id(self, t):
        return 7 if t in self._vocab else None


def real(name: str) -> str:
    return (templates_dir() / f"{name}.jinja").read_text(encoding="utf-8")


# --- byte for byte, expected strings written from each format's documentation -------------

CHATML = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
          "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
          "<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B"])
def test_qwen_templates_are_chatml(name):
    assert apply_chat_template(FakeTok(real(name)), CONV) == CHATML
    # no generation prompt: ends after the last user turn
    assert apply_chat_template(FakeTok(real(name)), CONV, add_generation_prompt=False) == \
        CHATML[:-len("<|im_start|>assistant\n")]


def test_llama31_header_format():
    want = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    tok = FakeTok(real("meta-llama-Llama-3.1-8B-Instruct"), bos="<|begin_of_text|>", eos="<|eot_id|>")
    assert apply_chat_template(tok, CONV) == want


def test_gemma2_refuses_a_system_role_so_it_is_folded_into_the_first_user_turn():
    tok = FakeTok(real("google-gemma-2-2b-it"), bos="<bos>", eos="<eos>")
    want = ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n")
    assert apply_chat_template(tok, CONV) == want
    # the template's own refusal is what triggered the folding
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        render(tok.chat_template, CONV, bos_token="<bos>")


def test_phi35_format():
    want = ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
            "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n")
    assert apply_chat_template(FakeTok(real("microsoft-Phi-3.5-mini-instruct")), CONV) == want


SYS_FIRST = ("Be brief.", "Hi", "Hello!", "What is 2+2?")
SYS_LAST_TURN = ("Hi", "Hello!", "Be brief.", "What is 2+2?")  # Mistral: system text opens the last [INST]


@pytest.mark.parametrize("name,markers,order", [
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", ["<｜User｜>", "<｜Assistant｜>"], SYS_FIRST),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", ["<｜User｜>", "<｜Assistant｜>"], SYS_FIRST),
    ("mistralai-Mistral-Nemo-Instruct-2407", ["[INST]Be brief.\n\nWhat is 2+2?[/INST]"], SYS_LAST_TURN),
    ("Mistral-Small-3.2-24B-Instruct-2506", ["[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT]", "[INST]"], SYS_FIRST),
    ("GLM-4.6", ["[gMASK]<sop>", "<|user|>", "<|assistant|>"], SYS_FIRST),
    ("meta-llama-Llama-3.2-3B-Instruct", ["<|start_header_id|>user<|end_header_id|>"], SYS_FIRST),
])
def test_other_real_templates_render_every_turn_in_order(name, markers, order):
    out = apply_chat_template(FakeTok(real(name)), CONV)
    for m in markers:
        assert m in out, (m, out)
    pos = [out.index(t) for t in order]
    assert pos == sorted(pos), out


def test_sandbox_hides_internals():
    for t in ("{{ raise_exception.__globals__ }}", "{{ messages.__class__ }}", "{{ cycler }}{{ joiner }}"):
        try:
            out = render(t, CONV)
        except ChatTemplateError:
            continue
        assert out == "", (t, out)


def test_qwen25_coder_files_own_template(tmp_path):
    """The real Qwen2.5-Coder GGUF's template: ChatML with a default system prompt and
    Qwen's <tools> / <tool_call> format."""
    from conftest import real_model_path
    from pyengine.gguf_file import open_gguf
    from pyengine.tokenizer import Tokenizer

    t = Tokenizer.from_metadata(open_gguf(real_model_path("qwen2.5-coder-0.5b")).metadata)
    assert t.apply_chat_template(CONV) == CHATML
    assert t.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    conv = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "22 C"}]
    out = t.apply_chat_template(conv, tools=tools)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in out
    # arguments given as a JSON string (OpenAI) reach the template as a mapping: no double encoding
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in out
    assert out.endswith("<|im_start|>user\n<tool_response>\n22 C\n</tool_response><|im_end|>\n"
                        "<|im_start|>assistant\n")


def test_template_globals():
    out = render("{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y') }}|{{ {'a': '中'} | tojson }}|"
                 "{{ add_generation_prompt }}|{{ tools | length }}",
                 [], bos_token="<s>", eos_token="</s>", tools=[{"x": 1}])
    assert out.split("|")[:2] == ["<s>", "</s>"]
    assert out.split("|")[2].isdigit()
    assert out.split("|")[3] == '{"a": "中"}'  # HF's tojson: no escaping, no ASCII-only
    assert out.split("|")[4:] == ["True", "1"]


def test_fallbacks_only_without_a_template():
    gem = FakeTok(None, vocab={"<start_of_turn>", "<end_of_turn>"})
    assert apply_chat_template(gem, CONV[:2]) == \
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    cml = FakeTok(None, vocab={"<|im_start|>", "<|im_end|>"})
    assert apply_chat_template(cml, CONV) == CHATML
    with pytest.raises(PyEngineError, match="no chat template"):
        apply_chat_template(FakeTok(None), CONV)


def test_bad_messages_are_one_line_errors():
    tok = FakeTok(real("Qwen-Qwen2.5-7B-Instruct"))
    for bad, pat in [("hi", "must be a list"), ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
                     ([{"role": "user", "content": 5}], "content must be a string"),
                     ([{"role": "user", "content": [{"type": "image_url"}]}], "image_url")]:
        with pytest.raises(PyEngineError, match=pat):
            apply_chat_template(tok, bad)


# --- hostile templates --------------------------------------------------------------------------

HOSTILE = {
    "ssti_class": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "ssti_via_method": "{{ (messages|first).items.__self__.__class__.__subclasses__() }}",
    "huge_repeat": "{{ 'a' * 10**10 }}",
    "doubling_concat": "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "doubling_plus": "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "huge_int": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "huge_power": "{{ 7 ** (10 ** 9) }}",
    "center": "{{ 'x' | center(10**9) }}",
    "format_width": "{{ '{:>999999999}'.format(1) }}",
    "percent_width": "{{ '%0999999999d' % 1 }}",
    "replace_bomb": "{{ ('a' * 1000000) | replace('a', 'aaaaaaaaaa') }}",
    "output_flood": "{% for i in range(100000) %}{{ 'a' * 1000000 }}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "never_ends": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(10**8) }}",
    "syntax": "{% for %}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_a_one_line_error_in_bounded_time(name):
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError) as ei:
        render(HOSTILE[name], CONV, time_limit=2.0)
    dt = time.monotonic() - t0
    assert dt < 4.0, f"{name} took {dt:.1f} s"
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 300, msg


def test_a_timed_out_render_leaves_the_renderer_usable():
    with pytest.raises(ChatTemplateError, match="did not finish"):
        render(HOSTILE["never_ends"], CONV, time_limit=0.5)
    assert apply_chat_template(FakeTok(real("Qwen-Qwen2.5-7B-Instruct")), CONV) == CHATML


def test_a_huge_chatml_template_is_not_scanned_with_a_superlinear_regex():
    # issue 11: a 416 KB template took 351 s in the old default-system-prompt regex
    body = "{% if messages[0]['role'] != 'system' %}" + "'<|im_start|>system\\n" + "a" * 20 + \
        "{{ '' }}" * 0 + " " * 416_000 + "{% endif %}" + \
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    t0 = time.monotonic()
    out = apply_chat_template(FakeTok(body), CONV[1:2])
    assert time.monotonic() - t0 < 5
    assert out.endswith("<|im_start|>user\nHi<|im_end|>\n")
