"""Sampling: greedy, top-k / top-p / min-p sets, repetition penalty, seeding, distribution."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from pyengine.errors import PyEngineError
from pyengine.sampling import Sampler, SamplingParams, apply_repeat_penalty, greedy

NO_FILTERS = dict(top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


def logits_strategy(min_size=2, max_size=48, unique=False):
    return hnp.arrays(
        np.float32, st.integers(min_size, max_size),
        elements=st.floats(-30, 30, width=32, allow_nan=False), unique=unique,
    )


# --------------------------------------------------------------------------- reference


def reference_sets(logits, temperature, top_k, top_p, min_p, slack=1e-9):
    """(allowed, core) token sets computed independently with a full sort.

    ``allowed`` errs on the generous side of every float boundary (no sampler
    may return anything outside it); ``core`` errs on the strict side (every
    token in it must be possible). They coincide unless a value sits within
    ``slack`` of a cut-off.
    """
    l = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-l, kind="stable")
    cand = order[:top_k] if 0 < top_k < len(l) else order
    z = l[cand] / temperature
    p = np.exp(z - z.max())
    p /= p.sum()  # p is in decreasing order (cand is sorted by logit)

    def keep(top_p_eff, min_p_factor, generous):
        ok = np.ones(len(p), bool)
        if top_p < 1.0:
            cum = np.cumsum(p)
            n = int(np.argmax(cum >= top_p_eff)) + 1 if cum[-1] >= top_p_eff else len(p)
            if generous:  # anything tied with (or within slack of) the last kept token
                ok &= p >= p[n - 1] * (1 - slack)
            elif n < len(p):  # only tokens clearly more likely than the first dropped one
                ok &= (np.arange(len(p)) < n) & (p > p[n] * (1 + slack))
        if min_p > 0:
            ok &= p >= min_p * min_p_factor * p[0]
        return {int(cand[i]) for i in np.flatnonzero(ok)}

    return keep(top_p + slack, 1 - slack, True), keep(top_p - slack, 1 + slack, False)


# --------------------------------------------------------------------------- greedy


@given(logits_strategy(min_size=1))
def test_greedy_is_argmax(logits):
    assert greedy(logits) == int(np.argmax(logits))
    for t in (0.0, -1.0):
        s = Sampler(SamplingParams(temperature=t, repeat_penalty=1.0))
        assert s.sample(logits, []) == int(np.argmax(logits))


@settings(max_examples=60)
@given(logits_strategy(unique=True), st.floats(0.01, 100.0),
       st.lists(st.integers(0, 1), max_size=4), st.integers(0, 2**32 - 1))
def test_top_k_1_is_greedy_at_any_temperature(logits, temperature, history, seed):
    s = Sampler(SamplingParams(temperature=temperature, top_k=1, seed=seed))
    g = Sampler(SamplingParams(temperature=0))  # same default repeat penalty
    for _ in range(5):
        assert s.sample(logits, history) == g.sample(logits, history)


def test_greedy_rejects_nan_and_bad_shapes():
    with pytest.raises(PyEngineError, match="NaN"):
        greedy(np.array([0.0, np.nan, 1.0], np.float32))
    for bad in (np.zeros((2, 3), np.float32), np.zeros(0, np.float32)):
        with pytest.raises(PyEngineError):
            greedy(bad)
    with pytest.raises(PyEngineError, match="NaN"):
        Sampler(SamplingParams(seed=0)).sample(np.array([0.0, np.nan], np.float32), [])


# --------------------------------------------------------------------------- filtered sets


@settings(max_examples=80, deadline=None)
@given(logits_strategy(unique=True), st.floats(0.05, 3.0), st.integers(0, 50),
       st.floats(0.01, 1.0), st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.7]),
       st.integers(0, 2**32 - 1))
@example(np.array([0.0, 5.814006e-39], np.float32), 1.0, 0, 0.5, 0.0, 0)  # exact tie in float64
def test_draws_stay_in_top_k_top_p_min_p_set(logits, temperature, top_k, top_p, min_p, seed):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=1.0, seed=seed)
    allowed, core = reference_sets(logits, temperature, top_k, top_p, min_p)
    s = Sampler(params)
    ids, p = s.distribution(logits, [])
    assert core <= set(ids.tolist()) <= allowed
    assert np.all(p > 0) and abs(p.sum() - 1) < 1e-9
    draws = {s.sample(logits, []) for _ in range(300)}
    assert draws <= allowed


def test_top_p_keeps_smallest_set_reaching_mass():
    # probabilities 0.5, 0.25, 0.125, 0.125 at temperature 1
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125])).astype(np.float32)
    # (cut-offs kept away from the exact cumulative sums 0.5 / 0.75 / 0.875 / 1)
    cases = {0.49: {0}, 0.6: {0, 1}, 0.74: {0, 1}, 0.8: None, 1.0: {0, 1, 2, 3}}
    for top_p, expect in cases.items():
        s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0,
                                   repeat_penalty=1.0, seed=0))
        got = set(s.distribution(logits)[0].tolist())
        if top_p == 0.8:  # tokens 2 and 3 tie; either completes the set
            assert {0, 1} < got and len(got) == 3
        else:
            assert got == expect, top_p
    tiny = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1e-9, min_p=0.0, seed=0))
    assert tiny.distribution(logits)[0].tolist() == [0]  # always at least one token


def test_min_p_threshold():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.06, 0.04])).astype(np.float32)
    for min_p, expect in ((0.12, {0, 1, 2, 3}), (0.45, {0, 1, 2}), (0.9, {0}), (0.0, {0, 1, 2, 3, 4})):
        s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=min_p, seed=0))
        assert set(s.distribution(logits)[0].tolist()) == expect, min_p


@pytest.mark.parametrize("scale", [3.0, 0.05])  # peaked (prefilter path) and flat (full sort)
def test_large_vocab_top_p_matches_reference(scale):
    rng = np.random.default_rng(123)
    logits = (rng.standard_normal(262_144) * scale).astype(np.float32)
    for min_p in (0.0, 0.05):
        s = Sampler(SamplingParams(temperature=0.9, top_k=0, top_p=0.9, min_p=min_p,
                                   repeat_penalty=1.0, seed=1))
        allowed, core = reference_sets(logits, 0.9, 0, 0.9, min_p)
        ids = set(s.distribution(logits)[0].tolist())
        assert core <= ids <= allowed
        assert s.sample(logits, []) in allowed


def test_large_vocab_top_k_uses_the_k_largest():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal(262_144).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0,
                               repeat_penalty=1.0, seed=0))
    ids = set(s.distribution(logits)[0].tolist())
    assert ids == set(np.argsort(-logits)[:40].tolist())


def test_neg_inf_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.5, -np.inf], np.float32)
    s = Sampler(SamplingParams(temperature=5.0, **NO_FILTERS, seed=3))
    assert {s.sample(logits, []) for _ in range(500)} == {1, 3}
    with pytest.raises(PyEngineError, match="-inf"):
        s.sample(np.full(4, -np.inf, np.float32), [])


# --------------------------------------------------------------------------- repetition penalty


@given(logits_strategy(), st.lists(st.integers(0, 47), max_size=30),
       st.floats(0.5, 3.0), st.integers(-1, 40))
def test_repeat_penalty_follows_llama_cpp_convention(logits, history, penalty, last_n):
    history = [h % len(logits) for h in history]
    before = logits.copy()
    out = apply_repeat_penalty(logits, history, penalty, last_n)
    np.testing.assert_array_equal(logits, before)  # input untouched
    window = history if last_n == -1 else (history[-last_n:] if last_n > 0 else [])
    recent = set(window)
    for i, (a, b) in enumerate(zip(logits.tolist(), out.tolist())):
        if i in recent and penalty != 1.0:
            want = np.float32(a) / np.float32(penalty) if a > 0 else np.float32(a) * np.float32(penalty)
            assert b == pytest.approx(float(want), rel=1e-6, abs=1e-30)
            if penalty > 1:
                assert b <= a
        else:
            assert b == a


def test_repeat_penalty_changes_greedy_choice():
    g = Sampler(SamplingParams(temperature=0, repeat_penalty=1.1, repeat_last_n=2))
    assert g.sample(np.array([2.0, 1.9], np.float32), []) == 0
    assert g.sample(np.array([2.0, 1.9], np.float32), [0]) == 1  # 2/1.1 < 1.9
    assert g.sample(np.array([-1.0, -1.05], np.float32), [0]) == 1  # -1*1.1 < -1.05
    assert g.sample(np.array([2.0, 1.9], np.float32), [0, 1, 1]) == 0  # 0 is outside the window
    off = Sampler(SamplingParams(temperature=0, repeat_penalty=1.0))
    assert off.sample(np.array([2.0, 1.9], np.float32), [0]) == 0


def test_repeat_penalty_lowers_probability_of_repeated_tokens():
    logits = np.array([1.0, 0.5, -0.3, 2.0, -1.0], np.float32)
    base = Sampler(SamplingParams(temperature=1.0, **NO_FILTERS))
    pen = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                 repeat_penalty=1.5, repeat_last_n=64))
    ids0, p0 = base.distribution(logits, [0, 2])
    ids1, p1 = pen.distribution(logits, [0, 2])
    q0, q1 = dict(zip(ids0.tolist(), p0)), dict(zip(ids1.tolist(), p1))
    assert q1[0] < q0[0] and q1[2] < q0[2]
    assert all(q1[i] > q0[i] for i in (1, 3, 4))


def test_history_out_of_vocab_is_an_error():
    s = Sampler(SamplingParams(seed=0))
    with pytest.raises(PyEngineError, match="outside the vocabulary"):
        s.sample(np.zeros(4, np.float32), [1, 7])


# --------------------------------------------------------------------------- seeding


def test_same_seed_same_draws_different_seed_different():
    logits = np.zeros(50, np.float32)

    def run(seed):
        s = Sampler(SamplingParams(temperature=1.0, **NO_FILTERS, seed=seed))
        return [s.sample(logits, []) for _ in range(200)]

    a, b, c = run(1), run(1), run(2)
    assert a == b
    assert a != c
    s = Sampler(SamplingParams(temperature=1.0, **NO_FILTERS, seed=1))
    first = [s.sample(logits, []) for _ in range(20)]
    s.reset()
    assert [s.sample(logits, []) for _ in range(20)] == first


def test_unseeded_samplers_differ():
    logits = np.zeros(1000, np.float32)
    runs = [tuple(Sampler(SamplingParams(temperature=1.0, **NO_FILTERS)).sample(logits, [])
                  for _ in range(10)) for _ in range(2)]
    assert runs[0] != runs[1]


# --------------------------------------------------------------------------- distribution


CHI2_CRIT = {2: 27.63, 3: 30.66, 5: 36.0}  # chi-square critical values at p ~ 1e-6


@pytest.mark.parametrize("kw,expect_support", [
    (dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0), 6),
    (dict(temperature=1.3, top_k=4, top_p=1.0, min_p=0.0), 4),
    (dict(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0), None),
    (dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.15), None),
])
def test_empirical_distribution_matches(kw, expect_support):
    logits = np.array([1.2, 0.3, -0.5, 2.0, 0.9, -1.5], np.float32)
    # expected probabilities computed independently of the sampler
    allowed, core = reference_sets(logits, kw["temperature"], kw["top_k"], kw["top_p"], kw["min_p"])
    assert allowed == core
    if expect_support:
        assert len(allowed) == expect_support
    ids = sorted(allowed)
    w = np.exp(logits[ids].astype(np.float64) / kw["temperature"])
    expected = w / w.sum()

    s = Sampler(SamplingParams(**kw, repeat_penalty=1.0, seed=2024))
    n = 20_000
    draws = np.array([s.sample(logits, []) for _ in range(n)])
    assert set(np.unique(draws).tolist()) <= allowed
    counts = np.array([(draws == i).sum() for i in ids])
    chi2 = float((((counts - n * expected) ** 2) / (n * expected)).sum())
    df = len(ids) - 1
    crit = CHI2_CRIT.get(df, 36.0) if df > 0 else 0.0
    assert chi2 <= crit, (chi2, counts, n * expected)


# --------------------------------------------------------------------------- parameters


def test_defaults_are_llama_cpp_like():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n, p.seed) == (
        0.8, 40, 0.95, 0.05, 1.1, 64, None)
    Sampler(p)  # valid


@pytest.mark.parametrize("kw", [
    dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature="hot"),
    dict(top_k=2.5), dict(top_k=True),
    dict(top_p=0.0), dict(top_p=-0.1), dict(top_p=1.5), dict(top_p=float("nan")),
    dict(min_p=1.5), dict(min_p=float("nan")),
    dict(repeat_penalty=0.0), dict(repeat_penalty=-1.0), dict(repeat_penalty=float("inf")),
    dict(repeat_last_n=-2), dict(repeat_last_n=3.0),
    dict(seed=-5), dict(seed=1.5),
])
def test_bad_parameters_are_one_line_errors(kw):
    with pytest.raises(PyEngineError) as ei:
        Sampler(SamplingParams(**kw))
    msg = str(ei.value)
    assert msg and "\n" not in msg
    assert next(iter(kw)) in msg


@pytest.mark.parametrize("kw", [
    dict(temperature=0), dict(temperature=-1.0), dict(top_k=0), dict(top_k=-1), dict(top_p=1.0),
    dict(min_p=0.0), dict(min_p=-1.0), dict(repeat_penalty=1.0), dict(repeat_penalty=0.8),
    dict(repeat_last_n=0), dict(repeat_last_n=-1), dict(seed=-1), dict(seed=0),
    dict(top_k=np.int64(5), temperature=np.float32(0.5)),
])
def test_edge_parameters_are_accepted(kw):
    s = Sampler(SamplingParams(**kw))
    tok = s.sample(np.array([0.1, 3.0, -2.0, 0.5], np.float32), [1, 2])
    assert 0 <= tok < 4


def test_logits_are_not_modified():
    logits = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    keep = logits.copy()
    s = Sampler(SamplingParams(seed=0, repeat_penalty=2.0))
    for _ in range(10):
        s.sample(logits, [0, 1, 2])
    np.testing.assert_array_equal(logits, keep)
