// Shared plumbing of the CUDA kernels: headers, qualifiers, error checks, the
// kernel launcher and warp reductions.
//
// Every file in kernels/cuda/ compiles two ways:
//  * with nvcc, for the GPU (the normal build);
//  * as plain C++ with -DPYENGINE_CUDA_EMU, against kernels/cuda/emu/cuda_emu.h,
//    a small CPU emulator of the CUDA execution model (one cooperative fiber per
//    GPU thread, real warp shuffles and __syncthreads). The tests use it to run
//    these very kernels on machines without a GPU.
// So device code here uses only: __shfl_xor_sync, __syncthreads, static
// __shared__ arrays, and the helpers below (which pick a CUDA intrinsic on the
// device and a portable equivalent on the host).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "errors.h"

#ifdef PYENGINE_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#define PYE_HD __host__ __device__ __forceinline__
#define PYE_D __device__ __forceinline__

// Under the emulator, check the alignment a vector/word load relies on (a GPU
// faults on a misaligned access; x86 would silently accept it).
#ifdef PYENGINE_CUDA_EMU
#define PYE_CHECK_ALIGN(p, n) ::emu::check_align((const void*)(p), (n), __FILE__, __LINE__)
#else
#define PYE_CHECK_ALIGN(p, n) ((void)0)
#endif

namespace pyengine {
namespace cuda {

// Errors: thrown by host code (errors.h), turned into Python exceptions by bind_cuda.cu.
// "CUDA error in <what>: <name> (<description>)" (runtime.cu).
std::string cuda_error_message(cudaError_t err, const char* what);
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what);

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw_cuda_error(err, what);
}

// ---------------------------------------------------------------------------------
// Kernel launch. Goes through cudaLaunchKernel (no <<<>>> syntax, so the same code
// compiles for the emulator), converts the arguments to the kernel's parameter
// types first, and turns a launch error into an exception naming the kernel.
// Faults inside a kernel surface at the next synchronising call (a download).
// ---------------------------------------------------------------------------------
template <typename... KArgs, typename... Args>
void launch(const char* what, void (*kernel)(KArgs...), dim3 grid, dim3 block, Args&&... args) {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // empty problem: nothing to run
    if (grid.y > 65535 || grid.z > 65535)
        throw CudaError(std::string("CUDA launch of ") + what + ": problem too large (grid y/z > 65535)");
    std::tuple<KArgs...> a(std::forward<Args>(args)...);
#ifdef PYENGINE_CUDA_EMU
    ::emu::run_grid(what, grid, block, [&]() { std::apply(kernel, a); });
    check(cudaGetLastError(), what);
#else
    void* ptrs[sizeof...(KArgs) > 0 ? sizeof...(KArgs) : 1];
    std::size_t i = 0;
    std::apply([&](auto&... e) { ((ptrs[i++] = static_cast<void*>(&e)), ...); }, a);
    check(cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs, 0, nullptr), what);
#endif
}

inline unsigned ceil_div(std::size_t a, std::size_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// ---------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------
constexpr unsigned FULL_MASK = 0xffffffffu;

PYE_D float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;  // every lane holds the total
}

PYE_D float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum of the four signed byte products of a and b, plus c (the dp4a instruction).
PYE_HD int dp4a(int a, int b, int c) {
#if defined(__CUDA_ARCH__)
    return __dp4a(a, b, c);
#else
    for (int k = 0; k < 4; ++k) {
        const int ak = static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(a) >> (8 * k)));
        const int bk = static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(b) >> (8 * k)));
        c += ak * bk;
    }
    return c;
#endif
}

PYE_HD float f16_to_f32(uint16_t h) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h));
#else
    const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    float v;
    if (exp == 0) {
        v = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
    } else if (exp == 31) {
        v = mant ? NAN : INFINITY;
    } else {
        v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
    }
    return sign ? -v : v;
#endif
}

PYE_HD float bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

PYE_HD float bf16_to_f32(uint16_t b) { return bits_to_f32(static_cast<uint32_t>(b) << 16); }

}  // namespace cuda
}  // namespace pyengine
