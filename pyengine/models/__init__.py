"""Architectures: one module per GGUF ``general.architecture``, each exporting
``Config`` (a dataclass: ``Config.from_gguf(gf)``) and ``Transformer(config, gf)``, the
architecture's graph, with ``forward(ops, ids, pos0, cache, last_only) -> logits``. The
shared block lives in :mod:`.common` (``common.Config``, ``common.Transformer``); each
module holds its Config's differences and, where its graph differs, a Transformer
subclass (else ``Transformer = common.Transformer``). Not to be confused with
:class:`pyengine.engine.Model`, the loaded model a user holds, which keeps its
Transformer as ``model.arch``.

Mistral files say ``llama`` (Llama's layout with a SentencePiece vocab): no module of their own."""
from __future__ import annotations

from ..errors import ModelFileError
from ..gguf_file import GGUFFile
from . import gemma2, gemma3, glm4, llama, phi3, qwen2, qwen3
from . import common, deepseek2, qwen3moe

ARCHITECTURES = {
    "llama": llama,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma2": gemma2,
    "gemma3": gemma3,
    "phi3": phi3,
    "glm4": glm4,
    "qwen3moe": qwen3moe,
    "deepseek2": deepseek2,
}


def build(gf: GGUFFile) -> common.Transformer:
    """The architecture's Transformer for ``gf``, or a one-line error naming what is supported.

    Every tensor of the file must be used by the model: one that is not fails the load,
    named (an unsupported variant must never run with a part silently ignored)."""
    arch = gf.architecture
    mod = ARCHITECTURES.get(arch)
    if mod is None:
        raise ModelFileError(f"{gf.path}: architecture {arch or '(none)'!r} is not supported "
                             f"(supported: {', '.join(ARCHITECTURES)})")
    cfg = mod.Config.from_gguf(gf)
    return mod.Transformer(cfg, gf)
