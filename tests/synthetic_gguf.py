"""Small random-weight GGUF files for every architecture, with real vocabularies, for conformance
against llama.cpp.

Two halves:

1. ``make_source(arch, vocab_gguf, path)`` writes the *source* file that llama.cpp's
   ``llama-quantize`` is given: the architecture's real tensor names, shapes and metadata keys
   (as llama.cpp's converter writes them), the ``tokenizer.*`` keys copied from one of llama.cpp's
   ``models/ggml-vocab-*.gguf`` files, weights drawn from a seeded NumPy generator. Layer
   matrices are F32 (llama-quantize quantizes them); the vocabulary-sized token embedding and
   output matrices are F16 and are kept as they are by
   ``llama-quantize --token-embedding-type f16 --output-tensor-type f16``; 1-D tensors (norms,
   biases, rope factors) stay F32.

2. ``assemble(case_dir, vocab_dir, out)`` rebuilds the *quantized* file byte for byte without
   llama.cpp: the committed ``recipe.json`` lists its metadata and tensors in file order; the
   quantized layer matrices come from the committed ``quantized.npz`` (raw GGUF bytes), every
   tensor llama-quantize copied unchanged is regenerated with ``make_source``'s generator, and the
   vocabulary arrays are read from the vocab file. The result must hash to the sha256 recorded
   when llama.cpp produced its logits (``recipe.json: sha256``).

The GGUF reader/writer here is minimal and independent of pyengine (so a pyengine bug cannot
hide in both the file and the model): header, key/values, tensor infos, zero padding to the
alignment, tensor data in order.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------
# GGUF container
# --------------------------------------------------------------------------------------------
GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# gguf value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
           BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
_NP = {U8: "<u1", I8: "<i1", U16: "<u2", I16: "<i2", U32: "<u4", I32: "<i4", F32: "<f4",
       BOOL: "<u1", U64: "<u8", I64: "<i8", F64: "<f8"}

# ggml tensor types used here
GGML_F32, GGML_F16 = 0, 1


@dataclass
class KV:
    key: str
    vtype: int
    value: object          # scalar, str, or for ARR: (elem_type, list | np.ndarray)


@dataclass
class TensorInfo:
    name: str
    shape: tuple           # ggml order: ne0 (contiguous) first
    ggml_type: int
    offset: int = 0        # from the start of the data section
    nbytes: int = 0


@dataclass
class GGUF:
    kvs: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    alignment: int = ALIGNMENT
    data_start: int = 0

    def kv(self, key: str):
        for e in self.kvs:
            if e.key == key:
                return e
        raise KeyError(key)


class _Reader:
    def __init__(self, buf: memoryview):
        self.b, self.o = buf, 0

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.b, self.o)[0]
        self.o += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("<Q")
        s = bytes(self.b[self.o:self.o + n]).decode("utf-8")
        self.o += n
        return s

    def value(self, t: int):
        if t == STR:
            return self.string()
        if t == ARR:
            et, n = self.take("<I"), self.take("<Q")
            if et == STR:
                return (et, [self.string() for _ in range(n)])
            if et == ARR:
                raise ValueError("nested GGUF arrays are not supported")
            dt = np.dtype(_NP[et])
            a = np.frombuffer(self.b, dtype=dt, count=n, offset=self.o).copy()
            self.o += n * dt.itemsize
            return (et, a)
        return self.take(_SCALAR[t])


def read_gguf(path) -> GGUF:
    """Metadata and tensor infos of a GGUF file (tensor data is not read)."""
    data = Path(path).read_bytes()
    r = _Reader(memoryview(data))
    if bytes(r.b[:4]) != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file")
    r.o = 4
    version = r.take("<I")
    if version != GGUF_VERSION:
        raise ValueError(f"{path}: GGUF version {version}, expected 3")
    n_t, n_kv = r.take("<Q"), r.take("<Q")
    g = GGUF()
    for _ in range(n_kv):
        key = r.string()
        t = r.take("<I")
        g.kvs.append(KV(key, t, r.value(t)))
    for e in g.kvs:
        if e.key == "general.alignment":
            g.alignment = int(e.value)
    for _ in range(n_t):
        name = r.string()
        nd = r.take("<I")
        shape = tuple(r.take("<Q") for _ in range(nd))
        t, off = r.take("<I"), r.take("<Q")
        g.tensors.append(TensorInfo(name, shape, t, off))
    g.data_start = _pad(r.o, g.alignment)
    ends = [t.offset for t in g.tensors[1:]] + [len(data) - g.data_start]
    for t, end in zip(g.tensors, ends):
        t.nbytes = _nbytes(t)
        assert t.offset + t.nbytes <= end
    return g


def read_tensor_bytes(path, g: GGUF, name: str) -> bytes:
    t = next(t for t in g.tensors if t.name == name)
    with open(path, "rb") as f:
        f.seek(g.data_start + t.offset)
        return f.read(t.nbytes)


def _pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# bytes per block, elements per block, for the ggml types a file here may hold
_TYPE_SIZE = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32),
              10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256), 14: (210, 256),
              20: (18, 32), 23: (136, 256), 30: (2, 1)}


def _nbytes(t: TensorInfo) -> int:
    bs, be = _TYPE_SIZE[t.ggml_type]
    n = int(np.prod(t.shape))
    assert t.shape[0] % be == 0, (t.name, t.shape)
    return n // be * bs


def _w_str(out: list, s: str) -> None:
    b = s.encode("utf-8")
    out.append(struct.pack("<Q", len(b)))
    out.append(b)


def _w_value(out: list, t: int, v) -> None:
    if t == STR:
        _w_str(out, v)
    elif t == ARR:
        et, items = v
        out.append(struct.pack("<IQ", et, len(items)))
        if et == STR:
            for s in items:
                _w_str(out, s)
        else:
            out.append(np.asarray(items, dtype=_NP[et]).tobytes())
    else:
        out.append(struct.pack(_SCALAR[t], v))


def write_gguf(path, kvs: list, tensors: list, data: dict, alignment: int = ALIGNMENT) -> str:
    """Write a GGUF v3 file; ``data[name]`` is the raw bytes of each tensor. Returns its sha256."""
    head: list = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs))]
    for e in kvs:
        _w_str(head, e.key)
        head.append(struct.pack("<I", e.vtype))
        _w_value(head, e.vtype, e.value)
    off = 0
    for t in tensors:
        t.nbytes = _nbytes(t)
        assert len(data[t.name]) == t.nbytes, (t.name, len(data[t.name]), t.nbytes)
        t.offset = off
        _w_str(head, t.name)
        head.append(struct.pack("<I", len(t.shape)))
        head.append(struct.pack(f"<{len(t.shape)}Q", *t.shape))
        head.append(struct.pack("<IQ", t.ggml_type, off))
        off = _pad(off + t.nbytes, alignment)
    h = hashlib.sha256()
    n = 0
    with open(path, "wb") as f:
        def put(b: bytes):
            nonlocal n
            f.write(b)
            h.update(b)
            n += len(b)
        for b in head:
            put(b)
        put(b"\0" * (_pad(n, alignment) - n))
        for t in tensors:
            put(data[t.name])
            put(b"\0" * (_pad(t.nbytes, alignment) - t.nbytes))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------
@dataclass
class Arch:
    """One synthetic model: llama.cpp's architecture name plus the shape and quirks of the file."""
    name: str                  # case name (folder under tests/data/conformance/)
    arch: str                  # general.architecture
    vocab: str                 # ggml-vocab-<vocab>.gguf from llama.cpp's models/
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    ctx: int = 4096
    eps: float = 1e-5
    rope_base: float = 10000.0
    tied: bool = False         # no output.weight: the token embedding is the output matrix
    qkv_bias: bool = False     # qwen2 / glm4
    qk_norm: bool = False      # qwen3 / gemma3
    post_norms: bool = False   # gemma2 / gemma3 / glm4: norm after attention and after FFN
    fused_qkv: bool = False    # phi3: attn_qkv
    fused_up: bool = False     # phi3 / glm4: ffn_up holds [gate; up] (2 * n_ff rows)
    llama3_rope: bool = False  # rope_freqs.weight from Llama 3.1's rope_scaling
    rope_dim: int | None = None    # partial rotary (glm4)
    write_kv_len: bool = False     # attention.key_length / value_length
    extra: list = field(default_factory=list)   # [(key suffix, type, value)] after the common keys
    n_expert: int = 0              # MoE (qwen3moe): routed experts, used per token, FFN width of each
    n_expert_used: int = 0
    n_ff_exp: int = 256
    # deepseek2 (Multi-head Latent Attention, as the converter writes it: MQA over the latent,
    # attn_kv_b split into attn_k_b / attn_v_b) plus shared experts and leading dense layers
    mla: bool = False
    q_lora: int = 256
    kv_lora: int = 256
    nope_dim: int = 64
    v_dim: int = 64
    n_dense_lead: int = 0
    n_expert_shared: int = 0
    expert_weights_scale: float = 0.0
    ftype: str = "Q4_K_M"          # llama-quantize's target
    out_scale: float = 10.0        # std of the logits (before soft-capping) for a unit hidden state
    block_gain: float = 0.5        # scale of attn_output / ffn_down (how much each block adds; 0.5 keeps
                                   # llama.cpp's activation-quantization noise below the top-2 gaps)
    post_norm_gain: float = 1.0    # scale of the post-norm weights (gemma: the input is x sqrt(n_embd),
                                   # so the blocks need as much to matter against it)
    seed: int = 0


ARCHS: dict[str, Arch] = {a.name: a for a in [
    # Llama 3.1: GQA, rope base 500000, llama3 rope scaling as rope_freqs.weight (the converter
    # writes only the tensor, no rope.scaling keys)
    Arch("llama", "llama", "llama-bpe", rope_base=500000.0, llama3_rope=True, seed=1),
    # Mistral 7B v0.3: the llama layout with a SentencePiece vocabulary
    Arch("mistral", "llama", "llama-spm", rope_base=1000000.0, seed=2),
    # Qwen2.5: biases on q, k, v
    Arch("qwen2", "qwen2", "qwen2", eps=1e-6, rope_base=1000000.0, qkv_bias=True, seed=3),
    # Qwen3: RMS-norm on q and k per head; head_dim 128 != n_embd / n_head (as Qwen3-0.6B), tied
    Arch("qwen3", "qwen3", "qwen2", eps=1e-6, rope_base=1000000.0, head_dim=128, qk_norm=True,
         tied=True, write_kv_len=True, seed=4),
    # Gemma 2: post-norms, attention and final soft-capping, sliding window on even layers
    # (window 8 so that the 20+ token test sequences cross it), tied embeddings. Caps chosen to
    # bite on these weights (real: 50 and 30): attention scores here have std ~1, so 2.0; a final
    # cap of 30 would flatten std-10 logits to a top-1 probability of ~0.13, 50 keeps ~0.5
    Arch("gemma2", "gemma2", "llama-spm", eps=1e-6, tied=True, post_norms=True, write_kv_len=True,
         post_norm_gain=8.0,
         extra=[("attn_logit_softcapping", F32, 2.0), ("final_logit_softcapping", F32, 50.0),
                ("attention.sliding_window", U32, 8)], seed=5),
    # Gemma 3: QK-norm, post-norms, 5 sliding layers then 1 global (llama.cpp's default pattern,
    # no pattern key), tied embeddings
    Arch("gemma3", "gemma3", "llama-spm", n_layer=6, eps=1e-6, rope_base=1000000.0, tied=True,
         qk_norm=True, post_norms=True, write_kv_len=True, post_norm_gain=8.0,
         extra=[("attention.sliding_window", U32, 8)], seed=6),
    # Phi-3 mini 4k: fused qkv and gate/up; its converter writes a sliding window that llama.cpp
    # ignores (disabled for Phi-3)
    Arch("phi3", "phi3", "phi-3", fused_qkv=True, fused_up=True,
         extra=[("attention.sliding_window", U32, 2047)], seed=7),
    # GLM-4-9B-0414: q/k/v biases, post-norms, fused gate/up, rotary on half of each head (NORM)
    Arch("glm4", "glm4", "qwen2", eps=1e-5, qkv_bias=True, post_norms=True, fused_up=True,
         rope_dim=32, seed=8),
]}
# issue 13's mixture of experts
ARCHS["qwen3moe"] = Arch("qwen3moe", "qwen3moe", "qwen2", eps=1e-6, rope_base=1000000.0, qk_norm=True,
                         write_kv_len=True, n_expert=8, n_expert_used=2, n_ff_exp=256, seed=21)
# DeepSeek-V2 shaped: q LoRA 256, KV latent 256, rope 32 + nope 64 per head, v 64; layer 0
# dense, layer 1 8 routed experts (2 used, softmax gating as V2 files default to, weights x 1.5)
# plus 1 shared expert; vocabulary deepseek-llm (DeepSeek-V2's 102400-token BPE)
ARCHS["deepseek2"] = Arch("deepseek2", "deepseek2", "deepseek-llm", eps=1e-6, mla=True, rope_dim=32,
                          n_expert=8, n_expert_used=2, n_ff_exp=256, n_dense_lead=1, n_expert_shared=1,
                          expert_weights_scale=1.5, seed=22)
# the quantization mixes of issue 12, on the llama architecture (Llama 3 vocabulary) without the
# llama3 rope scaling, so that they test the quantization types alone
for _ft, _seed in [("Q5_K_M", 11), ("Q3_K_M", 12), ("Q2_K", 13), ("IQ4_XS", 14)]:
    _a = ARCHS["llama"]
    ARCHS["llama-" + _ft.lower()] = Arch(**{**_a.__dict__, "name": "llama-" + _ft.lower(),
                                            "ftype": _ft, "llama3_rope": False, "seed": _seed})


def llama3_rope_factors(head_dim: int, base: float, factor=8.0, low=1.0, high=4.0, old_ctx=8192):
    """Llama 3.1's per-frequency divisors (the converter's ``rope_freqs.weight``): 1 for short
    wavelengths, ``factor`` for long ones, a smooth blend between."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            s = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return np.asarray(out, dtype=np.float32)


def tensor_specs(a: Arch, n_vocab: int) -> list:
    """[(name, shape in ggml order, kind)] in the converter's order; kind picks the initializer."""
    q, kv = a.n_head * a.head_dim, a.n_head_kv * a.head_dim
    E = a.n_embd
    specs = [("token_embd.weight", (E, n_vocab), "embd")]
    if a.llama3_rope:
        specs.append(("rope_freqs.weight", (a.head_dim // 2,), "rope_freqs"))
    if a.mla:
        return _deepseek2_specs(a, n_vocab, specs)
    for i in range(a.n_layer):
        p = f"blk.{i}."
        specs.append((p + "attn_norm.weight", (E,), "norm"))
        if a.fused_qkv:
            specs.append((p + "attn_qkv.weight", (E, q + 2 * kv), "mat"))
        else:
            specs += [(p + "attn_q.weight", (E, q), "mat"), (p + "attn_k.weight", (E, kv), "mat"),
                      (p + "attn_v.weight", (E, kv), "mat")]
            if a.qkv_bias:
                specs += [(p + "attn_q.bias", (q,), "bias"), (p + "attn_k.bias", (kv,), "bias"),
                          (p + "attn_v.bias", (kv,), "bias")]
        if a.qk_norm:
            specs += [(p + "attn_q_norm.weight", (a.head_dim,), "norm"),
                      (p + "attn_k_norm.weight", (a.head_dim,), "norm")]
        specs.append((p + "attn_output.weight", (q, E), "mat"))
        if a.post_norms:
            specs.append((p + "post_attention_norm.weight", (E,), "norm"))
        specs.append((p + "ffn_norm.weight", (E,), "norm"))
        if a.n_expert:
            X, F = a.n_expert, a.n_ff_exp
            specs += [(p + "ffn_gate_inp.weight", (E, X), "router"),
                      (p + "ffn_gate_exps.weight", (E, F, X), "mat"),
                      (p + "ffn_up_exps.weight", (E, F, X), "mat"),
                      (p + "ffn_down_exps.weight", (F, E, X), "mat")]
        elif a.fused_up:
            specs += [(p + "ffn_up.weight", (E, 2 * a.n_ff), "mat"), (p + "ffn_down.weight", (a.n_ff, E), "mat")]
        else:
            specs += [(p + "ffn_gate.weight", (E, a.n_ff), "mat"), (p + "ffn_up.weight", (E, a.n_ff), "mat"),
                      (p + "ffn_down.weight", (a.n_ff, E), "mat")]
        if a.post_norms:
            specs.append((p + "post_ffw_norm.weight", (E,), "norm"))
    specs.append(("output_norm.weight", (E,), "norm"))
    if not a.tied:
        specs.append(("output.weight", (E, n_vocab), "out"))
    return specs


def _deepseek2_specs(a: Arch, n_vocab: int, specs: list) -> list:
    E, H, R = a.n_embd, a.n_head, a.rope_dim
    for i in range(a.n_layer):
        p = f"blk.{i}."
        specs += [(p + "attn_norm.weight", (E,), "norm"),
                  (p + "attn_q_a_norm.weight", (a.q_lora,), "norm"),
                  (p + "attn_kv_a_norm.weight", (a.kv_lora,), "norm"),
                  (p + "attn_q_a.weight", (E, a.q_lora), "mat"),
                  (p + "attn_q_b.weight", (a.q_lora, H * (a.nope_dim + R)), "mat"),
                  (p + "attn_kv_a_mqa.weight", (E, a.kv_lora + R), "mat"),
                  (p + "attn_k_b.weight", (a.nope_dim, a.kv_lora, H), "mat_t"),
                  (p + "attn_v_b.weight", (a.kv_lora, a.v_dim, H), "mat"),
                  (p + "attn_output.weight", (H * a.v_dim, E), "mat"),
                  (p + "ffn_norm.weight", (E,), "norm")]
        if i < a.n_dense_lead:
            specs += [(p + "ffn_gate.weight", (E, a.n_ff), "mat"), (p + "ffn_down.weight", (a.n_ff, E), "mat"),
                      (p + "ffn_up.weight", (E, a.n_ff), "mat")]
        else:
            X, F, S = a.n_expert, a.n_ff_exp, a.n_ff_exp * a.n_expert_shared
            specs += [(p + "ffn_gate_inp.weight", (E, X), "router"),
                      (p + "ffn_down_exps.weight", (F, E, X), "mat"),
                      (p + "ffn_gate_exps.weight", (E, F, X), "mat"),
                      (p + "ffn_up_exps.weight", (E, F, X), "mat"),
                      (p + "ffn_gate_shexp.weight", (E, S), "mat"),
                      (p + "ffn_down_shexp.weight", (S, E), "mat"),
                      (p + "ffn_up_shexp.weight", (E, S), "mat")]
    specs.append(("output_norm.weight", (E,), "norm"))
    if not a.tied:
        specs.append(("output.weight", (E, n_vocab), "out"))
    return specs


def tensor_value(a: Arch, name: str, shape: tuple, kind: str) -> np.ndarray:
    """The seeded weights of one tensor (float32, numpy shape = reversed ggml shape).

    Each tensor has its own generator (seed, crc of its name), so any tensor can be regenerated
    alone. Scales: matrices N(0, 1/fan_in) so each layer keeps the residual stream's size; norm
    weights 1 + N(0, 0.1^2) so a norm that is skipped shows; biases N(0, 0.5^2); the output
    matrix N(0, out_scale^2 / n_embd) so that the logits of a unit-RMS hidden state have std
    ``out_scale`` (peaked: the top token typically takes > 30% of the mass).
    """
    import zlib

    rng = np.random.default_rng([a.seed, zlib.crc32(name.encode())])
    shp = tuple(reversed(shape))
    if kind == "mat_t":
        # attn_k_b: per head the transpose of kv_b's key part; its fan-in is the latent (shape[1])
        return (rng.standard_normal(shp, dtype=np.float32) / np.float32(math.sqrt(shape[1])))
    if kind == "mat":
        down = ("attn_output.weight", "ffn_down.weight", "ffn_down_exps.weight", "ffn_down_shexp.weight")
        g = a.block_gain if name.endswith(down) else 1.0
        return (rng.standard_normal(shp, dtype=np.float32) * np.float32(g / math.sqrt(shape[0])))
    if kind == "router":
        # router logits with std 3: decisive top-k choices, so that llama.cpp's rounding does not
        # flip which experts a token uses
        return (rng.standard_normal(shp, dtype=np.float32) * np.float32(3 / math.sqrt(shape[0])))
    if kind == "norm":
        w = (1.0 + 0.1 * rng.standard_normal(shp, dtype=np.float32)).astype(np.float32)
        if a.tied and name == "output_norm.weight":
            # random signs: with tied embeddings the current token's own row would otherwise win
            # (its logit carries |e_t|^2); signs cancel that self-similarity on average
            w *= np.where(rng.random(shp) < 0.5, -1, 1).astype(np.float32)
        if ".post_" in name:
            w *= np.float32(a.post_norm_gain)
        return w
    if kind == "bias":
        return (0.5 * rng.standard_normal(shp, dtype=np.float32)).astype(np.float32)
    if kind == "rope_freqs":
        # original_max_position_embeddings 64 (instead of Llama 3.1's 8192) so that the scaling
        # changes most frequencies within the short test sequences
        return llama3_rope_factors(a.head_dim, a.rope_base, old_ctx=64)
    if kind == "out" or (kind == "embd" and a.tied):
        # (gemma multiplies its input embedding by sqrt(n_embd): the tied matrix suits both ends)
        s = a.out_scale / math.sqrt(a.n_embd)
        return (rng.standard_normal(shp, dtype=np.float32) * np.float32(s))
    if kind == "embd":
        return rng.standard_normal(shp, dtype=np.float32)
    raise ValueError(kind)


def tensor_bytes(a: Arch, name: str, shape: tuple, kind: str) -> tuple[int, bytes]:
    """(ggml type, raw bytes) of one tensor in the source file: F16 for the vocabulary-sized
    matrices, F32 otherwise."""
    v = tensor_value(a, name, shape, kind)
    if kind in ("embd", "out"):
        return GGML_F16, v.astype("<f2").tobytes()
    return GGML_F32, v.astype("<f4").tobytes()


def vocab_kvs(vocab_gguf) -> list:
    """The ``tokenizer.*`` key/values of a llama.cpp vocab file, in its order."""
    return [e for e in read_gguf(vocab_gguf).kvs if e.key.startswith("tokenizer.")]


def source_kvs(a: Arch, vocab: list) -> list:
    n_vocab = len(next(e for e in vocab if e.key == "tokenizer.ggml.tokens").value[1])
    p = a.arch + "."
    if a.mla:
        return _deepseek2_kvs(a, n_vocab) + vocab
    kvs = [KV("general.architecture", STR, a.arch),
           KV("general.type", STR, "model"),
           KV("general.name", STR, f"pyengine synthetic {a.name}"),
           KV(p + "vocab_size", U32, n_vocab),
           KV(p + "context_length", U32, a.ctx),
           KV(p + "embedding_length", U32, a.n_embd),
           KV(p + "block_count", U32, a.n_layer),
           KV(p + "feed_forward_length", U32, a.n_ff),
           KV(p + "attention.head_count", U32, a.n_head),
           KV(p + "attention.head_count_kv", U32, a.n_head_kv),
           KV(p + "rope.freq_base", F32, a.rope_base),
           KV(p + "attention.layer_norm_rms_epsilon", F32, a.eps)]
    if a.write_kv_len:
        kvs += [KV(p + "attention.key_length", U32, a.head_dim), KV(p + "attention.value_length", U32, a.head_dim)]
    kvs.append(KV(p + "rope.dimension_count", U32, a.rope_dim or a.head_dim))
    if a.n_expert:
        kvs += [KV(p + "expert_count", U32, a.n_expert), KV(p + "expert_used_count", U32, a.n_expert_used),
                KV(p + "expert_feed_forward_length", U32, a.n_ff_exp)]
    kvs += [KV(p + k, t, v) for k, t, v in a.extra]
    kvs.append(KV("general.file_type", U32, 0))
    kvs.append(KV("general.quantization_version", U32, 2))
    return kvs + vocab


def _deepseek2_kvs(a: Arch, n_vocab: int) -> list:
    """Keys in the order DeepseekV2Model.set_gguf_parameters writes them (MLA as MQA: one KV
    head of width kv_lora + rope; the per-head MLA widths in key_length_mla / value_length_mla)."""
    p = a.arch + "."
    kvs = [KV("general.architecture", STR, a.arch),
           KV("general.type", STR, "model"),
           KV("general.name", STR, f"pyengine synthetic {a.name}"),
           KV(p + "block_count", U32, a.n_layer),
           KV(p + "context_length", U32, a.ctx),
           KV(p + "embedding_length", U32, a.n_embd),
           KV(p + "feed_forward_length", U32, a.n_ff),
           KV(p + "attention.head_count", U32, a.n_head),
           KV(p + "attention.head_count_kv", U32, 1),
           KV(p + "rope.freq_base", F32, a.rope_base),
           KV(p + "attention.layer_norm_rms_epsilon", F32, a.eps),
           KV(p + "expert_used_count", U32, a.n_expert_used),
           KV(p + "leading_dense_block_count", U32, a.n_dense_lead),
           KV(p + "vocab_size", U32, n_vocab),
           KV(p + "attention.q_lora_rank", U32, a.q_lora),
           KV(p + "attention.kv_lora_rank", U32, a.kv_lora),
           KV(p + "attention.key_length", U32, a.kv_lora + a.rope_dim),
           KV(p + "attention.value_length", U32, a.kv_lora),
           KV(p + "attention.key_length_mla", U32, a.nope_dim + a.rope_dim),
           KV(p + "attention.value_length_mla", U32, a.v_dim),
           KV(p + "expert_feed_forward_length", U32, a.n_ff_exp),
           KV(p + "expert_count", U32, a.n_expert),
           KV(p + "expert_shared_count", U32, a.n_expert_shared)]
    if a.expert_weights_scale:
        kvs.append(KV(p + "expert_weights_scale", F32, a.expert_weights_scale))
    kvs += [KV(p + "rope.dimension_count", U32, a.rope_dim),
            KV("general.file_type", U32, 0),
            KV("general.quantization_version", U32, 2)]
    return kvs


def make_source(a: Arch | str, vocab_gguf, path) -> str:
    """Write the unquantized source file of ``a`` to ``path``; returns its sha256."""
    a = ARCHS[a] if isinstance(a, str) else a
    vocab = vocab_kvs(vocab_gguf)
    n_vocab = len(next(e for e in vocab if e.key == "tokenizer.ggml.tokens").value[1])
    infos, data = [], {}
    for name, shape, kind in tensor_specs(a, n_vocab):
        t, b = tensor_bytes(a, name, shape, kind)
        infos.append(TensorInfo(name, shape, t))
        data[name] = b
    return write_gguf(path, source_kvs(a, vocab), infos, data)


def vocab_path(vocab_dir, a: Arch) -> Path:
    return Path(vocab_dir) / f"ggml-vocab-{a.vocab}.gguf"


# --------------------------------------------------------------------------------------------
# Recipe: the quantized file, described by what it does not share with the source
# --------------------------------------------------------------------------------------------
def _json_value(e: KV):
    if e.vtype == ARR:
        et, items = e.value
        return [et, items if et == STR else np.asarray(items).tolist()]
    return e.value


def make_recipe(a: Arch, source_path, quant_path, vocab_gguf) -> tuple[dict, dict]:
    """Describe ``quant_path`` (llama-quantize's output of ``source_path``) as (recipe, raw):
    recipe lists every key/value (``"@vocab"`` for a value equal to the vocab file's) and every
    tensor (``"gen"`` where its bytes equal the generator's, else ``"raw"``); raw holds the
    bytes of the "raw" tensors as uint8 arrays."""
    src, qf = read_gguf(source_path), read_gguf(quant_path)
    vocab = {e.key: e for e in vocab_kvs(vocab_gguf)}
    kvs = []
    for e in qf.kvs:
        v = vocab.get(e.key)
        same = v is not None and v.vtype == e.vtype and _json_value(v) == _json_value(e)
        kvs.append([e.key, e.vtype, "@vocab" if same else _json_value(e)])
    n_vocab = len(vocab["tokenizer.ggml.tokens"].value[1])
    kinds = {n: (s, k) for n, s, k in tensor_specs(a, n_vocab)}
    tensors, raw = [], {}
    for t in qf.tensors:
        qb = read_tensor_bytes(quant_path, qf, t.name)
        shape, kind = kinds[t.name]
        assert tuple(shape) == tuple(t.shape), (t.name, shape, t.shape)
        gt, gb = tensor_bytes(a, t.name, shape, kind)
        if gt == t.ggml_type and gb == qb:
            src_how = "gen"
        else:
            src_how = "raw"
            raw[t.name] = np.frombuffer(qb, dtype=np.uint8)
        tensors.append([t.name, list(t.shape), t.ggml_type, src_how])
    sha = hashlib.sha256(Path(quant_path).read_bytes()).hexdigest()
    recipe = {"arch": a.name, "vocab": f"ggml-vocab-{a.vocab}.gguf", "alignment": qf.alignment,
              "sha256": sha, "kvs": kvs, "tensors": tensors}
    return recipe, raw


def assemble(case_dir, vocab_dir, out) -> str:
    """Rebuild the quantized file of a committed conformance case into ``out``; returns its
    sha256 (the caller compares it with ``recipe.json``'s)."""
    case_dir = Path(case_dir)
    recipe = json.loads((case_dir / "recipe.json").read_text())
    a = ARCHS[recipe["arch"]]
    vocab = {e.key: e for e in vocab_kvs(Path(vocab_dir) / recipe["vocab"])}
    kvs = []
    for key, t, v in recipe["kvs"]:
        if v == "@vocab":
            kvs.append(vocab[key])
        elif t == ARR:
            kvs.append(KV(key, t, (v[0], v[1])))
        else:
            kvs.append(KV(key, t, v))
    n_vocab = len(vocab["tokenizer.ggml.tokens"].value[1])
    kinds = {n: (s, k) for n, s, k in tensor_specs(a, n_vocab)}
    raw = np.load(case_dir / "quantized.npz")
    infos, data = [], {}
    for name, shape, t, how in recipe["tensors"]:
        infos.append(TensorInfo(name, tuple(shape), t))
        if how == "gen":
            gt, b = tensor_bytes(a, name, *kinds[name])
            assert gt == t, name
            data[name] = b
        else:
            data[name] = raw[name].tobytes()
    return write_gguf(out, kvs, infos, data, alignment=recipe["alignment"])
