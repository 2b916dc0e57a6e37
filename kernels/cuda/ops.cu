// Activation ops: rmsnorm (per group), rotary embedding, elementwise gates, add, scale.
// Semantics are those of pyengine/backends/numpy_backend.py.
#include <cmath>
#include <algorithm>
#include <stdexcept>
#include <string>

#include "compat.cuh"
#include "kernels.h"

namespace pyengine {
namespace cuda {

namespace {

// ---------------------------------------------------------------------------------
// rmsnorm: groups of g contiguous values, x / sqrt(mean(x^2) + eps) * w
// ---------------------------------------------------------------------------------
__global__ void rmsnorm_simple_kernel(const float* __restrict__ x, long long n_groups, int g,
                                      const float* __restrict__ w, float eps, float* __restrict__ out) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_groups) return;
    const float* xg = x + i * g;
    float ss = 0.0f;
    for (int e = 0; e < g; ++e) ss += xg[e] * xg[e];
    const float r = sqrtf(ss / static_cast<float>(g) + eps);
    for (int e = 0; e < g; ++e) out[i * g + e] = xg[e] / r * w[e];
}

constexpr int NORM_WARPS = 8;

// one warp per group
__global__ void __launch_bounds__(32 * NORM_WARPS)
rmsnorm_kernel(const float* __restrict__ x, long long n_groups, int g, const float* __restrict__ w, float eps,
               float* __restrict__ out) {
    const long long i = static_cast<long long>(blockIdx.x) * NORM_WARPS + threadIdx.y;
    if (i >= n_groups) return;  // whole warp
    const int lane = threadIdx.x;
    const float* xg = x + i * g;
    float ss = 0.0f;
    for (int e = lane; e < g; e += 32) ss += xg[e] * xg[e];
    ss = warp_sum(ss);
    const float r = sqrtf(ss / static_cast<float>(g) + eps);
    for (int e = lane; e < g; e += 32) out[i * g + e] = xg[e] / r * w[e];
}

// ---------------------------------------------------------------------------------
// rope. Angle of pair i: pos * base^(-2i/n_rot), computed in double like the reference.
// ---------------------------------------------------------------------------------
// Scaled (RopeScaling, as the CPU's rope_table): extrap = that angle / freq_factors[i];
// angle = freq_scale * extrap, mixed with extrap on YaRN's ramp [lo, hi] (weight ext);
// cos/sin times mscale. RopeK holds what the host precomputed.
struct RopeK {
    const float* ff;  // device, or null
    double fs, ext, lo, hi, mscale;
    int scaled;       // 0: the plain angle, exactly as before
};

PYE_D void rope_angle(int pos, int i, int n_rot, double freq_base, const RopeK& k, float* c, float* s) {
    const double extrap = static_cast<double>(pos) * pow(freq_base, -(2.0 * i) / n_rot);
    if (!k.scaled) {
        *c = static_cast<float>(cos(extrap));
        *s = static_cast<float>(sin(extrap));
        return;
    }
    const double ex = k.ff ? extrap / static_cast<double>(k.ff[i]) : extrap;
    double theta = k.fs * ex;
    if (k.ext != 0.0) {
        const double y = (static_cast<double>(i) - k.lo) / fmax(0.001, k.hi - k.lo);
        const double ramp = (1.0 - fmin(1.0, fmax(0.0, y))) * k.ext;
        theta = theta * (1.0 - ramp) + ex * ramp;
    }
    *c = static_cast<float>(cos(theta) * k.mscale);
    *s = static_cast<float>(sin(theta) * k.mscale);
}

// one thread per output value
__global__ void rope_simple_kernel(const float* __restrict__ x, int n, int n_heads, int head_dim,
                                   const int32_t* __restrict__ pos, double freq_base, int neox, int n_rot,
                                   RopeK rk, float* __restrict__ out) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long total = static_cast<long long>(n) * n_heads * head_dim;
    if (idx >= total) return;
    const int dd = static_cast<int>(idx % head_dim);
    const long long t = idx / (static_cast<long long>(n_heads) * head_dim);
    const float* xh = x + (idx - dd);  // start of this head
    if (dd >= n_rot) {
        out[idx] = xh[dd];
        return;
    }
    const int half = n_rot / 2;
    int i, ia, ib;
    if (neox) {
        i = dd % half;
        ia = i;
        ib = i + half;
    } else {
        i = dd / 2;
        ia = 2 * i;
        ib = 2 * i + 1;
    }
    float c, s;
    rope_angle(pos[t], i, n_rot, freq_base, rk, &c, &s);
    const float a = xh[ia], b = xh[ib];
    out[idx] = (dd == ia) ? a * c - b * s : a * s + b * c;
}

// one thread per (token, pair): the angle is computed once for all heads. Threads
// j >= n_rot/2 copy the unrotated dims n_rot .. head_dim-1.
__global__ void rope_kernel(const float* __restrict__ x, int n, int n_heads, int head_dim,
                            const int32_t* __restrict__ pos, double freq_base, int neox, int n_rot,
                            RopeK rk, float* __restrict__ out) {
    const int half = n_rot / 2;
    const int per_token = half + (head_dim - n_rot);
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(n) * per_token) return;
    const long long t = idx / per_token;
    const int j = static_cast<int>(idx % per_token);
    const size_t row = static_cast<size_t>(t) * n_heads * head_dim;
    if (j >= half) {
        const int dd = n_rot + (j - half);
        for (int h = 0; h < n_heads; ++h) out[row + h * head_dim + dd] = x[row + h * head_dim + dd];
        return;
    }
    float c, s;
    rope_angle(pos[t], j, n_rot, freq_base, rk, &c, &s);
    const int ia = neox ? j : 2 * j;
    const int ib = neox ? j + half : 2 * j + 1;
    for (int h = 0; h < n_heads; ++h) {
        const size_t o = row + static_cast<size_t>(h) * head_dim;
        const float a = x[o + ia], b = x[o + ib];
        out[o + ia] = a * c - b * s;
        out[o + ib] = a * s + b * c;
    }
}

// ---------------------------------------------------------------------------------
// elementwise
// ---------------------------------------------------------------------------------
enum Op { OP_ADD = 0, OP_SCALE = 1, OP_SILU_MUL = 2, OP_GELU_MUL = 3, OP_SOFTCAP = 4 };

template <int OP>
PYE_D float apply(float a, float b, float s) {
    if (OP == OP_ADD) return a + b;
    if (OP == OP_SCALE) return a * s;
    if (OP == OP_SILU_MUL) return a / (1.0f + expf(-a)) * b;
    if (OP == OP_SOFTCAP) return s * tanhf(a / s);  // soft-capping, s = cap
    // GELU, tanh approximation: 0.5 a (1 + tanh(y)) = a / (1 + exp(-2y)), y = sqrt(2/pi) (a +
    // 0.044715 a^3); the quotient keeps the negative tail that 1 + tanh(y) cancels away
    return a / (1.0f + expf(-2.0f * 0.7978845608028654f * (a + 0.044715f * a * a * a))) * b;
}

// out[i] = op(a[i], b[i % nb], s); b unused (may be null) for scale
template <int OP>
__global__ void eltwise_simple_kernel(const float* a, const float* b, long long na, long long nb, float s,
                                      float* out) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= na) return;
    out[i] = apply<OP>(a[i], (OP == OP_SCALE || OP == OP_SOFTCAP) ? 0.0f : b[i % nb], s);
}

// float4 version: na, nb multiples of 4, pointers 16-byte aligned; grid-stride loop
template <int OP>
__global__ void eltwise4_kernel(const float4* a, const float4* b, long long na4, long long nb4, float s,
                                float4* out) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < na4; i += stride) {
        const float4 x = a[i];
        const float4 y = (OP == OP_SCALE || OP == OP_SOFTCAP) ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : b[i % nb4];
        out[i] = make_float4(apply<OP>(x.x, y.x, s), apply<OP>(x.y, y.y, s), apply<OP>(x.z, y.z, s),
                             apply<OP>(x.w, y.w, s));
    }
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <int OP>
void eltwise(const char* what, const float* a, size_t na, const float* b, size_t nb, float s, float* out,
             bool simple) {
    if (na == 0) return;
    constexpr bool unary = OP == OP_SCALE || OP == OP_SOFTCAP;
    if (!unary && (nb == 0 || na % nb != 0))
        throw std::invalid_argument(std::string(what) + ": second operand of " + std::to_string(nb) +
                                    " values does not tile " + std::to_string(na));
    if (simple) {
        launch(what, eltwise_simple_kernel<OP>, dim3(ceil_div(na, 256)), dim3(256), a, b,
               static_cast<long long>(na), static_cast<long long>(nb), s, out);
        return;
    }
    if (na % 4 == 0 && (unary || nb % 4 == 0) && aligned16(a) && aligned16(b) && aligned16(out)) {
        const size_t na4 = na / 4;
        const unsigned blocks = static_cast<unsigned>(std::min<size_t>(ceil_div(na4, 256), 4096));
        launch(what, eltwise4_kernel<OP>, dim3(blocks), dim3(256), reinterpret_cast<const float4*>(a),
               reinterpret_cast<const float4*>(b), static_cast<long long>(na4), static_cast<long long>(nb / 4), s,
               reinterpret_cast<float4*>(out));
    } else {
        launch(what, eltwise_simple_kernel<OP>, dim3(ceil_div(na, 256)), dim3(256), a, b,
               static_cast<long long>(na), static_cast<long long>(nb), s, out);
    }
}

}  // namespace

void rmsnorm(const float* x, int n, int d, const float* w, int g, float eps, float* out, bool simple) {
    if (n < 0 || d <= 0 || g <= 0 || d % g)
        throw std::invalid_argument("rmsnorm: width " + std::to_string(d) + " is not a multiple of the weight length " +
                                    std::to_string(g));
    const long long groups = static_cast<long long>(n) * (d / g);
    if (groups == 0) return;
    if (simple)
        launch("rmsnorm_simple", rmsnorm_simple_kernel, dim3(ceil_div(groups, 128)), dim3(128), x, groups, g, w, eps,
               out);
    else
        launch("rmsnorm", rmsnorm_kernel, dim3(ceil_div(groups, NORM_WARPS)), dim3(32, NORM_WARPS), x, groups, g, w,
               eps, out);
}

void rope(const float* x, int n, int n_heads, int head_dim, const int32_t* pos, double freq_base, bool neox,
          int n_rot, float* out, bool simple, const RopeScaling& sc) {
    if (n_heads <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot > head_dim || n_rot % 2)
        throw std::invalid_argument("rope: need 0 < n_rot <= head_dim with n_rot even (n_rot=" +
                                    std::to_string(n_rot) + ", head_dim=" + std::to_string(head_dim) + ")");
    if (!(sc.freq_scale > 0.0) || (sc.ext_factor != 0.0 && sc.n_ctx_orig <= 0))
        throw std::invalid_argument("rope: need freq_scale > 0, and n_ctx_orig > 0 with YaRN (ext_factor != 0)");
    if (n <= 0) return;
    const YarnRamp yr = yarn_ramp(sc, n_rot, freq_base);  // YaRN's correction dims and magnitude (host, double)
    RopeK rk{sc.freq_factors, sc.freq_scale, sc.ext_factor, yr.lo, yr.hi, yr.mscale, scales_angles(sc) ? 1 : 0};
    if (simple) {
        const size_t total = static_cast<size_t>(n) * n_heads * head_dim;
        launch("rope_simple", rope_simple_kernel, dim3(ceil_div(total, 256)), dim3(256), x, n, n_heads, head_dim,
               pos, freq_base, neox ? 1 : 0, n_rot, rk, out);
    } else {
        const size_t total = static_cast<size_t>(n) * (n_rot / 2 + head_dim - n_rot);
        launch("rope", rope_kernel, dim3(ceil_div(total, 128)), dim3(128), x, n, n_heads, head_dim, pos, freq_base,
               neox ? 1 : 0, n_rot, rk, out);
    }
}

void add(const float* a, size_t na, const float* b, size_t nb, float* out, bool simple) {
    eltwise<OP_ADD>("add", a, na, b, nb, 0.0f, out, simple);
}
void scale(const float* x, size_t n, float s, float* out, bool simple) {
    eltwise<OP_SCALE>("scale", x, n, nullptr, 0, s, out, simple);
}
void silu_mul(const float* gate, const float* up, size_t n, float* out, bool simple) {
    eltwise<OP_SILU_MUL>("silu_mul", gate, n, up, n, 0.0f, out, simple);
}
void gelu_mul(const float* gate, const float* up, size_t n, float* out, bool simple) {
    eltwise<OP_GELU_MUL>("gelu_mul", gate, n, up, n, 0.0f, out, simple);
}
void softcap(const float* x, size_t n, float cap, float* out, bool simple) {
    if (!(cap > 0.0f)) throw std::invalid_argument("softcap: cap must be > 0");
    eltwise<OP_SOFTCAP>("softcap", x, n, nullptr, 0, cap, out, simple);
}

}  // namespace cuda
}  // namespace pyengine
