"""``pyengine bench``: measure speed against the machine's memory bandwidth.

On a CPU the speed of token generation is set by how fast the weights stream from DRAM,
so every figure is reported next to the *measured* read bandwidth:

* :mod:`.bandwidth` -- the bandwidth probe (a streaming read of a 1 GiB buffer);
* :mod:`.kernels` -- ``pyengine bench kernels``: every quantized matmul kernel, validated
  against the NumPy reference before it is timed;
* :mod:`.model` -- ``pyengine bench MODEL``: llama-bench's pp512 / tg128 for one model;
* :mod:`.machine` -- cores, CPU, load, peak memory, and the thread setter.

This module is the command line (``pyengine bench ...`` = ``python -m pyengine.bench ...``).
All timings on a shared machine are noisy: compare two things as a ratio measured in
one run, alternating the two sides (``benchmarks/compare_llamacpp.py`` does that).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import PyEngineError
from ..weight_pages import add_weights_argument
from .kernels import DEFAULT_TYPES, MODEL_CASES, check_kernel_results, plot_kernels, run_kernel_bench
from .model import format_model_table, run_model_bench

def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            r, c = part.lower().split("x")
            out.append((int(r), int(c)))
        except ValueError:
            raise PyEngineError(f"bad shape {part!r}: write ROWSxCOLS, e.g. 4096x11008") from None
        if out[-1][0] <= 0 or out[-1][1] <= 0:
            raise PyEngineError(f"bad shape {part!r}: sizes must be positive")
    return out


def parse_list(text: str | None, what: str) -> list[str]:
    items = [p.strip() for p in (text or "").split(",") if p.strip()]
    if text is not None and not items:
        raise PyEngineError(f"empty {what} list")
    return items


BENCH_EPILOG = """\
what the numbers mean:
  pp512   prompt processing: one 512-token prompt run as a single batch, in tokens
          per second (the prefill a chat pays before the first word appears).
  tg128   text generation: 128 tokens produced one at a time, in tokens per second
          (the speed you watch text appear at). Each step reads every weight once
          (of a mixture of experts, only the experts it routes to), so it is bounded
          by memory bandwidth: tokens/s <= GB/s / GB per token.
  GB/s    effective bandwidth = bytes of weights read / time. Compared with the
          machine's measured read bandwidth (a streaming read of a 1 GiB buffer,
          measured in the same run), it says how close to the hardware limit we are.
  python share  the part of a decode step spent in Python outside the backend's
          compute ops (wall time around every op call, on a few extra steps).

examples:
  pyengine bench gemma3-270m                      pp512 and tg128, 3 runs each
  pyengine bench model.gguf -p 128 -n 32 -r 5 -t 2 --json
  pyengine bench kernels                          every kernel on default shapes
  pyengine bench kernels --types Q4_K --shapes 4096x4096 --batch 1 --plot k.png
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pyengine bench`` (``bench MODEL`` and ``bench kernels``) on the CLI's subparsers."""
    b = subparsers.add_parser(
        "bench", help="measure speed: a whole model (pp512/tg128) or the matmul kernels",
        description="Benchmark a model like llama.cpp's llama-bench (pp = prompt tokens/s processed as one "
                    "batch, tg = generated tokens/s one at a time), or with MODEL = 'kernels' every quantized "
                    "matmul kernel against memory bandwidth. Memory read bandwidth is measured first, in the "
                    "same run, and every speed is also given as a share of it.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("target", metavar="MODEL|kernels",
                   help="a .gguf path or registry name to benchmark end to end, or the word 'kernels'")
    b.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    b.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results as JSON to FILE (or stdout with no FILE; the table then goes to stderr)")
    b.add_argument("--bw-size", type=float, default=1.0, metavar="GIB",
                   help="bandwidth probe buffer in GiB; keep it far above the last-level cache (default 1; "
                        "0 skips the probe and the %% figures)")
    b.add_argument("--seed", type=int, default=0, help="random seed for token ids / weights (default 0)")
    g = b.add_argument_group("model benchmark (pyengine bench MODEL)")
    g.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N",
                   help="prompt length of the pp test; 0 skips it (default 512 -> pp512)")
    g.add_argument("-n", "--n-gen", type=int, default=128, metavar="N",
                   help="tokens generated in the tg test; 0 skips it (default 128 -> tg128)")
    g.add_argument("-r", "--repetitions", type=int, default=3, metavar="R",
                   help="timed runs of each test, reported as mean ± sd (default 3)")
    g.add_argument("--backend", default=None,
                   help="model: auto|numpy|numba|cpu|cuda (default auto); kernels: comma list of "
                        "numpy,numba,cpu (default: all available)")
    g.add_argument("--python-steps", type=int, default=8, metavar="N",
                   help="extra decode steps used to measure the python share; 0 skips it (default 8)")
    add_weights_argument(g)
    k = b.add_argument_group("kernel benchmark (pyengine bench kernels)")
    k.add_argument("--types", default=None, help=f"comma list of weight types (default {','.join(DEFAULT_TYPES)} "
                                                 "plus the real models' own type/shape cases)")
    k.add_argument("--shapes", default=None, help="comma list of ROWSxCOLS weight shapes, e.g. 4096x4096,11008x4096 "
                                                  "(rows = outputs, cols = inputs; default: Llama-7B-like shapes)")
    k.add_argument("--batch", default=None, help="comma list of activation rows n: 1 = matrix-vector (generation), "
                                                 ">1 = matrix-matrix (prompt); default 1,64")
    k.add_argument("--model-cases", action="store_true",
                   help="only the real models' own weights: " + ", ".join(f"{r}x{c} {t}" for t, r, c, _ in MODEL_CASES))
    k.add_argument("--variants", default=None, help="native variants to include, e.g. avx2,avx512 (default: all "
                                                    "this CPU runs)")
    k.add_argument("--no-reprobe", action="store_true",
                   help="probe bandwidth only at the start (default: also before each weight type/shape, "
                        "and compare all kernels with the best probe of the run: a shared VM's memory bus drifts)")
    k.add_argument("--hot", action="store_true",
                   help="reuse one weight copy so it may sit in cache (default: rotate copies over 256 MB "
                        "so every call streams weights from DRAM, as in a real model)")
    k.add_argument("--min-time", type=float, default=0.25, metavar="S",
                   help="seconds of timed calls per kernel and case, at least 5 calls (default 0.25)")
    k.add_argument("--stat", choices=["median", "min"], default="median",
                   help="per-call time to report: median (default) or min, the least disturbed call on a busy "
                        "machine; both are in the JSON")
    k.add_argument("--plot", default=None, metavar="FILE.png",
                   help="write a roofline-style PNG (needs matplotlib)")
    b.set_defaults(func=cmd_bench)
    return b


def _out(args):
    # with --json to stdout, the human-readable table goes to stderr
    stream = sys.stderr if args.json == "-" else sys.stdout
    return lambda s: print(s, file=stream, flush=True)


def _write_json(args, obj) -> None:
    text = json.dumps(obj, indent=1, default=float)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


def cmd_bench(args) -> int:
    if args.target == "kernels":
        return cmd_kernels(args)
    return cmd_model(args)


def cmd_kernels(args) -> int:
    log = _out(args)
    batch = None
    if args.batch is not None:
        try:
            batch = [int(v) for v in parse_list(args.batch, "batch")]
        except ValueError:
            raise PyEngineError(f"--batch takes a comma list of integers, got {args.batch!r}") from None
        if any(v < 1 for v in batch):
            raise PyEngineError("--batch sizes must be >= 1")
    res = run_kernel_bench(
        types=parse_list(args.types, "type") if args.types is not None else None,
        shapes=parse_shapes(args.shapes) if args.shapes is not None else None, batch=batch,
        backends=parse_list(args.backend, "backend") if args.backend else None,
        variants=parse_list(args.variants, "variant") if args.variants else None,
        model_cases="only" if args.model_cases else None,
        threads=args.threads, seed=args.seed, bw_bytes=int(args.bw_size * 2**30), cold=not args.hot,
        min_time=args.min_time, log=log, stat=args.stat, reprobe=not args.no_reprobe)
    if args.json:
        _write_json(args, res)
    if args.plot:
        ref = res.get("reference_bandwidth_gbps")
        plot_kernels(res["results"], {"gbps": {str(res["threads"]): ref}} if ref else res["bandwidth"],
                     res["threads"], args.plot,
                     title=f"{res['machine']['cpu']}, {res['threads']} threads")
        log(f"plot written to {args.plot}")
    return check_kernel_results(res)


def cmd_model(args) -> int:
    log = _out(args)
    backend = args.backend or "auto"
    if "," in backend:
        raise PyEngineError("the model benchmark takes one --backend (auto, numpy, numba, cpu or cuda)")
    res = run_model_bench(args.target, n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.repetitions,
                          threads=args.threads, backend=backend, seed=args.seed,
                          bw_bytes=int(args.bw_size * 2**30), python_steps=args.python_steps, log=log,
                          weights=args.weights)
    log(format_model_table(res))
    if args.json:
        _write_json(args, res)
    return 0


def main(argv=None) -> int:
    """``python -m pyengine.bench ...`` = ``pyengine bench ...``."""
    p = argparse.ArgumentParser(prog="python -m pyengine.bench")
    sub = p.add_subparsers(dest="command")
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(["bench", *argv])
    try:
        return int(args.func(args) or 0)
    except PyEngineError as e:
        print(f"pyengine: error: {e}", file=sys.stderr)
        return 1
