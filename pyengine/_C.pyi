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
    (pyengine.kernels.NATIVE_TYPES), or a load-time form of one of them (Q4_K_R, Q5_0_P, ...:
    pyengine.ggml_types.LOAD_FORMS) as repack() writes it.
    w: raw GGUF bytes, C-contiguous, exactly rows * row_bytes(cols) long.
    x: float32 (n, cols) C-contiguous; out: float32 (n, rows) C-contiguous, writeable.
    variant: "generic", "avx2", "avx512" or "auto" (best available; $PYENGINE_CPU_VARIANT
    overrides "auto"). Releases the GIL; runs on the thread pool.
    """

def repack(
    form: str,
    src: npt.NDArray[np.uint8],
    dst: npt.NDArray[np.uint8],
    cols: int,
    back: bool = False,
) -> None:
    """dst[:] = the rows (cols values each) of src, blocks of the GGUF type the load-time form
    ``form`` is made from (pyengine.ggml_types.LOAD_FORMS: Q4_K for Q4_K_R, Q5_0 for Q5_0_R and
    Q5_0_P, ...), rewritten into that form: the same values in the order a SIMD tier's lanes
    read them (kernels/cpu/quants.h: convert_form_row; a panel form 8 blocks at a time; spec:
    pyengine.quants.repack). back=True: the form's rows
    back into that type. Same size; dst may be src (in place). Releases the GIL."""

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
# Every op writes into `out` (caller-allocated float32, C-contiguous unless said); the GIL is
# released while it runs. Semantics: pyengine/backends/numpy_backend.py (the spec).
ATTN_KEY_BLOCK: int  # positions per key panel (64)

def ops_variants() -> list[str]:
    """Op-kernel variants this CPU runs, widest last ("generic"[, "avx2"][, "avx512"])."""

def ops_variant() -> str: ...
def set_ops_variant(name: str) -> str:
    """Switch the op-kernel variant (tests, benchmarks); returns the previous one."""

def rmsnorm(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float, out: npt.NDArray[np.float32]) -> None:
    """out = x / sqrt(mean(x^2) + eps) * w over each group of len(w) values of x (n, k*len(w))."""

def rmsnorm_add(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float, residual: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
    """out = residual + rmsnorm(x, w, eps)."""

def add_rmsnorm(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float, sum_out: npt.NDArray[np.float32], norm_out: npt.NDArray[np.float32]) -> None:
    """sum_out = a + b; norm_out = rmsnorm(sum_out, w, eps)."""

def rope_table(
    positions: npt.NDArray[np.float64],
    freq_base: float,
    n_rot: int,
    cos_out: npt.NDArray[np.float32],
    sin_out: npt.NDArray[np.float32],
    freq_factors: npt.NDArray[np.float32] | None = None,
    freq_scale: float = 1.0,
    ext_factor: float = 0.0,
    attn_factor: float = 1.0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    n_ctx_orig: int = 0,
) -> None:
    """cos/sin (n, n_rot/2) of pos * freq_base**(-2i/n_rot) (float64 angles); the optional
    arguments scale them as pyengine.backends.base.RopeScaling says (Llama 3.1 factors,
    linear, YaRN, LongRoPE)."""

def rope(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], cos: npt.NDArray[np.float32], sin: npt.NDArray[np.float32], n_heads: int, head_dim: int, n_rot: int, neox: bool) -> None:
    """Rotary embedding of x (n, n_heads*head_dim) with rope_table's tables; NEOX pairs
    (i, i+n_rot/2), NORM pairs (2i, 2i+1); dims >= n_rot pass through. out may be x."""

def silu_mul(gate: npt.NDArray[np.float32], up: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
def gelu_mul(gate: npt.NDArray[np.float32], up: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
def add(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
    """out = a + b (same size, no broadcasting)."""

def add_bias(x: npt.NDArray[np.float32], b: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
    """out (n, d) = x (n, d) + b (d,) for every row (x may have a row stride)."""

def softcap(x: npt.NDArray[np.float32], cap: float, out: npt.NDArray[np.float32]) -> None:
    """out = cap * tanh(x / cap); cap > 0 (logit soft-capping)."""

def scale(x: npt.NDArray[np.float32], s: float, out: npt.NDArray[np.float32]) -> None: ...
def kv_store(k: npt.NDArray[np.float32], k_panels: npt.NDArray[np.float32], pos0: int) -> None:
    """Keys k (n, kv_width) -> positions pos0.. of key panels (n_blocks, kv_width, 64)."""

def attention(
    q: npt.NDArray[np.float32], k: npt.NDArray[np.float32] | None, v: npt.NDArray[np.float32], out: npt.NDArray[np.float32], pos0: int, n_heads: int, n_kv_heads: int, head_dim: int, scale: float,
    window: int = 0, softcap: float = 0.0,
) -> None:
    """Causal GQA attention of q (n, H*hd) at positions pos0.. over key panels (or plain rows) k
    and values v (n_ctx, Hkv*hd); k None: the keys are the value rows (a cache stored once, MLA's);
    window > 0: sliding window; softcap > 0: scores scale*q.k -> softcap*tanh(score/softcap)
    before the softmax."""

def moe_ffn(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], **layer: object) -> None:
    """out (n, dim) = routed SwiGLU experts on x (csrc/moe.cpp; spec: pyengine/backends/moe.py).

    Keyword arguments (pyengine.backends.moe.native_args makes them): router_type, router,
    gate_type, gate, up_type, up, down_type, down (GGUF bytes; experts (E, rows, cols)),
    n_expert, dim, ffn, top_k, gating ("softmax" | "sigmoid"), norm, scale, n_group,
    n_group_used, bias (None or (n_expert,) float32)."""

def mla_attention(
    q: npt.NDArray[np.float32], kv: npt.NDArray[np.float32], out: npt.NDArray[np.float32],
    cache: npt.NDArray[np.float32], pos0: int, **layer: object,
) -> None:
    """out (n, H*v_head) = DeepSeek-V2's multi-head latent attention of q (n, H*(qk_nope+n_rot)) and
    kv (n, kv_lora_rank+n_rot) at positions pos0.., writing [rmsnorm(latent), rope(k_pe)] into the
    cache rows (n_ctx, kv_lora_rank+n_rot), one copy serving as keys and values (csrc/mla.cpp;
    spec: pyengine/backends/mla.py). Keyword arguments: pyengine.backends.mla.native_args."""

class DecodeGraph:
    """A decode step recorded op by op (pyengine/backends/cpu_graph.py), replayed in one call."""

    n_nodes: int
    positions: tuple[int, int]
    def __init__(self) -> None: ...
    def add_embed(self, type_name: str, w: npt.NDArray[np.uint8], rows: int, cols: int, out: npt.NDArray[np.float32]) -> None: ...
    def add_matmul(self, type_name: str, w: npt.NDArray[np.uint8], rows: int, cols: int, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
    def add_rmsnorm(self, x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float, out: npt.NDArray[np.float32]) -> None: ...
    def add_rmsnorm_add(self, x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float, residual: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
    def add_add_rmsnorm(self, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float, sum_out: npt.NDArray[np.float32], norm_out: npt.NDArray[np.float32]) -> None: ...
    def add_rope(
        self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], n_heads: int, head_dim: int, n_rot: int, neox: bool, freq_base: float, pos_off: int,
        pos_rel: bool, freq_factors: npt.NDArray[np.float32] | None = None, freq_scale: float = 1.0, ext_factor: float = 0.0,
        attn_factor: float = 1.0, beta_fast: float = 32.0, beta_slow: float = 1.0, n_ctx_orig: int = 0,
    ) -> None: ...
    def add_kv_write(self, k: npt.NDArray[np.float32], v: npt.NDArray[np.float32], k_panels: npt.NDArray[np.float32], v_cache: npt.NDArray[np.float32], pos_off: int, pos_rel: bool) -> None: ...
    def add_attention(
        self, q: npt.NDArray[np.float32], k_panels: npt.NDArray[np.float32], v_cache: npt.NDArray[np.float32], out: npt.NDArray[np.float32], pos_off: int, pos_rel: bool, n_heads: int, n_kv_heads: int,
        head_dim: int, scale: float, window: int, softcap: float = 0.0,
    ) -> None: ...
    def add_elementwise(self, op: str, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
        """op: add, silu_mul or gelu_mul."""
    def add_add_bias(self, x: npt.NDArray[np.float32], b: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
    def add_softcap(self, x: npt.NDArray[np.float32], cap: float, out: npt.NDArray[np.float32]) -> None: ...
    def add_scale(self, x: npt.NDArray[np.float32], s: float, out: npt.NDArray[np.float32]) -> None: ...
    def add_moe_ffn(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], **layer: object) -> None:
        """out = routed experts of x; keyword arguments as moe_ffn."""
    def add_mla_attention(
        self, q: npt.NDArray[np.float32], kv: npt.NDArray[np.float32], out: npt.NDArray[np.float32],
        cache: npt.NDArray[np.float32], pos_off: int, pos_rel: bool, **layer: object,
    ) -> None:
        """Latent attention at position pos_off (+ pos0 when pos_rel); keyword arguments as mla_attention."""
    def set_output(self, logits: npt.NDArray[np.float32]) -> None: ...
    def step(self, token_id: int, pos0: int, copy: bool = True) -> npt.NDArray[np.float32]:
        """Run the step (GIL released); copy=False returns the graph's own buffer (overwritten next step)."""
    def profile(self, token_id: int, pos0: int, reps: int = 1) -> list[tuple[str, float]]: ...
    def ops(self) -> list[str]: ...
    fuse_matmuls: bool
    """Run matmuls that read the same input (q/k/v, gate/up) as one job (default True); same results either way."""
    def matmul_groups(self) -> list[list[int]]: ...

# ==== end CPU ops ===============================================================================
