// Scalar reference tier of the quantized matmul: the native oracle every SIMD tier
// is tested against, and what non-x86 builds run. Same panels, same integer dots,
// same float epilogue as the SIMD tiers (see matmul_kernels.h); only the byte order
// inside a panel is natural here (no transposition) and lanes are plain arrays.
//
// Per type, one entry each (end of this file), called by csrc/dispatch.cpp through
// matmul_kernels_generic.by_type:
//   matmul_q4_0_generic matmul_q4_1_generic matmul_q5_0_generic matmul_q5_1_generic
//   matmul_q8_0_generic matmul_q2_K_generic matmul_q3_K_generic matmul_q4_K_generic
//   matmul_q5_K_generic matmul_q6_K_generic matmul_iq4_nl_generic matmul_iq4_xs_generic matmul_q3_K_R_generic matmul_q2_K_R_generic matmul_q4_K_R_generic matmul_q6_K_R_generic matmul_q5_K_R_generic matmul_q5_0_R_generic matmul_q5_1_R_generic matmul_iq4_xs_R_generic matmul_q4_0_P_generic matmul_q4_1_P_generic matmul_q5_0_P_generic matmul_q5_1_P_generic matmul_iq4_nl_P_generic
//   matmul_bf16_generic matmul_f16_generic matmul_f32_generic
// Each computes y (n, rows) = x (n, cols) @ W.T for W of its type: the same arithmetic
// as quants.matmul_<type>, the spec (activations quantized to int8 per 32 values as
// described in matmul_kernels.h; float types in float).
#include <cmath>

#include "matmul_kernels.h"
#include "matmul_tier.h"

namespace pyengine {
namespace {

constexpr int PG = 8;  // groups per panel

void pack_w_generic(WType t, const uint8_t* row, int64_t cols, uint8_t* dst) {
    const WTypeInfo& ti = wtype_info(t);
    const int G = ti.group;
    const int64_t pb = (int64_t)PG * (G + 8);
    const int64_t ngroups = cols / G;
    const int64_t np = (cols + PG * G - 1) / (PG * G);
    std::memset(dst + (np - 1) * pb, 0, (size_t)pb);  // the last panel may be partial
    uint8_t q[256];
    float D[16], E[16];
    int64_t g = 0;
    for (int64_t b = 0; b < cols / ti.block_elems; ++b) {
        const int ng = unpack_block(t, row + b * ti.block_bytes, q, D, E);
        for (int j = 0; j < ng; ++j, ++g) {
            uint8_t* panel = dst + (g / PG) * pb;
            const int lane = (int)(g % PG);
            std::memcpy(panel + lane * G, q + j * G, (size_t)G);
            std::memcpy(panel + PG * G + 4 * lane, &D[j], 4);
            std::memcpy(panel + PG * G + 4 * PG + 4 * lane, &E[j], 4);
        }
    }
    (void)ngroups;
}

// ---- activations: per block y = round(x * 127/amax), dy = amax/127 ----
// (block: 32 values, or 256 with kActBlock256.) This exact sequence (float amax, one
// division each way, round-to-nearest-even) is what the SIMD tiers reproduce bit for bit.
static inline float block_amax(const float* x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    return amax;
}

// The 32 values x with the scale of their block, whose max |x| is amax.
static inline void quantize32(const float* x, float amax, int8_t* y, float* dy) {
    if (!(amax >= 1e-30f)) {  // all zero (or tiny/NaN): an all-zero block
        std::memset(y, 0, 32);
        *dy = 0.0f;
        return;
    }
    const float id = 127.0f / amax;
    for (int i = 0; i < 32; ++i) {
        float v = std::nearbyint(x[i] * id);
        v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
        y[i] = (int8_t)v;
    }
    *dy = amax / 127.0f;
}

void pack_act_generic(const float* x, int64_t cols, int G, int off, uint8_t* dst) {
    const int bps = (G & kActBlock256) ? 8 : 1;  // 32-blocks per int8 scale
    G &= ~(kActBlock256 | kActNatural);
    const int64_t pb = (int64_t)PG * (G + 8);
    const int64_t np = (cols + PG * G - 1) / (PG * G);
    std::memset(dst + (np - 1) * pb, 0, (size_t)pb);
    int8_t y[32];
    float dy, amax = 0.0f;
    int64_t g = 0;
    for (int64_t b = 0; b < cols / 32; ++b) {
        if (b % bps == 0) amax = block_amax(x + 32 * b, 32 * bps);
        quantize32(x + 32 * b, amax, y, &dy);
        for (int j = 0; j < 32 / G; ++j, ++g) {
            uint8_t* panel = dst + (g / PG) * pb;
            const int lane = (int)(g % PG);
            int s = 0;
            for (int i = 0; i < G; ++i) s += y[j * G + i];
            std::memcpy(panel + lane * G, y + j * G, (size_t)G);
            std::memcpy(panel + PG * G + 4 * lane, &dy, 4);
            if (off >= 0) {
                const int32_t c = -off * s;  // the weights' zero point, folded into the integer dot
                std::memcpy(panel + PG * G + 4 * PG + 4 * lane, &c, 4);
            } else {
                const float sy = dy * (float)s;
                std::memcpy(panel + PG * G + 4 * PG + 4 * lane, &sy, 4);
            }
        }
    }
}

// ---- the dot products: lane l accumulates group l of every panel ----
void gemm_generic(WType t, int G, int64_t np, const uint8_t* wp, int nr, const uint8_t* ap, int nt, float* out,
                  int64_t ldo) {
    const bool has_min = weight_offset(t, false) < 0;
    const int64_t pb = (int64_t)PG * (G + 8);
    const int64_t stride = np * pb;
    for (int t = 0; t < nt; ++t) {
        for (int r = 0; r < nr; ++r) {
            float acc[PG] = {0};
            for (int64_t p = 0; p < np; ++p) {
                const uint8_t* wq = wp + r * stride + p * pb;
                const uint8_t* aq = ap + t * stride + p * pb;
                const float* D = (const float*)(wq + PG * G);
                const float* E = D + PG;
                const float* DY = (const float*)(aq + PG * G);
                const float* SY = DY + PG;         // min types
                const int32_t* C = (const int32_t*)(const void*)SY;  // zero-point types
                for (int l = 0; l < PG; ++l) {
                    int32_t dot = has_min ? 0 : C[l];
                    for (int i = 0; i < G; ++i) dot += (int32_t)wq[l * G + i] * (int32_t)(int8_t)aq[l * G + i];
                    acc[l] += ((float)dot * D[l]) * DY[l];
                    if (has_min) acc[l] -= E[l] * SY[l];
                }
            }
            float s = 0.0f;
            for (int l = 0; l < PG; ++l) s += acc[l];
            out[(int64_t)t * ldo + r] = s;
        }
    }
}

void gemm_float_generic(WType t, const uint8_t* w, int64_t row_bytes, int64_t cols, int nr, const float* x,
                        int64_t ldx, int nt, float* out, int64_t ldo) {
    float wrow[256];
    for (int r = 0; r < nr; ++r) {
        const uint8_t* wr = w + r * row_bytes;
        for (int tk = 0; tk < nt; ++tk) {
            const float* xt = x + tk * ldx;
            float acc[8] = {0};
            for (int64_t i0 = 0; i0 < cols; i0 += 256) {
                const int len = (int)(cols - i0 < 256 ? cols - i0 : 256);
                if (t == WType::F32)
                    std::memcpy(wrow, wr + 4 * i0, (size_t)len * 4);
                else if (t == WType::BF16)
                    for (int i = 0; i < len; ++i) wrow[i] = bf16_to_fp32(load_u16(wr + 2 * (i0 + i)));
                else
                    for (int i = 0; i < len; ++i) wrow[i] = fp16_to_fp32(load_u16(wr + 2 * (i0 + i)));
                for (int i = 0; i < len; ++i) acc[i & 7] += wrow[i] * xt[i0 + i];
            }
            float s = 0.0f;
            for (int l = 0; l < 8; ++l) s += acc[l];
            out[(int64_t)tk * ldo + r] = s;
        }
    }
}

// The per-type entries matmul_<type>_generic (listed at the top of this file; matmul_tier.h).
// Written out, not generated, so that `grep matmul_q4_K_generic` finds the definition.
void matmul_f32_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_generic, WType::F32, c, r0, r1);
}
void matmul_f16_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_generic, WType::F16, c, r0, r1);
}
void matmul_q4_0_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q4_0, c, r0, r1, wbuf);
}
void matmul_q4_1_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q4_1, c, r0, r1, wbuf);
}
void matmul_q5_0_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_0, c, r0, r1, wbuf);
}
void matmul_q8_0_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q8_0, c, r0, r1, wbuf);
}
void matmul_q4_K_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q4_K, c, r0, r1, wbuf);
}
void matmul_q6_K_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q6_K, c, r0, r1, wbuf);
}
void matmul_bf16_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_generic, WType::BF16, c, r0, r1);
}
void matmul_q5_1_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_1, c, r0, r1, wbuf);
}
void matmul_q5_K_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_K, c, r0, r1, wbuf);
}
void matmul_q2_K_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q2_K, c, r0, r1, wbuf);
}
void matmul_q3_K_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q3_K, c, r0, r1, wbuf);
}
void matmul_iq4_nl_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::IQ4_NL, c, r0, r1, wbuf);
}
void matmul_iq4_xs_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::IQ4_XS, c, r0, r1, wbuf);
}
void matmul_q3_K_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q3_K_R, c, r0, r1, wbuf);
}
void matmul_q2_K_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q2_K_R, c, r0, r1, wbuf);
}
void matmul_q4_K_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q4_K_R, c, r0, r1, wbuf);
}
void matmul_q6_K_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q6_K_R, c, r0, r1, wbuf);
}
void matmul_q5_K_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_K_R, c, r0, r1, wbuf);
}
void matmul_q5_0_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_0_R, c, r0, r1, wbuf);
}
void matmul_q5_1_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_1_R, c, r0, r1, wbuf);
}
void matmul_iq4_xs_R_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::IQ4_XS_R, c, r0, r1, wbuf);
}
void matmul_q4_0_P_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q4_0_P, c, r0, r1, wbuf);
}
void matmul_q4_1_P_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q4_1_P, c, r0, r1, wbuf);
}
void matmul_q5_0_P_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_0_P, c, r0, r1, wbuf);
}
void matmul_q5_1_P_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::Q5_1_P, c, r0, r1, wbuf);
}
void matmul_iq4_nl_P_generic(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_generic, WType::IQ4_NL_P, c, r0, r1, wbuf);
}

}  // namespace

const MatmulKernels matmul_kernels_generic = {
    "generic", PG, false, false, false, false, pack_act_generic, pack_w_generic, gemm_generic, gemm_float_generic,
    nullptr,  // gemv: none, pack_w + gemm for every n
    PYENGINE_MATMUL_BY_TYPE(generic),
};

}  // namespace pyengine
