"""Token sampling over a logits vector (llama.cpp-like parameters and defaults).

Pipeline of :meth:`Sampler.sample` (each step can be switched off):

1. repetition penalty on the distinct tokens among the last ``repeat_last_n``
   of ``history`` (llama.cpp convention: a positive logit is divided by the
   penalty, a negative one multiplied, so the token always becomes less likely
   for ``repeat_penalty > 1``);
2. ``temperature <= 0`` -> greedy: the argmax (lowest id on ties), done;
3. top-k: keep the ``top_k`` largest logits (``np.argpartition``, no full sort);
4. softmax of ``logits / temperature`` in float64;
5. min-p: drop tokens whose probability is ``< min_p * max probability``;
6. top-p: of what min-p kept, keep the most likely tokens until their mass --
   measured with the probabilities of step 4, not renormalised -- reaches
   ``top_p`` (always at least one token);
7. renormalise and draw with a ``numpy.random.Generator`` seeded by ``seed``.

Note: unlike llama.cpp's default chain (which applies temperature last), top-p
and min-p here see the *temperature-scaled* distribution, so a low temperature
also narrows the nucleus. Top-p and min-p both keep a prefix of the tokens
sorted by probability, and step 6 measures mass before any renormalisation, so
the result is the tokens both would keep on the full distribution, in either
order; min-p comes first because it is an O(n) mask that shrinks what top-p
must sort.

Parameter conventions (validated by :meth:`SamplingParams.validate`, errors are
one-line :class:`~pyengine.errors.PyEngineError`):

* ``temperature``: any finite number; ``<= 0`` means greedy (as in llama.cpp).
* ``top_k``: integer; ``<= 0`` (or ``>=`` vocab size) disables it.
* ``top_p``: in ``(0, 1]``; ``1`` disables it.
* ``min_p``: ``<= 1``; ``<= 0`` disables it.
* ``repeat_penalty``: finite and ``> 0``; ``1`` disables it (``< 1`` favours repeats).
* ``repeat_last_n``: integer ``>= -1``; ``0`` disables the penalty, ``-1`` means the
  whole history.
* ``seed``: ``None`` (or ``-1``) for a fresh random seed, else an integer ``>= 0``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import PyEngineError

__all__ = ["SamplingParams", "Sampler", "greedy", "apply_repeat_penalty"]

# When top-k is off and the vocabulary is large, top-p first looks only at the
# this-many most likely tokens (an O(n) partition, growing 8x per try) and sorts
# the full vector only if they never carry ``top_p`` of the mass.
_TOP_P_PREFILTER = 4096


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        """Raise a one-line PyEngineError for a bad value; returns self."""
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t):
            raise PyEngineError(f"temperature must be a finite number (<= 0 means greedy), got {t!r}")
        if not _is_int(self.top_k):
            raise PyEngineError(f"top_k must be an integer (<= 0 disables it), got {self.top_k!r}")
        p = self.top_p
        if not _is_real(p) or not (0.0 < p <= 1.0):
            raise PyEngineError(f"top_p must be in (0, 1] (1 disables it), got {p!r}")
        m = self.min_p
        if not _is_real(m) or math.isnan(m) or m > 1.0:
            raise PyEngineError(f"min_p must be a number <= 1 (0 disables it), got {m!r}")
        r = self.repeat_penalty
        if not _is_real(r) or not math.isfinite(r) or r <= 0:
            raise PyEngineError(f"repeat_penalty must be a finite number > 0 (1 disables it), got {r!r}")
        n = self.repeat_last_n
        if not _is_int(n) or n < -1:
            raise PyEngineError(
                f"repeat_last_n must be an integer >= 0 (or -1 for the whole history), got {n!r}")
        s = self.seed
        if s is not None and (not _is_int(s) or s < -1):
            raise PyEngineError(f"seed must be an integer >= 0 (or -1 / None for random), got {s!r}")
        return self

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0


def _check_logits(logits) -> np.ndarray:
    a = np.asarray(logits)
    if a.ndim != 1 or a.size == 0:
        raise PyEngineError(f"logits must be a non-empty 1-D vector, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    return a


def greedy(logits) -> int:
    """Index of the largest logit (lowest index on ties)."""
    a = _check_logits(logits)
    i = int(np.argmax(a))  # argmax returns the first NaN if there is one
    if np.isnan(a[i]):
        raise PyEngineError("logits contain NaN (the model produced invalid numbers)")
    return i


def apply_repeat_penalty(logits: np.ndarray, history: Sequence[int], penalty: float,
                         last_n: int) -> np.ndarray:
    """Return ``logits`` with the last ``last_n`` history tokens penalised.

    Never modifies the input: returns it unchanged when there is nothing to do,
    otherwise a copy. Each distinct token is penalised once.
    """
    if penalty == 1.0 or last_n == 0 or len(history) == 0:
        return logits
    recent = history[-last_n:] if last_n > 0 else history
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    if ids.size == 0:
        return logits
    if ids[0] < 0 or ids[-1] >= logits.shape[0]:
        bad = int(ids[0] if ids[0] < 0 else ids[-1])
        raise PyEngineError(f"history token id {bad} is outside the vocabulary (0..{logits.shape[0] - 1})")
    out = logits.copy()
    v = out[ids]
    out[ids] = np.where(v > 0, v / penalty, v * penalty)
    return out


class Sampler:
    """Stateful sampler: one random stream per instance, so a fixed seed gives a
    reproducible sequence of tokens for the same sequence of logits."""

    def __init__(self, params: SamplingParams | None = None, **overrides):
        if params is None:
            params = SamplingParams(**overrides)
        elif overrides:
            params = SamplingParams(**{**params.__dict__, **overrides})
        self.params = params.validate()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Restart the random stream (from ``seed``, else from ``params.seed``)."""
        s = self.params.seed if seed is None else seed
        self.rng = np.random.default_rng(None if s is None or s == -1 else s)

    # -- the distribution -----------------------------------------------------------
    def distribution(self, logits, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Candidate token ids and their final probabilities (float64, summing to 1).

        For greedy parameters this is the argmax with probability 1.
        """
        pr = self.params
        a = apply_repeat_penalty(_check_logits(logits), history, pr.repeat_penalty, pr.repeat_last_n)
        if pr.is_greedy:
            return np.array([greedy(a)], dtype=np.int64), np.ones(1)

        n = a.shape[0]
        if 0 < pr.top_k < n:
            idx = np.argpartition(a, n - pr.top_k)[n - pr.top_k:]
            vals = a[idx]
        else:
            idx = None  # identity: candidate i is token i
            vals = a
        z = vals.astype(np.float64)
        zmax = z.max()
        if np.isnan(zmax):
            raise PyEngineError("logits contain NaN (the model produced invalid numbers)")
        if zmax == -np.inf:
            raise PyEngineError("all logits are -inf: no token can be sampled")
        if zmax == np.inf:  # +inf dominates: uniform over the +inf tokens
            p = (z == np.inf).astype(np.float64)
        else:
            with np.errstate(over="ignore", under="ignore"):  # tiny temperatures -> one-hot
                p = np.exp((z - zmax) / pr.temperature)
        p /= p.sum()

        # min-p: an O(n) mask (the most likely token always survives)
        if pr.min_p > 0:
            keep = np.flatnonzero(p >= pr.min_p * p.max())
            if keep.size < p.size:
                p = p[keep]
                idx = keep if idx is None else idx[keep]

        # top-p over what min-p kept (a prefix of the tokens by probability): the cumulative
        # sums use the un-renormalised probabilities, so the result is the shorter of the two
        # prefixes top-p and min-p would each keep on the full distribution.
        if pr.top_p < 1.0:
            order = None
            m = _TOP_P_PREFILTER
            while order is None and m < p.size:  # try the m most likely first, growing m
                part = np.argpartition(p, p.size - m)[p.size - m:]
                if p[part].sum() >= pr.top_p:
                    order = part[np.argsort(-p[part])]
                m *= 8
            if order is None:
                order = np.argsort(-p)
            cum = np.cumsum(p[order])
            n_keep = min(int(np.searchsorted(cum, pr.top_p, side="left")) + 1, order.size)
            sel = order[:n_keep]
            p = p[sel]
            idx = sel if idx is None else idx[sel]

        if idx is None:
            idx = np.arange(n, dtype=np.int64)
        p = p / p.sum()
        return np.asarray(idx, dtype=np.int64), p

    # -- drawing ----------------------------------------------------------------------
    def sample(self, logits, history: Sequence[int] = ()) -> int:
        """Pick the next token id from ``logits`` given the tokens so far (``history``)."""
        ids, p = self.distribution(logits, history)
        if ids.size == 1:  # greedy, or one candidate left: no draw
            return int(ids[0])
        cum = np.cumsum(p)
        u = self.rng.random() * cum[-1]
        j = min(int(np.searchsorted(cum, u, side="right")), ids.size - 1)
        return int(ids[j])
