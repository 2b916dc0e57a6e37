// Non-matmul CPU ops (float32): RMSNorm, RoPE, gated activations, elementwise, attention.
//
// Every ISA variant (ops_generic.cpp, ops_avx512.cpp) fills one OpsTable; the binding
// (csrc/bind_ops.cpp) picks a table at run time, splits the work into tasks and runs
// them on the thread pool. Kernels here are single-threaded and re-entrant: each call
// works on the slice it is given, and any scratch is thread-local, so one table can
// be called from every worker at once.
//
// Reference semantics are those of pyengine/backends/numpy_backend.py.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyengine {
namespace ops {

// Causal grouped-query attention over a KV cache, for one call.
// Query row (i, h): token i in [0, n) at position pos0 + i, head h in [0, n_heads).
// It reads q + i*q_stride + h*head_dim and sees key j iff
//   j <= pos0 + i  and  (window == 0 or pos0 + i - j < window),
// using key/value head h / (n_heads / n_kv_heads) at k|v + j*kv_stride + g*head_dim.
struct AttnArgs {
    const float* q;
    int64_t q_stride;  // floats between tokens of q
    const float* k;
    const float* v;
    int64_t kv_stride;  // floats between positions of k and v
    float* out;         // row (i, h) at out + i*out_stride + h*head_dim
    int64_t out_stride;
    int n, pos0, n_heads, n_kv_heads, head_dim, window;
    float scale;

    int group() const { return n_heads / n_kv_heads; }
    // first / one-past-last key visible from position p
    int key_lo(int p) const { return (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0; }
    int key_hi(int p) const { return p + 1; }
};

// Partial attention for the rows of one KV head g: tokens [i0, i1) x its `group` query
// heads, over keys [j0, j1) (clipped per row to what that row may see).
// Row (i, hh) (hh = 0..group-1) accumulates into
//   acc + (i - i0) * acc_tok_stride + hh * head_dim    (head_dim floats)
// and m[(i - i0) * group + hh], l[...]: the running max of scaled scores and the sum
// of exp(score - m). With normalize=true acc is divided by l at the end (the full
// answer when [j0, j1) covers every visible key). A row that sees no key in the range
// gets m = -inf, l = 0, acc = 0.
using AttnPartialFn = void (*)(const AttnArgs& a, int g, int i0, int i1, int j0, int j1,
                               float* acc, int64_t acc_tok_stride, float* m, float* l,
                               bool normalize);

// Keys packed for the blocked kernel: block b holds keys [b*kAttnKeyBlock, (b+1)*kAttnKeyBlock)
// of one KV head transposed, as head_dim rows of kAttnKeyBlock floats (missing keys 0).
constexpr int kAttnKeyBlock = 64;
inline int64_t attn_panel_floats(int head_dim) { return (int64_t)head_dim * kAttnKeyBlock; }
// Pack blocks [b0, b1) of KV head g into dst (one panel after another).
using AttnPackFn = void (*)(const AttnArgs& a, int g, int b0, int b1, float* dst);

// Full attention for tokens [i0, i1) x the query heads of KV head g, written to a.out.
// kt: KV head g's packed keys, starting with block b0 (which must include every key the
// tile sees); ignored (may be null) by variants whose pack_k is null.
using AttnTileFn = void (*)(const AttnArgs& a, int g, int i0, int i1, const float* kt, int b0);

struct OpsTable {
    const char* name;

    // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w for rows r of length g.
    // x rows are `rows` consecutive groups starting at x + r*g (contiguous).
    void (*rmsnorm)(const float* x, const float* w, float* out, int64_t rows, int64_t g, float eps);
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

    AttnPartialFn attn_partial;  // few query rows (decode): dot products, split over keys
    AttnPackFn attn_pack_k;      // null: attn_tile reads keys directly
    AttnTileFn attn_tile;        // many query rows (prefill): blocked, online softmax
};

const OpsTable& ops_generic();
#if defined(PYENGINE_HAVE_X86_VARIANTS)
const OpsTable& ops_avx512();
#endif

}  // namespace ops
}  // namespace pyengine
