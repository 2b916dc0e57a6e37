// How rope's angles are scaled (the parameters of llama.cpp's ggml_rope_ext; see
// pyengine/backends/base.py RopeScaling). Defaults: no scaling. One definition for the
// CPU ops (csrc/cpu_ops.h: cpu::RopeScaling), the graph and MLA layers, and the CUDA
// kernels (kernels/cuda/kernels.h: cuda::RopeScaling), and the host-side arithmetic both
// backends do with it before their per-angle loops (standard headers only: nvcc compiles it
// as it is).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace pyengine {

struct RopeScaling {
    const float* freq_factors = nullptr;  // (n_rot/2) or null: pair i's frequency is divided by it
                                          // (host memory for the CPU ops, device memory for CUDA)
    double freq_scale = 1.0;              // interpolated angle = freq_scale * angle (linear, YaRN)
    double ext_factor = 0.0;              // YaRN: weight of the extrapolated angle on the ramp; 0 = off
    double attn_factor = 1.0;             // cos and sin are multiplied by this (times YaRN's mscale)
    double beta_fast = 32.0, beta_slow = 1.0;
    int64_t n_ctx_orig = 0;               // YaRN: the training context (needed when ext_factor != 0)
};

// The scalar parameters as the bindings take them; freq_factors stays null (each caller
// checks and sets its own buffer). Checking the values is the caller's job too.
inline RopeScaling rope_scaling(double freq_scale, double ext_factor, double attn_factor, double beta_fast,
                                double beta_slow, int64_t n_ctx_orig) {
    RopeScaling sc;
    sc.freq_scale = freq_scale;
    sc.ext_factor = ext_factor;
    sc.attn_factor = attn_factor;
    sc.beta_fast = beta_fast;
    sc.beta_slow = beta_slow;
    sc.n_ctx_orig = n_ctx_orig;
    return sc;
}

// Whether two scalings give the same angles for the same freq_factors (the scalar fields agree).
inline bool same_scalars(const RopeScaling& a, const RopeScaling& b) {
    return a.freq_scale == b.freq_scale && a.ext_factor == b.ext_factor && a.attn_factor == b.attn_factor &&
           a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow && a.n_ctx_orig == b.n_ctx_orig;
}

// Whether sc changes the angles at all (false: the plain table pos * base ** (-2i / n_rot)).
inline bool scales_angles(const RopeScaling& sc) {
    return sc.freq_factors || sc.freq_scale != 1.0 || sc.ext_factor != 0.0 || sc.attn_factor != 1.0;
}

// YaRN's ramp and magnitude, in double. With ext_factor != 0 the interpolated and
// extrapolated angles of pair i are mixed by a ramp that is 1 below dim lo and 0 above hi,
// where the correction dims lo, hi are the dims whose wavelength fits beta_fast / beta_slow
// turns in n_ctx_orig:  corr(beta) = n_rot ln(n_ctx_orig / (2 pi beta)) / (2 ln freq_base),
// lo = max(0, floor(corr(beta_fast))), hi = min(n_rot - 1, ceil(corr(beta_slow))); cos and sin
// are multiplied by mscale = attn_factor (1 + 0.1 ln(1 / freq_scale)). Without YaRN:
// lo = hi = 0 and mscale = attn_factor.
struct YarnRamp {
    double lo = 0.0, hi = 0.0, mscale = 1.0;
};
inline YarnRamp yarn_ramp(const RopeScaling& sc, int n_rot, double freq_base) {
    YarnRamp y;
    y.mscale = sc.attn_factor;
    if (sc.ext_factor != 0.0) {
        const double pi = 3.14159265358979323846;
        auto corr = [&](double beta) {
            return n_rot * std::log(static_cast<double>(sc.n_ctx_orig) / (beta * 2.0 * pi)) / (2.0 * std::log(freq_base));
        };
        y.lo = std::max(0.0, std::floor(corr(sc.beta_fast)));
        y.hi = std::min(static_cast<double>(n_rot - 1), std::ceil(corr(sc.beta_slow)));
        y.mscale *= 1.0 + 0.1 * std::log(1.0 / sc.freq_scale);
    }
    return y;
}

}  // namespace pyengine
