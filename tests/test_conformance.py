"""Every architecture (and quantization mix) against llama.cpp, on synthetic models.

Each case of tests/data/conformance/ is rebuilt byte for byte from the seeded generator in
tests/synthetic_gguf.py, the committed quantized layer tensors and llama.cpp's real vocabulary
(fetched with the llama-cpp-python sdist), checked against the sha256 of the file llama.cpp
ran, then run on every backend and compared with llama.cpp's logits (README there):
- teacher-forced top-1 agreement with llama.cpp's argmax >= 0.95 over every position;
- KL(llama.cpp || ours) per position, over llama.cpp's top 64 tokens plus the rest of the
  vocabulary as one bucket: mean <= 0.03, max <= 0.15 (the real goldens' bounds).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import synthetic_gguf as sg
from conftest import DATA, backends_under_test

CONF = DATA / "conformance"
CASES = sorted(p.name for p in CONF.iterdir() if (p / "recipe.json").exists()) if CONF.exists() else []

TOP1_MIN = 0.95
KL_MEAN_MAX = 0.03
KL_MAX_MAX = 0.15

_files: dict = {}


def case_file(case: str, tmp_path_factory) -> Path:
    """The case's quantized GGUF (kept until another case is asked for: the files hold F16
    vocabulary-sized matrices, up to ~160 MB); fails unless it is the file llama.cpp ran."""
    if case not in _files:
        from llamacpp_sdist import vocab_dir

        for old in _files.values():
            old.unlink(missing_ok=True)
        _files.clear()
        out = tmp_path_factory.mktemp("conformance") / f"{case}.gguf"
        sha = sg.assemble(CONF / case, vocab_dir(), out)
        want = json.loads((CONF / case / "recipe.json").read_text())["sha256"]
        assert sha == want, f"{case}: assembled file differs from the one llama.cpp ran"
        _files[case] = out
    return _files[case]


def reference(case: str) -> list[dict]:
    z = np.load(CONF / case / "logits.npz")
    out, k = [], 0
    while f"ids_{k}" in z:
        out.append({n: z[f"{n}_{k}"] for n in ("ids", "top_ids", "top_logits", "lse")})
        k += 1
    assert out, f"no logits for {case}"
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_topk(top_ids: np.ndarray, top_logits: np.ndarray, lse: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """KL(P || Q) per position with P known on its top k tokens K (exactly: logits and the
    full-vocabulary log-sum-exp) and the rest of the vocabulary R as one outcome:

        sum_{i in K} p_i (log p_i - log q_i) + p_R (log p_R - log q_R),
        p_i = exp(l_i - lse), p_R = 1 - sum_K p_i, q_R = 1 - sum_K q_i.

    This is the KL of the two distributions coarsened to K + {R}: never above the full KL, and
    equal to it when P and Q agree on how R's mass is spread."""
    lp = top_logits.astype(np.float64) - lse[:, None]                     # (n, k)
    lq_all = log_softmax(ours)                                            # (n, V)
    lq = np.take_along_axis(lq_all, top_ids.astype(np.int64), axis=-1)    # (n, k)
    p = np.exp(lp)
    kl = (p * (lp - lq)).sum(axis=-1)
    p_r = np.clip(1.0 - p.sum(axis=-1), 0.0, 1.0)
    q_r = np.clip(1.0 - np.exp(lq).sum(axis=-1), 1e-300, 1.0)
    tail = np.where(p_r > 0, p_r * (np.log(np.maximum(p_r, 1e-300)) - np.log(q_r)), 0.0)
    return kl + tail


def test_cases_present():
    """The data is committed: every architecture of the generator has its llama.cpp logits."""
    assert set(CASES) == set(sg.ARCHS), sorted(set(sg.ARCHS) ^ set(CASES))


@pytest.mark.parametrize("case", CASES)
def test_reference_logits_are_peaked(case):
    """A near-uniform distribution would let any KL bound pass: llama.cpp's top token must
    carry real mass on these random weights."""
    p = np.concatenate([np.exp(r["top_logits"][:, 0] - r["lse"]) for r in reference(case)])
    assert p.mean() > 0.3, p.mean()
    # the stored top-k is sorted, and the log-sum-exp is consistent with it
    for r in reference(case):
        assert (np.diff(r["top_logits"], axis=-1) <= 0).all()
        assert (r["top_logits"][:, 0] <= r["lse"]).all()


# llama.cpp's own top-1 margin. An engine that matches llama.cpp up to rounding still moves the
# top-1 minus top-2 logit gap: measured (benchmarks/conformance_gaps.py --backend B, data of
# 2026-12-06) with a std of 0.09-0.26 and a max of 0.23-0.52 per two-layer case on numpy/numba,
# up to 0.71 on cpu (gemma3, 6 layers: 0.94 / 1.32); the flipped positions had gaps <= 0.2
# (one gemma3 position: 0.67). A position whose reference gap is under GAP_MIN (~3 std of the
# two-layer noise) can flip with no bug, so the top-1 bound is a fair test only where at least
# TOP1_MIN of the positions are decisive.
GAP_MIN = 0.5
# Committed cases whose data is known not to be decisive (README: "Near-ties"): the share of
# positions with gap >= GAP_MIN as measured. The test checks the share is still this value (the
# data has not changed unnoticed) and xfails; a regenerated case must drop out of this table
# and pass.
NEAR_TIE_DATA = {
    "deepseek2": 0.795, "gemma2": 0.704, "gemma3": 0.907, "glm4": 0.875, "llama": 0.864,
    "llama-iq4_xs": 0.773, "llama-q2_k": 0.864, "llama-q3_k_m": 0.773, "llama-q5_k_m": 0.818,
    "mistral": 0.778, "phi3": 0.796, "qwen2": 0.775, "qwen3": 0.675, "qwen3moe": 0.800,
}


@pytest.mark.parametrize("case", CASES)
def test_reference_top1_is_decisive(case):
    """llama.cpp's top-1 beats its top-2 by >= GAP_MIN at >= TOP1_MIN of the positions, so that
    the teacher-forced top-1 bound is not decided by near-ties (data only, no model run)."""
    g = np.concatenate([r["top_logits"][:, 0] - r["top_logits"][:, 1] for r in reference(case)])
    share = float((g >= GAP_MIN).mean())
    if case in NEAR_TIE_DATA:
        assert round(share, 3) == NEAR_TIE_DATA[case], \
            f"{case}: decisive share {share:.3f}, recorded {NEAR_TIE_DATA[case]}: the data changed, update NEAR_TIE_DATA"
        pytest.xfail(f"{case}: known near-tie data, {share:.3f} of positions have gap >= {GAP_MIN} (< {TOP1_MIN})")
    assert share >= TOP1_MIN, f"{case}: only {share:.3f} of positions have llama.cpp's top-1 gap >= {GAP_MIN}"


def test_kl_topk_matches_full_kl_when_tails_agree():
    """The coarsened KL equals the full KL when Q's tail is P's tail rescaled, and is 0 for Q = P."""
    rng = np.random.default_rng(0)
    lp_full = rng.standard_normal((3, 500)) * 4
    top = np.argsort(-lp_full, axis=-1)[:, :16]
    lse = np.log(np.exp(lp_full).sum(-1))
    tl = np.take_along_axis(lp_full, top, -1)
    assert np.allclose(kl_topk(top, tl, lse, lp_full), 0, atol=1e-12)
    q = lp_full.copy()
    np.put_along_axis(q, top, tl + rng.standard_normal(tl.shape) * 0.3, -1)
    lp, lq = log_softmax(lp_full), log_softmax(q)
    full = (np.exp(lp) * (lp - lq)).sum(-1)
    assert np.allclose(kl_topk(top, tl, lse, q), full, rtol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_assembled_file_is_the_one_llamacpp_ran(case, tmp_path_factory):
    path = case_file(case, tmp_path_factory)
    assert path.stat().st_size > 0


def test_source_file_has_the_architecture_layout(tmp_path):
    """The generator's source file reads back with the tensors and keys it was given, the vocab
    file's tokenizer keys unchanged, and is reproducible (same seed, same bytes)."""
    from llamacpp_sdist import vocab_dir

    a = sg.ARCHS["phi3"]
    vocab = sg.vocab_path(vocab_dir(), a)
    sha = sg.make_source(a, vocab, tmp_path / "a.gguf")
    assert sg.make_source(a, vocab, tmp_path / "b.gguf") == sha
    g = sg.read_gguf(tmp_path / "a.gguf")
    n_vocab = len(g.kv("tokenizer.ggml.tokens").value[1])
    assert [(t.name, t.shape) for t in g.tensors] == [(n, s) for n, s, _ in sg.tensor_specs(a, n_vocab)]
    assert "blk.0.attn_qkv.weight" in {t.name for t in g.tensors}
    assert g.kv("general.architecture").value == "phi3"
    assert g.kv("phi3.embedding_length").value == a.n_embd
    src_vocab = {e.key: e for e in sg.read_gguf(vocab).kvs if e.key.startswith("tokenizer.")}
    for e in g.kvs:
        if e.key.startswith("tokenizer."):
            assert sg._json_value(e) == sg._json_value(src_vocab.pop(e.key))
    assert not src_vocab


_model: dict = {}


def get_model(case: str, backend: str, tmp_path_factory):
    import pyengine
    from pyengine.errors import BackendUnavailableError

    key = (case, backend)
    if key not in _model:
        _model.clear()
        path = case_file(case, tmp_path_factory)
        try:
            _model[key] = pyengine.load(path, backend=backend, n_ctx=128, progress=False)
        except BackendUnavailableError as e:
            if backend == "cuda":
                pytest.skip(f"cuda backend not usable here: {e}")
            raise
    return _model[key]


MATRIX = [(c, b) for c in CASES for b in backends_under_test()]

# Measured misses of the top-1 bound alone, on near-tie data (see NEAR_TIE_DATA and the README's
# "Near-ties"): llama.cpp's own top-1/top-2 gap is below its rounding noise at these positions, and
# the numpy spec flips them too. KL stays far inside its bounds and is still asserted; the rate
# must stay exactly the recorded one, so a change in either direction fails. Re-measured
# 2026-12-07 when the spec took one activation scale per 256 values for the super-block types
# (quants.act_block, as llama.cpp's Q8_K): KL mean fell on every case and backend (e.g. llama
# 0.0025 -> 0.0012, glm4 0.0097 -> 0.0040, qwen3 cpu 0.0047 -> 0.0032), and the near-tie
# positions moved: gemma2 0.926 -> 0.944 (flips at llama.cpp gaps 0.01, 0.04, 0.10), mistral
# numpy/cpu 0.963 -> 0.944 (gaps 0.02, 0.11, 0.12; numba flips two: 0.963), qwen3 0.975 ->
# 0.925 on every backend (gaps 0.03, 0.11, 0.30; its rounding noise: std 0.18, max 0.44), phi3
# numpy 0.944 -> 0.981 (no longer a miss). benchmarks/conformance_gaps.py --backend B lists them.
TOP1_KNOWN_MISSES = {
    ("gemma2", "numpy"): 0.944, ("gemma2", "numba"): 0.944, ("gemma2", "cpu"): 0.944,
    ("mistral", "numpy"): 0.944, ("mistral", "cpu"): 0.944,
    ("qwen3", "numpy"): 0.925, ("qwen3", "numba"): 0.925, ("qwen3", "cpu"): 0.925,
}


@pytest.mark.parametrize("case,backend", MATRIX, ids=[f"{c}-{b}" for c, b in MATRIX])
def test_conformance_against_llamacpp(case, backend, tmp_path_factory):
    model = get_model(case, backend, tmp_path_factory)
    agree = total = 0
    kls = []
    for r in reference(case):
        ours = model.logits(r["ids"].tolist())
        assert ours.shape[0] == len(r["ids"])
        assert np.isfinite(ours).all()
        agree += int((ours.argmax(axis=-1) == r["top_ids"][:, 0]).sum())
        total += len(r["ids"])
        kls.append(kl_topk(r["top_ids"], r["top_logits"], r["lse"], ours))
    kl = np.concatenate(kls)
    rate = agree / total
    print(f"{case} [{backend}] top-1 {rate:.3f} over {total} positions, KL mean {kl.mean():.4f} max {kl.max():.4f}")
    assert kl.mean() <= KL_MEAN_MAX
    assert kl.max() <= KL_MAX_MAX
    known = TOP1_KNOWN_MISSES.get((case, backend))
    if known is not None:
        assert round(rate, 3) == known, f"top-1 {rate:.3f}, recorded miss {known}: update TOP1_KNOWN_MISSES"
        pytest.xfail(f"known near-tie miss: top-1 {rate:.3f} < {TOP1_MIN} with KL mean {kl.mean():.4f}")
    assert rate >= TOP1_MIN
