"""A small hand-rolled GGUF writer for hostile-input tests and the fuzzer.

Unlike ``gguf.GGUFWriter`` it writes whatever it is told: any value type for any key,
any declared shape, type and offset for a tensor whatever bytes follow, so tests can
build files that lie (wrap-around shapes, overlaps, misalignment, retypes).

:func:`tiny_llama` describes a valid 2-layer llama-architecture model (dim 256 so the
K-quant types fit, 40-token SentencePiece-style vocabulary); tests mutate the
description (:class:`Spec`) and :func:`encode` it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64: "<d"}

# GGML tensor types: id, elements per block, bytes per block
TYPES = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q8_0": (8, 32, 34),
         "Q4_K": (12, 256, 144), "Q6_K": (14, 256, 210)}


@dataclass
class Tensor:
    name: str
    ne: list  # GGUF order: ne[0] is the row length
    type: str | int  # a TYPES name or a raw type id
    data: bytes
    offset: int | None = None  # None: packed after the previous tensor


@dataclass
class Spec:
    meta: list = field(default_factory=list)  # [key, value type, value]; arrays: (elem type, [values])
    tensors: list = field(default_factory=list)
    alignment: int = 32  # used to place tensors (general.alignment is written only if in meta)
    version: int = 3

    def get(self, key):
        for k, _, v in self.meta:
            if k == key:
                return v
        raise KeyError(key)

    def set(self, key, vtype, value):
        for m in self.meta:
            if m[0] == key:
                m[1], m[2] = vtype, value
                return
        self.meta.append([key, vtype, value])

    def tensor(self, name) -> Tensor:
        return next(t for t in self.tensors if t.name == name)


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, v) -> bytes:
    if vtype == STR:
        return _s(v)
    if vtype == ARR:
        etype, items = v
        if etype == ARR and len(items) == 1:  # nested one-element arrays: no recursion
            depth = 0
            while etype == ARR and len(items) == 1:
                depth += 1
                etype, items = items[0]
            return struct.pack("<IQ", ARR, 1) * depth + _value(ARR, (etype, items))[0:]
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(_value(etype, x) for x in items)
    return struct.pack(_FMT[vtype], v)


def _nbytes(t: Tensor) -> int:
    _, bs, ts = TYPES[t.type] if isinstance(t.type, str) else (0, 1, 4)
    n = 1
    for d in t.ne:
        n *= d
    return n // bs * ts


def encode(spec: Spec) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", spec.version, len(spec.tensors), len(spec.meta))
    for key, vtype, v in spec.meta:
        head += _s(key) + struct.pack("<I", vtype) + _value(vtype, v)
    al = spec.alignment
    offsets, at = [], 0
    for t in spec.tensors:
        off = at if t.offset is None else t.offset
        offsets.append(off)
        at = (off + len(t.data) + al - 1) // al * al
    for t, off in zip(spec.tensors, offsets):
        tid = TYPES[t.type][0] if isinstance(t.type, str) else t.type
        head += _s(t.name) + struct.pack("<I", len(t.ne)) + b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.ne)
        head += struct.pack("<IQ", tid, off & (2**64 - 1))
    head += bytes(-len(head) % al)
    packed = sum(len(t.data) + al for t in spec.tensors)
    data = bytearray()
    for t, off in zip(spec.tensors, offsets):
        if off > packed:  # an offset far past the data: nothing to place
            continue
        if off + len(t.data) > len(data):
            data.extend(bytes(off + len(t.data) - len(data)))
        data[off:off + len(t.data)] = t.data
    data.extend(bytes(-len(data) % al))
    return head + bytes(data)


def weight_bytes(type_name: str, rows: int, cols: int, rng: np.random.Generator, scale=0.05) -> bytes:
    """Random but finite weights of ``type_name``: quant blocks get small float16 scales."""
    if type_name == "F32":
        return (rng.standard_normal((rows, cols)) * scale).astype("<f4").tobytes()
    if type_name == "F16":
        return (rng.standard_normal((rows, cols)) * scale).astype("<f2").tobytes()
    _, bs, ts = TYPES[type_name]
    nb = rows * cols // bs
    blocks = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    d = (rng.random(nb) * scale / 8 + 1e-4).astype("<f2").view(np.uint8).reshape(nb, 2)
    if type_name in ("Q4_0", "Q8_0"):
        blocks[:, 0:2] = d
    elif type_name == "Q4_K":  # d, dmin, scales[12], qs[128]
        blocks[:, 0:2] = d
        blocks[:, 2:4] = d
    elif type_name == "Q6_K":  # ql[128], qh[64], scales[16] int8, d
        blocks[:, 208:210] = d
    return blocks.tobytes()


VOCAB = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(8)] + \
    ["▁", "▁a", "▁b", "▁c", "a", "b", "c", "d", "e", "▁the", "▁cat", "▁dog", "s", "t", "o", "n", "▁is",
     "▁on", "r", "i", "l", "▁mat", "m", "h", "▁he", "."]


def tiny_llama(matrix_type: str = "Q8_0", seed: int = 0, n_layers: int = 2, dim: int = 256,
               n_heads: int = 4, n_kv_heads: int = 2, ffn: int = 256, n_vocab: int | None = None,
               arch: str = "llama") -> Spec:
    """A valid tiny llama-architecture model: every matrix of ``matrix_type``, norms F32.

    ``arch="gemma3"``: the same with Gemma 3's extra norms and a sliding window of 4.
    """
    rng = np.random.default_rng(seed)
    n_vocab = n_vocab or len(VOCAB)
    tokens = (VOCAB + [f"x{i}" for i in range(max(0, n_vocab - len(VOCAB)))])[:n_vocab]
    head_dim = dim // n_heads
    types = [2, 3, 3] + [6] * 8 + [1] * (n_vocab - 11)
    s = Spec()
    A = arch
    s.meta = [
        ["general.architecture", STR, arch],
        ["general.alignment", U32, 32],
        [f"{A}.context_length", U32, 256],
        [f"{A}.embedding_length", U32, dim],
        [f"{A}.block_count", U32, n_layers],
        [f"{A}.feed_forward_length", U32, ffn],
        [f"{A}.attention.head_count", U32, n_heads],
        [f"{A}.attention.head_count_kv", U32, n_kv_heads],
        [f"{A}.rope.dimension_count", U32, head_dim],
        [f"{A}.attention.layer_norm_rms_epsilon", F32, 1e-5],
        [f"{A}.rope.freq_base", F32, 10000.0],
        ["tokenizer.ggml.model", STR, "llama"],
        ["tokenizer.ggml.tokens", ARR, (STR, tokens)],
        ["tokenizer.ggml.scores", ARR, (F32, [-float(i) for i in range(n_vocab)])],
        ["tokenizer.ggml.token_type", ARR, (I32, types)],
        ["tokenizer.ggml.bos_token_id", U32, 1],
        ["tokenizer.ggml.eos_token_id", U32, 2],
        ["tokenizer.ggml.unknown_token_id", U32, 0],
    ]
    if arch == "gemma3":
        s.meta.append([f"{A}.attention.sliding_window", U32, 4])

    def mat(name, rows, cols, t=matrix_type):
        s.tensors.append(Tensor(name, [cols, rows], t, weight_bytes(t, rows, cols, rng)))

    def norm(name, n):
        s.tensors.append(Tensor(name, [n], "F32", (1.0 + 0.1 * rng.standard_normal(n)).astype("<f4").tobytes()))

    mat("token_embd.weight", n_vocab, dim)
    for i in range(n_layers):
        norm(f"blk.{i}.attn_norm.weight", dim)
        mat(f"blk.{i}.attn_q.weight", n_heads * head_dim, dim)
        mat(f"blk.{i}.attn_k.weight", n_kv_heads * head_dim, dim)
        mat(f"blk.{i}.attn_v.weight", n_kv_heads * head_dim, dim)
        mat(f"blk.{i}.attn_output.weight", dim, n_heads * head_dim)
        norm(f"blk.{i}.ffn_norm.weight", dim)
        mat(f"blk.{i}.ffn_gate.weight", ffn, dim)
        mat(f"blk.{i}.ffn_up.weight", ffn, dim)
        mat(f"blk.{i}.ffn_down.weight", dim, ffn)
        if arch == "gemma3":
            norm(f"blk.{i}.attn_q_norm.weight", head_dim)
            norm(f"blk.{i}.attn_k_norm.weight", head_dim)
            norm(f"blk.{i}.post_attention_norm.weight", dim)
            norm(f"blk.{i}.post_ffw_norm.weight", dim)
    norm("output_norm.weight", dim)
    mat("output.weight", n_vocab, dim)
    return s


def write(path, spec: Spec):
    path.write_bytes(encode(spec))
    return path
