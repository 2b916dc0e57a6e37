// How rope's angles are scaled (the parameters of llama.cpp's ggml_rope_ext; see
// pyengine/backends/base.py RopeScaling). Defaults: no scaling. One definition for the
// CPU ops (csrc/cpu_ops.h: cpu::RopeScaling), the graph and MLA layers, and the CUDA
// kernels (kernels/cuda/kernels.h: cuda::RopeScaling); kept free of host-library
// includes so that nvcc compiles it as it is.
#pragma once

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

}  // namespace pyengine
