// CPU non-matmul ops of pyengine._C. (Placeholder: the ops helper replaces this file.)
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_cpu_ops(py::module_& m) {}
