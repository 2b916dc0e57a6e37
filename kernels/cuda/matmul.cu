// Quantized matrix products y (n, rows) = x (n, cols) @ W.T reading W in its GGUF
// block layout, and embedding lookups (get_rows).
//
// simple : one thread per output value, dequantizing W value by value in float32.
// tuned  : x is first quantized as the spec does it (quants.quantize_act_q8): per block of
//          the weight type (32 values, or 256 for the K-quants and IQ4_XS), int8 codes
//          rint(x * (127/amax)) (ties to even) and d8 = amax/127, kept per 32 values as
//          Q8_1-like pairs (d8, s8 = d8 * sum of the 32 codes); then one warp per weight row, each lane
//          taking every 32nd group of 32 weights ("unit"), decoding it once to int8
//          codes (quants.cuh: decode_unit) and dotting it with NC token columns by
//          dp4a. NC = 1 is the decode matrix-vector product; NC = 8 the prompt
//          matrix-matrix product, which reads each weight row once per 8 tokens.
//          Float weights (F32/F16/BF16) use the same warp-per-row shape in float.
//
// Per type, one entry each (defined below, called by matmul()'s switch on the type id):
//   matmul_q4_0_cuda matmul_q4_1_cuda matmul_q5_0_cuda matmul_q5_1_cuda matmul_q8_0_cuda
//   matmul_q2_K_cuda matmul_q3_K_cuda matmul_q4_K_cuda matmul_q5_K_cuda matmul_q6_K_cuda
//   matmul_iq4_nl_cuda matmul_iq4_xs_cuda matmul_bf16_cuda matmul_f16_cuda matmul_f32_cuda
// Each computes y = x @ W.T for its type: the same arithmetic as quants.matmul_<type>,
// the spec (with the activation rounding above on the tuned path).
#include <stdexcept>
#include <string>

#include "compat.cuh"
#include "kernels.h"
#include "quants.cuh"

namespace pyengine {
namespace cuda {

namespace {

constexpr int MM_WARPS = 4;  // rows per block of the tuned kernels

// ---------------------------------------------------------------------------------
// simple
// ---------------------------------------------------------------------------------
template <int T>
__global__ void matmul_simple_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int rows, int cols,
                                     const float* __restrict__ x, float* __restrict__ y) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int c = blockIdx.y;  // token
    if (r >= rows) return;
    const uint8_t* wr = w + static_cast<size_t>(r) * row_bytes;
    const float* xc = x + static_cast<size_t>(c) * cols;
    float acc = 0.0f;
    for (int e = 0; e < cols; ++e) acc += dequant_elem<T>(wr, e) * xc[e];
    y[static_cast<size_t>(c) * rows + r] = acc;
}

// ---------------------------------------------------------------------------------
// Activations to int8, bit for bit as the spec and the CPU tiers: one warp per 32 values
// ("unit"), 8 warps per block. block256: one scale per 256 values (the 8 units of the
// block, which the grid then covers exactly: cols % 256 == 0), else per 32.
// ---------------------------------------------------------------------------------
__global__ void quantize_act_kernel(const float* __restrict__ x, int n, int cols, int block256,
                                    int8_t* __restrict__ q, float2* __restrict__ ds) {
    __shared__ float s_amax[8];
    const int units = cols / 32;
    const long long g = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;  // unit over all tokens
    const bool valid = g < static_cast<long long>(n) * units;  // the same for the whole warp
    const int lane = threadIdx.x;
    const float v = valid ? x[g * 32 + lane] : 0.0f;  // units of a token are contiguous, tokens too
    float amax = warp_max(fabsf(v));
    if (block256) {  // the same for the whole block, so every warp reaches the barrier
        if (lane == 0) s_amax[threadIdx.y] = amax;
        __syncthreads();
        amax = s_amax[0];
        for (int k = 1; k < 8; ++k) amax = fmaxf(amax, s_amax[k]);
    }
    if (!valid) return;  // whole warp leaves together
    const bool zero = !(amax >= 1e-30f);  // tiny, zero or NaN: an all-zero block
    const float id = zero ? 0.0f : 127.0f / amax;
    const float qf = zero ? 0.0f : fminf(fmaxf(rintf(v * id), -128.0f), 127.0f);
    q[g * 32 + lane] = static_cast<int8_t>(static_cast<int>(qf));
    const float d = zero ? 0.0f : amax / 127.0f;
    const float sum = warp_sum(qf);
    if (lane == 0) ds[g] = make_float2(d, d * sum);
}

// ---------------------------------------------------------------------------------
// tuned: quantized weights, dp4a
// ---------------------------------------------------------------------------------
// The shape both tuned matmul kernels share: one warp per weight row r, NC tokens
// c0 .. c0+NC-1 per block. lane_dots(wr, lane, c0, acc) adds lane's strided share of
// dot(row r, token c0 + c) into acc[c] (tokens >= n skipped); the warp then sums the 32
// shares and lane 0 writes y (n, rows)[c0 + c][r].
template <int NC, class LaneDots>
PYE_D void warp_row_dots(const uint8_t* __restrict__ w, size_t row_bytes, int rows, int n, float* __restrict__ y,
                         LaneDots lane_dots) {
    const int lane = threadIdx.x;
    const int r = blockIdx.x * MM_WARPS + threadIdx.y;  // same for the whole warp
    const int c0 = blockIdx.y * NC;
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = 0.0f;
    if (r < rows) lane_dots(w + static_cast<size_t>(r) * row_bytes, lane, c0, acc);
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = warp_sum(acc[c]);
    if (r < rows && lane == 0) {
#pragma unroll
        for (int c = 0; c < NC; ++c)
            if (c0 + c < n) y[static_cast<size_t>(c0 + c) * rows + r] = acc[c];
    }
}

template <int T, int NC>
__global__ void __launch_bounds__(32 * MM_WARPS)
matmul_q8_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int rows, int units,
                 const int8_t* __restrict__ q8, const float2* __restrict__ ds, int n, float* __restrict__ y) {
    warp_row_dots<NC>(w, row_bytes, rows, n, y, [&](const uint8_t* wr, int lane, int c0, float* acc) {
        for (int u = lane; u < units; u += 32) {
            Unit U;
            decode_unit<T>(wr, u, U);
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                if (c0 + c < n) {
                    const size_t cu = static_cast<size_t>(c0 + c) * units + u;
                    acc[c] += unit_dot_t<T>(U, q8 + cu * 32, ds[cu]);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------
// tuned: float weights
// ---------------------------------------------------------------------------------
template <int T, int NC>
__global__ void __launch_bounds__(32 * MM_WARPS)
matmul_float_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int rows, int cols,
                    const float* __restrict__ x, int n, float* __restrict__ y) {
    warp_row_dots<NC>(w, row_bytes, rows, n, y, [&](const uint8_t* wr, int lane, int c0, float* acc) {
        for (int e = lane; e < cols; e += 32) {
            const float wv = dequant_elem<T>(wr, e);
#pragma unroll
            for (int c = 0; c < NC; ++c)
                if (c0 + c < n) acc[c] += wv * x[static_cast<size_t>(c0 + c) * cols + e];
        }
    });
}

// ---------------------------------------------------------------------------------
// get_rows
// ---------------------------------------------------------------------------------
template <int T>
__global__ void get_rows_simple_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int cols,
                                       const int32_t* __restrict__ ids, int n, float* __restrict__ out) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<long long>(n) * cols) return;
    const int t = static_cast<int>(i / cols), e = static_cast<int>(i % cols);
    out[i] = dequant_elem<T>(w + static_cast<size_t>(ids[t]) * row_bytes, e);
}

// one block per token, its threads striding along the row (coalesced writes)
template <int T>
__global__ void get_rows_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int cols,
                                const int32_t* __restrict__ ids, float* __restrict__ out) {
    const int t = blockIdx.x;
    const uint8_t* wr = w + static_cast<size_t>(ids[t]) * row_bytes;
    float* o = out + static_cast<size_t>(t) * cols;
    for (int e = threadIdx.x; e < cols; e += blockDim.x) o[e] = dequant_elem<T>(wr, e);
}

// ---------------------------------------------------------------------------------
// dispatch
// ---------------------------------------------------------------------------------
template <int T, int NC>
void launch_q8(const uint8_t* w, size_t rb, int rows, int cols, const int8_t* q8, const float2* ds, int n,
               float* y) {
    const dim3 grid(ceil_div(rows, MM_WARPS), ceil_div(n, NC));
    launch("matmul (quantized, dp4a)", matmul_q8_kernel<T, NC>, grid, dim3(32, MM_WARPS), w, rb, rows, cols / 32,
           q8, ds, n, y);
}

template <int T, int NC>
void launch_float(const uint8_t* w, size_t rb, int rows, int cols, const float* x, int n, float* y) {
    const dim3 grid(ceil_div(rows, MM_WARPS), ceil_div(n, NC));
    launch("matmul (float weights)", matmul_float_kernel<T, NC>, grid, dim3(32, MM_WARPS), w, rb, rows, cols, x,
           n, y);
}

template <int T>
void matmul_t(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch, bool simple) {
    const size_t rb = row_bytes(T, cols);
    if (simple) {
        launch("matmul_simple", matmul_simple_kernel<T>, dim3(ceil_div(rows, 128), n), dim3(128), w, rb, rows,
               cols, x, y);
        return;
    }
    if constexpr (Traits<T>::quant) {
        int8_t* q8 = static_cast<int8_t*>(scratch);
        float2* ds = reinterpret_cast<float2*>(static_cast<uint8_t*>(scratch) +
                                               ((static_cast<size_t>(n) * cols + 255) / 256) * 256);
        const size_t units = static_cast<size_t>(n) * (cols / 32);
        launch("quantize_act", quantize_act_kernel, dim3(ceil_div(units, 8)), dim3(32, 8), x, n, cols,
               Traits<T>::block == 256 ? 1 : 0, q8, ds);
        if (n == 1)
            launch_q8<T, 1>(w, rb, rows, cols, q8, ds, n, y);
        else if (n == 2)
            launch_q8<T, 2>(w, rb, rows, cols, q8, ds, n, y);
        else if (n <= 4)
            launch_q8<T, 4>(w, rb, rows, cols, q8, ds, n, y);
        else
            launch_q8<T, 8>(w, rb, rows, cols, q8, ds, n, y);
    } else {
        if (n == 1)
            launch_float<T, 1>(w, rb, rows, cols, x, n, y);
        else if (n <= 4)
            launch_float<T, 4>(w, rb, rows, cols, x, n, y);
        else
            launch_float<T, 8>(w, rb, rows, cols, x, n, y);
    }
}

template <int T>
void get_rows_t(const uint8_t* w, int cols, const int32_t* ids, int n, float* out, bool simple) {
    const size_t rb = row_bytes(T, cols);
    if (simple) {
        const size_t total = static_cast<size_t>(n) * cols;
        launch("get_rows_simple", get_rows_simple_kernel<T>, dim3(ceil_div(total, 256)), dim3(256), w, rb, cols,
               ids, n, out);
    } else {
        launch("get_rows", get_rows_kernel<T>, dim3(n), dim3(256), w, rb, cols, ids, out);
    }
}

// ---------------------------------------------------------------------------------
// the per-type entries: matmul_<type>_cuda, y (n, rows) = x (n, cols) @ W.T for W of that
// type (matmul_t above with the type fixed); matmul() below switches on the type id.
// ---------------------------------------------------------------------------------
void matmul_f32_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                     bool simple) {
    matmul_t<T_F32>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_f16_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                     bool simple) {
    matmul_t<T_F16>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_bf16_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_BF16>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q4_0_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q4_0>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q4_1_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q4_1>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q5_0_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q5_0>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q5_1_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q5_1>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q8_0_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q8_0>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q2_K_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q2_K>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q3_K_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q3_K>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q4_K_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q4_K>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q5_K_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q5_K>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_q6_K_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                      bool simple) {
    matmul_t<T_Q6_K>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_iq4_nl_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                        bool simple) {
    matmul_t<T_IQ4_NL>(w, rows, cols, x, n, y, scratch, simple);
}
void matmul_iq4_xs_cuda(const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
                        bool simple) {
    matmul_t<T_IQ4_XS>(w, rows, cols, x, n, y, scratch, simple);
}

#define PYE_DISPATCH(type, CALL)                                                          \
    switch (type) {                                                                       \
        case T_F32: { constexpr int TT = T_F32; CALL; } break;                             \
        case T_F16: { constexpr int TT = T_F16; CALL; } break;                             \
        case T_BF16: { constexpr int TT = T_BF16; CALL; } break;                           \
        case T_Q4_0: { constexpr int TT = T_Q4_0; CALL; } break;                           \
        case T_Q4_1: { constexpr int TT = T_Q4_1; CALL; } break;                           \
        case T_Q5_0: { constexpr int TT = T_Q5_0; CALL; } break;                           \
        case T_Q8_0: { constexpr int TT = T_Q8_0; CALL; } break;                           \
        case T_Q4_K: { constexpr int TT = T_Q4_K; CALL; } break;                           \
        case T_Q6_K: { constexpr int TT = T_Q6_K; CALL; } break;                           \
        case T_Q5_1: { constexpr int TT = T_Q5_1; CALL; } break;                           \
        case T_Q2_K: { constexpr int TT = T_Q2_K; CALL; } break;                           \
        case T_Q3_K: { constexpr int TT = T_Q3_K; CALL; } break;                           \
        case T_Q5_K: { constexpr int TT = T_Q5_K; CALL; } break;                           \
        case T_IQ4_NL: { constexpr int TT = T_IQ4_NL; CALL; } break;                       \
        case T_IQ4_XS: { constexpr int TT = T_IQ4_XS; CALL; } break;                       \
        default: throw std::invalid_argument("unsupported GGML type id " + std::to_string(type)); \
    }

}  // namespace

bool type_supported(int type) {
    int block, bytes;
    bool quant;
    return type_info(type, &block, &bytes, &quant);
}

size_t row_bytes(int type, int cols) {
    int block, bytes;
    bool quant;
    if (!type_info(type, &block, &bytes, &quant))
        throw std::invalid_argument("unsupported GGML type id " + std::to_string(type));
    if (cols <= 0 || cols % block)
        throw std::invalid_argument("row of " + std::to_string(cols) + " values is not a whole number of " +
                                    std::to_string(block) + "-value blocks");
    return static_cast<size_t>(cols / block) * bytes;
}

size_t matmul_scratch_bytes(int type, int n, int cols) {
    int block, bytes;
    bool quant;
    if (!type_info(type, &block, &bytes, &quant) || !quant || n <= 0 || cols <= 0) return 0;
    const size_t qbytes = ((static_cast<size_t>(n) * cols + 255) / 256) * 256;
    return qbytes + static_cast<size_t>(n) * (cols / 32) * sizeof(float2);
}

void matmul(int type, const uint8_t* w, int rows, int cols, const float* x, int n, float* y, void* scratch,
            size_t scratch_bytes, bool simple) {
    (void)row_bytes(type, cols);  // validates type and cols
    if (rows <= 0 || n <= 0) throw std::invalid_argument("matmul: rows and n must be positive");
    if (!simple && scratch_bytes < matmul_scratch_bytes(type, n, cols))
        throw std::invalid_argument("matmul: scratch of " + std::to_string(scratch_bytes) + " bytes, needs " +
                                    std::to_string(matmul_scratch_bytes(type, n, cols)));
    switch (type) {
        case T_F32: return matmul_f32_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_F16: return matmul_f16_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_BF16: return matmul_bf16_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q4_0: return matmul_q4_0_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q4_1: return matmul_q4_1_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q5_0: return matmul_q5_0_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q5_1: return matmul_q5_1_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q8_0: return matmul_q8_0_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q2_K: return matmul_q2_K_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q3_K: return matmul_q3_K_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q4_K: return matmul_q4_K_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q5_K: return matmul_q5_K_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_Q6_K: return matmul_q6_K_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_IQ4_NL: return matmul_iq4_nl_cuda(w, rows, cols, x, n, y, scratch, simple);
        case T_IQ4_XS: return matmul_iq4_xs_cuda(w, rows, cols, x, n, y, scratch, simple);
        default: throw std::invalid_argument("unsupported GGML type id " + std::to_string(type));
    }
}

void get_rows(int type, const uint8_t* w, int cols, const int32_t* ids, int n, float* out, bool simple) {
    (void)row_bytes(type, cols);
    if (n <= 0) return;
    PYE_DISPATCH(type, (get_rows_t<TT>(w, cols, ids, n, out, simple)));
}

}  // namespace cuda
}  // namespace pyengine
