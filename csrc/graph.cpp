// pyengine._C.DecodeGraph: a recorded decode step replayed in one native call (see graph.h).
//
// Building (from pyengine/backends/cpu_graph.py) checks every array once: dtype, layout,
// sizes, and the KV cache bounds each position-dependent node implies. A step then only
// checks its two scalars (token id, pos0), releases the GIL and runs the node list.
#include "graph.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>

#include "common.h"
#include "cpu_ops.h"

namespace py = pybind11;

namespace pyengine {
namespace graph {

const char* kind_name(Kind k) {
    switch (k) {
#define PE_KIND_NAME(e, name, what) \
    case Kind::e:                   \
        return name;
        PE_GRAPH_KINDS(PE_KIND_NAME)
#undef PE_KIND_NAME
    }
    return "?";
}

namespace {
// [p, p + n) and [q, q + m) share a float
bool overlaps(const float* p, int64_t n, const float* q, int64_t m) {
    return p != nullptr && q != nullptr && p < q + m && q < p + n;
}
}  // namespace

// A later matmul j joins node i's group when it reads the same input (same a, n, cols) and can
// run before the nodes between them: those are only matmuls and bias additions (whose buffers
// are known), none of them writes j's input, and none reads or writes j's output.
void Program::plan_groups() {
    constexpr int kWindow = 8;    // nodes looked ahead (q, bias, k, bias, v: 5)
    constexpr int kMaxGroup = 8;  // matmuls in one group (the parts array of run())
    const int N = (int)nodes.size();
    group.assign(N, {});
    member.assign(N, 0);
    for (int i = 0; i < N; ++i) {
        const Node& a = nodes[i];
        if (a.kind != Kind::Matmul || member[i]) continue;
        for (int j = i + 1; j < N && j <= i + kWindow && (int)group[i].size() + 1 < kMaxGroup; ++j) {
            const Node& m = nodes[j];
            if (m.kind != Kind::Matmul && m.kind != Kind::AddBias) break;
            if (m.kind != Kind::Matmul || member[j] || m.a != a.a || m.n != a.n || m.cols != a.cols) continue;
            // outputs: apart from the input and from every output already in the group
            bool ok = !overlaps(m.out, m.n * m.w_rows, m.a, m.n * m.cols) &&
                      !overlaps(a.out, a.n * a.w_rows, m.a, m.n * m.cols) &&
                      !overlaps(m.out, m.n * m.w_rows, a.out, a.n * a.w_rows);
            for (int g : group[i]) ok = ok && !overlaps(m.out, m.n * m.w_rows, nodes[g].out, nodes[g].n * nodes[g].w_rows);
            for (int k = i + 1; k < j && ok; ++k) {
                const Node& x = nodes[k];
                if (x.kind == Kind::Matmul && member[k]) continue;  // already moved up into the group
                const int64_t in = x.n * x.cols, out = x.kind == Kind::Matmul ? x.n * x.w_rows : x.n * x.cols;
                ok = !overlaps(x.out, out, m.a, m.n * m.cols) && !overlaps(x.out, out, m.out, m.n * m.w_rows) &&
                     !overlaps(x.a, in, m.out, m.n * m.w_rows);
            }
            if (!ok) continue;
            group[i].push_back(j);
            member[j] = 1;
        }
    }
    planned = nodes.size();
}

void Program::run(int32_t token, int64_t pos0, const MatmulKernels& mk, double* ns) {
    const bool fuse = fuse_matmuls && ns == nullptr;
    if (fuse && planned != nodes.size()) plan_groups();
    for (RopeTable& t : tables) {
        const double p = (double)t.pos.at(pos0);
        cpu::RopeScaling sc = t.sc;
        sc.freq_factors = t.ff.empty() ? nullptr : t.ff.data();
        cpu::rope_table(&p, 1, t.base, t.n_rot, t.cos.data(), t.sin.data(), &sc);
    }
    constexpr int KB = pyengine::kAttnKeyBlock;
    auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node& nd = nodes[i];
        if (fuse && member[i]) continue;  // ran with its group
        if (fuse && !group[i].empty()) {
            MatmulPart parts[8];
            int np = 0;
            parts[np++] = MatmulPart{nd.wt, nd.w, nd.w_rows, nd.cols, nd.a, nd.n, nd.out};
            for (int j : group[i]) {
                const Node& m = nodes[j];
                parts[np++] = MatmulPart{m.wt, m.w, m.w_rows, m.cols, m.a, m.n, m.out};
            }
            matmul_group(parts, np, mk);
            continue;
        }
        switch (nd.kind) {
            case Kind::Embed:
                get_rows(nd.wt, nd.w, nd.w_rows, nd.cols, &token, 1, nd.out);
                break;
            case Kind::Matmul:
                matmul(nd.wt, nd.w, nd.w_rows, nd.cols, nd.a, nd.n, nd.out, mk);
                break;
            case Kind::RmsNorm:
                cpu::rmsnorm(nd.a, nd.cols, nd.n, nd.cols, nd.wv, nd.g, nd.eps, nd.out);
                break;
            case Kind::RmsNormAdd:
                cpu::rmsnorm_add(nd.a, nd.wv, nd.b, nd.out, nd.n, nd.cols, nd.g, nd.eps);
                break;
            case Kind::AddRmsNorm:
                cpu::add_rmsnorm(nd.a, nd.b, nd.wv, nd.out, nd.out2, nd.n, nd.cols, nd.g, nd.eps);
                break;
            case Kind::Rope: {
                const RopeTable& t = tables[nd.table];
                cpu::rope(nd.a, nd.cols, 1, nd.out, t.cos.data(), t.sin.data(), nd.n_heads, nd.head_dim, nd.n_rot,
                          nd.neox);
                break;
            }
            case Kind::KvWrite: {
                const int64_t p = nd.pos.at(pos0);
                cpu::kv_store(nd.a, nd.width, 1, nd.width, nd.kt, p);
                std::memcpy(nd.vc + p * nd.width, nd.b, sizeof(float) * (size_t)nd.width);
                break;
            }
            case Kind::Attention: {
                pyengine::AttnArgs a;
                a.q = nd.a;
                a.q_stride = nd.cols;
                a.kt = nd.kt;
                a.kt_b0 = 0;
                a.kt_block_stride = nd.width * KB;
                a.v = nd.vc;
                a.v_stride = nd.width;
                a.out = nd.out;
                a.out_stride = nd.cols;
                a.n = 1;
                a.pos0 = (int)nd.pos.at(pos0);
                a.n_heads = nd.n_heads;
                a.n_kv_heads = nd.n_kv_heads;
                a.head_dim = nd.head_dim;
                a.window = nd.window;
                a.scale = nd.s;
                a.softcap = nd.cap;
                cpu::attention(a);
                break;
            }
            case Kind::Add:
                cpu::binary(cpu::Binary::add, nd.a, nd.b, nd.out, nd.n * nd.cols);
                break;
            case Kind::SiluMul:
                cpu::binary(cpu::Binary::silu_mul, nd.a, nd.b, nd.out, nd.n * nd.cols);
                break;
            case Kind::GeluMul:
                cpu::binary(cpu::Binary::gelu_mul, nd.a, nd.b, nd.out, nd.n * nd.cols);
                break;
            case Kind::Scale:
                cpu::scale(nd.a, nd.s, nd.out, nd.n * nd.cols);
                break;
            case Kind::AddBias:
                cpu::add_bias(nd.a, nd.cols, nd.n, nd.cols, nd.wv, nd.out);
                break;
            case Kind::Softcap:
                cpu::softcap(nd.a, nd.s, nd.out, nd.n * nd.cols);
                break;
            case Kind::MoeFfn:
                moe::moe_ffn(*nd.moe, nd.a, nd.n, nd.out, mk);
                break;
            case Kind::MlaAttention:
                mla::mla_attention(*nd.mla, nd.a, nd.b, 1, nd.pos.at(pos0), nd.vc, nd.out, mk);
                break;
        }
        if (ns) {
            const auto t1 = std::chrono::steady_clock::now();
            ns[i] += std::chrono::duration<double, std::nano>(t1 - t0).count();
            t0 = t1;
        }
    }
}

}  // namespace graph
}  // namespace pyengine

// csrc/bind_moe.cpp: a moe::Layer from _C.moe_ffn's keyword arguments (arrays kept alive in keep)
std::shared_ptr<const pyengine::moe::Layer> moe_layer_from_kwargs(const py::kwargs& kw, std::vector<py::object>& keep);
// csrc/bind_mla.cpp: the same for _C.mla_attention, and the positions its cache holds (checked)
std::shared_ptr<const pyengine::mla::Layer> mla_layer_from_kwargs(const py::kwargs& kw, std::vector<py::object>& keep);
int64_t mla_cache_positions(const pyengine::mla::Layer& L, const py::array& vc);

namespace {

using pyengine::graph::Kind;
using pyengine::graph::Node;
using pyengine::graph::Pos;
constexpr int KB = pyengine::kAttnKeyBlock;

[[noreturn]] void bad(const std::string& msg) { throw py::value_error("DecodeGraph: " + msg); }

// position offsets beyond this are refused, so pos0 + off and lo - off never wrap
constexpr int64_t kMaxPosOffset = int64_t(1) << 40;

// The builder and the replay. Arrays handed in are referenced (kept alive) and read or
// written by pointer on every step, so Python must not resize or free them: the cpu
// backend's graph builder owns them for the graph's lifetime.
class DecodeGraph {
public:
    // -- building ------------------------------------------------------------------
    void add_embed(const std::string& type, const py::array& w, int64_t rows, int64_t cols, const py::array& out) {
        Node nd{Kind::Embed};
        weight(nd, type, w, rows, cols);
        nd.out = fbuf(out, "embed out", cols, true);
        nd.n = 1;
        prog_.n_tokens = std::min(prog_.n_tokens, rows);
        push(nd);
    }

    void add_matmul(const std::string& type, const py::array& w, int64_t rows, int64_t cols, const py::array& x,
                    const py::array& out) {
        Node nd{Kind::Matmul};
        weight(nd, type, w, rows, cols);
        nd.n = tokens(x, cols, "matmul x");
        nd.a = fbuf(x, "matmul x", nd.n * cols, false);
        nd.out = fbuf(out, "matmul out", nd.n * rows, true);
        if ((const float*)nd.out == nd.a) bad("matmul out must not alias x");
        push(nd);
    }

    void add_rmsnorm(const py::array& x, const py::array& w, float eps, const py::array& out) {
        Node nd{Kind::RmsNorm};
        norm(nd, x, w, eps);
        nd.out = fbuf(out, "rmsnorm out", nd.n * nd.cols, true);
        push(nd);
    }

    void add_rmsnorm_add(const py::array& x, const py::array& w, float eps, const py::array& residual,
                         const py::array& out) {
        Node nd{Kind::RmsNormAdd};
        norm(nd, x, w, eps);
        nd.b = fbuf(residual, "rmsnorm_add residual", nd.n * nd.cols, false);
        nd.out = fbuf(out, "rmsnorm_add out", nd.n * nd.cols, true);
        push(nd);
    }

    void add_add_rmsnorm(const py::array& a, const py::array& b, const py::array& w, float eps,
                         const py::array& sum_out, const py::array& norm_out) {
        Node nd{Kind::AddRmsNorm};
        norm(nd, a, w, eps);
        nd.b = fbuf(b, "add_rmsnorm b", nd.n * nd.cols, false);
        nd.out = fbuf(sum_out, "add_rmsnorm sum_out", nd.n * nd.cols, true);
        nd.out2 = fbuf(norm_out, "add_rmsnorm norm_out", nd.n * nd.cols, true);
        push(nd);
    }

    void add_rope(const py::array& x, const py::array& out, int n_heads, int head_dim, int n_rot, bool neox,
                  double freq_base, int64_t pos_off, bool pos_rel, const py::object& freq_factors, double freq_scale,
                  double ext_factor, double attn_factor, double beta_fast, double beta_slow, int64_t n_ctx_orig) {
        Node nd{Kind::Rope};
        if (n_heads <= 0 || head_dim <= 0) bad("rope: n_heads and head_dim must be positive");
        if (n_rot <= 0 || n_rot % 2 || n_rot > head_dim) bad("rope: need 0 < n_rot <= head_dim, n_rot even");
        if (!(freq_base > 0.0)) bad("rope: freq_base must be > 0");
        if (pos_off < -kMaxPosOffset || pos_off > kMaxPosOffset) bad("rope: position offset out of range");
        nd.cols = (int64_t)n_heads * head_dim;
        nd.n = 1;
        nd.a = fbuf(x, "rope x", nd.cols, false);
        nd.out = fbuf(out, "rope out", nd.cols, true);
        nd.n_heads = n_heads;
        nd.head_dim = head_dim;
        nd.n_rot = n_rot;
        nd.neox = neox;
        const Pos p{pos_off, pos_rel};
        std::vector<float> ff;
        if (!freq_factors.is_none()) {
            const py::array fa = py::array::ensure(freq_factors);
            if (!fa || fa.ndim() != 1 || fa.shape(0) != n_rot / 2) bad("rope: freq_factors must be (n_rot/2,) float32");
            const float* f = fbuf(fa, "rope freq_factors", n_rot / 2, false);
            ff.assign(f, f + n_rot / 2);
        }
        if (!(freq_scale > 0.0) || !std::isfinite(ext_factor) || !std::isfinite(attn_factor) || n_ctx_orig < 0 ||
            (ext_factor != 0.0 && n_ctx_orig <= 0))
            bad("rope: bad scaling (need freq_scale > 0, finite factors, n_ctx_orig > 0 with YaRN)");
        const pyengine::cpu::RopeScaling sc =
            pyengine::rope_scaling(freq_scale, ext_factor, attn_factor, beta_fast, beta_slow, n_ctx_orig);
        for (size_t i = 0; i < prog_.tables.size() && nd.table < 0; ++i) {
            const auto& t = prog_.tables[i];
            if (t.base == freq_base && t.n_rot == n_rot && t.pos.off == p.off && t.pos.rel == p.rel && t.ff == ff &&
                pyengine::same_scalars(t.sc, sc))
                nd.table = (int)i;
        }
        if (nd.table < 0) {
            pyengine::graph::RopeTable t;
            t.base = freq_base;
            t.n_rot = n_rot;
            t.pos = p;
            t.sc = sc;
            t.ff = std::move(ff);
            t.cos.resize(n_rot / 2);
            t.sin.resize(n_rot / 2);
            nd.table = (int)prog_.tables.size();
            prog_.tables.push_back(std::move(t));
        }
        push(nd);
    }

    void add_kv_write(const py::array& k, const py::array& v, const py::array& k_panels, const py::array& v_cache,
                      int64_t pos_off, bool pos_rel) {
        Node nd{Kind::KvWrite};
        const int64_t positions = cache(nd, k_panels, v_cache, true);
        nd.n = 1;
        nd.cols = nd.width;
        nd.a = fbuf(k, "kv_write k", nd.width, false);
        nd.b = fbuf(v, "kv_write v", nd.width, false);
        nd.pos = Pos{pos_off, pos_rel};
        bound(nd.pos, 0, positions - 1, "kv_write");
        push(nd);
    }

    void add_attention(const py::array& q, const py::array& k_panels, const py::array& v_cache, const py::array& out,
                       int64_t pos_off, bool pos_rel, int n_heads, int n_kv_heads, int head_dim, float scale,
                       int window, float softcap) {
        Node nd{Kind::Attention};
        if (n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || n_heads % n_kv_heads)
            bad("attention: need n_heads a positive multiple of n_kv_heads and head_dim > 0");
        if (window < 0) bad("attention: window must be >= 0");
        if (!(softcap >= 0.0f) || !std::isfinite(softcap)) bad("attention: softcap must be finite and >= 0");
        const int64_t positions = cache(nd, k_panels, v_cache, false);
        if (nd.width != (int64_t)n_kv_heads * head_dim) bad("attention: cache width is not n_kv_heads*head_dim");
        nd.n = 1;
        nd.cols = (int64_t)n_heads * head_dim;
        nd.a = fbuf(q, "attention q", nd.cols, false);
        nd.out = fbuf(out, "attention out", nd.cols, true);
        nd.n_heads = n_heads;
        nd.n_kv_heads = n_kv_heads;
        nd.head_dim = head_dim;
        nd.s = scale;
        nd.window = window;
        nd.cap = softcap;
        nd.pos = Pos{pos_off, pos_rel};
        bound(nd.pos, 0, positions - 1, "attention");
        push(nd);
    }

    void add_elementwise(const std::string& op, const py::array& a, const py::array& b, const py::array& out) {
        Node nd{op == "add" ? Kind::Add : op == "silu_mul" ? Kind::SiluMul : op == "gelu_mul" ? Kind::GeluMul : Kind::Scale};
        if (nd.kind == Kind::Scale) bad("unknown elementwise op '" + op + "' (add, silu_mul, gelu_mul)");
        shape2(nd, a);
        nd.a = fbuf(a, "elementwise a", nd.n * nd.cols, false);
        nd.b = fbuf(b, "elementwise b", nd.n * nd.cols, false);
        nd.out = fbuf(out, "elementwise out", nd.n * nd.cols, true);
        push(nd);
    }

    // A node out = f(x; s) of one float parameter s, elementwise over x and out (n, cols): Scale, Softcap.
    void push_scalar_op(Kind k, const py::array& x, float s, const py::array& out, const char* x_what,
                        const char* out_what) {
        Node nd{k};
        shape2(nd, x);
        nd.a = fbuf(x, x_what, nd.n * nd.cols, false);
        nd.out = fbuf(out, out_what, nd.n * nd.cols, true);
        nd.s = s;
        push(nd);
    }

    void add_scale(const py::array& x, float s, const py::array& out) {
        push_scalar_op(Kind::Scale, x, s, out, "scale x", "scale out");
    }

    void add_add_bias(const py::array& x, const py::array& b, const py::array& out) {
        Node nd{Kind::AddBias};
        shape2(nd, x);
        nd.a = fbuf(x, "add_bias x", nd.n * nd.cols, false);
        nd.wv = fbuf(b, "add_bias b", nd.cols, false);
        nd.out = fbuf(out, "add_bias out", nd.n * nd.cols, true);
        push(nd);
    }

    void add_softcap(const py::array& x, float cap, const py::array& out) {
        if (!(cap > 0.0f) || !std::isfinite(cap)) bad("softcap: cap must be a finite value > 0");
        push_scalar_op(Kind::Softcap, x, cap, out, "softcap x", "softcap out");
    }

    void add_moe_ffn(const py::array& x, const py::array& out, const py::kwargs& kw) {
        Node nd{Kind::MoeFfn};
        nd.moe = moe_layer_from_kwargs(kw, keep_);
        nd.cols = nd.moe->dim;
        nd.n = tokens(x, nd.cols, "moe_ffn x");
        nd.a = fbuf(x, "moe_ffn x", nd.n * nd.cols, false);
        nd.out = fbuf(out, "moe_ffn out", nd.n * nd.cols, true);
        if ((const float*)nd.out == nd.a) bad("moe_ffn out must not alias x");
        push(nd);
    }

    void add_mla_attention(const py::array& q, const py::array& kv, const py::array& out, const py::array& cache,
                           int64_t pos_off, bool pos_rel, const py::kwargs& kw) {
        Node nd{Kind::MlaAttention};
        nd.mla = mla_layer_from_kwargs(kw, keep_);
        const pyengine::mla::Layer& L = *nd.mla;
        const int64_t positions = mla_cache_positions(L, cache);
        nd.width = L.R + L.r;
        nd.vc = fbuf(cache, "mla cache rows", cache.size(), true);
        nd.n = 1;
        nd.a = fbuf(q, "mla q", (int64_t)L.n_heads * (L.dn + L.r), false);
        nd.b = fbuf(kv, "mla kv", nd.width, false);
        nd.out = fbuf(out, "mla out", (int64_t)L.n_heads * L.dv, true);
        nd.pos = Pos{pos_off, pos_rel};
        bound(nd.pos, 0, positions - 1, "mla_attention");
        push(nd);
    }

    void set_output(const py::array& logits) {
        fbuf(logits, "output", logits.size(), true);
        output_ = logits;
        has_output_ = true;
    }

    // -- running -------------------------------------------------------------------
    py::object step(int64_t token, int64_t pos0, bool copy) {
        if (!has_output_) bad("no output set (call set_output first)");
        if (token < 0 || token >= prog_.n_tokens)
            throw py::index_error("DecodeGraph: token id " + std::to_string(token) + " is outside 0.." +
                                  std::to_string(prog_.n_tokens - 1));
        if (pos0 < prog_.pos_lo || pos0 > prog_.pos_hi)
            throw py::value_error("DecodeGraph: position " + std::to_string(pos0) + " outside " +
                                  std::to_string(prog_.pos_lo) + ".." + std::to_string(prog_.pos_hi) +
                                  " (the KV cache bounds)");
        const pyengine::MatmulKernels* mk = &pyengine::select_variant("auto");
        py::array out = output_;
        if (copy) out = py::array(output_.dtype(), std::vector<py::ssize_t>(output_.shape(), output_.shape() + output_.ndim()));
        {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lock(mutex_);
            prog_.run((int32_t)token, pos0, *mk);
            if (copy) std::memcpy(out.mutable_data(), output_.data(), (size_t)output_.nbytes());
        }
        return std::move(out);
    }

    // Per-node wall time (ns) of `reps` steps at pos0 (summed), for finding where a step goes.
    py::list profile(int64_t token, int64_t pos0, int reps) {
        step(token, pos0, false);  // checks the arguments, warms up
        std::vector<double> ns(prog_.nodes.size(), 0.0);
        {
            const pyengine::MatmulKernels& mk = pyengine::select_variant("auto");
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lock(mutex_);
            for (int r = 0; r < reps; ++r) prog_.run((int32_t)token, pos0, mk, ns.data());
        }
        py::list l;
        for (size_t i = 0; i < ns.size(); ++i) l.append(py::make_tuple(pyengine::graph::kind_name(prog_.nodes[i].kind), ns[i]));
        return l;
    }

    bool fuse() const { return prog_.fuse_matmuls; }
    void set_fuse(bool on) {
        std::lock_guard<std::mutex> lock(mutex_);
        prog_.fuse_matmuls = on;
    }
    py::list matmul_groups() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (prog_.planned != prog_.nodes.size()) prog_.plan_groups();
        py::list l;
        for (size_t i = 0; i < prog_.group.size(); ++i) {
            if (prog_.group[i].empty()) continue;
            py::list g;
            g.append(i);
            for (int j : prog_.group[i]) g.append(j);
            l.append(g);
        }
        return l;
    }

    size_t n_nodes() const { return prog_.nodes.size(); }
    py::tuple positions() const { return py::make_tuple(prog_.pos_lo, prog_.pos_hi); }
    py::list ops() const {
        py::list l;
        for (const Node& nd : prog_.nodes) l.append(pyengine::graph::kind_name(nd.kind));
        return l;
    }

private:
    pyengine::graph::Program prog_;
    std::vector<py::object> keep_;
    py::array output_;
    bool has_output_ = false;  // (a default py::array is an empty array, not null)
    std::mutex mutex_;

    void push(const Node& nd) { prog_.nodes.push_back(nd); }

    float* fbuf(const py::array& a, const char* what, int64_t size, bool writable) {
        if (!py::dtype::of<float>().equal(a.dtype())) bad(std::string(what) + ": expected float32");
        if (!(a.flags() & py::array::c_style)) bad(std::string(what) + ": must be C-contiguous");
        if (writable && !a.writeable()) bad(std::string(what) + ": is read-only");
        if ((int64_t)a.size() != size || size <= 0)
            bad(std::string(what) + ": expected " + std::to_string(size) + " values, got " + std::to_string(a.size()));
        keep_.push_back(a);
        return static_cast<float*>(const_cast<void*>(a.data()));
    }

    int64_t tokens(const py::array& x, int64_t cols, const char* what) {
        if (x.ndim() != 2 || x.shape(1) != cols) bad(std::string(what) + ": expected (n, " + std::to_string(cols) + ")");
        return x.shape(0);
    }

    void shape2(Node& nd, const py::array& a) {
        if (a.ndim() != 2) bad("activations must be 2-D");
        nd.n = a.shape(0);
        nd.cols = a.shape(1);
    }

    void weight(Node& nd, const std::string& type, const py::array& w, int64_t rows, int64_t cols) {
        if (!pyengine::wtype_from_name(type.c_str(), &nd.wt)) bad("unsupported weight type '" + type + "'");
        if (!py::dtype::of<uint8_t>().equal(w.dtype()) || !(w.flags() & py::array::c_style))
            bad("weights must be C-contiguous uint8");
        const int64_t rb = pyengine::row_bytes(nd.wt, cols);
        int64_t need = -1;
        if (rows <= 0 || cols <= 0 || rb < 0 || !pyengine::mul_fits(rows, rb, &need) || (int64_t)w.nbytes() != need)
            bad(type + " weight (" + std::to_string(rows) + ", " + std::to_string(cols) + ") has the wrong size");
        keep_.push_back(w);
        nd.w = static_cast<const uint8_t*>(w.data());
        nd.w_rows = rows;
        nd.cols = cols;
    }

    void norm(Node& nd, const py::array& x, const py::array& w, float eps) {
        shape2(nd, x);
        nd.a = fbuf(x, "norm x", nd.n * nd.cols, false);
        nd.g = (int64_t)w.size();
        nd.wv = fbuf(w, "norm weight", nd.g, false);
        if (nd.cols % nd.g) bad("norm: x width is not a multiple of the weight length");
        if (!(eps >= 0.0f)) bad("norm: eps must be >= 0");
        nd.eps = eps;
    }

    // key panels (n_blocks, width, 64) and value rows (n_ctx, width); returns positions held
    int64_t cache(Node& nd, const py::array& kt, const py::array& v, bool writable) {
        if (kt.ndim() != 3 || kt.shape(2) != KB) bad("key panels must be (n_blocks, width, 64)");
        if (v.ndim() != 2 || v.shape(1) != kt.shape(1)) bad("values must be (n_ctx, width)");
        nd.width = kt.shape(1);
        nd.kt = fbuf(kt, "key panels", kt.size(), writable);
        nd.vc = fbuf(v, "values", v.size(), writable);
        return std::min<int64_t>(kt.shape(0) * KB, v.shape(0));
    }

    // position p.at(pos0) must lie in [lo, hi]: narrows the accepted pos0 range
    void bound(const Pos& p, int64_t lo, int64_t hi, const char* what) {
        if (p.off < -kMaxPosOffset || p.off > kMaxPosOffset)
            bad(std::string(what) + ": position offset " + std::to_string(p.off) + " is out of range");
        if (p.rel) {
            prog_.pos_lo = std::max(prog_.pos_lo, lo - p.off);
            prog_.pos_hi = std::min(prog_.pos_hi, hi - p.off);
        } else if (p.off < lo || p.off > hi) {
            bad(std::string(what) + ": fixed position " + std::to_string(p.off) + " outside the cache");
        }
    }
};

}  // namespace

void bind_graph(py::module_& m) {
    py::class_<DecodeGraph>(m, "DecodeGraph",
                            "A decode step recorded op by op (pyengine/backends/cpu_graph.py) and replayed natively in\n"
                            "one call. Build with the add_* methods (arrays are referenced, not copied), then\n"
                            "step(token_id, pos0).")
        .def(py::init<>())
        .def("add_embed", &DecodeGraph::add_embed, py::arg("type_name"), py::arg("w"), py::arg("rows"), py::arg("cols"),
             py::arg("out"), "out (1, cols) = row token_id of W (the step's input).")
        .def("add_matmul", &DecodeGraph::add_matmul, py::arg("type_name"), py::arg("w"), py::arg("rows"),
             py::arg("cols"), py::arg("x"), py::arg("out"))
        .def("add_rmsnorm", &DecodeGraph::add_rmsnorm, py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("out"))
        .def("add_rmsnorm_add", &DecodeGraph::add_rmsnorm_add, py::arg("x"), py::arg("w"), py::arg("eps"),
             py::arg("residual"), py::arg("out"))
        .def("add_add_rmsnorm", &DecodeGraph::add_add_rmsnorm, py::arg("a"), py::arg("b"), py::arg("w"), py::arg("eps"),
             py::arg("sum_out"), py::arg("norm_out"))
        .def("add_rope", &DecodeGraph::add_rope, py::arg("x"), py::arg("out"), py::arg("n_heads"), py::arg("head_dim"),
             py::arg("n_rot"), py::arg("neox"), py::arg("freq_base"), py::arg("pos_off"), py::arg("pos_rel"),
             py::arg("freq_factors") = py::none(), py::arg("freq_scale") = 1.0, py::arg("ext_factor") = 0.0,
             py::arg("attn_factor") = 1.0, py::arg("beta_fast") = 32.0, py::arg("beta_slow") = 1.0,
             py::arg("n_ctx_orig") = 0,
             "Rope at position pos_off (+ pos0 when pos_rel); cos/sin computed once per step per (base, n_rot, pos).")
        .def("add_kv_write", &DecodeGraph::add_kv_write, py::arg("k"), py::arg("v"), py::arg("k_panels"),
             py::arg("v_cache"), py::arg("pos_off"), py::arg("pos_rel"))
        .def("add_attention", &DecodeGraph::add_attention, py::arg("q"), py::arg("k_panels"), py::arg("v_cache"),
             py::arg("out"), py::arg("pos_off"), py::arg("pos_rel"), py::arg("n_heads"), py::arg("n_kv_heads"),
             py::arg("head_dim"), py::arg("scale"), py::arg("window"), py::arg("softcap") = 0.0f)
        .def("add_elementwise", &DecodeGraph::add_elementwise, py::arg("op"), py::arg("a"), py::arg("b"), py::arg("out"),
             "op: add, silu_mul or gelu_mul.")
        .def("add_add_bias", &DecodeGraph::add_add_bias, py::arg("x"), py::arg("b"), py::arg("out"),
             "out (n, d) = x + b (d,) for every row.")
        .def("add_softcap", &DecodeGraph::add_softcap, py::arg("x"), py::arg("cap"), py::arg("out"),
             "out = cap * tanh(x / cap).")
        .def("add_scale", &DecodeGraph::add_scale, py::arg("x"), py::arg("s"), py::arg("out"))
        .def("add_moe_ffn", &DecodeGraph::add_moe_ffn, py::arg("x"), py::arg("out"),
             "out = routed experts of x; keyword arguments as _C.moe_ffn.")
        .def("add_mla_attention", &DecodeGraph::add_mla_attention, py::arg("q"), py::arg("kv"), py::arg("out"),
             py::arg("cache"), py::arg("pos_off"), py::arg("pos_rel"),
             "out = latent attention at position pos_off (+ pos0 when pos_rel); keyword arguments as _C.mla_attention.")
        .def("set_output", &DecodeGraph::set_output, py::arg("logits"))
        .def("step", &DecodeGraph::step, py::arg("token_id"), py::arg("pos0"), py::arg("copy") = true,
             "Run the recorded step for token_id at position pos0 (GIL released) and return the logits.\n"
             "copy=True: a new array. copy=False: the graph's own output buffer, overwritten by the next step.")
        .def("profile", &DecodeGraph::profile, py::arg("token_id"), py::arg("pos0"), py::arg("reps") = 1,
             "[(kind, ns)] per node: wall time summed over `reps` steps at pos0 (writes the KV cache there).")
        .def_property_readonly("n_nodes", &DecodeGraph::n_nodes)
        .def_property_readonly("positions", &DecodeGraph::positions, "(lowest, highest) pos0 a step accepts.")
        .def_property("fuse_matmuls", &DecodeGraph::fuse, &DecodeGraph::set_fuse,
                      "Run matmuls that read the same input (q/k/v, gate/up) as one job (default True); "
                      "the results are the same either way.")
        .def("matmul_groups", &DecodeGraph::matmul_groups,
             "Node indices of each group of matmuls run as one job (groups of two or more).")
        .def("ops", &DecodeGraph::ops, "Node kinds in execution order.")
        .def_static("kinds", []() {
            py::list l;
#define PE_KIND_LIST(e, name, what) l.append(name);
            PE_GRAPH_KINDS(PE_KIND_LIST)
#undef PE_KIND_LIST
            return l;
        }, "Every node kind the replay knows (csrc/graph.h PE_GRAPH_KINDS).");
}
