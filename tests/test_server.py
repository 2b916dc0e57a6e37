"""`pyengine serve` driven by the real `openai` and `ollama` clients on 127.0.0.1 (ephemeral port)."""
from __future__ import annotations

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import real_model_path  # noqa: E402

NAME = "smollm2-135m"
N_CTX = 512
HI = [{"role": "user", "content": "Say hi"}]


class Server:
    def __init__(self, name, n_ctx=N_CTX, parallel=4, **kw):
        import pyengine
        from pyengine.server import ServerThread, bind
        from pyengine.server.app import create_app

        self.model = pyengine.load(real_model_path(name), n_ctx=n_ctx, max_sequences=parallel, progress=False)
        self.app = create_app(self.model, name, **kw)
        self.thread = ServerThread(self.app, bind("127.0.0.1", 0)).start()
        self.base = f"http://127.0.0.1:{self.thread.port}"
        self.oai = openai.OpenAI(base_url=self.base + "/v1", api_key="unused", timeout=120, max_retries=0)
        self.oll = ollama.Client(host=self.base, timeout=120)

    def stop(self):
        self.thread.stop()


@pytest.fixture(scope="module")
def srv():
    s = Server(NAME, max_body=1 << 20)
    yield s
    s.stop()


def chat(srv, **kw):
    args = dict(model=NAME, messages=HI, max_tokens=12, temperature=0)
    args.update(kw)
    return srv.oai.chat.completions.create(**args)


def assert_serving(srv):
    r = chat(srv, max_tokens=3)
    assert r.choices[0].message.content


# --- OpenAI ------------------------------------------------------------------------------------

def test_models(srv):
    assert [m.id for m in srv.oai.models.list()] == [NAME]


def test_chat_non_streaming_usage_and_length(srv):
    r = chat(srv, max_tokens=5)
    c = r.choices[0]
    assert c.finish_reason == "length" and c.message.role == "assistant" and c.message.content
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == len(srv.model.chat_tokens(HI))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_chat_streaming_equals_non_streaming_and_ends_with_done(srv):
    full = chat(srv, max_tokens=16).choices[0].message.content
    chunks = list(chat(srv, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # the raw wire format: SSE events ending with data: [DONE]
    with httpx.stream("POST", srv.base + "/v1/chat/completions", timeout=60,
                      json=dict(model=NAME, messages=HI, max_tokens=4, temperature=0, stream=True)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


def test_stop_strings_cut_the_text(srv):
    full = chat(srv, max_tokens=16).choices[0].message.content
    word = full.split()[2]
    r = chat(srv, max_tokens=16, stop=[word])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(word)]
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chat(srv, max_tokens=16, stop=word, stream=True)
                       if ch.choices)
    assert streamed == full[:full.index(word)]


def test_seed_and_top_p(srv):
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.9)
    a = chat(srv, seed=11, **kw).choices[0].message.content
    assert chat(srv, seed=11, **kw).choices[0].message.content == a
    others = {chat(srv, seed=s, **kw).choices[0].message.content for s in (12, 13, 14)}
    assert others != {a}


def test_four_concurrent_clients_get_their_solo_text(srv):
    prompts = ["Say hi", "Name a fruit.", "What is 2+2?", "写一首关于月亮的诗"]
    kw = dict(max_tokens=16, temperature=0.8)
    solo = [chat(srv, messages=[{"role": "user", "content": p}], seed=i, **kw).choices[0].message.content
            for i, p in enumerate(prompts)]
    out = [None] * 4
    barrier = threading.Barrier(4)

    def run(i):
        barrier.wait()
        stream = chat(srv, messages=[{"role": "user", "content": prompts[i]}], seed=i, stream=True, **kw)
        out[i] = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

    th = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    t0 = time.perf_counter()
    for t in th:
        t.start()
    for t in th:
        t.join(300)
    assert out == solo, (out, solo)
    assert time.perf_counter() - t0 < 300


def test_json_schema_output_validates(srv):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = chat(srv, messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=60,
             response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str) and isinstance(obj["age"], int)
    assert r.choices[0].finish_reason == "stop"
    r = chat(srv, messages=[{"role": "user", "content": "List two colours."}], max_tokens=60,
             response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_chinese_streams_whole_characters(srv):
    kw = dict(model=NAME, prompt="离线使用大语言模型的好处是", max_tokens=24, temperature=0)
    full = srv.oai.completions.create(**kw).choices[0].text
    pieces = [ch.choices[0].text for ch in srv.oai.completions.create(stream=True, **kw)]
    assert "".join(pieces) == full
    assert any("\u4e00" <= ch <= "\u9fff" for ch in full), full
    assert all("\ufffd" not in p for p in pieces)
    # and through the ollama client's chat stream
    parts = [c.message.content for c in srv.oll.chat(
        model=NAME, messages=[{"role": "user", "content": "Translate to Chinese: I love you"}], stream=True,
        options={"temperature": 0, "num_predict": 24})]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(parts))
    assert all("\ufffd" not in p for p in parts)


def test_prompt_prefix_is_reused(srv):
    conv = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count to three."}]
    chat(srv, messages=conv, max_tokens=4)
    r = chat(srv, messages=conv, max_tokens=4)
    assert r.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1


def test_client_disconnect_stops_generation(srv):
    m = srv.model
    with httpx.stream("POST", srv.base + "/v1/chat/completions", timeout=60,
                      json=dict(model=NAME, messages=[{"role": "user", "content": "Tell a long story."}],
                                max_tokens=400, temperature=0, stream=True)) as r:
        it = r.iter_lines()
        for _ in range(4):
            next(it)
    # the connection is closed: the sequence must come back well before 400 tokens are written
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(m._idle) != m._n_seqs:
        time.sleep(0.1)
    assert len(m._idle) == m._n_seqs, "generation kept running after the client left"
    assert m.last_stats.generated_tokens < 300
    assert_serving(srv)


@pytest.mark.parametrize("case", ["unknown_model", "malformed_json", "body_too_large", "prompt_too_long",
                                  "bad_temperature", "bad_top_p", "bad_max_tokens", "n_2", "bad_messages",
                                  "bad_role", "not_an_object", "bad_template_kwargs", "logprobs"])
def test_bad_inputs_get_openai_errors_and_the_server_keeps_serving(srv, case):
    url = srv.base + "/v1/chat/completions"
    ok = dict(model=NAME, messages=HI, max_tokens=2)
    if case == "malformed_json":
        r = httpx.post(url, content=b'{"model": ', headers={"content-type": "application/json"})
    elif case == "body_too_large":
        r = httpx.post(url, content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    elif case == "not_an_object":
        r = httpx.post(url, json=[1, 2])
    else:
        body = dict(ok)
        body.update({"unknown_model": {"model": "gpt-9"},
                     "prompt_too_long": {"messages": [{"role": "user", "content": "hello " * 700}]},
                     "bad_temperature": {"temperature": -1},
                     "bad_top_p": {"top_p": 1.5},
                     "bad_max_tokens": {"max_tokens": 0},
                     "n_2": {"n": 2},
                     "bad_messages": {"messages": "hi"},
                     "bad_role": {"messages": [{"role": "wizard", "content": "x"}]},
                     "bad_template_kwargs": {"chat_template_kwargs": {"messages": []}},
                     "logprobs": {"logprobs": True}}[case])
        r = httpx.post(url, json=body)
    want = {"unknown_model": 404, "body_too_large": 413}.get(case, 400)
    assert r.status_code == want, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    if case == "prompt_too_long":
        assert "tokens but the context holds 512" in err["message"]
        assert err["code"] == "context_length_exceeded"
    assert_serving(srv)


def test_chat_template_kwargs_reach_the_template(srv):
    r = chat(srv, max_tokens=2, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content


def test_errors_through_the_openai_client(srv):
    with pytest.raises(openai.NotFoundError):
        chat(srv, model="nope")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(srv, temperature=7)
    assert_serving(srv)


def test_completions_suffix_without_fim_tokens_is_a_clear_error(srv):
    with pytest.raises(openai.BadRequestError, match="fill-in-the-middle"):
        srv.oai.completions.create(model=NAME, prompt="def f(", suffix=")", max_tokens=4)


def test_cors(srv):
    r = httpx.options(srv.base + "/v1/chat/completions",
                      headers={"Origin": "http://localhost:3210", "Access-Control-Request-Method": "POST",
                               "Access-Control-Request-Headers": "content-type,authorization"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "http://localhost:3210")
    r = httpx.get(srv.base + "/api/tags", headers={"Origin": "http://localhost:3210"})
    assert "access-control-allow-origin" in r.headers


# --- Ollama ------------------------------------------------------------------------------------

def test_ollama_version_tags_show(srv):
    assert httpx.get(srv.base + "/api/version").json()["version"]
    tags = srv.oll.list()
    assert [m.model for m in tags.models] == [f"{NAME}:latest"]
    assert tags.models[0].size == srv.model.file_size and tags.models[0].details.format == "gguf"
    show = srv.oll.show(NAME)
    assert f"num_ctx" in show.parameters and str(N_CTX) in show.parameters
    assert show.modelinfo["general.architecture"] == "llama"


def test_ollama_chat_and_generate(srv):
    opts = {"temperature": 0, "num_predict": 10}
    full = srv.oll.chat(model=NAME, messages=HI, options=opts, stream=False)
    assert full.done and full.message.role == "assistant" and full.eval_count == 10
    assert full.done_reason == "length" and full.prompt_eval_count > 0
    parts = list(srv.oll.chat(model=f"{NAME}:latest", messages=HI, options=opts, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == full.message.content
    assert full.message.content == chat(srv, max_tokens=10).choices[0].message.content  # same template, same text
    g = srv.oll.generate(model=NAME, prompt="Say hi", options=opts)
    assert g.done and g.response == full.message.content
    g2 = srv.oll.generate(model=NAME, prompt="The sky is", raw=True, options=opts)
    assert g2.response
    j = srv.oll.chat(model=NAME, messages=[{"role": "user", "content": "A colour as JSON."}], format="json",
                     options={"temperature": 0, "num_predict": 60}, stream=False)
    assert isinstance(json.loads(j.message.content), dict)


def test_ollama_errors(srv):
    with pytest.raises(ollama.ResponseError) as ei:
        srv.oll.chat(model="llama3:8b", messages=HI)
    assert ei.value.status_code == 404 and "not found" in ei.value.error
    r = httpx.post(srv.base + "/api/chat", content=b"{oops")
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(srv.base + "/api/generate", json={"model": NAME, "prompt": "x", "options": {"temperature": "hot"}})
    assert r.status_code == 400 and "temperature" in r.json()["error"]
    r = httpx.post(srv.base + "/api/chat", json={"model": NAME, "messages": [{"role": "user", "content": "hi " * 700}]})
    assert r.status_code == 400 and "context holds 512" in r.json()["error"]
    assert_serving(srv)


# --- Qwen2.5-Coder: tool calls and fill-in-the-middle (needs the qwen2 architecture) --------------

@pytest.fixture(scope="module")
def qwen():
    s = Server("qwen2.5-coder-0.5b", n_ctx=1024, parallel=1)
    yield s
    s.stop()


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_qwen_tool_call_round_trip(qwen):
    msgs = [{"role": "user", "content": "What is the weather in Paris right now? Use the tool."}]
    r = qwen.oai.chat.completions.create(model="qwen2.5-coder-0.5b", messages=msgs, tools=WEATHER,
                                         max_tokens=64, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c.message
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    msgs += [c.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "sunny"}'}]
    r2 = qwen.oai.chat.completions.create(model="qwen2.5-coder-0.5b", messages=msgs, tools=WEATHER,
                                          max_tokens=48, temperature=0)
    assert r2.choices[0].finish_reason in ("stop", "length")
    assert "21" in r2.choices[0].message.content


def test_qwen_fill_in_the_middle(qwen):
    r = qwen.oai.completions.create(model="qwen2.5-coder-0.5b", prompt="def add(a, b):\n    return ",
                                    suffix="\n\nprint(add(1, 2))\n", max_tokens=16, temperature=0)
    assert "a + b" in r.choices[0].text.replace("a+b", "a + b")


def test_qwen_tool_call_through_ollama(qwen):
    r = qwen.oll.chat(model="qwen2.5-coder-0.5b",
                      messages=[{"role": "user", "content": "What is the weather in Paris right now? Use the tool."}],
                      tools=WEATHER, options={"temperature": 0, "num_predict": 64}, stream=False)
    calls = r.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert "paris" in calls[0].function.arguments["city"].lower()


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_serve_starts_on_loopback_and_says_so():
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pyengine", "serve", "-m", str(real_model_path(NAME)),
                             "--port", "0", "--ctx", "256", "-q"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port, "".join(lines)
        for _ in range(2):  # the loopback note and the base URLs
            lines.append(proc.stderr.readline())
        assert "loopback only" in "".join(lines)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                r = httpx.get(base + "/v1/models", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.json()["data"][0]["id"] == real_model_path(NAME).stem
        # the same port again: one clear line, before any model is loaded
        again = subprocess.run([sys.executable, "-m", "pyengine", "serve", "-m", "no-such-model",
                                "--port", str(port)], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert again.stderr.strip().startswith("pyengine: error: cannot listen on 127.0.0.1:")
        assert len(again.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(30)


def test_loopback_detection():
    from pyengine.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")
