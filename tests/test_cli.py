"""The command line as a user meets it: `python -m pyengine ...` in a subprocess.

* Every invalid argument of `generate` is one line on stderr and exit status 2, found
  BEFORE the model loads. The proof: those runs use a GGUF file that has a complete
  header (context length 2048) but no tensors, so loading it fails with exit 1 and
  "tensor ... is missing" (test_header_only_model_cannot_load): an exit 2 with the
  argument's message means nothing past the header was touched.
* `--temp 0` is greedy without a repetition penalty unless one is asked for.
* A model with a chat template gets the prompt as a user turn (unless --raw); a model
  without one continues the prompt, echoed first (unless --no-echo).
* A truncated file in the cache says how to fetch it again; `list` and `doctor` explain
  themselves in --help.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import real_model_path

HEADER_CTX = 2048


def run_cli(*args, timeout=300, env=None):
    """`python -m pyengine ARGS`, run outside the source tree: from the repository root, -m
    would import the uncompiled source package instead of the installed one."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pyengine", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, encoding="utf-8", env=e, stdin=subprocess.DEVNULL,
                          cwd=tempfile.gettempdir())


def one_error_line(proc, status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pyengine: error: "), lines[0]
    assert proc.stdout == "", proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def header_only(tmp_path_factory) -> Path:
    """A llama GGUF with a full header (context length 2048) and no tensors at all."""
    import gguf

    path = tmp_path_factory.mktemp("hdr") / "header-only.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(HEADER_CTX)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_header_only_model_cannot_load(header_only):
    """The control: with valid arguments this file gets as far as loading, and fails there."""
    line = one_error_line(run_cli("generate", "-m", header_only, "hello"), 1)
    assert "tensor 'token_embd.weight' is missing" in line


BAD_ARGS = [
    (["-n", "0"], r"-n/--n-predict must be >= 1 \(or -1: until the end of the text\), got 0"),
    (["-n", "-2"], r"-n/--n-predict must be >= 1 .* got -2"),
    (["--temp", "-0.5"], r"--temp must be >= 0 \(0 = greedy\), got -0.5"),
    (["--temp", "nan"], r"--temp must be a finite number"),
    (["--top-k", "-1"], r"--top-k must be >= 0 \(0 = off\), got -1"),
    (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
    (["--top-p", "1.5"], r"--top-p must be in \(0, 1\] \(1 = off\), got 1.5"),
    (["--min-p", "-0.1"], r"--min-p must be in \[0, 1\]"),
    (["--min-p", "1.5"], r"--min-p must be in \[0, 1\] \(0 = off\), got 1.5"),
    (["--repeat-penalty", "0"], r"--repeat-penalty must be > 0 \(1 = off\), got 0.0"),
    (["--repeat-penalty", "-1.1"], r"--repeat-penalty must be > 0"),
    (["--ctx", "0"], r"--ctx must be >= 1 token, got 0"),
    (["--ctx", "-8"], r"--ctx must be >= 1 token, got -8"),
    (["--ctx", str(HEADER_CTX + 1)],
     rf"--ctx {HEADER_CTX + 1} is above the model's context length {HEADER_CTX} \(header-only.gguf\); "
     rf"use --ctx {HEADER_CTX} or less"),
    (["-t", "0"], r"-t/--threads must be >= 1, got 0"),
    (["--threads", "-4"], r"-t/--threads must be >= 1, got -4"),
    (["--chat", "--raw"], r"--raw and --chat contradict each other"),
    (["--system", "be brief", "--raw"], r"--raw and --system contradict each other"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_argument_is_one_line_exit_2_before_loading(header_only, args, message):
    line = one_error_line(run_cli("generate", "-m", header_only, *args, "hello"), 2)
    assert re.search(message, line), line


def test_ctx_at_the_model_limit_is_accepted(header_only):
    """--ctx equal to the model's limit passes the check (and then fails only at loading)."""
    line = one_error_line(run_cli("generate", "-m", header_only, "--ctx", HEADER_CTX, "hello"), 1)
    assert "is missing" in line


def test_prompt_file_not_utf8(header_only, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    line = one_error_line(run_cli("generate", "-m", header_only, "-f", bad), 2)
    assert re.search(r"prompt file .*latin1.txt is not valid UTF-8 \(byte 3", line), line


def test_prompt_file_missing(header_only, tmp_path):
    line = one_error_line(run_cli("generate", "-m", header_only, "-f", tmp_path / "nope.txt"), 2)
    assert "cannot read prompt file" in line


def test_stdin_prompt_not_utf8(header_only):
    proc = subprocess.run([sys.executable, "-m", "pyengine", "generate", "-m", str(header_only), "-"],
                          input=b"\xff\xfe bad", capture_output=True, timeout=120, cwd=tempfile.gettempdir())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == ["pyengine: error: the prompt on stdin is not valid UTF-8 (byte 0)"], lines


def test_argument_errors_precede_model_lookup():
    """The value checks need no model at all: an unknown model name is not even looked up."""
    line = one_error_line(run_cli("generate", "-m", "no-such-model-7b", "-n", "0", "hi"), 2)
    assert "-n/--n-predict" in line


# --- sampling defaults (in process: no model needed) ---------------------------------

def _sampling_for(*argv):
    from pyengine.cli import _check_generate_args, _sampling, build_parser

    args = build_parser().parse_args(["generate", "prompt", *argv])
    _check_generate_args(args)
    return _sampling(args)


def test_temp_0_is_greedy_without_repeat_penalty():
    s = _sampling_for("--temp", "0")
    assert s["temperature"] == 0 and s["repeat_penalty"] == 1.0


def test_temp_0_keeps_an_explicit_repeat_penalty():
    assert _sampling_for("--temp", "0", "--repeat-penalty", "1.3")["repeat_penalty"] == 1.3


def test_sampling_default_penalty_is_1_1():
    s = _sampling_for()
    assert s["temperature"] == 0.8 and s["repeat_penalty"] == 1.1


def test_until_end_value_is_accepted():
    from pyengine.cli import UNTIL_END

    assert UNTIL_END == -1
    _sampling_for("-n", "-1")  # no error


# --- help ------------------------------------------------------------------------------

def test_list_and_doctor_help_describe_the_command():
    out = run_cli("list", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert "registry" in text and "downloaded" in text and "pyengine pull NAME" in text
    out = run_cli("doctor", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "native extension" in text and "backends" in text and "GPU" in text


def test_list_marks_the_one_default_model():
    """The model `generate` loads without -m is the one `list` marks, and no other (a
    description once called another model the default)."""
    from pyengine.registry import DEFAULT_MODEL

    out = run_cli("list")
    assert out.returncode == 0
    marked = [line.split()[0] for line in out.stdout.splitlines() if "default" in line.lower()]
    assert marked == [DEFAULT_MODEL]


def test_generate_help_documents_the_limits():
    out = " ".join(run_cli("generate", "--help").stdout.split())  # argparse wraps lines
    for text in ("-1 = until the model ends", "--raw", "--no-echo", "in (0, 1]", "in [0, 1]", "exit status 2",
                 "1 with --temp 0"):
        assert text in out, text


# --- the default model -------------------------------------------------------------------

def test_default_model_is_an_instruction_model_with_a_chat_template():
    from pyengine.gguf_file import open_gguf
    from pyengine.registry import DEFAULT_MODEL

    gf = open_gguf(real_model_path(DEFAULT_MODEL))
    assert isinstance(gf.metadata.get("tokenizer.chat_template"), str)
    assert "instruct" in str(gf.metadata.get("general.name", "")).lower()


# --- chat by default, echo for plain text (real models, greedy, a few tokens) -----------

N = 8


def _greedy_api(name: str, text: str, parse_special: bool) -> str:
    import pyengine

    m = pyengine.load(real_model_path(name), n_ctx=256, progress=False)
    prompt = m.chat_tokens([{"role": "user", "content": text}]) if parse_special else text
    return "".join(m.generate(prompt, max_tokens=N, temperature=0, repeat_penalty=1.0, parse_special=parse_special))


def test_instruct_model_answers_through_its_chat_template():
    q = "What is the capital of France?"
    proc = run_cli("generate", "-m", real_model_path("smollm2-135m"), "--temp", "0", "-n", N, "-q", q)
    assert proc.returncode == 0, proc.stderr
    want = _greedy_api("smollm2-135m", q, parse_special=True)
    assert proc.stdout == want + "\n"
    assert not proc.stdout.startswith(q)  # no echo of a chat question


def test_raw_continues_the_prompt_and_echoes_it():
    q = "The capital of France is"
    proc = run_cli("generate", "-m", real_model_path("smollm2-135m"), "--raw", "--temp", "0", "-n", N, "-q", q)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == q + _greedy_api("smollm2-135m", q, parse_special=False) + "\n"


def test_base_model_echoes_the_prompt_unless_no_echo():
    q = "The capital of France is"
    path = real_model_path("gemma3-270m")  # no chat template in the file
    proc = run_cli("generate", "-m", path, "--temp", "0", "-n", 4, "-q", q)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(q) and len(proc.stdout) > len(q) + 1
    proc2 = run_cli("generate", "-m", path, "--temp", "0", "-n", 4, "-q", "--no-echo", q)
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout == proc.stdout[len(q):]


def test_until_end_of_text_stops_at_eos_or_full_context():
    proc = run_cli("generate", "-m", real_model_path("smollm2-135m"), "--temp", "0", "-n", -1, "--ctx", 48,
                   "Say hello.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


# --- a damaged cache -----------------------------------------------------------------------

def test_truncated_cached_model_says_pull_again(tmp_path):
    from pyengine.registry import get_entry

    src = real_model_path("smollm2-135m")
    entry = get_entry("smollm2-135m")
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    with open(src, "rb") as f, open(cache / "models" / entry.file, "wb") as out:
        out.write(f.read(src.stat().st_size // 2))  # the header and half the weights
    for argv in (["generate", "-m", "smollm2-135m", "-n", 1, "hi"], ["inspect", "smollm2-135m"]):
        line = one_error_line(run_cli(*argv, env={"PYENGINE_CACHE": str(cache)}), 1)
        assert "run `pyengine pull smollm2-135m`" in line, line


# --- the first run: the default model answers, in English and in Chinese ------------------

@pytest.mark.parametrize("question,answer", [
    ("What is the capital of France? Answer in one sentence.", "Paris"),
    ("法国的首都是哪里？请用一句话回答。", "巴黎"),
], ids=["english", "chinese"])
def test_default_model_answers_like_an_assistant(question, answer):
    """`pyengine generate "..."` with no options: the default (instruction) model gets the
    question through its chat template and answers it, without echoing the question."""
    from pyengine.registry import DEFAULT_MODEL

    real_model_path(DEFAULT_MODEL)  # fetched (or found in the cache) first, quietly
    proc = run_cli("generate", "--temp", "0", "-n", 24, question)
    assert proc.returncode == 0, proc.stderr
    assert answer in proc.stdout, proc.stdout
    assert not proc.stdout.startswith(question)
    assert "\ufffd" not in proc.stdout
