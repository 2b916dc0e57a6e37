"""Serving figures for benchmarks/README.md (run on a quiet machine; not part of the test suite).

1. Aggregate generated tokens/s of `pyengine serve` with 1, 2 and 4 concurrent clients (the real
   `openai` client, streaming, same max_tokens, distinct prompts).
2. Time to first token of a chat's turn 2 vs turn 1: turn 2 processes only its new tokens.

    python benchmarks/serve_load.py -m smollm2-135m --tokens 64
"""
from __future__ import annotations

import argparse
import threading
import time

PROMPTS = ["Tell me about the sea.", "Explain what a CPU cache is.", "Write a short poem about autumn.",
           "List some uses of Python."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()

    import openai

    import pyengine
    from pyengine.chat import ChatSession
    from pyengine.server import ServerThread, bind
    from pyengine.server.app import create_app

    model = pyengine.load(args.model, backend=args.backend, n_ctx=args.ctx, max_sequences=4, progress=False)
    srv = ServerThread(create_app(model, args.model), bind("127.0.0.1", 0)).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="unused", timeout=600)

    def one(i, out):
        n = 0
        for ch in client.chat.completions.create(
                model=args.model, messages=[{"role": "user", "content": PROMPTS[i % 4]}], max_tokens=args.tokens,
                temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True}):
            if ch.usage:
                n = ch.usage.completion_tokens
        out[i] = n

    warm = [threading.Thread(target=one, args=(i, {})) for i in range(4)]  # each sequence traces its decode step once
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    print(f"model {args.model} | backend {model.backend.name} | {args.tokens} tokens per request")
    for k in (1, 2, 4):
        out: dict = {}
        th = [threading.Thread(target=one, args=(i, out)) for i in range(k)]
        t0 = time.perf_counter()
        for t in th:
            t.start()
        for t in th:
            t.join()
        dt = time.perf_counter() - t0
        print(f"{k} client(s): {sum(out.values())} tokens in {dt:.2f} s = {sum(out.values()) / dt:.1f} tok/s aggregate")
    srv.stop()

    s = ChatSession(model, system="You are a helpful assistant.", max_tokens=args.tokens, temperature=0)
    long_q = "Here is some context about my project. " * 20 + "Summarise it."
    s.ask(long_q)
    t1 = s.last_stats
    s.ask("Now say it in one sentence.")
    t2 = s.last_stats
    print(f"turn 1: {t1.prompt_tokens} prompt tokens processed, first token {t1.time_to_first_token * 1000:.0f} ms")
    print(f"turn 2: {t2.prompt_tokens} prompt tokens, {t2.prompt_processed} processed ({t2.prompt_reused} reused), "
          f"first token {t2.time_to_first_token * 1000:.0f} ms")


if __name__ == "__main__":
    main()
