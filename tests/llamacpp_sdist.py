"""llama.cpp's own test data, fetched the way CI can: the llama-cpp-python sdist from the package
index (``pip download``), unpacked once into a cache.

The sdist vendors llama.cpp, whose ``models/`` folder holds real tokenizer vocabularies
(``ggml-vocab-*.gguf`` with ``.inp``/``.out`` test pairs) and real chat templates
(``models/templates/*.jinja``). Only data files are read from it; no llama.cpp code is used.

Cache: ``$PYENGINE_TESTDATA`` or ``<pyengine cache>/testdata``. A test that needs these files
FAILS (not skips) when they cannot be had, like the real-model tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
_STEM = "llama_cpp_python-0.3.36"


def _cache_root() -> Path:
    env = os.environ.get("PYENGINE_TESTDATA")
    if env:
        return Path(env)
    from pyengine.registry import cache_dir

    return Path(cache_dir()) / "testdata"


@lru_cache(maxsize=None)
def llamacpp_dir() -> Path:
    """The unpacked ``vendor/llama.cpp`` folder of the sdist (downloaded on first use)."""
    root = _cache_root()
    dest = root / _STEM
    done = dest / ".complete"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--quiet", "-d", tmp, SDIST]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            archives = list(Path(tmp).glob("*.tar.gz"))
            if r.returncode != 0 or not archives:
                raise RuntimeError(f"pip download {SDIST} failed: {r.stderr.strip()[-500:]}")
            unpack = Path(tmp) / "x"
            with tarfile.open(archives[0]) as tf:
                members = [m for m in tf.getmembers()
                           if m.isfile() and "/vendor/llama.cpp/models/" in m.name]
                kw = {"filter": "data"} if sys.version_info >= (3, 12) else {}
                tf.extractall(unpack, members=members, **kw)
            (unpack / _STEM).rename(dest) if not dest.exists() else None
        done.write_text("ok\n")
    return dest / "vendor" / "llama.cpp"


def vocab_dir() -> Path:
    """``models/``: ggml-vocab-NAME.gguf (+ .inp / .out test pairs)."""
    return llamacpp_dir() / "models"


def templates_dir() -> Path:
    """``models/templates/``: real chat templates (*.jinja)."""
    return llamacpp_dir() / "models" / "templates"
