"""`pyengine chat`: the REPL through a pipe, and ChatSession through the Python API."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from conftest import load_real_model, real_model_path

NAME = "smollm2-135m"


def session(n_ctx=512, **kw):
    from pyengine.chat import ChatSession

    m = load_real_model(NAME, "auto", n_ctx=n_ctx)
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 12)
    return ChatSession(m, **kw)


def test_turns_reuse_the_cache_and_history_is_kept():
    s = session(system="You are terse.")
    a1 = s.ask("Name a colour.")
    st1 = s.last_stats
    assert a1 and st1.prompt_reused == 0
    a2 = s.ask("And another one?")
    st2 = s.last_stats
    assert st2.prompt_reused >= st1.prompt_tokens  # the whole first turn came from the cache
    assert st2.prompt_processed == st2.prompt_tokens - st2.prompt_reused
    assert st2.prompt_processed < st2.prompt_tokens / 2
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[1]["content"] == a1 and s.messages[3]["content"] == a2
    assert "reused from the cache" in s.stats_text()


def test_interrupted_answer_is_kept_partial():
    s = session(max_tokens=50)
    gen = s.send("Tell me a story.")
    first = next(gen)
    gen.close()  # what Ctrl-C does
    assert s.messages[-1] == {"role": "assistant", "content": first}
    assert s.ask("Go on.")  # the session goes on


def test_context_overflow_is_refused_with_counts_then_drop_makes_room():
    from pyengine.chat import ContextFullError

    s = session(n_ctx=128, max_tokens=8)
    s.ask("Hello, " + "tell me about the sea. " * 8)
    with pytest.raises(ContextFullError, match=r"is \d+ tokens but the context holds 128.*/drop"):
        s.ask("More please: " + "and about the waves. " * 8)
    n = len(s.messages)
    assert n == 2  # nothing was cut or added
    assert s.drop(1) == 1 and s.messages == []
    assert s.ask("More please: " + "and about the waves. " * 8)
    # --drop-old-turns: dropped explicitly, and said so
    s2 = session(n_ctx=128, max_tokens=8, drop_old_turns=True)
    s2.ask("Hello, " + "tell me about the sea. " * 8)
    s2.ask("More please: " + "and about the waves. " * 8)
    assert any("dropped the oldest exchange" in n for n in s2.notices)
    assert s2.messages[0]["content"].startswith("More please")


def test_save_and_load(tmp_path):
    from pyengine.errors import PyEngineError

    s = session(system="Be kind.")
    s.ask("Hi")
    f = tmp_path / "c.json"
    s.save(f)
    t = session()
    t.load(f)
    assert t.system == "Be kind." and t.messages == s.messages
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PyEngineError, match="not a saved chat"):
        t.load(tmp_path / "bad.json")


def test_repl_commands_through_streams(tmp_path):
    from pyengine.chat import repl

    s = session()
    f = tmp_path / "saved.json"
    cmds = f"Hi\n/stats\n/save {f}\n/system Speak like a pirate.\n/reset\nHello\n/drop\n/frobnicate\n/help\n/quit\nnever read\n"
    out, err = io.StringIO(), io.StringIO()
    assert repl(s, stdin=io.StringIO(cmds), stdout=out, stderr=err, interactive=False) == 0
    o = out.getvalue()
    assert "session: 1 turns" in o and f"saved 2 messages to {f}" in o
    assert "system message set" in o and "conversation cleared" in o
    assert "dropped 1 exchange" in o and "unknown command /frobnicate" in o and "/save FILE" in o
    assert s.system == "Speak like a pirate." and s.messages == []
    assert json.loads(f.read_text())["messages"][0] == {"role": "user", "content": "Hi"}


def test_cli_chat_through_a_pipe():
    p = real_model_path(NAME)
    proc = subprocess.run([sys.executable, "-m", "pyengine", "chat", "-m", str(p), "--temp", "0", "-n", "8", "-q",
                           "--system", "Answer briefly."],
                          input="What is the capital of France?\n/stats\n你好\n", capture_output=True, text=True,
                          encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len([ln for ln in lines if ln.strip()]) >= 3
    assert "session: 1 turns" in proc.stdout and "\ufffd" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_cli_chat_and_serve_help_teach():
    for cmd, words in [("chat", ["/drop", "/save", "--system", "--drop-old-turns", "Ctrl-C", "examples"]),
                       ("serve", ["--host", "127.0.0.1", "loopback", "/v1/chat/completions", "/api/chat",
                                  "--parallel", "examples", "base_url"])]:
        out = subprocess.run([sys.executable, "-m", "pyengine", cmd, "--help"], capture_output=True, text=True,
                             timeout=60).stdout
        for w in words:
            assert w in out, (cmd, w)


def test_ctrl_c_stops_the_answer_not_the_session():
    import os
    import signal
    import time

    p = real_model_path(NAME)
    proc = subprocess.Popen([sys.executable, "-m", "pyengine", "chat", "-m", str(p), "--temp", "0", "-n", "400",
                             "-q", "--backend", "numpy"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", bufsize=1)
    try:
        proc.stdin.write("Write a very long story about the sea.\n")
        proc.stdin.flush()
        got = ""
        deadline = time.monotonic() + 240
        while len(got) < 20 and time.monotonic() < deadline:  # the answer is streaming
            got += os.read(proc.stdout.fileno(), 64).decode("utf-8", "replace")
        assert len(got) >= 20, got
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("/stats\n/quit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "[stopped]" in got + out
    assert "session: 1 turns, 2 messages" in out  # the partial answer stayed in the conversation
    assert "Traceback" not in err


def test_fair_lock_survives_an_interrupted_waiter():
    import threading

    from pyengine.engine import _FairLock

    lock = _FairLock()
    lock.__enter__()  # held by "another generation"
    err = []

    def waiter():
        try:
            with lock:
                pass
        except KeyboardInterrupt as e:
            err.append(e)

    # a waiter interrupted while queued must not block everyone after it
    import ctypes

    t = threading.Thread(target=waiter)
    t.start()
    import time

    time.sleep(0.2)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(KeyboardInterrupt))
    with lock._cond:
        lock._cond.notify_all()  # wake it so the exception is delivered
    t.join(5)
    assert err and not t.is_alive()
    lock.__exit__(None, None, None)
    done = threading.Event()

    def later():
        with lock:
            done.set()

    threading.Thread(target=later).start()
    assert done.wait(5), "the lock stalled behind the abandoned ticket"


def test_ctrl_c_swallowed_by_a_finalizer_still_stops_the_answer():
    """A KeyboardInterrupt raised inside a finalizer is printed and lost; the flag set by the
    chat's SIGINT handler still stops the answer after the next piece."""
    import os
    import signal

    from pyengine.chat import _ctrl_c_stops

    before = signal.getsignal(signal.SIGINT)
    with _ctrl_c_stops() as stop:
        assert not stop
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        except KeyboardInterrupt:
            pass  # what a finalizer does with it
        assert stop
    assert signal.getsignal(signal.SIGINT) is before
