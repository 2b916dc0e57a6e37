// The block loop the SIMD attention kernels share (attention_avx2.cpp, ops_avx512.cpp):
// rows [r0, r1) of KV head g (see ops.h) against the keys in 64-position blocks, with an
// online softmax: per block, scores of up to 4 query rows at once, each row's running max m,
// sum l and output accumulator (kept in the output row itself) updated, then the weighted
// values of up to 4 rows at once. What differs per instruction set comes from Isa:
//
//   template <int R> static void qk_tile(const float* const* q, const float* panel, int hd, float* S)
//                                       S (R, 64) = q_r . the panel's keys
//   template <int R> static void qk_rows(const float* const* q, const float* k, int64_t ks, int nb, int hd,
//                                        float* S)    the same for keys stored as rows (k + j*ks), 0 past nb
//   static float mask_max(float* s, uint64_t vis, float scale)
//                                       s[j] = scale * s[j] where bit j of vis is set, else -inf;
//                                       returns the max
//   static float exp_sum(float* s, float m)   s[j] = exp(s[j] - m) (exp(-inf) exactly 0); returns the sum
//   template <int R> static void pv(float* const* acc, const float* pre, const float* p, int64_t ps,
//                                   const float* v, int64_t vs, int nj, int vd)
//                                       acc[r] = pre[r] * acc[r] + sum_j p[r][j] v[j] (pre null: from 0)
//   static void scale_row(float* o, int vd, float s)   o[0:vd] *= s
//
// A row's arithmetic never depends on which rows share its tile (a block where a row sees no
// key leaves it untouched: outside [rs, re), or P all zero with corr 1), so a prompt gives bit
// for bit the same answer processed whole or token by token, if Isa's functions are per-row too.
// Internal linkage: each ISA's translation unit compiles its own copy with its own flags.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops.h"

namespace pyengine {
namespace {

template <typename F>
inline void by_four(int n, F&& f) {  // f(start, count) with count 1..4 as a template
    int r = 0;
    for (; r + 4 <= n; r += 4) f(r, std::integral_constant<int, 4>{});
    switch (n - r) {
        case 3: f(r, std::integral_constant<int, 3>{}); break;
        case 2: f(r, std::integral_constant<int, 2>{}); break;
        case 1: f(r, std::integral_constant<int, 1>{}); break;
        default: break;
    }
}

template <class Isa>
void attention_blocks(const AttnArgs& a, int g, int r0, int r1) {
    constexpr int KB = kAttnKeyBlock;
    thread_local std::vector<float> s_buf, ml_buf;
    thread_local std::vector<const float*> qp_buf;
    thread_local std::vector<float*> op_buf;
    const int group = a.group(), hd = a.head_dim, vd = a.value_dim();
    const int rows = r1 - r0;
    if (rows <= 0) return;
    const float ninf = -std::numeric_limits<float>::infinity();
    if (s_buf.size() < (size_t)rows * KB) s_buf.resize((size_t)rows * KB);
    if (ml_buf.size() < 3 * (size_t)rows) ml_buf.resize(3 * (size_t)rows);
    if (qp_buf.size() < (size_t)rows) qp_buf.resize(rows);
    if (op_buf.size() < (size_t)rows) op_buf.resize(rows);
    float* S = s_buf.data();   // (rows, 64): the block's scores, then its probabilities
    float* m = ml_buf.data();  // (rows,) running max
    float* l = m + rows;       // (rows,) running sum
    float* corr = l + rows;    // (rows,) this block's rescaling of the earlier sums
    const float** qp = qp_buf.data();
    float** op = op_buf.data();
    for (int r = 0; r < rows; ++r) {
        const int i = (r0 + r) / group, h = g * group + (r0 + r) % group;
        qp[r] = a.q + (int64_t)i * a.q_stride + (int64_t)h * hd;
        op[r] = a.out + (int64_t)i * a.out_stride + (int64_t)h * hd;
        std::memset(op[r], 0, sizeof(float) * hd);
        m[r] = ninf;
        l[r] = 0.0f;
    }
    auto pos_of = [&](int r) { return a.pos0 + (r0 + r) / group; };  // non-decreasing in r
    const int jlo = a.key_lo(pos_of(0)), jhi = a.key_hi(pos_of(rows - 1));
    const float* vbase = a.v + (int64_t)g * hd;
    // with soft-capping the scores are scaled and capped in a scalar pass first (below)
    const bool capped = a.softcap > 0.0f;
    const float scale = capped ? 1.0f : a.scale;

    for (int jb = (jlo / KB) * KB; jb < jhi; jb += KB) {
        const int nb = std::min(KB, jhi - jb);
        int rs = 0, re = rows;  // rows that see some key in [jb, jb + nb)
        while (rs < rows && pos_of(rs) < jb) ++rs;
        while (re > rs && a.key_lo(pos_of(re - 1)) >= jb + nb) --re;
        if (rs >= re) continue;
        by_four(re - rs, [&](int q0, auto R_) {
            constexpr int R = decltype(R_)::value;
            if (a.keys_in_rows())  // the value rows are the keys (kt == nullptr)
                Isa::template qk_rows<R>(qp + rs + q0, vbase + (int64_t)jb * a.v_stride, a.v_stride, nb, hd,
                                         S + (int64_t)(rs + q0) * KB);
            else
                Isa::template qk_tile<R>(qp + rs + q0, a.panel(jb / KB, g), hd, S + (int64_t)(rs + q0) * KB);
        });
        // scale, mask, online softmax update
        for (int r = rs; r < re; ++r) {
            const int p = pos_of(r);
            const int lo = std::max(a.key_lo(p) - jb, 0), hi = std::min(p + 1 - jb, nb);
            float* s = S + (int64_t)r * KB;
            if (capped)  // cap * tanh(scale * q.k / cap), as ops_generic.cpp
                for (int j = 0; j < KB; ++j) s[j] = a.softcap * std::tanh(s[j] * a.scale / a.softcap);
            const uint64_t vis = lo >= hi ? 0 : (hi >= 64 ? ~0ull : ((1ull << hi) - 1)) & ~((1ull << lo) - 1);
            const float bm = Isa::mask_max(s, vis, scale);
            if (bm == ninf) {  // nothing visible for this row in this block
                std::memset(s, 0, sizeof(float) * KB);
                corr[r] = 1.0f;
                continue;
            }
            const float mnew = std::max(m[r], bm);
            corr[r] = (m[r] == ninf) ? 0.0f : std::exp(m[r] - mnew);
            l[r] = l[r] * corr[r] + Isa::exp_sum(s, mnew);
            m[r] = mnew;
        }
        by_four(re - rs, [&](int q0, auto R_) {
            Isa::template pv<decltype(R_)::value>(op + rs + q0, corr + rs + q0, S + (int64_t)(rs + q0) * KB, KB,
                                                 vbase + (int64_t)jb * a.v_stride, a.v_stride, nb, vd);
        });
    }
    for (int r = 0; r < rows; ++r) Isa::scale_row(op[r], vd, 1.0f / l[r]);
}

}  // namespace
}  // namespace pyengine
