#include "dispatch.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#if defined(_MSC_VER)
#include <malloc.h>
#endif
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "common.h"
#include "cpu_features.h"
#include "threadpool.h"

namespace pyengine {

std::vector<std::string> available_variants() {
    std::vector<std::string> v{"generic"};
#ifdef PYENGINE_HAVE_X86_VARIANTS
    const CpuFeatures& f = cpu_features();
    // A tier whose table is empty was compiled as a stub (not implemented in this build).
    if (f.can_avx2() && matmul_kernels_avx2.gemm) v.push_back("avx2");
    if (f.can_avx512() && matmul_kernels_avx512.gemm) v.push_back("avx512");
#endif
    return v;
}

const MatmulKernels& select_variant(const std::string& name_in) {
    std::string name = name_in;
    if (name == "auto") {
        const char* env = std::getenv("PYENGINE_CPU_VARIANT");
        name = (env && *env) ? env : available_variants().back();
        if (name == "auto") name = available_variants().back();
    }
    if (name == "generic") return matmul_kernels_generic;
    if (name != "avx2" && name != "avx512")
        throw std::invalid_argument("unknown kernel variant '" + name + "' (expected generic, avx2, avx512 or auto)");
    for (const auto& v : available_variants()) {
        if (v != name) continue;
#ifdef PYENGINE_HAVE_X86_VARIANTS
        return name == "avx2" ? matmul_kernels_avx2 : matmul_kernels_avx512;
#endif
    }
    std::string avail;
    for (const auto& v : available_variants()) avail += (avail.empty() ? "" : ", ") + v;
    throw std::invalid_argument("kernel variant '" + name + "' is not available on this CPU/build (available: " +
                                avail + ")");
}

namespace {

// Grow-only 64-byte aligned scratch buffer.
struct Scratch {
    uint8_t* p = nullptr;
    size_t cap = 0;
    Scratch() = default;
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    uint8_t* get(size_t n) {
        if (n > cap) {
            release();
            cap = (n + 4095) & ~(size_t)4095;
#if defined(_MSC_VER)
            p = (uint8_t*)_aligned_malloc(cap, 64);
#else
            p = (uint8_t*)std::aligned_alloc(64, cap);
#endif
            if (!p) {
                cap = 0;
                throw std::bad_alloc();
            }
        }
        return p;
    }
    void release() {
#if defined(_MSC_VER)
        _aligned_free(p);
#else
        std::free(p);
#endif
        p = nullptr;
    }
    ~Scratch() { release(); }
};

std::mutex g_matmul_mutex;  // one matmul at a time owns the scratch and the pool
Scratch g_act;
// matmul_group's state (under g_matmul_mutex): one activation buffer per (x, packing form), the
// parts' calls and byte offsets
std::vector<std::unique_ptr<Scratch>> g_act_more;
std::vector<MatmulCall> g_group_calls;
struct ActForm {  // activations x (n, cols) packed by pack_act(G, off) (G as act_group gives it)
    const float* x;
    int64_t n, cols;
    int G, off;
};
std::vector<ActForm> g_group_forms;
std::vector<int64_t> g_group_start;
std::vector<int64_t> g_group_row0;
std::vector<std::unique_ptr<Scratch>> g_wbuf;  // one per pool thread

static inline void prefetch_bytes(const uint8_t* p, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
    for (int64_t o = 0; o < n; o += 64) __builtin_prefetch(p + o, 0, 3);
#else
    (void)p, (void)n;
#endif
}

constexpr int64_t kL2Budget = 256 * 1024;  // bytes of packed weight rows a thread keeps hot
constexpr int64_t kGemvPrefetchBytes = 6144;  // how far ahead of its reads a gemv prefetches weights

// Rows a one-token matmul hands out at a time (ThreadPool::parallel_shares): ~64 KB of weights,
// a few microseconds of work, so the ~0.1 us of a batch's call costs little while a thread that
// finishes its share early can take over all but a batch of another's.
constexpr int64_t kGemvGrainBytes = 65536;
int64_t gemv_grain(int64_t rb) { return std::max<int64_t>(4, kGemvGrainBytes / std::max<int64_t>(rb, 1)); }

// F32 / F16 / BF16 weights: no packing, rows split over the pool in small chunks.
void matmul_float(WType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* out,
                  const MatmulKernels& k) {
    MatmulCall c{};
    c.w = w, c.rows = rows, c.cols = cols, c.rb = row_bytes(t, cols), c.x = x, c.n = n, c.out = out;
    const MatmulRowsFn fn = k.by_type[(int)t];  // matmul_f32_<tier>, matmul_f16_<tier>, matmul_bf16_<tier>
    ThreadPool& pool = ThreadPool::instance();
    const int64_t chunk = rows >= 64 * pool.num_threads() ? 16 : 4;
    pool.parallel_for(rows, chunk, [&](int64_t r0, int64_t r1, int) { fn(c, r0, r1, nullptr); });
}

// Whether all `cols` floats of x are finite, by their exponent bits (immune to fast-math).
bool row_finite(const float* x, int64_t cols) {
    uint32_t all = 0;
    for (int64_t i = 0; i < cols; ++i) {
        uint32_t b;
        std::memcpy(&b, x + i, 4);
        all |= (b & 0x7f800000u) == 0x7f800000u;  // exponent all ones: Inf or NaN
    }
    return all == 0;
}

void matmul_impl(WType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* out,
                 const MatmulKernels& k);

// The call of a quantized weight of type t on tier k, with its packing geometry filled in (group
// size, panels per row, packed bytes per row, weight row bytes); act, rb_rows, pf_rows left to
// the caller.
MatmulCall quant_call(WType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* out,
                      const MatmulKernels& k) {
    MatmulCall c{};
    c.w = w, c.rows = rows, c.cols = cols, c.x = x, c.n = n, c.out = out;
    c.G = wtype_info(t).group;
    c.act_G = act_group(k, t, c.G, n);
    c.np = n_panels(k, c.G, cols);
    c.stride = c.np * panel_bytes(k, c.G);  // bytes of one packed row / token
    c.rb = row_bytes(t, cols);
    return c;
}

// Every pool thread's weight buffer holds at least `bytes`.
void reserve_wbuf(int nth, int64_t bytes) {
    while ((int)g_wbuf.size() < nth) g_wbuf.emplace_back(new Scratch());
    for (int i = 0; i < nth; ++i) g_wbuf[i]->get((size_t)bytes);
}

// Quantized types quantize x to int8 first, which turns NaN and Inf into ordinary numbers; in
// float arithmetic (the NumPy reference) a non-finite activation makes every output of its
// token non-finite. Keep that: such tokens' outputs (out (n, rows)) become NaN, so a broken
// model never produces finite-looking logits. (The scan reads n*cols floats, against the
// rows*cols weights the matmul reads.)
void nan_where_nonfinite(const float* x, int64_t n, int64_t cols, float* out, int64_t rows) {
    for (int64_t i = 0; i < n; ++i)
        if (!row_finite(x + i * cols, cols))
            std::fill(out + i * rows, out + (i + 1) * rows, std::numeric_limits<float>::quiet_NaN());
}

}  // namespace

// The per-thread bodies of matmul_<type>_<tier> (see matmul_kernels.h). Kept out of line
// and out of interprocedural optimisation (noipa, under the build's LTO): each tier's
// kernels are then called through k, one compiled copy of each, rather than inlined by
// type into the 45 per-type entries.
#if defined(__GNUC__) && !defined(__clang__)
#define PYENGINE_NOIPA __attribute__((noipa))
#elif defined(__clang__)
#define PYENGINE_NOIPA __attribute__((noinline))
#else
#define PYENGINE_NOIPA
#endif

// Weight rows [r0, r1) of c into out (row stride ldo): the body of matmul_rows_quant.
static inline void quant_rows(const MatmulKernels& k, WType t, const MatmulCall& c, int64_t r0, int64_t r1, int64_t ldo,
                              uint8_t* wbuf) {
    if (k.gemv != nullptr && c.n <= kGemvMaxTokens) {  // few tokens: no packed copy of the rows
        // The gemv prefetches kGemvPrefetchBytes ahead of each panel it reads, a few lines at a
        // time. (Prefetching whole rows ahead in one burst, as below, was 2.5x slower on long
        // rows: a 5 KB ffn_down row of Qwen2.5-1.5B issued 79 prefetches at once; decode of that
        // model measured 20-22 -> 25-26 tok/s, 2 threads; 3, 12 and 24 KB were slower than 6 KB.)
        k.gemv(t, c.w + r0 * c.rb, r1 - r0, c.rb, c.cols, c.act, (int)c.n, c.stride, c.out + r0, ldo,
               kGemvPrefetchBytes);
        return;
    }
    for (int64_t a = r0; a < r1; a += c.rb_rows) {
        const int nr = (int)(r1 - a < c.rb_rows ? r1 - a : c.rb_rows);
        for (int i = 0; i < nr; ++i) {
            // Pull a row ~4-8 KB ahead toward L1 while this one unpacks: a decode step streams
            // every weight once from DRAM, and this measured 10-70% faster than hardware
            // prefetch alone (8 x 4096^2 weights, 2 threads).
            if (a + i + c.pf_rows < c.rows) prefetch_bytes(c.w + (a + i + c.pf_rows) * c.rb, c.rb);
            k.pack_w(t, c.w + (a + i) * c.rb, c.cols, wbuf + i * c.stride);
        }
        k.gemm(t, c.G, c.np, wbuf, nr, c.act, (int)c.n, c.out + a, ldo);
    }
}

PYENGINE_NOIPA void matmul_rows_quant(const MatmulKernels& k, WType t, const MatmulCall& shared, int64_t r0,
                                      int64_t r1, uint8_t* wbuf) {
    const MatmulCall c = shared;  // this thread's copy, on its own stack
    if (is_panel_form(t) && !k.panel_forms) {
        // A tier that reads only the GGUF layout: the rows back into it, ~64 KB at a time, each
        // chunk then run as that type (same values, same arithmetic: the same results).
        static thread_local std::vector<uint8_t> gguf;
        const int64_t nb = c.cols / wtype_info(t).block_elems;
        const int64_t chunk = std::max<int64_t>(1, (64 << 10) / c.rb);
        gguf.resize((size_t)(chunk * c.rb));
        MatmulCall cg = c;
        cg.w = gguf.data();
        for (int64_t a = r0; a < r1; a += chunk) {
            const int64_t nr = std::min(chunk, r1 - a);
            for (int64_t i = 0; i < nr; ++i) convert_form_row(t, c.w + (a + i) * c.rb, gguf.data() + i * c.rb, nb, true);
            cg.rows = nr;        // the rows in the buffer (what the packing path prefetches)
            cg.out = c.out + a;  // out keeps its row stride, c.rows
            quant_rows(k, load_form_source(t), cg, 0, nr, c.rows, wbuf);
        }
        return;
    }
    quant_rows(k, t, c, r0, r1, c.rows, wbuf);
}

PYENGINE_NOIPA void matmul_rows_float(const MatmulKernels& k, WType t, const MatmulCall& shared, int64_t r0,
                                      int64_t r1) {
    const MatmulCall c = shared;  // this thread's copy, on its own stack
    for (int64_t t0 = 0; t0 < c.n; t0 += 64) {
        const int nt = (int)(c.n - t0 < 64 ? c.n - t0 : 64);
        k.gemm_float(t, c.w + r0 * c.rb, c.rb, c.cols, (int)(r1 - r0), c.x + t0 * c.cols, c.cols, nt,
                     c.out + t0 * c.rows + r0, c.rows);
    }
}

void matmul(WType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* out,
            const MatmulKernels& k) {
    if (rows <= 0 || n <= 0) return;
    matmul_impl(t, w, rows, cols, x, n, out, k);
    if (wtype_is_quant(t)) nan_where_nonfinite(x, n, cols, out, rows);
}

namespace {

void matmul_impl(WType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* out,
                 const MatmulKernels& k) {
    std::lock_guard<std::mutex> lock(g_matmul_mutex);
    if (!wtype_is_quant(t)) return matmul_float(t, w, rows, cols, x, n, out, k);

    MatmulCall c = quant_call(t, w, rows, cols, x, n, out, k);
    const int64_t stride = c.stride;
    const int off = weight_offset(t, k.q8_signed);
    ThreadPool& pool = ThreadPool::instance();
    const int nth = pool.num_threads();

    // 1. Quantize the activations once for the whole call.
    uint8_t* act = g_act.get((size_t)(n * stride));
    if (n * cols <= 16384 || nth == 1) {
        for (int64_t i = 0; i < n; ++i) k.pack_act(x + i * cols, cols, c.act_G, off, act + i * stride);
    } else {
        pool.parallel_for(n, (n + 4 * nth - 1) / (4 * nth), [&](int64_t a, int64_t b, int) {
            for (int64_t i = a; i < b; ++i) k.pack_act(x + i * cols, cols, c.act_G, off, act + i * stride);
        });
    }
    c.act = act;

    // 2. Rows in chunks: unpack a few weight rows into the thread's buffer, then
    //    run every token against them (each unpacked weight byte is reused n times).
    int64_t rb_rows;  // rows unpacked at a time
    if (n <= 4) {
        rb_rows = 4;
    } else {
        rb_rows = kL2Budget / stride;
        rb_rows = rb_rows < 8 ? 8 : (rb_rows > 128 ? 128 : rb_rows);
        rb_rows &= ~(int64_t)3;
    }
    c.rb_rows = rb_rows;
    // Scheduling unit. Packing (many tokens): a few chunks per thread, so a slow core does not
    // hold up the rest. The gemv (few tokens, bound by reading the weights): one contiguous
    // range per thread, so each thread's prefetch stream runs unbroken through its rows; four
    // chunks per thread measured 10-12% slower decoding (Qwen2.5-Coder-1.5B 29.3 -> 32.4 tok/s,
    // Gemma 3 108 -> 119, SmolLM2 201 -> 225, 2 threads, 5 alternating rounds).
    const int64_t per_thread = n <= kGemvMaxTokens && k.gemv != nullptr ? 1 : 4;
    int64_t sched = (rows + per_thread * nth - 1) / (per_thread * nth);
    sched = (sched + rb_rows - 1) / rb_rows * rb_rows;
    if (sched < rb_rows) sched = rb_rows;
    reserve_wbuf(nth, rb_rows * stride);

    c.pf_rows = c.rb >= 6144 ? 1 : 6144 / (c.rb > 0 ? c.rb : 1);
    // 3. Each thread runs matmul_<type>_<tier> (kernels/cpu/matmul_<tier>.cpp) on its rows.
    const MatmulRowsFn fn = k.by_type[(int)t];
    if (per_thread == 1 && nth > 1) {  // the gemv: a share per thread, taken over by halves when one is done
        int64_t bounds[ThreadPool::kMaxThreads + 1];  // nth <= kMaxThreads
        for (int s = 0; s <= nth; ++s) bounds[s] = std::min<int64_t>(rows, s * sched);
        pool.parallel_shares(bounds, nth, gemv_grain(c.rb),
                             [&](int64_t r0, int64_t r1, int tid) { fn(c, r0, r1, g_wbuf[tid]->p); });
        return;
    }
    pool.parallel_for(rows, sched, [&](int64_t r0, int64_t r1, int tid) { fn(c, r0, r1, g_wbuf[tid]->p); }, nth);
}

}  // namespace

void matmul_group(const MatmulPart* parts, int n_parts, const MatmulKernels& k) {
    bool fused = k.gemv != nullptr && n_parts > 1;
    for (int i = 0; i < n_parts && fused; ++i)
        fused = wtype_is_quant(parts[i].t) && parts[i].rows > 0 && parts[i].n > 0 && parts[i].n <= kGemvMaxTokens;
    if (!fused) {
        for (int i = 0; i < n_parts; ++i) {
            const MatmulPart& p = parts[i];
            matmul(p.t, p.w, p.rows, p.cols, p.x, p.n, p.out, k);
        }
        return;
    }
    {
        std::lock_guard<std::mutex> lock(g_matmul_mutex);
        ThreadPool& pool = ThreadPool::instance();
        const int nth = pool.num_threads();
        // 1. The activations, quantized once per distinct (x, n, cols, group size, weight offset).
        std::vector<MatmulCall>& c = g_group_calls;
        std::vector<ActForm>& forms = g_group_forms;
        std::vector<int64_t>& start = g_group_start;  // byte offset of each part in the group's weight bytes
        c.resize(n_parts);
        forms.clear();
        start.assign(n_parts + 1, 0);
        int64_t wmax = 0;
        for (int i = 0; i < n_parts; ++i) {
            const MatmulPart& p = parts[i];
            MatmulCall& ci = c[i];
            ci = quant_call(p.t, p.w, p.rows, p.cols, p.x, p.n, p.out, k);
            ci.rb_rows = 4;  // as matmul_impl for n <= 4 (the gemv reads no buffer)
            ci.pf_rows = 1;
            const int off = weight_offset(p.t, k.q8_signed);
            size_t f = 0;
            while (f < forms.size() && !(forms[f].x == p.x && forms[f].n == p.n && forms[f].cols == p.cols &&
                                         forms[f].G == ci.act_G && forms[f].off == off))
                ++f;
            if (f == forms.size()) {
                forms.push_back(ActForm{p.x, p.n, p.cols, ci.act_G, off});
                while (g_act_more.size() < forms.size()) g_act_more.emplace_back(new Scratch());
                uint8_t* act = g_act_more[f]->get((size_t)(p.n * ci.stride));
                for (int64_t r = 0; r < p.n; ++r) k.pack_act(p.x + r * p.cols, p.cols, ci.act_G, off, act + r * ci.stride);
            }
            ci.act = g_act_more[f]->p;
            start[i + 1] = start[i] + ci.rows * ci.rb;
            wmax = std::max(wmax, 4 * ci.stride);
        }
        reserve_wbuf(nth, wmax);
        // 2. Share s of nth takes the rows whose first byte lies in [s, s + 1) * total / nth of
        //    the concatenated weights: every row exactly once, shares equal to within a row.
        const int64_t total = start[n_parts];
        auto first_row = [&](int i, int64_t byte) {  // first row of part i starting at or after `byte`
            const int64_t rel = byte - start[i];
            if (rel <= 0) return (int64_t)0;
            const int64_t r = (rel + c[i].rb - 1) / c[i].rb;
            return r < c[i].rows ? r : c[i].rows;
        };
        // As global rows (part 0's, then part 1's, ...): share s starts at the first row at or after
        // its first byte; parallel_shares lets a thread that is done take over half of another's.
        std::vector<int64_t>& row0 = g_group_row0;  // global index of each part's first row
        row0.assign(n_parts + 1, 0);
        int64_t rb_max = 1;
        for (int i = 0; i < n_parts; ++i) row0[i + 1] = row0[i] + c[i].rows, rb_max = std::max(rb_max, c[i].rb);
        int64_t bounds[ThreadPool::kMaxThreads + 1];  // nth <= kMaxThreads
        for (int s = 0; s <= nth; ++s) {
            const int64_t byte = total / nth * s + std::min<int64_t>(s, total % nth);
            int64_t g = 0;
            for (int i = 0; i < n_parts; ++i) g += first_row(i, byte);
            bounds[s] = g;
        }
        pool.parallel_shares(bounds, nth, gemv_grain(rb_max), [&](int64_t g0, int64_t g1, int tid) {
            for (int i = 0; i < n_parts; ++i) {
                const int64_t r0 = std::max<int64_t>(g0, row0[i]) - row0[i];
                const int64_t r1 = std::min<int64_t>(g1, row0[i + 1]) - row0[i];
                if (r1 > r0) k.by_type[(int)parts[i].t](c[i], r0, r1, g_wbuf[tid]->p);
            }
        });
    }
    for (int i = 0; i < n_parts; ++i) nan_where_nonfinite(parts[i].x, parts[i].n, parts[i].cols, parts[i].out, parts[i].rows);
}

void get_rows(WType t, const uint8_t* w, int64_t rows, int64_t cols, const int32_t* ids, int64_t n, float* out) {
    const int64_t rb = row_bytes(t, cols);
    (void)rows;
    for (int64_t i = 0; i < n; ++i) dequantize_row(t, w + (int64_t)ids[i] * rb, cols, out + i * cols);
}

}  // namespace pyengine
