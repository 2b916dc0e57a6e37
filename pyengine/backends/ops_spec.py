"""The op contract, described once.

Every op a model may call is one :class:`Op` entry below: its name (the same on every
tier: the Backend method, the ``_C`` binding, the kernel-table entry, the graph node),
its parameters, and how the native decode step replays it. From this table:

- :mod:`.cpu_graph` derives the recording of every op whose shape is regular (``record``
  is not ``"custom"``): buffers in, vector weight, scalar constants, one fresh output,
  replayed by ``DecodeGraph.add_<graph>``;
- ``tests/test_ops_spec.py`` checks that every backend (numpy, numba, cpu, cuda, the
  recorder) implements every op with exactly these parameter names, that every
  replayable op has its ``DecodeGraph.add_<graph>`` builder, and that the graph's node
  kinds cover the table.

So a new op costs one entry here plus its kernels (numpy spec, numba, cpu kernel table +
``csrc/bind_ops.cpp`` binding, the graph node in ``csrc/graph.h``'s kind list and its
case in the replay, CUDA); forgetting a tier fails the spec test.

On the C++ side ``csrc/graph.h`` lists the node kinds once (``PE_GRAPH_KINDS``), from
which the ``Kind`` enum and the kind names are generated.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Op:
    name: str
    params: tuple[str, ...]          # Backend method parameters after self (optional ones included)
    doc: str
    graph: str | None = None         # DecodeGraph.add_<graph> replays it; None: never part of a decode step
    record: str = "custom"           # "regular": recorded from the fields below; "custom": by hand in cpu_graph
    acts: tuple[str, ...] = ()       # activation parameters (recorded buffers), in order
    same_shape: bool = False         # the activations must have one shape (no broadcasting)
    vec: str | None = None           # a 1-D weight parameter, handed to the graph as float32
    consts: tuple[tuple[str, str], ...] = ()   # (parameter, "f32" | "float"): scalars fixed in the recording
    graph_names: dict = field(default_factory=dict)   # parameter -> graph builder argument, where they differ
    graph_fixed: dict = field(default_factory=dict)   # extra constant graph arguments


OPS: tuple[Op, ...] = (
    # weights
    Op("embed", ("w", "ids"), "rows ids of w (vocab, d) as float32 (n, d)", graph="embed"),
    Op("matmul", ("w", "x"), "x (n, cols) @ w.T for w (rows, cols) in its GGUF encoding", graph="matmul"),
    Op("add_bias", ("x", "b"), "x (n, d) + b (d,) for every row", graph="add_bias", record="regular",
       acts=("x",), vec="b"),
    # normalisation
    Op("rmsnorm", ("x", "w", "eps"), "RMS-normalise each group of len(w) values, times w", graph="rmsnorm",
       record="regular", acts=("x",), vec="w", consts=(("eps", "float"),)),
    # elementwise
    Op("add", ("a", "b"), "a + b", graph="elementwise", record="regular", acts=("a", "b"), same_shape=True,
       graph_fixed={"op": "add"}),
    Op("scale", ("x", "s"), "x * s", graph="scale", record="regular", acts=("x",), consts=(("s", "f32"),)),
    Op("softcap", ("x", "cap"), "cap * tanh(x / cap)", graph="softcap", record="regular", acts=("x",),
       consts=(("cap", "f32"),)),
    Op("silu_mul", ("gate", "up"), "silu(gate) * up", graph="elementwise", record="regular", acts=("gate", "up"),
       same_shape=True, graph_names={"gate": "a", "up": "b"}, graph_fixed={"op": "silu_mul"}),
    Op("gelu_mul", ("gate", "up"), "gelu_tanh(gate) * up", graph="elementwise", record="regular",
       acts=("gate", "up"), same_shape=True, graph_names={"gate": "a", "up": "b"}, graph_fixed={"op": "gelu_mul"}),
    # position and attention
    Op("rope", ("x", "positions", "n_heads", "head_dim", "freq_base", "neox", "n_rot", "scaling"),
       "rotary embedding, optionally scaled (RopeScaling)", graph="rope"),
    Op("kv_write", ("cache", "layer", "pos0", "k", "v"), "store k, v at positions pos0.. of a layer",
       graph="kv_write"),
    Op("attention", ("q", "cache", "layer", "pos0", "n_heads", "n_kv_heads", "head_dim", "scale", "window",
                     "softcap"),
       "causal GQA attention over the cache (sliding window, soft-capping)", graph="attention"),
    # mixture of experts (spec: backends/moe.py)
    Op("moe_ffn", ("x", "router", "gate_exps", "up_exps", "down_exps", "routing"),
       "routed SwiGLU experts: top-k of router(x), weighted sum of the chosen experts (MoERouting)",
       graph="moe_ffn"),
    Op("mla_attention", ("q", "kv", "cache", "layer", "pos0", "wk_b", "wv_b", "kv_norm", "eps", "n_heads", "qk_nope",
                         "n_rot", "freq_base", "neox", "scaling", "scale"),
       "multi-head latent attention over the compressed cache (spec: backends/mla.py)", graph="mla_attention"),
)

#: fused forms beyond the contract, offered by the cpu backend (and recorded for its decode step).
#: No architecture calls them: models/common.py runs ``add`` then ``rmsnorm``, so they run in
#: their own tests only (tests/test_cpu_ops.py)
EXTRAS: tuple[Op, ...] = (
    Op("rmsnorm_add", ("x", "w", "eps", "residual"), "residual + rmsnorm(x)", graph="rmsnorm_add",
       record="regular", acts=("x", "residual"), vec="w", consts=(("eps", "float"),)),
    Op("add_rmsnorm", ("a", "b", "w", "eps"), "s = a + b and rmsnorm(s)", graph="add_rmsnorm"),
)

BY_NAME = {op.name: op for op in OPS + EXTRAS}
