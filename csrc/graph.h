// A recorded decode step, replayed natively in one call (pyengine._C.DecodeGraph).
//
// pyengine/backends/cpu_graph.py runs a model's forward pass once for one token with a
// recording backend; every op it sees becomes a Node here, holding raw pointers to
// buffers that Python allocated once and keeps alive (activations, the KV cache, the
// memory-mapped GGUF weights). Program::run(token, pos0) then executes the whole list
// with no Python, no allocation and no argument parsing: each node calls the same
// kernel entry point the corresponding pyengine._C op calls (csrc/cpu_ops.h,
// csrc/dispatch.h), so a replayed step is bit-for-bit the op-by-op step.
//
// Positions: a node's position is either fixed or pos0 + offset (Pos::rel), which is
// what makes one recording valid at every position. The token id is the embedding
// lookup's row. Everything else is a constant of the recording.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "cpu_ops.h"
#include "dispatch.h"
#include "mla.h"
#include "moe.h"
#include "quants.h"

namespace pybind11 {
class module_;
}
void bind_graph(pybind11::module_& m);  // csrc/graph.cpp: registers _C.DecodeGraph

namespace pyengine {
namespace graph {

// The node kinds, listed once: X(enum name, name shown by DecodeGraph.ops()/profile(), what it
// computes). The Kind enum and kind_name() are generated from this list; each kind's
// builder (DecodeGraph.add_*) and its case in Program::run are in graph.cpp, and the op it
// replays is an entry of pyengine/backends/ops_spec.py.
#define PE_GRAPH_KINDS(X)                                                          \
    X(Embed, "embed", "out (1, cols) = row `token` of W")                          \
    X(Matmul, "matmul", "out (n, rows) = a (n, cols) @ W.T")                       \
    X(RmsNorm, "rmsnorm", "out = rmsnorm(a) * wv, groups of g")                    \
    X(RmsNormAdd, "rmsnorm_add", "out = b + rmsnorm(a) * wv")                      \
    X(AddRmsNorm, "add_rmsnorm", "out = a + b; out2 = rmsnorm(out) * wv")          \
    X(Rope, "rope", "out = rope(a) at one position")                               \
    X(KvWrite, "kv_write", "key panels kt <- a at pos; value rows vc <- b at pos") \
    X(Attention, "attention", "out = attention of a (one token) over kt / vc")     \
    X(Add, "add", "out = a + b")                                                   \
    X(SiluMul, "silu_mul", "out = silu(a) * b")                                    \
    X(GeluMul, "gelu_mul", "out = gelu_tanh(a) * b")                               \
    X(Scale, "scale", "out = a * s")                                               \
    X(AddBias, "add_bias", "out (n, cols) = a + wv for every row")                 \
    X(Softcap, "softcap", "out = s * tanh(a / s)")                                 \
    X(MoeFfn, "moe_ffn", "out = routed experts of a (moe: router, top-k, SwiGLU)")             \
    X(MlaAttention, "mla_attention", "out = latent attention of q=a, kv=b; cache kt/vc at pos")

enum class Kind : uint8_t {
#define PE_KIND_ENUM(e, name, what) e,
    PE_GRAPH_KINDS(PE_KIND_ENUM)
#undef PE_KIND_ENUM
};

const char* kind_name(Kind k);

struct Pos {
    int64_t off = 0;
    bool rel = false;  // pos0 + off, else off
    int64_t at(int64_t pos0) const { return rel ? pos0 + off : off; }
};

struct Node {
    Kind kind;
    const float* a = nullptr;
    const float* b = nullptr;
    float* out = nullptr;
    float* out2 = nullptr;
    int64_t n = 0;     // tokens (rows of a / out)
    int64_t cols = 0;  // width of a (or of out for Embed)
    // weights: GGUF bytes (Embed, Matmul) or a float vector (norms)
    WType wt = WType::F32;
    const uint8_t* w = nullptr;
    int64_t w_rows = 0;
    const float* wv = nullptr;
    int64_t g = 0;  // norm group length (len(wv))
    float eps = 0.0f, s = 0.0f;
    // rope
    int n_heads = 0, head_dim = 0, n_rot = 0, table = -1;
    bool neox = false;
    // KV cache and attention
    float* kt = nullptr;  // key panels (n_blocks, width, 64)
    float* vc = nullptr;  // values (n_ctx, width)
    int64_t width = 0;
    int n_kv_heads = 0, window = 0;
    float cap = 0.0f;  // attention logit soft-capping (0: off)
    Pos pos;
    std::shared_ptr<const moe::Layer> moe;  // MoeFfn: router, experts, routing
    std::shared_ptr<const mla::Layer> mla;  // MlaAttention: head layout, weights, rope
};

// cos/sin of one position for one (base, n_rot): shared by every rope node that asks
struct RopeTable {
    double base = 0.0;
    int n_rot = 0;
    Pos pos;
    cpu::RopeScaling sc;     // sc.freq_factors is set to ff.data() when ff is not empty
    std::vector<float> ff;   // frequency factors (copied at build time), or empty
    std::vector<float> cos, sin;
};

struct Program {
    std::vector<Node> nodes;
    std::vector<RopeTable> tables;
    // pos0 values every node accepts (KV cache bounds), and the embedding rows
    int64_t pos_lo = std::numeric_limits<int64_t>::min();
    int64_t pos_hi = std::numeric_limits<int64_t>::max();
    int64_t n_tokens = std::numeric_limits<int64_t>::max();

    // Matmuls that read the same input run as one matmul_group (dispatch.h): q/k/v of a layer,
    // gate/up. group[i] lists the later matmul nodes that node i's group takes with it (empty:
    // none), and member[j] marks a node run by an earlier group. Planned on the first run
    // after nodes change; fuse_matmuls = false (or a profiled run, which times each node on
    // its own) runs every node in recorded order. Results are identical either way.
    bool fuse_matmuls = true;
    std::vector<std::vector<int>> group;
    std::vector<char> member;
    size_t planned = 0;  // nodes.size() when group/member were planned
    void plan_groups();

    // Bounds checked by the caller (pos_lo <= pos0 <= pos_hi, 0 <= token < n_tokens).
    // With ns (nodes.size() entries), each node's wall time is added to it.
    void run(int32_t token, int64_t pos0, const MatmulKernels& mk, double* ns = nullptr);
};

}  // namespace graph
}  // namespace pyengine
