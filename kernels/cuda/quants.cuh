// GGUF weight blocks as the kernels read them, straight from the file's bytes.
//
// Layouts (ggml's block_* structs; fp16 = IEEE half, little-endian; "qs" nibble j
// holds value j in its low 4 bits and value j+16 in its high 4 bits):
//   Q4_0  18 B / 32 values: d(f16) qs[16]               x = d * (q - 8)
//   Q4_1  20 B / 32 values: d(f16) m(f16) qs[16]        x = d * q + m
//   Q5_0  22 B / 32 values: d(f16) qh[4] qs[16]         x = d * ((q | hbit << 4) - 16),
//                                                       hbit of value j = bit j of qh (u32)
//   Q8_0  34 B / 32 values: d(f16) qs[32] (int8)        x = d * q
//   Q4_K 144 B / 256 values: d(f16) dmin(f16) scales[12] qs[128]
//        8 sub-blocks of 32 with 6-bit scale sc and min mn packed in scales[];
//        sub-block s lives in qs[32*(s/2) ..] (low nibbles if s even, high if odd);
//        x = d * sc[s] * q - dmin * mn[s]
//   Q6_K 210 B / 256 values: ql[128] qh[64] scales[16](int8) d(f16)
//        value r: half h = r/128, quarter k = (r%128)/32, l = r%32;
//        low 4 bits  = ql[64h + l + 32*(k&1)] (low nibble if k < 2, else high),
//        high 2 bits = qh[32h + l] >> 2k;  x = d * scales[8h + 2k + l/16] * (q - 32)
//   Q5_1  24 B / 32 values: d(f16) m(f16) qh[4] qs[16]  x = d * (q | hbit << 4) + m
//   Q5_K 176 B / 256 values: d dmin scales[12] qh[32] qs[128]: Q4_K plus bit s of qh[l]
//        as the value 16 of value l of sub-block s
//   Q2_K  84 B / 256 values: scales[16] qs[64] d dmin; value r = 128c + 32j + l is
//        bits 2j..2j+1 of qs[32c + l]; x = d*(sc[r/16] & 15)*q - dmin*(sc[r/16] >> 4)
//   Q3_K 110 B / 256 values: hmask[32] qs[64] scales[12] d; low 2 bits as Q2_K, bit 4c+j
//        of hmask[l] the value 4; x = d * sc[r/16] * (q - 4), sc 6-bit - 32 (q3k_scale)
//   IQ4_NL 18 B / 32 values: d qs[16] (nibbles as Q4_0)  x = d * level[nibble]
//   IQ4_XS 136 B / 256 values: d scales_h(u16) scales_l[4] qs[128]; sub-block s: nibbles
//        at qs[16s ..] as Q4_0, x = d * (ls_s - 32) * level[nibble]
//   F32 / F16 / BF16: one value per element.
//
// Two views of a row, both usable on host and device:
//  * dequant_elem<T>(row, e): value e as float (simple kernels, embedding rows);
//  * decode_unit<T>(row, u, U): the 32 values u*32 .. u*32+31 as 8 packed ints of
//    signed 8-bit integer codes plus per-16 scales d0, d1 and an offset m, so that
//      sum_i x_i * a_i  =  d8 * (d0 * S0 + d1 * S1)  +  m * s8
//    for activations a_i ~ d8 * q8_i quantized Q8_1-style (s8 = d8 * sum q8_i),
//    with S0 / S1 the int8 dot products of the first / last 16 codes (dp4a).
//
// Alignment: device buffers start 256-aligned and every row is a whole number of
// blocks, so fields at even offsets of 18/22/34/210-byte blocks are only 2-byte
// aligned (read as 16-bit halves), those of 20/144-byte blocks 4-byte aligned.
#pragma once

#include "compat.cuh"

namespace pyengine {
namespace cuda {

enum GgmlType : int {
    T_F32 = 0,
    T_F16 = 1,
    T_Q4_0 = 2,
    T_Q4_1 = 3,
    T_Q5_0 = 6,
    T_Q5_1 = 7,
    T_Q8_0 = 8,
    T_Q2_K = 10,
    T_Q3_K = 11,
    T_Q4_K = 12,
    T_Q5_K = 13,
    T_Q6_K = 14,
    T_IQ4_NL = 20,
    T_IQ4_XS = 23,
    T_BF16 = 30,
};

template <int T> struct Traits;
template <> struct Traits<T_F32>  { static constexpr int block = 1,   bytes = 4,   quant = 0; };
template <> struct Traits<T_F16>  { static constexpr int block = 1,   bytes = 2,   quant = 0; };
template <> struct Traits<T_BF16> { static constexpr int block = 1,   bytes = 2,   quant = 0; };
template <> struct Traits<T_Q4_0> { static constexpr int block = 32,  bytes = 18,  quant = 1; };
template <> struct Traits<T_Q4_1> { static constexpr int block = 32,  bytes = 20,  quant = 1; };
template <> struct Traits<T_Q5_0> { static constexpr int block = 32,  bytes = 22,  quant = 1; };
template <> struct Traits<T_Q8_0> { static constexpr int block = 32,  bytes = 34,  quant = 1; };
template <> struct Traits<T_Q4_K> { static constexpr int block = 256, bytes = 144, quant = 1; };
template <> struct Traits<T_Q6_K> { static constexpr int block = 256, bytes = 210, quant = 1; };
template <> struct Traits<T_Q5_1> { static constexpr int block = 32,  bytes = 24,  quant = 1; };
template <> struct Traits<T_Q2_K> { static constexpr int block = 256, bytes = 84,  quant = 1; };
template <> struct Traits<T_Q3_K> { static constexpr int block = 256, bytes = 110, quant = 1; };
template <> struct Traits<T_Q5_K> { static constexpr int block = 256, bytes = 176, quant = 1; };
template <> struct Traits<T_IQ4_NL> { static constexpr int block = 32, bytes = 18, quant = 1; };
template <> struct Traits<T_IQ4_XS> { static constexpr int block = 256, bytes = 136, quant = 1; };

// Host-side table of the same facts (block size, bytes per block; 0 = unsupported).
inline bool type_info(int type, int* block, int* bytes, bool* quant) {
    switch (type) {
#define PYE_TYPE_CASE(T) \
    case T: *block = Traits<T>::block; *bytes = Traits<T>::bytes; *quant = Traits<T>::quant != 0; return true;
        PYE_TYPE_CASE(T_F32) PYE_TYPE_CASE(T_F16) PYE_TYPE_CASE(T_BF16)
        PYE_TYPE_CASE(T_Q4_0) PYE_TYPE_CASE(T_Q4_1) PYE_TYPE_CASE(T_Q5_0)
        PYE_TYPE_CASE(T_Q8_0) PYE_TYPE_CASE(T_Q4_K) PYE_TYPE_CASE(T_Q6_K)
        PYE_TYPE_CASE(T_Q5_1) PYE_TYPE_CASE(T_Q2_K) PYE_TYPE_CASE(T_Q3_K)
        PYE_TYPE_CASE(T_Q5_K) PYE_TYPE_CASE(T_IQ4_NL) PYE_TYPE_CASE(T_IQ4_XS)
#undef PYE_TYPE_CASE
        default: return false;
    }
}

// ---------------------------------------------------------------------------------
// Little-endian loads from weight bytes
// ---------------------------------------------------------------------------------
PYE_HD uint32_t ld_u16(const uint8_t* p) {
    PYE_CHECK_ALIGN(p, 2);
    return *reinterpret_cast<const uint16_t*>(p);
}
PYE_HD uint32_t ld_u32_a2(const uint8_t* p) {  // 4 bytes from a 2-byte aligned address
    PYE_CHECK_ALIGN(p, 2);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}
PYE_HD uint32_t ld_u32_a4(const uint8_t* p) {
    PYE_CHECK_ALIGN(p, 4);
    return *reinterpret_cast<const uint32_t*>(p);
}
PYE_HD float ld_f16(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(ld_u16(p))); }

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
PYE_HD void k4_scale_min(const uint8_t* s, int j, int* sc, int* mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q3_K: signed scale of sub-block k (0..15) from the 12 packed bytes: low 4 bits in the
// low (k < 8) or high (k >= 8) nibble of s[k % 8], top 2 bits at bit 2*(k/4) of s[8 + k%4].
PYE_HD int q3k_scale(const uint8_t* s, int k) {
    const int lo = k < 8 ? (s[k] & 15) : (s[k - 8] >> 4);
    const int hi = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

// IQ4_XS: signed scale of sub-block j (0..7).
PYE_HD int iq4xs_scale(const uint8_t* b, int j) {
    const int lo = (b[4 + j / 2] >> (4 * (j & 1))) & 15;
    const int hi = (static_cast<int>(ld_u16(b + 2)) >> (2 * j)) & 3;
    return (lo | (hi << 4)) - 32;
}

// The 16 IQ4 levels (ggml's kvalues_iq4nl) packed as bytes of two 64-bit constants.
PYE_HD int iq4_level(int i) {
    const uint64_t lo = 0xF6EADDCFBFAD9881ull;  // -127 -104 -83 -65 -49 -35 -22 -10
    const uint64_t hi = 0x7159453526190D01ull;  //  1 13 25 38 53 69 89 113
    return static_cast<int8_t>(((i < 8 ? lo : hi) >> (8 * (i & 7))) & 0xff);
}
// Four nibbles (bits 0-3 of each byte of w) -> four level bytes.
PYE_HD uint32_t iq4_levels4(uint32_t w) {
    uint32_t o = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) o |= (static_cast<uint32_t>(iq4_level((w >> (8 * k)) & 15)) & 0xffu) << (8 * k);
    return o;
}

// Bytes of w, each 0..63, minus 32 as signed bytes (-32..31), without carries
// between bytes: q >= 32 just loses bit 5; q < 32 becomes q + 224 = q | 0xe0.
PYE_HD uint32_t sub32_bytes(uint32_t w) {
    return (w ^ 0x20202020u) | ((~w & 0x20202020u) * 6u);
}

// The 4 low bits of x (value bits 0..3) moved to bit 4 of bytes 0..3.
PYE_HD uint32_t spread_bit4(uint32_t x) {
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

// ---------------------------------------------------------------------------------
// One value
// ---------------------------------------------------------------------------------
template <int T> PYE_HD float dequant_elem(const uint8_t* row, int e);

template <> PYE_HD float dequant_elem<T_F32>(const uint8_t* row, int e) {
    const uint8_t* p = row + 4 * static_cast<size_t>(e);
    PYE_CHECK_ALIGN(p, 4);
    return *reinterpret_cast<const float*>(p);
}
template <> PYE_HD float dequant_elem<T_F16>(const uint8_t* row, int e) {
    return ld_f16(row + 2 * static_cast<size_t>(e));
}
template <> PYE_HD float dequant_elem<T_BF16>(const uint8_t* row, int e) {
    return bf16_to_f32(static_cast<uint16_t>(ld_u16(row + 2 * static_cast<size_t>(e))));
}
template <> PYE_HD float dequant_elem<T_Q4_0>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 32) * 18;
    const int j = e % 32;
    const int byte = b[2 + (j & 15)];
    const int q = j < 16 ? (byte & 15) : (byte >> 4);
    return ld_f16(b) * static_cast<float>(q - 8);
}
template <> PYE_HD float dequant_elem<T_Q4_1>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 32) * 20;
    const int j = e % 32;
    const int byte = b[4 + (j & 15)];
    const int q = j < 16 ? (byte & 15) : (byte >> 4);
    return ld_f16(b) * static_cast<float>(q) + ld_f16(b + 2);
}
template <> PYE_HD float dequant_elem<T_Q5_0>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 32) * 22;
    const int j = e % 32;
    const uint32_t qh = ld_u32_a2(b + 2);
    const int byte = b[6 + (j & 15)];
    const int lo = j < 16 ? (byte & 15) : (byte >> 4);
    const int q = lo | static_cast<int>(((qh >> j) & 1u) << 4);
    return ld_f16(b) * static_cast<float>(q - 16);
}
template <> PYE_HD float dequant_elem<T_Q8_0>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 32) * 34;
    return ld_f16(b) * static_cast<float>(static_cast<int8_t>(b[2 + e % 32]));
}
template <> PYE_HD float dequant_elem<T_Q4_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 256) * 144;
    const int r = e % 256, sub = r / 32, l = r % 32;
    int sc, mn;
    k4_scale_min(b + 4, sub, &sc, &mn);
    const int byte = b[16 + 32 * (sub / 2) + l];
    const int q = (sub & 1) ? (byte >> 4) : (byte & 15);
    return ld_f16(b) * static_cast<float>(sc) * static_cast<float>(q) - ld_f16(b + 2) * static_cast<float>(mn);
}
template <> PYE_HD float dequant_elem<T_Q6_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 256) * 210;
    const int r = e % 256, h = r / 128, k = (r % 128) / 32, l = r % 32;
    const int qlb = b[64 * h + l + 32 * (k & 1)];
    const int lo = k < 2 ? (qlb & 15) : (qlb >> 4);
    const int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
    const int sc = static_cast<int8_t>(b[192 + 8 * h + 2 * k + l / 16]);
    return ld_f16(b + 208) * static_cast<float>(sc) * static_cast<float>((lo | (hi << 4)) - 32);
}

template <> PYE_HD float dequant_elem<T_Q5_1>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 32) * 24;
    const int j = e % 32;
    const uint32_t qh = ld_u32_a4(b + 4);
    const int byte = b[8 + (j & 15)];
    const int lo = j < 16 ? (byte & 15) : (byte >> 4);
    const int q = lo | static_cast<int>(((qh >> j) & 1u) << 4);
    return ld_f16(b) * static_cast<float>(q) + ld_f16(b + 2);
}
template <> PYE_HD float dequant_elem<T_Q5_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 256) * 176;
    const int r = e % 256, sub = r / 32, l = r % 32;
    int sc, mn;
    k4_scale_min(b + 4, sub, &sc, &mn);
    const int byte = b[48 + 32 * (sub / 2) + l];
    const int q = ((sub & 1) ? (byte >> 4) : (byte & 15)) | (((b[16 + l] >> sub) & 1) << 4);
    return ld_f16(b) * static_cast<float>(sc) * static_cast<float>(q) - ld_f16(b + 2) * static_cast<float>(mn);
}
template <> PYE_HD float dequant_elem<T_Q2_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 256) * 84;
    const int r = e % 256, c = r / 128, j = (r % 128) / 32, l = r % 32;
    const int sc = b[r / 16];
    const int q = (b[16 + 32 * c + l] >> (2 * j)) & 3;
    return ld_f16(b + 80) * static_cast<float>(sc & 15) * static_cast<float>(q) -
           ld_f16(b + 82) * static_cast<float>(sc >> 4);
}
template <> PYE_HD float dequant_elem<T_Q3_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 256) * 110;
    const int r = e % 256, c = r / 128, j = (r % 128) / 32, l = r % 32;
    const int q = ((b[32 + 32 * c + l] >> (2 * j)) & 3) | (((b[l] >> (4 * c + j)) & 1) << 2);
    return ld_f16(b + 108) * static_cast<float>(q3k_scale(b + 96, r / 16)) * static_cast<float>(q - 4);
}
template <> PYE_HD float dequant_elem<T_IQ4_NL>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 32) * 18;
    const int j = e % 32;
    const int byte = b[2 + (j & 15)];
    return ld_f16(b) * static_cast<float>(iq4_level(j < 16 ? (byte & 15) : (byte >> 4)));
}
template <> PYE_HD float dequant_elem<T_IQ4_XS>(const uint8_t* row, int e) {
    const uint8_t* b = row + static_cast<size_t>(e / 256) * 136;
    const int r = e % 256, sub = r / 32, j = r % 32;
    const int byte = b[8 + 16 * sub + (j & 15)];
    return ld_f16(b) * static_cast<float>(iq4xs_scale(b, sub)) *
           static_cast<float>(iq4_level(j < 16 ? (byte & 15) : (byte >> 4)));
}

// ---------------------------------------------------------------------------------
// 32 values as int8 codes for dp4a
// ---------------------------------------------------------------------------------
struct Unit {
    int v[8];   // codes of values 4k .. 4k+3 in v[k], byte k first
    float d0;   // scale of codes 0..15
    float d1;   // scale of codes 16..31
    float m;    // offset coefficient (multiplies s8 = d8 * sum q8)
    float m0, m1;  // Q2_K only: per-16 min coefficients of codes 0..15 / 16..31 (see unit_dot)
};

template <int T> PYE_HD void decode_unit(const uint8_t* row, int u, Unit& U);

template <> PYE_HD void decode_unit<T_Q4_0>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u) * 18;
    const float d = ld_f16(b);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t w = ld_u32_a2(b + 2 + 4 * k);
        U.v[k] = static_cast<int>(w & 0x0f0f0f0fu);
        U.v[k + 4] = static_cast<int>((w >> 4) & 0x0f0f0f0fu);
    }
    U.d0 = U.d1 = d;
    U.m = -8.0f * d;  // sum d*(q-8)*a = d*d8*sum q*q8 - 8*d*s8
}
template <> PYE_HD void decode_unit<T_Q4_1>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u) * 20;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t w = ld_u32_a4(b + 4 + 4 * k);
        U.v[k] = static_cast<int>(w & 0x0f0f0f0fu);
        U.v[k + 4] = static_cast<int>((w >> 4) & 0x0f0f0f0fu);
    }
    U.d0 = U.d1 = ld_f16(b);
    U.m = ld_f16(b + 2);
}
template <> PYE_HD void decode_unit<T_Q5_0>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u) * 22;
    const float d = ld_f16(b);
    const uint32_t qh = ld_u32_a2(b + 2);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t w = ld_u32_a2(b + 6 + 4 * k);
        U.v[k] = static_cast<int>((w & 0x0f0f0f0fu) | spread_bit4(qh >> (4 * k)));
        U.v[k + 4] = static_cast<int>(((w >> 4) & 0x0f0f0f0fu) | spread_bit4(qh >> (16 + 4 * k)));
    }
    U.d0 = U.d1 = d;
    U.m = -16.0f * d;
}
template <> PYE_HD void decode_unit<T_Q8_0>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u) * 34;
#pragma unroll
    for (int k = 0; k < 8; ++k) U.v[k] = static_cast<int>(ld_u32_a2(b + 2 + 4 * k));
    U.d0 = U.d1 = ld_f16(b);
    U.m = 0.0f;
}
template <> PYE_HD void decode_unit<T_Q4_K>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u / 8) * 144;
    const int sub = u % 8;
    int sc, mn;
    k4_scale_min(b + 4, sub, &sc, &mn);
    const uint8_t* qs = b + 16 + 32 * (sub / 2);
    const int shift = (sub & 1) ? 4 : 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) U.v[k] = static_cast<int>((ld_u32_a4(qs + 4 * k) >> shift) & 0x0f0f0f0fu);
    U.d0 = U.d1 = ld_f16(b) * static_cast<float>(sc);
    U.m = -ld_f16(b + 2) * static_cast<float>(mn);
}
template <> PYE_HD void decode_unit<T_Q6_K>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u / 8) * 210;
    const int sub = u % 8, h = sub / 4, k = sub % 4;
    const uint8_t* ql = b + 64 * h + 32 * (k & 1);
    const uint8_t* qh = b + 128 + 32 * h;
    const int lshift = k < 2 ? 0 : 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const uint32_t lo = (ld_u32_a2(ql + 4 * i) >> lshift) & 0x0f0f0f0fu;
        const uint32_t hi = ((ld_u32_a2(qh + 4 * i) >> (2 * k)) & 0x03030303u) << 4;
        U.v[i] = static_cast<int>(sub32_bytes(lo | hi));
    }
    const float d = ld_f16(b + 208);
    U.d0 = d * static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + 2 * k]));
    U.d1 = d * static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + 2 * k + 1]));
    U.m = 0.0f;
}

template <> PYE_HD void decode_unit<T_Q5_1>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u) * 24;
    const uint32_t qh = ld_u32_a4(b + 4);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t w = ld_u32_a4(b + 8 + 4 * k);
        U.v[k] = static_cast<int>((w & 0x0f0f0f0fu) | spread_bit4(qh >> (4 * k)));
        U.v[k + 4] = static_cast<int>(((w >> 4) & 0x0f0f0f0fu) | spread_bit4(qh >> (16 + 4 * k)));
    }
    U.d0 = U.d1 = ld_f16(b);
    U.m = ld_f16(b + 2);
}
template <> PYE_HD void decode_unit<T_Q5_K>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u / 8) * 176;
    const int sub = u % 8;
    int sc, mn;
    k4_scale_min(b + 4, sub, &sc, &mn);
    const uint8_t* qs = b + 48 + 32 * (sub / 2);
    const int shift = (sub & 1) ? 4 : 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const uint32_t hi = ((ld_u32_a4(b + 16 + 4 * k) >> sub) & 0x01010101u) << 4;
        U.v[k] = static_cast<int>(((ld_u32_a4(qs + 4 * k) >> shift) & 0x0f0f0f0fu) | hi);
    }
    U.d0 = U.d1 = ld_f16(b) * static_cast<float>(sc);
    U.m = -ld_f16(b + 2) * static_cast<float>(mn);
}
template <> PYE_HD void decode_unit<T_Q2_K>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u / 8) * 84;
    const int s = u % 8, c = s / 4, j = s % 4;
#pragma unroll
    for (int k = 0; k < 8; ++k) U.v[k] = static_cast<int>((ld_u32_a4(b + 16 + 32 * c + 4 * k) >> (2 * j)) & 0x03030303u);
    const float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
    const int s0 = b[2 * s], s1 = b[2 * s + 1];
    U.d0 = d * static_cast<float>(s0 & 15);
    U.d1 = d * static_cast<float>(s1 & 15);
    U.m = 0.0f;
    U.m0 = -dmin * static_cast<float>(s0 >> 4);
    U.m1 = -dmin * static_cast<float>(s1 >> 4);
}
template <> PYE_HD void decode_unit<T_Q3_K>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u / 8) * 110;
    const int s = u % 8, c = s / 4, j = s % 4;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const uint32_t lo = (ld_u32_a2(b + 32 + 32 * c + 4 * k) >> (2 * j)) & 0x03030303u;
        const uint32_t hb = ((ld_u32_a2(b + 4 * k) >> (4 * c + j)) & 0x01010101u) << 2;
        // bytes 0..7 minus 4 as signed bytes, without borrows between bytes
        U.v[k] = static_cast<int>((((lo | hb) | 0x80808080u) - 0x04040404u) ^ 0x80808080u);
    }
    const float d = ld_f16(b + 108);
    U.d0 = d * static_cast<float>(q3k_scale(b + 96, 2 * s));
    U.d1 = d * static_cast<float>(q3k_scale(b + 96, 2 * s + 1));
    U.m = 0.0f;
}
template <> PYE_HD void decode_unit<T_IQ4_NL>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u) * 18;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t w = ld_u32_a2(b + 2 + 4 * k);
        U.v[k] = static_cast<int>(iq4_levels4(w & 0x0f0f0f0fu));
        U.v[k + 4] = static_cast<int>(iq4_levels4((w >> 4) & 0x0f0f0f0fu));
    }
    U.d0 = U.d1 = ld_f16(b);
    U.m = 0.0f;
}
template <> PYE_HD void decode_unit<T_IQ4_XS>(const uint8_t* row, int u, Unit& U) {
    const uint8_t* b = row + static_cast<size_t>(u / 8) * 136;
    const int s = u % 8;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t w = ld_u32_a4(b + 8 + 16 * s + 4 * k);
        U.v[k] = static_cast<int>(iq4_levels4(w & 0x0f0f0f0fu));
        U.v[k + 4] = static_cast<int>(iq4_levels4((w >> 4) & 0x0f0f0f0fu));
    }
    U.d0 = U.d1 = ld_f16(b) * static_cast<float>(iq4xs_scale(b, s));
    U.m = 0.0f;
}

// sum over the unit's 32 values of weight * activation, activations given as 32
// int8 codes q8 (16-byte aligned) with ds = (d8, d8 * sum q8).
PYE_HD float unit_dot(const Unit& U, const int8_t* q8, float2 ds) {
    PYE_CHECK_ALIGN(q8, 16);
    const int4 a0 = reinterpret_cast<const int4*>(q8)[0];
    const int4 a1 = reinterpret_cast<const int4*>(q8)[1];
    int s0 = dp4a(U.v[0], a0.x, 0);
    s0 = dp4a(U.v[1], a0.y, s0);
    s0 = dp4a(U.v[2], a0.z, s0);
    s0 = dp4a(U.v[3], a0.w, s0);
    int s1 = dp4a(U.v[4], a1.x, 0);
    s1 = dp4a(U.v[5], a1.y, s1);
    s1 = dp4a(U.v[6], a1.z, s1);
    s1 = dp4a(U.v[7], a1.w, s1);
    return ds.x * (U.d0 * static_cast<float>(s0) + U.d1 * static_cast<float>(s1)) + U.m * ds.y;
}

// unit_dot for a type: Q2_K's two halves have their own mins, applied to the int8 sums of
// each half's activation codes (dp4a against ones) instead of the one offset m.
template <int T> PYE_HD float unit_dot_t(const Unit& U, const int8_t* q8, float2 ds) { return unit_dot(U, q8, ds); }
template <> PYE_HD float unit_dot_t<T_Q2_K>(const Unit& U, const int8_t* q8, float2 ds) {
    PYE_CHECK_ALIGN(q8, 16);
    const int4 a0 = reinterpret_cast<const int4*>(q8)[0];
    const int4 a1 = reinterpret_cast<const int4*>(q8)[1];
    const int ones = 0x01010101;
    const int h0 = dp4a(ones, a0.w, dp4a(ones, a0.z, dp4a(ones, a0.y, dp4a(ones, a0.x, 0))));
    const int h1 = dp4a(ones, a1.w, dp4a(ones, a1.z, dp4a(ones, a1.y, dp4a(ones, a1.x, 0))));
    return unit_dot(U, q8, ds) + ds.x * (U.m0 * static_cast<float>(h0) + U.m1 * static_cast<float>(h1));
}

}  // namespace cuda
}  // namespace pyengine
