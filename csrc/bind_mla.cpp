// pyengine._C.mla_attention: native multi-head latent attention (csrc/mla.h), and the
// argument reading the DecodeGraph's mla_attention node shares with it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "common.h"
#include "mla.h"

namespace py = pybind11;

namespace {

[[noreturn]] void bad(const std::string& msg) { throw py::value_error("mla_attention: " + msg); }

const float* floats(const py::object& o, const char* key, int64_t size, std::vector<py::object>& keep) {
    py::array a = py::cast<py::array>(o);
    if (!py::dtype::of<float>().equal(a.dtype()) || !(a.flags() & py::array::c_style) || (int64_t)a.size() != size)
        bad(std::string(key) + " must be C-contiguous float32 of " + std::to_string(size) + " values");
    keep.push_back(a);
    return static_cast<const float*>(a.data());
}

const uint8_t* heads(const py::kwargs& kw, const char* type_key, const char* key, int64_t H, int64_t rows,
                     int64_t cols, pyengine::WType& t, int64_t& head_bytes, std::vector<py::object>& keep) {
    const std::string name = py::cast<std::string>(kw[type_key]);
    if (!pyengine::wtype_from_name(name.c_str(), &t)) bad("unsupported weight type '" + name + "' (" + key + ")");
    const int64_t rb = pyengine::row_bytes(t, cols);
    if (rb < 0) bad(std::string(key) + ": a row is not a whole number of blocks");
    int64_t total = 0;
    if (!pyengine::mul_fits(rows, rb, &head_bytes) || !pyengine::mul_fits(H, head_bytes, &total))
        bad(std::string(key) + ": " + std::to_string(H) + " heads of (" + std::to_string(rows) + ", " +
            std::to_string(cols) + ") are too large (the byte size overflows)");
    py::array a = py::cast<py::array>(kw[key]);
    if (!py::dtype::of<uint8_t>().equal(a.dtype()) || !(a.flags() & py::array::c_style) ||
        (int64_t)a.nbytes() != total)
        bad(std::string(key) + " must be C-contiguous uint8 of " + std::to_string(total) + " bytes");
    keep.push_back(a);
    return static_cast<const uint8_t*>(a.data());
}

}  // namespace

std::shared_ptr<const pyengine::mla::Layer> mla_layer_from_kwargs(const py::kwargs& kw, std::vector<py::object>& keep) {
    for (const char* k : {"kv_norm", "eps", "wk_type", "wk", "wv_type", "wv", "n_heads", "kv_lora_rank", "qk_nope",
                          "n_rot", "v_head", "freq_base", "neox", "scale", "freq_factors", "freq_scale", "ext_factor",
                          "attn_factor", "beta_fast", "beta_slow", "n_ctx_orig"})
        if (!kw.contains(k)) bad(std::string("missing argument ") + k);
    auto L = std::make_shared<pyengine::mla::Layer>();
    L->n_heads = py::cast<int>(kw["n_heads"]);
    L->R = py::cast<int>(kw["kv_lora_rank"]);
    L->dn = py::cast<int>(kw["qk_nope"]);
    L->r = py::cast<int>(kw["n_rot"]);
    L->dv = py::cast<int>(kw["v_head"]);
    if (L->n_heads <= 0 || L->R <= 0 || L->dn <= 0 || L->dv <= 0 || L->r <= 0 || L->r % 2)
        bad("n_heads, kv_lora_rank, qk_nope, v_head must be > 0 and n_rot even and > 0");
    L->kv_norm = floats(kw["kv_norm"], "kv_norm", L->R, keep);
    L->eps = py::cast<float>(kw["eps"]);
    L->wk = heads(kw, "wk_type", "wk", L->n_heads, L->R, L->dn, L->wk_t, L->wk_bytes, keep);
    L->wv = heads(kw, "wv_type", "wv", L->n_heads, L->dv, L->R, L->wv_t, L->wv_bytes, keep);
    L->base = py::cast<double>(kw["freq_base"]);
    L->neox = py::cast<bool>(kw["neox"]);
    L->scale = py::cast<float>(kw["scale"]);
    if (!kw["freq_factors"].is_none()) {
        py::array_t<float, py::array::c_style | py::array::forcecast> f = py::cast<py::array>(kw["freq_factors"]);
        if ((int64_t)f.size() != L->r / 2) bad("freq_factors must hold n_rot/2 values");
        L->ff.assign(f.data(), f.data() + f.size());
    }
    L->sc = pyengine::rope_scaling(py::cast<double>(kw["freq_scale"]), py::cast<double>(kw["ext_factor"]),
                                   py::cast<double>(kw["attn_factor"]), py::cast<double>(kw["beta_fast"]),
                                   py::cast<double>(kw["beta_slow"]), py::cast<int64_t>(kw["n_ctx_orig"]));
    return L;
}

// positions the cache rows (n_ctx, R+r) hold, checked
int64_t mla_cache_positions(const pyengine::mla::Layer& L, const py::array& vc) {
    if (!py::dtype::of<float>().equal(vc.dtype()) || !(vc.flags() & py::array::c_style) || !vc.writeable())
        bad("the cache must be writeable C-contiguous float32");
    if (vc.ndim() != 2 || vc.shape(1) != L.R + L.r) bad("the cache must be (n_ctx, kv_lora_rank + n_rot) rows");
    return vc.shape(0);
}

void bind_mla(py::module_& m) {
    m.def("mla_attention", [](const py::array& q, const py::array& kv, py::array& out, py::array& cache,
                              int64_t pos0, const py::kwargs& kw) {
        std::vector<py::object> keep;
        auto L = mla_layer_from_kwargs(kw, keep);
        const int64_t H = L->n_heads, W = L->R + L->r;
        if (q.ndim() != 2 || q.shape(1) != H * (L->dn + L->r)) bad("q must be (n, n_heads*(qk_nope+n_rot))");
        const int64_t n = q.shape(0);
        floats(q, "q", n * H * (L->dn + L->r), keep);
        floats(kv, "kv", n * W, keep);
        floats(out, "out", n * H * L->dv, keep);
        if (!out.writeable()) bad("out must be writeable");
        const int64_t positions = mla_cache_positions(*L, cache);
        if (n <= 0 || pos0 < 0 || pos0 + n > positions)
            bad("positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + n - 1) + " outside the cache");
        const pyengine::MatmulKernels* mk = &pyengine::select_variant("auto");
        const float* qp = static_cast<const float*>(q.data());
        const float* kp = static_cast<const float*>(kv.data());
        float* op = static_cast<float*>(out.mutable_data());
        float* vcp = static_cast<float*>(cache.mutable_data());
        py::gil_scoped_release nogil;
        pyengine::mla::mla_attention(*L, qp, kp, n, pos0, vcp, op, *mk);
    }, py::arg("q"), py::arg("kv"), py::arg("out"), py::arg("cache"), py::arg("pos0"),
          "out (n, H*v_head) = multi-head latent attention of q (n, H*(qk_nope+n_rot)) and kv (n, kv_lora_rank+n_rot)\n"
          "at positions pos0.., writing the compressed rows into cache (n_ctx, kv_lora_rank+n_rot): one copy, the\n"
          "keys and the values. Keyword arguments: pyengine.backends.mla.native_args.");
}
