// CPU side of pyengine._C: quantized matmul kernels, embedding lookup, thread pool,
// CPU info. Thin: check arguments, release the GIL, call csrc/dispatch.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

// dst = the rows of src (cols elements each, of the GGUF type `form` is made from) rewritten into
// `form`, or (back) the form's rows into that type. dst may be src.
void py_repack(const std::string& form_name, const py::array& src, py::array& dst, int64_t cols, bool back) {
    const pyengine::WType form = parse_type(form_name);
    const pyengine::WType gguf = pyengine::load_form_source(form);
    if (gguf == form) {
        std::string forms;
        for (int i = 0; i < (int)pyengine::WType::COUNT; ++i)
            if (pyengine::load_form_source((pyengine::WType)i) != (pyengine::WType)i)
                forms += (forms.empty() ? "" : ", ") + std::string(pyengine::wtype_info((pyengine::WType)i).name);
        throw py::value_error(form_name + " is not a load-time form (those are: " + forms + ")");
    }
    const pyengine::WTypeInfo& ti = pyengine::wtype_info(form);
    check_array<uint8_t>(src, "src", "uint8", false);
    check_array<uint8_t>(dst, "dst", "uint8", true);
    const int64_t rb = pyengine::row_bytes(form, cols);
    if (cols <= 0 || rb < 0)
        throw py::value_error(std::string(ti.name) + ": cols=" + std::to_string(cols) +
                              " is not a positive multiple of the block size " + std::to_string(ti.block_elems));
    if (src.nbytes() % rb != 0)
        throw py::value_error("src must be whole rows of " + std::to_string(cols) + " " + (back ? ti.name : pyengine::wtype_info(gguf).name) +
                              " values (" + std::to_string(rb) + " bytes), got " + std::to_string(src.nbytes()) + " bytes");
    if (dst.nbytes() != src.nbytes()) throw py::value_error("dst must have as many bytes as src");
    if (overlap(src, dst) && src.data() != dst.data()) throw py::value_error("dst must be src or not overlap it");
    const uint8_t* s = (const uint8_t*)src.data();
    uint8_t* d = (uint8_t*)dst.mutable_data();
    const int64_t nb = cols / ti.block_elems, rows = (int64_t)src.nbytes() / rb;
    py::gil_scoped_release nogil;
    for (int64_t r = 0; r < rows; ++r) pyengine::convert_form_row(form, s + r * rb, d + r * rb, nb, back);
}

}  // namespace

void bind_cpu(py::module_& m) {
    m.def("matmul", &py_matmul, py::arg("type_name"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("x"),
          py::arg("out"), py::arg("variant") = "auto",
          R"doc(out[:] = x @ W.T for a GGUF weight W of shape (rows, cols).

type_name: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS\nor a load-time form of one of them (Q4_K_R, Q5_0_P, ...: ggml_types.LOAD_FORMS), made by repack().
w: the weight's raw GGUF bytes, uint8, C-contiguous, rows * row_bytes long.
x: float32 (n, cols) C-contiguous; out: float32 (n, rows) C-contiguous, writeable.
variant: "generic", "avx2", "avx512" or "auto" (best this CPU runs); the call runs
matmul_<type>_<variant> (kernels/cpu/matmul_<variant>.cpp).
For quantized types x is quantized to int8 per 32 values inside the call; the GIL is released and the
work is split over the thread pool.)doc");
    m.def("repack", &py_repack, py::arg("form"), py::arg("src"), py::arg("dst"), py::arg("cols"), py::arg("back") = false,
          "dst[:] = the rows (cols values each) of src, uint8 blocks of the GGUF type the load-time form `form` "
          "is made from (Q4_K for Q4_K_R, ...), rewritten into that form; back=True: the form's rows back into "
          "that type. kernels/cpu/quants.h (convert_form_row); spec: pyengine.quants.repack. "
          "dst may be src.");
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
