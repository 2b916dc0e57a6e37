"""What the architectures share: the config read from GGUF metadata, the tensor loader that
makes sure every tensor of the file is used, and the pre-norm transformer block with hooks.

One block, for the residual stream ``x (n, dim)``::

    h = rmsnorm(x)
    q, k, v = h Wq^T (+ bq), h Wk^T (+ bk), h Wv^T (+ bv)   # or one fused Wqkv split by rows
    q, k = rmsnorm_per_head(q), rmsnorm_per_head(k)         # QK-norm (Qwen3, Gemma 3)
    q, k = rope(q), rope(k)
    a = attention(q, K, V) Wo^T                              # window, soft-capping per layer
    x = x + post_attn_norm(a)                                # post-norm: Gemma 2/3, GLM-4
    h = rmsnorm(x)
    f = (act(h Wgate^T) * h Wup^T) Wdown^T                   # SwiGLU / GeGLU; gate+up may be fused
    x = x + post_ffn_norm(f)

Each architecture module holds a :class:`Config` subclass whose field defaults switch these
hooks (and whose :meth:`Config.own_from_gguf` reads what only it reads), and a
:class:`Transformer` (this one, or a subclass) for what is really its own graph (Phi-3's
rope factors, the mixture-of-experts feed-forward, ...). The optional tensors a layer may
carry are named by the config's ``features``; anything the model does not load is an
error (:meth:`Weights.check_all_used`), never a silent skip.

``Transformer`` is the architecture's graph over the file's tensors; the object a user
holds (:class:`pyengine.engine.Model`: file, tokenizer, backend, sequences) keeps one as
``model.arch``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Backend, KVCache, RopeScaling
from ..backends.moe import MoERouting
from ..errors import ModelFileError
from ..gguf_file import GGUFFile
from ..ggml_types import ggml_type
from ..tensor import QTensor


# -- tensors ----------------------------------------------------------------------------------

def row_slice(t: QTensor, r0: int, r1: int, name: str | None = None) -> QTensor:
    """Rows ``r0:r1`` of ``t`` as a QTensor over the same bytes (a view, nothing copied).

    A 1-D tensor (a bias) is sliced by elements; it must be a type whose blocks are single
    values (F32, F16, BF16), or the slice must fall on block boundaries.
    """
    if len(t.shape) == 1:
        ty = ggml_type(t.type_name)
        if r0 % ty.block_size or r1 % ty.block_size:
            raise ModelFileError(f"{t.name}: cannot split a {t.type_name} vector at {r0}:{r1}")
        return QTensor(name or f"{t.name}[{r0}:{r1}]", t.type_name, (r1 - r0,), t.raw[ty.n_bytes(r0):ty.n_bytes(r1)])
    rb = t.row_bytes
    return QTensor(name or f"{t.name}[{r0}:{r1}]", t.type_name, (r1 - r0,) + tuple(t.shape[1:]),
                   t.raw[r0 * rb:r1 * rb])


def split_rows(t: QTensor, sizes: list[int]) -> list[QTensor]:
    """``t`` cut into consecutive row blocks of ``sizes`` (a fused matrix or bias)."""
    total = t.shape[0]
    if sum(sizes) != total:
        raise ModelFileError(f"tensor {t.name!r} has {total} rows, expected {' + '.join(map(str, sizes))}")
    out, r = [], 0
    for s in sizes:
        out.append(row_slice(t, r, r + s))
        r += s
    # the model uses the parts, never the whole: a backend that uploads every tensor of the
    # file ahead of time (cuda) skips this one and uploads its parts when they are first used
    t.cache["split_into_parts"] = True
    return out


#: types a 1-D weight (norm scales, biases) may have
VECTOR_TYPES = ("F32", "F16", "BF16")


class Weights:
    """The file's tensors as the model takes them; remembers which were taken."""

    def __init__(self, gf: GGUFFile):
        self.gf = gf
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.gf.tensors

    def get(self, name: str, shape: tuple | None = None, types: tuple[str, ...] | None = None) -> QTensor:
        """A tensor the architecture needs (missing: one-line error); ``shape`` (NumPy order) and
        ``types`` (allowed GGML types) checked when given."""
        t = self.gf.tensor(name)
        if shape is not None and tuple(t.shape) != tuple(int(d) for d in shape):
            raise ModelFileError(f"{self.gf.path}: tensor {name!r} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(shape)} from the model's configuration "
                                 f"(architecture {self.gf.architecture})")
        if types is not None and t.type_name not in types:
            raise ModelFileError(f"{self.gf.path}: tensor {name!r} has type {t.type_name}, "
                                 f"expected {' or '.join(types)}")
        self.used.add(name)
        return t

    def opt(self, name: str, shape: tuple | None = None, types: tuple[str, ...] | None = None) -> QTensor | None:
        return self.get(name, shape, types) if name in self.gf.tensors else None

    def vec(self, name: str, n: int) -> QTensor:
        """A norm's scale vector ``(n,)``: float types only (the norm kernels read it as floats)."""
        return self.get(name, (n,), VECTOR_TYPES)


    def check_all_used(self) -> None:
        unused = [n for n in self.gf.tensors if n not in self.used]
        if unused:
            more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
            raise ModelFileError(f"{self.gf.path}: tensor {unused[0]!r}{more} is not used by architecture "
                                 f"{self.gf.architecture!r} (unsupported variant or wrong architecture)")


# -- config ----------------------------------------------------------------------------------

#: optional per-layer tensors an architecture may allow (Config.features)
FEATURES = frozenset({"qkv_bias", "fused_qkv", "qk_norm", "post_norms", "fused_up", "gate_optional"})


@dataclass
class Config:
    """The model's shape and the block's hooks, read from the file by :meth:`from_gguf`. An
    architecture's subclass sets the hooks it always uses as field defaults (``neox: bool =
    True``), adds its own fields, and reads what only it reads in :meth:`own_from_gguf`."""

    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float
    rope_base: float
    n_rot: int
    context_length: int
    # the hooks (defaults: plain Llama)
    neox: bool = False                     # rope pairs (i, i + n_rot/2) instead of (2i, 2i+1)
    rope_scaling: RopeScaling | None = None  # for every layer that is not sliding-window
    attn_scale: float = 0.0                # 0: 1/sqrt(head_dim)
    attn_softcap: float = 0.0              # Gemma 2: scores -> cap * tanh(score / cap)
    final_softcap: float = 0.0             # Gemma 2: logits -> cap * tanh(logits / cap)
    sliding_window: int = 0
    swa_layers: tuple = ()                 # per layer: True = sliding-window attention
    rope_base_swa: float = 0.0             # rope base of sliding-window layers (0: rope_base)
    swa_rope_scaled: bool = False          # sliding-window layers use rope_scaling too (Gemma 2)
    embed_scale: float = 1.0               # Gemma: the embedding is multiplied by sqrt(dim)
    act: str = "silu"                      # "silu" (SwiGLU) or "gelu" (GeGLU, tanh GELU)
    features: frozenset = field(default_factory=frozenset)

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        """The file's configuration: the fields every architecture reads the same way
        (:meth:`base_from_gguf`), the file's rope scaling, then the architecture's own
        (:meth:`own_from_gguf`, which may also override the first two). The hooks an
        architecture always switches are its subclass's field defaults."""
        kw = cls.base_from_gguf(gf)
        kw["rope_scaling"] = rope_scaling_from_gguf(gf, kw)
        kw.update(cls.own_from_gguf(gf, kw))
        return cls(**kw)

    @classmethod
    def own_from_gguf(cls, gf: GGUFFile, kw: dict) -> dict:
        """The fields only this architecture reads from the file (given what is read so far,
        ``kw``), as keyword arguments: none for the plain block."""
        return {}

    @classmethod
    def base_from_gguf(cls, gf: GGUFFile) -> dict:
        """The fields every architecture reads the same way, as keyword arguments."""
        a = gf.arch_key
        arch = gf.architecture
        dim = int(gf.require(f"{arch}.embedding_length"))
        n_heads = int_or_first(gf.require(f"{arch}.attention.head_count"), gf, "attention.head_count")
        head_dim = int(a("attention.key_length", dim // n_heads))
        tokens = gf.metadata.get("tokenizer.ggml.tokens")
        n_vocab = int(a("vocab_size", len(tokens) if tokens is not None else gf.tensor("token_embd.weight").rows))
        kw = dict(
            n_vocab=n_vocab,
            dim=dim,
            n_layers=int(gf.require(f"{arch}.block_count")),
            n_heads=n_heads,
            n_kv_heads=int_or_first(a("attention.head_count_kv", n_heads), gf, "attention.head_count_kv"),
            head_dim=head_dim,
            ffn_dim=int_or_first(gf.require(f"{arch}.feed_forward_length"), gf, "feed_forward_length"),
            norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(a("rope.freq_base", 10000.0)),
            n_rot=int(a("rope.dimension_count", head_dim)),
            context_length=int(a("context_length", 2048)),
        )
        return kw

    # -- per-layer hooks ---------------------------------------------------------------
    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and bool(self.swa_layers[layer])

    def window(self, layer: int) -> int:
        return self.sliding_window if self.is_swa(layer) else 0

    def rope_for(self, layer: int) -> tuple[float, RopeScaling | None]:
        """(base, scaling) of ``layer``: sliding-window layers use their own base, unscaled
        unless ``swa_rope_scaled`` (llama.cpp's rope_freq_scale_train_swa: 1, Gemma 2: the same)."""
        if self.is_swa(layer):
            return (self.rope_base_swa or self.rope_base), (self.rope_scaling if self.swa_rope_scaled else None)
        return self.rope_base, self.rope_scaling

    @property
    def q_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)


def int_or_first(v, gf: GGUFFile, key: str) -> int:
    """A key that may be one value per layer, as one int: a per-layer array must be uniform
    (we run one shape per model)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        vals = {int(x) for x in v}
        if len(vals) != 1:
            raise ModelFileError(f"{gf.path}: per-layer {key} {sorted(vals)} is not supported")
        return vals.pop()
    return int(v)


def expert_routing_from_gguf(gf: GGUFFile, gating: str, norm: bool,
                             required: bool = True) -> tuple[int, MoERouting | None]:
    """``(expert_count, routing)`` from the file's ``expert_*`` keys; routing ``None`` when the
    file routes to no expert (``expert_used_count`` 0), an error if ``required``.

    ``top_k`` = ``expert_used_count``; ``expert_weights_scale`` multiplies the weights when the
    file has it; group-limited when ``expert_group_count > 1`` (llama.cpp reads the group keys
    for every architecture). ``gating`` and ``norm`` are the architecture's to choose."""
    a = gf.arch_key
    n_expert = int(a("expert_count", 0))
    k = int_or_first(a("expert_used_count", 0), gf, "expert_used_count")
    if n_expert <= 0 or k <= 0:
        if required:
            raise ModelFileError(f"{gf.path}: {gf.architecture} needs expert_count and expert_used_count > 0 "
                                 f"(file: {n_expert}, {k})")
        return n_expert, None
    n_group = int(a("expert_group_count", 0))
    grouped = n_group > 1
    return n_expert, MoERouting(top_k=k, gating=gating, norm=norm, scale=float(a("expert_weights_scale", 0.0)),
                                n_group=n_group if grouped else 0,
                                n_group_used=int(a("expert_group_used_count", 0)) if grouped else 0)


def swa_pattern(gf: GGUFFile, n_layers: int, default: int) -> tuple:
    """Which layers use the sliding window, llama.cpp's rule: pattern ``n`` makes layer
    ``il`` local iff ``il % n < n - 1`` (the last of every ``n`` is global); the file's
    ``attention.sliding_window_pattern`` (a number, or one bool per layer) overrides ``default``."""
    p = gf.arch_key("attention.sliding_window_pattern")
    if isinstance(p, (list, tuple, np.ndarray)):
        if len(p) != n_layers:
            raise ModelFileError(f"{gf.path}: sliding_window_pattern has {len(p)} entries for {n_layers} layers")
        return tuple(bool(x) for x in p)
    n = int(default if p is None else p)
    return tuple(n == 0 or il % n < n - 1 for il in range(n_layers))


def rope_scaling_from_gguf(gf: GGUFFile, cfg_kw: dict, freq_factors: np.ndarray | None = None) -> RopeScaling | None:
    """The file's rope scaling (``rope.scaling.*``, llama.cpp's reading of it), or None.

    - ``linear`` (also when the type is absent, as llama.cpp reads it): angles times ``1 / factor``
      (no factor: unscaled);
    - ``yarn``: ``freq_scale = 1 / factor``, ``ext_factor`` 1 (or the file's), YaRN's
      magnitude correction in ``attn_factor`` as llama.cpp computes it;
    - ``longrope`` / ``none`` / absent: no angle scaling (``freq_factors`` may still apply);
    - ``rope.scaling.attn_factor`` multiplies cos/sin in every case.
    """
    a = gf.arch_key
    kind = a("rope.scaling.type")
    kind = "linear" if kind is None else str(kind)
    factor = float(a("rope.scaling.factor", a("rope.scale_linear", 0.0)) or 0.0)
    freq_scale = 1.0 if factor == 0.0 else 1.0 / factor
    if kind not in ("none", "linear", "yarn", "longrope"):
        raise ModelFileError(f"{gf.path}: rope scaling {kind!r} is not supported (none, linear, yarn, longrope)")
    if kind == "none":
        freq_scale = 1.0
    attn_factor = float(a("rope.scaling.attn_factor", 1.0))
    n_ctx_orig = int(a("rope.scaling.original_context_length", cfg_kw["context_length"]))
    ext_factor = float(a("rope.scaling.yarn_ext_factor", 1.0 if kind == "yarn" else 0.0))
    if ext_factor < 0:
        ext_factor = 1.0 if kind == "yarn" else 0.0
    yarn_attn = 1.0
    if ext_factor != 0.0:
        f = 1.0 / freq_scale

        def mscale(scale, m):
            return 1.0 if scale <= 1.0 else 0.1 * m * math.log(scale) + 1.0
        log_mul = float(a("rope.scaling.yarn_log_multiplier", 0.0))
        yarn_attn = mscale(f, 1.0) / mscale(f, log_mul) if log_mul != 0.0 else mscale(f, 1.0)
        # llama.cpp cancels the 1 + 0.1 ln(factor) its rope kernel multiplies in again
        yarn_attn *= 1.0 / (1.0 + 0.1 * math.log(f))
    sc = RopeScaling(
        freq_factors=freq_factors,
        freq_scale=freq_scale,
        ext_factor=ext_factor,
        attn_factor=yarn_attn * attn_factor,
        beta_fast=float(a("rope.scaling.yarn_beta_fast", 32.0)),
        beta_slow=float(a("rope.scaling.yarn_beta_slow", 1.0)),
        n_ctx_orig=n_ctx_orig,
    )
    return None if sc.is_identity else sc


# -- layers ----------------------------------------------------------------------------------

class Layer:
    """One block's tensors. Which optional ones are taken depends on ``cfg.features``."""

    def __init__(self, W: Weights, i: int, cfg: Config):
        f = cfg.features
        p = f"blk.{i}."
        d, q_w, kv_w = cfg.dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.attn_norm = W.vec(p + "attn_norm.weight", d)  # (dim,)
        self.bq = self.bk = self.bv = None
        if "fused_qkv" in f and W.has(p + "attn_qkv.weight"):
            # one (q_w + 2 kv_w, dim) matrix: its row blocks are Wq, Wk, Wv
            self.wq, self.wk, self.wv = split_rows(W.get(p + "attn_qkv.weight", (q_w + 2 * kv_w, d)), [q_w, kv_w, kv_w])
            b = W.opt(p + "attn_qkv.bias", (q_w + 2 * kv_w,), VECTOR_TYPES) if "qkv_bias" in f else None
            if b is not None:
                self.bq, self.bk, self.bv = split_rows(b, [q_w, kv_w, kv_w])
        else:
            self.wq = W.get(p + "attn_q.weight", (q_w, d))
            self.wk = W.get(p + "attn_k.weight", (kv_w, d))
            self.wv = W.get(p + "attn_v.weight", (kv_w, d))
            if "qkv_bias" in f:
                self.bq = W.opt(p + "attn_q.bias", (q_w,), VECTOR_TYPES)  # (q_w,)
                self.bk = W.opt(p + "attn_k.bias", (kv_w,), VECTOR_TYPES)
                self.bv = W.opt(p + "attn_v.bias", (kv_w,), VECTOR_TYPES)
        self.wo = W.get(p + "attn_output.weight", (d, q_w))  # (dim, q_w)
        self.q_norm = self.k_norm = None
        if "qk_norm" in f:
            self.q_norm = W.vec(p + "attn_q_norm.weight", cfg.head_dim)  # per-head norm
            self.k_norm = W.vec(p + "attn_k_norm.weight", cfg.head_dim)
        self.post_attn_norm = self.post_ffn_norm = None
        if "post_norms" in f:
            self.post_attn_norm = W.vec(p + "post_attention_norm.weight", d)
            self.post_ffn_norm = W.vec(p + "post_ffw_norm.weight", d)
        self.ffn_norm = W.vec(p + "ffn_norm.weight", d)
        self.load_ffn(W, i, cfg)

    def load_ffn(self, W: Weights, i: int, cfg: Config) -> None:
        """The feed-forward tensors of block ``i`` (a mixture-of-experts layer loads its own)."""
        f, p, d = cfg.features, f"blk.{i}.", cfg.dim
        if "fused_up" in f and not W.has(p + "ffn_gate.weight"):
            # ffn_up (2*ffn_dim, dim) = [Wgate; Wup] (llama.cpp's SWIGLU on a fused up)
            self.w_gate, self.w_up = split_rows(W.get(p + "ffn_up.weight", (2 * cfg.ffn_dim, d)), [cfg.ffn_dim, cfg.ffn_dim])
        else:
            self.w_gate = W.get(p + "ffn_gate.weight", (cfg.ffn_dim, d))
            self.w_up = W.get(p + "ffn_up.weight", (cfg.ffn_dim, d))
        self.w_down = W.get(p + "ffn_down.weight", (d, cfg.ffn_dim))


def linear(ops: Backend, w: QTensor, x, b: QTensor | None = None):
    """``x W^T (+ b)``."""
    y = ops.matmul(w, x)
    return y if b is None else ops.add_bias(y, b)


class Transformer:
    """The architecture's graph: its tensors (taken from the file, every one used) and the
    shared forward pass. An architecture whose graph differs overrides only what differs:
    :meth:`load_extra`, :meth:`rope_scaling`, :attr:`Layer`, :meth:`attention_block`,
    :meth:`ffn_block`, :attr:`kv_width`."""

    Layer = Layer

    def __init__(self, cfg: Config, gf: GGUFFile, W: Weights | None = None):
        self.cfg = cfg
        W = W or Weights(gf)
        self.check_config(cfg, gf)
        self.tok_embd = W.get("token_embd.weight", (cfg.n_vocab, cfg.dim))  # (n_vocab, dim)
        self.layers = [self.Layer(W, i, cfg) for i in range(cfg.n_layers)]
        self.output_norm = W.vec("output_norm.weight", cfg.dim)  # (dim,)
        # tied embeddings: no output.weight means the embedding matrix doubles as the head
        self.output = W.opt("output.weight", (cfg.n_vocab, cfg.dim)) or self.tok_embd  # (n_vocab, dim)
        self.load_extra(W, gf)
        W.check_all_used()

    @staticmethod
    def check_config(c: Config, gf: GGUFFile) -> None:
        """Config values against each other (one line naming the key); tensor shapes are
        checked as the layers take them."""
        a = gf.architecture
        gf.expect(c.n_heads % c.n_kv_heads == 0, f"{a}.attention.head_count_kv", f"a divisor of {c.n_heads}")
        gf.expect(0 < c.n_rot <= c.head_dim and c.n_rot % 2 == 0, f"{a}.rope.dimension_count",
                  f"an even number in 2..{c.head_dim} (head_dim)")
        tokens = gf.metadata.get("tokenizer.ggml.tokens")
        if tokens is not None:  # a sampled id must always be a token the tokenizer knows
            gf.expect(len(tokens) == c.n_vocab, "tokenizer.ggml.tokens",
                      f"{c.n_vocab} tokens (the model's vocabulary), got {len(tokens)}")

    def load_extra(self, W: Weights, gf: GGUFFile) -> None:
        """Architecture-specific tensors (e.g. rope frequency factors)."""

    @property
    def kv_width(self) -> int:
        return self.cfg.n_kv_heads * self.cfg.head_dim

    #: the cached key and value of a position are one row (MLA): the backend may store it once
    keys_are_values = False

    def kv_cache(self, ops: Backend, n_ctx: int) -> KVCache:
        """This model's KV cache of ``n_ctx`` positions on backend ``ops``."""
        return ops.kv_cache(self.cfg.n_layers, n_ctx, self.kv_width, keys_are_values=self.keys_are_values)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """Its size: float32, per layer ``n_ctx x kv_width`` for the keys and as much for the
        values, or once when the keys are the values (MLA's compressed rows)."""
        return (1 if self.keys_are_values else 2) * self.cfg.n_layers * n_ctx * self.kv_width * 4

    def rope_scaling(self, layer: int, cache: KVCache) -> tuple[float, RopeScaling | None]:
        return self.cfg.rope_for(layer)

    # -- blocks ------------------------------------------------------------------------
    def attention_block(self, ops: Backend, L: Layer, i: int, h, pos: np.ndarray, pos0: int, cache: KVCache):
        c = self.cfg
        q = linear(ops, L.wq, h, L.bq)  # (n, H*hd)
        k = linear(ops, L.wk, h, L.bk)  # (n, Hkv*hd)
        v = linear(ops, L.wv, h, L.bv)
        if L.q_norm is not None:  # QK-norm: each head RMS-normalised with its own weights
            q = ops.rmsnorm(q, L.q_norm, c.norm_eps)
            k = ops.rmsnorm(k, L.k_norm, c.norm_eps)
        base, scaling = self.rope_scaling(i, cache)
        extra = {} if scaling is None else {"scaling": scaling}
        q = ops.rope(q, pos, c.n_heads, c.head_dim, base, c.neox, c.n_rot, **extra)
        k = ops.rope(k, pos, c.n_kv_heads, c.head_dim, base, c.neox, c.n_rot, **extra)
        ops.kv_write(cache, i, pos0, k, v)
        extra = {"softcap": c.attn_softcap} if c.attn_softcap else {}
        a = ops.attention(q, cache, i, pos0, c.n_heads, c.n_kv_heads, c.head_dim, c.q_scale,
                          window=c.window(i), **extra)
        o = ops.matmul(L.wo, a)  # (n, dim)
        if L.post_attn_norm is not None:
            o = ops.rmsnorm(o, L.post_attn_norm, c.norm_eps)
        return o

    def ffn_block(self, ops: Backend, L: Layer, h):
        c = self.cfg
        gate, up = ops.matmul(L.w_gate, h), ops.matmul(L.w_up, h)
        g = ops.gelu_mul(gate, up) if c.act == "gelu" else ops.silu_mul(gate, up)
        f = ops.matmul(L.w_down, g)
        if L.post_ffn_norm is not None:
            f = ops.rmsnorm(f, L.post_ffn_norm, c.norm_eps)
        return f

    def forward(self, ops: Backend, ids: np.ndarray, pos0: int, cache: KVCache, last_only: bool = True):
        c = self.cfg
        n = len(ids)
        pos = np.arange(pos0, pos0 + n, dtype=np.int32)
        x = ops.embed(self.tok_embd, ids)  # (n, dim)
        if c.embed_scale != 1.0:
            x = ops.scale(x, c.embed_scale)
        for i, L in enumerate(self.layers):
            h = ops.rmsnorm(x, L.attn_norm, c.norm_eps)
            x = ops.add(x, self.attention_block(ops, L, i, h, pos, pos0, cache))
            h = ops.rmsnorm(x, L.ffn_norm, c.norm_eps)
            x = ops.add(x, self.ffn_block(ops, L, h))
        if last_only:
            x = x[n - 1:n]
        x = ops.rmsnorm(x, self.output_norm, c.norm_eps)
        logits = ops.matmul(self.output, x)  # (n or 1, n_vocab)
        if c.final_softcap:
            logits = ops.softcap(logits, c.final_softcap)
        return logits


__all__ = ["Config", "Layer", "Transformer", "Weights", "row_slice", "split_rows", "swa_pattern",
           "rope_scaling_from_gguf", "expert_routing_from_gguf", "int_or_first", "linear"]
