// The ISA-independent parts of a matmul tier (matmul_generic.cpp, matmul_avx2.cpp,
// matmul_avx512.cpp), written once here and instantiated by each tier with its own
// SIMD inner loops:
//  - gemm_float_tiles: the loop of the float weight types (F32/F16/BF16) over tiles of
//    4 or 1 weight rows x up to TMAX tokens, each tile computed by the tier's Tile::run;
//  - PYENGINE_MATMUL_BY_TYPE: the by_type table that lists a tier's per-type entries
//    matmul_<type>_<tier> (each tier file writes those out).
//
// Everything here has internal linkage (anonymous namespace): a tier compiled with
// -mavx2 / -mavx512* gets its own copy, never one the linker could share with code that
// runs on a CPU without that ISA.
#pragma once

#include <cstdint>

#include "matmul_kernels.h"

namespace pyengine {
namespace {

// ---- float weights: 4 or 1 rows x up to TMAX tokens per tile ----------------------------
// Tile::run<K, R, T>(w, rb, cols, x, ldx, out, ldo) sets out[t*ldo + r] = sum_i w[r][i] * x[t*ldx + i]
// for R rows (row stride rb bytes) and T tokens; K: 0 = F32, 1 = F16, 2 = BF16.
// float_tile_upto runs the tile of tt <= T tokens (T, T-1, ..., 1 fixed at compile time).
template <class Tile, int K, int R, int T>
inline void float_tile_upto(int tt, const uint8_t* w, int64_t rb, int64_t cols, const float* x, int64_t ldx,
                            float* out, int64_t ldo) {
    if constexpr (T > 1) {
        if (tt < T) {
            float_tile_upto<Tile, K, R, T - 1>(tt, w, rb, cols, x, ldx, out, ldo);
            return;
        }
    }
    Tile::template run<K, R, T>(w, rb, cols, x, ldx, out, ldo);
}

// out (nt tokens, stride ldo) [:, 0:nr) = x (nt, cols; stride ldx) @ w (nr, cols; stride rb bytes).T:
// tokens TMAX at a time, rows 4 at a time (the last nr % 4 one by one).
template <class Tile, int K, int TMAX>
void gemm_float_k(const uint8_t* w, int64_t rb, int64_t cols, int nr, const float* x, int64_t ldx, int nt,
                  float* out, int64_t ldo) {
    for (int t0 = 0; t0 < nt; t0 += TMAX) {
        const int tt = nt - t0 < TMAX ? nt - t0 : TMAX;
        for (int r0 = 0; r0 < nr;) {
            const uint8_t* wr = w + r0 * rb;
            const float* xt = x + t0 * ldx;
            float* o = out + t0 * ldo + r0;
            if (nr - r0 >= 4) {
                float_tile_upto<Tile, K, 4, TMAX>(tt, wr, rb, cols, xt, ldx, o, ldo);
                r0 += 4;
            } else {
                float_tile_upto<Tile, K, 1, TMAX>(tt, wr, rb, cols, xt, ldx, o, ldo);
                r0 += 1;
            }
        }
    }
}

// The gemm_float entry of MatmulKernels (matmul_kernels.h) for a tier's Tile.
template <class Tile, int TMAX>
void gemm_float_tiles(WType t, const uint8_t* w, int64_t rb, int64_t cols, int nr, const float* x, int64_t ldx,
                      int nt, float* out, int64_t ldo) {
    if (t == WType::F16)
        gemm_float_k<Tile, 1, TMAX>(w, rb, cols, nr, x, ldx, nt, out, ldo);
    else if (t == WType::BF16)
        gemm_float_k<Tile, 2, TMAX>(w, rb, cols, nr, x, ldx, nt, out, ldo);
    else
        gemm_float_k<Tile, 0, TMAX>(w, rb, cols, nr, x, ldx, nt, out, ldo);
}

}  // namespace
}  // namespace pyengine

// ---- the per-type entries: matmul_<type>_<tier> ----------------------------------------
// Each tier file defines, inside its anonymous namespace, one entry per type, e.g.
// matmul_q4_K_avx2: columns [r0, r1) of out (n, rows) = x (n, cols) @ W.T for W of that type,
// the body shared by every tier (matmul_rows_quant / matmul_rows_float in matmul_kernels.h) run
// with the tier's kernels matmul_kernels_<tier>. They are written out in each file, one line of
// body each, so that a reader's grep for one name lands on its definition;
// PYENGINE_MATMUL_BY_TYPE(tier) lists them in WType order for the tier's by_type table.
static_assert((int)pyengine::WType::COUNT == 15, "one entry per WType in each tier file and PYENGINE_MATMUL_BY_TYPE");
#define PYENGINE_MATMUL_BY_TYPE(tier)                                                                 \
    {                                                                                                 \
        matmul_f32_##tier, matmul_f16_##tier, matmul_q4_0_##tier, matmul_q4_1_##tier,                 \
            matmul_q5_0_##tier, matmul_q8_0_##tier, matmul_q4_K_##tier, matmul_q6_K_##tier,           \
            matmul_bf16_##tier, matmul_q5_1_##tier, matmul_q5_K_##tier, matmul_q2_K_##tier,           \
            matmul_q3_K_##tier, matmul_iq4_nl_##tier, matmul_iq4_xs_##tier,                           \
    }
