"""A decode step for the native CPU backend, traced once in Python and replayed natively.

The architectures stay written once, in terms of backend ops (``pyengine/models``). To
take Python out of the token loop, :func:`build_decode_step` runs the architecture's forward
pass for a single token through :class:`Recorder`, a backend that executes every op
on the real :class:`~pyengine.backends.cpu_backend.CpuBackend` and writes it down: op,
input and output buffers, weights, scalar parameters. The outputs the ops allocate
become the step's persistent buffers. The tape is then handed to
``pyengine._C.DecodeGraph`` (csrc/graph.cpp), which replays the whole step in one call
with the GIL released, calling the same kernel entry points as the ops themselves: the
replay is bit-for-bit the op-by-op step.

What makes one recording valid for every token and position:

- buffers are identified by their data pointer, so a view of a recorded buffer (the
  ``x[n-1:n]`` of ``last_only`` is the whole buffer when n == 1) is that buffer;
- the forward pass is traced **twice**, for two different tokens at two different
  positions. The two tapes must agree op for op; the embedding row must be the step's
  token in both; every position argument (rope positions, KV write position,
  attention ``pos0``) must either be the same in both (a fixed position) or move with
  ``pos0`` (recorded as ``pos0 + offset``). Anything else is refused;
- anything the recorder cannot replay is refused: an op it does not know, an op input
  that no recorded op produced (NumPy arithmetic between ops), a buffer changed behind
  the backend's back, broadcasting, a weight type without a native kernel for the
  embedding. Refusal means :func:`build_decode_step` returns ``None`` and the engine
  keeps running ``forward`` op by op: never a silently wrong step.

The traces write real keys and values into the cache (at the two trace positions);
the recorder saves whatever it overwrites and puts it back afterwards.

Contract of the returned step (``DecodeGraph.step``): ``step(token_id, pos0,
copy=True)``; it writes the KV cache exactly as ``forward(ops, [token_id], pos0, cache,
True)`` would and returns the logits ``(1, n_vocab)``. With ``copy=True`` (the
default) they are a new array; with ``copy=False`` they are the graph's own output
buffer, **overwritten by the next step** (for a caller that consumes them at once,
e.g. sampling).
"""
from __future__ import annotations

import inspect
import logging
import math
import os

import numpy as np

from .. import _C
from ..tensor import QTensor
from .base import Backend, KVCache
from .cpu_backend import CpuBackend, native_type
from .ops_spec import BY_NAME, Op

log = logging.getLogger(__name__)

_F32 = np.dtype(np.float32)

#: set (to anything but "" / "0") to disable the replayed step (the engine then runs op by op)
DISABLE_ENV = "PYENGINE_NO_GRAPH"


class Unsupported(Exception):
    """The traced forward pass does something the replay cannot reproduce."""


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class _Rec:
    """One op of the tape."""

    __slots__ = ("kind", "args", "ins", "outs", "weights", "const", "pos", "token")

    def __init__(self, kind, args, ins, outs, weights=(), const=(), pos=(), token=None):
        self.kind = kind          # op name
        self.args = args          # dict: what DecodeGraph.add_<kind> needs (arrays as the op saw them)
        self.ins = ins            # buffer indices read
        self.outs = outs          # buffer indices written
        self.weights = weights    # identities of the weight arrays (compared between traces)
        self.const = const        # scalar parameters that must not change between traces
        self.pos = pos            # position arguments, as seen in this trace
        self.token = token        # the embedding row (embed only)

    def structure(self):
        return (self.kind, self.ins, self.outs, self.weights, self.const)


class Recorder(Backend):
    """Runs each op on ``inner`` and records it (see the module doc)."""

    name = "cpu-trace"

    def __init__(self, inner: CpuBackend, cache: KVCache):
        self.inner = inner
        self.cache = cache
        self.tape: list[_Rec] = []
        self.bufs: list[np.ndarray] = []      # every op output, kept alive (so pointers stay unique)
        self.snaps: list[np.ndarray] = []     # their contents right after the op wrote them
        self.by_ptr: dict[int, int] = {}
        self.saved: list = []                 # KV cache contents the trace overwrote

    # -- buffers ---------------------------------------------------------------
    def _in(self, x) -> int:
        if not isinstance(x, np.ndarray) or x.dtype != _F32:
            raise Unsupported(f"an op input of type {type(x).__name__} / {getattr(x, 'dtype', None)}")
        i = self.by_ptr.get(_ptr(x))
        if i is None:
            raise Unsupported("an op input that no recorded op produced (arithmetic outside the backend?)")
        b = self.bufs[i]
        if x.size != b.size or not x.flags.c_contiguous:
            raise Unsupported(f"a partial or strided view {x.shape} of a recorded buffer {b.shape}")
        if not np.array_equal(b.reshape(-1).view(np.uint32), self.snaps[i]):
            raise Unsupported("a recorded buffer was modified outside the backend")
        return i

    def _out(self, a) -> int:
        if not isinstance(a, np.ndarray) or a.dtype != _F32 or not a.flags.c_contiguous or a.size == 0:
            raise Unsupported("an op result that is not a fresh contiguous float32 array")
        p = _ptr(a)
        if p in self.by_ptr:
            raise Unsupported("an op returned an existing buffer")
        self.by_ptr[p] = len(self.bufs)
        self.bufs.append(a)
        self.snaps.append(a.reshape(-1).view(np.uint32).copy())
        return len(self.bufs) - 1

    def _rec(self, kind, args, ins, outs, **kw) -> None:
        self.tape.append(_Rec(kind, args, tuple(ins), tuple(outs), **kw))

    def _cache(self, cache, layer) -> int:
        if cache is not self.cache:
            raise Unsupported("a KV cache other than the step's")
        layer = int(layer)
        if not 0 <= layer < len(cache.k):
            raise Unsupported(f"KV cache layer {layer} out of range")
        return layer

    @staticmethod
    def _position(p) -> int:
        v = float(p)
        if v != math.floor(v):
            raise Unsupported(f"a non-integer position {p}")
        return int(v)

    # -- ops ---------------------------------------------------------------------
    def embed(self, w: QTensor, ids):
        ids = np.asarray(ids).reshape(-1)
        if ids.size != 1:
            raise Unsupported(f"an embedding lookup of {ids.size} rows")
        if not native_type(w.type_name):
            raise Unsupported(f"embedding of type {w.type_name} (no native kernel)")
        out = self.inner.embed(w, ids)
        o = self._out(out)
        self._rec("embed", dict(type_name=w.type_name, w=w.raw, rows=w.rows, cols=w.cols, out=out), (), (o,),
                  weights=(id(w.raw),), token=int(ids[0]))
        return out

    def matmul(self, w: QTensor, x):
        i = self._in(x)
        out = self.inner.matmul(w, x)
        type_name, raw = w.type_name, w.raw  # the backend runs every matrix natively (checked at load)
        o = self._out(out)
        self._rec("matmul", dict(type_name=type_name, w=raw, rows=w.rows, cols=w.cols, x=x, out=out), (i,), (o,),
                  weights=(id(raw),))
        return out

    def add_rmsnorm(self, a, b, w: QTensor, eps):
        ia, ib = self._in(a), self._in(b)
        if a.shape != b.shape:
            raise Unsupported("add_rmsnorm of different shapes")
        s, nrm = self.inner.add_rmsnorm(a, b, w, eps)
        vec = self.inner._vector(w)
        os_, on = self._out(s), self._out(nrm)
        self._rec("add_rmsnorm", dict(a=a, b=b, w=vec, eps=float(eps), sum_out=s, norm_out=nrm), (ia, ib),
                  (os_, on), weights=(id(vec),), const=(float(eps),))
        return s, nrm

    def rope(self, x, positions, n_heads, head_dim, freq_base, neox, n_rot=None, scaling=None):
        i = self._in(x)
        positions = np.asarray(positions).reshape(-1)
        if positions.size != 1 or x.shape[0] != 1:
            raise Unsupported(f"rope of {x.shape[0]} rows at {positions.size} positions")
        p = self._position(positions[0])
        n_rot = int(head_dim) if n_rot is None else int(n_rot)
        out = self.inner.rope(x, positions, n_heads, head_dim, freq_base, neox, n_rot, scaling)
        o = self._out(out)
        if scaling is not None and scaling.is_identity:
            scaling = None
        sc = {} if scaling is None else scaling.kwargs()
        const = (int(n_heads), int(head_dim), n_rot, bool(neox), float(freq_base),
                 None if scaling is None else scaling.key())
        self._rec("rope", dict(x=x, out=out, n_heads=const[0], head_dim=const[1], n_rot=n_rot, neox=const[3],
                               freq_base=const[4], **sc), (i,), (o,), const=const, pos=(p,))
        return out

    def kv_write(self, cache, layer, pos0, k, v) -> None:
        layer = self._cache(cache, layer)
        ik, iv = self._in(k), self._in(v)
        if k.shape[0] != 1 or v.shape[0] != 1:
            raise Unsupported(f"a KV write of {k.shape[0]} rows")
        p = self._position(pos0)
        if cache.keys_are_values:
            raise Unsupported("a KV write into a cache whose keys are its values (mla_attention writes its own)")
        kt, vc = cache.k[layer], cache.v[layer]
        blk = kt.shape[-1]
        if 0 <= p < vc.shape[0] and p < kt.shape[0] * blk:  # else the backend raises below
            self.saved.append((layer, p, kt[p // blk, :, p % blk].copy(), vc[p].copy()))
        self.inner.kv_write(cache, layer, p, k, v)
        self._rec("kv_write", dict(k=k, v=v, k_panels=kt, v_cache=vc), (ik, iv), (), const=(layer,), pos=(p,))

    def attention(self, q, cache, layer, pos0, n_heads, n_kv_heads, head_dim, scale, window=0, softcap=0.0):
        layer = self._cache(cache, layer)
        i = self._in(q)
        if q.shape[0] != 1:
            raise Unsupported(f"attention of {q.shape[0]} rows")
        p = self._position(pos0)
        if cache.keys_are_values:
            raise Unsupported("attention over a cache whose keys are its values (only mla_attention replays)")
        out = self.inner.attention(q, cache, layer, p, n_heads, n_kv_heads, head_dim, scale, window, softcap)
        o = self._out(out)
        const = (layer, int(n_heads), int(n_kv_heads), int(head_dim), float(scale), int(window or 0),
                 float(np.float32(softcap or 0.0)))
        self._rec("attention", dict(q=q, k_panels=cache.k[layer], v_cache=cache.v[layer], out=out,
                                    n_heads=const[1], n_kv_heads=const[2], head_dim=const[3], scale=const[4],
                                    window=const[5], softcap=const[6]), (i,), (o,), const=const, pos=(p,))
        return out

    def moe_ffn(self, x, router, gate_exps, up_exps, down_exps, routing):
        """One node that routes inside the replay (the experts a token uses come from its data)."""
        from .moe import native_args

        args = native_args(router, gate_exps, up_exps, down_exps, routing, native_type)
        if args is None or not hasattr(_C.DecodeGraph, "add_moe_ffn"):
            raise Unsupported("moe_ffn: an expert weight type without a native kernel (no replay node)")
        i = self._in(x)
        out = self.inner.moe_ffn(x, router, gate_exps, up_exps, down_exps, routing)
        o = self._out(out)
        self._rec("moe_ffn", dict(x=x, out=out, **args), (i,), (o,),
                  weights=tuple(id(t.raw) for t in (router, gate_exps, up_exps, down_exps)), const=routing.key())
        return out

    def mla_attention(self, q, kv, cache, layer, pos0, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope, n_rot,
                      freq_base, neox, scaling, scale):
        """One node: the latent attention, its cache write included (positions move with pos0)."""
        from .mla import native_args

        layer = self._cache(cache, layer)
        vec = self.inner._vector(kv_norm)
        args = native_args(wk_b, wv_b, vec, eps, n_heads, qk_nope, n_rot, freq_base, neox, scaling, scale,
                           native_type)
        if args is None or not hasattr(_C.DecodeGraph, "add_mla_attention"):
            raise Unsupported("mla_attention: a weight type without a native kernel (no replay node)")
        iq, ikv = self._in(q), self._in(kv)
        if q.shape[0] != 1:
            raise Unsupported(f"mla_attention of {q.shape[0]} rows")
        p = self._position(pos0)
        vc = cache.v[layer]  # (n_ctx, R + r): the one copy, keys and values
        if 0 <= p < vc.shape[0]:  # the trace's cache write, undone afterwards
            self.saved.append((layer, p, None, vc[p].copy()))
        out = self.inner.mla_attention(q, kv, cache, layer, p, wk_b, wv_b, kv_norm, eps, n_heads, qk_nope, n_rot,
                                       freq_base, neox, scaling, scale)
        o = self._out(out)
        const = (layer, int(n_heads), int(qk_nope), int(n_rot), float(freq_base), bool(neox), float(eps),
                 float(scale), None if scaling is None else scaling.key())
        self._rec("mla_attention", dict(q=q, kv=kv, out=out, cache=vc, **args), (iq, ikv), (o,),
                  weights=(id(wk_b.raw), id(wv_b.raw), id(vec)), const=const, pos=(p,))
        return out

    # -- everything else -----------------------------------------------------------
    def from_numpy(self, x):  # a constant made in Python: fine until an op reads it (refused there)
        return self.inner.from_numpy(x)

    def to_numpy(self, x):
        return x

    def kv_cache(self, *a, **k):
        raise Unsupported("kv_cache inside a forward pass")

    def prepare(self, *a, **k):
        raise Unsupported("prepare inside a forward pass")

    def make_decode_step(self, *a, **k):
        raise Unsupported("make_decode_step inside a forward pass")

    def __getattr__(self, name):
        attr = getattr(self.inner, name)  # AttributeError for what the backend lacks too
        if callable(attr):
            def refuse(*a, **k):
                raise Unsupported(f"op {name!r} is not recorded")
            return refuse
        return attr

    def restore_cache(self) -> None:
        """Put back the KV cache contents the trace overwrote (latest first)."""
        for layer, p, k, v in reversed(self.saved):
            if k is not None:  # (None: a cache whose keys are its values)
                kt = self.cache.k[layer]
                blk = kt.shape[-1]
                kt[p // blk, :, p % blk] = k
            self.cache.v[layer][p] = v
        self.saved.clear()


def _regular(op: Op):
    """The recording method of an op the spec describes as regular (see ops_spec.py): run it
    on the real backend, record its activation inputs, its vector weight as float32, its
    scalar constants (as the kernel gets them) and its one fresh output, replayed by
    ``DecodeGraph.add_<op.graph>``."""
    def method(self, *args, **kwargs):
        vals = dict(zip(op.params, args))
        vals.update(kwargs)
        ins = tuple(self._in(vals[a]) for a in op.acts)
        if op.same_shape and len({vals[a].shape for a in op.acts}) > 1:
            raise Unsupported(f"{op.name} of shapes {[vals[a].shape for a in op.acts]} (broadcasting)")
        out = getattr(self.inner, op.name)(*args, **kwargs)
        o = self._out(out)
        gargs = {op.graph_names.get(a, a): vals[a] for a in op.acts}
        weights = ()
        if op.vec:
            vec = self.inner._vector(vals[op.vec])
            gargs[op.graph_names.get(op.vec, op.vec)] = vec
            weights = (id(vec),)
        consts = []
        for c, conv in op.consts:
            v = float(np.float32(vals[c])) if conv == "f32" else float(vals[c])
            gargs[op.graph_names.get(c, c)] = v
            consts.append(v)
        gargs.update(op.graph_fixed)
        gargs["out"] = out
        self._rec(op.graph, gargs, ins, (o,), weights=weights, const=tuple(consts) + tuple(op.graph_fixed.values()))
        return out

    method.__name__ = op.name
    method.__doc__ = f"{op.doc} (recorded from the op spec)"
    P = inspect.Parameter
    method.__signature__ = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD)] + [P(a, P.POSITIONAL_OR_KEYWORD) for a in op.params])
    return method


for _op in BY_NAME.values():
    if _op.record == "regular":
        setattr(Recorder, _op.name, _regular(_op))


def _trace(inner: CpuBackend, forward, cache: KVCache, token: int, pos0: int):
    rec = Recorder(inner, cache)
    try:
        out = forward(rec, np.array([token], dtype=np.int32), pos0, cache, True)
        o = rec._in(out)
        if out.ndim != 2 or out.shape[0] != 1:
            raise Unsupported(f"forward returned shape {out.shape}, expected (1, n_vocab)")
    finally:
        rec.restore_cache()
    return rec, o, out


def _positions(a: _Rec, b: _Rec, pa: int, pb: int) -> list[tuple[int, bool]]:
    """(offset, relative) of each position argument, from the same op in two traces."""
    res = []
    for x, y in zip(a.pos, b.pos):
        if x == y:
            res.append((x, False))          # a fixed position
        elif x - pa == y - pb:
            res.append((x - pa, True))      # pos0 + offset
        else:
            raise Unsupported(f"{a.kind}: position {x} at pos0={pa} but {y} at pos0={pb}")
    return res


def trace_decode_step(inner: CpuBackend, forward, cache: KVCache):
    """Trace ``forward`` twice and check the tapes agree; returns (tape, positions, output array).

    Raises :class:`Unsupported` when the step cannot be replayed.
    """
    n_ctx = int(cache.n_ctx)
    if n_ctx < 2:
        raise Unsupported("a KV cache of fewer than 2 positions")
    # two different tokens at two different positions (see the module doc). Small positions
    # keep the traced attention cheap (a trace at position p reads p keys per layer), so the
    # first token does not cost more with a longer context.
    (ta, pa), (tb, pb) = (1, 0), (2, 1)
    ra, oa, out = _trace(inner, forward, cache, ta, pa)
    rb, ob, _ = _trace(inner, forward, cache, tb, pb)
    if len(ra.tape) != len(rb.tape) or oa != ob:
        raise Unsupported("the forward pass differs between two traced tokens")
    if [b.shape for b in ra.bufs] != [b.shape for b in rb.bufs]:
        raise Unsupported("buffer shapes differ between two traced tokens")
    positions = []
    for a, b in zip(ra.tape, rb.tape):
        if a.structure() != b.structure():
            raise Unsupported(f"op {a.kind} differs between two traced tokens")
        if a.kind == "embed" and (a.token, b.token) != (ta, tb):
            raise Unsupported("an embedding lookup of something other than the step's token")
        positions.append(_positions(a, b, pa, pb))
    return ra.tape, positions, out


def build_graph(tape, positions, out):
    g = _C.DecodeGraph()
    for rec, pos in zip(tape, positions):
        args = dict(rec.args)
        if pos:
            (off, rel), = pos
            args.update(pos_off=off, pos_rel=rel)
        getattr(g, "add_" + rec.kind)(**args)
    g.set_output(out)
    return g


def build_decode_step(inner: CpuBackend, forward, cache: KVCache):
    """``DecodeGraph.step`` for ``forward`` on ``cache``, or ``None`` when it cannot be replayed.

    Either way ``inner.decode_step_status`` says which, and why (``generate -v`` prints it).
    """
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        inner.decode_step_status = f"op by op ({DISABLE_ENV} is set)"
        return None
    if not hasattr(_C, "DecodeGraph"):
        inner.decode_step_status = "op by op (the native extension has no DecodeGraph: rebuild it)"
        return None
    try:
        tape, positions, out = trace_decode_step(inner, forward, cache)
        graph = build_graph(tape, positions, out)
    except Unsupported as e:
        inner.decode_step_status = f"op by op: the native decode step cannot replay this model ({e})"
        log.info("decode step runs op by op: %s", e)
        return None
    except Exception as e:  # a forward pass that fails at the trace positions: let op by op report it
        inner.decode_step_status = f"op by op: tracing failed ({type(e).__name__}: {e})"
        log.warning("decode step runs op by op: tracing failed (%s: %s)", type(e).__name__, e)
        return None
    inner.decode_step_status = f"native single-call decode step ({graph.n_nodes} ops)"
    log.debug("decode step replayed natively: %d ops", graph.n_nodes)
    return graph.step


def profile_by_kind(step, token_id: int, pos0: int, reps: int = 10) -> dict[str, tuple[int, float]]:
    """``{op kind: (nodes, microseconds per step)}`` of a replayed step, most expensive first.

    ``step`` is what :func:`build_decode_step` returned. Runs ``reps`` steps at ``pos0``
    (writing the KV cache there, as a step does), every node on its own: matmuls that a plain
    step runs as one group (``DecodeGraph.matmul_groups``) are timed one by one.
    """
    agg: dict[str, list] = {}
    for kind, ns in step.__self__.profile(int(token_id), int(pos0), int(reps)):
        a = agg.setdefault(kind, [0, 0.0])
        a[0] += 1
        a[1] += ns / reps / 1e3
    return {k: (n, us) for k, (n, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])}
