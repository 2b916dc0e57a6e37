#!/usr/bin/env python3
"""Two builds of the compiled module, one matmul kernel case at a time, alternating in time.

On a shared machine the speed of a kernel drifts by 10-40% over minutes, so two builds timed
one after the other (or in two runs of `pyengine bench kernels`) cannot resolve a change of a
few percent. This script starts one worker process per build (each imports its own copy of
the module as `_C`: two builds cannot share one Python process, which caches the first
extension module of a name), checks that both give the same outputs bit for bit (or prints
how far apart they are), then asks them in turn -- A B, B A, A B, ... -- to time the same case
on the same bytes, and prints each side's best and median and the median of the per-round
ratios B / A. Weights stay in cache (one copy, reused): this compares the kernels' own work,
not the memory system.

    cp build/<tag>/_C*.so /tmp/new.so        # after building the change
    python benchmarks/ab_kernels.py /tmp/old.so /tmp/new.so --variant avx2 Q2_K:1024x2048 Q3_K:1024x2048:2

A case is TYPE[/TYPE_B]:ROWSxCOLS[:TOKENS] (tokens default 1); with TYPE_B, build B runs that
type on the same weights in another form, e.g. `Q3_K/Q3_K_R:4096x4096` times the Q3_K kernel
against the form the cpu backend gives Q3_K when it copies the weights (give one build twice).
Times are ns per 256 weights and token.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODULE_FILE = "_C" + (".pyd" if sys.platform == "win32" else ".so")



def worker(module_dir: str, threads: int) -> int:
    """Serve requests on stdin: 'check TYPE R C N' (print the outputs' bytes as hex) or
    'time TYPE R C N VARIANT' (print the best of 3 timed batches, ns per 256 weights and token)."""
    import time

    import numpy as np

    sys.path.insert(0, module_dir)
    import _C  # noqa: E402  this worker's own build

    from pyengine.testing.blocks import random_raw

    _C.set_num_threads(threads)
    cases: dict = {}
    for line in sys.stdin:
        cmd, tn, r, c, n, *rest = line.split()
        r, c, n = int(r), int(c), int(n)
        if (tn, r, c, n) not in cases:  # the same seeds in both workers: the same bytes
            raw = random_raw(tn, r * c, np.random.default_rng(1), cols=c).reshape(r, -1)  # forms (Q3_K_R) too
            x = np.random.default_rng(2).standard_normal((n, c)).astype(np.float32)
            cases[(tn, r, c, n)] = (raw, x)
        raw, x = cases[(tn, r, c, n)]
        out = np.empty((n, r), np.float32)  # (tokens, rows)
        if cmd == "check":
            _C.matmul(tn, raw, r, c, x, out, variant=rest[0])
            print(out.tobytes().hex(), flush=True)
            continue
        calls = max(20, int(2e6 / (r * c / 256 * n)))  # ~2e6 super-block-tokens a batch
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(calls):
                _C.matmul(tn, raw, r, c, x, out, variant=rest[0])
            best = min(best, (time.perf_counter() - t0) / calls)
        print(best * 1e9 / (r * c / 256 * n), flush=True)
    return 0


def parse_case(s: str) -> tuple[str, int, int, int]:
    parts = s.split(":")
    if len(parts) not in (2, 3) or "x" not in parts[1]:
        raise argparse.ArgumentTypeError(f"case {s!r}: expected TYPE[/TYPE_B]:ROWSxCOLS[:TOKENS], e.g. Q4_K:1024x2048")
    rows, cols = (int(v) for v in parts[1].split("x"))
    ta, _, tb = parts[0].upper().partition("/")
    return ta, tb or ta, rows, cols, int(parts[2]) if len(parts) == 3 else 1


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module text (python benchmarks/ab_kernels.py's source) for why.")
    ap.add_argument("a", help="build A: a compiled pyengine._C module file (the baseline)")
    ap.add_argument("b", help="build B: the changed one")
    ap.add_argument("cases", nargs="+", type=parse_case,
                    help="TYPE[/TYPE_B]:ROWSxCOLS[:TOKENS], e.g. Q4_K:1024x2048; TYPE_B: what build B runs "
                         "(default TYPE), e.g. Q3_K/Q3_K_R: the same weights in the form made at load")
    ap.add_argument("--variant", default="avx2", help="kernel tier both builds run (default avx2)")
    ap.add_argument("-t", "--threads", type=int, default=1, help="threads of each worker (default 1)")
    ap.add_argument("-r", "--rounds", type=int, default=12, help="timed rounds per case, alternating (default 12)")
    args = ap.parse_args(argv)
    for so in (args.a, args.b):
        if not Path(so).is_file():
            print(f"ab_kernels: {so}: no such file", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        workers = []
        for name, so in (("A", args.a), ("B", args.b)):
            d = Path(tmp) / name
            d.mkdir()
            shutil.copy(so, d / (Path(so).name if Path(so).name.startswith("_C.") else MODULE_FILE))
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker", str(d), str(args.threads)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

        def ask(w, line: str) -> str:
            w.stdin.write(line + "\n")
            w.stdin.flush()
            got = w.stdout.readline()
            if not got:
                raise SystemExit(f"ab_kernels: a worker stopped (request {line!r})")
            return got.strip()

        try:
            for ta, tb, r, c, n in args.cases:
                req = [f"{tt} {r} {c} {n} {args.variant}" for tt in (ta, tb)]
                same = ask(workers[0], "check " + req[0]) == ask(workers[1], "check " + req[1])
                t = {0: [], 1: []}
                for k in range(args.rounds):
                    for i in ((0, 1) if k % 2 == 0 else (1, 0)):
                        t[i].append(float(ask(workers[i], "time " + req[i])))
                ratio = statistics.median(b / a for a, b in zip(t[0], t[1]))
                name = ta if ta == tb else f"{ta}/{tb}"
                print(f"{name} {r}x{c} n={n} {args.variant}: A best {min(t[0]):.2f} median {statistics.median(t[0]):.2f} | "
                      f"B best {min(t[1]):.2f} median {statistics.median(t[1]):.2f} ns/256 weights | "
                      f"B/A {ratio:.3f} (median of {args.rounds} rounds) | outputs "
                      f"{'bit-identical' if same else 'DIFFER'}", flush=True)
        finally:
            for w in workers:
                w.stdin.close()
                w.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
