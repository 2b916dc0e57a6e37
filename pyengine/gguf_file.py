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

    def value(self, vtype: int) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype = GGUFValueType(self.u32())
            count = self.u64()
            if etype == GGUFValueType.STRING:
                return self._strings(count)
            if etype == GGUFValueType.ARRAY:
                return [self.value(GGUFValueType.ARRAY) for _ in range(count)]
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

    def tensor(self, name: str) -> QTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(f"{self.path}: tensor {name!r} is missing "
                                 f"(architecture {self.architecture})") from None


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
            try:
                metadata[key] = cur.value(vtype)
            except (ValueError, KeyError):
                raise ModelFileError(f"{path}: metadata key {key!r} has unknown value type {vtype}") from None
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if n_dims > 4:
                raise ModelFileError(f"{path}: tensor {name!r} has {n_dims} dimensions (corrupt header?)")
            ne = [cur.u64() for _ in range(n_dims)]
            ttype = cur.u32()
            offset = cur.u64()
            infos.append((name, ne, ttype, offset))
        header_end = cur.pos
    except _Truncated:
        raise ModelFileError(f"{path}: truncated file: the header runs past the end "
                             f"of the file ({size} bytes)") from None

    align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_offset = (header_end + align - 1) // align * align
    tensors: dict[str, QTensor] = {}
    for name, ne, ttype, offset in infos:
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
        n_el = int(np.prod(ne)) if ne else 1
        if ne and ne[0] % gt.block_size:
            raise ModelFileError(f"{path}: tensor {name!r}: row length {ne[0]} is not a multiple of "
                                 f"the {gt.name} block size {gt.block_size}")
        nbytes = n_el // gt.block_size * gt.type_size
        start = data_offset + offset
        if start + nbytes > size:
            raise ModelFileError(f"{path}: truncated file: tensor {name!r} needs bytes {start}..{start + nbytes} "
                                 f"but the file has {size} (incomplete download?)")
        shape = tuple(int(d) for d in reversed(ne))
        tensors[name] = QTensor(name, gt.name, shape, mm[start:start + nbytes])
    return GGUFFile(path, version, metadata, tensors, size, data_offset, mm)


def summarize_types(gf: GGUFFile) -> dict[str, tuple[int, int]]:
    """type name -> (tensor count, bytes)."""
    out: dict[str, list[int]] = {}
    for t in gf.tensors.values():
        c = out.setdefault(t.type_name, [0, 0])
        c[0] += 1
        c[1] += t.n_bytes
    return {k: (v[0], v[1]) for k, v in sorted(out.items(), key=lambda kv: -kv[1][1])}
