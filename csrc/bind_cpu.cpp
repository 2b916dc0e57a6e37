// CPU side of pyengine._C: quantized matmul kernels, embedding lookup, thread pool,
// CPU info. Thin: check arguments, release the GIL, call csrc/dispatch.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cctype>
#include <cstdint>
#include <string>

#include "common.h"
#include "cpu_features.h"
#include "dispatch.h"
#include "threadpool.h"

namespace py = pybind11;

void bind_cpu_ops(py::module_& m);  // csrc/bind_ops.cpp: rmsnorm, rope, attention, gates, ...

namespace {

// whether two arrays' bytes overlap (the kernels read one while writing the other)
bool overlap(const py::array& a, const py::array& b) {
    if (a.nbytes() == 0 || b.nbytes() == 0) return false;
    const char *a0 = (const char*)a.data(), *a1 = a0 + a.nbytes();
    const char *b0 = (const char*)b.data(), *b1 = b0 + b.nbytes();
    return a0 < b1 && b0 < a1;
}

pyengine::WType parse_type(const std::string& name) {
    pyengine::WType t;
    if (!pyengine::wtype_from_name(name.c_str(), &t)) {
        std::string have;
        for (int i = 0; i < (int)pyengine::WType::COUNT; ++i) have += (i ? ", " : "") + std::string(pyengine::wtype_info((pyengine::WType)i).name);
        throw py::value_error("unsupported weight type '" + name + "' (native kernels: " + have + ")");
    }
    return t;
}

template <typename T>
void check_array(const py::array& a, const char* what, const char* dtype_name, bool writeable) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(what) + " must be a " + dtype_name + " array, got dtype " +
                             std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(what) + " must be C-contiguous");
    if (writeable && !a.writeable()) throw py::value_error(std::string(what) + " must be writeable");
}

const uint8_t* weight_ptr(const py::array& w, pyengine::WType t, int64_t rows, int64_t cols) {
    check_array<uint8_t>(w, "w", "uint8", false);
    if (rows < 0 || cols <= 0) throw py::value_error("rows must be >= 0 and cols > 0");
    const pyengine::WTypeInfo& ti = pyengine::wtype_info(t);
    const int64_t rb = pyengine::row_bytes(t, cols);
    if (rb < 0)
        throw py::value_error(std::string(ti.name) + ": cols=" + std::to_string(cols) +
                              " is not a multiple of the block size " + std::to_string(ti.block_elems));
    int64_t need = 0;
    if (!pyengine::mul_fits(rows, rb, &need))
        throw py::value_error(std::string(ti.name) + " weight of shape (" + std::to_string(rows) + ", " +
                              std::to_string(cols) + ") is too large (its byte size overflows)");
    if ((int64_t)w.nbytes() != need)
        throw py::value_error(std::string(ti.name) + " weight of shape (" + std::to_string(rows) + ", " +
                              std::to_string(cols) + ") needs " + std::to_string(need) + " bytes, got " +
                              std::to_string(w.nbytes()));
    return (const uint8_t*)w.data();
}

void py_matmul(const std::string& type_name, const py::array& w, int64_t rows, int64_t cols, const py::array& x,
               py::array& out, const std::string& variant) {
    const pyengine::WType t = parse_type(type_name);
    // an unknown or unavailable variant throws std::invalid_argument: pybind11 raises ValueError
    const pyengine::MatmulKernels* k = &pyengine::select_variant(variant);
    const uint8_t* wp = weight_ptr(w, t, rows, cols);
    check_array<float>(x, "x", "float32", false);
    check_array<float>(out, "out", "float32", true);
    if (x.ndim() != 2 || x.shape(1) != cols)
        throw py::value_error("x must have shape (n, " + std::to_string(cols) + "), got " +
                              std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(
                                  x.shape(), x.shape() + x.ndim()))))));
    const int64_t n = x.shape(0);
    if (out.ndim() != 2 || out.shape(0) != n || out.shape(1) != rows)
        throw py::value_error("out must have shape (" + std::to_string(n) + ", " + std::to_string(rows) + "), got " +
                              std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(
                                  out.shape(), out.shape() + out.ndim()))))));
    if (overlap(out, x)) throw py::value_error("out must not overlap x");
    if (overlap(out, w)) throw py::value_error("out must not overlap w");
    const float* xp = (const float*)x.data();
    float* op = (float*)out.mutable_data();
    py::gil_scoped_release nogil;
    pyengine::matmul(t, wp, rows, cols, xp, n, op, *k);
}

void py_get_rows(const std::string& type_name, const py::array& w, int64_t rows, int64_t cols, const py::array& ids,
                 py::array& out) {
    const pyengine::WType t = parse_type(type_name);
    const uint8_t* wp = weight_ptr(w, t, rows, cols);
    check_array<int32_t>(ids, "ids", "int32", false);
    check_array<float>(out, "out", "float32", true);
    if (ids.ndim() != 1) throw py::value_error("ids must be 1-D");
    const int64_t n = ids.shape(0);
    if (out.ndim() != 2 || out.shape(0) != n || out.shape(1) != cols)
        throw py::value_error("out must have shape (" + std::to_string(n) + ", " + std::to_string(cols) + ")");
    const int32_t* ip = (const int32_t*)ids.data();
    for (int64_t i = 0; i < n; ++i)
        if (ip[i] < 0 || ip[i] >= rows)
            throw py::index_error("ids[" + std::to_string(i) + "] = " + std::to_string(ip[i]) +
                                  " is out of range for " + std::to_string(rows) + " rows");
    float* op = (float*)out.mutable_data();
    py::gil_scoped_release nogil;
    pyengine::get_rows(t, wp, rows, cols, ip, n, op);
}

// dst = the blocks of src (the GGUF type `form` is made from) rewritten into `form`. dst may be src.
void repack_blocks(const py::array& src, py::array& dst, pyengine::WType form) {
    const pyengine::WTypeInfo& ti = pyengine::wtype_info(form);
    const char* from = pyengine::wtype_info(pyengine::load_form_source(form)).name;
    check_array<uint8_t>(src, "src", "uint8", false);
    check_array<uint8_t>(dst, "dst", "uint8", true);
    if (src.nbytes() % ti.block_bytes != 0)
        throw py::value_error(std::string("src must be whole ") + from + " blocks of " + std::to_string(ti.block_bytes) +
                              " bytes, got " + std::to_string(src.nbytes()) + " bytes");
    if (dst.nbytes() != src.nbytes()) throw py::value_error("dst must have as many bytes as src");
    if (overlap(src, dst) && src.data() != dst.data()) throw py::value_error("dst must be src or not overlap it");
    const uint8_t* s = (const uint8_t*)src.data();
    uint8_t* d = (uint8_t*)dst.mutable_data();
    const int64_t nb = (int64_t)src.nbytes() / ti.block_bytes;
    py::gil_scoped_release nogil;
    uint8_t tmp[256];
    for (int64_t b = 0; b < nb; ++b) {
        pyengine::convert_load_form(form, s + ti.block_bytes * b, tmp, false);
        std::memcpy(d + ti.block_bytes * b, tmp, (size_t)ti.block_bytes);
    }
}

}  // namespace

void bind_cpu(py::module_& m) {
    m.def("matmul", &py_matmul, py::arg("type_name"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("x"),
          py::arg("out"), py::arg("variant") = "auto",
          R"doc(out[:] = x @ W.T for a GGUF weight W of shape (rows, cols).

type_name: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS\nor Q2_K_R / Q3_K_R / Q4_K_R / Q5_K_R / Q6_K_R / Q5_0_R / Q5_1_R / IQ4_XS_R (those types repacked at load by repack_<type>).
w: the weight's raw GGUF bytes, uint8, C-contiguous, rows * row_bytes long.
x: float32 (n, cols) C-contiguous; out: float32 (n, rows) C-contiguous, writeable.
variant: "generic", "avx2", "avx512" or "auto" (best this CPU runs); the call runs
matmul_<type>_<variant> (kernels/cpu/matmul_<variant>.cpp).
For quantized types x is quantized to int8 per 32 values inside the call; the GIL is released and the
work is split over the thread pool.)doc");
    // repack_q2_K, repack_q3_K, repack_q4_K, repack_q5_K, repack_q6_K, repack_q5_0, repack_q5_1, repack_iq4_xs: one per load-time form
    for (int i = 0; i < (int)pyengine::WType::COUNT; ++i) {
        const pyengine::WType form = (pyengine::WType)i;
        if (pyengine::load_form_source(form) == form) continue;  // not a form
        std::string gguf = pyengine::wtype_info(pyengine::load_form_source(form)).name;  // "Q4_K"
        std::string ident = gguf;  // as GGMLType.ident spells it: "q4_K", "iq4_xs"
        for (char& ch : ident) ch = (char)std::tolower((unsigned char)ch);
        if (ident.size() > 2 && ident.compare(ident.size() - 2, 2, "_k") == 0) ident.back() = 'K';
        m.def(("repack_" + ident).c_str(), [form](const py::array& s, py::array& d) { repack_blocks(s, d, form); },
              py::arg("src"), py::arg("dst"),
              ("dst[:] = the " + gguf + " blocks of src (uint8) as " + pyengine::wtype_info(form).name +
               ", the form the SIMD tiers unpack without shuffles (kernels/cpu/quants.h, convert_load_form; "
               "spec: pyengine.quants.repack_" + ident + "). dst may be src.")
                  .c_str());
    }
    m.def("get_rows", &py_get_rows, py::arg("type_name"), py::arg("w"), py::arg("rows"), py::arg("cols"),
          py::arg("ids"), py::arg("out"),
          "out[i] = dequantized row ids[i] of W (rows, cols): ids int32 (n,), out float32 (n, cols).");
    m.def(
        "cpu_features",
        []() {
            py::dict d;
            for (const auto& kv : pyengine::cpu_features().as_list()) d[py::str(kv.first)] = kv.second;
            d["logical_cores"] = pyengine::cpu_features().logical_cores;
            return d;
        },
        "CPUID feature flags of this CPU (avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512_vnni, ...).");
    m.def("kernel_variants", &pyengine::available_variants,
          "Kernel tiers this CPU and build can run, slowest first (\"generic\" always).");
    m.def(
        "set_num_threads", [](int n) { pyengine::ThreadPool::instance().set_num_threads(n); }, py::arg("n"),
        "Threads used by native kernels (n <= 0: one per core).");
    m.def(
        "get_num_threads", []() { return pyengine::ThreadPool::instance().num_threads(); },
        "Threads used by native kernels.");
    m.def(
        "set_spin_us", [](int us) { pyengine::ThreadPool::instance().set_spin_us(us); }, py::arg("us"),
        "How long idle pool workers spin before sleeping (microseconds).");
    bind_cpu_ops(m);
}
