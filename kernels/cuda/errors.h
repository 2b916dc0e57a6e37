// Exceptions of the CUDA layer (plain C++: included by the bindings, which are
// compiled by the host compiler, and by the kernels through compat.cuh).
// bind_cuda.cu turns them into pyengine._C.cuda.CudaError / CudaOutOfMemoryError.
#pragma once

#include <stdexcept>

namespace pyengine {
namespace cuda {

class CudaError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

class CudaOutOfMemory : public CudaError {
  public:
    using CudaError::CudaError;
};

}  // namespace cuda
}  // namespace pyengine
