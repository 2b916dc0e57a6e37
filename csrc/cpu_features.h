// What the CPU we run on can do, read once from CPUID (x86) — the dispatcher's input.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace pyengine {

struct CpuFeatures {
    bool x86 = false;
    bool sse3 = false, ssse3 = false, sse41 = false, sse42 = false, popcnt = false;
    bool avx = false, avx2 = false, fma = false, f16c = false, bmi2 = false, avx_vnni = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512cd = false;
    bool avx512_vnni = false, avx512_bf16 = false, avx512_vbmi = false, avx512_ifma = false;
    bool os_avx = false;     // XCR0 says the OS saves YMM state
    bool os_avx512 = false;  // XCR0 says the OS saves ZMM/opmask state
    int logical_cores = 1;

    // Kernel tiers this CPU can run.
    bool can_avx2() const { return avx2 && fma && f16c && os_avx; }
    bool can_avx512() const {
        // dpbusd (VNNI) is the point of this tier; BW/VL/DQ for byte ops and 256-bit forms.
        return can_avx2() && avx512f && avx512bw && avx512vl && avx512dq && avx512_vnni && os_avx512;
    }
    std::vector<std::pair<std::string, bool>> as_list() const;
};

const CpuFeatures& cpu_features();

}  // namespace pyengine
