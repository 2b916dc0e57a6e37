"""Peak memory while generating, per weight type: weights stay memory-mapped in their GGUF
encoding, so a run needs about the file plus the KV cache, never a float32 copy.

For each type a small Llama-shaped file is written (gguf's GGUFWriter; weights by
``gguf.quants.quantize`` where gguf can quantize that type, else random valid blocks from
``pyengine.quants.random_raw`` rescaled to a sane RMS), then a subprocess loads it on the
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

import numpy as np
import pytest

from pyengine import kernels, quants
from pyengine.ggml_types import ggml_type

gguf = pytest.importorskip("gguf")

# dim, layers, ffn, heads, kv heads, vocab, context used
SHAPE = dict(dim=1024, n_layers=6, ffn=4096, n_heads=16, n_kv_heads=4, n_vocab=1024, n_ctx=128)
TINY = dict(SHAPE, dim=256, n_layers=1, ffn=512, n_heads=4, n_kv_heads=2)
MARGIN = 1.15
TYPES = ("Q5_K", "Q5_1", "BF16", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL", "Q4_K", "Q6_K", "Q4_0", "Q8_0", "F16")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")


def _weights(t: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, row bytes) uint8 of type t whose decoded values have RMS about 1/sqrt(cols)."""
    target = 1.0 / np.sqrt(cols)
    if t in ("F16", "BF16"):
        f = (rng.standard_normal((rows, cols)) * target).astype(np.float32)
        if t == "F16":
            return f.astype(np.float16).view(np.uint8)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    try:
        f = (rng.standard_normal((rows, cols)) * target).astype(np.float32)
        return np.asarray(gguf.quants.quantize(f, gguf.GGMLQuantizationType[t]), dtype=np.uint8).reshape(rows, -1)
    except NotImplementedError:  # gguf cannot quantize this type: random valid blocks, rescaled
        raw = quants.random_raw(t, rows * cols, rng, "normal")
        b = raw.view(quants.BLOCK_DTYPES[t])
        sample = quants.dequantize(t, raw[: ggml_type(t).n_bytes(min(rows, 8) * cols)], min(rows, 8) * cols)
        k = np.float32(target / max(float(np.sqrt(np.mean(sample.astype(np.float64) ** 2))), 1e-30))
        for field in quants._SCALE_FIELDS[t]:  # values are linear in the scale fields together
            b[field] = (b[field].astype(np.float32) * k).astype(np.float16)
        return raw.reshape(rows, -1)


def write_model(path: Path, t: str, s: dict, seed: int = 0) -> None:
    from pyengine.tokenizer import _BYTE_TO_CHAR

    d, f, L = s["dim"], s["ffn"], s["n_layers"]
    kv = d // s["n_heads"] * s["n_kv_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(d)
    w.add_block_count(L)
    w.add_feed_forward_length(f)
    w.add_head_count(s["n_heads"])
    w.add_head_count_kv(s["n_kv_heads"])
    w.add_rope_dimension_count(d // s["n_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s["n_vocab"])
    toks = ["<s>", "</s>", "<unk>"] + [_BYTE_TO_CHAR[b] for b in range(256)]
    types = [3, 3, 3] + [1] * 256
    toks += [f"<unused_{i}>" for i in range(s["n_vocab"] - len(toks))]
    types += [5] * (s["n_vocab"] - len(types))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(seed)
    gt = gguf.GGMLQuantizationType[t]
    mats = [("token_embd.weight", (s["n_vocab"], d)), ("output.weight", (s["n_vocab"], d))]
    for i in range(L):
        p = f"blk.{i}."
        mats += [(p + "attn_q.weight", (d, d)), (p + "attn_k.weight", (kv, d)), (p + "attn_v.weight", (kv, d)),
                 (p + "attn_output.weight", (d, d)), (p + "ffn_gate.weight", (f, d)), (p + "ffn_up.weight", (f, d)),
                 (p + "ffn_down.weight", (d, f))]
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    for name, (rows, cols) in mats:
        w.add_tensor(name, _weights(t, rows, cols, rng), raw_dtype=gt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
                       timeout=600, env={**os.environ, "PYENGINE_NO_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    used = got["peak"] - got["base"]
    bound = MARGIN * (size + kv_bytes)
    print(f"\n{t}: file {size / 2**20:.1f} MiB, KV {kv_bytes / 2**20:.1f} MiB, "
          f"peak RSS above baseline {used / 2**20:.1f} MiB (bound {bound / 2**20:.1f} MiB)")
    assert used <= bound, (f"{t}: peak RSS {used / 2**20:.1f} MiB above the baseline exceeds "
                           f"(file {size / 2**20:.1f} + KV {kv_bytes / 2**20:.1f}) x {MARGIN}")
    assert used >= 0.5 * size, f"{t}: the run touched only {used / 2**20:.1f} MiB of a {size / 2**20:.1f} MiB file?"
