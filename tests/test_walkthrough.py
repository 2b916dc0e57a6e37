"""docs/walkthrough.md runs: its ```python blocks, executed in order in one namespace
(like a notebook) on the real default model, with their own asserts as the checks.

A failing snippet is reported with its line in the markdown file (the code is compiled
under the doc's file name, at its own line numbers), so a traceback points at the doc.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "walkthrough.md"

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# `path/to/file.ext:name` references in the doc (the "one name per level" table)
_REF = re.compile(r"`((?:pyengine|kernels|csrc)/[\w/]+\.(?:py|cpp|h|cu|cuh)):(\w+)`")


def snippets() -> list[tuple[int, str]]:
    """(first line number in the doc, code) of every ```python block, in order."""
    text = DOC.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def test_snippets_are_found_and_check_something():
    blocks = snippets()
    assert len(blocks) >= 10, "expected the walkthrough's code blocks"
    for line, code in blocks:
        assert re.search(r"^\s*assert\b", code, re.M), f"walkthrough.md:{line}: snippet has no assert"


def test_walkthrough_runs():
    pytest.importorskip("pyengine._C", reason="the walkthrough runs the native kernels")
    ns: dict = {"__name__": "walkthrough"}
    for line, code in snippets():
        # pad so that line numbers in tracebacks are those of the markdown file
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), ns)
    assert "nxt" in ns and "text" in ns  # it got to the sampled tokens


def test_named_functions_exist():
    refs = _REF.findall(DOC.read_text(encoding="utf-8"))
    assert len(refs) >= 20, "expected the table of names per level"
    for path, name in refs:
        f = ROOT / path
        assert f.is_file(), f"walkthrough names {path}, which does not exist"
        assert re.search(rf"\b{name}\b", f.read_text(encoding="utf-8")), \
            f"walkthrough names {path}:{name}, which is not in that file"
