// Device memory, device queries and CUDA error messages.
#include <cstdio>
#include <string>

#include "compat.cuh"
#include "runtime.h"

namespace pyengine {
namespace cuda {

std::string cuda_error_message(cudaError_t err, const char* what) {
    return std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
}

void throw_cuda_error(cudaError_t err, const char* what) {
    (void)cudaGetLastError();  // clear a non-sticky error so it is not reported twice
    if (err == cudaErrorMemoryAllocation) throw CudaOutOfMemory(cuda_error_message(err, what));
    throw CudaError(cuda_error_message(err, what));
}

namespace {

std::string mib(std::size_t bytes) {
    char buf[64];
    if (bytes >= (std::size_t(1) << 30))
        std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
    else
        std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
    return buf;
}

}  // namespace

DeviceBuffer::DeviceBuffer(std::size_t nbytes) : nbytes_(nbytes) {
    if (nbytes == 0) return;
    const cudaError_t err = cudaMalloc(&ptr_, nbytes);
    if (err == cudaSuccess) return;
    ptr_ = nullptr;
    (void)cudaGetLastError();
    if (err == cudaErrorMemoryAllocation) {
        std::size_t free_b = 0, total_b = 0;
        std::string where;
        if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
            where = "; " + mib(free_b) + " free of " + mib(total_b);
        (void)cudaGetLastError();
        throw CudaOutOfMemory("CUDA out of memory: cannot allocate " + mib(nbytes) + " on the GPU" + where);
    }
    throw_cuda_error(err, "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() {
    // No exceptions from a destructor; at interpreter exit the runtime may already
    // be gone (cudaErrorCudartUnloading), which is harmless.
    if (ptr_) (void)cudaFree(ptr_);
    (void)cudaGetLastError();
}

void DeviceBuffer::free() {
    if (ptr_) {
        const cudaError_t err = cudaFree(ptr_);
        ptr_ = nullptr;
        freed_ = true;
        check(err, "cudaFree");
    }
    freed_ = true;
}

void DeviceBuffer::upload(const void* src, std::size_t n, std::size_t offset) {
    if (n == 0) return;
    check(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, n, cudaMemcpyHostToDevice), "upload (cudaMemcpy)");
}

void DeviceBuffer::download(void* dst, std::size_t n, std::size_t offset) const {
    if (n == 0) return;
    check(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, n, cudaMemcpyDeviceToHost),
          "download (cudaMemcpy; may report an earlier kernel's fault)");
}

void DeviceBuffer::zero() {
    if (ptr_ && nbytes_) check(cudaMemset(ptr_, 0, nbytes_), "cudaMemset");
}

DeviceInfo device_info() {
    DeviceInfo info;
    (void)cudaDriverGetVersion(&info.driver_version);
    (void)cudaRuntimeGetVersion(&info.runtime_version);
    cudaError_t err = cudaGetDeviceCount(&info.device_count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        info.device_count = 0;
        info.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
        return info;
    }
    if (info.device_count == 0) {
        info.error = "cudaGetDeviceCount reports 0 devices";
        return info;
    }
    err = cudaGetDevice(&info.device);
    cudaDeviceProp prop;
    if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, info.device);
    if (err == cudaSuccess) {
        info.name = prop.name;
        info.cc_major = prop.major;
        info.cc_minor = prop.minor;
        info.multiprocessors = prop.multiProcessorCount;
        info.memory_total = prop.totalGlobalMem;
        err = cudaMemGetInfo(&info.memory_free, &info.memory_total);
    }
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        info.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
        return info;
    }
    info.available = true;
    return info;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (a kernel failed)"); }

void copy_device(void* dst, const void* src, std::size_t n) {
    if (n) check(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToDevice), "device copy (cudaMemcpy)");
}

void mem_info(std::size_t* free_bytes, std::size_t* total_bytes) {
    check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

}  // namespace cuda
}  // namespace pyengine
