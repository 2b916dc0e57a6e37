// Portable versions of the non-matmul ops (see ops.h), written as plain loops the
// compiler vectorises. This file is compiled twice:
//   - as itself, with the baseline flags: the "generic" variant, runs on any CPU;
//     its attention is attention_generic, its table ops_generic();
//   - from ops_avx2.cpp (which defines PYENGINE_OPS_AVX2 and includes it) with
//     AVX2/FMA flags: the "avx2" variant, ops_avx2(), whose attention is the hand-written
//     attention_avx2 (attention_avx2.cpp) rather than attention_rows below.
// exp() is a polynomial in plain float arithmetic (no libm call) so that loops over it
// vectorise; the AVX-512 and AVX2 attentions use the same range reduction and coefficients.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "ops.h"

#ifdef PYENGINE_OPS_AVX2
#include "exp_avx2.h"
#endif

// The namespace of this compilation's kernels (two copies must not share one).
#ifdef PYENGINE_OPS_AVX2
#define PYENGINE_OPS_VARIANT avx2
#else
#define PYENGINE_OPS_VARIANT generic
#endif

namespace pyengine {
namespace PYENGINE_OPS_VARIANT {
namespace {

inline float bits_to_float(int32_t i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

// e^x to about 1 ulp: x = n ln2 + r (ln2 split in two), e^r by a degree-7 polynomial on
// [-ln2/2, ln2/2], 2^n applied as two factors so both stay normal floats; inf above
// ~88.7, 0 below ~-103.9, NaN stays NaN.
inline float exp_f(float x) {
    x = std::min(x, 88.9f);  // (std::min/max return x when x is NaN)
    x = std::max(x, -104.0f);
    const float n = (x * ExpConst::log2e + 12582912.0f) - 12582912.0f;  // round to nearest
    float r = x - n * ExpConst::ln2_hi;
    r = r - n * ExpConst::ln2_lo;
    float p = ExpConst::c[0];
    for (int k = 1; k < 6; ++k) p = p * r + ExpConst::c[k];
    p = p * (r * r) + (r + 1.0f);
    const int32_t ni = (int32_t)n;
    const int32_t n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 64]
    return p * bits_to_float((n1 + 127) << 23) * bits_to_float((n2 + 127) << 23);
}

float inv_rms(const float* x, int64_t g, float eps) {
    float acc[16] = {};
    int64_t i = 0;
    for (; i + 16 <= g; i += 16)
        for (int k = 0; k < 16; ++k) acc[k] += x[i + k] * x[i + k];
    for (; i < g; ++i) acc[0] += x[i] * x[i];
    float ss = 0.0f;
    for (int k = 0; k < 16; ++k) ss += acc[k];
    return 1.0f / std::sqrt(ss / (float)g + eps);
}

void rmsnorm(const float* x, const float* w, float* out, int64_t rows, int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * g;
        float* o = out + r * g;
        const float inv = inv_rms(xr, g, eps);
        for (int64_t i = 0; i < g; ++i) o[i] = xr[i] * inv * w[i];
    }
}

void rmsnorm_add(const float* x, const float* w, const float* res, float* out, int64_t rows,
                 int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * g;
        const float inv = inv_rms(xr, g, eps);
        for (int64_t i = 0; i < g; ++i) out[r * g + i] = res[r * g + i] + xr[i] * inv * w[i];
    }
}

void add_rmsnorm(const float* a, const float* b, const float* w, float* sum, float* norm,
                 int64_t rows, int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        float* s = sum + r * g;
        for (int64_t i = 0; i < g; ++i) s[i] = a[r * g + i] + b[r * g + i];
        const float inv = inv_rms(s, g, eps);
        for (int64_t i = 0; i < g; ++i) norm[r * g + i] = s[i] * inv * w[i];
    }
}

void rope(const float* x, int64_t x_stride, float* out, const float* cos_t, const float* sin_t,
          int64_t t0, int64_t t1, int n_heads, int head_dim, int n_rot, bool neox) {
    const int half = n_rot / 2;
    rope_heads(x, x_stride, out, cos_t, sin_t, t0, t1, n_heads, head_dim, n_rot,
               [=](const float* xh, float* oh, const float* c, const float* s) {
                   if (neox) {  // pair (i, i + half)
                       for (int i = 0; i < half; ++i) {
                           const float a = xh[i], b = xh[i + half];
                           oh[i] = a * c[i] - b * s[i];
                           oh[i + half] = a * s[i] + b * c[i];
                       }
                   } else {  // pair (2i, 2i + 1)
                       for (int i = 0; i < half; ++i) {
                           const float a = xh[2 * i], b = xh[2 * i + 1];
                           oh[2 * i] = a * c[i] - b * s[i];
                           oh[2 * i + 1] = a * s[i] + b * c[i];
                       }
                   }
               });
}

#ifdef PYENGINE_OPS_AVX2
// exp_f on 8 floats (GCC leaves the scalar loops below unvectorised: "control flow in loop",
// the clamps; they ran 12x slower than the AVX-512 tier's, 24 vs 2 us for 8960 values):
// the same clamps, rounding of n, reduction, polynomial and 2^n as two exponent factors.
inline __m256 exp_f8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.9f));  // min/max return the first operand, x, on NaN
    x = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));
    __m256 n;
    const __m256 p = exp_reduced8(x, n);
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);  // each in [-75, 64]
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}
#endif

void silu_mul(const float* g, const float* u, float* out, int64_t count) {
    int64_t i = 0;
#ifdef PYENGINE_OPS_AVX2
    for (; i + 8 <= count; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), exp_f8(_mm256_sub_ps(_mm256_setzero_ps(), x)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, d), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < count; ++i) out[i] = g[i] / (1.0f + exp_f(-g[i])) * u[i];
}

void gelu_mul(const float* g, const float* u, float* out, int64_t count) {
    // 0.5 x (1 + tanh(y)) == x / (1 + exp(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3)
    int64_t i = 0;
#ifdef PYENGINE_OPS_AVX2
    for (; i + 8 <= count; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        const __m256 m2y = _mm256_mul_ps(_mm256_set1_ps(-2.0f * 0.7978845608028654f),
                                         _mm256_add_ps(x, _mm256_mul_ps(_mm256_set1_ps(0.044715f), x3)));
        const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), exp_f8(m2y));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, d), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < count; ++i) {
        const float x = g[i];
        const float m2y = -2.0f * 0.7978845608028654f * (x + 0.044715f * (x * x * x));
        out[i] = x / (1.0f + exp_f(m2y)) * u[i];
    }
}

void add(const float* a, const float* b, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = a[i] + b[i];
}

void scale(const float* x, float s, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = x[i] * s;
}

void softcap(const float* x, float cap, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = cap * std::tanh(x[i] / cap);
}

// q . k over hd floats as 16 running lane sums (lane l: dims e with e % 16 == l, in order),
// folded 8, 4, 2, 1 at the end: a key's score when the keys are the value rows (kt == nullptr)
inline float dot_rows(const float* q, const float* k, int hd) {
    float part[16] = {};
    int e = 0;
    for (; e + 16 <= hd; e += 16)
        for (int l = 0; l < 16; ++l) part[l] += q[e + l] * k[e + l];
    for (int l = 0; e + l < hd; ++l) part[l] += q[e + l] * k[e + l];
    for (int w = 8; w > 0; w >>= 1)
        for (int l = 0; l < w; ++l) part[l] += part[l + w];
    return part[0];
}

// One row at a time: scores of the row's visible blocks (64 keys per step, a
// contiguous inner loop over the panel), then max, exp and sum, then the weighted values.
inline void attention_rows(const AttnArgs& a, int g, int r0, int r1) {
    constexpr int KB = kAttnKeyBlock;
    thread_local std::vector<float> scores;
    const int group = a.group(), hd = a.head_dim, vd = a.value_dim();
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int r = r0; r < r1; ++r) {
        const int i = r / group, h = g * group + r % group;
        const int p = a.pos0 + i;
        const int lo = a.key_lo(p), hi = a.key_hi(p);
        const int b_lo = lo / KB, b_hi = (hi + KB - 1) / KB;
        const float* qr = a.q + (int64_t)i * a.q_stride + (int64_t)h * hd;
        float* o = a.out + (int64_t)i * a.out_stride + (int64_t)h * hd;
        scores.resize((size_t)(b_hi - b_lo) * KB);
        const int base = b_lo * KB;  // S[j - base] holds key j
        float* S = scores.data();
        for (int b = b_lo; b < b_hi; ++b) {
            float s[KB] = {};
            if (a.keys_in_rows()) {  // keys = the value rows: one dot per key seen (j < hi)
                for (int jj = 0; jj < KB && b * KB + jj < hi; ++jj)
                    s[jj] = dot_rows(qr, a.v + (int64_t)(b * KB + jj) * a.v_stride + (int64_t)g * hd, hd);
            } else {
                const float* pan = a.panel(b, g);
                for (int e = 0; e < hd; ++e) {
                    const float qe = qr[e];
                    const float* pe = pan + (int64_t)e * KB;
                    for (int jj = 0; jj < KB; ++jj) s[jj] += qe * pe[jj];
                }
            }
            for (int jj = 0; jj < KB; ++jj) S[b * KB + jj - base] = s[jj] * a.scale;
            if (a.softcap > 0.0f)  // soft-capping: cap * tanh(score / cap)
                for (int jj = 0; jj < KB; ++jj)
                    S[b * KB + jj - base] = a.softcap * std::tanh(S[b * KB + jj - base] / a.softcap);
        }
        float* Sv = S + (lo - base);  // the visible keys, n_vis of them
        const int n_vis = hi - lo;
        float mx = ninf;
        for (int j = 0; j < n_vis; ++j) mx = std::max(mx, Sv[j]);
        for (int j = 0; j < n_vis; ++j) Sv[j] = exp_f(Sv[j] - mx);
        float sum = 0.0f;
        for (int j = 0; j < n_vis; ++j) sum += Sv[j];
        for (int e = 0; e < hd; ++e) o[e] = 0.0f;
        for (int j = lo; j < hi; ++j) {
            const float pj = Sv[j - lo];
            const float* vr = a.v + (int64_t)j * a.v_stride + (int64_t)g * hd;
            for (int e = 0; e < vd; ++e) o[e] += pj * vr[e];
        }
        const float inv = 1.0f / sum;
        for (int e = 0; e < vd; ++e) o[e] *= inv;
    }
}

// Attention rows [r0, r1) of KV head g (AttentionFn in ops.h): the NumPy spec's attention
// (numpy_backend.attention_reference) in float32, exp by the polynomial exp_f above. The
// avx2 table uses the hand-written attention_avx2 (attention_avx2.cpp) instead.
#ifndef PYENGINE_OPS_AVX2
void attention_generic(const AttnArgs& a, int g, int r0, int r1) { attention_rows(a, g, r0, r1); }
#endif

const OpsTable kTable = {
#ifdef PYENGINE_OPS_AVX2
    "avx2", rmsnorm, rmsnorm_add, add_rmsnorm, rope, silu_mul, gelu_mul, add, scale, pyengine::attention_avx2, softcap,
#else
    "generic", rmsnorm, rmsnorm_add, add_rmsnorm, rope, silu_mul, gelu_mul, add, scale, attention_generic, softcap,
#endif
};

}  // namespace
}  // namespace PYENGINE_OPS_VARIANT

#ifdef PYENGINE_OPS_AVX2
const OpsTable& ops_avx2() { return avx2::kTable; }
#else
const OpsTable& ops_generic() { return generic::kTable; }
#endif

}  // namespace pyengine
