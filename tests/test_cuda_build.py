"""The CUDA sources compile, and the CMake switch behaves, on machines without a GPU.

* Every ``kernels/cuda/*.cu`` is compiled with ``nvcc -c`` for one architecture
  (``sm_80``; ``PYENGINE_CUDA_TEST_ARCHS=80,90`` for more), the way the build does:
  the kernels as CUDA, ``bind_cuda.cu`` (host-only pybind11 code) with the host
  compiler. Skipped, with the reason, when ``nvcc`` is not on PATH.
* ``kernels/cuda/cuda.cmake`` honours ``PYENGINE_CUDA`` (option and environment).

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
    for kernel in ("matmul_q8_kernel", "matmul_simple_kernel", "matmul_float_kernel", "quantize_q8_1_kernel",
                   "get_rows_kernel", "get_rows_simple_kernel"):
        assert any(kernel in e for e in entries), f"{kernel} is not a kernel entry in the PTX"
    # 12 quantized types x 4 token-tile widths
    assert sum("matmul_q8_kernel" in e for e in entries) == 48
    assert "dp4a.s32.s32" in text


def _configure(tmp_path: Path, *args: str, env_cuda: str | None = None) -> tuple[int, str]:
    import pybind11

    env = dict(os.environ)
    env.pop("PYENGINE_CUDA", None)
    if env_cuda is not None:
        env["PYENGINE_CUDA"] = env_cuda
    return _run([CMAKE, "-S", ROOT, "-B", tmp_path / "build", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", *args],
                env=env)


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
def test_cmake_cuda_off_from_environment(tmp_path: Path):
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=ON", env_cuda="OFF")
    assert rc == 0, out
    assert "pyengine: CUDA kernels OFF (environment variable PYENGINE_CUDA=OFF)" in out


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
def test_cmake_rejects_bad_value(tmp_path: Path):
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=maybe")
    assert rc != 0 and "option PYENGINE_CUDA='MAYBE' is not one of AUTO, ON, OFF" in out


@pytest.mark.skipif(CMAKE is None or NVCC is None, reason="cmake or nvcc not on PATH")
def test_cmake_auto_finds_nvcc(tmp_path: Path):
    rc, out = _configure(tmp_path, "-DPYENGINE_CUDA=AUTO", "-DCMAKE_CUDA_ARCHITECTURES=80")
    assert rc == 0, out
    assert "pyengine: CUDA kernels ON (option PYENGINE_CUDA=AUTO; nvcc" in out and "architectures 80)" in out
