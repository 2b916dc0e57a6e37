// Raw-pointer entry points of the CPU non-matmul ops, for native callers (csrc/graph.cpp).
//
// These are exactly what the pyengine._C bindings in csrc/bind_ops.cpp run once they
// have checked their arguments and released the GIL (same op-kernel variant, same work
// split), so a native caller gets bit-for-bit the results of the Python-facing ops.
// No argument checks here: the caller guarantees shapes, strides and bounds.
// The matmul and embedding entry points are pyengine::matmul / pyengine::get_rows (csrc/dispatch.h).
#pragma once

#include <cstdint>

#include "ops.h"
#include "rope_scaling.h"

namespace pyengine {
namespace cpu {

// The op-kernel table in use (_C.ops_variant(); switchable with _C.set_ops_variant).
const pyengine::OpsTable& ops_table();

// out (rows, cols) = rmsnorm of each group of g values of x; x rows x_stride floats apart.
void rmsnorm(const float* x, int64_t x_stride, int64_t rows, int64_t cols, const float* w, int64_t g, float eps,
             float* out);
// out = residual + rmsnorm(x)   (all (rows, cols) contiguous; out may be residual)
void rmsnorm_add(const float* x, const float* w, const float* residual, float* out, int64_t rows, int64_t cols,
                 int64_t g, float eps);
// sum = a + b; norm = rmsnorm(sum)
void add_rmsnorm(const float* a, const float* b, const float* w, float* sum, float* norm, int64_t rows,
                 int64_t cols, int64_t g, float eps);
// How rope's angles are scaled: pyengine::RopeScaling (rope_scaling.h).
using pyengine::RopeScaling;
// cos/sin (n, n_rot/2) of pos[t] * freq_base ** (-2i / n_rot), angles in double;
// with sc, scaled as RopeScaling says (null: exactly the unscaled table)
void rope_table(const double* pos, int64_t n, double freq_base, int n_rot, float* cos_out, float* sin_out,
                const RopeScaling* sc = nullptr);
// rotary embedding of x (rows, n_heads*head_dim; row stride x_stride) into contiguous out
void rope(const float* x, int64_t x_stride, int64_t rows, float* out, const float* cos_t, const float* sin_t,
          int n_heads, int head_dim, int n_rot, bool neox);

// out (rows, cols) = x + b for every row (a bias); x rows x_stride floats apart, out contiguous
void add_bias(const float* x, int64_t x_stride, int64_t rows, int64_t cols, const float* b, float* out);
// out = cap * tanh(x / cap) (logit soft-capping); out may be x
void softcap(const float* x, float cap, float* out, int64_t count);

enum class Binary { silu_mul, gelu_mul, add };
void binary(Binary kind, const float* a, const float* b, float* out, int64_t count);
void scale(const float* x, float s, float* out, int64_t count);

// keys k (n, width; row stride k_stride) -> positions pos0.. of the panels kt (n_blocks, width, 64)
void kv_store(const float* k, int64_t k_stride, int64_t n, int64_t width, float* kt, int64_t pos0);
// attention over key panels (a.kt = panel of block 0, a.kt_b0 = 0); a.n > 0
void attention(pyengine::AttnArgs a);

}  // namespace cpu
}  // namespace pyengine
