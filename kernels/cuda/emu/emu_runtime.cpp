// The CPU emulator behind cuda_emu.h: fibers for GPU threads, tracked host memory
// for device memory. Single-threaded and deterministic.
#include "cuda_emu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

namespace emu {

dim3 threadIdx_, blockIdx_, blockDim_, gridDim_;

namespace {

// ---- error state -----------------------------------------------------------------------
cudaError_t g_error = cudaSuccess;

void fault(cudaError_t err, const std::string& msg) {
    std::fprintf(stderr, "[pyengine cuda emulator] %s\n", msg.c_str());
    if (g_error == cudaSuccess) g_error = err;
}

// ---- memory -------------------------------------------------------------------------------
std::map<std::uintptr_t, std::size_t> g_allocs;  // start -> size
std::size_t g_used = 0;

std::size_t mem_limit() {
    const char* s = std::getenv("PYENGINE_CUDA_EMU_MEM");
    if (s && *s) return static_cast<std::size_t>(std::strtoull(s, nullptr, 10));
    return std::size_t(8) << 30;
}

// Whether [p, p+n) lies inside one allocation.
bool in_device_memory(const void* p, std::size_t n) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

// ---- fibers -------------------------------------------------------------------------------
enum State { READY, WAIT_WARP, WAIT_BLOCK, DONE };

constexpr std::size_t STACK_BYTES = 256 * 1024;

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    State state = READY;
    dim3 tid;
    int lane = 0, warp = 0;
    void* fake_stack = nullptr;  // ASan bookkeeping
};

std::vector<Fiber> g_fibers;
std::vector<std::uint64_t> g_slots;
ucontext_t g_sched;
Fiber* g_cur = nullptr;
const std::function<void()>* g_body = nullptr;
const void* g_sched_bottom = nullptr;
std::size_t g_sched_size = 0;

inline void on_fiber_entry() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(g_cur->fake_stack, &g_sched_bottom, &g_sched_size);
#endif
}

void fiber_main() {
    on_fiber_entry();
    (*g_body)();
    g_cur->state = DONE;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, g_sched_bottom, g_sched_size);
#endif
    // returning resumes uc_link (the scheduler)
}

void yield(State s) {
    Fiber* f = g_cur;
    f->state = s;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&f->fake_stack, g_sched_bottom, g_sched_size);
#endif
    swapcontext(&f->ctx, &g_sched);
    on_fiber_entry();
}

void resume(Fiber& f) {
    g_cur = &f;
    threadIdx_ = f.tid;
#ifdef EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, STACK_BYTES);
#endif
    swapcontext(&g_sched, &f.ctx);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    g_cur = nullptr;
}

const char* state_name(State s) {
    switch (s) {
        case READY: return "running";
        case WAIT_WARP: return "at a warp shuffle";
        case WAIT_BLOCK: return "at __syncthreads";
        default: return "exited";
    }
}

}  // namespace

void run_grid(const char* what, dim3 grid, dim3 block, const std::function<void()>& body) {
    const std::size_t nthreads = std::size_t(block.x) * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        fault(cudaErrorInvalidConfiguration, std::string(what) + ": invalid launch configuration");
        return;
    }
    if (g_fibers.size() < nthreads) g_fibers.resize(nthreads);
    for (std::size_t i = 0; i < nthreads; ++i)
        if (!g_fibers[i].stack) g_fibers[i].stack = static_cast<char*>(std::malloc(STACK_BYTES));
    const std::size_t nwarps = (nthreads + 31) / 32;
    g_slots.assign(nwarps * 32, 0);
    blockDim_ = block;
    gridDim_ = grid;
    g_body = &body;

    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx_ = dim3(bx, by, bz);
                for (std::size_t i = 0; i < nthreads; ++i) {
                    Fiber& f = g_fibers[i];
                    f.tid = dim3(static_cast<unsigned>(i % block.x), static_cast<unsigned>((i / block.x) % block.y),
                                 static_cast<unsigned>(i / (std::size_t(block.x) * block.y)));
                    f.lane = static_cast<int>(i % 32);
                    f.warp = static_cast<int>(i / 32);
                    f.state = READY;
                    f.fake_stack = nullptr;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = STACK_BYTES;
                    f.ctx.uc_link = &g_sched;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                for (;;) {
                    for (std::size_t i = 0; i < nthreads; ++i)
                        if (g_fibers[i].state == READY) resume(g_fibers[i]);
                    // nobody is running now: release the barriers that are complete
                    std::size_t done = 0, at_block = 0;
                    for (std::size_t i = 0; i < nthreads; ++i) {
                        done += g_fibers[i].state == DONE;
                        at_block += g_fibers[i].state == WAIT_BLOCK;
                    }
                    if (done == nthreads) break;
                    bool released = false;
                    for (std::size_t w = 0; w < nwarps; ++w) {
                        const std::size_t lo = w * 32, hi = lo + 32 < nthreads ? lo + 32 : nthreads;
                        bool all = hi - lo == 32;  // shuffles need a full warp
                        for (std::size_t i = lo; i < hi && all; ++i) all = g_fibers[i].state == WAIT_WARP;
                        if (all) {
                            for (std::size_t i = lo; i < hi; ++i) g_fibers[i].state = READY;
                            released = true;
                        }
                    }
                    if (!released && at_block == nthreads) {
                        for (std::size_t i = 0; i < nthreads; ++i) g_fibers[i].state = READY;
                        released = true;
                    }
                    if (!released) {
                        std::string msg = std::string(what) + ": threads of block (" + std::to_string(bx) + "," +
                                          std::to_string(by) + "," + std::to_string(bz) +
                                          ") can never meet at a barrier (divergent __syncthreads/shuffle):";
                        for (std::size_t w = 0; w < nwarps; ++w) {
                            msg += " warp " + std::to_string(w) + " [";
                            for (std::size_t i = w * 32; i < (w + 1) * 32 && i < nthreads; ++i)
                                msg += std::to_string(static_cast<int>(g_fibers[i].state));
                            msg += "]";
                        }
                        msg += std::string(" (0 ") + state_name(READY) + ", 1 " + state_name(WAIT_WARP) + ", 2 " +
                               state_name(WAIT_BLOCK) + ", 3 " + state_name(DONE) + ")";
                        fault(cudaErrorLaunchFailure, msg);
                        return;  // abandon the stuck fibers (their stacks are reinitialised next launch)
                    }
                }
            }
    g_body = nullptr;
}

void warp_sync() { yield(WAIT_WARP); }
void block_sync() { yield(WAIT_BLOCK); }
std::uint64_t* warp_slots() { return g_slots.data() + std::size_t(g_cur->warp) * 32; }
int lane_id() { return g_cur->lane; }

void check_align(const void* p, std::size_t n, const char* file, int line) {
    if (reinterpret_cast<std::uintptr_t>(p) % n)
        fault(cudaErrorMisalignedAddress, std::string("misaligned ") + std::to_string(n) + "-byte access at " + file +
                                              ":" + std::to_string(line));
}

}  // namespace emu

// ---- runtime API ----------------------------------------------------------------------------
using emu::g_allocs;

cudaError_t cudaMalloc(void** ptr, std::size_t nbytes) {
    *ptr = nullptr;
    if (emu::g_used + nbytes > emu::mem_limit()) return cudaErrorMemoryAllocation;
    void* p = nullptr;
    if (posix_memalign(&p, 256, nbytes ? nbytes : 1) != 0) return cudaErrorMemoryAllocation;
    g_allocs[reinterpret_cast<std::uintptr_t>(p)] = nbytes;
    emu::g_used += nbytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
    if (!ptr) return cudaSuccess;
    auto it = g_allocs.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == g_allocs.end()) return cudaErrorInvalidValue;
    emu::g_used -= it->second;
    g_allocs.erase(it);
    std::free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t n, cudaMemcpyKind kind) {
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((dst_dev && !emu::in_device_memory(dst, n)) || (src_dev && !emu::in_device_memory(src, n)))
        return cudaErrorInvalidValue;
    std::memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, std::size_t n) {
    if (!emu::in_device_memory(ptr, n)) return cudaErrorInvalidValue;
    std::memset(ptr, value, n);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes) {
    const std::size_t lim = emu::mem_limit();
    *total_bytes = lim;
    *free_bytes = lim > emu::g_used ? lim - emu::g_used : 0;
    return cudaSuccess;
}

static bool no_device() {
    const char* s = std::getenv("PYENGINE_CUDA_EMU_NO_DEVICE");
    return s && *s && std::string(s) != "0";
}

cudaError_t cudaGetDeviceCount(int* count) {
    if (no_device()) {
        *count = 0;
        return cudaErrorNoDevice;
    }
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return no_device() ? cudaErrorNoDevice : cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 && !no_device() ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0 || no_device()) return cudaErrorInvalidDevice;
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "pyengine CUDA emulator (CPU)");
    prop->major = 8;
    prop->minor = 0;
    prop->totalGlobalMem = emu::mem_limit();
    prop->multiProcessorCount = 4;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
    *v = 13000;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
    const cudaError_t e = emu::g_error;
    emu::g_error = cudaSuccess;
    return e;
}
cudaError_t cudaGetLastError() { return cudaDeviceSynchronize(); }

const char* cudaGetErrorName(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorMisalignedAddress: return "misaligned address";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}
