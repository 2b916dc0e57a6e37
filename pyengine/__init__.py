"""pyengine: GGUF in, text out — a readable LLM inference engine.

>>> import pyengine
>>> m = pyengine.load("gemma3-270m")          # registry name or a path to a .gguf
>>> for piece in m.generate("The capital of France is", max_tokens=20):
...     print(piece, end="", flush=True)
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import PyEngineError, ModelFileError  # noqa: E402


def load(model, backend: str = "auto", **kwargs):
    """Load ``model`` (a path to a .gguf file or a registry name) on ``backend``.

    backend: ``"numpy"`` (reference), ``"numba"``, ``"cpu"`` (native SIMD), ``"cuda"``
    or ``"auto"`` (the fastest available). Returns a :class:`pyengine.engine.Model`.
    Keywords: ``n_ctx``, ``progress``, ``max_sequences``, and ``weights``: ``"auto"`` (the
    cpu backend copies the weights into 2 MiB pages where the kernel lends them and they
    fit, see :mod:`pyengine.weight_pages`), ``"map"`` (read from the mapped file) or
    ``"copy"``; ``model.weights_placement`` says what was done.
    """
    from .engine import load as _load

    return _load(model, backend=backend, **kwargs)


__all__ = ["load", "PyEngineError", "ModelFileError", "__version__"]
