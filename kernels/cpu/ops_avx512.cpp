// AVX-512 versions of the non-matmul ops (see ops.h); the attention kernel is
// attention_avx512 (attention_generic / attention_avx2 in ops_generic.cpp, attention_cuda
// in kernels/cuda/attention.cu). Compiled with AVX-512 flags by
// CMake whatever the build machine has; only called when CPUID says the CPU has
// AVX-512F/BW/DQ/VL (csrc/bind_ops.cpp checks).
//
// exp() is a vector Cephes-style expf: range reduction x = n ln2 + r with a split ln2,
// a degree-7 polynomial for e^r on [-ln2/2, ln2/2] (about 1 ulp) and scalef for 2^n,
// which also gives inf above ~88.7 and 0 below ~-103.9 without special cases.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention_blocks.h"
#include "ops.h"

namespace pyengine {
namespace {

inline __mmask16 tail_mask(int64_t remaining) {
    return remaining >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << remaining) - 1u);
}

inline __m512 exp_ps(__m512 x) {
    // min/max with the constant first so a NaN input stays NaN
    x = _mm512_min_ps(_mm512_set1_ps(88.9f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(ExpConst::log2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(ExpConst::ln2_hi), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(ExpConst::ln2_lo), r);
    __m512 p = _mm512_set1_ps(ExpConst::c[0]);
    for (int k = 1; k < 6; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(ExpConst::c[k]));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

// ---------------------------------------------------------------- rmsnorm ----------

inline float sum_squares(const float* x, int64_t g) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= g; i += 64) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512 c = _mm512_loadu_ps(x + i + 32), d = _mm512_loadu_ps(x + i + 48);
        s0 = _mm512_fmadd_ps(a, a, s0);
        s1 = _mm512_fmadd_ps(b, b, s1);
        s2 = _mm512_fmadd_ps(c, c, s2);
        s3 = _mm512_fmadd_ps(d, d, s3);
    }
    for (; i < g; i += 16) {
        __m512 a = _mm512_maskz_loadu_ps(tail_mask(g - i), x + i);
        s0 = _mm512_fmadd_ps(a, a, s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

inline float inv_rms(const float* x, int64_t g, float eps) {
    return 1.0f / std::sqrt(sum_squares(x, g) / (float)g + eps);
}

void rmsnorm(const float* x, const float* w, float* out, int64_t rows, int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * g;
        float* o = out + r * g;
        const __m512 inv = _mm512_set1_ps(inv_rms(xr, g, eps));
        for (int64_t i = 0; i < g; i += 16) {
            const __mmask16 k = tail_mask(g - i);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xr + i), inv);
            _mm512_mask_storeu_ps(o + i, k, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i)));
        }
    }
}

void rmsnorm_add(const float* x, const float* w, const float* res, float* out, int64_t rows,
                 int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * g;
        const __m512 inv = _mm512_set1_ps(inv_rms(xr, g, eps));
        for (int64_t i = 0; i < g; i += 16) {
            const __mmask16 k = tail_mask(g - i);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xr + i), inv);
            v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i));
            v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, res + r * g + i), v);
            _mm512_mask_storeu_ps(out + r * g + i, k, v);
        }
    }
}

void add_rmsnorm(const float* a, const float* b, const float* w, float* sum, float* norm,
                 int64_t rows, int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        float* s = sum + r * g;
        for (int64_t i = 0; i < g; i += 16) {
            const __mmask16 k = tail_mask(g - i);
            _mm512_mask_storeu_ps(s + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, a + r * g + i),
                                                          _mm512_maskz_loadu_ps(k, b + r * g + i)));
        }
        const __m512 inv = _mm512_set1_ps(inv_rms(s, g, eps));
        for (int64_t i = 0; i < g; i += 16) {
            const __mmask16 k = tail_mask(g - i);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + i), inv);
            _mm512_mask_storeu_ps(norm + r * g + i, k, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i)));
        }
    }
}

// ------------------------------------------------------------------- rope ----------

void rope(const float* x, int64_t x_stride, float* out, const float* cos_t, const float* sin_t,
          int64_t t0, int64_t t1, int n_heads, int head_dim, int n_rot, bool neox) {
    const int half = n_rot / 2;
    // NORM mode: lane 2i and 2i+1 both use pair i
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512 zero = _mm512_setzero_ps();
    rope_heads(x, x_stride, out, cos_t, sin_t, t0, t1, n_heads, head_dim, n_rot,
               [=](const float* xh, float* oh, const float* c, const float* s) {
                   if (neox) {  // pair (i, i + half)
                       for (int i = 0; i < half; i += 16) {
                           const __mmask16 k = tail_mask(half - i);
                           const __m512 cv = _mm512_maskz_loadu_ps(k, c + i), sv = _mm512_maskz_loadu_ps(k, s + i);
                           const __m512 a = _mm512_maskz_loadu_ps(k, xh + i);
                           const __m512 b = _mm512_maskz_loadu_ps(k, xh + i + half);
                           _mm512_mask_storeu_ps(oh + i, k, _mm512_fmsub_ps(a, cv, _mm512_mul_ps(b, sv)));
                           _mm512_mask_storeu_ps(oh + i + half, k, _mm512_fmadd_ps(a, sv, _mm512_mul_ps(b, cv)));
                       }
                   } else {  // pair (2i, 2i + 1)
                       for (int e = 0; e < n_rot; e += 16) {
                           const __mmask16 k = tail_mask(n_rot - e);        // n_rot is even
                           const __mmask16 kp = tail_mask((n_rot - e) / 2);  // pairs
                           const __m512 cv = _mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps(kp, c + e / 2));
                           __m512 sv = _mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps(kp, s + e / 2));
                           sv = _mm512_mask_sub_ps(sv, 0x5555, zero, sv);  // -sin on even lanes
                           const __m512 xv = _mm512_maskz_loadu_ps(k, xh + e);
                           const __m512 xs = _mm512_permute_ps(xv, 0xB1);  // swap within pairs
                           _mm512_mask_storeu_ps(oh + e, k, _mm512_fmadd_ps(xv, cv, _mm512_mul_ps(xs, sv)));
                       }
                   }
               });
}

// ------------------------------------------------------------ elementwise ----------

void silu_mul(const float* g, const float* u, float* out, int64_t count) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 k = tail_mask(count - i);
        const __m512 x = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 d = _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x)));
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(_mm512_div_ps(x, d), _mm512_maskz_loadu_ps(k, u + i)));
    }
}

void gelu_mul(const float* g, const float* u, float* out, int64_t count) {
    // 0.5 x (1 + tanh(y)) == x / (1 + exp(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3)
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 c0 = _mm512_set1_ps(-2.0f * 0.7978845608028654f);
    const __m512 c1 = _mm512_set1_ps(0.044715f);
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 k = tail_mask(count - i);
        const __m512 x = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
        const __m512 m2y = _mm512_mul_ps(c0, _mm512_fmadd_ps(c1, x3, x));
        const __m512 d = _mm512_add_ps(one, exp_ps(m2y));
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(_mm512_div_ps(x, d), _mm512_maskz_loadu_ps(k, u + i)));
    }
}

void add(const float* a, const float* b, float* out, int64_t count) {
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 k = tail_mask(count - i);
        _mm512_mask_storeu_ps(out + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i)));
    }
}

void scale(const float* x, float s, float* out, int64_t count) {
    const __m512 sv = _mm512_set1_ps(s);
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 k = tail_mask(count - i);
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), sv));
    }
}

// -------------------------------------------------------------- attention ----------


// Attention for a run of query rows of one KV head (see ops.h), in attention_blocks's loop
// (attention_blocks.h): keys in 64-position blocks read from the transposed panels, a
// 4-row x 64-key score tile in 16 register accumulators fed by broadcasts of q, then an
// online-softmax update of each row, then the weighted values of 4 rows at once (Avx512::pv).
constexpr int KB = kAttnKeyBlock;

// The 16 lane sums of v[0..15], in that order, one zmm: pairs of vectors are folded by
// unpack + add three times, then the four 128-bit quarters are summed. Every input goes
// through the same additions whatever its slot, so a sum does not depend on its neighbours.
inline __m512 hsum16x16(__m512* v) {
    __m512 t[8], u[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)  // per quarter: [a0+a2, b0+b2, a1+a3, b1+b3]
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {  // per quarter: the quarter's sums of v[4i .. 4i+3]
        const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // quarters q0+q2, q1+q3 of u0, u1 (then u2, u3), then the two halves: quarter i = v[4i..4i+3]
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44), _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x44), _mm512_shuffle_f32x4(u[2], u[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

// What attention_blocks (attention_blocks.h) needs from AVX-512: 16 floats a register.
struct Avx512 {
    template <int R>
    static void qk_tile(const float* const* q, const float* kt, int hd, float* S /* R x KB */) {
        __m512 acc[R][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
        for (int e = 0; e < hd; ++e) {
            const float* kr = kt + (int64_t)e * KB;
            const __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16);
            const __m512 k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                const __m512 b = _mm512_set1_ps(q[r][e]);
                acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(b, k2, acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(b, k3, acc[r][3]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) _mm512_storeu_ps(S + r * KB + 16 * c, acc[r][c]);
    }

    // S[r][j] = q_r . key_j for the nb (<= 64) keys of a block stored as rows (key j at k + j*ks;
    // AttnArgs with kt == nullptr: the keys are the value rows, MLA's single-copy cache); S[r][j]
    // for j >= nb is 0. Tiles of R rows x 4 keys: per 16 dims, 4 key loads and R query loads feed
    // 4R accumulators (lane e % 16 of each dot), folded into 16 sums at once by hsum16x16. A dot's
    // arithmetic depends only on its row and key, not on R or the tile it shares.
    template <int R>
    static void qk_rows(const float* const* q, const float* k, int64_t ks, int nb, int hd, float* S /* R x KB */) {
        for (int j0 = 0; j0 < nb; j0 += 4) {
            const float* kr[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) kr[c] = k + (int64_t)std::min(j0 + c, nb - 1) * ks;  // past nb: repeat the last key
            __m512 acc[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
            for (int e = 0; e < hd; e += 16) {
                const __mmask16 mk = tail_mask(hd - e);
                __m512 kv[4];
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) kv[c] = _mm512_maskz_loadu_ps(mk, kr[c] + e);
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                    const __m512 qv = _mm512_maskz_loadu_ps(mk, q[r] + e);
#pragma GCC unroll 4
                    for (int c = 0; c < 4; ++c) acc[4 * r + c] = _mm512_fmadd_ps(qv, kv[c], acc[4 * r + c]);
                }
            }
            alignas(64) float d[16];
            _mm512_store_ps(d, hsum16x16(acc));
            for (int r = 0; r < R; ++r)
                for (int c = 0; c < 4 && j0 + c < nb; ++c) S[r * KB + j0 + c] = d[4 * r + c];
        }
        for (int r = 0; r < R; ++r)
            for (int j = nb; j < KB; ++j) S[r * KB + j] = 0.0f;
    }

    // acc[r][0:hd] = pre[r] * acc[r] + sum_j p[r][j] v[j]   for R rows (p rows have stride ps)
    // (pre == nullptr: start from zero). v rows at v + j*vs.
    template <int R>
    static void pv(float* const* acc, const float* pre, const float* p, int64_t ps, const float* v,
                   int64_t vs, int nj, int hd) {
        for (int e = 0; e < hd; e += 64) {
            __mmask16 mk[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) mk[c] = (e + 16 * c < hd) ? tail_mask(hd - e - 16 * c) : (__mmask16)0;
            __m512 a[R][4];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) {
                    if (pre) {
                        a[r][c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[c], acc[r] + e + 16 * c), _mm512_set1_ps(pre[r]));
                    } else {
                        a[r][c] = _mm512_setzero_ps();
                    }
                }
            }
            for (int j = 0; j < nj; ++j) {
                const float* vr = v + (int64_t)j * vs + e;
                __m512 vv[4];
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) vv[c] = _mm512_maskz_loadu_ps(mk[c], vr + 16 * c);
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                    const __m512 pj = _mm512_set1_ps(p[r * ps + j]);
#pragma GCC unroll 4
                    for (int c = 0; c < 4; ++c) a[r][c] = _mm512_fmadd_ps(pj, vv[c], a[r][c]);
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(acc[r] + e + 16 * c, mk[c], a[r][c]);
            }
        }
    }

    static float mask_max(float* s, uint64_t vis, float scale) {
        const __m512 ninf_v = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), sv = _mm512_set1_ps(scale);
        __m512 mx = ninf_v;
        for (int c = 0; c < 4; ++c) {
            const __mmask16 k = (__mmask16)(vis >> (16 * c));
            const __m512 v = _mm512_mask_mov_ps(ninf_v, k, _mm512_mul_ps(_mm512_loadu_ps(s + 16 * c), sv));
            _mm512_storeu_ps(s + 16 * c, v);
            mx = _mm512_max_ps(mx, v);
        }
        return _mm512_reduce_max_ps(mx);
    }
    static float exp_sum(float* s, float m) {
        const __m512 mv = _mm512_set1_ps(m);
        __m512 sum = _mm512_setzero_ps();
        for (int c = 0; c < 4; ++c) {
            const __m512 pexp = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * c), mv));
            _mm512_storeu_ps(s + 16 * c, pexp);
            sum = _mm512_add_ps(sum, pexp);
        }
        return _mm512_reduce_add_ps(sum);
    }
    static void scale_row(float* o, int vd, float s) {
        const __m512 inv = _mm512_set1_ps(s);
        for (int e = 0; e < vd; e += 16) {
            const __mmask16 k = tail_mask(vd - e);
            _mm512_mask_storeu_ps(o + e, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, o + e), inv));
        }
    }
};

void attention_avx512(const AttnArgs& a, int g, int r0, int r1) { attention_blocks<Avx512>(a, g, r0, r1); }

void softcap(const float* x, float cap, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = cap * std::tanh(x[i] / cap);
}

const OpsTable kTable = {
    "avx512", rmsnorm, rmsnorm_add, add_rmsnorm, rope, silu_mul, gelu_mul, add, scale, attention_avx512, softcap,
};

}  // namespace

const OpsTable& ops_avx512() { return kTable; }

}  // namespace pyengine
