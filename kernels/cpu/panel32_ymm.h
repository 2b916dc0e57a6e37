// The AVX2 tier's unpacking of a panel of 8 blocks of a 32-element type (Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, IQ4_NL, the forms Q5_0_R / Q5_1_R, and the panel forms Q4_0_P ...) into 256-bit
// vectors in panel order. Included by matmul_avx2.cpp, and by
// matmul_avx512.cpp for a row's last half panel (8 groups or fewer), which it runs at 256 bits.
// Everything is in an anonymous namespace (each ISA's translation unit gets its own copy; see
// the note at the top of matmul_avx512.cpp), inside `ymm` so it cannot clash with a tier's own
// 512-bit helpers.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "quants.h"

#ifndef AI_INLINE
#define AI_INLINE inline __attribute__((always_inline))
#endif

namespace pyengine {
namespace {
namespace ymm {

// out_k (128-bit lane i) dword m = in_m (lane i) dword k
static AI_INLINE void transpose4_inlane(__m256i& a0, __m256i& a1, __m256i& a2, __m256i& a3) {
    const __m256i t0 = _mm256_unpacklo_epi32(a0, a1), t1 = _mm256_unpackhi_epi32(a0, a1);
    const __m256i t2 = _mm256_unpacklo_epi32(a2, a3), t3 = _mm256_unpackhi_epi32(a2, a3);
    a0 = _mm256_unpacklo_epi64(t0, t2);
    a1 = _mm256_unpackhi_epi64(t0, t2);
    a2 = _mm256_unpacklo_epi64(t1, t3);
    a3 = _mm256_unpackhi_epi64(t1, t3);
}

// fp16 words at p + j*stride, j = 0..7 -> 8 floats.
static AI_INLINE __m256 load_f16x8(const uint8_t* p, int stride) {
    uint64_t w[2];
    for (int i = 0; i < 2; ++i) {
        const uint8_t* q = p + 4 * i * stride;
        w[i] = (uint64_t)load_u16(q) | (uint64_t)load_u16(q + stride) << 16 | (uint64_t)load_u16(q + 2 * stride) << 32 |
               (uint64_t)load_u16(q + 3 * stride) << 48;
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)w[1], (long long)w[0]));
}

// kIQ4Values (signed: the AVX2 tier keeps Q8_0 / IQ4_NL signed, see matmul_avx2.cpp) in both
// 128-bit lanes, for vpshufb by a nibble.
static AI_INLINE __m256i iq4_levels_s8() {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kIQ4Values));
}

// Level lookup of 8 vectors of IQ4 nibble indices (signed levels).
static AI_INLINE void iq4_lookup(__m256i v[8]) {
    const __m256i lut = iq4_levels_s8();
    for (int k = 0; k < 8; ++k) v[k] = _mm256_shuffle_epi8(lut, v[k]);
}

// Four 32-byte chunks of nibbles already in lane order (p: chunk 0): v[m] = chunk m & 15 and
// v[m + 4] = (chunk m >> 4) & 15. The forms Q4_K_R, Q5_K_R, IQ4_XS_R and the panel forms' quants.
static AI_INLINE void nibble_chunks(const uint8_t* p, __m256i v[8]) {
    const __m256i lo4 = _mm256_set1_epi8(15);
    for (int m = 0; m < 4; ++m) {
        const __m256i x = _mm256_loadu_si256((const __m256i*)(p + 32 * m));
        v[m] = _mm256_and_si256(x, lo4);
        v[m + 4] = _mm256_and_si256(_mm256_srli_epi16(x, 4), lo4);
    }
}

// The 16 packed nibble bytes (at offset O) of 8 blocks m = 0..7, transposed *before* unpacking:
// P[k] lane l = packed dword k of block l, i.e. the bytes of elements 4k..4k+3 (low nibbles)
// and 16+4k..16+4k+3 (high nibbles). So dword k and dword 4+k of the unpacked groups are
// P[k] & 15 and P[k] >> 4 & 15: 4 inserts + 8 shuffles instead of unpacking 8 groups and
// then transposing 8 x 8 dwords (24 shuffles).
template <int BB, int O>
static AI_INLINE void nibbles_transposed(const uint8_t* blk, __m256i v[8]) {
    __m256i P[4];
    for (int m = 0; m < 4; ++m)  // lane 0: block m, lane 1: block m + 4
        P[m] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(blk + m * BB + O))),
                                       _mm_loadu_si128((const __m128i*)(blk + (m + 4) * BB + O)), 1);
    transpose4_inlane(P[0], P[1], P[2], P[3]);  // P[k] dword 4i+m = packed dword k of block m + 4i
    const __m256i lo4 = _mm256_set1_epi8(15);
    for (int k = 0; k < 4; ++k) {
        v[k] = _mm256_and_si256(P[k], lo4);
        v[4 + k] = _mm256_and_si256(_mm256_srli_epi16(P[k], 4), lo4);
    }
}

// The 32-bit word at offset O of blocks 0..7 (BB bytes apart) in lanes 0..7: Q5_0 / Q5_1's qh.
template <int BB, int O>
static AI_INLINE __m256i qh_lanes(const uint8_t* blk) {
    return _mm256_setr_epi32((int)load_u32(blk + O), (int)load_u32(blk + BB + O), (int)load_u32(blk + 2 * BB + O),
                             (int)load_u32(blk + 3 * BB + O), (int)load_u32(blk + 4 * BB + O),
                             (int)load_u32(blk + 5 * BB + O), (int)load_u32(blk + 6 * BB + O),
                             (int)load_u32(blk + 7 * BB + O));
}

// Q5_0 / Q5_1 high bits in the transposed layout: qh (32 bits at offset O) of block l in lane l;
// byte b of dword k is element 4k+b, so v[k] |= 16 where bit 4k+b of qh is set.
template <int BB, int O>
static AI_INLINE void q5_high_transposed(const uint8_t* blk, __m256i v[8]) {
    const __m256i qh = qh_lanes<BB, O>(blk);
    const __m256i sixteen = _mm256_set1_epi8(16);
    const __m256i bit_lo = _mm256_set1_epi32(0x08040201), bit_hi = _mm256_set1_epi32((int)0x80402010u);
    for (int k = 0; k < 8; ++k) {
        // bits 4k..4k+3 lie in byte k/2 of qh (low nibble for even k): copy it to the dword's 4 bytes
        const char c = (char)(k / 2);
        const __m256i rep = _mm256_setr_epi8(c, c, c, c, c + 4, c + 4, c + 4, c + 4, c + 8, c + 8, c + 8, c + 8, c + 12,
                                             c + 12, c + 12, c + 12, c, c, c, c, c + 4, c + 4, c + 4, c + 4, c + 8, c + 8,
                                             c + 8, c + 8, c + 12, c + 12, c + 12, c + 12);
        const __m256i bit = (k & 1) ? bit_hi : bit_lo;
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(qh, rep), bit), bit);
        v[k] = _mm256_or_si256(v[k], _mm256_and_si256(set, sixteen));
    }
}

// v |= 16 in every byte whose bit S is set in h: one shift by 4 - S (16-bit lanes; bit S of a
// byte lands on bit 4 of the same byte, whatever the neighbours), one mask, one or. The 5th bits
// of the forms Q5_0_R, Q5_1_R and Q5_K_R are laid out for this (quants.h).
template <int S>
static AI_INLINE void or_bit_as_16(__m256i& v, __m256i h) {
    __m256i x = h;
    if constexpr (S < 4) x = _mm256_slli_epi16(h, 4 - S);
    if constexpr (S > 4) x = _mm256_srli_epi16(h, S - 4);
    v = _mm256_or_si256(v, _mm256_and_si256(x, _mm256_set1_epi8(16)));
}
// or_bit_as_16 for the bits S = 0..7 of h: bit S tops v[S] (PAIRED: v[S / 2 + 4 (S % 2)], Q5_K_R's order).
template <bool PAIRED = false, int S = 0>
static AI_INLINE void or_bits_as_16(__m256i* v, __m256i h) {
    or_bit_as_16<S>(v[PAIRED ? S / 2 + 4 * (S % 2) : S], h);
    if constexpr (S < 7) or_bits_as_16<PAIRED, S + 1>(v, h);
}

// Q5_0_R / Q5_1_R high bits (quants.h): qh' (32 bits at offset O) of block l in lane l, bit 8b + k
// the 5th bit of element 4k + b, i.e. of byte b of v[k]: 3 ops per vector where
// q5_high_transposed takes 4.5.
template <int BB, int O>
static AI_INLINE void q5r_high_transposed(const uint8_t* blk, __m256i v[8]) {
    or_bits_as_16(v, qh_lanes<BB, O>(blk));
}

// A panel's E (w = D q - E) from its D, and its 8 mins M() for the types that have them.
template <WType t, class Mins>
static AI_INLINE __m256 panel32_E(__m256 D, Mins M) {
    if (t == WType::Q4_0) return _mm256_mul_ps(_mm256_set1_ps(8.0f), D);
    if (t == WType::Q5_0) return _mm256_mul_ps(_mm256_set1_ps(16.0f), D);
    if (t == WType::Q4_1 || t == WType::Q5_1) return _mm256_sub_ps(_mm256_setzero_ps(), M());
    return _mm256_setzero_ps();  // Q8_0, IQ4_NL: signed
}

// One panel of 8 blocks of a 32-element type (`blk` points at block 0) -> v[8] in panel order
// (lane l of every v[k] = group l; Q8_0 and IQ4_NL signed, E = 0) and D, E per lane.
// valid < 8: only blocks 0..valid-1 belong to the row (the rest were read past its end, or are
// zero blocks): their D and E are zeroed, so they add nothing whatever their bytes are (the
// activations past the row's end are zero, so their integer dots are 0 as well).
template <int T_>
static AI_INLINE void unpack_panel_32(const uint8_t* blk, __m256i v[8], __m256& D, __m256& E, int valid = 8) {
    constexpr WType t0 = (WType)T_;
    constexpr WType t = load_form_source(t0);  // Q5_0_R / Q5_1_R: as Q5_0 / Q5_1 but for the 5th bits
    constexpr bool FORM = t != t0;
    constexpr int BB = wtype_block_bytes(t);
    if (t == WType::Q4_0) {
        nibbles_transposed<BB, 2>(blk, v);
    } else if (t == WType::Q4_1) {
        nibbles_transposed<BB, 4>(blk, v);
    } else if (t == WType::Q5_0 || t == WType::Q5_1) {  // qh at byte 2 / 4, the nibbles 4 bytes later
        constexpr int O = t == WType::Q5_0 ? 2 : 4;
        nibbles_transposed<BB, O + 4>(blk, v);
        if (FORM)
            q5r_high_transposed<BB, O>(blk, v);
        else
            q5_high_transposed<BB, O>(blk, v);
    } else if (t == WType::IQ4_NL) {
        nibbles_transposed<BB, 2>(blk, v);
        iq4_lookup(v);  // signed level, E = 0
    } else {
        // Q8_0: signed int8 (the AVX2 tier's form; see the top of matmul_avx2.cpp). Each 128-bit half of a group goes into one lane,
        // group m next to group m + 4, so the 4 x 4 in-lane transposes finish the job without
        // the 8 lane-crossing permutes of transpose_g32.
        for (int h = 0; h < 2; ++h) {
            __m256i* z = v + 4 * h;  // z[k] -> dword 4h + k of every group
            for (int m = 0; m < 4; ++m)
                z[m] = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(blk + m * BB + 2 + 16 * h))),
                    _mm_loadu_si128((const __m128i*)(blk + (m + 4) * BB + 2 + 16 * h)), 1);
            transpose4_inlane(z[0], z[1], z[2], z[3]);  // z[k] dword 4i+m = dword 4h+k of group m + 4i
        }
    }
    D = load_f16x8(blk, BB);
    E = panel32_E<t>(D, [&] { return load_f16x8(blk + 2, BB); });
    if (valid < 8) {
        const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        D = _mm256_and_ps(D, keep);
        E = _mm256_and_ps(E, keep);
    }
}

// One panel of a panel form (Q4_0_P, Q4_1_P, Q5_0_P, Q5_1_P, IQ4_NL_P: quants.h), `p` its first
// byte -> what unpack_panel_32 makes of the 8 blocks it was made from: every field is already
// one vector with block l in lane l (8 fp16 d's, 8 m's, 8 qh's, qs dwords k = 0..3), so 2-3
// loads of 128 / 256 bits and 4 of qs replace unpack_panel_32's 16-24 scalar loads, 4 inserts and
// 8 shuffles. Same values, same lanes: the same results bit for bit.
template <int T_>
static AI_INLINE void unpack_panel_32p(const uint8_t* p, __m256i v[8], __m256& D, __m256& E) {
    constexpr WType t = load_form_source((WType)T_);
    constexpr bool MIN = t == WType::Q4_1 || t == WType::Q5_1, FIVE = t == WType::Q5_0 || t == WType::Q5_1;
    constexpr int QS = 16 * (1 + MIN) + 32 * FIVE;  // 8 x the offset of qs in the block
    nibble_chunks(p + QS, v);
    if (FIVE) or_bits_as_16(v, _mm256_loadu_si256((const __m256i*)(p + QS - 32)));  // qh' just before qs
    if (t == WType::IQ4_NL) iq4_lookup(v);
    D = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
    E = panel32_E<t>(D, [&] { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 16))); });
}

}  // namespace ymm
}  // namespace
}  // namespace pyengine
