"""The GGML tensor types pyengine knows: id, elements per block, bytes per block.

Ids and sizes are those of the GGUF format (ggml's ``enum ggml_type``); a weight of
``n`` elements of type ``t`` occupies ``n // t.block_size * t.type_size`` bytes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block

    def n_bytes(self, n_elements: int) -> int:
        if n_elements % self.block_size:
            raise ValueError(f"{self.name}: {n_elements} elements is not a multiple of the block size {self.block_size}")
        return n_elements // self.block_size * self.type_size

    @property
    def ident(self) -> str:
        """The type as ggml spells it inside identifiers: ``q4_0``, ``q4_K``, ``iq4_xs``, ``bf16``
        (lowercase, but the K-quants keep their capital K). Per-type functions of every tier
        are named with it: ``quants.dequantize_q4_K``, ``quants.matmul_q4_K``,
        ``numba_kernels.matmul_q4_K_numba``."""
        low = self.name.lower()
        return low[:-2] + "_K" if low.endswith("_k") else low


_TYPES = [
    GGMLType("F32", 0, 1, 4),
    GGMLType("F16", 1, 1, 2),
    GGMLType("Q4_0", 2, 32, 18),
    GGMLType("Q4_1", 3, 32, 20),
    GGMLType("Q5_0", 6, 32, 22),
    GGMLType("Q5_1", 7, 32, 24),
    GGMLType("Q8_0", 8, 32, 34),
    GGMLType("Q8_1", 9, 32, 36),
    GGMLType("Q2_K", 10, 256, 84),
    GGMLType("Q3_K", 11, 256, 110),
    GGMLType("Q4_K", 12, 256, 144),
    GGMLType("Q5_K", 13, 256, 176),
    GGMLType("Q6_K", 14, 256, 210),
    GGMLType("Q8_K", 15, 256, 292),
    GGMLType("IQ2_XXS", 16, 256, 66),
    GGMLType("IQ2_XS", 17, 256, 74),
    GGMLType("IQ3_XXS", 18, 256, 98),
    GGMLType("IQ1_S", 19, 256, 50),
    GGMLType("IQ4_NL", 20, 32, 18),
    GGMLType("IQ3_S", 21, 256, 110),
    GGMLType("IQ2_S", 22, 256, 82),
    GGMLType("IQ4_XS", 23, 256, 136),
    GGMLType("IQ1_M", 29, 256, 56),
    GGMLType("BF16", 30, 1, 2),
]

BY_NAME: dict[str, GGMLType] = {t.name: t for t in _TYPES}
BY_ID: dict[int, GGMLType] = {t.id: t for t in _TYPES}

# The one list of weight types pyengine runs: every tier (NumPy spec, numba, native CPU)
# has a matmul and a row gather for each. Q8_1 and Q8_K are not here: they are activation
# formats (quants.DEQUANT_TYPES adds them, for decoding only).
SUPPORTED = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
             "IQ4_NL", "IQ4_XS")


# Forms the cpu backend makes from a GGUF type when it copies the weights at load (never in a
# file, no GGUF id): the same elements and bytes per block, the bits in the order the SIMD
# tiers' lanes want them. form -> the GGUF type it is made from, by _C.repack (the spec:
# quants.repack, undone by quants.unrepack).
# The panel forms rewrite a 32-element type's rows 8 blocks at a time (a row's last nb % 8 blocks
# stay blocks), so they are made and undone a row at a time: quants.repack(form, raw, cols).
PANEL_FORMS = ("Q4_0_P", "Q4_1_P", "Q5_0_P", "Q5_1_P", "IQ4_NL_P")
LOAD_FORMS = {"Q2_K_R": "Q2_K", "Q3_K_R": "Q3_K", "Q4_K_R": "Q4_K", "Q5_K_R": "Q5_K", "Q6_K_R": "Q6_K",
              "Q5_0_R": "Q5_0", "Q5_1_R": "Q5_1", "IQ4_XS_R": "IQ4_XS", **{f: f[:-2] for f in PANEL_FORMS}}
INTERNAL = {f: GGMLType(f, -1, BY_NAME[t].block_size, BY_NAME[t].type_size) for f, t in LOAD_FORMS.items()}


def ggml_type(name: str) -> GGMLType:
    try:
        return BY_NAME.get(name.upper()) or INTERNAL[name.upper()]
    except KeyError:
        raise ValueError(f"unknown GGML type {name!r} (known: {', '.join(BY_NAME)})") from None
