// Portable scalar versions of the non-matmul ops (see ops.h). These are the fallback on
// CPUs without AVX-512 and a second, simple implementation the SIMD variant is tested
// against; they are written for clarity and left for the compiler to vectorise.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"

namespace pyengine {
namespace ops {
namespace {

float inv_rms(const float* x, int64_t g, float eps) {
    double ss = 0.0;  // double: the row sum is the only long reduction here
    for (int64_t i = 0; i < g; ++i) ss += (double)x[i] * (double)x[i];
    float ms = (float)(ss / (double)g);
    return 1.0f / std::sqrt(ms + eps);
}

void rmsnorm(const float* x, const float* w, float* out, int64_t rows, int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * g;
        float* o = out + r * g;
        float inv = inv_rms(xr, g, eps);
        for (int64_t i = 0; i < g; ++i) o[i] = xr[i] * inv * w[i];
    }
}

void rmsnorm_add(const float* x, const float* w, const float* res, float* out, int64_t rows,
                 int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * g;
        float inv = inv_rms(xr, g, eps);
        for (int64_t i = 0; i < g; ++i) out[r * g + i] = res[r * g + i] + xr[i] * inv * w[i];
    }
}

void add_rmsnorm(const float* a, const float* b, const float* w, float* sum, float* norm,
                 int64_t rows, int64_t g, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        float* s = sum + r * g;
        for (int64_t i = 0; i < g; ++i) s[i] = a[r * g + i] + b[r * g + i];
        float inv = inv_rms(s, g, eps);
        for (int64_t i = 0; i < g; ++i) norm[r * g + i] = s[i] * inv * w[i];
    }
}

void rope(const float* x, int64_t x_stride, float* out, const float* cos_t, const float* sin_t,
          int64_t t0, int64_t t1, int n_heads, int head_dim, int n_rot, bool neox) {
    const int half = n_rot / 2;
    const int64_t width = (int64_t)n_heads * head_dim;
    for (int64_t t = t0; t < t1; ++t) {
        const float* c = cos_t + t * half;
        const float* s = sin_t + t * half;
        for (int h = 0; h < n_heads; ++h) {
            const float* xh = x + t * x_stride + (int64_t)h * head_dim;
            float* oh = out + t * width + (int64_t)h * head_dim;
            if (neox) {
                for (int i = 0; i < half; ++i) {
                    float a = xh[i], b = xh[i + half];
                    oh[i] = a * c[i] - b * s[i];
                    oh[i + half] = a * s[i] + b * c[i];
                }
            } else {
                for (int i = 0; i < half; ++i) {
                    float a = xh[2 * i], b = xh[2 * i + 1];
                    oh[2 * i] = a * c[i] - b * s[i];
                    oh[2 * i + 1] = a * s[i] + b * c[i];
                }
            }
            if (oh != xh)
                for (int i = n_rot; i < head_dim; ++i) oh[i] = xh[i];
        }
    }
}

void silu_mul(const float* g, const float* u, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void gelu_mul(const float* g, const float* u, float* out, int64_t count) {
    // 0.5 x (1 + tanh(y)) == x / (1 + exp(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3)
    for (int64_t i = 0; i < count; ++i) {
        float x = g[i];
        float y = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + std::exp(-2.0f * y)) * u[i];
    }
}

void add(const float* a, const float* b, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = a[i] + b[i];
}

void scale(const float* x, float s, float* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = x[i] * s;
}

// Two passes per row over the keys it sees: scores and their max, then exp, sum and
// the weighted values. Keys are read from the panels (ops.h).
void attn_tile(const AttnArgs& a, int g, int r0, int r1) {
    thread_local std::vector<float> scores;
    const int group = a.group(), hd = a.head_dim, KB = kAttnKeyBlock;
    for (int r = r0; r < r1; ++r) {
        const int i = r / group, h = g * group + r % group;
        const int p = a.pos0 + i;
        const int lo = a.key_lo(p), hi = a.key_hi(p);
        const float* qr = a.q + (int64_t)i * a.q_stride + (int64_t)h * hd;
        float* o = a.out + (int64_t)i * a.out_stride + (int64_t)h * hd;
        scores.resize((size_t)(hi - lo));
        float mx = -std::numeric_limits<float>::infinity();
        for (int j = lo; j < hi; ++j) {
            const float* kp = a.panel(j / KB, g) + j % KB;
            float d = 0.0f;
            for (int e = 0; e < hd; ++e) d += qr[e] * kp[(int64_t)e * KB];
            d *= a.scale;
            scores[j - lo] = d;
            mx = std::max(mx, d);
        }
        std::fill(o, o + hd, 0.0f);
        float sum = 0.0f;
        for (int j = lo; j < hi; ++j) {
            const float pj = std::exp(scores[j - lo] - mx);
            sum += pj;
            const float* vr = a.v + (int64_t)j * a.v_stride + (int64_t)g * hd;
            for (int e = 0; e < hd; ++e) o[e] += pj * vr[e];
        }
        const float inv = 1.0f / sum;
        for (int e = 0; e < hd; ++e) o[e] *= inv;
    }
}

const OpsTable kTable = {
    "generic", rmsnorm, rmsnorm_add, add_rmsnorm, rope, silu_mul, gelu_mul, add, scale, attn_tile,
};

}  // namespace

const OpsTable& ops_generic() { return kTable; }

}  // namespace ops
}  // namespace pyengine
