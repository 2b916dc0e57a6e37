// Causal attention over the float32 KV cache, with sliding window and grouped-query heads:
// attention_cuda (the CPU tiers' attention_generic / _avx2 / _avx512).
//
// Query t (position p = pos0 + t) of head h sees keys j with j <= p and, when
// window > 0, p - j < window; it reads key/value head h / (H / Hkv). Scores are
// scale * q.k, softmax in float32 (numpy_backend.attention_reference).
//
// simple : one thread per output value; three plain passes over the keys (max,
//          then sum of exponentials and weighted values).
// tuned  : one block of 4 warps per (head, query[, key slice]); lanes split the
//          head dims, warps take every 4th key with an online softmax, and the
//          four partial results are merged through shared memory. With n_splits
//          > 1 (decode: few queries, long context) the keys of each query are cut
//          into slices handled by separate blocks, whose (max, sum, weighted values)
//          a second kernel merges (flash-decoding).
#include <stdexcept>
#include <string>

#include "compat.cuh"
#include "kernels.h"

namespace pyengine {
namespace cuda {

namespace {

// scale * q.k, soft-capped when cap > 0: cap * tanh(score / cap)
PYE_D float score(float qk, float scale, float cap) {
    const float s = qk * scale;
    return cap > 0.0f ? cap * tanhf(s / cap) : s;
}

PYE_D int first_key(int p, int window) {
    const int lo = p - window + 1;
    return window > 0 && lo > 0 ? lo : 0;
}

__global__ void attention_simple_kernel(const float* __restrict__ q, const float* __restrict__ K,
                                        const float* __restrict__ V, int n, int pos0, int H, int Hkv, int hd,
                                        float scale, int window, float cap, float* __restrict__ out) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(n) * H * hd) return;
    const int d = static_cast<int>(idx % hd);
    const int h = static_cast<int>((idx / hd) % H);
    const int t = static_cast<int>(idx / (static_cast<long long>(hd) * H));
    const int p = pos0 + t;
    const int kvh = h / (H / Hkv);
    const size_t kvw = static_cast<size_t>(Hkv) * hd;
    const float* qv = q + (static_cast<size_t>(t) * H + h) * hd;
    const int j0 = first_key(p, window);

    float m = -INFINITY;
    for (int j = j0; j <= p; ++j) {
        const float* kr = K + j * kvw + static_cast<size_t>(kvh) * hd;
        float s = 0.0f;
        for (int e = 0; e < hd; ++e) s += qv[e] * kr[e];
        m = fmaxf(m, score(s, scale, cap));
    }
    float l = 0.0f, acc = 0.0f;
    for (int j = j0; j <= p; ++j) {
        const float* kr = K + j * kvw + static_cast<size_t>(kvh) * hd;
        float s = 0.0f;
        for (int e = 0; e < hd; ++e) s += qv[e] * kr[e];
        const float pj = expf(score(s, scale, cap) - m);
        l += pj;
        acc += pj * V[j * kvw + static_cast<size_t>(kvh) * hd + d];
    }
    out[idx] = acc / l;
}

constexpr int ATT_WARPS = 4;

// DPL = head dims per lane (head_dim <= 32 * DPL)
template <int DPL>
__global__ void __launch_bounds__(32 * ATT_WARPS)
attention_kernel(const float* __restrict__ q, const float* __restrict__ K, const float* __restrict__ V, int pos0, int H, int Hkv, int hd, float scale, int window, float cap, int n_splits, float* __restrict__ out,
                 float* __restrict__ part) {
    const int h = blockIdx.x, t = blockIdx.y, z = blockIdx.z;
    const int lane = threadIdx.x, warp = threadIdx.y;
    const int p = pos0 + t;
    const int kvh = h / (H / Hkv);
    const size_t kvw = static_cast<size_t>(Hkv) * hd;
    const int j_lo = first_key(p, window);
    const int len = p - j_lo + 1;
    const int chunk = (len + n_splits - 1) / n_splits;
    const int j0 = j_lo + z * chunk;
    const int j1 = (j0 + chunk < p + 1) ? j0 + chunk : p + 1;  // exclusive; j1 <= j0 means an empty slice

    const float* qv = q + (static_cast<size_t>(t) * H + h) * hd;
    float qr[DPL], acc[DPL];
#pragma unroll
    for (int r = 0; r < DPL; ++r) {
        const int d = lane + 32 * r;
        qr[r] = d < hd ? qv[d] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = j0 + warp; j < j1; j += ATT_WARPS) {  // the same keys for every lane of a warp
        const float* kr = K + j * kvw + static_cast<size_t>(kvh) * hd;
        const float* vr = V + j * kvw + static_cast<size_t>(kvh) * hd;
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < DPL; ++r) {
            const int d = lane + 32 * r;
            if (d < hd) s += qr[r] * kr[d];
        }
        s = score(warp_sum(s), scale, cap);
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 for the first key (m = -inf)
        const float pj = expf(s - m_new);
        l = l * corr + pj;
#pragma unroll
        for (int r = 0; r < DPL; ++r) {
            const int d = lane + 32 * r;
            if (d < hd) acc[r] = acc[r] * corr + pj * vr[d];
        }
        m = m_new;
    }

    __shared__ float s_m[ATT_WARPS];
    __shared__ float s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][32 * DPL];
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int r = 0; r < DPL; ++r) s_acc[warp][lane + 32 * r] = acc[r];
    __syncthreads();
    if (warp != 0) return;

    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, s_m[w]);
    float L = 0.0f, o[DPL];
#pragma unroll
    for (int r = 0; r < DPL; ++r) o[r] = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w) {
        if (s_m[w] == -INFINITY) continue;  // this warp saw no key
        const float c = expf(s_m[w] - M);
        L += s_l[w] * c;
#pragma unroll
        for (int r = 0; r < DPL; ++r) o[r] += s_acc[w][lane + 32 * r] * c;
    }
    if (n_splits == 1) {
        float* ov = out + (static_cast<size_t>(t) * H + h) * hd;
#pragma unroll
        for (int r = 0; r < DPL; ++r) {
            const int d = lane + 32 * r;
            if (d < hd) ov[d] = o[r] / L;  // L > 0: key p itself is always visible
        }
    } else {
        // partial result of slice z: [M, L, o[0..hd)] (M = -inf, L = 0 for an empty slice)
        float* pp = part + ((static_cast<size_t>(t) * H + h) * n_splits + z) * (hd + 2);
        if (lane == 0) {
            pp[0] = M;
            pp[1] = L;
        }
#pragma unroll
        for (int r = 0; r < DPL; ++r) {
            const int d = lane + 32 * r;
            if (d < hd) pp[2 + d] = o[r];
        }
    }
}

// merge the n_splits slices of each (query, head)
__global__ void attention_combine_kernel(const float* __restrict__ part, int H, int hd, int n_splits,
                                         float* __restrict__ out) {
    const int h = blockIdx.x, t = blockIdx.y;
    const size_t stride = static_cast<size_t>(hd) + 2;
    const float* pp = part + (static_cast<size_t>(t) * H + h) * n_splits * stride;
    float M = -INFINITY;
    for (int z = 0; z < n_splits; ++z) M = fmaxf(M, pp[z * stride]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.0f, o = 0.0f;
        for (int z = 0; z < n_splits; ++z) {
            const float mz = pp[z * stride];
            if (mz == -INFINITY) continue;  // empty slice
            const float c = expf(mz - M);
            L += pp[z * stride + 1] * c;
            o += pp[z * stride + 2 + d] * c;
        }
        out[(static_cast<size_t>(t) * H + h) * hd + d] = o / L;
    }
}

template <int DPL>
void launch_attention(const float* q, const float* k, const float* v, int n, int pos0, int H, int Hkv, int hd,
                      float scale, int window, float cap, float* out, int n_splits, float* part) {
    launch("attention", attention_kernel<DPL>, dim3(H, n, n_splits), dim3(32, ATT_WARPS), q, k, v, pos0, H, Hkv,
           hd, scale, window, cap, n_splits, out, part);
    if (n_splits > 1)
        launch("attention_combine", attention_combine_kernel, dim3(H, n), dim3(hd < 128 ? 64 : 128), part, H, hd,
               n_splits, out);
}

}  // namespace

size_t attention_scratch_bytes(int n, int n_heads, int head_dim, int n_splits) {
    if (n_splits <= 1 || n <= 0 || n_heads <= 0 || head_dim <= 0) return 0;
    return static_cast<size_t>(n) * n_heads * n_splits * (static_cast<size_t>(head_dim) + 2) * sizeof(float);
}

void attention_cuda(const float* q, const float* k, const float* v, int n, int pos0, int n_heads, int n_kv_heads,
                    int head_dim, float scale, int window, float* out, int n_splits, void* scratch,
                    size_t scratch_bytes, bool simple, float softcap) {
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || head_dim <= 0)
        throw std::invalid_argument("attention: need n_heads a positive multiple of n_kv_heads (got " +
                                    std::to_string(n_heads) + " and " + std::to_string(n_kv_heads) + ")");
    if (pos0 < 0 || window < 0 || n_splits < 1)
        throw std::invalid_argument("attention: pos0 and window must be >= 0 and n_splits >= 1");
    if (!(softcap >= 0.0f)) throw std::invalid_argument("attention: softcap must be >= 0 (0: off)");
    if (n <= 0) return;
    if (simple || head_dim > ATTN_MAX_HEAD_DIM) {
        const size_t total = static_cast<size_t>(n) * n_heads * head_dim;
        launch("attention_simple", attention_simple_kernel, dim3(ceil_div(total, 128)), dim3(128), q, k, v, n, pos0,
               n_heads, n_kv_heads, head_dim, scale, window, softcap, out);
        return;
    }
    if (n_splits > 1 && scratch_bytes < attention_scratch_bytes(n, n_heads, head_dim, n_splits))
        throw std::invalid_argument("attention: scratch of " + std::to_string(scratch_bytes) + " bytes, needs " +
                                    std::to_string(attention_scratch_bytes(n, n_heads, head_dim, n_splits)));
    float* part = static_cast<float*>(scratch);
    if (head_dim <= 32)
        launch_attention<1>(q, k, v, n, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap, out, n_splits,
                            part);
    else if (head_dim <= 64)
        launch_attention<2>(q, k, v, n, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap, out, n_splits,
                            part);
    else if (head_dim <= 128)
        launch_attention<4>(q, k, v, n, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap, out, n_splits,
                            part);
    else
        launch_attention<8>(q, k, v, n, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap, out, n_splits,
                            part);
}

}  // namespace cuda
}  // namespace pyengine
