// CPU side of pyengine._C: matmul kernels, dispatch, thread pool, CPU info.
// (Placeholder: the kernels helper replaces this file.)
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_cpu_ops(py::module_& m);  // csrc/bind_ops.cpp: rmsnorm, rope, attention, gates, ...
void bind_cpu(py::module_& m) {
    m.def("cpu_features", []() { return py::dict(); });
    bind_cpu_ops(m);
}
