"""Build kernels/cuda/*.cu against the CPU emulator (cuda_emu.h) as a Python extension.

Tests only: it lets the CUDA kernels, their bindings and the CUDA backend run, on the
CPU, on machines without a GPU. The module (``pyengine_cuda_emu``) has the same API as
the CUDA part of ``pyengine._C`` (``.cuda.*``, ``.cuda_device_info()``).

Builds are cached by a hash of the sources and flags (default cache directory:
``$PYENGINE_CUDA_EMU_CACHE`` or ``<tmp>/pyengine-cuda-emu``).
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUDA_DIR = HERE.parent
MODULE = "pyengine_cuda_emu"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def sources() -> list[Path]:
    return sorted(CUDA_DIR.glob("*.cu")) + [HERE / "emu_runtime.cpp", HERE / "emu_module.cpp"]


def _hashed_inputs() -> list[Path]:
    files = set(sources())
    for d in (CUDA_DIR, HERE):
        for pat in ("*.cuh", "*.h"):
            files.update(d.glob(pat))
    files.add(CUDA_DIR.parent.parent / "csrc" / "rope_scaling.h")  # included by kernels.h
    return sorted(files)


def _flags(sanitize: bool) -> list[str]:
    import pybind11

    flags = ["-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
             "-DPYENGINE_CUDA_EMU=1", "-DPYENGINE_CUDA_ARCHS=\"emulated\"",
             f"-I{CUDA_DIR}", f"-I{HERE}",
             f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    if sanitize:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    return flags


def build(cache_dir: str | os.PathLike | None = None, sanitize: bool | None = None) -> Path:
    """Compile (or reuse) the emulator module; returns the path of the shared object.

    ``sanitize`` (default: ``$PYENGINE_CUDA_EMU_ASAN``) adds AddressSanitizer, which then
    catches out-of-bounds reads and writes of the kernels; Python must run with
    ``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``.
    """
    if sanitize is None:
        sanitize = os.environ.get("PYENGINE_CUDA_EMU_ASAN", "") not in ("", "0")
    cxx = compiler()
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX)")
    flags = _flags(sanitize)
    h = hashlib.sha256()
    h.update(repr((cxx, flags, sys.version_info[:2], sanitize)).encode())
    for f in _hashed_inputs():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    root = Path(cache_dir or os.environ.get("PYENGINE_CUDA_EMU_CACHE")
                or Path(tempfile.gettempdir()) / "pyengine-cuda-emu")
    out = root / h.hexdigest()[:16] / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent))

    def compile_one(src: Path) -> Path:
        obj = work / (src.name + ".o")
        cmd = [cxx, *flags, "-x", "c++", str(src), "-c", "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"emulator build failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        objs = list(ex.map(compile_one, sources()))
    tmp_so = work / out.name
    cmd = [cxx, "-shared", *(["-fsanitize=address"] if sanitize else []), *map(str, objs), "-o", str(tmp_so)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"emulator link failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    os.replace(tmp_so, out)  # atomic: a concurrent build sees the whole file or none
    shutil.rmtree(work, ignore_errors=True)
    return out


def load(path: str | os.PathLike):
    """Import the built module from ``path``."""
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    p = build(sanitize="--asan" in sys.argv)
    print(p)
