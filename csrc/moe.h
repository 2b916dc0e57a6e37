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

// one expert tensor (E, rows, cols) as GGUF bytes: expert e starts at w + e * expert_bytes.
// Optionally staged (pyengine/weight_pages.py): `stage` is a buffer laid out like w, in
// anonymous 2 MiB pages that take memory only once written; expert e is copied there the first
// time a token chooses it (stage_used below), and ready[e] != 0 from then on. The kernels then
// read huge pages instead of the file mapping's 4 KiB ones, while the resident memory still
// follows the experts that were used.
struct Experts {
    WType t = WType::F32;
    const uint8_t* w = nullptr;
    int64_t rows = 0, cols = 0, expert_bytes = 0;
    uint8_t* stage = nullptr;  // (E * expert_bytes,) or nullptr: read w
    uint8_t* ready = nullptr;  // (E,) 0 / 1, with stage
    bool drop_source = false;  // w is a read-only mapping of a file: unmap what was copied
    bool staged(int64_t e) const { return stage && __atomic_load_n(ready + e, __ATOMIC_ACQUIRE); }
    const uint8_t* at(int64_t e) const { return (staged(e) ? stage : w) + e * expert_bytes; }
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

// Copy the experts with used[e] != 0 that are not staged yet into their stage buffers (the
// pool shares the copies). With drop_source the copied source pages then leave this process's
// page tables (they stay in the page cache), so a used expert counts once in the resident
// memory, not twice (never for other memory: there MADV_DONTNEED would zero it).
void stage_used(const Layer& L, const int64_t* used);

// out (n, d) = the layer on x (n, d). Each used expert runs once over the tokens that chose it.
void moe_ffn(const Layer& L, const float* x, int64_t n, float* out, const MatmulKernels& mk);

}  // namespace moe
}  // namespace pyengine
