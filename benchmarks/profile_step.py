#!/usr/bin/env python3
"""Where a native decode step's time goes, by op kind, at chosen cache positions.

Loads MODEL on the cpu backend, builds its single-call decode step, and at each position
runs ``pyengine.backends.cpu_graph.profile_by_kind`` (every node timed on its own, the
cache read up to that position) and then the plain step, printing ms per step for the
most expensive kinds. This is how benchmarks/README.md measured the latent attention of
the DeepSeek-V2-Lite-shaped file at long context. The cache holds noise: the step's work
depends on the position, not on what the tokens were.

    python benchmarks/profile_step.py MODEL [--positions 64,512,2048,4000] [-t 2] [--reps 6] [--weights copy]
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a .gguf path or registry name")
    ap.add_argument("--positions", default="64,512,2048,4000",
                    help="comma list of cache positions to profile at (default 64,512,2048,4000)")
    ap.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (default: all cores)")
    ap.add_argument("--reps", type=int, default=6, help="profiled steps per position (default 6)")
    ap.add_argument("--top", type=int, default=4, help="op kinds to print per position (default 4)")
    ap.add_argument("--weights", default="auto", choices=("auto", "map", "copy"),
                    help="weight placement as pyengine.load's weights= (default auto)")
    args = ap.parse_args(argv)
    try:
        positions = [int(p) for p in args.positions.split(",") if p.strip()]
    except ValueError:
        ap.error(f"--positions: not a comma list of integers: {args.positions!r}")
    if not positions or min(positions) < 0:
        ap.error("--positions: give at least one position, none negative")
    if args.reps < 1 or args.top < 1 or args.threads < 0:
        ap.error("--reps and --top must be >= 1, --threads >= 0")

    import pyengine
    from pyengine.backends.cpu_graph import profile_by_kind
    from pyengine.bench.machine import set_threads

    if args.threads:
        set_threads(args.threads)
    try:
        m = pyengine.load(args.model, backend="cpu", n_ctx=max(positions) + 1, weights=args.weights)
    except pyengine.PyEngineError as e:
        print(f"profile_step: {e}", file=sys.stderr)
        return 2
    cache = m._new_cache()
    step = m.backend.make_decode_step(m.arch.forward, cache)
    if step is None:
        print(f"profile_step: {m.backend.decode_step_status}", file=sys.stderr)
        return 2
    for k in range(8):  # warm-up: code paths, pages, the pool
        step(5, k)
    for pos in positions:
        prof = profile_by_kind(step, 5, pos, reps=args.reps)
        t0 = time.perf_counter()
        n = args.reps
        for _ in range(n):
            step(5, pos)
        ms = (time.perf_counter() - t0) / n * 1e3
        kinds = ", ".join(f"{k} {us / 1e3:.2f}" for k, (_, us) in list(prof.items())[:args.top])
        print(f"pos {pos}: step {ms:.1f} ms; by kind (ms): {kinds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
