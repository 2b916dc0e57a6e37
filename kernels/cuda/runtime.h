// Device memory and device queries (host code; runtime.cu). Nothing here runs at
// import time: the CUDA runtime initialises on the first call that needs it.
#pragma once

#include <cstddef>
#include <string>

namespace pyengine {
namespace cuda {

// One block of device memory. Owns it; frees it on destruction (or free()).
class DeviceBuffer {
  public:
    explicit DeviceBuffer(std::size_t nbytes);  // throws CudaOutOfMemory with sizes and free memory
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void* data() const { return ptr_; }
    std::size_t nbytes() const { return nbytes_; }
    bool freed() const { return freed_; }

    void upload(const void* src, std::size_t n, std::size_t offset);   // host -> device, synchronous
    void download(void* dst, std::size_t n, std::size_t offset) const;  // device -> host, synchronous
    void zero();
    void free();

  private:
    void* ptr_ = nullptr;
    std::size_t nbytes_ = 0;
    bool freed_ = false;
};

struct DeviceInfo {
    bool available = false;
    std::string error;  // why not available
    int device_count = 0;
    int device = 0;
    std::string name;
    int cc_major = 0, cc_minor = 0;
    int multiprocessors = 0;
    std::size_t memory_total = 0, memory_free = 0;
    int driver_version = 0, runtime_version = 0;  // e.g. 13000 = 13.0
};

DeviceInfo device_info();  // never throws: a missing driver/GPU is reported in .error
void set_device(int device);
void synchronize();          // waits for all launched work; throws on a kernel fault
void copy_device(void* dst, const void* src, std::size_t n);
void mem_info(std::size_t* free_bytes, std::size_t* total_bytes);

}  // namespace cuda
}  // namespace pyengine
