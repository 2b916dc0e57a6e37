// Host entry points of the CUDA kernels (pointers are device pointers).
//
// Every op has a "simple" form (one thread per output value, obviously right: the
// GPU-side oracle the tuned form is tested against) and a tuned form; `simple`
// picks. Functions throw std::invalid_argument on bad sizes and pyengine::cuda::CudaError on
// a CUDA failure. Launches are asynchronous on the default stream; errors inside a
// kernel surface at the next synchronising call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../csrc/rope_scaling.h"

namespace pyengine {
namespace cuda {

// ---- weights ---------------------------------------------------------------------
// GGML type ids the kernels read directly (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL,
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS).
bool type_supported(int type);
// Bytes of one row of `cols` values of `type` (throws if cols is not a whole number of blocks).
std::size_t row_bytes(int type, int cols);

// Scratch the tuned matmul needs for x quantized to Q8_1 (0 when the type needs none).
std::size_t matmul_scratch_bytes(int type, int n, int cols);

// y (n, rows) = x (n, cols) @ w.T, w (rows, cols) in its GGUF encoding.
void matmul(int type, const uint8_t* w, int rows, int cols, const float* x, int n, float* y,
            void* scratch, std::size_t scratch_bytes, bool simple);

// out (n, cols) = rows ids[0..n) of w (rows, cols), dequantized. ids must be < rows.
void get_rows(int type, const uint8_t* w, int cols, const int32_t* ids, int n, float* out, bool simple);

// ---- activations -------------------------------------------------------------------
// Each group of g values of x (n, d) divided by its RMS (+eps) and multiplied by w (g).
void rmsnorm(const float* x, int n, int d, const float* w, int g, float eps, float* out, bool simple);

// How rope's angles are scaled: pyengine::RopeScaling (csrc/rope_scaling.h, shared with the CPU
// ops); its freq_factors is a device pointer here. The defaults change nothing.
using pyengine::RopeScaling;

// Rotary embedding of x (n, n_heads*head_dim) at positions pos (n); out may equal x.
void rope(const float* x, int n, int n_heads, int head_dim, const int32_t* pos, double freq_base,
          bool neox, int n_rot, float* out, bool simple, const RopeScaling& sc = RopeScaling());

// out[i] = a[i] + b[i % nb] for i < na (nb divides na); out may alias a or b.
void add(const float* a, std::size_t na, const float* b, std::size_t nb, float* out, bool simple);
void scale(const float* x, std::size_t n, float s, float* out, bool simple);
void silu_mul(const float* gate, const float* up, std::size_t n, float* out, bool simple);
void gelu_mul(const float* gate, const float* up, std::size_t n, float* out, bool simple);
// out = cap * tanh(x / cap) (logit soft-capping; cap > 0). out may be x.
void softcap(const float* x, std::size_t n, float cap, float* out, bool simple);

// ---- attention ---------------------------------------------------------------------
// Largest head_dim the tuned attention handles (the simple one takes any).
constexpr int ATTN_MAX_HEAD_DIM = 256;
std::size_t attention_scratch_bytes(int n, int n_heads, int head_dim, int n_splits);

// Causal (optionally sliding-window) GQA attention of q (n, H*hd) at positions
// pos0 .. pos0+n-1 over k, v caches (>= pos0+n rows of Hkv*hd). n_splits > 1 splits
// every query's keys over that many blocks (flash-decoding) and needs scratch.
// softcap > 0: scores scale*q.k become softcap * tanh(score / softcap) (Gemma 2).
void attention_cuda(const float* q, const float* k, const float* v, int n, int pos0, int n_heads, int n_kv_heads,
                    int head_dim, float scale, int window, float* out, int n_splits, void* scratch,
                    std::size_t scratch_bytes, bool simple, float softcap = 0.0f);

}  // namespace cuda
}  // namespace pyengine
