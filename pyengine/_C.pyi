"""Type stubs for pyengine._C, the compiled extension (see csrc/module.cpp).

Each area of the extension keeps its own clearly marked block below; edit only yours.
Arrays are NumPy arrays; every function checks dtype, shape and contiguity and raises
TypeError / ValueError with a one-line message on a mismatch.
"""
from typing import Any

import numpy as np
import numpy.typing as npt

has_cuda: bool

# ==== CPU matmul kernels, thread pool, CPU info (csrc/bind_cpu.cpp) =========================
def matmul(
    type_name: str,
    w: npt.NDArray[np.uint8],
    rows: int,
    cols: int,
    x: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    variant: str = "auto",
) -> None:
    """out[:] = x @ W.T for the GGUF weight W (rows, cols) of type_name.

    type_name: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_XS
    (pyengine.kernels.NATIVE_TYPES).
    w: raw GGUF bytes, C-contiguous, exactly rows * row_bytes(cols) long.
    x: float32 (n, cols) C-contiguous; out: float32 (n, rows) C-contiguous, writeable.
    variant: "generic", "avx2", "avx512" or "auto" (best available; $PYENGINE_CPU_VARIANT
    overrides "auto"). Releases the GIL; runs on the thread pool.
    """

def get_rows(
    type_name: str,
    w: npt.NDArray[np.uint8],
    rows: int,
    cols: int,
    ids: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """out[i] = dequantized row ids[i] of W (rows, cols); ids int32 (n,), out float32 (n, cols).
    IndexError if an id is outside [0, rows)."""

def cpu_features() -> dict[str, Any]:
    """CPUID flags: x86, sse3, ssse3, sse4_1, sse4_2, popcnt, avx, avx2, fma, f16c, bmi2,
    avx_vnni, avx512f, avx512bw, avx512vl, avx512dq, avx512cd, avx512_vnni, avx512_bf16,
    avx512_vbmi, avx512_ifma, os_avx512 (bool) and logical_cores (int)."""

def kernel_variants() -> list[str]:
    """Matmul kernel variants this CPU and build run, slowest first: "generic"[, "avx2"][, "avx512"]."""

def set_num_threads(n: int) -> None:
    """Threads of the native thread pool (n <= 0: one per core; default $PYENGINE_NUM_THREADS or all cores)."""

def get_num_threads() -> int: ...

def set_spin_us(us: int) -> None:
    """How long idle pool workers spin before sleeping, in microseconds (default 200, $PYENGINE_SPIN_US)."""

# ==== end CPU matmul kernels ====================================================================

# ==== CPU ops (csrc/bind_ops.cpp) -- maintained by the ops helper ================================
# ==== end CPU ops ===============================================================================
