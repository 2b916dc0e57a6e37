"""``pyengine chat``: a multi-turn conversation in the terminal (and :class:`ChatSession`, its Python API).

Each turn renders the whole conversation with the model's own chat template, but only the new
tokens run through the model: the session keeps one sequence (KV cache) and the common prefix
of the new prompt with what the cache holds is kept. A conversation that outgrows the context is
never cut silently: the turn is refused with the token counts, and ``/drop`` (or
``--drop-old-turns``) removes the oldest exchanges explicitly.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from .engine import GenerationStats, Model, Sequence_
from .errors import PromptTooLongError, PyEngineError

EPILOG = """\
examples:
  pyengine chat                                   # gemma3-270m, the default model
  pyengine chat -m qwen2.5-coder-0.5b --system "You answer in one sentence."
  pyengine chat -m smollm2-135m --temp 0 --drop-old-turns
  echo "What is GGUF?" | pyengine chat -m smollm2-135m   # one turn per input line, no prompt

commands inside the chat:
  /help          this list                 /stats        token counts and speed of the session
  /reset         forget the conversation   /system TEXT  set the system message (and reset)
  /save FILE     save it as JSON           /load FILE    continue a saved conversation
  /drop [N]      drop the N oldest exchanges (default 1) when the context is full
  /quit          leave (or Ctrl-D)

Ctrl-C stops the answer being written, not the session. Line editing and history (arrow keys)
work where Python has readline. Only each turn's new tokens are processed: earlier turns stay
in the KV cache.
"""

HELP = EPILOG.split("commands inside the chat:\n", 1)[1].split("\nCtrl-C", 1)[0]


class ContextFullError(PromptTooLongError):
    """The conversation no longer fits the context window."""


class ChatSession:
    """A conversation with one model that keeps its KV cache between turns.

    >>> s = ChatSession(model, system="Be brief.")
    >>> for piece in s.send("Hi"): print(piece, end="")
    """

    def __init__(self, model: Model, system: str | None = None, max_tokens: int = 512,
                 drop_old_turns: bool = False, **sampling):
        self.model = model
        self.system = system
        self.max_tokens = max_tokens
        self.drop_old_turns = drop_old_turns
        self.sampling = sampling
        self.messages: list[dict] = []
        self.seq = Sequence_(model)  # this session's own KV cache
        self.last_stats: GenerationStats | None = None
        self.totals = {"turns": 0, "prompt_tokens": 0, "processed": 0, "reused": 0, "generated": 0}
        self.notices: list[str] = []

    # -- conversation -------------------------------------------------------------------
    def conversation(self, extra: list[dict] = ()) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + list(extra)

    def prompt_tokens(self, user_text: str) -> list[int]:
        return self.model.chat_tokens(self.conversation([{"role": "user", "content": user_text}]))

    def drop(self, n: int = 1) -> int:
        """Remove the ``n`` oldest exchanges (a user message and the replies up to the next
        one); returns how many were dropped."""
        dropped = 0
        while dropped < n and self.messages:
            i = 1
            while i < len(self.messages) and self.messages[i]["role"] != "user":
                i += 1
            del self.messages[:i]
            dropped += 1
        return dropped

    def _fit(self, user_text: str) -> list[int]:
        n_ctx = self.model.n_ctx
        while True:
            ids = self.prompt_tokens(user_text)
            if len(ids) < n_ctx:
                return ids
            if self.drop_old_turns and self.messages:
                self.drop(1)
                self.notices.append(f"[dropped the oldest exchange to fit the context of {n_ctx} tokens]")
                continue
            what = "the conversation" if self.messages else "the message"
            raise ContextFullError(
                f"{what} is {len(ids)} tokens but the context holds {n_ctx}: /drop removes the oldest "
                f"exchange, /reset starts over, or restart with a larger --ctx (or --drop-old-turns)")

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the answer to ``user_text``. Closing the iterator early (Ctrl-C) keeps the
        partial answer in the conversation."""
        self.notices = []
        ids = self._fit(user_text)
        self.messages.append({"role": "user", "content": user_text})
        answer: list[str] = []
        stats = GenerationStats()
        self.last_stats = stats
        try:
            for piece in self.model.generate(ids, max_tokens=min(self.max_tokens, self.model.n_ctx - len(ids)),
                                             sequence=self.seq, stats=stats, **self.sampling):
                answer.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(answer)})
            t = self.totals
            t["turns"] += 1
            t["prompt_tokens"] += stats.prompt_tokens
            t["processed"] += stats.prompt_processed
            t["reused"] += stats.prompt_reused
            t["generated"] += stats.generated_tokens
            if stats.stop_reason.startswith("context full"):
                self.notices.append(f"[the answer filled the context ({self.model.n_ctx} tokens): /drop or /reset "
                                    "before the next turn]")

    def ask(self, user_text: str) -> str:
        return "".join(self.send(user_text))

    def reset(self) -> None:
        self.messages = []

    # -- files -------------------------------------------------------------------------
    def save(self, path) -> None:
        data = {"format": "pyengine-chat/1", "system": self.system, "messages": self.messages}
        try:
            Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        except OSError as e:
            raise PyEngineError(f"cannot save to {path}: {e.strerror}") from None

    def load(self, path) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise PyEngineError(f"cannot read {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise PyEngineError(f"{path} is not a saved chat (invalid JSON: {e})") from None
        msgs = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(msgs, list) or not all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
                for m in msgs):
            raise PyEngineError(f"{path} is not a saved chat (expected {{'system', 'messages': [{{role, content}}]}})")
        self.system = data.get("system") if isinstance(data.get("system"), str) else None
        self.messages = msgs

    def stats_text(self) -> str:
        t = self.totals
        lines = [f"session: {t['turns']} turns, {len(self.messages)} messages; prompt tokens {t['prompt_tokens']} "
                 f"({t['processed']} processed, {t['reused']} reused from the cache), generated {t['generated']}; "
                 f"cache holds {self.seq.n_past} of {self.model.n_ctx}"]
        if self.last_stats is not None:
            lines.append("last turn: " + self.last_stats.summary())
        return "\n".join(lines)


# --- the terminal loop ---------------------------------------------------------------------------

@contextlib.contextmanager
def _ctrl_c_stops():
    """While an answer streams, Ctrl-C also sets a flag (a non-empty list) checked after each
    piece: a KeyboardInterrupt that lands inside a finalizer (garbage collection during the
    step) is printed as "Exception ignored" and lost, and the answer would run on to its end
    (seen once in CI: 400 tokens after the signal)."""
    flag: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_sigint(signum, frame):
        flag.append(True)
        raise KeyboardInterrupt

    prev = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, prev)


def _readline_setup() -> None:
    try:
        import readline  # noqa: F401  (line editing for input())
    except ImportError:
        return
    from .registry import cache_dir

    hist = Path(cache_dir()) / "chat_history"
    try:
        readline.read_history_file(hist)
    except OSError:
        pass
    import atexit

    def save():
        try:
            hist.parent.mkdir(parents=True, exist_ok=True)
            readline.set_history_length(1000)
            readline.write_history_file(hist)
        except OSError:
            pass

    atexit.register(save)


def repl(session: ChatSession, stdin=None, stdout=None, stderr=None, interactive: bool | None = None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if interactive is None:
        interactive = stdin.isatty()
    if interactive:
        _readline_setup()
        print(f"chatting with {session.model.path.name} (ctx {session.model.n_ctx}); /help for commands, "
              "Ctrl-D to leave", file=stderr)

    def read() -> str | None:
        if interactive and stdin is sys.stdin:
            try:
                return input(">>> ")
            except EOFError:
                print(file=stdout)
                return None
        line = stdin.readline()
        return None if line == "" else line.rstrip("\n")

    while True:
        try:
            line = read()
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, not an exit
            print(file=stdout)
            continue
        if line is None:
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, arg = line.strip().partition(" ")
            arg = arg.strip()
            try:
                if cmd in ("/quit", "/exit", "/bye"):
                    return 0
                if cmd in ("/help", "/?"):
                    print(HELP, file=stdout)
                elif cmd == "/reset":
                    session.reset()
                    print("[conversation cleared]", file=stdout)
                elif cmd == "/system":
                    session.system = arg or None
                    session.reset()
                    print(f"[system message {'set' if arg else 'removed'}; conversation cleared]", file=stdout)
                elif cmd == "/save":
                    if not arg:
                        raise PyEngineError("usage: /save FILE")
                    session.save(arg)
                    print(f"[saved {len(session.messages)} messages to {arg}]", file=stdout)
                elif cmd == "/load":
                    if not arg:
                        raise PyEngineError("usage: /load FILE")
                    session.load(arg)
                    print(f"[loaded {len(session.messages)} messages from {arg}]", file=stdout)
                elif cmd == "/stats":
                    print(session.stats_text(), file=stdout)
                elif cmd == "/drop":
                    n = int(arg) if arg.isdigit() else 1
                    print(f"[dropped {session.drop(n)} exchange(s); {len(session.messages)} messages left]", file=stdout)
                else:
                    print(f"[unknown command {cmd}; /help lists them]", file=stdout)
            except PyEngineError as e:
                print(f"error: {e}", file=stderr)
            continue
        gen = session.send(line)
        try:
            with _ctrl_c_stops() as stop:
                for piece in gen:
                    stdout.write(piece)
                    stdout.flush()
                    if stop:  # Ctrl-C whose KeyboardInterrupt Python swallowed (raised in a finalizer)
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            gen.close()
            stdout.write(" [stopped]")
        except PyEngineError as e:
            print(f"error: {e}", file=stderr)
            continue
        finally:
            stdout.write("\n")
            stdout.flush()
        for n in session.notices:
            print(n, file=stderr)


def add_parser(sub) -> None:
    from .registry import add_model_argument
    from .weight_pages import add_weights_argument

    p = sub.add_parser("chat", help="talk with a model, turn after turn",
                       description="An interactive conversation using the model's own chat template. Only the "
                                   "new tokens of each turn are processed; the KV cache keeps the rest.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--system", metavar="TEXT", help="system message (the model's instructions)")
    p.add_argument("--load", metavar="FILE", help="continue a conversation saved with /save")
    p.add_argument("-n", "--max-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    p.add_argument("--temp", type=float, default=0.7, help="temperature; 0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=40, help="keep the K most likely tokens; 0 = off (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass; 1 = off (default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="drop tokens below this fraction of the best (default 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.1, help="penalise recent tokens; 1 = off (default 1.1)")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same answers")
    p.add_argument("--ctx", type=int, default=None, help="context size in tokens (default min(model's, 4096))")
    p.add_argument("--drop-old-turns", action="store_true",
                   help="when the conversation outgrows the context, drop the oldest exchanges (announced) "
                        "instead of refusing the turn")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba", "cpu", "cuda"], help="compute backend")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    add_weights_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> int:
    from .bench.machine import set_threads
    from .engine import load

    if args.max_tokens < 1:
        raise PyEngineError("--max-tokens must be at least 1")
    set_threads(args.threads)
    model = load(args.model, backend=args.backend, n_ctx=args.ctx, progress=not args.quiet, weights=args.weights)
    session = ChatSession(model, system=args.system, max_tokens=args.max_tokens, drop_old_turns=args.drop_old_turns,
                          temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, seed=args.seed)
    if args.load:
        session.load(args.load)
        if args.system:
            session.system = args.system
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    return repl(session)
