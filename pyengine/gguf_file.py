"""Reading a GGUF file: metadata as plain Python, tensors as memory-mapped QTensors.

GGUF (little-endian) is laid out as::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x      key (u64 len + utf-8) | value type u32 | value
    n_tensors x name (u64 len + utf-8) | n_dims u32 | ne[n_dims] u64 | ggml type u32 | offset u64
    padding to `general.alignment` (default 32)
    tensor data (each tensor at data_start + offset)

``ne[0]`` is the contiguous dimension, so a GGUF shape ``[cols, rows]`` becomes the
NumPy shape ``(rows, cols)``.

Why not ``gguf.GGUFReader``? It builds one NumPy view per array element, which takes
over 10 s for Gemma's 262,144-entry vocabulary. This parser reads numeric arrays with
one ``np.frombuffer`` each and is cross-checked against ``GGUFReader`` in the tests;
the value-type and tensor-type numbering comes from the ``gguf`` package itself.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from .errors import ModelFileError
from .ggml_types import BY_ID, SUPPORTED
from .tensor import QTensor

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

_SCALAR = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.FLOAT64: "<f8",
    GGUFValueType.BOOL: "<u1",
}


class _Truncated(Exception):
    pass


class _TooDeep(Exception):
    pass


#: arrays of arrays deeper than this are refused (no model uses more than 2)
MAX_ARRAY_DEPTH = 8


class _Cursor:
    """Sequential little-endian reads over the memory map."""

    def __init__(self, buf: np.ndarray):
        self.buf = buf
        self.mv = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise _Truncated
        out = self.mv[self.pos:end]
        self.pos = end
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise _TooDeep
            etype = GGUFValueType(self.u32())
            count = self.u64()
            # every element takes at least this many bytes: a count the rest of the file
            # cannot hold is a truncation, found before looping over it
            least = 8 if etype == GGUFValueType.STRING else 12 if etype == GGUFValueType.ARRAY else 0
            if least and count * least > len(self.buf) - self.pos:
                raise _Truncated
            if etype == GGUFValueType.STRING:
                return self._strings(count)
            if etype == GGUFValueType.ARRAY:
                return [self.value(GGUFValueType.ARRAY, depth + 1) for _ in range(count)]
            dt = np.dtype(_SCALAR[etype])
            arr = np.frombuffer(self.take(count * dt.itemsize), dtype=dt).copy()
            return arr.astype(bool) if etype == GGUFValueType.BOOL else arr
        dt = np.dtype(_SCALAR[vtype])
        v = np.frombuffer(self.take(dt.itemsize), dtype=dt)[0]
        if vtype == GGUFValueType.BOOL:
            return bool(v)
        return v.item()

    def _strings(self, count: int) -> list[str]:
        # hot spot of loading: 262k vocabulary strings; unpack lengths in place.
        out = []
        buf, pos, unpack = self.mv, self.pos, struct.unpack_from
        size = len(self.buf)
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            n = unpack("<Q", buf, pos)[0]
            pos += 8
            if pos + n > size:
                raise _Truncated
            out.append(str(buf[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, QTensor]
    file_size: int
    data_offset: int
    _mmap: np.ndarray = field(repr=False, default=None)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """``metadata["<arch>.<suffix>"]``, e.g. ``arch_key("block_count")``."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ModelFileError(f"{self.path}: metadata key {key!r} is missing")
        return self.metadata[key]

    def expect(self, ok: bool, key: str, what: str) -> None:
        """Raise a one-line ModelFileError about metadata ``key`` unless ``ok``; ``what``: what was expected."""
        if not ok:
            raise ModelFileError(f"{self.path}: metadata key {key!r} = {_short(self.metadata.get(key))}: "
                                 f"expected {what}")

    def expect_scalars(self, *suffixes: str) -> None:
        """An architecture that reads one value for ``<arch>.<suffix>`` (default: the keys
        other architectures give per layer) refuses a per-layer array in one line."""
        for suffix in suffixes or PER_LAYER:
            key = f"{self.architecture}.{suffix}"
            v = self.metadata.get(key)
            if v is not None and not _is_int(v):
                raise ModelFileError(f"{self.path}: metadata key {key!r} must be one integer for architecture "
                                     f"{self.architecture!r}, got {_short(v)}")

    def check_shapes(self, expected: dict[str, "tuple[int, ...] | Want"]) -> None:
        """Check tensors against what the architecture's config implies.

        ``expected`` maps a tensor name to its NumPy shape (``(rows, cols)``, ``(n,)``) or
        to a :class:`Want` (shape, allowed types, optional). A missing, mis-shaped or
        mis-typed tensor is one ModelFileError naming it and what was expected.
        """
        for name, want in expected.items():
            if not isinstance(want, Want):
                want = Want(tuple(want))
            t = self.tensors.get(name)
            if t is None:
                if want.optional:
                    continue
                self.tensor(name)  # raises the "missing" error
            if t.shape != tuple(int(d) for d in want.shape):
                raise ModelFileError(f"{self.path}: tensor {name!r} has shape {t.shape}, expected "
                                     f"{tuple(want.shape)} from the model's configuration")
            if want.types is not None and t.type_name not in want.types:
                raise ModelFileError(f"{self.path}: tensor {name!r} has type {t.type_name}, expected "
                                     f"{' or '.join(want.types)}")

    def tensor(self, name: str) -> QTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(f"{self.path}: tensor {name!r} is missing "
                                 f"(architecture {self.architecture})") from None


#: largest tensor dimension accepted (kernels index rows and columns with int32 ids/positions)
MAX_DIM = 2**31 - 1

_INT, _FLOAT, _STR, _STRS = "an integer", "a number", "a string", "an array of strings"
_BIG = 2**31 - 1
# Header values pyengine reads, by key ("{arch}." is the file's architecture): what they
# must be and their range. Out-of-range values are refused here, once, so that the
# architecture code and the kernels never see them.
_GENERAL_KEYS: dict[str, tuple] = {
    "general.architecture": (_STR,),
    "general.alignment": (_INT, 8, 2**24),  # and a power of two (GGUF spec: a multiple of 8)
    "tokenizer.ggml.model": (_STR,),
    "tokenizer.ggml.pre": (_STR,),
    "tokenizer.ggml.tokens": (_STRS,),
    "tokenizer.ggml.merges": (_STRS,),
    "tokenizer.chat_template": (_STR,),
}
for _k in ("bos", "eos", "eot", "eom", "unknown", "padding", "separator", "mask", "cls"):
    _GENERAL_KEYS[f"tokenizer.ggml.{_k}_token_id"] = (_INT,)  # the tokenizer checks the range
_ARCH_KEYS: dict[str, tuple] = {
    "context_length": (_INT, 1, _BIG),
    "embedding_length": (_INT, 1, 2**18),
    "block_count": (_INT, 1, 2**16),
    "feed_forward_length": (_INT, 1, 2**20),
    "vocab_size": (_INT, 1, _BIG),
    "attention.head_count": (_INT, 1, 2**16),
    "attention.head_count_kv": (_INT, 1, 2**16),
    "attention.key_length": (_INT, 1, 2**16),
    "attention.value_length": (_INT, 1, 2**16),
    "attention.sliding_window": (_INT, 0, _BIG),
    "attention.layer_norm_rms_epsilon": (_FLOAT, 0.0, 1.0),
    "attention.layer_norm_epsilon": (_FLOAT, 0.0, 1.0),
    "rope.dimension_count": (_INT, 1, 2**16),
    "rope.freq_base": (_FLOAT, 1e-6, 1e30),
    "rope.scaling.factor": (_FLOAT, 1e-6, 1e6),
    "rope.scaling.type": (_STR,),
    "final_logit_softcapping": (_FLOAT, 0.0, 1e30),
    "attn_logit_softcapping": (_FLOAT, 0.0, 1e30),
}


#: keys some architectures give per layer (one value per block): an integer array is
#: accepted here; an architecture that needs one value calls GGUFFile.expect_scalars()
PER_LAYER = ("feed_forward_length", "attention.head_count", "attention.head_count_kv")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_value(path: Path, key: str, v: Any, rule: tuple) -> None:
    kind = rule[0]
    if kind == _STR:
        ok = isinstance(v, str)
    elif kind == _STRS:
        ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
    elif kind == _INT:
        ok = _is_int(v)
    else:
        ok = _is_int(v) or isinstance(v, (float, np.floating))
    if not ok:
        got = f"an array" if isinstance(v, (list, np.ndarray)) else type(v).__name__
        raise ModelFileError(f"{path}: metadata key {key!r} must be {kind}, got {got} ({_short(v)})")
    if len(rule) == 3:
        lo, hi = rule[1], rule[2]
        if not (lo <= v <= hi):  # NaN fails too
            raise ModelFileError(f"{path}: metadata key {key!r} = {_short(v)} is out of range "
                                 f"(expected {lo}..{hi})")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Type and range of every header value pyengine reads (one ModelFileError naming the key)."""
    for key, rule in _GENERAL_KEYS.items():
        if key in metadata:
            _check_value(path, key, metadata[key], rule)
    align = metadata.get("general.alignment")
    if align is not None and align & (align - 1):
        raise ModelFileError(f"{path}: metadata key 'general.alignment' = {align} is not a power of two")
    arch = metadata.get("general.architecture")
    if arch:
        for suffix, rule in _ARCH_KEYS.items():
            key = f"{arch}.{suffix}"
            if key not in metadata:
                continue
            v = metadata[key]
            if suffix in PER_LAYER and isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu":
                for x in v.tolist():
                    _check_value(path, key, x, rule)
            else:
                _check_value(path, key, v, rule)
        heads = metadata.get(f"{arch}.attention.head_count")
        kv = metadata.get(f"{arch}.attention.head_count_kv")
        if _is_int(heads) and _is_int(kv) and heads % kv:
            raise ModelFileError(f"{path}: metadata key '{arch}.attention.head_count_kv' = {kv} must divide "
                                 f"'{arch}.attention.head_count' = {heads}")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        tokens = metadata.get("tokenizer.ggml.tokens")
        v = metadata.get(key)
        if v is not None and not (isinstance(v, np.ndarray) and v.ndim == 1
                                  and (tokens is None or len(v) == len(tokens))):
            n = len(tokens) if tokens is not None else "?"
            raise ModelFileError(f"{path}: metadata key {key!r} must be a numeric array of one value per "
                                 f"token ({n})")


@dataclass(frozen=True)
class Want:
    """What an architecture expects of one tensor: its NumPy shape, optionally its types."""

    shape: tuple[int, ...]
    types: tuple[str, ...] | None = None  # None: any type pyengine runs
    optional: bool = False


def open_gguf(path: str | os.PathLike, check_types: bool = True) -> GGUFFile:
    """Parse ``path``'s header and map its tensors; errors are one-line ModelFileErrors."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a .gguf file")
    size = path.stat().st_size
    if size < 24:
        raise ModelFileError(f"{path}: file is {size} bytes, too small to be a GGUF model")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot map file: {e}") from None
    cur = _Cursor(mm)
    try:
        cur.take(4)
        version = cur.u32()
        if version not in (2, 3):
            hint = " (big-endian GGUF is not supported)" if version > 0xFFFF else ""
            raise ModelFileError(f"{path}: unsupported GGUF version {version}{hint}; expected 2 or 3")
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_tensors > 10**6 or n_kv > 10**6:
            raise ModelFileError(f"{path}: corrupt header ({n_tensors} tensors, {n_kv} metadata keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.u32()
            if key in metadata:
                raise ModelFileError(f"{path}: metadata key {key!r} appears twice")
            try:
                metadata[key] = cur.value(vtype)
            except (ValueError, KeyError):
                raise ModelFileError(f"{path}: metadata key {key!r} has unknown value type {vtype}") from None
            except _TooDeep:
                raise ModelFileError(f"{path}: metadata key {key!r} nests arrays more than "
                                     f"{MAX_ARRAY_DEPTH} deep (corrupt header?)") from None
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if not 1 <= n_dims <= 4:
                raise ModelFileError(f"{path}: tensor {name!r} has {n_dims} dimensions, expected 1 to 4 "
                                     f"(corrupt header?)")
            ne = [cur.u64() for _ in range(n_dims)]
            ttype = cur.u32()
            offset = cur.u64()
            infos.append((name, ne, ttype, offset))
        header_end = cur.pos
    except _Truncated:
        raise ModelFileError(f"{path}: truncated file: the header runs past the end "
                             f"of the file ({size} bytes)") from None

    check_metadata(path, metadata)
    align = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    data_offset = (header_end + align - 1) // align * align
    tensors: dict[str, QTensor] = {}
    spans = []  # (start, end, name) of every tensor's bytes, relative to data_offset
    for name, ne, ttype, offset in infos:
        if name in tensors:
            raise ModelFileError(f"{path}: tensor {name!r} appears twice")
        gt = BY_ID.get(ttype)
        if gt is None:
            try:
                tname = GGMLQuantizationType(ttype).name
            except ValueError:
                tname = f"#{ttype}"
            raise ModelFileError(f"{path}: tensor {name!r} has type {tname}, which pyengine does not "
                                 f"support (supported: {', '.join(SUPPORTED)})")
        if check_types and gt.name not in SUPPORTED:
            raise ModelFileError(f"{path}: tensor {name!r} has type {gt.name}, which pyengine does not "
                                 f"support (supported: {', '.join(SUPPORTED)})")
        # Python ints: no wrap-around however large the declared dimensions are
        for d in ne:
            if not 1 <= d <= MAX_DIM:
                raise ModelFileError(f"{path}: tensor {name!r} has shape {ne} (GGUF order): every "
                                     f"dimension must be 1..{MAX_DIM}")
        if ne[0] % gt.block_size:
            raise ModelFileError(f"{path}: tensor {name!r}: row length {ne[0]} is not a multiple of "
                                 f"the {gt.name} block size {gt.block_size}")
        n_el = math.prod(ne)
        nbytes = n_el // gt.block_size * gt.type_size
        if offset % align:
            raise ModelFileError(f"{path}: tensor {name!r}: data offset {offset} is not a multiple of "
                                 f"the alignment {align}")
        start = data_offset + offset
        if start + nbytes > size:
            raise ModelFileError(f"{path}: truncated file: tensor {name!r} needs bytes {start}..{start + nbytes} "
                                 f"but the file has {size} (incomplete download?)")
        spans.append((offset, offset + nbytes, name))
        shape = tuple(int(d) for d in reversed(ne))
        tensors[name] = QTensor(name, gt.name, shape, mm[start:start + nbytes])
    # tensors must tile the data section: back to back, each padded to the alignment.
    # An overlap means two tensors share bytes; a gap means a size (type or shape) that
    # is not the one the file was written with.
    spans.sort()
    at = 0
    for lo, hi, name in spans:
        if lo < at:
            raise ModelFileError(f"{path}: tensor {name!r} (bytes {lo}..{hi} of the data section) "
                                 f"overlaps the tensor before it, which ends at {at}")
        if lo > at:
            raise ModelFileError(f"{path}: tensor {name!r} starts at byte {lo} of the data section but the "
                                 f"tensor before it ends at {at}: a tensor's type or shape does not match "
                                 f"its data")
        at = (hi + align - 1) // align * align
    if size > data_offset + at:
        raise ModelFileError(f"{path}: {size - data_offset - at} bytes follow the last tensor's data: a "
                             f"tensor's type or shape does not match its data (or the file is corrupt)")
    return GGUFFile(path, version, metadata, tensors, size, data_offset, mm)


def summarize_types(gf: GGUFFile) -> dict[str, tuple[int, int]]:
    """type name -> (tensor count, bytes)."""
    out: dict[str, list[int]] = {}
    for t in gf.tensors.values():
        c = out.setdefault(t.type_name, [0, 0])
        c[0] += 1
        c[1] += t.n_bytes
    return {k: (v[0], v[1]) for k, v in sorted(out.items(), key=lambda kv: -kv[1][1])}


def check_shapes(gf: GGUFFile, expected: dict) -> None:
    """``gf.check_shapes(expected)``: tensor name -> NumPy shape or :class:`Want` (see there)."""
    gf.check_shapes(expected)
