// Stub: the avx2 tier is not implemented yet; an empty table keeps it out of kernel_variants().
#include "matmul_kernels.h"
namespace pe {
const MatmulKernels matmul_kernels_avx2 = {"avx2", 0, nullptr, nullptr, nullptr, nullptr};
}
