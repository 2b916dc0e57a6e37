// GGUF weight block layouts (ggml's), pinned by static_assert, and the small
// scalar helpers every CPU kernel tier shares. Everything here is `static inline`
// on purpose: this header is compiled into TUs with different -m flags, and an
// out-of-line copy built with AVX-512 must never be the one a generic TU calls.
#pragma once

#include <cstdint>
#include <cstring>

namespace pe {

// --- the weight types the CPU kernels run ------------------------------------
enum class WType : int { F32 = 0, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, COUNT };

struct WTypeInfo {
    const char* name;
    int block_elems;  // elements per block
    int block_bytes;  // bytes per block
    int group;        // elements sharing one scale (and min): the kernel's "group"
};

static inline const WTypeInfo& wtype_info(WType t) {
    static const WTypeInfo table[] = {
        {"F32", 1, 4, 0},     {"F16", 1, 2, 0},     {"Q4_0", 32, 18, 32},  {"Q4_1", 32, 20, 32},
        {"Q5_0", 32, 22, 32}, {"Q8_0", 32, 34, 32}, {"Q4_K", 256, 144, 32}, {"Q6_K", 256, 210, 16},
    };
    return table[(int)t];
}

static inline bool wtype_from_name(const char* s, WType* out) {
    for (int i = 0; i < (int)WType::COUNT; ++i) {
        const char* n = wtype_info((WType)i).name;
        const char* a = s;
        const char* b = n;
        while (*a && *b && (*a == *b || (*a >= 'a' && *a <= 'z' && *a - 32 == *b))) ++a, ++b;
        if (!*a && !*b) {
            *out = (WType)i;
            return true;
        }
    }
    return false;
}

static inline bool wtype_is_quant(WType t) { return t != WType::F32 && t != WType::F16; }

// --- block layouts --------------------------------------------------------------
// fp16 fields are kept as raw uint16_t bits; blocks are byte-packed in the file
// (their sizes are not multiples of 4), so every field is read with memcpy/unaligned loads.
#pragma pack(push, 1)
struct block_q4_0 {  // x = d * (q - 8), q in 0..15; byte i holds x[i] (low) and x[i+16] (high)
    uint16_t d;
    uint8_t qs[16];
};
struct block_q4_1 {  // x = d * q + m
    uint16_t d, m;
    uint8_t qs[16];
};
struct block_q5_0 {  // x = d * (q - 16), q = nibble | bit i of qh << 4
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
};
struct block_q8_0 {  // x = d * q, q int8
    uint16_t d;
    int8_t qs[32];
};
struct block_q4_K {  // 8 sub-blocks of 32: x = d*sc[j]*q - dmin*m[j]; sc, m are 6-bit, packed in 12 bytes
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];  // 32-byte chunk c: low nibbles = sub-block 2c, high nibbles = sub-block 2c+1
};
struct block_q6_K {  // 16 sub-blocks of 16: x = d*sc[j]*(q - 32), q 6-bit = 4 bits of ql | 2 bits of qh
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
};
#pragma pack(pop)
static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(block_q4_K) == 144, "Q4_K block is 144 bytes");
static_assert(sizeof(block_q6_K) == 210, "Q6_K block is 210 bytes");

// --- scalar helpers ---------------------------------------------------------------
static inline uint16_t load_u16(const void* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}
static inline uint32_t load_u32(const void* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// IEEE half -> float, exact (subnormals, inf, nan included); no F16C needed.
static inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);  // normal: rebias 15 -> 127
    } else if (man == 0) {
        bits = sign;  // +-0
    } else {
        // subnormal: value = man * 2^-24; normalise into a float.
        int e = -1;
        do {
            man <<= 1;
            ++e;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Q4_K's twelve scale bytes hold eight 6-bit scales and eight 6-bit mins:
//   j < 4:  sc = q[j] & 63,                        m = q[j+4] & 63
//   j >= 4: sc = (q[j+4] & 15) | (q[j-4] >> 6) << 4, m = (q[j+4] >> 4) | (q[j] >> 6) << 4
// Done four at a time on 32-bit words w0 = q[0..3], w1 = q[4..7], w2 = q[8..11].
static inline void q4k_scales_mins(const uint8_t* q, uint8_t sc[8], uint8_t m[8]) {
    const uint32_t w0 = load_u32(q), w1 = load_u32(q + 4), w2 = load_u32(q + 8);
    const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
    const uint32_t s_lo = w0 & lo6;
    const uint32_t m_lo = w1 & lo6;
    const uint32_t s_hi = (w2 & lo4) | (((w0 >> 6) & lo2) << 4);
    const uint32_t m_hi = ((w2 >> 4) & lo4) | (((w1 >> 6) & lo2) << 4);
    std::memcpy(sc, &s_lo, 4);
    std::memcpy(sc + 4, &s_hi, 4);
    std::memcpy(m, &m_lo, 4);
    std::memcpy(m + 4, &m_hi, 4);
}

}  // namespace pe
