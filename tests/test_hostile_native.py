"""Hostile callers of pyengine._C: every native entry point checks its own arguments and
raises (ValueError / IndexError / TypeError); nothing crashes or silently does nothing
(issue 11, item 2).

Each case runs in its own subprocess so that a crash (SIGSEGV, SIGFPE, SIGBUS) fails the
case instead of killing pytest. The child prints RAISED <type>: <message> when the call
raised, RETURNED when it came back normally.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import native_built

pytestmark = pytest.mark.skipif(not native_built(), reason="native extension not built")

PRELUDE = """
import numpy as np
from pyengine import _C
f32 = lambda *s: np.zeros(s, np.float32)
KB = _C.ATTN_KEY_BLOCK
"""

# name -> (code whose last statement is the hostile call, exception type expected)
CASES = {
    # weight byte sizes: rows * row_bytes wraps to 0 in int64
    "get_rows_wrapped_rows": (
        '_C.get_rows("F32", np.zeros(0, np.uint8), 2**58, 64, np.array([2**31-1], np.int32), f32(1, 64))',
        "ValueError"),
    "get_rows_wrapped_rows_q8": (
        '_C.get_rows("Q8_0", np.zeros(0, np.uint8), 2**62, 32, np.array([5], np.int32), f32(1, 32))',
        "ValueError"),
    "matmul_wrapped_rows": (
        '_C.matmul("F32", np.zeros(0, np.uint8), 2**58, 64, f32(1, 64), f32(1, 0))', "ValueError"),
    "matmul_out_overlaps_x": ("""
buf = f32(3, 64)
_C.matmul("F32", np.zeros(64 * 64 * 4, np.uint8), 64, 64, buf[:2], buf[1:])""", "ValueError"),
    "matmul_out_overlaps_w": ("""
wf = np.zeros(2 * 32 + 8, np.float32)
_C.matmul("F32", wf[:64].view(np.uint8), 2, 32, f32(4, 32), wf[4:12].reshape(4, 2))""", "ValueError"),
    "matmul_zero_cols": (
        '_C.matmul("Q8_0", np.zeros(0, np.uint8), 4, 0, f32(1, 0), f32(1, 4))', "ValueError"),
    "get_rows_zero_cols": (
        '_C.get_rows("F32", np.zeros(0, np.uint8), 4, 0, np.array([1], np.int32), f32(1, 0))', "ValueError"),
    "get_rows_negative_cols": (
        '_C.get_rows("F32", np.zeros(0, np.uint8), 0, -64, np.array([], np.int32), f32(0, 1))', "ValueError"),
    # zero widths: rmsnorm divides by the width
    "rmsnorm_zero_width": ('_C.rmsnorm(f32(1, 0), f32(1), 1e-5, f32(1, 0))', "ValueError"),
    "rmsnorm_zero_width_empty_w": ('_C.rmsnorm(f32(1, 0), f32(0), 1e-5, f32(1, 0))', "ValueError"),
    "rmsnorm_add_zero_width": ('_C.rmsnorm_add(f32(2, 0), f32(4), 1e-5, f32(2, 0), f32(2, 0))', "ValueError"),
    "add_rmsnorm_zero_width": ('_C.add_rmsnorm(f32(2, 0), f32(2, 0), f32(4), 1e-5, f32(2, 0), f32(2, 0))',
                               "ValueError"),
    # positions against the cache
    "kv_store_huge_pos0": ('_C.kv_store(f32(1, 64), f32(1, 64, KB), 2**63 - 1)', "ValueError"),
    "kv_store_pos0_wraps_negative": ('_C.kv_store(f32(3, 64), f32(1, 64, KB), 2**63 - 2)', "ValueError"),
    # DecodeGraph
    "graph_embed_wrapped_rows": ("""
g = _C.DecodeGraph()
out = f32(1, 64)
g.add_embed("F32", np.zeros(0, np.uint8), 2**58, 64, out)
g.set_output(out)
g.step(2**31 - 1, 0)""", "ValueError"),
    "graph_step_without_output": ("""
g = _C.DecodeGraph()
g.add_embed("F32", np.zeros(4 * 64 * 4, np.uint8), 4, 64, f32(1, 64))
print("RESULT", g.step(0, 0).shape)""", "ValueError"),
    "graph_empty_step": ("_C.DecodeGraph().step(0, 0)", "ValueError"),
    "graph_kv_write_huge_offset": ("""
g = _C.DecodeGraph()
g.add_kv_write(f32(64), f32(64), f32(1, 64, KB), f32(KB, 64), -2**63, True)
g.set_output(f32(4))
g.step(0, 2**62)""", "ValueError"),
    "graph_matmul_wrapped_rows": ("""
g = _C.DecodeGraph()
g.add_matmul("F32", np.zeros(0, np.uint8), 2**58, 64, f32(1, 64), f32(1, 4))""", "ValueError"),
    "graph_rmsnorm_zero_width": ("""
g = _C.DecodeGraph()
g.add_rmsnorm(f32(1, 0), f32(1), 1e-5, f32(1, 0))""", "ValueError"),
}


def run_case(code: str) -> subprocess.CompletedProcess:
    body = PRELUDE + "\ntry:\n" + textwrap.indent(textwrap.dedent(code).strip(), "    ") + \
        "\nexcept Exception as e:\n    print('RAISED', type(e).__name__ + ':', e)\nelse:\n    print('RETURNED')\n"
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_native_entry_point_raises(case):
    code, exc = CASES[case]
    p = run_case(code)
    assert p.returncode == 0, f"child died with {p.returncode} (signal {-p.returncode if p.returncode < 0 else '-'}): " \
                              f"{p.stderr[-500:]}"
    assert f"RAISED {exc}:" in p.stdout, p.stdout + p.stderr


def test_valid_calls_still_work():
    """The checks refuse only bad arguments: the same entry points with sane ones compute."""
    p = run_case("""
w = (np.arange(4 * 64, dtype=np.float32) / 100).view(np.uint8)
out = f32(2, 64)
_C.get_rows("F32", w, 4, 64, np.array([3, 0], np.int32), out)
assert out[0, 0] == np.float32(3 * 64 / 100) and out[1, 1] == np.float32(0.01)
kt = f32(1, 64, KB)
_C.kv_store(np.ones((1, 64), np.float32), kt, KB - 1)
assert kt[0, :, KB - 1].sum() == 64
x = np.ones((1, 64), np.float32); o = f32(1, 64)
_C.rmsnorm(x, np.ones(64, np.float32), 0.0, o)
assert abs(o - 1).max() < 1e-6
_C.rmsnorm(f32(0, 64), np.ones(64, np.float32), 0.0, f32(0, 64))  # no rows: nothing to do
g = _C.DecodeGraph()
e = f32(1, 64)
g.add_embed("F32", w, 4, 64, e)
g.set_output(e)
assert g.step(2, 0)[0, 0] == np.float32(2 * 64 / 100)""")
    assert p.returncode == 0 and "RETURNED" in p.stdout, p.stdout + p.stderr
