// Mixture-of-experts feed-forward, natively: router matmul, routing (gating, selection bias,
// group limit, top-k, normalisation, scale), the chosen experts' SwiGLU and the weighted sum.
//
// One entry point, called both by the pyengine._C.moe_ffn op (csrc/bind_moe.cpp) and by the
// DecodeGraph's moe_ffn node (csrc/graph.cpp), so a replayed step is bit-for-bit the op.
// The spec is pyengine/backends/moe.py (route, moe_ffn_reference).
#pragma once

#include <cstdint>
#include <vector>

#include "dispatch.h"
#include "quants.h"

namespace pyengine {
namespace moe {

// one expert tensor (E, rows, cols) as GGUF bytes: expert e starts at w + e * expert_bytes
struct Experts {
    WType t = WType::F32;
    const uint8_t* w = nullptr;
    int64_t rows = 0, cols = 0, expert_bytes = 0;
    const uint8_t* at(int64_t e) const { return w + e * expert_bytes; }
};

struct Layer {
    // router (E, d)
    WType router_t = WType::F32;
    const uint8_t* router = nullptr;
    int64_t n_expert = 0, dim = 0, ffn = 0;
    Experts gate, up, down;  // (E, ffn, d), (E, ffn, d), (E, d, ffn)
    // routing
    int top_k = 1;
    bool sigmoid = false;           // gating: sigmoid, else softmax
    bool norm = false;              // weights / max(sum, 2^-14)
    float scale = 1.0f;             // applied unless 0 or 1
    int n_group = 0, n_group_used = 0;
    std::vector<float> bias;        // (E,) selection bias, or empty
};

// experts (n, top_k) and weights (n, top_k) for router logits (n, E), best first
void route(const Layer& L, const float* logits, int64_t n, int32_t* sel, float* w);

// out (n, d) = the layer on x (n, d). Each used expert runs once over the tokens that chose it.
void moe_ffn(const Layer& L, const float* x, int64_t n, float* out, const MatmulKernels& mk);

}  // namespace moe
}  // namespace pyengine
