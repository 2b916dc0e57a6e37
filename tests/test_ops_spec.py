"""The op spec (pyengine/backends/ops_spec.py) against what every tier implements.

A new op is one spec entry plus its kernels; this test names the tier that lacks it or
spells a parameter differently, and a replayable op without its DecodeGraph builder or
node kind.
"""
from __future__ import annotations

import inspect

import pytest

from pyengine.backends.base import Backend
from pyengine.backends.ops_spec import BY_NAME, EXTRAS, OPS

from conftest import native_built


def params_of(cls, name):
    fn = getattr(cls, name)
    names = [p.name for p in inspect.signature(fn).parameters.values()]
    return tuple(n for n in names if n != "self")


def backend_classes():
    from pyengine.backends.cuda_backend import CudaBackend
    from pyengine.backends.numba_backend import NumbaBackend
    from pyengine.backends.numpy_backend import NumpyBackend

    out = {"base": Backend, "numpy": NumpyBackend, "numba": NumbaBackend, "cuda": CudaBackend}
    if native_built():
        from pyengine.backends.cpu_backend import CpuBackend
        from pyengine.backends.cpu_graph import Recorder

        out.update(cpu=CpuBackend, recorder=Recorder)
    return out


CLASSES = backend_classes()


@pytest.mark.parametrize("tier", sorted(CLASSES))
@pytest.mark.parametrize("op", [o.name for o in OPS])
def test_every_tier_implements_every_op(tier, op):
    cls = CLASSES[tier]
    spec = BY_NAME[op]
    assert hasattr(cls, op), f"{tier} backend lacks op {op!r}"
    got = params_of(cls, op)
    # a tier may add its own trailing options (e.g. cuda's n_splits), never rename or reorder
    assert got[:len(spec.params)] == spec.params, f"{tier}.{op}{got} != spec {spec.params}"
    if tier != "base":
        assert getattr(cls, op) is not getattr(Backend, op), f"{tier} does not implement {op!r}"


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
@pytest.mark.parametrize("op", sorted(BY_NAME))
def test_replayable_ops_have_graph_builders(op):
    from pyengine import _C
    from pyengine.backends.cpu_backend import CpuBackend
    from pyengine.backends.cpu_graph import Recorder

    spec = BY_NAME[op]
    if spec.graph is None:
        pytest.skip(f"{op} is not replayed")
    assert hasattr(_C.DecodeGraph, "add_" + spec.graph)
    if spec in EXTRAS:
        assert hasattr(CpuBackend, op) and hasattr(Recorder, op)
    kinds = set(_C.DecodeGraph.kinds())
    # the elementwise builder makes one node kind per op name; the others are named as the op
    assert (op if spec.graph == "elementwise" else spec.graph) in kinds


@pytest.mark.skipif(not native_built(), reason="needs pyengine._C")
def test_every_graph_kind_replays_a_spec_op():
    from pyengine import _C

    names = {o.name for o in OPS + EXTRAS}
    assert set(_C.DecodeGraph.kinds()) <= names
