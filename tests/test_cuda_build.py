"""The CUDA sources compile, and the CMake switch behaves, on machines without a GPU.

* Every ``kernels/cuda/*.cu`` is compiled with ``nvcc -c`` for one architecture
  (``sm_80``; ``PYENGINE_CUDA_TEST_ARCHS=80,90`` for more), the way the build does:
  the kernels as CUDA, ``bind_cuda.cu`` (host-only pybind11 code) with the host
  compiler. Skipped, with the reason, when ``nvcc`` is not on PATH.
* ``kernels/cuda/cuda.cmake`` honours ``PYENGINE_CUDA`` (option and environment): AUTO
  builds CUDA only with nvcc *and* a GPU (a fake ``nvidia-smi`` stands in for one), and
  only for the GPU's architecture unless ``PYENGINE_CUDA_ARCHS`` names others.

The kernels' behaviour is tested in test_cuda.py (on a GPU, and on the CPU emulator).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "kernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
CMAKE = shutil.which("cmake")
ARCHS = [a.strip() for a in os.environ.get("PYENGINE_CUDA_TEST_ARCHS", "80").split(",") if a.strip()]


def test_sources_present():
    names = {p.name for p in SOURCES}
    assert {"bind_cuda.cu", "matmul.cu", "ops.cu", "attention.cu", "runtime.cu"} <= names, names


def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: the CUDA sources cannot be compile-checked here")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(src: Path, arch: str, tmp_path: Path):
    obj = tmp_path / (src.name + ".o")
    if src.name == "bind_cuda.cu":
        import pybind11

        # what cuda.cmake does: host-only C++, compiled by the host compiler (through nvcc here)
        cmd = [NVCC, "-x", "c++", "-std=c++17", "-O2", "-Xcompiler=-fPIC", f"-I{CUDA_DIR}",
               f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}",
               "-DPYENGINE_WITH_CUDA=1", "-c", src, "-o", obj]
    else:
        cmd = [NVCC, "-std=c++17", "-O3", f"-arch=sm_{arch}", "-Xcompiler=-fPIC", f"-I{CUDA_DIR}",
               "-c", src, "-o", obj]
    rc, out = _run(cmd)
    assert rc == 0, f"{' '.join(map(str, cmd))}\n{out}"
    assert obj.stat().st_size > 0


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_ptx_has_the_kernels_and_dp4a(tmp_path: Path):
    """The kernels really are device code, and the tuned matmul uses the dp4a instruction on the GPU."""
    ptx = tmp_path / "matmul.ptx"
    rc, out = _run([NVCC, "-std=c++17", "-O3", "-arch=sm_80", "-ptx", CUDA_DIR / "matmul.cu", "-o", ptx])
    assert rc == 0, out
    text = ptx.read_text()
    entries = [line for line in text.splitlines() if ".entry" in line]
    for kernel in ("matmul_q8_kernel", "matmul_simple_kernel", "matmul_float_kernel", "quantize_act_kernel",
                   "get_rows_kernel", "get_rows_simple_kernel"):
        assert any(kernel in e for e in entries), f"{kernel} is not a kernel entry in the PTX"
    # 12 quantized types x 4 token-tile widths
    assert sum("matmul_q8_kernel" in e for e in entries) == 48
    assert "dp4a.s32.s32" in text


def _configure(tmp_path: Path, *args: str, env_cuda: str | None = None, smi: str | None = None,
               env: dict | None = None) -> tuple[int, str]:
    """Configure the project into tmp_path/build; ``smi`` is the body of a fake ``nvidia-smi``
    put first on PATH (so the GPU detection is exercised without a GPU)."""
    import pybind11

    e = dict(os.environ)
    for k in ("PYENGINE_CUDA", "PYENGINE_CUDA_ARCHS", "CUDAARCHS"):
        e.pop(k, None)
    if env_cuda is not None:
        e["PYENGINE_CUDA"] = env_cuda
    if smi is not None:
        fake = tmp_path / "fakebin"
        fake.mkdir()
        (fake / "nvidia-smi").write_text("#!/bin/sh\n" + smi + "\n")
        (fake / "nvidia-smi").chmod(0o755)
        e["PATH"] = f"{fake}{os.pathsep}{e.get('PATH', '')}"
    e.update(env or {})
    return _run([CMAKE, "-S", ROOT, "-B", tmp_path / "build", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", *args],
                env=e)


def _summary(out: str) -> str:
    """The one line the build prints about what it compiles."""
    lines = [ln for ln in out.splitlines() if "pyengine: building pyengine._C:" in ln]
    assert len(lines) == 1, out
    return lines[0]


def _cuda_archs_in_build(tmp_path: Path) -> set[str]:
    import re

    build = tmp_path / "build"
    found: set[str] = set()
    for f in [build / "build.ninja", *build.glob("CMakeFiles/_C.dir/flags.make")]:  # Ninja or Makefiles
        if f.is_file():
            found |= set(re.findall(r"arch=compute_(\d+)", f.read_text()))
    return found


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
def test_cmake_cuda_off_from_environment(tmp_path: Path):
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=ON", env_cuda="OFF")
    assert rc == 0, out
    assert "; CUDA off (environment variable PYENGINE_CUDA=OFF)" in _summary(out)
    assert not _cuda_archs_in_build(tmp_path)


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
def test_cmake_rejects_bad_value(tmp_path: Path):
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=maybe")
    assert rc != 0 and "option PYENGINE_CUDA='MAYBE' is not one of AUTO, ON, OFF" in out


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
def test_cmake_auto_without_gpu_skips_cuda(tmp_path: Path):
    """AUTO on a machine whose nvidia-smi finds no driver: no CUDA, and the line says why and how."""
    smi = 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver" >&2; exit 9'
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=AUTO", smi=smi)
    assert rc == 0, out
    line = _summary(out)
    if NVCC is None:
        assert "CUDA off: no nvcc found" in line, line
    else:
        assert line.endswith("CUDA off: nvcc found but nvidia-smi lists no usable NVIDIA GPU/driver "
                             "(set PYENGINE_CUDA=ON to build anyway)"), line
    assert not _cuda_archs_in_build(tmp_path)


@pytest.mark.skipif(CMAKE is None or NVCC is None, reason="cmake or nvcc not on PATH")
def test_cmake_auto_with_gpu_builds_only_its_architecture(tmp_path: Path):
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=AUTO", smi="echo 8.6; echo 8.6")
    assert rc == 0, out
    line = _summary(out)
    assert "CUDA on for architectures 86 (from the GPUs present) because PYENGINE_CUDA=AUTO and nvidia-smi " \
           "reports compute capability 8.6;" in line, line
    assert _cuda_archs_in_build(tmp_path) == {"86"}


@pytest.mark.skipif(CMAKE is None or NVCC is None, reason="cmake or nvcc not on PATH")
def test_cmake_on_builds_named_architectures_without_gpu(tmp_path: Path):
    rc, out = _configure(tmp_path, smi="exit 9", env_cuda="ON", env={"PYENGINE_CUDA_ARCHS": "80, 90"})
    assert rc == 0, out
    assert "CUDA on for architectures 80,90 (from PYENGINE_CUDA_ARCHS) because environment variable " \
           "PYENGINE_CUDA=ON" in _summary(out)
    assert _cuda_archs_in_build(tmp_path) == {"80", "90"}
