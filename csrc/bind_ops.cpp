// CPU non-matmul ops of pyengine._C: rmsnorm (+ fused forms), rope, gated activations,
// add, scale and KV-cache attention (float32).
//
// Conventions: every op writes into an `out` array the caller allocates (so Python
// decides about buffer reuse); inputs are float32 NumPy arrays whose last axis is
// contiguous (a few ops also accept a row stride, said below); nothing is converted or
// copied behind the caller's back: a wrong dtype or layout raises ValueError. The GIL is
// released while the kernels run. Work is split into tasks run on the thread pool;
// small calls (decode) run inline on the calling thread.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "cpu_ops.h"
#include "ops.h"
#include "threadpool.h"

namespace py = pybind11;
using pyengine::AttnArgs;
using pyengine::OpsTable;

namespace {

// ------------------------------------------------------------ variant choice --------

std::vector<const OpsTable*> available_tables() {  // narrowest first
    std::vector<const OpsTable*> v{&pyengine::ops_generic()};
#if defined(PYENGINE_HAVE_X86_VARIANTS)
    const pyengine::CpuFeatures& f = pyengine::cpu_features();
    if (f.avx2 && f.fma && f.os_avx) v.push_back(&pyengine::ops_avx2());
    if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.os_avx512) v.push_back(&pyengine::ops_avx512());
#endif
    return v;
}

const OpsTable* pick_default() {
    auto v = available_tables();
    // PYENGINE_OPS=generic picks the op table alone; PYENGINE_CPU_VARIANT=avx2 (the tier the
    // matmuls use, csrc/dispatch.cpp) picks it too unless PYENGINE_OPS says otherwise, so a
    // forced tier runs its own attention, norms and rope, as on a CPU of that kind
    for (const char* key : {"PYENGINE_OPS", "PYENGINE_CPU_VARIANT"})
        if (const char* env = std::getenv(key))
            for (auto* t : v)
                if (std::string(env) == t->name) return t;
    return v.back();  // the widest the CPU runs
}

const OpsTable* g_ops = nullptr;
const OpsTable& ops() {
    if (!g_ops) g_ops = pick_default();
    return *g_ops;
}

// ------------------------------------------------------------ work splitting --------

// Tasks run on the shared persistent pool (csrc/threadpool.h), handed out one at a time
// so uneven tasks (causal attention) balance; a single task runs inline.
int n_threads() { return pyengine::ThreadPool::instance().num_threads(); }

template <class F>
void run_tasks(int n_tasks, F&& f) {
    if (n_tasks <= 1) {
        if (n_tasks == 1) f(0);
        return;
    }
    pyengine::ThreadPool::instance().parallel_for(n_tasks, 1, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) f((int)t);
    });
}

// Split `items` into at most n_threads()*k tasks of at least `min_items` each.
int task_count(int64_t items, int64_t min_items) {
    int64_t t = std::min<int64_t>((int64_t)n_threads() * 4, (items + min_items - 1) / min_items);
    return (int)std::max<int64_t>(1, t);
}

// ------------------------------------------------------------ argument checks -------

struct Mat {
    float* p = nullptr;
    int64_t rows = 0, cols = 0, stride = 0;  // stride in floats between rows
};

[[noreturn]] void bad(const std::string& msg) { throw py::value_error(msg); }

// A float32 array seen as a matrix (rows, cols): 1-D arrays are one row, N-D arrays
// collapse their leading axes. The last axis must be contiguous; with
// need_contiguous the rows must be back to back too.
Mat as_mat(const py::array& a, const char* what, bool writable, bool need_contiguous) {
    if (!a.dtype().is(py::dtype::of<float>()) && !py::dtype::of<float>().equal(a.dtype()))
        bad(std::string(what) + ": expected float32, got " + std::string(py::str(a.dtype())));
    if (writable && !a.writeable()) bad(std::string(what) + ": array is read-only");
    Mat m;
    m.p = static_cast<float*>(const_cast<void*>(a.data()));
    const int nd = (int)a.ndim();
    if (nd == 0) bad(std::string(what) + ": expected an array, got a scalar");
    m.cols = a.shape(nd - 1);
    m.rows = 1;
    for (int i = 0; i < nd - 1; ++i) m.rows *= a.shape(i);
    if (a.size() == 0) {  // empty: numpy gives any strides (often 0); nothing is read or written
        m.stride = m.cols;
        return m;
    }
    if (m.cols > 1 && a.strides(nd - 1) != (py::ssize_t)sizeof(float))
        bad(std::string(what) + ": last axis must be contiguous");
    if (nd == 1) {
        m.stride = m.cols;
    } else if (nd == 2) {
        m.stride = a.shape(0) > 1 ? a.strides(0) / (py::ssize_t)sizeof(float) : m.cols;
        if (a.shape(0) > 1 && a.strides(0) % (py::ssize_t)sizeof(float)) bad(std::string(what) + ": misaligned rows");
    } else {
        if (!(a.flags() & py::array::c_style)) bad(std::string(what) + ": must be C-contiguous");
        m.stride = m.cols;
    }
    if (need_contiguous && m.rows > 1 && m.stride != m.cols)
        bad(std::string(what) + ": must be C-contiguous");
    return m;
}

void same_size(const Mat& a, const Mat& b, const char* an, const char* bn) {
    if (a.rows * a.cols != b.rows * b.cols)
        bad(std::string(an) + " and " + bn + " differ in size (" + std::to_string(a.rows * a.cols) +
            " vs " + std::to_string(b.rows * b.cols) + ")");
}

// ------------------------------------------------------------ ops -------------------

void rmsnorm_common(const Mat& x, const Mat& w, float eps, int64_t& g, int64_t& per_row) {
    g = w.rows * w.cols;
    if (x.cols <= 0) bad("rmsnorm: x width must be > 0 (got " + std::to_string(x.cols) + ")");
    if (g <= 0 || x.cols % g) bad("rmsnorm: x width " + std::to_string(x.cols) +
                                  " is not a multiple of the weight length " + std::to_string(g));
    per_row = x.cols / g;
    if (!(eps >= 0.0f)) bad("rmsnorm: eps must be >= 0");
}

void op_rmsnorm(const py::array& xa, const py::array& wa, float eps, const py::array& oa) {
    Mat x = as_mat(xa, "x", false, false), w = as_mat(wa, "w", false, true);
    Mat o = as_mat(oa, "out", true, true);
    int64_t g, per_row;
    rmsnorm_common(x, w, eps, g, per_row);
    if (o.rows != x.rows || o.cols != x.cols) bad("rmsnorm: out must have x's shape");
    py::gil_scoped_release nogil;
    pyengine::cpu::rmsnorm(x.p, x.stride, x.rows, x.cols, w.p, g, eps, o.p);
}

void op_rmsnorm_add(const py::array& xa, const py::array& wa, float eps, const py::array& ra,
                    const py::array& oa) {
    Mat x = as_mat(xa, "x", false, true), w = as_mat(wa, "w", false, true);
    Mat r = as_mat(ra, "residual", false, true), o = as_mat(oa, "out", true, true);
    int64_t g, per_row;
    rmsnorm_common(x, w, eps, g, per_row);
    if (o.rows != x.rows || o.cols != x.cols || r.rows != x.rows || r.cols != x.cols)
        bad("rmsnorm_add: residual and out must have x's shape");
    py::gil_scoped_release nogil;
    pyengine::cpu::rmsnorm_add(x.p, w.p, r.p, o.p, x.rows, x.cols, g, eps);
}

void op_add_rmsnorm(const py::array& aa, const py::array& ba, const py::array& wa, float eps,
                    const py::array& sa, const py::array& na) {
    Mat a = as_mat(aa, "a", false, true), b = as_mat(ba, "b", false, true), w = as_mat(wa, "w", false, true);
    Mat s = as_mat(sa, "sum_out", true, true), nrm = as_mat(na, "norm_out", true, true);
    int64_t g, per_row;
    rmsnorm_common(a, w, eps, g, per_row);
    if (b.rows != a.rows || b.cols != a.cols || s.rows != a.rows || s.cols != a.cols ||
        nrm.rows != a.rows || nrm.cols != a.cols)
        bad("add_rmsnorm: b, sum_out and norm_out must have a's shape");
    py::gil_scoped_release nogil;
    pyengine::cpu::add_rmsnorm(a.p, b.p, w.p, s.p, nrm.p, a.rows, a.cols, g, eps);
}

void op_rope_table(const py::array& pa, double freq_base, int n_rot, const py::array& ca,
                   const py::array& sa, const py::object& freq_factors, double freq_scale, double ext_factor,
                   double attn_factor, double beta_fast, double beta_slow, int64_t n_ctx_orig) {
    if (!py::dtype::of<double>().equal(pa.dtype())) bad("positions: expected float64");
    if (pa.ndim() != 1 || (pa.shape(0) > 1 && pa.strides(0) != (py::ssize_t)sizeof(double)))
        bad("positions: expected a contiguous 1-D array");
    if (n_rot <= 0 || n_rot % 2) bad("rope_table: n_rot must be positive and even");
    if (!(freq_base > 0.0)) bad("rope_table: freq_base must be > 0");
    if (!(freq_scale > 0.0) || !std::isfinite(ext_factor) || !std::isfinite(attn_factor) ||
        !std::isfinite(beta_fast) || !std::isfinite(beta_slow) || n_ctx_orig < 0)
        bad("rope_table: need freq_scale > 0, finite ext_factor, attn_factor, beta_fast, beta_slow, n_ctx_orig >= 0");
    const int64_t n = pa.shape(0);
    const int half = n_rot / 2;
    Mat c = as_mat(ca, "cos_out", true, true), s = as_mat(sa, "sin_out", true, true);
    if (c.rows != n || c.cols != half || s.rows != n || s.cols != half)
        bad("rope_table: cos_out and sin_out must be (n, n_rot/2)");
    pyengine::cpu::RopeScaling sc =
        pyengine::rope_scaling(freq_scale, ext_factor, attn_factor, beta_fast, beta_slow, n_ctx_orig);
    py::array ff;
    if (!freq_factors.is_none()) {
        ff = py::array::ensure(freq_factors);
        if (!ff) bad("rope_table: freq_factors must be a float32 array");
        Mat f = as_mat(ff, "freq_factors", false, true);
        if (ff.ndim() != 1 || f.cols != half) bad("rope_table: freq_factors must be (n_rot/2,)");
        sc.freq_factors = f.p;
    }
    if (ext_factor != 0.0 && n_ctx_orig <= 0) bad("rope_table: YaRN (ext_factor != 0) needs n_ctx_orig > 0");
    const double* pos = static_cast<const double*>(pa.data());
    py::gil_scoped_release nogil;
    pyengine::cpu::rope_table(pos, n, freq_base, n_rot, c.p, s.p, &sc);
}

void op_rope(const py::array& xa, const py::array& oa, const py::array& ca, const py::array& sa,
             int n_heads, int head_dim, int n_rot, bool neox) {
    Mat x = as_mat(xa, "x", false, false), o = as_mat(oa, "out", true, true);
    Mat c = as_mat(ca, "cos", false, true), s = as_mat(sa, "sin", false, true);
    if (n_heads <= 0 || head_dim <= 0) bad("rope: n_heads and head_dim must be positive");
    if (n_rot <= 0 || n_rot % 2 || n_rot > head_dim) bad("rope: need 0 < n_rot <= head_dim, n_rot even");
    if (x.cols != (int64_t)n_heads * head_dim) bad("rope: x width must be n_heads*head_dim");
    if (o.rows != x.rows || o.cols != x.cols) bad("rope: out must have x's shape");
    if (c.rows != x.rows || c.cols != n_rot / 2 || s.rows != x.rows || s.cols != n_rot / 2)
        bad("rope: cos and sin must be (n, n_rot/2)");
    if (o.p != x.p) {  // a partial overlap would be read after being written
        const char *xb = (const char*)x.p, *xe = (const char*)(x.p + (x.rows - 1) * x.stride + x.cols);
        const char *ob = (const char*)o.p, *oe = (const char*)(o.p + o.rows * o.cols);
        if (ob < xe && xb < oe) bad("rope: out overlaps x without being x");
    } else if (x.stride != x.cols) {
        bad("rope: in place needs contiguous rows");
    }
    py::gil_scoped_release nogil;
    pyengine::cpu::rope(x.p, x.stride, x.rows, o.p, c.p, s.p, n_heads, head_dim, n_rot, neox);
}

using EW = pyengine::cpu::Binary;

void op_binary(EW kind, const py::array& aa, const py::array& ba, const py::array& oa) {
    Mat a = as_mat(aa, "a", false, true), b = as_mat(ba, "b", false, true), o = as_mat(oa, "out", true, true);
    same_size(a, b, "a", "b");
    same_size(a, o, "a", "out");
    const int64_t count = a.rows * a.cols;
    py::gil_scoped_release nogil;
    pyengine::cpu::binary(kind, a.p, b.p, o.p, count);
}

// out (n, d) = x (n, d) + b (d,) for every row
void op_add_bias(const py::array& xa, const py::array& ba, const py::array& oa) {
    Mat x = as_mat(xa, "x", false, false), b = as_mat(ba, "b", false, true), o = as_mat(oa, "out", true, true);
    if (b.rows * b.cols != x.cols) bad("add_bias: b must have x's width (" + std::to_string(x.cols) + " values)");
    if (o.rows != x.rows || o.cols != x.cols) bad("add_bias: out must have x's shape");
    py::gil_scoped_release nogil;
    pyengine::cpu::add_bias(x.p, x.stride, x.rows, x.cols, b.p, o.p);
}

void op_softcap(const py::array& xa, float cap, const py::array& oa) {
    Mat x = as_mat(xa, "x", false, true), o = as_mat(oa, "out", true, true);
    same_size(x, o, "x", "out");
    if (!(cap > 0.0f) || !std::isfinite(cap)) bad("softcap: cap must be a finite value > 0");
    const int64_t count = x.rows * x.cols;
    py::gil_scoped_release nogil;
    pyengine::cpu::softcap(x.p, cap, o.p, count);
}

void op_scale(const py::array& xa, float s, const py::array& oa) {
    Mat x = as_mat(xa, "x", false, true), o = as_mat(oa, "out", true, true);
    same_size(x, o, "x", "out");
    const int64_t count = x.rows * x.cols;
    py::gil_scoped_release nogil;
    pyengine::cpu::scale(x.p, s, o.p, count);
}

// ------------------------------------------------------------ attention -----------

constexpr int KB = pyengine::kAttnKeyBlock;

// k (n, width) rows -> positions pos0.. of the panel array kt (n_blocks, width, 64)
void store_panels(const float* k, int64_t k_stride, int64_t n, int64_t width, float* kt, int64_t pos0) {
    for (int64_t t = 0; t < n; ++t) {
        const int64_t p = pos0 + t;
        float* dst = kt + (p / KB) * width * KB + p % KB;
        const float* src = k + t * k_stride;
        for (int64_t e = 0; e < width; ++e) dst[e * KB] = src[e];
    }
}

void op_kv_store(const py::array& ka, const py::array& kta, int64_t pos0) {
    Mat k = as_mat(ka, "k", false, false);
    if (kta.ndim() != 3 || kta.shape(2) != KB || !(kta.flags() & py::array::c_style))
        bad("kv_store: key panels must be a C-contiguous (n_blocks, kv_width, 64) float32 array");
    Mat kt = as_mat(kta, "k_panels", true, true);
    const int64_t width = kta.shape(1), cap = kta.shape(0) * KB;
    if (k.cols != width) bad("kv_store: k width " + std::to_string(k.cols) + " != panel width " + std::to_string(width));
    if (pos0 < 0 || k.rows > cap || pos0 > cap - k.rows)  // (pos0 + k.rows could wrap)
        bad("kv_store: positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + k.rows - 1) +
            " outside the cache (" + std::to_string(cap) + " positions)");
    py::gil_scoped_release nogil;
    pyengine::cpu::kv_store(k.p, k.stride, k.rows, width, kt.p, pos0);
}

// Query rows per task: 32 (8 tokens of a 4-head group) for prompts. A decode step has
// only `group` rows per KV head, and decode is bound by reading K and V: with as many
// KV heads as threads each task takes a whole head (every K/V byte read once); with
// fewer, a head's rows are split evenly over the threads (at least 2 per task), once:
// every task reads its head's whole cache, so splitting further multiplies the reads
// (MLA's 16 heads on one latent KV head in 8 tasks of 2 read it 8 times per layer, and
// at 2048 positions attention took half the decode step).
int rows_per_task(int64_t rows_g, int n_kv_heads) {
    const int nt = n_threads();
    if (n_kv_heads >= nt) return (int)std::min<int64_t>(32, rows_g);
    const int64_t r = (rows_g * n_kv_heads + nt - 1) / nt;
    return (int)std::max<int64_t>(2, std::min<int64_t>(32, r));
}

// Run the tiles of one attention call (a.kt holds the panels from block a.kt_b0 on).
void attention_tiles(const AttnArgs& a) {
    const OpsTable& t = ops();
    const int64_t rows_g = (int64_t)a.n * a.group();  // rows of one KV head
    const int tr = rows_per_task(rows_g, a.n_kv_heads);
    const int tiles = (int)((rows_g + tr - 1) / tr);
    // later rows see more keys: hand them out first
    run_tasks(a.n_kv_heads * tiles, [&](int task) {
        const int g = task % a.n_kv_heads, b = tiles - 1 - task / a.n_kv_heads;
        t.attention(a, g, b * tr, (int)std::min<int64_t>(rows_g, (int64_t)(b + 1) * tr));
    });
}

void op_attention(const py::array& qa, const py::object& ko, const py::array& va, const py::array& oa,
                  int pos0, int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap) {
    const bool in_rows = ko.is_none();  // keys = the value rows (MLA's single-copy cache)
    const py::array ka = in_rows ? va : py::cast<py::array>(ko);
    Mat q = as_mat(qa, "q", false, false), v = as_mat(va, "v", false, false);
    Mat o = as_mat(oa, "out", true, false);
    if (qa.ndim() != 2 || va.ndim() != 2 || oa.ndim() != 2) bad("attention: q, v and out must be 2-D");
    if (n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || n_heads % n_kv_heads)
        bad("attention: need n_heads a positive multiple of n_kv_heads and head_dim > 0");
    const int64_t width = (int64_t)n_kv_heads * head_dim;
    if (q.cols != (int64_t)n_heads * head_dim) bad("attention: q width must be n_heads*head_dim");
    if (o.rows != q.rows || o.cols != q.cols) bad("attention: out must have q's shape");
    if (v.cols != width) bad("attention: v must be (n_ctx, n_kv_heads*head_dim)");
    const bool panels = ka.ndim() == 3;
    Mat k;
    int64_t k_positions;
    if (in_rows) {
        k = v;
        k_positions = v.rows;
    } else if (panels) {  // (n_blocks, width, 64): the cpu backend's cache
        if (ka.shape(1) != width || ka.shape(2) != KB || !(ka.flags() & py::array::c_style))
            bad("attention: key panels must be C-contiguous (n_blocks, n_kv_heads*head_dim, 64)");
        k = as_mat(ka, "k", false, true);
        k_positions = ka.shape(0) * KB;
    } else if (ka.ndim() == 2) {  // (n_ctx, width): transposed into panels for this call
        k = as_mat(ka, "k", false, false);
        if (k.cols != width) bad("attention: k must be (n_ctx, n_kv_heads*head_dim)");
        k_positions = k.rows;
    } else {
        bad("attention: k must be (n_ctx, kv_width) or key panels (n_blocks, kv_width, 64)");
    }
    if (pos0 < 0 || window < 0) bad("attention: pos0 and window must be >= 0");
    if (!(softcap >= 0.0f) || !std::isfinite(softcap)) bad("attention: softcap must be finite and >= 0 (0: off)");
    if (pos0 + q.rows > std::min(k_positions, v.rows))
        bad("attention: positions up to " + std::to_string(pos0 + q.rows) + " but the cache holds " +
            std::to_string(std::min(k_positions, v.rows)));
    {
        const char *ob = (const char*)o.p, *oe = (const char*)(o.p + (o.rows - 1) * o.stride + o.cols);
        for (const Mat* in : {&q, &k, &v}) {
            const char *ib = (const char*)in->p, *ie = (const char*)(in->p + (in->rows - 1) * in->stride + in->cols);
            if (ob < ie && ib < oe) bad("attention: out overlaps an input");
        }
    }
    const int n = (int)q.rows;
    if (n == 0) return;
    AttnArgs a;
    a.q = q.p; a.q_stride = q.stride;
    a.v = v.p; a.v_stride = v.stride;
    a.out = o.p; a.out_stride = o.stride;
    a.n = n; a.pos0 = pos0; a.n_heads = n_heads; a.n_kv_heads = n_kv_heads;
    a.head_dim = head_dim; a.window = window; a.scale = scale; a.softcap = softcap;
    a.kt_block_stride = width * KB;

    py::gil_scoped_release nogil;
    thread_local std::vector<float> packed;
    if (in_rows) {
        a.kt = nullptr;
        a.kt_b0 = 0;
    } else if (panels) {
        a.kt = k.p;
        a.kt_b0 = 0;
    } else {  // only the blocks this call reads
        const int b_first = a.key_lo(pos0) / KB, b_last = (a.key_hi(pos0 + n - 1) + KB - 1) / KB;
        const int64_t p_first = (int64_t)b_first * KB, p_end = std::min<int64_t>((int64_t)b_last * KB, k.rows);
        packed.assign((size_t)(b_last - b_first) * width * KB, 0.0f);
        float* dst = packed.data();  // (a thread_local is not captured by a lambda: pass the pointer)
        const int nt = task_count(b_last - b_first, 1);
        run_tasks(nt, [&](int task) {
            const int64_t bs = (b_last - b_first) * task / nt, be = (b_last - b_first) * (task + 1) / nt;
            const int64_t p0 = p_first + bs * KB, p1 = std::min(p_end, p_first + be * KB);
            if (p1 > p0) store_panels(k.p + p0 * k.stride, k.stride, p1 - p0, width, dst, p0 - p_first);
        });
        a.kt = dst;
        a.kt_b0 = b_first;
    }
    attention_tiles(a);
}

}  // namespace

// ------------------------------------------------------------ raw entry points ------
// (csrc/cpu_ops.h) What the bindings above run once their arguments are checked.

namespace pyengine {
namespace cpu {

const OpsTable& ops_table() { return ops(); }

void rmsnorm(const float* x, int64_t x_stride, int64_t rows, int64_t cols, const float* w, int64_t g, float eps,
             float* out) {
    const OpsTable& t = ops();
    const int64_t per_row = cols / g;
    const int nt = task_count(rows, std::max<int64_t>(1, 16384 / cols));
    run_tasks(nt, [&](int task) {
        const int64_t r0 = rows * task / nt, r1 = rows * (task + 1) / nt;
        if (x_stride == cols) {
            t.rmsnorm(x + r0 * cols, w, out + r0 * cols, (r1 - r0) * per_row, g, eps);
        } else {
            for (int64_t r = r0; r < r1; ++r) t.rmsnorm(x + r * x_stride, w, out + r * cols, per_row, g, eps);
        }
    });
}

void rmsnorm_add(const float* x, const float* w, const float* residual, float* out, int64_t rows, int64_t cols,
                 int64_t g, float eps) {
    const OpsTable& t = ops();
    const int64_t groups = rows * (cols / g);
    const int nt = task_count(groups, std::max<int64_t>(1, 16384 / g));
    run_tasks(nt, [&](int task) {
        const int64_t r0 = groups * task / nt, r1 = groups * (task + 1) / nt;
        t.rmsnorm_add(x + r0 * g, w, residual + r0 * g, out + r0 * g, r1 - r0, g, eps);
    });
}

void add_rmsnorm(const float* a, const float* b, const float* w, float* sum, float* norm, int64_t rows,
                 int64_t cols, int64_t g, float eps) {
    const OpsTable& t = ops();
    const int64_t groups = rows * (cols / g);
    const int nt = task_count(groups, std::max<int64_t>(1, 16384 / g));
    run_tasks(nt, [&](int task) {
        const int64_t r0 = groups * task / nt, r1 = groups * (task + 1) / nt;
        t.add_rmsnorm(a + r0 * g, b + r0 * g, w, sum + r0 * g, norm + r0 * g, r1 - r0, g, eps);
    });
}

void rope_table(const double* pos, int64_t n, double freq_base, int n_rot, float* cos_out, float* sin_out,
                const RopeScaling* sc) {
    const int half = n_rot / 2;
    thread_local std::vector<double> inv_freq_buf;
    inv_freq_buf.resize(half);
    const double* inv_freq = inv_freq_buf.data();  // workers need the caller's buffer
    // same expression as the reference: base ** (-(2i) / n_rot), angles in double
    for (int i = 0; i < half; ++i) inv_freq_buf[i] = std::pow(freq_base, -(double)i * 2.0 / (double)n_rot);
    if (!sc || !pyengine::scales_angles(*sc)) {
        const int nt = task_count(n, std::max(1, 4096 / half));
        run_tasks(nt, [&](int task) {
            for (int64_t t = n * task / nt; t < n * (task + 1) / nt; ++t) {
                for (int i = 0; i < half; ++i) {
                    const double ang = pos[t] * inv_freq[i];
                    cos_out[t * half + i] = (float)std::cos(ang);
                    sin_out[t * half + i] = (float)std::sin(ang);
                }
            }
        });
        return;
    }
    // Scaled (llama.cpp's rope_yarn, in double): pair i's angle extrapolated is
    // pos * inv_freq[i] / ff[i]; interpolated is freq_scale times that. Without YaRN the
    // interpolated angle is used; with YaRN (ext_factor != 0) the two are mixed by a ramp
    // that is 1 below dim lo and 0 above hi, and cos/sin grow by 1 + 0.1 ln(1/freq_scale).
    if (sc->freq_factors)
        for (int i = 0; i < half; ++i) inv_freq_buf[i] /= (double)sc->freq_factors[i];
    const double fs = sc->freq_scale, ext = sc->ext_factor;
    const pyengine::YarnRamp yr = pyengine::yarn_ramp(*sc, n_rot, freq_base);  // correction dims lo, hi; mscale
    const double lo = yr.lo, hi = yr.hi, mscale = yr.mscale;
    const int nt = task_count(n, std::max(1, 4096 / half));
    run_tasks(nt, [&](int task) {
        for (int64_t t = n * task / nt; t < n * (task + 1) / nt; ++t) {
            for (int i = 0; i < half; ++i) {
                const double extrap = pos[t] * inv_freq[i];
                double theta = fs * extrap;
                if (ext != 0.0) {
                    const double y = ((double)i - lo) / std::max(0.001, hi - lo);
                    const double ramp = (1.0 - std::min(1.0, std::max(0.0, y))) * ext;
                    theta = theta * (1.0 - ramp) + extrap * ramp;
                }
                cos_out[t * half + i] = (float)(std::cos(theta) * mscale);
                sin_out[t * half + i] = (float)(std::sin(theta) * mscale);
            }
        }
    });
}

void rope(const float* x, int64_t x_stride, int64_t rows, float* out, const float* cos_t, const float* sin_t,
          int n_heads, int head_dim, int n_rot, bool neox) {
    const OpsTable& t = ops();
    const int nt = task_count(rows, std::max<int64_t>(1, 16384 / ((int64_t)n_heads * head_dim)));
    run_tasks(nt, [&](int task) {
        t.rope(x, x_stride, out, cos_t, sin_t, rows * task / nt, rows * (task + 1) / nt, n_heads, head_dim, n_rot,
               neox);
    });
}

void binary(Binary kind, const float* a, const float* b, float* out, int64_t count) {
    const OpsTable& t = ops();
    auto fn = kind == Binary::silu_mul ? t.silu_mul : kind == Binary::gelu_mul ? t.gelu_mul : t.add;
    const int nt = task_count(count, kind == Binary::add ? 65536 : 16384);
    run_tasks(nt, [&](int task) {
        // 16-float aligned cuts keep every task but the last on whole vectors
        const int64_t c0 = (count * task / nt) & ~int64_t(15);
        const int64_t c1 = task + 1 == nt ? count : (count * (task + 1) / nt) & ~int64_t(15);
        fn(a + c0, b + c0, out + c0, c1 - c0);
    });
}

void add_bias(const float* x, int64_t x_stride, int64_t rows, int64_t cols, const float* b, float* out) {
    const OpsTable& t = ops();
    const int nt = task_count(rows * cols, 65536);
    run_tasks(nt, [&](int task) {
        for (int64_t r = rows * task / nt; r < rows * (task + 1) / nt; ++r) t.add(x + r * x_stride, b, out + r * cols, cols);
    });
}

void softcap(const float* x, float cap, float* out, int64_t count) {
    const OpsTable& t = ops();
    const int nt = task_count(count, 16384);
    run_tasks(nt, [&](int task) {
        const int64_t c0 = (count * task / nt) & ~int64_t(15);
        const int64_t c1 = task + 1 == nt ? count : (count * (task + 1) / nt) & ~int64_t(15);
        t.softcap(x + c0, cap, out + c0, c1 - c0);
    });
}

void scale(const float* x, float s, float* out, int64_t count) {
    const OpsTable& t = ops();
    const int nt = task_count(count, 65536);
    run_tasks(nt, [&](int task) {
        const int64_t c0 = (count * task / nt) & ~int64_t(15);
        const int64_t c1 = task + 1 == nt ? count : (count * (task + 1) / nt) & ~int64_t(15);
        t.scale(x + c0, s, out + c0, c1 - c0);
    });
}

void kv_store(const float* k, int64_t k_stride, int64_t n, int64_t width, float* kt, int64_t pos0) {
    // tasks by whole blocks so no two write the same cache lines
    const int64_t b0 = pos0 / KB, b1 = (pos0 + n + KB - 1) / KB;
    const int nt = (int)std::min<int64_t>(b1 - b0, task_count(n * width, 65536));
    run_tasks(nt, [&](int task) {
        const int64_t bs = b0 + (b1 - b0) * task / nt, be = b0 + (b1 - b0) * (task + 1) / nt;
        const int64_t p0 = std::max(pos0, bs * KB), p1 = std::min(pos0 + n, be * KB);
        if (p1 > p0) store_panels(k + (p0 - pos0) * k_stride, k_stride, p1 - p0, width, kt, p0);
    });
}

void attention(AttnArgs a) {
    a.kt_b0 = 0;
    attention_tiles(a);
}

}  // namespace cpu
}  // namespace pyengine

void bind_cpu_ops(py::module_& m) {
    m.def("ops_variants", []() {
        py::list l;
        for (auto* t : available_tables()) l.append(t->name);
        return l;
    }, "Names of the op-kernel variants this CPU can run (widest last).");
    m.def("ops_variant", []() { return std::string(ops().name); },
          "Name of the op-kernel variant in use (override at start-up with PYENGINE_OPS=generic).");
    m.def("set_ops_variant", [](const std::string& name) {
        std::string prev = ops().name;
        for (auto* t : available_tables())
            if (name == t->name) { g_ops = t; return prev; }
        bad("unknown or unsupported ops variant " + name);
    }, py::arg("name"), "Switch the op-kernel variant (for tests and benchmarks); returns the previous one.");

    m.def("rmsnorm", &op_rmsnorm, py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("out"),
          "out = x / sqrt(mean(x^2) + eps) * w over each group of len(w) values of x (n, k*len(w)).\n"
          "x may have a row stride; out (x's shape) must be contiguous and may be x.");
    m.def("rmsnorm_add", &op_rmsnorm_add, py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("residual"),
          py::arg("out"), "out = residual + rmsnorm(x, w, eps) (out may be residual).");
    m.def("add_rmsnorm", &op_add_rmsnorm, py::arg("a"), py::arg("b"), py::arg("w"), py::arg("eps"),
          py::arg("sum_out"), py::arg("norm_out"), "sum_out = a + b; norm_out = rmsnorm(sum_out, w, eps).");
    m.def("rope_table", &op_rope_table, py::arg("positions"), py::arg("freq_base"), py::arg("n_rot"),
          py::arg("cos_out"), py::arg("sin_out"), py::arg("freq_factors") = py::none(), py::arg("freq_scale") = 1.0,
          py::arg("ext_factor") = 0.0, py::arg("attn_factor") = 1.0, py::arg("beta_fast") = 32.0,
          py::arg("beta_slow") = 1.0, py::arg("n_ctx_orig") = 0,
          "cos/sin of pos * freq_base**(-2i/n_rot) (computed in float64) into (n, n_rot/2) float32 arrays;\n"
          "positions: float64 (n,). The optional arguments scale the angles as RopeScaling says\n"
          "(pyengine/backends/base.py): frequency factors, linear scaling, YaRN.");
    m.def("rope", &op_rope, py::arg("x"), py::arg("out"), py::arg("cos"), py::arg("sin"), py::arg("n_heads"),
          py::arg("head_dim"), py::arg("n_rot"), py::arg("neox"),
          "Rotary embedding of x (n, n_heads*head_dim) with tables from rope_table; NEOX pairs (i, i+n_rot/2),\n"
          "NORM pairs (2i, 2i+1); dims >= n_rot pass through. out may be x (in place).");
    m.def("silu_mul", [](const py::array& g, const py::array& u, const py::array& o) { op_binary(EW::silu_mul, g, u, o); },
          py::arg("gate"), py::arg("up"), py::arg("out"), "out = silu(gate) * up (same-size contiguous float32).");
    m.def("gelu_mul", [](const py::array& g, const py::array& u, const py::array& o) { op_binary(EW::gelu_mul, g, u, o); },
          py::arg("gate"), py::arg("up"), py::arg("out"), "out = gelu_tanh(gate) * up.");
    m.def("add", [](const py::array& a, const py::array& b, const py::array& o) { op_binary(EW::add, a, b, o); },
          py::arg("a"), py::arg("b"), py::arg("out"), "out = a + b (same size, no broadcasting).");
    m.def("add_bias", &op_add_bias, py::arg("x"), py::arg("b"), py::arg("out"),
          "out (n, d) = x (n, d) + b (d,) for every row (x may have a row stride; out contiguous).");
    m.def("softcap", &op_softcap, py::arg("x"), py::arg("cap"), py::arg("out"),
          "out = cap * tanh(x / cap) (logit soft-capping; out may be x).");
    m.def("scale", &op_scale, py::arg("x"), py::arg("s"), py::arg("out"), "out = x * s.");
    m.def("attention", &op_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("pos0"),
          py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("scale"), py::arg("window") = 0,
          py::arg("softcap") = 0.0f,
          "Causal grouped-query attention of q (n, H*hd) at positions pos0.. into out (n, H*hd).\n"
          "k: key panels (n_blocks, Hkv*hd, 64) as kv_store writes them, or plain (n_ctx, Hkv*hd) rows\n"
          "(transposed for each call: fine for tests, slow for decoding), or None: the keys are the value\n"
          "rows (key j = value j, a cache stored once, as MLA's); v: (n_ctx, Hkv*hd).\n"
          "Key j is visible from position p iff j <= p and (window == 0 or p - j < window).\n"
          "softcap > 0: scores scale*q.k become softcap*tanh(score/softcap) before the softmax.\n"
          "A row's result does not depend on how many tokens the call holds.");
    m.def("kv_store", &op_kv_store, py::arg("k"), py::arg("k_panels"), py::arg("pos0"),
          "Write keys k (n, kv_width) at positions pos0..pos0+n-1 of key panels (n_blocks, kv_width, 64).");
    m.attr("ATTN_KEY_BLOCK") = KB;
}
