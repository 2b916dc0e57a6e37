// Python bindings of the CUDA kernels: pyengine._C.cuda (and pyengine._C.cuda_device_info).
//
// Host-only C++ (no CUDA headers): the build compiles it with the host compiler,
// which is much faster than nvcc on pybind11.
//
// Thin on purpose: each function checks its arguments (sizes against the buffers
// they are given, so a kernel never reads or writes outside an allocation) and
// calls one host entry point of kernels.h. Device memory is handled through
// `Buffer` objects; activations are float32, row-major. Importing the module does
// not touch CUDA: the runtime starts on the first call that needs the GPU.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "errors.h"
#include "kernels.h"
#include "runtime.h"

namespace py = pybind11;
using pyengine::cuda::DeviceBuffer;

#ifndef PYENGINE_CUDA_ARCHS
#define PYENGINE_CUDA_ARCHS ""
#endif

namespace {

std::string str(std::size_t v) { return std::to_string(v); }

// Buffer `b` (argument `name` of `fn`) must be live and hold at least `bytes`.
void need(const DeviceBuffer& b, std::size_t bytes, const char* fn, const char* name) {
    if (b.freed()) throw py::value_error(std::string(fn) + ": buffer '" + name + "' has been freed");
    if (bytes > b.nbytes())
        throw py::value_error(std::string(fn) + ": buffer '" + name + "' holds " + str(b.nbytes()) +
                              " bytes, needs " + str(bytes));
}

void distinct(const DeviceBuffer& out, const DeviceBuffer& in, const char* fn, const char* name) {
    if (&out == &in) throw py::value_error(std::string(fn) + ": 'out' must not be the same buffer as '" + name + "'");
}

void positive(long long v, const char* fn, const char* name) {
    if (v <= 0) throw py::value_error(std::string(fn) + ": " + name + " must be positive (got " + std::to_string(v) + ")");
}

void nonneg(long long v, const char* fn, const char* name) {
    if (v < 0) throw py::value_error(std::string(fn) + ": " + name + " must be >= 0 (got " + std::to_string(v) + ")");
}

const float* f32(const DeviceBuffer& b) { return static_cast<const float*>(b.data()); }
float* f32(DeviceBuffer& b) { return static_cast<float*>(b.data()); }

py::array contiguous_or_raise(const py::array& a, const char* fn) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) + ": array must be C-contiguous (use numpy.ascontiguousarray)");
    return a;
}

py::dict info_dict(const pyengine::cuda::DeviceInfo& i) {
    py::dict d;
    d["available"] = i.available;
    d["error"] = i.error;
    d["device_count"] = i.device_count;
    d["driver_version"] = i.driver_version;
    d["runtime_version"] = i.runtime_version;
    if (i.available) {
        d["device"] = i.device;
        d["name"] = i.name;
        d["compute_capability"] = py::make_tuple(i.cc_major, i.cc_minor);
        d["multiprocessors"] = i.multiprocessors;
        d["memory_total"] = i.memory_total;
        d["memory_free"] = i.memory_free;
    }
    return d;
}

}  // namespace

void bind_cuda(py::module_& m) {
    py::module_ c = m.def_submodule("cuda", "CUDA kernels on device buffers (see kernels/cuda/kernels.h)");

    // Translators run newest first, so the derived out-of-memory error is registered last.
    // Module-local: the test emulator module binds this same file beside pyengine._C.
    auto& cuda_error = py::register_local_exception<pyengine::cuda::CudaError>(c, "CudaError", PyExc_RuntimeError);
    py::register_local_exception<pyengine::cuda::CudaOutOfMemory>(c, "CudaOutOfMemoryError", cuda_error.ptr());

    c.attr("compiled_archs") = std::string(PYENGINE_CUDA_ARCHS);
#ifdef PYENGINE_CUDA_EMU
    c.attr("emulated") = true;
#else
    c.attr("emulated") = false;
#endif

    auto info = []() { return info_dict(pyengine::cuda::device_info()); };
    const char* info_doc =
        "Device facts as a dict: available (bool), error (why not), device_count, driver_version and "
        "runtime_version (1000*major + 10*minor), and when available: device, name, compute_capability "
        "(major, minor), multiprocessors, memory_total, memory_free (bytes). Never raises.";
    c.def("device_info", info, info_doc);
    m.def("cuda_device_info", info, info_doc);

    c.def("set_device", &pyengine::cuda::set_device, py::arg("device"), "Make `device` current for this thread.");
    c.def("synchronize", &pyengine::cuda::synchronize, "Wait for all queued kernels; raises CudaError if one failed.");
    c.def(
        "mem_info",
        []() {
            std::size_t f = 0, t = 0;
            pyengine::cuda::mem_info(&f, &t);
            return py::make_tuple(f, t);
        },
        "(free, total) device memory in bytes.");

    // ---- Buffer ----------------------------------------------------------------------
    py::class_<DeviceBuffer>(c, "Buffer", py::module_local(),
                             "A block of device memory (freed when the object goes away).")
        .def(py::init<std::size_t>(), py::arg("nbytes"),
             "Allocate `nbytes` (uninitialised). Raises CudaOutOfMemoryError naming the size and free memory.")
        .def_property_readonly("nbytes", &DeviceBuffer::nbytes)
        .def_property_readonly("ptr", [](const DeviceBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); })
        .def_property_readonly("freed", &DeviceBuffer::freed)
        .def(
            "upload",
            [](DeviceBuffer& b, const py::array& a, std::size_t offset) {
                contiguous_or_raise(a, "Buffer.upload");
                need(b, offset + static_cast<std::size_t>(a.nbytes()), "Buffer.upload", "self");
                b.upload(a.data(), static_cast<std::size_t>(a.nbytes()), offset);
            },
            py::arg("array"), py::arg("offset") = 0,
            "Copy the bytes of a C-contiguous array to the buffer at byte `offset`.")
        .def(
            "download",
            [](const DeviceBuffer& b, py::array& a, std::size_t offset) {
                contiguous_or_raise(a, "Buffer.download");
                if (!a.writeable()) throw py::value_error("Buffer.download: array is read-only");
                need(b, offset + static_cast<std::size_t>(a.nbytes()), "Buffer.download", "self");
                b.download(a.mutable_data(), static_cast<std::size_t>(a.nbytes()), offset);
            },
            py::arg("out"), py::arg("offset") = 0,
            "Fill the C-contiguous, writeable array `out` from the buffer at byte `offset` (waits for queued work).")
        .def("zero", &DeviceBuffer::zero, "Set every byte to 0.")
        .def("free", &DeviceBuffer::free, "Release the memory now (later use raises ValueError).")
        .def("__repr__", [](const DeviceBuffer& b) {
            return "<pyengine._C.cuda.Buffer " + str(b.nbytes()) + " bytes" + (b.freed() ? ", freed>" : ">");
        });

    c.def(
        "copy",
        [](DeviceBuffer& dst, std::size_t dst_offset, const DeviceBuffer& src, std::size_t src_offset,
           std::size_t nbytes) {
            need(dst, dst_offset + nbytes, "copy", "dst");
            need(src, src_offset + nbytes, "copy", "src");
            pyengine::cuda::copy_device(static_cast<char*>(dst.data()) + dst_offset,
                             static_cast<const char*>(src.data()) + src_offset, nbytes);
        },
        py::arg("dst"), py::arg("dst_offset"), py::arg("src"), py::arg("src_offset"), py::arg("nbytes"),
        "Device-to-device copy of `nbytes` (ranges must not overlap).");

    // ---- weights -------------------------------------------------------------------------
    c.def("type_supported", &pyengine::cuda::type_supported, py::arg("ggml_type"),
          "Whether the kernels read this GGML type id directly.");
    c.def("row_bytes", &pyengine::cuda::row_bytes, py::arg("ggml_type"), py::arg("cols"),
          "Bytes of one row of `cols` values.");
    c.def("matmul_scratch_bytes", &pyengine::cuda::matmul_scratch_bytes, py::arg("ggml_type"), py::arg("n"),
          py::arg("cols"),
          "Scratch bytes the tuned matmul needs (x quantized to int8); 0 for float weights.");

    c.def(
        "matmul",
        [](int type, const DeviceBuffer& w, int rows, int cols, const DeviceBuffer& x, int n, DeviceBuffer& y,
           DeviceBuffer* scratch, bool simple) {
            const char* fn = "matmul";
            positive(rows, fn, "rows");
            positive(cols, fn, "cols");
            positive(n, fn, "n");
            const std::size_t rb = pyengine::cuda::row_bytes(type, cols);
            need(w, rb * rows, fn, "w");
            need(x, std::size_t(n) * cols * 4, fn, "x");
            need(y, std::size_t(n) * rows * 4, fn, "y");
            distinct(y, x, fn, "x");
            distinct(y, w, fn, "w");
            std::size_t sb = 0;
            void* sp = nullptr;
            const std::size_t sneed = simple ? 0 : pyengine::cuda::matmul_scratch_bytes(type, n, cols);
            if (sneed) {
                if (!scratch) throw py::value_error("matmul: the tuned kernel needs a scratch buffer of " + str(sneed) + " bytes");
                need(*scratch, sneed, fn, "scratch");
                distinct(*scratch, x, fn, "x");
                distinct(*scratch, y, fn, "y");
                sb = scratch->nbytes();
                sp = scratch->data();
            }
            pyengine::cuda::matmul(type, static_cast<const uint8_t*>(w.data()), rows, cols, f32(x), n, f32(y), sp, sb,
                                   simple);
        },
        py::arg("ggml_type"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("n"),
        py::arg("y"), py::arg("scratch") = nullptr, py::arg("simple") = false,
        "y (n, rows) = x (n, cols) @ w.T for w (rows, cols) in its GGUF encoding (float32 x, y).");

    c.def(
        "get_rows",
        [](int type, const DeviceBuffer& w, int rows, int cols, const DeviceBuffer& ids, int n, DeviceBuffer& out,
           bool simple) {
            const char* fn = "get_rows";
            positive(rows, fn, "rows");
            nonneg(n, fn, "n");
            const std::size_t rb = pyengine::cuda::row_bytes(type, cols);
            need(w, rb * rows, fn, "w");
            need(ids, std::size_t(n) * 4, fn, "ids");
            need(out, std::size_t(n) * cols * 4, fn, "out");
            distinct(out, w, fn, "w");
            distinct(out, ids, fn, "ids");
            pyengine::cuda::get_rows(type, static_cast<const uint8_t*>(w.data()), cols,
                                     static_cast<const int32_t*>(ids.data()), n, f32(out), simple);
        },
        py::arg("ggml_type"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("ids"), py::arg("n"),
        py::arg("out"), py::arg("simple") = false,
        "out (n, cols) = rows `ids` (int32, n; each in 0..rows-1: the caller checks) of w, dequantized.");

    // ---- activations ----------------------------------------------------------------------
    c.def(
        "rmsnorm",
        [](const DeviceBuffer& x, int n, int d, const DeviceBuffer& w, int g, float eps, DeviceBuffer& out,
           bool simple) {
            const char* fn = "rmsnorm";
            nonneg(n, fn, "n");
            positive(d, fn, "d");
            positive(g, fn, "g");
            need(x, std::size_t(n) * d * 4, fn, "x");
            need(w, std::size_t(g) * 4, fn, "w");
            need(out, std::size_t(n) * d * 4, fn, "out");
            distinct(out, w, fn, "w");
            pyengine::cuda::rmsnorm(f32(x), n, d, f32(w), g, eps, f32(out), simple);
        },
        py::arg("x"), py::arg("n"), py::arg("d"), py::arg("w"), py::arg("g"), py::arg("eps"), py::arg("out"),
        py::arg("simple") = false,
        "RMS-normalise each group of g values of x (n, d) and multiply by w (g, float32). out may be x.");

    c.def(
        "rope",
        [](const DeviceBuffer& x, int n, int n_heads, int head_dim, const DeviceBuffer& pos, double freq_base,
           bool neox, int n_rot, DeviceBuffer& out, bool simple, const DeviceBuffer* freq_factors, double freq_scale,
           double ext_factor, double attn_factor, double beta_fast, double beta_slow, int n_ctx_orig) {
            const char* fn = "rope";
            nonneg(n, fn, "n");
            positive(n_heads, fn, "n_heads");
            positive(head_dim, fn, "head_dim");
            const std::size_t bytes = std::size_t(n) * n_heads * head_dim * 4;
            need(x, bytes, fn, "x");
            need(pos, std::size_t(n) * 4, fn, "positions");
            need(out, bytes, fn, "out");
            distinct(out, x, fn, "x");
            distinct(out, pos, fn, "positions");
            pyengine::cuda::RopeScaling sc =
                pyengine::rope_scaling(freq_scale, ext_factor, attn_factor, beta_fast, beta_slow, n_ctx_orig);
            if (freq_factors) {
                positive(n_rot, fn, "n_rot");
                need(*freq_factors, std::size_t(n_rot / 2) * 4, fn, "freq_factors");
                sc.freq_factors = f32(*freq_factors);
            }
            pyengine::cuda::rope(f32(x), n, n_heads, head_dim, static_cast<const int32_t*>(pos.data()), freq_base,
                                 neox, n_rot, f32(out), simple, sc);
        },
        py::arg("x"), py::arg("n"), py::arg("n_heads"), py::arg("head_dim"), py::arg("positions"),
        py::arg("freq_base"), py::arg("neox"), py::arg("n_rot"), py::arg("out"), py::arg("simple") = false,
        py::arg("freq_factors") = nullptr, py::arg("freq_scale") = 1.0, py::arg("ext_factor") = 0.0,
        py::arg("attn_factor") = 1.0, py::arg("beta_fast") = 32.0, py::arg("beta_slow") = 1.0,
        py::arg("n_ctx_orig") = 0,
        "Rotary embedding of x (n, n_heads*head_dim) at int32 positions (n); NORM (adjacent pairs) or NEOX "
        "(halves) pairing of the first n_rot dims. The optional arguments scale the angles (RopeScaling, "
        "pyengine/backends/base.py); freq_factors: a device buffer of n_rot/2 float32.");

    c.def(
        "add",
        [](const DeviceBuffer& a, std::size_t na, const DeviceBuffer& b, std::size_t nb, DeviceBuffer& out,
           bool simple) {
            need(a, na * 4, "add", "a");
            need(b, nb * 4, "add", "b");
            need(out, na * 4, "add", "out");
            pyengine::cuda::add(f32(a), na, f32(b), nb, f32(out), simple);
        },
        py::arg("a"), py::arg("na"), py::arg("b"), py::arg("nb"), py::arg("out"), py::arg("simple") = false,
        "out[i] = a[i] + b[i % nb] for i < na (nb must divide na: row broadcast). out may be a or b.");

    c.def(
        "scale",
        [](const DeviceBuffer& x, std::size_t n, float s, DeviceBuffer& out, bool simple) {
            need(x, n * 4, "scale", "x");
            need(out, n * 4, "scale", "out");
            pyengine::cuda::scale(f32(x), n, s, f32(out), simple);
        },
        py::arg("x"), py::arg("n"), py::arg("s"), py::arg("out"), py::arg("simple") = false,
        "out = x * s (n values). out may be x.");

    c.def(
        "softcap",
        [](const DeviceBuffer& x, std::size_t n, float cap, DeviceBuffer& out, bool simple) {
            need(x, n * 4, "softcap", "x");
            need(out, n * 4, "softcap", "out");
            if (!(cap > 0.0f)) throw py::value_error("softcap: cap must be > 0");
            pyengine::cuda::softcap(f32(x), n, cap, f32(out), simple);
        },
        py::arg("x"), py::arg("n"), py::arg("cap"), py::arg("out"), py::arg("simple") = false,
        "out = cap * tanh(x / cap) (n values). out may be x.");

    auto gate = [](const char* fn, void (*op)(const float*, const float*, std::size_t, float*, bool)) {
        return [fn, op](const DeviceBuffer& gate_, const DeviceBuffer& up, std::size_t n, DeviceBuffer& out,
                        bool simple) {
            need(gate_, n * 4, fn, "gate");
            need(up, n * 4, fn, "up");
            need(out, n * 4, fn, "out");
            op(f32(gate_), f32(up), n, f32(out), simple);
        };
    };
    c.def("silu_mul", gate("silu_mul", &pyengine::cuda::silu_mul), py::arg("gate"), py::arg("up"), py::arg("n"),
          py::arg("out"), py::arg("simple") = false, "out = silu(gate) * up (n values). out may alias an input.");
    c.def("gelu_mul", gate("gelu_mul", &pyengine::cuda::gelu_mul), py::arg("gate"), py::arg("up"), py::arg("n"),
          py::arg("out"), py::arg("simple") = false, "out = gelu_tanh(gate) * up (n values). out may alias an input.");

    // ---- attention --------------------------------------------------------------------------
    c.attr("ATTN_MAX_HEAD_DIM") = pyengine::cuda::ATTN_MAX_HEAD_DIM;
    c.def("attention_scratch_bytes", &pyengine::cuda::attention_scratch_bytes, py::arg("n"), py::arg("n_heads"),
          py::arg("head_dim"), py::arg("n_splits"), "Scratch bytes the tuned attention needs for n_splits > 1.");
    c.def(
        "attention",
        [](const DeviceBuffer& q, const DeviceBuffer& k, const DeviceBuffer& v, int n, int pos0, int n_heads,
           int n_kv_heads, int head_dim, float scale, int window, DeviceBuffer& out, int n_splits,
           DeviceBuffer* scratch, bool simple, float softcap) {
            const char* fn = "attention";
            if (!(softcap >= 0.0f)) throw py::value_error("attention: softcap must be >= 0 (0: off)");
            nonneg(n, fn, "n");
            nonneg(pos0, fn, "pos0");
            positive(n_heads, fn, "n_heads");
            positive(n_kv_heads, fn, "n_kv_heads");
            positive(head_dim, fn, "head_dim");
            positive(n_splits, fn, "n_splits");
            if (n_heads % n_kv_heads)
                throw py::value_error("attention: n_heads (" + std::to_string(n_heads) +
                                      ") is not a multiple of n_kv_heads (" + std::to_string(n_kv_heads) + ")");
            const std::size_t qbytes = std::size_t(n) * n_heads * head_dim * 4;
            const std::size_t kvbytes = (std::size_t(pos0) + n) * n_kv_heads * head_dim * 4;
            need(q, qbytes, fn, "q");
            need(k, kvbytes, fn, "k");
            need(v, kvbytes, fn, "v");
            need(out, qbytes, fn, "out");
            distinct(out, q, fn, "q");
            distinct(out, k, fn, "k");
            distinct(out, v, fn, "v");
            std::size_t sb = 0;
            void* sp = nullptr;
            const bool tuned = !simple && head_dim <= pyengine::cuda::ATTN_MAX_HEAD_DIM;
            const std::size_t sneed =
                tuned ? pyengine::cuda::attention_scratch_bytes(n, n_heads, head_dim, n_splits) : 0;
            if (sneed) {
                if (!scratch)
                    throw py::value_error("attention: n_splits > 1 needs a scratch buffer of " + str(sneed) + " bytes");
                need(*scratch, sneed, fn, "scratch");
                distinct(*scratch, out, fn, "out");
                sb = scratch->nbytes();
                sp = scratch->data();
            }
            pyengine::cuda::attention_cuda(f32(q), f32(k), f32(v), n, pos0, n_heads, n_kv_heads, head_dim, scale,
                                           window, f32(out), n_splits, sp, sb, simple, softcap);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n"), py::arg("pos0"), py::arg("n_heads"),
        py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("scale"), py::arg("window"), py::arg("out"),
        py::arg("n_splits") = 1, py::arg("scratch") = nullptr, py::arg("simple") = false, py::arg("softcap") = 0.0f,
        "Causal GQA attention of q (n, H*hd) at positions pos0.. over the caches k, v (rows of Hkv*hd, at least "
        "pos0+n rows); window > 0 limits each query to the last `window` positions. out (n, H*hd).");
}
