// pyengine._C.moe_ffn: the native mixture-of-experts feed-forward (csrc/moe.h), and the
// argument reading the DecodeGraph's moe_ffn node shares with it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "common.h"
#include "moe.h"

namespace py = pybind11;

namespace {

[[noreturn]] void bad(const std::string& msg) { throw py::value_error("moe_ffn: " + msg); }

pyengine::WType wtype(const py::kwargs& kw, const char* key) {
    pyengine::WType t;
    const std::string name = py::cast<std::string>(kw[key]);
    if (!pyengine::wtype_from_name(name.c_str(), &t)) bad("unsupported weight type '" + name + "' (" + key + ")");
    return t;
}

const uint8_t* bytes(const py::kwargs& kw, const char* key, int64_t n_bytes, std::vector<py::object>& keep) {
    py::array a = py::cast<py::array>(kw[key]);
    if (!py::dtype::of<uint8_t>().equal(a.dtype()) || !(a.flags() & py::array::c_style))
        bad(std::string(key) + " must be C-contiguous uint8");
    if ((int64_t)a.nbytes() != n_bytes)
        bad(std::string(key) + " has " + std::to_string(a.nbytes()) + " bytes, expected " + std::to_string(n_bytes));
    keep.push_back(a);
    return static_cast<const uint8_t*>(a.data());
}

void experts(pyengine::moe::Experts& x, const py::kwargs& kw, const char* type_key, const char* key, int64_t E,
             int64_t rows, int64_t cols, std::vector<py::object>& keep) {
    x.t = wtype(kw, type_key);
    const int64_t rb = pyengine::row_bytes(x.t, cols);
    if (rb < 0) bad(std::string(key) + ": cols " + std::to_string(cols) + " is not a whole number of blocks");
    x.rows = rows;
    x.cols = cols;
    int64_t total = 0;
    if (!pyengine::mul_fits(rows, rb, &x.expert_bytes) || !pyengine::mul_fits(E, x.expert_bytes, &total))
        bad(std::string(key) + ": " + std::to_string(E) + " experts of (" + std::to_string(rows) + ", " +
            std::to_string(cols) + ") are too large (the byte size overflows)");
    x.w = bytes(kw, key, total, keep);
}

}  // namespace

// a moe::Layer from the keyword arguments of _C.moe_ffn (arrays kept alive in keep)
std::shared_ptr<const pyengine::moe::Layer> moe_layer_from_kwargs(const py::kwargs& kw, std::vector<py::object>& keep) {
    for (const char* k : {"router_type", "router", "gate_type", "gate", "up_type", "up", "down_type", "down",
                          "n_expert", "dim", "ffn", "top_k", "gating", "norm", "scale", "n_group", "n_group_used",
                          "bias"})
        if (!kw.contains(k)) bad(std::string("missing argument ") + k);
    auto L = std::make_shared<pyengine::moe::Layer>();
    L->n_expert = py::cast<int64_t>(kw["n_expert"]);
    L->dim = py::cast<int64_t>(kw["dim"]);
    L->ffn = py::cast<int64_t>(kw["ffn"]);
    L->top_k = py::cast<int>(kw["top_k"]);
    if (L->n_expert <= 0 || L->dim <= 0 || L->ffn <= 0) bad("n_expert, dim and ffn must be > 0");
    if (L->top_k < 1 || L->top_k > L->n_expert) bad("top_k must be in 1..n_expert");
    L->router_t = wtype(kw, "router_type");
    const int64_t rb = pyengine::row_bytes(L->router_t, L->dim);
    if (rb < 0) bad("router: dim is not a whole number of blocks");
    int64_t router_bytes = 0;
    if (!pyengine::mul_fits(L->n_expert, rb, &router_bytes)) bad("router: n_expert x dim is too large (the byte size overflows)");
    L->router = bytes(kw, "router", router_bytes, keep);
    experts(L->gate, kw, "gate_type", "gate", L->n_expert, L->ffn, L->dim, keep);
    experts(L->up, kw, "up_type", "up", L->n_expert, L->ffn, L->dim, keep);
    experts(L->down, kw, "down_type", "down", L->n_expert, L->dim, L->ffn, keep);
    const std::string gating = py::cast<std::string>(kw["gating"]);
    if (gating != "softmax" && gating != "sigmoid") bad("gating '" + gating + "' (softmax, sigmoid)");
    L->sigmoid = gating == "sigmoid";
    L->norm = py::cast<bool>(kw["norm"]);
    L->scale = py::cast<float>(kw["scale"]);
    L->n_group = py::cast<int>(kw["n_group"]);
    L->n_group_used = py::cast<int>(kw["n_group_used"]);
    if (L->n_group > 1 && (L->n_expert % L->n_group || L->n_group_used < 1 || L->n_group_used > L->n_group))
        bad("expert groups do not divide the experts");
    if (!kw["bias"].is_none()) {
        py::array_t<float, py::array::c_style | py::array::forcecast> b = py::cast<py::array>(kw["bias"]);
        if ((int64_t)b.size() != L->n_expert) bad("bias must hold n_expert values");
        L->bias.assign(b.data(), b.data() + b.size());
    }
    return L;
}

void bind_moe(py::module_& m) {
    m.def("moe_ffn", [](const py::array& x, py::array& out, const py::kwargs& kw) {
        std::vector<py::object> keep;
        auto L = moe_layer_from_kwargs(kw, keep);
        if (!py::dtype::of<float>().equal(x.dtype()) || !(x.flags() & py::array::c_style) || x.ndim() != 2 ||
            x.shape(1) != L->dim)
            bad("x must be C-contiguous float32 (n, dim)");
        if (!py::dtype::of<float>().equal(out.dtype()) || !(out.flags() & py::array::c_style) ||
            out.size() != x.size() || !out.writeable())
            bad("out must be a writeable C-contiguous float32 array shaped like x");
        const pyengine::MatmulKernels* mk = &pyengine::select_variant("auto");
        const float* xp = static_cast<const float*>(x.data());
        float* op = static_cast<float*>(out.mutable_data());
        const int64_t n = x.shape(0);
        py::gil_scoped_release nogil;
        pyengine::moe::moe_ffn(*L, xp, n, op, *mk);
    }, py::arg("x"), py::arg("out"),
          "out (n, dim) = routed SwiGLU experts on x (spec: pyengine/backends/moe.py). Keyword arguments:\n"
          "router_type, router, gate_type, gate, up_type, up, down_type, down (GGUF bytes), n_expert, dim, ffn,\n"
          "top_k, gating ('softmax'|'sigmoid'), norm, scale, n_group, n_group_used, bias (None or (n_expert,)).");
}
