// pyengine_cuda_emu: the CUDA bindings (bind_cuda.cu) over the CPU emulator, as a
// stand-alone extension module for tests on machines without a GPU. Same API as
// pyengine._C's CUDA part: module.cuda.* and module.cuda_device_info().
#include <pybind11/pybind11.h>

void bind_cuda(pybind11::module_& m);

PYBIND11_MODULE(pyengine_cuda_emu, m) {
    m.doc() = "pyengine CUDA kernels on the CPU emulator (tests only)";
    m.attr("has_cuda") = true;
    bind_cuda(m);
}
