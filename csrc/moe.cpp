// Native mixture-of-experts feed-forward (see moe.h; spec: pyengine/backends/moe.py).
#include "moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "cpu_ops.h"

namespace pyengine {
namespace moe {

namespace {

// indices of the k largest s[0..m), best first; ties: the lower index first (a stable sort)
void top_k(const float* s, int m, int k, int* idx) {
    std::vector<int> order(m);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[a] > s[b]; });
    for (int j = 0; j < k; ++j) idx[j] = order[j];
}

}  // namespace

void route(const Layer& L, const float* logits, int64_t n, int32_t* sel, float* w) {
    const int E = (int)L.n_expert, k = L.top_k;
    std::vector<float> p(E), s(E);
    std::vector<int> idx(std::max(E, 2));
    for (int64_t t = 0; t < n; ++t) {
        const float* z = logits + t * E;
        if (L.sigmoid) {
            for (int e = 0; e < E; ++e) p[e] = 1.0f / (1.0f + std::exp(-z[e]));
        } else {  // softmax, max subtracted
            float mx = z[0];
            for (int e = 1; e < E; ++e) mx = std::max(mx, z[e]);
            float sum = 0.0f;
            for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(z[e] - mx));
            for (int e = 0; e < E; ++e) p[e] /= sum;
        }
        for (int e = 0; e < E; ++e) s[e] = L.bias.empty() ? p[e] : p[e] + L.bias[e];
        if (L.n_group > 1) {  // only the n_group_used groups with the best top-2 sums compete
            const int G = L.n_group, per = E / G;
            std::vector<float> gscore(G);
            for (int g = 0; g < G; ++g) {
                top_k(s.data() + g * per, per, std::min(2, per), idx.data());
                gscore[g] = s[g * per + idx[0]] + (per > 1 ? s[g * per + idx[1]] : 0.0f);
            }
            std::vector<int> keep(G);
            top_k(gscore.data(), G, L.n_group_used, keep.data());
            std::vector<char> on(G, 0);
            for (int j = 0; j < L.n_group_used; ++j) on[keep[j]] = 1;
            for (int e = 0; e < E; ++e)
                if (!on[e / per]) s[e] = -std::numeric_limits<float>::infinity();
        }
        top_k(s.data(), E, k, idx.data());
        float sum = 0.0f;
        for (int j = 0; j < k; ++j) {
            sel[t * k + j] = idx[j];
            sum += (w[t * k + j] = p[idx[j]]);  // weights: the unbiased probabilities
        }
        if (L.norm) {
            const float d = std::max(sum, 6.103515625e-5f);
            for (int j = 0; j < k; ++j) w[t * k + j] /= d;
        }
        if (L.scale != 0.0f && L.scale != 1.0f)
            for (int j = 0; j < k; ++j) w[t * k + j] *= L.scale;
    }
}

void moe_ffn(const Layer& L, const float* x, int64_t n, float* out, const MatmulKernels& mk) {
    const int64_t E = L.n_expert, d = L.dim, f = L.ffn, k = L.top_k;
    // scratch, grown once per thread and reused (a decode step allocates nothing after the first)
    thread_local std::vector<float> logits, wts, xe, g, u, yd, ys;
    thread_local std::vector<int32_t> sel;
    thread_local std::vector<int64_t> tok, first, cnt, at;
    thread_local std::vector<MatmulPart> parts;
    logits.resize(n * E);
    sel.resize(n * k);
    wts.resize(n * k);
    ys.resize(n * k * d);  // (n, k, d): each slot's expert output
    matmul(L.router_t, L.router, E, d, x, n, logits.data(), mk);
    route(L, logits.data(), n, sel.data(), wts.data());
    // the (token, slot) pairs grouped by expert, in expert order: expert e owns rows
    // first[e] .. first[e] + cnt[e] of the flat (n * k, .) buffers below
    cnt.assign(E, 0);
    for (int64_t i = 0; i < n * k; ++i) ++cnt[sel[i]];
    first.assign(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) first[e + 1] = first[e] + cnt[e];
    tok.resize(n * k);
    at.assign(first.begin(), first.end() - 1);
    for (int64_t i = 0; i < n * k; ++i) tok[at[sel[i]]++] = i;  // flat (token, slot) index of each row
    const int64_t M = n * k;
    g.resize(M * f);   // (M, f) gate, then silu(gate) * up
    u.resize(M * f);   // (M, f) up
    yd.resize(M * d);  // (M, d) expert outputs
    // each row's token: one token (decoding) is every expert's input as it is (and is quantized
    // once); more are gathered per expert into xe (M, d)
    if (n > 1) {
        xe.resize(M * d);
        for (int64_t r = 0; r < M; ++r) std::copy(x + (tok[r] / k) * d, x + (tok[r] / k + 1) * d, xe.data() + r * d);
    }
    // every used expert's gate and up as one matmul_group, then every down as another (one pool
    // job each while decoding, instead of three per expert)
    parts.clear();
    for (int64_t e = 0; e < E; ++e) {
        if (!cnt[e]) continue;
        const int64_t o = first[e], m = cnt[e];
        const float* xin = n > 1 ? xe.data() + o * d : x;
        parts.push_back(MatmulPart{L.gate.t, L.gate.at(e), f, d, xin, m, g.data() + o * f});
        parts.push_back(MatmulPart{L.up.t, L.up.at(e), f, d, xin, m, u.data() + o * f});
    }
    matmul_group(parts.data(), (int)parts.size(), mk);
    cpu::binary(cpu::Binary::silu_mul, g.data(), u.data(), g.data(), M * f);
    parts.clear();
    for (int64_t e = 0; e < E; ++e) {
        if (!cnt[e]) continue;
        const int64_t o = first[e], m = cnt[e];
        parts.push_back(MatmulPart{L.down.t, L.down.at(e), d, f, g.data() + o * f, m, yd.data() + o * d});
    }
    matmul_group(parts.data(), (int)parts.size(), mk);
    for (int64_t r = 0; r < M; ++r) std::copy(yd.data() + r * d, yd.data() + (r + 1) * d, ys.data() + tok[r] * d);
    for (int64_t t = 0; t < n; ++t) {  // weighted sum in slot order
        float* o = out + t * d;
        for (int64_t c = 0; c < d; ++c) o[c] = wts[t * k] * ys[(t * k) * d + c];
        for (int64_t j = 1; j < k; ++j) {
            const float wj = wts[t * k + j];
            const float* y = ys.data() + (t * k + j) * d;
            for (int64_t c = 0; c < d; ++c) o[c] += wj * y[c];
        }
    }
}

}  // namespace moe
}  // namespace pyengine
