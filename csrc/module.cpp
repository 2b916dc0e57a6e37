// pyengine._C — the private compiled module. Thin Python in pyengine/ re-exports it.
// Each area registers its own functions; bindings only check arguments and document.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_cpu(py::module_& m);  // csrc/bind_cpu.cpp: CPU matmul kernels, ops, thread pool, CPU info
void bind_graph(py::module_& m);  // csrc/graph.cpp: DecodeGraph, a decode step replayed in one call
void bind_moe(py::module_& m);  // csrc/bind_moe.cpp: moe_ffn, the native mixture-of-experts layer
void bind_mla(py::module_& m);  // csrc/bind_mla.cpp: mla_attention, DeepSeek-V2's latent attention
#ifdef PYENGINE_WITH_CUDA
void bind_cuda(py::module_& m);  // kernels/cuda/bind_cuda.cu
#endif

PYBIND11_MODULE(_C, m) {
    m.doc() = "pyengine native kernels (CPU: scalar/AVX2/AVX-512; CUDA when built with nvcc)";
#ifdef PYENGINE_WITH_CUDA
    m.attr("has_cuda") = true;
#else
    m.attr("has_cuda") = false;
#endif
    bind_cpu(m);
    bind_graph(m);
    bind_moe(m);
    bind_mla(m);
#ifdef PYENGINE_WITH_CUDA
    bind_cuda(m);
#endif
}
