// Native MLA attention (see mla.h; spec: pyengine/backends/mla.py).
#include "mla.h"

#include <algorithm>
#include <cstring>

namespace pyengine {
namespace mla {

void mla_attention(const Layer& L, const float* q, const float* kv, int64_t n, int64_t pos0, float* vc, float* out,
                   const MatmulKernels& mk) {
    const int H = L.n_heads, R = L.R, r = L.r, dn = L.dn, dv = L.dv;
    const int64_t W = R + r, qw = (int64_t)dn + r;
    thread_local std::vector<float> cs, sn, kcat, qcat, att, tmp, xin, hout;
    thread_local std::vector<MatmulPart> parts;
    thread_local std::vector<double> pos;
    // cos/sin of the positions
    pos.resize(n);
    for (int64_t t = 0; t < n; ++t) pos[t] = (double)(pos0 + t);
    cs.resize(n * (r / 2));
    sn.resize(n * (r / 2));
    cpu::RopeScaling sc = L.sc;
    sc.freq_factors = L.ff.empty() ? nullptr : L.ff.data();
    cpu::rope_table(pos.data(), n, L.base, r, cs.data(), sn.data(), &sc);
    // keys: [rmsnorm(c), rope(k_pe)] per token -> the cache rows (the keys, and the values)
    kcat.resize(n * W);
    tmp.resize(n * std::max<int64_t>({(int64_t)r, (int64_t)R, (int64_t)dv}));
    cpu::rmsnorm(kv, W, n, R, L.kv_norm, R, L.eps, tmp.data());
    for (int64_t t = 0; t < n; ++t) std::memcpy(kcat.data() + t * W, tmp.data() + t * R, sizeof(float) * R);
    cpu::rope(kv + R, W, n, tmp.data(), cs.data(), sn.data(), 1, r, r, L.neox);
    for (int64_t t = 0; t < n; ++t) std::memcpy(kcat.data() + t * W + R, tmp.data() + t * r, sizeof(float) * r);
    std::memcpy(vc + pos0 * W, kcat.data(), sizeof(float) * (size_t)(n * W));
    // queries in the latent space: [Wk_b[h] q_nope_h, rope(q_pe_h)] per head; the heads'
    // products run as one matmul_group (one pool job while decoding: 16 small matrices)
    qcat.resize(n * H * W);
    xin.resize(H * n * std::max(dn, R));   // per head: (n, dn) query parts, later (n, R) latent sums
    hout.resize(H * n * std::max(R, dv));  // per head: (n, R) latent queries, later (n, dv) values
    parts.resize(H);
    for (int h = 0; h < H; ++h) {
        cpu::rope(q + h * qw + dn, H * qw, n, tmp.data(), cs.data(), sn.data(), 1, r, r, L.neox);
        for (int64_t t = 0; t < n; ++t)
            std::memcpy(qcat.data() + (t * H + h) * W + R, tmp.data() + t * r, sizeof(float) * r);
        float* xh = xin.data() + h * n * dn;  // (n, dn)
        for (int64_t t = 0; t < n; ++t) std::memcpy(xh + t * dn, q + t * H * qw + h * qw, sizeof(float) * dn);
        parts[h] = MatmulPart{L.wk_t, L.wk + h * L.wk_bytes, R, dn, xh, n, hout.data() + h * n * R};
    }
    matmul_group(parts.data(), H, mk);
    for (int h = 0; h < H; ++h)
        for (int64_t t = 0; t < n; ++t)
            std::memcpy(qcat.data() + (t * H + h) * W, hout.data() + (h * n + t) * R, sizeof(float) * R);
    // multi-query attention over the cached rows [c, k_pe], keys and values alike (kt = nullptr);
    // the values' first R dims are the latent
    att.resize(n * H * W);
    pyengine::AttnArgs a;
    a.q = qcat.data();
    a.q_stride = H * W;
    a.kt = nullptr;
    a.kt_b0 = 0;
    a.kt_block_stride = 0;
    a.v = vc;
    a.v_stride = W;
    a.out = att.data();
    a.out_stride = H * W;
    a.n = (int)n;
    a.pos0 = (int)pos0;
    a.n_heads = H;
    a.n_kv_heads = 1;
    a.head_dim = (int)W;
    a.window = 0;
    a.scale = L.scale;
    a.softcap = 0.0f;
    a.v_dim = R;  // the values' latent part: the rope key's 64 dims would be summed for nothing
    cpu::attention(a);
    // each head's latent sum through its value up-projection (one matmul_group)
    for (int h = 0; h < H; ++h) {
        float* xh = xin.data() + h * n * R;  // (n, R)
        for (int64_t t = 0; t < n; ++t) std::memcpy(xh + t * R, att.data() + (t * H + h) * W, sizeof(float) * R);
        parts[h] = MatmulPart{L.wv_t, L.wv + h * L.wv_bytes, dv, R, xh, n, hout.data() + h * n * dv};
    }
    matmul_group(parts.data(), H, mk);
    for (int h = 0; h < H; ++h)
        for (int64_t t = 0; t < n; ++t)
            std::memcpy(out + t * H * dv + h * dv, hout.data() + (h * n + t) * dv, sizeof(float) * dv);
}

}  // namespace mla
}  // namespace pyengine
