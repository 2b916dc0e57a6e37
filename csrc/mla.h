// Multi-head latent attention (DeepSeek-V2's MLA, absorbed form) over the compressed cache,
// natively: one entry point called by the pyengine._C.mla_attention op (csrc/bind_mla.cpp)
// and by the DecodeGraph's mla_attention node (csrc/graph.cpp), so a replayed step is
// bit-for-bit the op. Spec: pyengine/backends/mla.py (mla_attention_composed).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu_ops.h"
#include "dispatch.h"
#include "quants.h"

namespace pyengine {
namespace mla {

struct Layer {
    int n_heads = 0, R = 0, r = 0, dn = 0, dv = 0;  // heads, kv_lora_rank, rope dims, nope dims, v dims
    const float* kv_norm = nullptr;                   // (R,)
    float eps = 0.0f;
    WType wk_t = WType::F32, wv_t = WType::F32;
    const uint8_t* wk = nullptr;  // (H, R, dn): head h at wk + h * wk_bytes
    const uint8_t* wv = nullptr;  // (H, dv, R)
    int64_t wk_bytes = 0, wv_bytes = 0;
    double base = 10000.0;
    bool neox = false;
    cpu::RopeScaling sc;          // sc.freq_factors = ff.data() when ff is not empty
    std::vector<float> ff;
    float scale = 1.0f;
};

// out (n, H*dv) for q (n, H*(dn+r)) and kv (n, R+r) at positions pos0..pos0+n-1; writes
// [rmsnorm(c), rope(k_pe)] of each token into the cache rows vc (n_ctx, R+r), the one copy
// that serves as both keys and values. The caller checks the bounds.
void mla_attention(const Layer& L, const float* q, const float* kv, int64_t n, int64_t pos0, float* vc, float* out,
                   const MatmulKernels& mk);

}  // namespace mla
}  // namespace pyengine
