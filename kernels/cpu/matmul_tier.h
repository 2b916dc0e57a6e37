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
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "matmul_kernels.h"

namespace pyengine {
namespace {

#if defined(__AVX2__)
// The 16 signed 6-bit sub-block scales of a Q3_K super-block (its 12 scale bytes at b), as
// q3k_scales in quants.h computes them, in one xmm: low 4 bits are nibbles of b[0..7] (low
// nibbles for scales 0-7, high for 8-15); the top 2 bits of scale k are bits 2(k/4), 2(k/4)+1
// of b[8 + k%4]; minus 32. A dozen SIMD ops instead of a 16-step scalar loop.
static inline __m128i q3k_scales_x16(const uint8_t* b) {
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i q = _mm_loadl_epi64((const __m128i*)b);
    const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(q, m4), _mm_and_si128(_mm_srli_epi16(q, 4), m4));
    const uint32_t w = load_u32(b + 8);
    // dword j = w >> 2j: byte 4j + i holds bits 2j.. of b[8 + i], i.e. the top bits of scale 4j + i
    const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)w), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
}

// The 8 signed 6-bit scales of an IQ4_XS super-block, as iq4xs_scales in quants.h computes
// them, in the low 8 bytes of an xmm: low 4 bits are nibble j%2 of scales_l[j/2], the top 2
// bits are bits 2j, 2j+1 of scales_h; minus 32.
static inline __m128i iq4xs_scales_x8(const uint8_t* blk) {
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i q = _mm_cvtsi32_si128((int)load_u32(blk + 4));
    const __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(q, m4), _mm_and_si128(_mm_srli_epi16(q, 4), m4));
    // spread the eight 2-bit fields of scales_h to the low bits of eight bytes
    uint64_t h = load_u16(blk + 2);
    h = (h & 0xFFull) | (h & 0xFF00ull) << 24;
    h = (h & 0x0000000F0000000Full) | (h & 0x000000F0000000F0ull) << 12;
    h = (h & 0x0003000300030003ull) | (h & 0x000C000C000C000Cull) << 6;
    const __m128i hi = _mm_cvtsi64_si128((long long)h);
    return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
}
#endif

// ---- float weights: 4 or 1 rows x up to TMAX tokens per tile ----------------------------
// Tile::run<K, R, T>(w, rb, cols, x, ldx, out, ldo) sets out[t*ldo + r] = sum_i w[r][i] * x[t*ldx + i]
// for R rows (row stride rb bytes) and T tokens; K: 0 = F32, 1 = F16, 2 = BF16.
// float_tile_upto runs the tile of tt <= T tokens (T, T-1, ..., 1 fixed at compile time).

#if defined(__AVX2__)
// A SIMD tile's prefetch at column i (called at every step of its main loop): when i starts a
// cache line of the rows, that line kFloatPrefetchBytes further on, for each of the R rows.
template <int K, int R>
inline void float_tile_prefetch(const uint8_t* w, int64_t rb, int64_t i) {
    constexpr int EB = K == 0 ? 4 : 2;  // bytes per weight
    if ((i * EB) % 64 != 0) return;
    for (int r = 0; r < R; ++r) _mm_prefetch((const char*)(w + r * rb + EB * i + kFloatPrefetchBytes), _MM_HINT_T0);
}
#endif
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
// tokens TMAX at a time, rows 4 at a time (the last nr % 4 one by one). A Tile with
// kOneRowGemv16 takes one token of F16 / BF16 a row at a time: one stream of weights per thread
// instead of four (each row's sum is added in the same order either way, see the tier's
// FloatTile: the same bits).
template <class Tile, int K, int TMAX>
void gemm_float_k(const uint8_t* w, int64_t rb, int64_t cols, int nr, const float* x, int64_t ldx, int nt,
                  float* out, int64_t ldo) {
    for (int t0 = 0; t0 < nt; t0 += TMAX) {
        const int tt = nt - t0 < TMAX ? nt - t0 : TMAX;
        for (int r0 = 0; r0 < nr;) {
            const uint8_t* wr = w + r0 * rb;
            const float* xt = x + t0 * ldx;
            float* o = out + t0 * ldo + r0;
            if (nr - r0 >= 4 && !(Tile::kOneRowGemv16 && K != 0 && tt == 1)) {
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
static_assert((int)pyengine::WType::COUNT == 28, "one entry per WType in each tier file and PYENGINE_MATMUL_BY_TYPE");
#define PYENGINE_MATMUL_BY_TYPE(tier)                                                                 \
    {                                                                                                 \
        matmul_f32_##tier, matmul_f16_##tier, matmul_q4_0_##tier, matmul_q4_1_##tier,                 \
            matmul_q5_0_##tier, matmul_q8_0_##tier, matmul_q4_K_##tier, matmul_q6_K_##tier,           \
            matmul_bf16_##tier, matmul_q5_1_##tier, matmul_q5_K_##tier, matmul_q2_K_##tier,           \
            matmul_q3_K_##tier, matmul_iq4_nl_##tier, matmul_iq4_xs_##tier, matmul_q3_K_R_##tier,      \
            matmul_q2_K_R_##tier, matmul_q4_K_R_##tier, matmul_q6_K_R_##tier, matmul_q5_K_R_##tier,   \
            matmul_q5_0_R_##tier, matmul_q5_1_R_##tier, matmul_iq4_xs_R_##tier, matmul_q4_0_P_##tier,   \
            matmul_q4_1_P_##tier, matmul_q5_0_P_##tier, matmul_q5_1_P_##tier, matmul_iq4_nl_P_##tier,  \
    }
