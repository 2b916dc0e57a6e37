"""``pyengine serve``: an OpenAI- and Ollama-compatible HTTP server (see :mod:`pyengine.server.app`)."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import threading

from ..errors import PyEngineError

EPILOG = """\
examples:
  pyengine serve -m qwen2.5-coder-0.5b                 # http://127.0.0.1:8080, this machine only
  pyengine serve -m smollm2-135m --port 11434          # where Ollama clients look by default
  pyengine serve -m ./my-model.gguf --ctx 8192 --parallel 2
  pyengine serve --host 0.0.0.0                        # EXPLICIT: any machine on the network may connect

then, for instance:
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "qwen2.5-coder-0.5b", "messages": [{"role": "user", "content": "Hi"}]}'
  OpenAI clients: base_url="http://127.0.0.1:8080/v1" (any api_key)
  Ollama clients: host="http://127.0.0.1:8080"

endpoints: OpenAI /v1/models /v1/chat/completions /v1/completions (suffix = fill-in-the-middle);
Ollama /api/version /api/tags /api/show /api/chat /api/generate /api/ps. CORS is on (browser
frontends such as LobeChat), for the origins given by --cors-origin (default: any).

concurrency: up to --parallel requests generate at once, each on its own KV cache, interleaved
token by token; more wait in line. A repeated conversation prefix is not recomputed.
"""


def add_parser(sub) -> None:
    from ..registry import add_model_argument
    from ..weight_pages import add_weights_argument

    p = sub.add_parser("serve", help="serve a model over the OpenAI and Ollama HTTP APIs",
                       description="Serve MODEL over HTTP with OpenAI- and Ollama-compatible endpoints, so "
                                   "Open WebUI, Continue, LobeChat and the openai/ollama client libraries can use it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, loopback: this machine only); anything else is "
                        "printed as an explicit choice")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument("--name", default=None, help="model name clients use (default: the registry name or file stem)")
    p.add_argument("--ctx", type=int, default=None, help="context size in tokens per request (default min(model's, 4096))")
    p.add_argument("--parallel", type=int, default=4, help="requests generating at once, each with its own KV cache (default 4)")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba", "cpu", "cuda"], help="compute backend")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    add_weights_argument(p)
    p.add_argument("--max-body", type=int, default=8 * 1024 * 1024, metavar="BYTES",
                   help="largest request body accepted (default 8 MiB); larger gets HTTP 413")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allowed browser origin (repeatable; default: any)")
    p.add_argument("-q", "--quiet", action="store_true", help="no access log")
    p.set_defaults(func=cmd_serve)


def model_name(model_arg: str) -> str:
    from pathlib import Path

    p = Path(model_arg)
    return p.stem if p.suffix == ".gguf" else model_arg


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise PyEngineError(f"cannot listen on {host}:{port}: {e.strerror} (try another --port)") from None
    s.listen(128)
    s.set_inheritable(True)
    return s


class ServerThread:
    """A server in a background thread on an already-bound socket (tests; embedding)."""

    def __init__(self, app, sock: socket.socket, log: bool = False):
        import uvicorn

        self.sock = sock
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=log, lifespan="off",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> "ServerThread":
        import time

        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > timeout or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise PyEngineError(f"pyengine serve needs FastAPI and uvicorn ({e.name} is missing): "
                            "pip install fastapi uvicorn") from None
    from ..bench.machine import set_threads
    from ..engine import load
    from .app import create_app

    if args.parallel < 1:
        raise PyEngineError("--parallel must be at least 1")
    if not 0 <= args.port <= 65535:
        raise PyEngineError(f"--port must be 0..65535, got {args.port}")
    set_threads(args.threads)
    sock = bind(args.host, args.port)  # fail on a taken port before the model loads
    model = load(args.model, backend=args.backend, n_ctx=args.ctx, progress=not args.quiet,
                 max_sequences=args.parallel, weights=args.weights)
    name = args.name or model_name(args.model)
    app = create_app(model, name, max_body=args.max_body, cors_origins=tuple(args.cors_origin or ["*"]))
    port = sock.getsockname()[1]
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(f"pyengine serve: '{name}' ({model.backend.name} backend, ctx {model.n_ctx}, {args.parallel} parallel) "
          f"on http://{host}:{port}", file=sys.stderr)
    if is_loopback(args.host):
        print("  listening on loopback only: programs on this machine can connect, other machines cannot "
              "(--host 0.0.0.0 to change that)", file=sys.stderr)
    else:
        print(f"  NOTE: listening on {args.host} as you chose with --host: any machine that can reach this "
              "address can use the model; there is no authentication", file=sys.stderr)
    print(f"  OpenAI base_url http://{host}:{port}/v1 | Ollama host http://{host}:{port}", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning" if args.quiet else "info", access_log=not args.quiet)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0
