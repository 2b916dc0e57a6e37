// attention_avx2: the "avx2" op table's attention (AttentionFn, see ops.h), with 256-bit
// registers. The table's other ops are ops_generic.cpp's loops compiled with AVX2 flags;
// attention as such a loop ran one query row at a time, its output row in memory, 3-3.5x
// slower than attention_avx512 (16 heads x 576 at 2048 positions: 1.2-1.3 vs 0.36 ms). This
// runs attention_avx512's loop (attention_blocks.h) at half the width: scores of up to 4
// query rows at once from broadcasts of q against the key panels (64 / 32 / 24 / 16 keys a
// pass for 1-4 rows: 8 or more accumulators), an online-softmax update per row, and the
// weighted values of up to 4 rows at once (as many dims a pass). Compiled with -mavx2 -mfma (CMake: *_avx2.cpp); called only when
// CPUID says AVX2 + FMA (csrc/bind_ops.cpp).
//
// exp8 is attention_avx512's exp_ps (range reduction x = n ln2 + r, degree-7 polynomial)
// with 2^n built in the exponent bits instead of scalef: exact 0 below x = -87.3, where 2^n
// would leave the normal range (e^-87.3 ~ 1.2e-38: nothing a softmax over finite scores keeps).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention_blocks.h"
#include "exp_avx2.h"
#include "ops.h"

namespace pyengine {
namespace {

constexpr int KB = kAttnKeyBlock;

inline __m256 exp8(__m256 x) {
    // NaN stays NaN (min/max return the second operand, x, on NaN; the keep mask is true)
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_NLT_UQ);
    x = _mm256_min_ps(_mm256_set1_ps(88.7f), x);
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);
    __m256 n;
    const __m256 p = exp_reduced8(x, n);
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// lanes [0, remaining) of 8 (all when remaining >= 8), for maskload / maskstore
inline __m256i tail8(int remaining) {
    const int n = remaining < 0 ? 0 : (remaining > 8 ? 8 : remaining);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}


// s[c] = q . k_c over hd floats for NK (<= 4) keys stored as rows (AttnArgs with kt ==
// nullptr), each as 16 running lane sums (two registers: dims e % 16 < 8, >= 8), folded
// 8, 4, 2, 1 at the end; q read once for the NK keys. A key's sum is the same whatever NK is.
template <int NK>
inline void dot_rows(const float* q, const float* const* k, int hd, float* s) {
    __m256 lo[NK], hi[NK];
    for (int c = 0; c < NK; ++c) lo[c] = hi[c] = _mm256_setzero_ps();
    int e = 0;
    for (; e + 16 <= hd; e += 16) {
        const __m256 q0 = _mm256_loadu_ps(q + e), q1 = _mm256_loadu_ps(q + e + 8);
        for (int c = 0; c < NK; ++c) {
            lo[c] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k[c] + e), lo[c]);
            hi[c] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k[c] + e + 8), hi[c]);
        }
    }
    for (int c = 0; c < NK; ++c) {
        alignas(32) float part[16];
        _mm256_store_ps(part, lo[c]);
        _mm256_store_ps(part + 8, hi[c]);
        for (int l = 0; e + l < hd; ++l) part[l] = std::fma(q[e + l], k[c][e + l], part[l]);
        for (int w = 8; w > 0; w >>= 1)
            for (int l = 0; l < w; ++l) part[l] += part[l + w];
        s[c] = part[0];
    }
}

// What attention_blocks (attention_blocks.h) needs from AVX2: 8 floats a register.
struct Avx2 {
    // 8-float registers per row in one pass of the score and value loops: 8 accumulators or
    // more in flight (2 FMAs a cycle, 4 cycles each), whatever the tile's row count
    template <int R>
    static constexpr int passes_wide() { return R == 1 ? 8 : R == 2 ? 4 : R == 3 ? 3 : 2; }

    // S[r][0:8W] = q_r . 8W keys of a panel row set (kt: column 0 of them, row stride 64), for R
    // rows: W accumulators per row fed by broadcasts of q[r][e]. A score's sum runs over e in
    // order, whatever R and W.
    template <int R, int W>
    static void qk_pass(const float* const* q, const float* kt, int hd, float* S) {
        __m256 acc[R][W];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < W; ++c) acc[r][c] = _mm256_setzero_ps();
        for (int e = 0; e < hd; ++e) {
            const float* kr = kt + (int64_t)e * KB;
            __m256 kv[W];
            for (int c = 0; c < W; ++c) kv[c] = _mm256_loadu_ps(kr + 8 * c);
            for (int r = 0; r < R; ++r) {
                const __m256 b = _mm256_broadcast_ss(q[r] + e);
                for (int c = 0; c < W; ++c) acc[r][c] = _mm256_fmadd_ps(b, kv[c], acc[r][c]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < W; ++c) _mm256_storeu_ps(S + r * KB + 8 * c, acc[r][c]);
    }

    // S[r][0:64] = q_r . keys of one panel (hd, 64) for R rows, in passes of passes_wide<R>()
    // registers (the last pass narrower when 8 x that does not divide 64)
    template <int R>
    static void qk_tile(const float* const* q, const float* kt, int hd, float* S /* R x KB */) {
        constexpr int W = passes_wide<R>(), full = KB / (8 * W) * (8 * W), rest = (KB - full) / 8;
        for (int kc = 0; kc < full; kc += 8 * W) qk_pass<R, W>(q, kt + kc, hd, S + kc);
        if constexpr (rest > 0) qk_pass<R, rest>(q, kt + full, hd, S + full);
    }

    // S[r][j] = q_r . key j for the nb keys of a block stored as rows (key j at k + j*ks); 0 past
    // nb. Keys outer, rows inner: 4 keys (9 KB at MLA's 576 dims) stay in L1 for the R rows.
    template <int R>
    static void qk_rows(const float* const* q, const float* k, int64_t ks, int nb, int hd, float* S /* R x KB */) {
        const float* kr[4];
        int j = 0;
        for (; j + 4 <= nb; j += 4) {
            for (int c = 0; c < 4; ++c) kr[c] = k + (int64_t)(j + c) * ks;
            for (int r = 0; r < R; ++r) dot_rows<4>(q[r], kr, hd, S + r * KB + j);
        }
        for (; j < nb; ++j) {
            kr[0] = k + (int64_t)j * ks;
            for (int r = 0; r < R; ++r) dot_rows<1>(q[r], kr, hd, S + r * KB + j);
        }
        for (int r = 0; r < R; ++r)
            for (j = nb; j < KB; ++j) S[r * KB + j] = 0.0f;
    }

    // acc[r][0:vd] = pre[r] * acc[r] + sum_j p[r][j] v[j] for R rows (p rows of stride ps; pre ==
    // nullptr: start from zero), 8 x passes_wide<R>() dims a pass (masked past vd): each v row
    // loaded once per pass for the R rows. A dim's sum runs over j in order, whatever R.
    template <int R>
    static void pv(float* const* acc, const float* pre, const float* p, int64_t ps, const float* v, int64_t vs, int nj,
                   int vd) {
        constexpr int W = passes_wide<R>();
        for (int e = 0; e < vd; e += 8 * W) {
            __m256i mk[W];
            for (int c = 0; c < W; ++c) mk[c] = tail8(vd - e - 8 * c);
            __m256 a[R][W];
            for (int r = 0; r < R; ++r) {
                const __m256 s = _mm256_set1_ps(pre ? pre[r] : 0.0f);
                for (int c = 0; c < W; ++c)
                    a[r][c] = pre ? _mm256_mul_ps(_mm256_maskload_ps(acc[r] + e + 8 * c, mk[c]), s) : _mm256_setzero_ps();
            }
            for (int j = 0; j < nj; ++j) {
                const float* vr = v + (int64_t)j * vs + e;
                __m256 vv[W];
                for (int c = 0; c < W; ++c) vv[c] = _mm256_maskload_ps(vr + 8 * c, mk[c]);
                for (int r = 0; r < R; ++r) {
                    const __m256 pj = _mm256_broadcast_ss(p + r * ps + j);
                    for (int c = 0; c < W; ++c) a[r][c] = _mm256_fmadd_ps(pj, vv[c], a[r][c]);
                }
            }
            for (int r = 0; r < R; ++r)
                for (int c = 0; c < W; ++c) _mm256_maskstore_ps(acc[r] + e + 8 * c, mk[c], a[r][c]);
        }
    }

    static float mask_max(float* s, uint64_t vis, float scale) {
        const __m256 ninf_v = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), sv = _mm256_set1_ps(scale);
        const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        __m256 mx = ninf_v;
        for (int c = 0; c < KB / 8; ++c) {
            const __m256i bits = _mm256_set1_epi32((int)((vis >> (8 * c)) & 0xFF));
            const __m256 seen = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(bits, lane_bit), lane_bit));
            const __m256 v = _mm256_blendv_ps(ninf_v, _mm256_mul_ps(_mm256_loadu_ps(s + 8 * c), sv), seen);
            _mm256_storeu_ps(s + 8 * c, v);
            mx = _mm256_max_ps(mx, v);
        }
        return hmax8(mx);
    }
    static float exp_sum(float* s, float m) {
        const __m256 mv = _mm256_set1_ps(m);
        __m256 sum = _mm256_setzero_ps();
        for (int c = 0; c < KB / 8; ++c) {
            const __m256 pexp = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + 8 * c), mv));
            _mm256_storeu_ps(s + 8 * c, pexp);
            sum = _mm256_add_ps(sum, pexp);
        }
        return hsum8(sum);
    }
    static void scale_row(float* o, int vd, float s) {
        const __m256 inv = _mm256_set1_ps(s);
        for (int e = 0; e < vd; e += 8) {
            const __m256i mk = tail8(vd - e);
            _mm256_maskstore_ps(o + e, mk, _mm256_mul_ps(_mm256_maskload_ps(o + e, mk), inv));
        }
    }
};

}  // namespace

void attention_avx2(const AttnArgs& a, int g, int r0, int r1) { attention_blocks<Avx2>(a, g, r0, r1); }

}  // namespace pyengine
