"""``pyengine serve`` as a Ray Serve application with N replicas (optional: ``pip install 'pyengine[ray]'``).

Each replica is a Ray actor that loads the model once and runs the same FastAPI app as
``pyengine serve`` (OpenAI and Ollama endpoints); Ray Serve's HTTP proxy spreads requests over
the replicas. The replica forwards each request into that ASGI app and streams its response back,
so SSE and NDJSON streaming work unchanged.

    serve run pyengine.server.ray_serve:app_builder model=qwen2.5-coder-0.5b replicas=2
"""
from __future__ import annotations

import asyncio

from ..errors import PyEngineError


def _require_ray():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise PyEngineError(f"Ray Serve is not installed ({e.name}): pip install 'pyengine[ray]'") from None


def deployment(model: str, replicas: int = 2, n_ctx: int | None = None, parallel: int = 4,
               backend: str = "auto", name: str | None = None, num_cpus: float = 1.0):
    """A bound Ray Serve application serving ``model`` with ``replicas`` replicas."""
    _require_ray()
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    @serve.deployment(name="pyengine", num_replicas=int(replicas), ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=max(8, 4 * parallel))
    class PyEngineReplica:
        def __init__(self):
            from ..engine import load
            from . import model_name
            from .app import create_app

            m = load(model, backend=backend, n_ctx=n_ctx, progress=False, max_sequences=parallel)
            self.app = create_app(m, name or model_name(model))

        async def __call__(self, request: Request):
            q: asyncio.Queue = asyncio.Queue()

            async def send(msg):
                await q.put(msg)

            task = asyncio.create_task(self.app(request.scope, request.receive, send))
            getter = asyncio.create_task(q.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:  # the app ended without starting a response
                getter.cancel()
                task.result()
                raise RuntimeError("the app sent no response")
            start = getter.result()
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
            headers.pop("content-length", None)

            async def body():
                try:
                    while True:
                        msg = await q.get()
                        if msg["type"] == "http.response.body":
                            if msg.get("body"):
                                yield msg["body"]
                            if not msg.get("more_body"):
                                break
                finally:
                    if not task.done():
                        task.cancel()

            media = headers.pop("content-type", None)
            return StreamingResponse(body(), status_code=start["status"], headers=headers, media_type=media)

    return PyEngineReplica.bind()


def app_builder(args: dict):
    """For ``serve run pyengine.server.ray_serve:app_builder model=NAME replicas=N [ctx=N] [parallel=N]``."""
    return deployment(args.get("model", "gemma3-270m"), replicas=int(args.get("replicas", 2)),
                      n_ctx=int(args["ctx"]) if "ctx" in args else None, parallel=int(args.get("parallel", 4)),
                      backend=args.get("backend", "auto"), name=args.get("name"))


def run(model: str, replicas: int = 2, host: str = "127.0.0.1", port: int = 8000, **kw):
    """Start a local Ray instance and serve ``model`` on ``host:port`` (blocks until Ctrl-C)."""
    _require_ray()
    import ray
    from ray import serve

    ray.init(ignore_reinit_error=True, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(model, replicas=replicas, **kw), route_prefix="/", blocking=True)
