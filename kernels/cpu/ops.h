// Non-matmul CPU ops (float32): RMSNorm, RoPE, gated activations, elementwise, attention.
//
// Three variants each fill one OpsTable: "generic" (ops_generic.cpp, baseline flags),
// "avx2" (the same ops_generic.cpp compiled again from ops_avx2.cpp with AVX2/FMA flags,
// with the hand-written attention of attention_avx2.cpp) and "avx512" (ops_avx512.cpp,
// hand-written intrinsics). Their attention kernels are attention_generic, attention_avx2
// and attention_avx512. The binding
// (csrc/bind_ops.cpp) picks a table at run time, splits the work into tasks and runs
// them on the thread pool. Kernels here are single-threaded and re-entrant: each call
// works on the slice it is given, and any scratch is thread-local, so one table can
// be called from every worker at once.
//
// Reference semantics are those of pyengine/backends/numpy_backend.py.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pyengine {

// Keys live in "panels": block b of 64 positions is stored transposed, as a
// (kv_width, 64) float32 matrix (row g*head_dim + e holds dim e of KV head g for the
// block's 64 positions; positions never written are 0). A whole cache of n_ctx positions
// is one C-contiguous (ceil(n_ctx / 64), kv_width, 64) array. The attention kernel then
// scores 4 query rows x 64 keys per step from broadcasts of q, with no horizontal sums
// and no per-call transposition; values stay row-major (n_ctx, kv_width).
constexpr int kAttnKeyBlock = 64;

// Causal grouped-query attention over a KV cache, for one call.
// Query row (i, h): token i in [0, n) at position pos0 + i, head h in [0, n_heads).
// It reads q + i*q_stride + h*head_dim and sees key j iff
//   j <= pos0 + i  and  (window == 0 or pos0 + i - j < window),
// using KV head g = h / (n_heads / n_kv_heads): key j from panel j / 64 (see above),
// value j at v + j*v_stride + g*head_dim. With kt == nullptr the keys are the value rows
// themselves (key j = value j): MLA's cache, one compressed row per position, stored once.
struct AttnArgs {
    const float* q;
    int64_t q_stride;       // floats between tokens of q
    const float* kt;        // panel of block kt_b0 (head 0); nullptr: keys are the value rows
    int kt_b0;              // first block kt holds
    int64_t kt_block_stride;  // floats between consecutive blocks (kv_width * 64)
    const float* v;
    int64_t v_stride;       // floats between positions of v
    float* out;             // row (i, h) at out + i*out_stride + h*head_dim
    int64_t out_stride;
    int n, pos0, n_heads, n_kv_heads, head_dim, window;
    float scale;
    // > 0: scores pass through softcap * tanh(score / softcap) before the softmax (Gemma 2's
    // attention logit soft-capping; score = scale * q.k); 0: off
    float softcap = 0.0f;
    // > 0: only the first v_dim of a value's head_dim floats are summed (out's other dims of
    // the row are zero). MLA's values are the cached [latent, rope key] rows, of which the
    // latent (kv_lora_rank dims) is all it uses; 0: all head_dim.
    int v_dim = 0;
    int value_dim() const { return v_dim > 0 && v_dim < head_dim ? v_dim : head_dim; }

    int group() const { return n_heads / n_kv_heads; }
    bool keys_in_rows() const { return kt == nullptr; }
    // first / one-past-last key visible from position p
    int key_lo(int p) const { return (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0; }
    int key_hi(int p) const { return p + 1; }
    // the (head_dim, 64) panel of KV head g for keys [64b, 64b + 64)
    const float* panel(int b, int g) const {
        return kt + (int64_t)(b - kt_b0) * kt_block_stride + (int64_t)g * head_dim * kAttnKeyBlock;
    }
};

// Attention for rows [r0, r1) of KV head g, rows numbered token-major over its query
// heads: row r is token r / group, head g*group + r % group. Each row's result depends
// only on that row's query and the keys it sees, never on which other rows share the
// call, so a prompt gives bit for bit the same answer processed whole or token by token.
using AttentionFn = void (*)(const AttnArgs& a, int g, int r0, int r1);

struct OpsTable {
    const char* name;

    // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w for rows r of length g.
    // x rows are `rows` consecutive groups starting at x + r*g (contiguous).
    void (*rmsnorm)(const float* x, const float* w, float* out, int64_t rows, int64_t g, float eps);
    // Fused forms of rmsnorm and add, one pass instead of two over the residual stream.
    // Reached only through _C.rmsnorm_add / _C.add_rmsnorm and the DecodeGraph nodes of
    // the same names; no model in pyengine/models calls them today.
    // out = residual + rmsnorm(x)   (out may alias residual)
    void (*rmsnorm_add)(const float* x, const float* w, const float* residual, float* out,
                        int64_t rows, int64_t g, float eps);
    // sum = a + b; norm = rmsnorm(sum)   (sum may alias a or b)
    void (*add_rmsnorm)(const float* a, const float* b, const float* w, float* sum, float* norm,
                        int64_t rows, int64_t g, float eps);

    // Rotary embedding of tokens [t0, t1) of x (n, n_heads*head_dim) with row stride
    // x_stride into out (contiguous rows of n_heads*head_dim; may alias x when
    // x_stride equals that width). cos_t/sin_t: (n, n_rot/2) for the same tokens.
    void (*rope)(const float* x, int64_t x_stride, float* out, const float* cos_t, const float* sin_t,
                 int64_t t0, int64_t t1, int n_heads, int head_dim, int n_rot, bool neox);

    // Elementwise over `count` floats. out may alias an input.
    void (*silu_mul)(const float* gate, const float* up, float* out, int64_t count);
    void (*gelu_mul)(const float* gate, const float* up, float* out, int64_t count);
    void (*add)(const float* a, const float* b, float* out, int64_t count);
    void (*scale)(const float* x, float s, float* out, int64_t count);

    AttentionFn attention;  // attention_generic / attention_avx2 / attention_avx512

    // out = cap * tanh(x / cap) over `count` floats (logit soft-capping); out may alias x.
    void (*softcap)(const float* x, float cap, float* out, int64_t count);
};

// Every tier's exp: e^x = 2^n e^r, x = n ln2 + r with ln2 split into a high part exact in float
// and a low part, e^r = 1 + r + r^2 p(r) on [-ln2/2, ln2/2] with p of degree 5 (Cephes expf's
// coefficients, about 1 ulp): p = c[0], then p = p r + c[k] for k = 1..5. The tiers differ only
// in how they round n and apply 2^n (exp_f in ops_generic.cpp, exp_ps in ops_avx512.cpp, exp8
// in attention_avx2.cpp).
struct ExpConst {
    static constexpr float log2e = 1.44269504088896341f;
    static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    static constexpr float c[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                   4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
};

const OpsTable& ops_generic();
#if defined(PYENGINE_HAVE_X86_VARIANTS)
const OpsTable& ops_avx2();    // ops_generic.cpp's loops built with AVX2/FMA (ops_avx2.cpp), and:
void attention_avx2(const AttnArgs& a, int g, int r0, int r1);  // attention_avx2.cpp
const OpsTable& ops_avx512();
#endif

// ---- the loop every rope kernel runs (ops_generic.cpp, ops_avx512.cpp) ----------------
// Tokens [t0, t1) x n_heads heads of head_dim values: token t's row of x starts at
// x + t * x_stride, its row of out at out + t * n_heads * head_dim, and its cos/sin rows
// (n_rot/2 values each) at cos_t / sin_t + t * n_rot/2. rotate(xh, oh, c, s) writes the
// first n_rot values of one head oh from xh; the other head_dim - n_rot values are copied
// unless out is x. Internal linkage: each variant's TU, whatever its ISA flags, gets its own copy.
namespace {
template <class Rotate>
inline void rope_heads(const float* x, int64_t x_stride, float* out, const float* cos_t, const float* sin_t,
                       int64_t t0, int64_t t1, int n_heads, int head_dim, int n_rot, Rotate rotate) {
    const int half = n_rot / 2;
    const int64_t width = (int64_t)n_heads * head_dim;
    for (int64_t t = t0; t < t1; ++t) {
        const float* c = cos_t + t * half;
        const float* s = sin_t + t * half;
        for (int h = 0; h < n_heads; ++h) {
            const float* xh = x + t * x_stride + (int64_t)h * head_dim;
            float* oh = out + t * width + (int64_t)h * head_dim;
            rotate(xh, oh, c, s);
            if (oh != xh && n_rot < head_dim)
                std::memcpy(oh + n_rot, xh + n_rot, sizeof(float) * (size_t)(head_dim - n_rot));
        }
    }
}
}  // namespace

}  // namespace pyengine
