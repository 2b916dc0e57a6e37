// GGUF weight block layouts (ggml's), pinned by static_assert, and the small
// scalar helpers every CPU kernel tier shares. Everything here is `static inline`
// on purpose: this header is compiled into TUs with different -m flags, and an
// out-of-line copy built with AVX-512 must never be the one a generic TU calls.
#pragma once

#include <cstdint>
#include <cstring>

namespace pyengine {

// --- the weight types the CPU kernels run ------------------------------------
// Q3_K_R, Q2_K_R, Q4_K_R, Q6_K_R, Q5_K_R, Q5_0_R, Q5_1_R and IQ4_XS_R are not GGUF types: those types with
// their bits rearranged at load for the SIMD tiers (convert_load_form below); the same bytes, the
// same values. The panel forms Q4_0_P, Q4_1_P, Q5_0_P, Q5_1_P and IQ4_NL_P rearrange whole rows
// of a 32-element type, 8 blocks at a time (convert_form_row below).
enum class WType : int { F32 = 0, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, BF16, Q5_1, Q5_K, Q2_K, Q3_K, IQ4_NL, IQ4_XS,
                         Q3_K_R, Q2_K_R, Q4_K_R, Q6_K_R, Q5_K_R, Q5_0_R, Q5_1_R, IQ4_XS_R,
                         Q4_0_P, Q4_1_P, Q5_0_P, Q5_1_P, IQ4_NL_P, COUNT };

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
        {"BF16", 1, 2, 0},    {"Q5_1", 32, 24, 32}, {"Q5_K", 256, 176, 32}, {"Q2_K", 256, 84, 16},
        {"Q3_K", 256, 110, 16}, {"IQ4_NL", 32, 18, 32}, {"IQ4_XS", 256, 136, 32}, {"Q3_K_R", 256, 110, 16},
        {"Q2_K_R", 256, 84, 16},  {"Q4_K_R", 256, 144, 32}, {"Q6_K_R", 256, 210, 16}, {"Q5_K_R", 256, 176, 32},
        {"Q5_0_R", 32, 22, 32},   {"Q5_1_R", 32, 24, 32},   {"IQ4_XS_R", 256, 136, 32},
        {"Q4_0_P", 32, 18, 32},   {"Q4_1_P", 32, 20, 32},   {"Q5_0_P", 32, 22, 32},     {"Q5_1_P", 32, 24, 32},
        {"IQ4_NL_P", 32, 18, 32},
    };
    static_assert(sizeof(table) / sizeof(table[0]) == (size_t)WType::COUNT, "one row per WType");
    return table[(int)t];
}

// The GGUF type a load-time form is made from (t itself for any other type).
constexpr WType load_form_source(WType t) {
    switch (t) {
        case WType::Q2_K_R: return WType::Q2_K;
        case WType::Q3_K_R: return WType::Q3_K;
        case WType::Q4_K_R: return WType::Q4_K;
        case WType::Q6_K_R: return WType::Q6_K;
        case WType::Q5_K_R: return WType::Q5_K;
        case WType::Q5_0_R: return WType::Q5_0;
        case WType::Q5_1_R: return WType::Q5_1;
        case WType::IQ4_XS_R: return WType::IQ4_XS;
        case WType::Q4_0_P: return WType::Q4_0;
        case WType::Q4_1_P: return WType::Q4_1;
        case WType::Q5_0_P: return WType::Q5_0;
        case WType::Q5_1_P: return WType::Q5_1;
        case WType::IQ4_NL_P: return WType::IQ4_NL;
        default: return t;
    }
}

// Bytes per block as a compile-time constant (the SIMD unpackers' template arguments); a load-time
// form's are its GGUF type's.
constexpr int wtype_block_bytes(WType t) {
    t = load_form_source(t);
    return t == WType::Q4_0 ? 18 : t == WType::Q4_1 ? 20 : t == WType::Q5_0 ? 22 : t == WType::Q5_1 ? 24
         : t == WType::Q8_0 ? 34 : t == WType::IQ4_NL ? 18 : t == WType::Q2_K ? 84 : t == WType::Q3_K ? 110
         : t == WType::Q4_K ? 144 : t == WType::Q5_K ? 176 : t == WType::Q6_K ? 210 : t == WType::IQ4_XS ? 136
         : t == WType::F32 ? 4 : 2;
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

static inline bool wtype_is_quant(WType t) { return t != WType::F32 && t != WType::F16 && t != WType::BF16; }

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
struct block_q5_1 {  // x = d * q + m, q = nibble | bit i of qh << 4
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
};
struct block_q5_K {  // Q4_K plus a 5th bit: bit 2c of qh[l] tops value l of sub-block 2c, bit 2c+1 of sub-block 2c+1
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
};
struct block_q2_K {  // 16 sub-blocks of 16: x = d*(sc[k]&15)*q - dmin*(sc[k]>>4); q 2-bit
    uint8_t scales[16];
    uint8_t qs[64];  // byte 32c+l, bits 2j..2j+1 = value 128c + 32j + l
    uint16_t d, dmin;
};
struct block_q3_K {  // 16 sub-blocks of 16: x = d*sc[k]*(q - 4); q = 2 bits of qs | hmask bit << 2
    uint8_t hmask[32];  // bit b of byte l = 3rd bit of value 32b + l
    uint8_t qs[64];     // as Q2_K
    uint8_t scales[12];  // 16 six-bit scales, offset by 32 (see q3k_scales)
    uint16_t d;
};
// Q3_K_R: a Q3_K block with its 96 bytes of quants reordered for the SIMD tiers (convert_load_form).
// Half c (values 128c ..) is 8 groups of 16; byte p (0..31) of a half stands for elements
// 4k + p%4 (k = 0..3) of group 2(L%4) + L/4, L = p/4: the order in which the AVX2 tier's 8
// lanes hold the groups (lane L = dword L), so 32 bytes load straight into a panel.
//   ql[32c + p], bits 2k..2k+1: low 2 bits of element 4k + p%4 of that group of half c;
//   hb[p], bit q3kr_hbit(c, k): its 3rd bit (the value 4). Half 0 uses bits 2,3,6,7, half 1
//   bits 0,1,4,5: hb & 0x44 (half 0) or (hb << 2) & 0x44 (half 1) puts the bits of k = 0, 2 at
//   bits 2 and 6, next to ql's bit pairs 0 and 2, and one shift by 1 more does k = 1, 3.
struct block_q3_K_R {
    uint8_t hb[32];
    uint8_t ql[64];
    uint8_t scales[12];  // as Q3_K
    uint16_t d;
};
static_assert(sizeof(block_q3_K_R) == 110, "Q3_K_R block is 110 bytes");
// Q2_K_R: a Q2_K block in the same order (convert_load_form): ql as Q3_K_R's, and the sub-block
// scale bytes of half c at 8c + L for the group lane L holds (2(L%4) + L/4): no shuffle either.
struct block_q2_K_R {
    uint8_t scales[16];
    uint8_t ql[64];
    uint16_t d, dmin;
};
static_assert(sizeof(block_q2_K_R) == 84, "Q2_K_R block is 84 bytes");
// Q4_K_R: a Q4_K block with its 128 nibble bytes in the AVX2 tier's lane order (convert_load_form):
// byte p (lane l = p/4, p%4 = b) of chunk m (qs[32m ..], m = 0..3) holds, in its low nibble,
// element 4m + b of group l and, in its high nibble, element 4(m + 4) + b of group l. So
// chunk m & 15 and (chunk m >> 4) & 15 are the panel's vectors m and m + 4, no transpose.
// d, dmin and the 12 scale bytes are Q4_K's.
// Q5_K_R: a Q5_K block with its nibbles as Q4_K_R's (qs[128] at byte 48, convert_load_form) and
// its 5th bits beside them: byte p (lane l = p/4, b = p%4) of hb (bytes 16-47), bit 2m + s, is the
// 5th bit of element 4(m + 4s) + b of group l, the element whose nibble is in chunk m of qs (low
// nibble for s = 0, high for s = 1). So (hb shifted by 4 - (2m + s)) & 0x10 tops that vector:
// one shift and one mask, no transpose. d, dmin and the 12 scale bytes are Q5_K's.
// Q5_0_R / Q5_1_R: a Q5_0 / Q5_1 block whose 32 fifth bits (qh, bytes 2-5 / 4-7) are reordered
// for the SIMD tiers' transposed panels, where 32-bit lane l of vector k holds elements 4k .. 4k+3
// of block l: bit 8b + k of qh' is the 5th bit of element 4k + b (b = 0..3, k = 0..7), so one
// shift by 4 - k puts all four at bit 4 of their bytes. d (, m) and qs as the GGUF type.
// Q6_K_R: a Q6_K block in the lane order of Q3_K_R (convert_load_form): per half h, with element
// 4k + p%4 of group 2(L%4) + L/4 (L = p/4) for byte p: ql[64h + p] holds the low 4 bits of k = 0
// (low nibble) and k = 2 (high), ql[64h + 32 + p] those of k = 1 and 3, qh[32h + p] bits 2k, 2k+1
// the top 2 bits of k; the scales of half h at 8h + L for that group. d as Q6_K.
// IQ4_XS_R: an IQ4_XS block with its 128 nibble bytes (at byte 8) in Q4_K_R's order: byte p of
// chunk m holds element 4m + p%4 of group p/4 (low nibble) and 4(m + 4) + p%4 (high nibble), so
// chunk m & 15 and (chunk m >> 4) & 15 index the levels of the panel's vectors m and m + 4 with
// no transpose. d, scales_h and scales_l are IQ4_XS's.
struct block_iq4_nl {  // x = d * kIQ4Values[nibble]; nibbles as Q4_0
    uint16_t d;
    uint8_t qs[16];
};
struct block_iq4_xs {  // 8 sub-blocks of 32: x = d*(ls - 32)*kIQ4Values[nibble]
    uint16_t d;
    uint16_t scales_h;  // bits 2j..2j+1: top bits of ls[j]
    uint8_t scales_l[4];  // nibble j%2 of byte j/2: low bits of ls[j]
    uint8_t qs[128];      // 16 bytes per sub-block, nibbles as Q4_0
};
#pragma pack(pop)
static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");
static_assert(sizeof(block_q5_K) == 176, "Q5_K block is 176 bytes");
static_assert(sizeof(block_q2_K) == 84, "Q2_K block is 84 bytes");
static_assert(sizeof(block_q3_K) == 110, "Q3_K block is 110 bytes");
static_assert(sizeof(block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");
static_assert(sizeof(block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");
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

// BF16 -> float: the 16 bits are the top half of the float32.
static inline float bf16_to_fp32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// The 16 levels of IQ4_NL / IQ4_XS (ggml's kvalues_iq4nl), indexed by a nibble.
static const int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Q3_K's twelve scale bytes -> 16 signed scales (6-bit value - 32):
//   low 4 bits: low nibble of b[k] (k < 8) or high nibble of b[k-8] (k >= 8);
//   top 2 bits: bits 2*(k/4), 2*(k/4)+1 of b[8 + k%4].
static inline void q3k_scales(const uint8_t* b, int8_t sc[16]) {
    for (int k = 0; k < 16; ++k) {
        const int lo = k < 8 ? (b[k] & 15) : (b[k - 8] >> 4);
        const int hi = (b[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
        sc[k] = (int8_t)((lo | hi << 4) - 32);
    }
}

// ---- Load-time forms (Q2_K_R, Q3_K_R, Q4_K_R, Q5_K_R, Q6_K_R, Q5_0_R, Q5_1_R, IQ4_XS_R) -------------
// A form moves its GGUF type's bit fields to other places and changes nothing else. Each group
// of bytes holding one kind of field (a "plane": Q3_K's hmask, its 2-bit qs, Q4_K's nibbles, the
// scale bytes of Q2_K, ...) is described in both layouts by a PlaneMap: the value (or sub-block)
// whose W-bit field sits in slot f (bits W f ..) of byte i. Converting a plane = reading its
// fields out into value order with one map and writing them back with the other; undoing it =
// the same with the maps swapped, so a form and its inverse cannot disagree.
template <int N, int W>  // N bytes, W-bit fields, 8 / W to a byte
struct PlaneMap {
    uint8_t v[N][8 / W];
    template <class F>
    constexpr explicit PlaneMap(F value_of) : v{} {
        for (int i = 0; i < N; ++i)
            for (int f = 0; f < 8 / W; ++f) v[i][f] = (uint8_t)value_of(i, f);
    }
};
// dst plane (layout `to`) = src plane (layout `from`); fields of up to 256 values
template <int N, int W>
static inline void move_plane(const uint8_t* src, const PlaneMap<N, W>& from, uint8_t* dst, const PlaneMap<N, W>& to) {
    uint8_t val[256];  // the fields in value order
    for (int i = 0; i < N; ++i)
        for (int f = 0; f < 8 / W; ++f) val[from.v[i][f]] = (uint8_t)((src[i] >> (W * f)) & ((1 << W) - 1));
    for (int i = 0; i < N; ++i) {
        unsigned b = 0;
        for (int f = 0; f < 8 / W; ++f) b |= (unsigned)val[to.v[i][f]] << (W * f);
        dst[i] = (uint8_t)b;
    }
}

// The lane order of Q2_K_R / Q3_K_R / Q6_K_R (block_q3_K_R): byte p (0..31) of half c, bit pair
// or slot k, holds element 4k + p%4 of group 2(L%4) + L/4, L = p/4; its index in the super-block:
constexpr int q3kr_value(int c, int p, int k) { return 128 * c + 16 * (2 * (p / 4 % 4) + p / 16) + 4 * k + p % 4; }
// Q3_K_R's hb bit of slot k in half c (half 0: bits 2, 3, 6, 7; half 1: bits 0, 1, 4, 5)
constexpr int q3kr_hbit(int c, int k) { return (k & 1) + 4 * (k >> 1) + 2 * (1 - c); }

namespace forms {
// 2-bit fields, 64 bytes: Q2_K / Q3_K qs (value 128c + 32j + l in pair j of byte 32c + l) and
// the lane order's ql (byte 32c + p, pair k)
constexpr PlaneMap<64, 2> kQs([](int i, int j) { return 128 * (i / 32) + 32 * j + i % 32; });
constexpr PlaneMap<64, 2> kQl([](int i, int k) { return q3kr_value(i / 32, i % 32, k); });
// Q3_K's hmask (value 32b + l in bit b of byte l) and Q3_K_R's hb
constexpr PlaneMap<32, 1> kHmask([](int l, int b) { return 32 * b + l; });
constexpr PlaneMap<32, 1> kHb([](int p, int b) {  // the (c, k) whose q3kr_hbit is b
    const int c = (b & 2) ? 0 : 1, k = (b & 1) + 2 * (b >> 2);
    return q3kr_value(c, p, k);
});
// 16 sub-block scale bytes: natural, and each half's eight in lane order (Q2_K_R, Q6_K_R)
constexpr PlaneMap<16, 8> kScales([](int i, int) { return i; });
constexpr PlaneMap<16, 8> kScalesLanes([](int i, int) { return 8 * (i / 8) + 2 * (i % 4) + i % 8 / 4; });
// Q4_K's nibbles (group 2c + s = nibble s of bytes 32c ..) and Q4_K_R's (chunk m, byte p: element
// 4m + p%4 of group p/4 in the low nibble, 4(m + 4) + p%4 in the high one)
constexpr PlaneMap<128, 4> kQ4([](int i, int s) { return 64 * (i / 32) + 32 * s + i % 32; });
constexpr PlaneMap<128, 4> kQ4r([](int i, int s) { return 32 * (i % 32 / 4) + 4 * (i / 32 + 4 * s) + i % 4; });
// IQ4_XS's nibbles (group j's 16 bytes at 16j: element l in the low nibble of byte l, 16 + l in the high)
constexpr PlaneMap<128, 4> kIq4xs([](int i, int s) { return 32 * (i / 16) + 16 * s + i % 16; });
// Q5_K's 5th bits (value 32j + l in bit j of qh[l]: kHmask's order) and Q5_K_R's hb (byte p, bit
// 2m + s: element 4(m + 4s) + p%4 of group p/4)
constexpr PlaneMap<32, 1> kQ5hr([](int p, int f) { return 32 * (p / 4) + 4 * (f / 2 + 4 * (f % 2)) + p % 4; });
// Q5_0 / Q5_1 qh (bit e of the 32-bit word: element e) and Q5_0_R / Q5_1_R's (bit 8b + k: element 4k + b)
constexpr PlaneMap<4, 1> kQh32([](int i, int f) { return 8 * i + f; });
constexpr PlaneMap<4, 1> kQh32r([](int b, int k) { return 4 * k + b; });
// Q6_K's low 4 bits (value 128h + 32j + l in nibble j/2 of ql[64h + 32(j%2) + l]) and its top 2
// bits (pair j of qh[32h + l]); Q6_K_R: nibble k/2 of ql[64h + 32(k%2) + p], pair k of qh[32h + p]
constexpr PlaneMap<128, 4> kQ6l([](int i, int s) { return 128 * (i / 64) + 32 * (2 * s + i % 64 / 32) + i % 32; });
constexpr PlaneMap<128, 4> kQ6lr([](int i, int s) { return q3kr_value(i / 64, i % 32, 2 * s + i % 64 / 32); });
constexpr PlaneMap<64, 2> kQ6h([](int i, int j) { return 128 * (i / 32) + 32 * j + i % 32; });
}  // namespace forms

// One block of a per-block `form` (not a panel form: convert_form_row): back = false rewrites its GGUF block src into the form at dst, back = true
// the form's block src into the GGUF block at dst (src != dst; the bytes no plane covers are
// copied). Layouts: block_q2_K_R, block_q3_K_R and the comments on Q4_K_R, Q5_K_R, Q5_0_R / Q5_1_R,
// Q6_K_R and IQ4_XS_R above.
static inline void convert_load_form(WType form, const uint8_t* src, uint8_t* dst, bool back) {
    using namespace forms;
    const int bb = wtype_info(form).block_bytes;
    std::memcpy(dst, src, (size_t)bb);
    auto move = [&](int off, const auto& gguf, const auto& lanes) {
        move_plane(src + off, back ? lanes : gguf, dst + off, back ? gguf : lanes);
    };
    switch (form) {
        case WType::Q2_K_R: move(0, kScales, kScalesLanes); move(16, kQs, kQl); break;
        case WType::Q3_K_R: move(0, kHmask, kHb); move(32, kQs, kQl); break;
        case WType::Q4_K_R: move(16, kQ4, kQ4r); break;
        case WType::Q5_K_R: move(16, kHmask, kQ5hr); move(48, kQ4, kQ4r); break;
        case WType::Q5_0_R: move(2, kQh32, kQh32r); break;
        case WType::Q5_1_R: move(4, kQh32, kQh32r); break;
        case WType::Q6_K_R: move(0, kQ6l, kQ6lr); move(128, kQ6h, kQl); move(192, kScales, kScalesLanes); break;
        case WType::IQ4_XS_R: move(8, kIq4xs, kQ4r); break;
        default: break;
    }
}

// ---- Panel forms (Q4_0_P, Q4_1_P, Q5_0_P, Q5_1_P, IQ4_NL_P) ---------------------------------------
// A row of nb blocks of a 32-element type: its first nb / 8 * 8 blocks as panels of 8 (8 BB bytes
// each, the bytes of those 8 blocks), its last nb % 8 blocks (the tail) as blocks of
// block_form. A panel holds each field of the block (d; m; qh; qs, in block order) for its 8
// blocks side by side, in units of u = min(field bytes, 4): unit k of block l's field at
// 8 u k + u l from the field's start, which is 8 times the field's offset in the block. So the 8
// d's (and m's) are one vector of fp16, the 8 qh's one of 32-bit words, and qs dword k of the 8
// blocks is one vector, block l in 32-bit lane l: the AVX2 tier's panel order, read with no
// gathering and no transposing. Each block is first put in block_form: the 5th bits of
// Q5_0 / Q5_1 in Q5_0_R / Q5_1_R's order (one shift per vector).
constexpr bool is_panel_form(WType t) { return t >= WType::Q4_0_P && t <= WType::IQ4_NL_P; }
// The layout of a form's single blocks: a per-block form's own; a panel form's tail (and its
// panels' blocks before they are interleaved): Q5_0_R / Q5_1_R for Q5_0_P / Q5_1_P, else the GGUF type.
constexpr WType block_form(WType t) {
    return !is_panel_form(t) ? t : t == WType::Q5_0_P ? WType::Q5_0_R : t == WType::Q5_1_P ? WType::Q5_1_R : load_form_source(t);
}
// A 32-element type's fields, bytes each, in block order (0-terminated).
static inline const int8_t* block_fields(WType t) {
    static const int8_t q4_0[] = {2, 16, 0}, q4_1[] = {2, 2, 16, 0}, q5_0[] = {2, 4, 16, 0}, q5_1[] = {2, 2, 4, 16, 0};
    switch (load_form_source(t)) {
        case WType::Q4_1: return q4_1;
        case WType::Q5_0: return q5_0;
        case WType::Q5_1: return q5_1;
        default: return q4_0;  // Q4_0, IQ4_NL
    }
}
// One block of a per-block form (or of a GGUF type: a copy) to or from its GGUF type. src != dst.
static inline void convert_block(WType t, const uint8_t* src, uint8_t* dst, bool back) {
    if (load_form_source(t) != t)
        convert_load_form(t, src, dst, back);
    else
        std::memcpy(dst, src, (size_t)wtype_info(t).block_bytes);
}
// One row of nb blocks of any load-time form: back = false rewrites the GGUF row src into the form
// at dst, back = true the form's row src into the GGUF row at dst. dst may be src. A per-block
// form is all tail.
static inline void convert_form_row(WType form, const uint8_t* src, uint8_t* dst, int64_t nb, bool back) {
    const WType bf = block_form(form);
    const int bb = wtype_info(form).block_bytes;
    const int8_t* fields = block_fields(form);
    uint8_t blk[8][32];  // the 8 blocks of a panel, in block_form
    const int64_t full = is_panel_form(form) ? nb / 8 * 8 : 0;
    for (int64_t p = 0; p < full; p += 8) {
        const uint8_t* s = src + p * bb;
        uint8_t* d = dst + p * bb;
        if (!back)
            for (int l = 0; l < 8; ++l) convert_block(bf, s + l * bb, blk[l], false);
        for (int o = 0, f = 0; fields[f]; o += fields[f++]) {
            const int u = fields[f] < 4 ? fields[f] : 4;
            for (int l = 0; l < 8; ++l)
                for (int k = 0; k < fields[f] / u; ++k) {
                    const int at = 8 * o + 8 * u * k + u * l;  // in the panel
                    if (back)
                        std::memcpy(blk[l] + o + u * k, s + at, (size_t)u);
                    else
                        std::memcpy(d + at, blk[l] + o + u * k, (size_t)u);
                }
        }
        if (back)
            for (int l = 0; l < 8; ++l) convert_block(bf, blk[l], d + l * bb, true);
    }
    uint8_t tmp[256];
    for (int64_t b = full; b < nb; ++b) {
        convert_block(bf, src + b * bb, tmp, back);
        std::memcpy(dst + b * bb, tmp, (size_t)bb);
    }
}

// IQ4_XS's scales_h / scales_l -> 8 signed scales (6-bit value - 32).
static inline void iq4xs_scales(const uint8_t* blk, int8_t sc[8]) {
    const uint16_t h = load_u16(blk + 2);
    for (int j = 0; j < 8; ++j) {
        const int lo = (blk[4 + j / 2] >> (4 * (j & 1))) & 15;
        sc[j] = (int8_t)((lo | ((h >> (2 * j)) & 3) << 4) - 32);
    }
}

// ---- one GGUF block -> groups of (q bytes, D, E) with w_i = D * q_i - E ------------------
// The per-type "group decode" of the matmul (see matmul_kernels.h): q gets ngroups*G
// unsigned bytes in element order; returns the number of groups. The scalar tier packs
// from this; each SIMD tier has a vectorised unpacker per type that must agree with it.
static inline int unpack_block(WType t, const uint8_t* blk, uint8_t* q, float* D, float* E) {
    // a load-time form: the GGUF block it was made from, unpacked (a panel form's rows are
    // rewritten back whole before this: matmul_rows_quant, dequantize_row)
    if (load_form_source(t) != t) {
        uint8_t b[256];
        convert_load_form(t, blk, b, true);
        return unpack_block(load_form_source(t), b, q, D, E);
    }
    switch (t) {
        case WType::Q4_0: {
            const float d = fp16_to_fp32(load_u16(blk));
            for (int i = 0; i < 16; ++i) {
                q[i] = blk[2 + i] & 15;
                q[i + 16] = blk[2 + i] >> 4;
            }
            D[0] = d;
            E[0] = 8.0f * d;
            return 1;
        }
        case WType::Q4_1:
        case WType::Q5_1: {
            const int o = t == WType::Q4_1 ? 4 : 8;
            for (int i = 0; i < 16; ++i) {
                q[i] = blk[o + i] & 15;
                q[i + 16] = blk[o + i] >> 4;
            }
            if (t == WType::Q5_1) {
                const uint32_t qh = load_u32(blk + 4);
                for (int i = 0; i < 32; ++i) q[i] |= (uint8_t)(((qh >> i) & 1) << 4);
            }
            D[0] = fp16_to_fp32(load_u16(blk));
            E[0] = -fp16_to_fp32(load_u16(blk + 2));  // x = d q + m
            return 1;
        }
        case WType::Q5_0: {
            const float d = fp16_to_fp32(load_u16(blk));
            const uint32_t qh = load_u32(blk + 2);
            for (int i = 0; i < 16; ++i) {
                q[i] = (uint8_t)((blk[6 + i] & 15) | ((qh >> i) & 1) << 4);
                q[i + 16] = (uint8_t)((blk[6 + i] >> 4) | ((qh >> (i + 16)) & 1) << 4);
            }
            D[0] = d;
            E[0] = 16.0f * d;
            return 1;
        }
        case WType::Q8_0: {
            const float d = fp16_to_fp32(load_u16(blk));
            for (int i = 0; i < 32; ++i) q[i] = (uint8_t)(blk[2 + i] ^ 0x80);  // int8 + 128
            D[0] = d;
            E[0] = 128.0f * d;
            return 1;
        }
        case WType::IQ4_NL: {
            const float d = fp16_to_fp32(load_u16(blk));
            for (int i = 0; i < 16; ++i) {  // level + 128: 1..241
                q[i] = (uint8_t)(kIQ4Values[blk[2 + i] & 15] + 128);
                q[i + 16] = (uint8_t)(kIQ4Values[blk[2 + i] >> 4] + 128);
            }
            D[0] = d;
            E[0] = 128.0f * d;
            return 1;
        }
        case WType::Q4_K:
        case WType::Q5_K: {
            const float d = fp16_to_fp32(load_u16(blk)), dmin = fp16_to_fp32(load_u16(blk + 2));
            uint8_t sc[8], m[8];
            q4k_scales_mins(blk + 4, sc, m);
            const bool five = t == WType::Q5_K;
            const uint8_t* qs = blk + (five ? 48 : 16);
            const uint8_t* qh = blk + 16;
            for (int c = 0; c < 4; ++c)
                for (int i = 0; i < 32; ++i) {
                    uint8_t lo = qs[32 * c + i] & 15, hi = qs[32 * c + i] >> 4;
                    if (five) {
                        lo |= (uint8_t)(((qh[i] >> (2 * c)) & 1) << 4);
                        hi |= (uint8_t)(((qh[i] >> (2 * c + 1)) & 1) << 4);
                    }
                    q[64 * c + i] = lo;
                    q[64 * c + 32 + i] = hi;
                }
            for (int j = 0; j < 8; ++j) {
                D[j] = d * (float)sc[j];
                E[j] = dmin * (float)m[j];
            }
            return 8;
        }
        case WType::Q6_K: {
            const block_q6_K* b = (const block_q6_K*)blk;
            const float d = fp16_to_fp32(load_u16(blk + 208));
            for (int h = 0; h < 2; ++h) {
                const uint8_t* ql = b->ql + 64 * h;
                const uint8_t* qh = b->qh + 32 * h;
                uint8_t* o = q + 128 * h;
                for (int l = 0; l < 32; ++l) {
                    o[l] = (uint8_t)((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4);
                    o[l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
                    o[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
                    o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
                }
            }
            for (int j = 0; j < 16; ++j) {
                D[j] = d * (float)b->scales[j];
                E[j] = 32.0f * D[j];
            }
            return 16;
        }
        case WType::Q2_K:
        case WType::Q3_K: {
            // value 128c + 32j + l: bits 2j..2j+1 of qs[32c + l] (+ Q3_K: bit 4c+j of hmask[l])
            const bool three = t == WType::Q3_K;
            const uint8_t* qs = blk + (three ? 32 : 16);
            for (int c = 0; c < 2; ++c)
                for (int j = 0; j < 4; ++j)
                    for (int l = 0; l < 32; ++l) {
                        uint8_t v = (qs[32 * c + l] >> (2 * j)) & 3;
                        if (three) v |= (uint8_t)(((blk[l] >> (4 * c + j)) & 1) << 2);
                        q[128 * c + 32 * j + l] = v;
                    }
            if (three) {
                int8_t sc[16];
                q3k_scales(blk + 96, sc);
                const float d = fp16_to_fp32(load_u16(blk + 108));
                for (int k = 0; k < 16; ++k) {
                    D[k] = d * (float)sc[k];
                    E[k] = 4.0f * D[k];  // x = D (q - 4)
                }
            } else {
                const float d = fp16_to_fp32(load_u16(blk + 80)), dmin = fp16_to_fp32(load_u16(blk + 82));
                for (int k = 0; k < 16; ++k) {
                    D[k] = d * (float)(blk[k] & 15);
                    E[k] = dmin * (float)(blk[k] >> 4);
                }
            }
            return 16;
        }
        case WType::IQ4_XS: {
            const float d = fp16_to_fp32(load_u16(blk));
            int8_t sc[8];
            iq4xs_scales(blk, sc);
            const uint8_t* qs = blk + 8;
            for (int j = 0; j < 8; ++j) {
                for (int i = 0; i < 16; ++i) {
                    q[32 * j + i] = (uint8_t)(kIQ4Values[qs[16 * j + i] & 15] + 128);
                    q[32 * j + 16 + i] = (uint8_t)(kIQ4Values[qs[16 * j + i] >> 4] + 128);
                }
                D[j] = d * (float)sc[j];
                E[j] = 128.0f * D[j];
            }
            return 8;
        }
        default:
            return 0;
    }
}

}  // namespace pyengine
