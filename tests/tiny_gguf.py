"""Tiny random-weight GGUF files for the architecture tests (test_models, test_moe, test_deepseek2).

Each test module lays out its own architecture's tensors and metadata; what they share is
here: the random initialisation (weights scaled so activations stay O(1) and logits are
peaked) and the writing of the tensors (2-D ones optionally quantized to Q8_0 with gguf's
reference quantizer).
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize


def random_init(rng: np.random.Generator):
    """``mat(*shape, s=None)``: normal weights scaled by ``s`` (default 1/sqrt(fan-in));
    ``norm(n)``: norm scales around 1."""
    def mat(*shape, s=None):
        return rng.standard_normal(shape) * (s if s is not None else 1.0 / math.sqrt(shape[-1]))

    def norm(n):
        return 1.0 + 0.2 * rng.standard_normal(n)

    return mat, norm


def add_tensor(w: GGUFWriter, name: str, a: np.ndarray, qtype: str) -> None:
    """``a`` as F32, or Q8_0 when ``qtype == "Q8_0"`` for matrices and expert stacks (the MoE
    router ``ffn_gate_inp`` stays F32, as llama.cpp's quantizer keeps it)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if qtype == "Q8_0" and a.ndim >= 2 and "ffn_gate_inp" not in name:
        w.add_tensor(name, quantize(a, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(name, a)


def write_tensors(w: GGUFWriter, tensors: dict, qtype: str, path):
    """Add ``tensors`` to ``w`` (metadata already added), write the file and return ``path``."""
    for name, a in tensors.items():
        add_tensor(w, name, a, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
