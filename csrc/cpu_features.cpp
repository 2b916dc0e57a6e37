#include "cpu_features.h"

#include <thread>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define PE_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace pyengine {

#ifdef PE_X86
static void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if defined(_MSC_VER)
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    for (int i = 0; i < 4; ++i) r[i] = (unsigned)v[i];
#else
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

static unsigned long long xgetbv0() {
#if defined(_MSC_VER)
    return _xgetbv(0);
#else
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
#endif
}
#endif

static CpuFeatures detect() {
    CpuFeatures f;
    unsigned hc = std::thread::hardware_concurrency();
    f.logical_cores = hc ? (int)hc : 1;
#ifdef PE_X86
    f.x86 = true;
    unsigned r[4];
    cpuid(0, 0, r);
    const unsigned max_leaf = r[0];
    cpuid(1, 0, r);
    const unsigned ecx1 = r[2];
    f.sse3 = ecx1 & (1u << 0);
    f.ssse3 = ecx1 & (1u << 9);
    f.fma = ecx1 & (1u << 12);
    f.sse41 = ecx1 & (1u << 19);
    f.sse42 = ecx1 & (1u << 20);
    f.popcnt = ecx1 & (1u << 23);
    const bool osxsave = ecx1 & (1u << 27);
    f.avx = ecx1 & (1u << 28);
    f.f16c = ecx1 & (1u << 29);
    if (osxsave) {
        const unsigned long long xcr0 = xgetbv0();
        f.os_avx = (xcr0 & 0x6) == 0x6;        // SSE + AVX state
        f.os_avx512 = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
    }
    if (max_leaf >= 7) {
        cpuid(7, 0, r);
        const unsigned ebx = r[1], ecx = r[2];
        f.avx2 = ebx & (1u << 5);
        f.bmi2 = ebx & (1u << 8);
        f.avx512f = ebx & (1u << 16);
        f.avx512dq = ebx & (1u << 17);
        f.avx512_ifma = ebx & (1u << 21);
        f.avx512cd = ebx & (1u << 28);
        f.avx512bw = ebx & (1u << 30);
        f.avx512vl = ebx & (1u << 31);
        f.avx512_vbmi = ecx & (1u << 1);
        f.avx512_vnni = ecx & (1u << 11);
        const unsigned max_sub = r[0];
        if (max_sub >= 1) {
            cpuid(7, 1, r);
            f.avx_vnni = r[0] & (1u << 4);
            f.avx512_bf16 = r[0] & (1u << 5);
        }
    }
    if (!f.os_avx) f.avx = f.avx2 = f.fma = f.f16c = f.avx_vnni = false;
#endif
    return f;
}

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

std::vector<std::pair<std::string, bool>> CpuFeatures::as_list() const {
    return {
        {"x86", x86},           {"sse3", sse3},
        {"ssse3", ssse3},       {"sse4_1", sse41},
        {"sse4_2", sse42},      {"popcnt", popcnt},
        {"avx", avx},           {"avx2", avx2},
        {"fma", fma},           {"f16c", f16c},
        {"bmi2", bmi2},         {"avx_vnni", avx_vnni},
        {"avx512f", avx512f},   {"avx512bw", avx512bw},
        {"avx512vl", avx512vl}, {"avx512dq", avx512dq},
        {"avx512cd", avx512cd}, {"avx512_vnni", avx512_vnni},
        {"avx512_bf16", avx512_bf16}, {"avx512_vbmi", avx512_vbmi},
        {"avx512_ifma", avx512_ifma}, {"os_avx512", os_avx512},
    };
}

}  // namespace pyengine
