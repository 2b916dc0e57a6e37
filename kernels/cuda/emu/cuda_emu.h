// A CPU emulator of the small part of CUDA that pyengine's kernels use, so that
// the kernels in kernels/cuda/*.cu can be compiled with a plain C++ compiler
// (-DPYENGINE_CUDA_EMU -x c++) and run, unchanged, on a machine without a GPU.
//
// Execution model: a launch runs its blocks one after another; inside a block
// every GPU thread is a cooperative fiber (ucontext) that runs until it reaches a
// synchronisation point: __syncthreads() waits for every thread of the block,
// __shfl_xor_sync() for every lane of the warp (32 consecutive threads, x
// fastest). A synchronisation that can never complete (a lane that has exited,
// or lanes of one warp waiting at different kinds of barrier: divergent code)
// is reported as a launch failure instead of hanging. __shared__ arrays become
// function statics (blocks never overlap). Memory is host memory; allocations
// are tracked so copies outside them fail like on a GPU.
//
// Test hooks (environment): PYENGINE_CUDA_EMU_MEM=<bytes> sets the emulated
// device memory (default 8 GiB); PYENGINE_CUDA_EMU_NO_DEVICE=1 makes
// cudaGetDeviceCount fail as on a machine without a GPU.
//
// This is a test tool, not a CUDA implementation: only what kernels/cuda uses.
#pragma once

#ifndef PYENGINE_CUDA_EMU
#error "cuda_emu.h is only for the emulator build (-DPYENGINE_CUDA_EMU)"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

// ---- qualifiers ----------------------------------------------------------------------
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

// ---- vector types ----------------------------------------------------------------------
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---- runtime API subset -------------------------------------------------------------------
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorIllegalAddress = 700,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
struct cudaDeviceProp {
    char name[256];
    int major, minor;
    std::size_t totalGlobalMem;
    int multiProcessorCount;
};

cudaError_t cudaMalloc(void** ptr, std::size_t nbytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemset(void* ptr, int value, std::size_t n);
cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);

// ---- execution -------------------------------------------------------------------------------
namespace emu {
extern dim3 threadIdx_, blockIdx_, blockDim_, gridDim_;
// Run `body` once per GPU thread of the grid (see the header comment). Errors are
// reported through cudaGetLastError().
void run_grid(const char* what, dim3 grid, dim3 block, const std::function<void()>& body);
void warp_sync();         // wait for all 32 lanes of the calling thread's warp
void block_sync();        // wait for all threads of the block
std::uint64_t* warp_slots();  // 32 exchange slots of the calling thread's warp
int lane_id();
// Flag a misaligned access as a kernel fault (the GPU would raise one).
void check_align(const void* p, std::size_t n, const char* file, int line);
}  // namespace emu

#define threadIdx (::emu::threadIdx_)
#define blockIdx (::emu::blockIdx_)
#define blockDim (::emu::blockDim_)
#define gridDim (::emu::gridDim_)

inline void __syncthreads() { ::emu::block_sync(); }

template <typename T>
T __shfl_xor_sync(unsigned /*mask: always the full warp here*/, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    std::uint64_t* slot = ::emu::warp_slots();
    const int lane = ::emu::lane_id();
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slot[lane] = bits;
    ::emu::warp_sync();  // every lane has published its value
    std::uint64_t other = slot[(lane ^ lane_mask) & 31];
    ::emu::warp_sync();  // every lane has read before anyone publishes again
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}

// device math the kernels use that <cmath> lacks
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
