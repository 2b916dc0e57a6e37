"""A weight as it sits in the GGUF file: raw quantized bytes plus type and shape."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ggml_types import ggml_type


@dataclass(eq=False)
class QTensor:
    """One GGUF tensor, still in its on-disk encoding.

    ``shape`` is in NumPy order: a matrix is ``(rows, cols)`` with ``cols`` the
    contiguous, reduced dimension (GGUF lists it first as ``ne[0]``).
    ``raw`` is a uint8 view into the memory-mapped file: nothing is copied.
    ``cache`` is scratch space a backend may use for a prepared form of the weight
    (e.g. the NumPy backend's dequantized float32 copy, a GPU buffer).
    """

    name: str
    type_name: str
    shape: tuple[int, ...]
    raw: np.ndarray  # (n_bytes,) uint8, memory-mapped
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)  # Python ints: no int64 wrap-around

    @property
    def n_bytes(self) -> int:
        return int(self.raw.nbytes)

    @property
    def row_bytes(self) -> int:
        return ggml_type(self.type_name).n_bytes(self.cols)

    def row_raw(self, i: int) -> np.ndarray:
        """Raw bytes of row ``i`` (for embedding lookups)."""
        if not 0 <= i < self.rows:
            raise IndexError(f"{self.name}: row {i} outside 0..{self.rows - 1}")
        rb = self.row_bytes
        return self.raw[i * rb:(i + 1) * rb]
