"""Where the weights live (pyengine.weight_pages): copied into 2 MiB pages or left mapped.

- a copy holds the file's bytes exactly, shares no memory with the mapping, and gives the
  same logits bit for bit; ``copy`` copies routed experts too, ``auto`` leaves them mapped;
- ``auto`` copies for the cpu backend only, and says why it did not elsewhere;
- a copy that does not fit, a file that shrinks under the copy and an unknown mode each
  fail in one line; ``generate -v`` prints the placement.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from pyengine import weight_pages as wp
from pyengine.errors import ModelFileError, PyEngineError
from pyengine.gguf_file import open_gguf
from pyengine.ggml_types import BY_NAME
from pyengine.models import build

from conftest import TINY_IDS, backend, full_logits, native_built, real_model_path
from test_moe import write_qwen3moe

TIER = "cpu" if native_built() else "numba"


@pytest.fixture(scope="module")
def moe_file(tmp_path_factory):
    return write_qwen3moe(tmp_path_factory.mktemp("pages") / "qwen3moe-Q8_0.gguf", "Q8_0")


def _file_bytes(path, t, gf) -> bytes:
    with open(path, "rb") as f:
        f.seek(t.raw.ctypes.data - gf._mmap.ctypes.data)
        return f.read(t.n_bytes)


def test_copy_holds_the_file_bytes_and_gives_the_same_logits(moe_file):
    mapped = open_gguf(moe_file)
    _, want = full_logits(moe_file, backend(TIER), arch=build(mapped))
    gf = open_gguf(moe_file)
    before = {n: _file_bytes(moe_file, t, gf) for n, t in gf.tensors.items()}
    line = wp.place_weights(gf, "copy", TIER)
    assert "copied into memory" in line and "stay mapped" not in line, line
    for name, t in gf.tensors.items():
        assert t.raw.tobytes() == before[name], name
        assert not np.shares_memory(t.raw, gf._mmap), f"{name}: still read from the mapping"
        assert t.raw.ctypes.data % wp.ALIGN == 0, name
    _, got = full_logits(moe_file, backend(TIER), arch=build(gf))
    assert np.array_equal(got, want)


@pytest.mark.skipif(not wp.huge_pages_usable(), reason="auto copies only where transparent huge pages are lent")
def test_auto_leaves_routed_experts_mapped(moe_file):
    mapped = open_gguf(moe_file)
    _, want = full_logits(moe_file, backend(TIER), arch=build(mapped))
    gf = open_gguf(moe_file)
    line = wp.place_weights(gf, "auto", "cpu")
    assert "copied into memory" in line and "of routed experts stay mapped" in line, line
    exps = [n for n in gf.tensors if "_exps." in n]
    assert len(exps) == 6  # 2 layers x gate/up/down
    for name, t in gf.tensors.items():
        assert np.shares_memory(t.raw, gf._mmap) == (name in exps), name
    _, got = full_logits(moe_file, backend(TIER), arch=build(gf))
    assert np.array_equal(got, want)


def test_resident_runs_by_hand():
    assert wp.resident_runs(np.array([], np.uint8)) == []
    assert wp.resident_runs(np.array([0, 0, 0], np.uint8)) == []
    assert wp.resident_runs(np.array([1, 1, 1], np.uint8)) == [(0, 3)]
    # mincore's byte: bit 0 is residency, the other bits are undefined (here 0x80 and 0x02)
    vec = np.array([1, 0x81, 0, 0x80, 1, 0x02, 1, 1], np.uint8)
    assert wp.resident_runs(vec) == [(0, 2), (4, 5), (6, 8)]


def _rss_of_mapping(arr) -> int:
    """Resident bytes of the one mapping that holds ``arr`` (/proc/self/smaps)."""
    addr, cur, total = arr.ctypes.data, False, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = lo <= addr < hi
            elif cur and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(sys.platform != "linux", reason="mincore / MADV_POPULATE_READ: Linux only")
def test_map_ahead_maps_the_cached_pages_of_the_mapped_tensors(moe_file):
    """The routed experts left mapped by ``auto`` come into the process's page tables at load
    when the page cache holds them (the file was just written: it does); the placement line
    says how much. (Reading the header already maps the pages around it, the kernel's
    fault-around: so this bounds the mapping's resident bytes from below only.)"""
    gf = open_gguf(moe_file)
    exps = [t.raw for n, t in gf.tensors.items() if "_exps." in n]
    want = sum(a.nbytes for a in exps)
    if _rss_of_mapping(gf._mmap) >= want:  # then the check below could not tell
        pytest.skip("fault-around mapped the experts while the header was read")
    got = wp.map_ahead(exps)
    if got is None:
        pytest.skip("this kernel has no MADV_POPULATE_READ (Linux < 5.14)")
    assert want <= got <= want + 2 * wp.PAGE * len(exps)  # whole pages around each tensor
    assert _rss_of_mapping(gf._mmap) >= want
    if wp.huge_pages_usable():
        line = wp.place_weights(open_gguf(moe_file), "auto", "cpu")
        assert "of them mapped ahead from the page cache" in line, line


def test_auto_copies_for_the_cpu_backend_only(moe_file):
    for name in ("numpy", "numba", "cuda"):
        gf = open_gguf(moe_file)
        line = wp.place_weights(gf, "auto", name)
        assert line.startswith("memory-mapped") and name in line, line
        assert all(np.shares_memory(t.raw, gf._mmap) for t in gf.tensors.values())
    gf = open_gguf(moe_file)
    line = wp.place_weights(gf, "auto", "cpu")
    usable = sys.platform == "linux" and wp.thp_mode() in ("always", "madvise")
    assert usable == wp.huge_pages_usable()
    assert ("copied into memory" in line) == usable, line
    assert wp.place_weights(open_gguf(moe_file), "map", "cpu") == "memory-mapped from the file (--weights map)"


def test_a_copy_that_does_not_fit_is_refused_or_mapped(moe_file, monkeypatch):
    monkeypatch.setattr(wp, "available_bytes", lambda: 1000)
    with pytest.raises(PyEngineError, match=r"^copying .* would take over 70% of .*; use --weights map"):
        wp.place_weights(open_gguf(moe_file), "copy", "cpu")
    if wp.thp_mode() in ("always", "madvise") and sys.platform == "linux":
        gf = open_gguf(moe_file)
        line = wp.place_weights(gf, "auto", "cpu")
        assert line.startswith("memory-mapped from the file (copying") and "available memory" in line, line
        assert all(np.shares_memory(t.raw, gf._mmap) for t in gf.tensors.values())


def test_unknown_mode_is_one_line(moe_file):
    with pytest.raises(PyEngineError, match=r"weights placement 'huge' is not one of auto, map, copy"):
        wp.place_weights(open_gguf(moe_file), "huge", "cpu")


def test_a_file_that_shrinks_under_the_copy_fails_in_one_line(moe_file, tmp_path):
    path = tmp_path / "shrinks.gguf"
    shutil.copy(moe_file, path)
    gf = open_gguf(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(ModelFileError, match=r"file shrank while reading tensor '.*' \(changed on disk\?\)"):
        wp.place_weights(gf, "copy", "cpu")


def test_huge_bytes_counts_anonymous_huge_pages():
    if sys.platform != "linux" or wp.thp_mode() != "madvise":
        pytest.skip("needs transparent huge pages in 'madvise' mode")
    plain = wp.anonymous_buffer(8 * wp.HUGE_PAGE, huge=False)
    huge = wp.anonymous_buffer(8 * wp.HUGE_PAGE, huge=True)
    for a in (plain, huge):
        assert a.ctypes.data % wp.HUGE_PAGE == 0
        a[:] = 1  # fault it in
    assert wp.huge_bytes(plain.ctypes.data, plain.nbytes) == 0
    got = wp.huge_bytes(huge.ctypes.data, huge.nbytes)
    assert 0 < got <= huge.nbytes and got % wp.HUGE_PAGE == 0, got


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_generate_verbose_says_where_the_weights_are():
    path = real_model_path("smollm2-135m")
    for mode, expect in (("map", "weights: memory-mapped from the file (--weights map)"),
                         ("copy", "weights: ")):
        r = subprocess.run([sys.executable, "-m", "pyengine", "generate", "-m", str(path), "--backend", "cpu",
                            "-n", "2", "--temp", "0", "-v", "-q", "--raw", "--weights", mode, "Hi"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("weights: ")]
        assert len(lines) == 1 and lines[0].startswith(expect), r.stderr
        if mode == "copy":
            assert "copied into memory" in lines[0], lines[0]
        kv = [ln for ln in r.stderr.splitlines() if ln.startswith("KV cache: up to ")]
        assert len(kv) == 1 and "(float32, keys and values)" in kv[0], r.stderr


def test_kernel_bench_times_weights_in_the_engines_kind_of_memory():
    from pyengine.bench.kernels import weight_pool

    raw = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)
    pool = weight_pool(raw, 3)
    assert len(pool) == 3
    for w in pool:
        assert np.array_equal(w, raw) and not np.shares_memory(w, raw) and w.ctypes.data % wp.ALIGN == 0
    assert not np.shares_memory(pool[0], pool[1])


def test_doctor_says_where_the_cpu_backend_keeps_weights():
    r = subprocess.run([sys.executable, "-m", "pyengine", "doctor"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("weights (cpu backend): ")]
    assert len(lines) == 1, r.stdout
    want = "copied into 2 MiB pages" if wp.huge_pages_usable() else "read from the memory-mapped file"
    assert want in lines[0] and f"transparent huge pages: {wp.thp_mode() or 'not available'}" in lines[0], lines[0]


@pytest.mark.skipif(not native_built(), reason="the cpu backend's load-time forms need pyengine._C")
@pytest.mark.parametrize("tier", ["auto", "avx2"])
@pytest.mark.parametrize("qt", ["Q2_K", "Q3_K", "Q4_K", "Q6_K", "IQ4_XS", "Q5_0", "Q4_1"])
def test_a_cpu_copy_rearranges_k_quants_and_decodes_the_same_bits(qt, tier, tmp_path, monkeypatch):
    """Copied for the cpu backend, Q2_K / Q3_K / Q4_K / Q6_K / IQ4_XS matrices take the form the
    SIMD tiers read faster (Q2_K_R ..., cpu_backend.repack_copied), as do Q5_0 / Q4_1 (Q5_0_R on
    AVX-512, the panel forms Q5_0_P / Q4_1_P on AVX2, rows of 800 values ending in a partial
    panel): the one-line description says so, and the logits of a prompt and of the single-call
    decode steps are those of the mapped file, bit for bit (the kernels of the two forms compute
    the same sums in the same lanes). On a tier with no form for the type (the generic tier;
    Q4_1 on AVX-512), or for another backend, the copy keeps the file's type. Run on the widest
    tier and again with the AVX2 tier forced ($PYENGINE_CPU_VARIANT), whose forms differ."""
    import pyengine
    from pyengine import _C
    from pyengine.backends.cpu_backend import form_pays_off, matmul_tier
    from pyengine.ggml_types import LOAD_FORMS
    from test_memory import SHAPE, write_model

    if tier != "auto":
        if tier not in _C.kernel_variants():
            pytest.skip(f"no {tier} tier on this CPU")
        monkeypatch.setenv("PYENGINE_CPU_VARIANT", tier)

    forms = [f for f, src in LOAD_FORMS.items() if src == qt and form_pays_off(f, matmul_tier())]
    form = forms[0] if forms else qt + "_R"
    repacks = bool(forms)
    path = tmp_path / f"small-{qt}.gguf"
    ffn = 800 if BY_NAME[qt].block_size == 32 else 768
    write_model(path, qt, dict(SHAPE, dim=256, n_layers=2, ffn=ffn, n_heads=4, n_kv_heads=2, n_vocab=512), seed=5)
    gf = open_gguf(path)
    n_q = sum(t.type_name == qt and len(t.shape) == 2 for t in gf.tensors.values())
    assert n_q >= 14  # 7 matrices a layer, the embedding and the output
    line = wp.place_weights(gf, "copy", "cpu")
    if not repacks:
        assert "rearranged" not in line and all(t.type_name != form for t in gf.tensors.values())
    else:
        assert f"; {n_q} matrices rearranged as {form}" in line, line
        assert sum(t.type_name == form for t in gf.tensors.values()) == n_q
    line = wp.place_weights(open_gguf(path), "copy", "numpy")
    assert "rearranged" not in line, line

    runs = {}
    for weights in ("map", "copy"):
        m = pyengine.load(path, backend="cpu", n_ctx=64, progress=False, weights=weights)
        runs[weights] = [m.prefill([5, 70, 80])] + [m.decode(t) for t in (90, 100, 7)]
        assert m._step is not None
        assert (f"rearranged as {form}" in m.weights_placement) == (weights == "copy" and repacks)
    for i, (a, b) in enumerate(zip(runs["map"], runs["copy"])):
        np.testing.assert_array_equal(b, a, err_msg=f"step {i}")


def test_which_tiers_rewrite_which_forms():
    """None on the generic tier; on a SIMD tier at most one form per GGUF type (repack_copied
    picks by type); the panel forms on AVX2 only, whose kernels read them (matmul_kernels.h
    panel_forms), and the per-block Q5_0_R / Q5_1_R where they are not."""
    from pyengine.backends.cpu_backend import form_pays_off
    from pyengine.ggml_types import LOAD_FORMS, PANEL_FORMS

    on = {tier: [f for f in LOAD_FORMS if form_pays_off(f, tier)] for tier in ("generic", "avx2", "avx512")}
    assert on["generic"] == []
    for tier in ("avx2", "avx512"):
        assert len({LOAD_FORMS[f] for f in on[tier]}) == len(on[tier]), on[tier]
    k_forms = ["Q2_K_R", "Q3_K_R", "Q4_K_R", "Q5_K_R", "Q6_K_R", "IQ4_XS_R"]
    assert on["avx2"] == k_forms + list(PANEL_FORMS)
    assert on["avx512"] == k_forms[:5] + ["Q5_0_R", "Q5_1_R", "IQ4_XS_R"]
