"""Peak memory while generating, per weight type: weights stay memory-mapped in their GGUF
encoding, so a run needs about the file plus the KV cache, never a float32 copy.

For each type a small Llama-shaped file is written (pyengine.testing.synthetic's writer:
random valid blocks of a sane RMS from ``pyengine.testing.blocks.random_raw``), then a
subprocess loads it on the
``cpu`` backend and generates a few tokens. Its peak RSS (``VmHWM``) minus its RSS
before loading must stay within ``(file size + KV cache) * 1.15``. "Before loading" is
after a warm-up run of a tiny model of the same type in the same process, so the
engine's fixed cost (interpreter, NumPy, lazily imported modules, thread pool: ~40 MB,
the same for every model) is not charged to a 20-100 MB test file; anything that grows
with the weights (a float32 copy would be 4-16x the file) is.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyengine import kernels
from pyengine.testing import synthetic

gguf = pytest.importorskip("gguf")

# dim, layers, ffn, heads, kv heads, vocab, context used
SHAPE = dict(dim=1024, n_layers=6, ffn=4096, n_heads=16, n_kv_heads=4, n_vocab=1024, n_ctx=128)
TINY = dict(SHAPE, dim=256, n_layers=1, ffn=512, n_heads=4, n_kv_heads=2)
MARGIN = 1.15
TYPES = ("Q5_K", "Q5_1", "BF16", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL", "Q4_K", "Q6_K", "Q4_0", "Q8_0", "F16")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")


def write_model(path: Path, t: str, s: dict, seed: int = 0) -> None:
    """A Llama-shaped file whose matrices are all of type ``t`` (norms F32), by the synthetic
    model writer: random valid blocks of decoded RMS 1/sqrt(cols), a byte-level vocabulary."""
    specs = [(name, shp, tn if tn == "F32" else t) for name, shp, tn in synthetic.llama_tensors(s, s["n_vocab"])]
    md = synthetic.llama_metadata(dict(s, ctx=2048), s["n_vocab"])
    tok = synthetic.tokenizer_metadata("bytes", n_vocab=s["n_vocab"])
    synthetic.write_synthetic(path, "llama", f"memory test {t}", md, specs, tok, seed=seed)


CHILD = r"""
import json, sys
import pyengine

def status(key):  # kB fields of /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def run(path):
    m = pyengine.load(path, backend="cpu", n_ctx=int(sys.argv[3]), progress=False)
    return "".join(m.generate([5, 70, 80, 90, 100], max_tokens=12, temperature=0.0, stop_at_eos=False))

run(sys.argv[1])  # warm-up: a tiny model of the same type
try:  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status("VmRSS")
run(sys.argv[2])
# VmHWM, not ru_maxrss: ru_maxrss keeps the peak of the forked parent (pytest) across exec
print(json.dumps({"base": base, "peak": status("VmHWM")}))
"""


@pytest.mark.parametrize("t", TYPES)
def test_peak_rss_is_file_plus_kv_cache(t, tmp_path):
    if not kernels.native_available():
        pytest.skip("cpu backend unavailable: pyengine._C not importable")
    tiny, path = tmp_path / f"tiny-{t}.gguf", tmp_path / f"mem-{t}.gguf"
    write_model(tiny, t, TINY)
    write_model(path, t, SHAPE)
    size = path.stat().st_size
    s = SHAPE
    kv_bytes = 2 * s["n_layers"] * s["n_ctx"] * (s["dim"] // s["n_heads"] * s["n_kv_heads"]) * 4
    r = subprocess.run([sys.executable, "-c", CHILD, str(tiny), str(path), str(s["n_ctx"])], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYENGINE_NO_PROGRESS": "1"},
                       cwd=tmp_path)  # not the repository root: -c would import the uncompiled source package
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    used = got["peak"] - got["base"]
    bound = MARGIN * (size + kv_bytes)
    print(f"\n{t}: file {size / 2**20:.1f} MiB, KV {kv_bytes / 2**20:.1f} MiB, "
          f"peak RSS above baseline {used / 2**20:.1f} MiB (bound {bound / 2**20:.1f} MiB)")
    assert used <= bound, (f"{t}: peak RSS {used / 2**20:.1f} MiB above the baseline exceeds "
                           f"(file {size / 2**20:.1f} + KV {kv_bytes / 2**20:.1f}) x {MARGIN}")
    assert used >= 0.5 * size, f"{t}: the run touched only {used / 2**20:.1f} MiB of a {size / 2**20:.1f} MiB file?"
