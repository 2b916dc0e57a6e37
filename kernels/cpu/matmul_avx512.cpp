// Stub: the avx512 tier is not implemented yet; an empty table keeps it out of kernel_variants().
#include "matmul_kernels.h"
namespace pe {
const MatmulKernels matmul_kernels_avx512 = {"avx512", 0, nullptr, nullptr, nullptr, nullptr};
}
