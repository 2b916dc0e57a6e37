"""Architectures: one module per GGUF ``general.architecture``, each exporting
``Config.from_gguf(gf)`` and ``Model(config, gf)`` with
``forward(ops, ids, pos0, cache, last_only) -> logits``."""
from __future__ import annotations

from ..errors import ModelFileError
from ..gguf_file import GGUFFile
from . import gemma3, llama

ARCHITECTURES = {
    "llama": llama,
    "gemma3": gemma3,
}


def build(gf: GGUFFile):
    """The architecture module's model for ``gf``, or a one-line error naming what is supported."""
    arch = gf.architecture
    mod = ARCHITECTURES.get(arch)
    if mod is None:
        raise ModelFileError(f"{gf.path}: architecture {arch or '(none)'!r} is not supported "
                             f"(supported: {', '.join(ARCHITECTURES)})")
    cfg = mod.Config.from_gguf(gf)
    return mod.Model(cfg, gf)
