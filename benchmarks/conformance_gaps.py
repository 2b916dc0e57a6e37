#!/usr/bin/env python3
"""How decisive llama.cpp's own top-1 is in the conformance data (tests/data/conformance/).

Per case: the top-1 minus top-2 logit gap of llama.cpp at every position (from the committed
``logits.npz``: ``top_logits[:, 0] - top_logits[:, 1]``), its minimum, 5th percentile and
median, how many positions fall under 0.2 and under ``--gap-min``, and the decisive share
(positions with gap >= gap-min; ``tests/test_conformance.py`` wants >= 0.95).

With ``--backend B`` each case is also run on pyengine's backend B and the change of that gap
is measured (ours at llama.cpp's top-1/top-2 tokens minus llama.cpp's): its std and max is the
size of the rounding noise between the two engines, i.e. the gap under which a position can
flip without a bug; the positions where B's top-1 differs are listed with llama.cpp's gap there. Reads the committed data only (the case files are rebuilt with
tests/synthetic_gguf.assemble, which needs the llama-cpp-python sdist's vocab files).

    python benchmarks/conformance_gaps.py [--cases a,b] [--backend numpy]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
CONF = ROOT / "tests" / "data" / "conformance"


def load(case_dir: Path) -> list[dict]:
    z = np.load(case_dir / "logits.npz")
    out, k = [], 0
    while f"ids_{k}" in z:
        out.append({n: z[f"{n}_{k}"] for n in ("ids", "top_ids", "top_logits", "lse")})
        k += 1
    return out


def gaps(seqs: list[dict]) -> np.ndarray:
    """llama.cpp's top-1 minus top-2 logit at every position of every sequence (n,)."""
    return np.concatenate([s["top_logits"][:, 0] - s["top_logits"][:, 1] for s in seqs]).astype(np.float64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=None, help="comma-separated (default: every case)")
    p.add_argument("--gap-min", type=float, default=0.5)
    p.add_argument("--backend", default=None, help="also measure the gap noise of this pyengine backend")
    args = p.parse_args(argv)
    cases = ([c.strip() for c in args.cases.split(",")] if args.cases
             else sorted(d.name for d in CONF.iterdir() if (d / "logits.npz").exists()))
    print(f"{'case':14s} {'n':>3s} {'min':>6s} {'p5':>6s} {'median':>6s} {'<0.2':>4s} "
          f"{'<' + str(args.gap_min):>5s} {'decisive':>8s}" + ("   noise: std   max  flips" if args.backend else ""))
    for case in cases:
        seqs = load(CONF / case)
        g = gaps(seqs)
        line = (f"{case:14s} {len(g):3d} {g.min():6.3f} {np.percentile(g, 5):6.3f} {np.median(g):6.3f} "
                f"{int((g < 0.2).sum()):4d} {int((g < args.gap_min).sum()):5d} {(g >= args.gap_min).mean():8.3f}")
        if args.backend:
            line += "   " + noise(case, seqs, args.backend)
        print(line, flush=True)
    return 0


def noise(case: str, seqs: list[dict], backend: str) -> str:
    import pyengine
    import synthetic_gguf as sg
    from llamacpp_sdist import vocab_dir

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{case}.gguf"
        sg.assemble(CONF / case, vocab_dir(), path)
        try:
            model = pyengine.load(path, backend=backend, n_ctx=128, progress=False)
        except Exception as e:   # an architecture this checkout does not run: say so, go on
            return f"({type(e).__name__}: {str(e).splitlines()[0][:60]})"
        d, flips, at = [], 0, []
        for s in seqs:
            ours = model.logits(s["ids"].tolist())                                   # (n, V)
            two = np.take_along_axis(ours, s["top_ids"][:, :2].astype(np.int64), 1)  # (n, 2)
            d.append((two[:, 0] - two[:, 1]) - (s["top_logits"][:, 0] - s["top_logits"][:, 1]))
            flipped = ours.argmax(-1) != s["top_ids"][:, 0]
            flips += int(flipped.sum())
            at += (s["top_logits"][flipped, 0] - s["top_logits"][flipped, 1]).tolist()  # llama.cpp's gaps there
        d = np.concatenate(d)
        where = " at gaps " + ", ".join(f"{g:.2f}" for g in sorted(at)) if at else ""
        return f"{d.std():6.3f} {np.abs(d).max():5.3f} {flips:3d}/{len(d)}{where}"


if __name__ == "__main__":
    sys.exit(main())
