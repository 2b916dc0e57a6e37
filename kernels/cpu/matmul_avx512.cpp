// AVX-512 tier of the quantized matmul (F + BW + VL + DQ + VNNI): 16 groups per panel,
// one zmm = 16 int32 lanes, each lane owning one group. vpdpbusd (u8 weights x s8
// activations, 4 products summed into each int32 lane) does the integer work.
//
// Everything lives in an anonymous namespace and uses no STL templates: this TU is
// compiled with -mavx512*, and no out-of-line copy of anything here may be picked
// by the linker for code that runs on a CPU without AVX-512.
//
// Per type, one entry each (end of this file), called by csrc/dispatch.cpp through
// matmul_kernels_avx512.by_type:
//   matmul_q4_0_avx512 matmul_q4_1_avx512 matmul_q5_0_avx512 matmul_q5_1_avx512 matmul_q8_0_avx512
//   matmul_q2_K_avx512 matmul_q3_K_avx512 matmul_q4_K_avx512 matmul_q5_K_avx512 matmul_q6_K_avx512
//   matmul_iq4_nl_avx512 matmul_iq4_xs_avx512 matmul_q3_K_R_avx512 matmul_q2_K_R_avx512 matmul_q4_K_R_avx512 matmul_q6_K_R_avx512 matmul_q5_K_R_avx512 matmul_q5_0_R_avx512 matmul_q5_1_R_avx512 matmul_iq4_xs_R_avx512 matmul_q4_0_P_avx512 matmul_q4_1_P_avx512 matmul_q5_0_P_avx512 matmul_q5_1_P_avx512 matmul_iq4_nl_P_avx512 matmul_bf16_avx512 matmul_f16_avx512
//   matmul_f32_avx512
// Each computes y (n, rows) = x (n, cols) @ W.T for W of its type: the same arithmetic
// as quants.matmul_<type>, the spec (activations quantized to int8 per 32 values as
// described in matmul_kernels.h; float types in float).
#include <immintrin.h>

#include "matmul_kernels.h"
#include "matmul_tier.h"
#include "panel32_ymm.h"

namespace pyengine {
namespace {

constexpr int PG = 16;  // groups (lanes) per panel

// ---- transpositions: natural group order -> "lane l holds group perm[l]" ----------
// A 4x4 transpose of dwords inside each 128-bit lane of four vectors:
// out_k (lane i) dword m = in_m (lane i) dword k.
static AI_INLINE void transpose4_inlane(__m512i& a0, __m512i& a1, __m512i& a2, __m512i& a3) {
    const __m512i t0 = _mm512_unpacklo_epi32(a0, a1), t1 = _mm512_unpackhi_epi32(a0, a1);
    const __m512i t2 = _mm512_unpacklo_epi32(a2, a3), t3 = _mm512_unpackhi_epi32(a2, a3);
    a0 = _mm512_unpacklo_epi64(t0, t2);
    a1 = _mm512_unpackhi_epi64(t0, t2);
    a2 = _mm512_unpacklo_epi64(t1, t3);
    a3 = _mm512_unpackhi_epi64(t1, t3);
}

// G = 32: v[m] holds groups 2m, 2m+1 (8 dwords each). After this, every v[k] has in
// lane 4L+m a dword of group (L&1) + 2m + 8(L>>1): perm32 below. 24 shuffles per panel.
static AI_INLINE void transpose_g32(__m512i v[8]) {
    transpose4_inlane(v[0], v[1], v[2], v[3]);
    transpose4_inlane(v[4], v[5], v[6], v[7]);
    for (int k = 0; k < 4; ++k) {
        const __m512i a = v[k], b = v[4 + k];
        v[k] = _mm512_shuffle_i32x4(a, b, 0x88);      // 128-bit lanes a0 a2 b0 b2: dwords k
        v[4 + k] = _mm512_shuffle_i32x4(a, b, 0xDD);  // a1 a3 b1 b3: dwords 4+k
    }
}
static AI_INLINE __m512i perm32() { return _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15); }

// G = 16: v[m] holds groups 4m..4m+3 (one per 128-bit lane); lane 4i+m ends up with
// group 4m+i: perm16 below. 8 shuffles per panel.
static AI_INLINE void transpose_g16(__m512i v[4]) { transpose4_inlane(v[0], v[1], v[2], v[3]); }
static AI_INLINE __m512i perm16() { return _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15); }
// perm16 as a byte shuffle: 16 per-group bytes (sub-block scales) into lane order before widening.
static AI_INLINE __m128i perm16_u8() { return _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15); }
// Lane L of a G = 16 panel (group g = 4(L%4) + L/4) <- dword (or scale byte) 8c + 4(g%2) + (g%8)/2
// of the Q2_K_R / Q3_K_R / Q6_K_R order, which is the AVX2 tier's lanes16 order per half c = g/8.
static AI_INLINE __m512i q23kr_lanes() { return _mm512_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14, 1, 3, 9, 11, 5, 7, 13, 15); }
static AI_INLINE __m128i q23kr_lanes_u8() { return _mm_setr_epi8(0, 2, 8, 10, 4, 6, 12, 14, 1, 3, 9, 11, 5, 7, 13, 15); }

// The gemv of a load-time form reads activations in the form's own lane order (kActFormLanes in
// matmul_kernels.h): lane j of a vector then meets dword j of the form's bytes as loaded, with no
// vpermd per weight vector (the forms of form_in_own_lanes, matmul_kernels.h). form_lanes(G) is the
// permutation the other sinks apply to those forms' dwords (panel lane L <- form dword idx[L]:
// perm32 for Q4_K_R and Q5_K_R, G = 32; q23kr_lanes for the G = 16 forms),
// so the gemv's lane sums come back into the usual order by the same permutation before they are
// added up (bit for bit the results of pack_w + gemm), and pack_act moves each lane L of its
// usual panel to lane idx[L].
static AI_INLINE __m512i form_lanes(int G) { return G == 32 ? perm32() : q23kr_lanes(); }
// The 16 Q3_K scales (natural group order) in the form's lane order: group 2(L%4) + L/4 of half c
// in lane 8c + L, L < 8 (the AVX2 tier's lanes16, per half)
static AI_INLINE __m128i q3kr_form_u8() { return _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15); }

// Store one finished panel: the G/4 step vectors, then the per-lane A and B floats.
// PRE: v is already in panel order (only D/E still need the lane permutation).
// LANES: A and B are already in lane order too (perm16 / perm32), no permutation left.
template <int G, bool PRE = false, bool LANES = false>
static AI_INLINE void store_panel(uint8_t* dst, __m512i* v, __m512 A_nat, __m512 B_nat) {
    if (PRE) {
    } else if (G == 32) {
        transpose_g32(v);
    } else {
        transpose_g16(v);
    }
    for (int k = 0; k < G / 4; ++k) _mm512_store_si512((void*)(dst + 64 * k), v[k]);
    const __m512i perm = G == 32 ? perm32() : perm16();
    _mm512_store_ps((float*)(dst + PG * G), LANES ? A_nat : _mm512_permutexvar_ps(perm, A_nat));
    _mm512_store_ps((float*)(dst + PG * G + 64), LANES ? B_nat : _mm512_permutexvar_ps(perm, B_nat));
}

static AI_INLINE float half(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }

// The fp16 word at offset `o` of blocks at(0..15) -> 16 floats. Scalar loads packed four to
// a 64-bit word: cheaper here than vpgatherdd or a vpermt2w gather (both measured).
template <class At>
static AI_INLINE __m512 load_f16x16(const At& at, int o) {
    uint64_t w[4];
    for (int i = 0; i < 4; ++i)
        w[i] = (uint64_t)load_u16(at(4 * i) + o) | (uint64_t)load_u16(at(4 * i + 1) + o) << 16 |
               (uint64_t)load_u16(at(4 * i + 2) + o) << 32 | (uint64_t)load_u16(at(4 * i + 3) + o) << 48;
    const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set_epi64x((long long)w[1], (long long)w[0])),
                                              _mm_set_epi64x((long long)w[3], (long long)w[2]), 1);
    return _mm512_cvtph_ps(h);
}

// Block j of a panel: consecutive blocks, or (last panel of a row) an all-zero block past
// the row's end, which unpacks to D = E = 0 and so adds nothing. No copying.
alignas(64) static const uint8_t kZeroBlock[64] = {0};
struct FullPanel {
    const uint8_t* blk;
    int bb;
    const uint8_t* operator()(int j) const { return blk + j * bb; }
};
struct PartialPanel {
    const uint8_t* blk;
    int bb, nb;
    const uint8_t* operator()(int j) const { return j < nb ? blk + j * bb : kZeroBlock; }
};

// ---- weights: GGUF blocks -> natural-order unsigned bytes + D, E --------------------

// Two nibble blocks of 16 bytes -> one zmm [a&15, a>>4, b&15, b>>4] (elements 0..31 of each).
static AI_INLINE __m512i nibbles_2x16(const uint8_t* a, const uint8_t* b) {
    const __m512i sh = _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                         0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i x = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)a))),
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)b)), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(x, sh), _mm512_set1_epi8(15));
}

// kIQ4Values[i] + 128 in every 128-bit lane: vpshufb by a nibble gives the level as an unsigned byte.
static AI_INLINE __m512i iq4_levels_u8() {
    return _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128((const __m128i*)kIQ4Values), _mm_set1_epi8((char)0x80)));
}

// Q4_0 / Q4_1 / IQ4_NL for a sink that takes pre-transposed panels (Sink::kPre: the gemv):
// the 16 packed nibble bytes (at offset O) of the 16 blocks are transposed *before* unpacking,
// P[k] lane l = packed dword k of block perm32[l] (elements 4k..4k+3 in its low nibbles,
// 16+4k.. in its high ones), so v[k] = P[k] & 15 and v[4+k] = P[k] >> 4 & 15 are already in
// panel order: 12 inserts + 8 in-lane shuffles instead of 8 nibbles_2x16 and the 24-shuffle
// transpose_g32 (the AVX2 tier's nibbles_transposed, at 16 lanes).
template <int O, class At>
static AI_INLINE void nibbles_t16(const At& at, __m512i* v) {
    // Z[m] 128-bit lane i = block perm32[4i + m]; transpose4_inlane then puts it in lane 4i + m
    static constexpr int kBlock[4][4] = {{0, 1, 8, 9}, {2, 3, 10, 11}, {4, 5, 12, 13}, {6, 7, 14, 15}};
    __m512i Z[4];
    for (int m = 0; m < 4; ++m) {
        const __m512i z = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(at(kBlock[m][0]) + O)));
        const __m512i z1 = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i*)(at(kBlock[m][1]) + O)), 1);
        const __m512i z2 = _mm512_inserti32x4(z1, _mm_loadu_si128((const __m128i*)(at(kBlock[m][2]) + O)), 2);
        Z[m] = _mm512_inserti32x4(z2, _mm_loadu_si128((const __m128i*)(at(kBlock[m][3]) + O)), 3);
    }
    transpose4_inlane(Z[0], Z[1], Z[2], Z[3]);
    const __m512i lo4 = _mm512_set1_epi8(15);
    for (int k = 0; k < 4; ++k) {
        v[k] = _mm512_and_si512(Z[k], lo4);
        v[4 + k] = _mm512_and_si512(_mm512_srli_epi16(Z[k], 4), lo4);
    }
}

// ymm::or_bit_as_16 at 512 bits: v |= 16 in every byte whose bit S is set in h; one shift by
// 4 - S and one vpternlogd (v | (shifted & 0x10)).
template <int S>
static AI_INLINE void or_bit_as_16z(__m512i& v, __m512i h) {
    __m512i x = h;
    if constexpr (S < 4) x = _mm512_slli_epi16(h, 4 - S);
    if constexpr (S > 4) x = _mm512_srli_epi16(h, S - 4);
    v = _mm512_ternarylogic_epi32(v, x, _mm512_set1_epi8(16), 0xF8);
}
// or_bit_as_16z for the bits S = 0..7 of h: bit S tops v[S] (PAIRED: v[S / 2 + 4 (S % 2)], Q5_K_R's order).
template <bool PAIRED = false, int S = 0>
static AI_INLINE void or_bits_as_16z(__m512i* v, __m512i h) {
    or_bit_as_16z<S>(v[PAIRED ? S / 2 + 4 * (S % 2) : S], h);
    if constexpr (S < 7) or_bits_as_16z<PAIRED, S + 1>(v, h);
}

// Q5_0_R / Q5_1_R high bits (quants.h) for nibbles_t16's lanes (lane l = block perm32[l]): bit
// 8b + k of a block's qh' is the 5th bit of byte b of v[k].
template <int O, class At>
static AI_INLINE void q5r_high_t16(const At& at, __m512i* v) {
    const __m512i qh = _mm512_setr_epi32(
        (int)load_u32(at(0) + O), (int)load_u32(at(2) + O), (int)load_u32(at(4) + O), (int)load_u32(at(6) + O),
        (int)load_u32(at(1) + O), (int)load_u32(at(3) + O), (int)load_u32(at(5) + O), (int)load_u32(at(7) + O),
        (int)load_u32(at(8) + O), (int)load_u32(at(10) + O), (int)load_u32(at(12) + O), (int)load_u32(at(14) + O),
        (int)load_u32(at(9) + O), (int)load_u32(at(11) + O), (int)load_u32(at(13) + O), (int)load_u32(at(15) + O));
    or_bits_as_16z(v, qh);
}

// One panel = 16 blocks of a 32-element type, block j at at(j).
// valid < 16: only blocks 0..valid-1 belong to the row (the rest were read past its end, or
// are zero blocks): their D and E are zeroed, so they add nothing whatever their bytes are
// (the activations past the row's end are zero, so their integer dots are 0 as well).
template <int T_, class At, class Sink>
static AI_INLINE void pack_panel_32(const At& at, Sink& sink, int valid = 16) {
    constexpr WType t = load_form_source((WType)T_);  // Q5_0_R / Q5_1_R: as Q5_0 / Q5_1 but for the 5th bits
    constexpr bool FORM = t != (WType)T_;             // always in panel order (any sink)
    constexpr bool PRE = FORM || (Sink::kPre && (t == WType::Q4_0 || t == WType::Q4_1 || t == WType::IQ4_NL));
    __m512i v[8];
    __m512 D, E;
    if (FORM) {
        nibbles_t16<t == WType::Q5_0 ? 6 : 8>(at, v);
        q5r_high_t16<t == WType::Q5_0 ? 2 : 4>(at, v);
    } else if (PRE) {
        nibbles_t16<t == WType::Q4_1 ? 4 : 2>(at, v);
        if (t == WType::IQ4_NL)
            for (int k = 0; k < 8; ++k) v[k] = _mm512_shuffle_epi8(iq4_levels_u8(), v[k]);  // level + 128
    } else {
        for (int m = 0; m < 8; ++m) {
            const uint8_t* b0 = at(2 * m);
            const uint8_t* b1 = at(2 * m + 1);
            if (t == WType::Q4_0) {
                v[m] = nibbles_2x16(b0 + 2, b1 + 2);
            } else if (t == WType::Q4_1) {
                v[m] = nibbles_2x16(b0 + 4, b1 + 4);
            } else if (t == WType::Q5_0) {
                // bit e of qh is the 5th bit of element e: a byte mask over the 64 elements
                const uint64_t hb = (uint64_t)load_u32(b0 + 2) | (uint64_t)load_u32(b1 + 2) << 32;
                v[m] = _mm512_or_si512(nibbles_2x16(b0 + 6, b1 + 6),
                                       _mm512_maskz_mov_epi8((__mmask64)hb, _mm512_set1_epi8(16)));
            } else if (t == WType::Q5_1) {
                const uint64_t hb = (uint64_t)load_u32(b0 + 4) | (uint64_t)load_u32(b1 + 4) << 32;
                v[m] = _mm512_or_si512(nibbles_2x16(b0 + 8, b1 + 8),
                                       _mm512_maskz_mov_epi8((__mmask64)hb, _mm512_set1_epi8(16)));
            } else if (t == WType::IQ4_NL) {
                v[m] = _mm512_shuffle_epi8(iq4_levels_u8(), nibbles_2x16(b0 + 2, b1 + 2));  // level + 128
            } else {
                const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(b0 + 2))),
                                                     _mm256_loadu_si256((const __m256i*)(b1 + 2)), 1);
                v[m] = _mm512_xor_si512(x, _mm512_set1_epi8((char)0x80));  // int8 -> int8 + 128
            }
        }
    }
    D = load_f16x16(at, 0);
    if (t == WType::Q4_0) {
        E = _mm512_mul_ps(_mm512_set1_ps(8.0f), D);
    } else if (t == WType::Q4_1) {
        E = _mm512_sub_ps(_mm512_setzero_ps(), load_f16x16(at, 2));
    } else if (t == WType::Q5_0) {
        E = _mm512_mul_ps(_mm512_set1_ps(16.0f), D);
    } else if (t == WType::Q5_1) {
        E = _mm512_sub_ps(_mm512_setzero_ps(), load_f16x16(at, 2));
    } else {  // Q8_0, IQ4_NL
        E = _mm512_mul_ps(_mm512_set1_ps(128.0f), D);
    }
    if (valid < 16) {
        const __mmask16 keep = (__mmask16)((1u << valid) - 1);
        D = _mm512_maskz_mov_ps(keep, D);
        E = _mm512_maskz_mov_ps(keep, E);
    }
    sink.template put<32, PRE>(v, D, E);
}

// overread: bytes past the row's end that may be read (the next rows of the same call). A
// partial last panel then reads whole blocks from there and masks them off (pack_panel_32's
// `valid`): measured 2-3x cheaper than building it from zero blocks, which made a 576-column
// row (SmolLM2) cost as much as a 1536-column one.
template <int T_, class Sink>
static AI_INLINE void panels_32(const uint8_t* row, int64_t nb, Sink& sink, int64_t overread) {
    constexpr WType t = (WType)T_;
    constexpr int BB = wtype_block_bytes(t);
    int64_t b = 0;
    for (; b + 16 <= nb; b += 16) pack_panel_32<T_>(FullPanel{row + b * BB, BB}, sink);
    if (b == nb) return;
    const int rem = (int)(nb - b);
    if ((16 - rem) * BB <= overread)
        pack_panel_32<T_>(FullPanel{row + b * BB, BB}, sink, rem);
    else
        pack_panel_32<T_>(PartialPanel{row + b * BB, BB, rem}, sink);
}

// Q4_K: one panel = two 256-element super-blocks (8 groups of 32 each).
// The 8 scales / 8 mins of a super-block as two 64-bit words (byte j = sub-block j),
// same bit surgery as q4k_scales_mins() in quants.h but kept in registers.
static AI_INLINE void q4k_scales_mins_u64(const uint8_t* q, uint64_t& sc, uint64_t& mn) {
    const uint32_t w0 = load_u32(q), w1 = load_u32(q + 4), w2 = load_u32(q + 8);
    const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
    sc = (uint64_t)(w0 & lo6) | (uint64_t)((w2 & lo4) | (((w0 >> 6) & lo2) << 4)) << 32;
    mn = (uint64_t)(w1 & lo6) | (uint64_t)(((w2 >> 4) & lo4) | (((w1 >> 6) & lo2) << 4)) << 32;
}

static AI_INLINE void q4k_nibbles(const uint8_t* blk, __m512i* v) {
    // epi16 shift counts: low 256 bits by 0 (low nibbles), high 256 bits by 4 (high nibbles)
    const __m512i sh = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i lo4 = _mm512_set1_epi8(15);
    for (int c = 0; c < 4; ++c) {
        const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 16 + 32 * c)));
        v[c] = _mm512_and_si512(_mm512_srlv_epi16(x, sh), lo4);  // groups 2c, 2c+1
    }
}

// Q5_K: Q4_K's nibbles (at blk + 48) plus the 5th bits: bit 2c of qh[l] tops value l of
// group 2c (low 256 bits of v[c]), bit 2c+1 of group 2c+1 (high 256 bits).
static AI_INLINE void q5k_values(const uint8_t* blk, __m512i* v) {
    q4k_nibbles(blk + 32, v);
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 16)));
    const __m512i one = _mm512_set1_epi8(1);
    for (int c = 0; c < 4; ++c) {
        const __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * c)), _mm256_set1_epi16((short)(2 * c + 1)), 1);
        const __m512i hb = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, sh), one), 4);
        v[c] = _mm512_or_si512(v[c], hb);
    }
}

// Q4_K straight into the transposed panel order (what transpose_g32 makes of q4k_nibbles):
// v[k] lane 4L+m = dword k of group (L&1) + 2m + 8(L>>1), i.e. nibble (L&1) of qs dword
// 8m + k of super-block L>>1. One vpermt2d per super-block and half gathers those dwords
// (R lane j = qs dwords j, 8+j, 16+j, 24+j), one vshufi32x4 per k spreads them to the
// four 128-bit lanes: 12 shuffles per panel instead of 24. Same bytes, same arithmetic.
static AI_INLINE void q4k_values_t(const uint8_t* b0, const uint8_t* b1, __m512i* v) {
    const __m512i idx0 = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
    const __m512i idx1 = _mm512_setr_epi32(4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31);
    // epi16 shift counts per 128-bit lane: 0 (low nibbles), 4 (high), 0, 4
    const __m512i sh = _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                         0x0004000400040004LL, 0x0004000400040004LL);
    const __m512i lo4 = _mm512_set1_epi8(15);
    const __m512i a0 = _mm512_loadu_si512((const void*)(b0 + 16)), a1 = _mm512_loadu_si512((const void*)(b0 + 80));
    const __m512i R0 = _mm512_permutex2var_epi32(a0, idx0, a1), S0 = _mm512_permutex2var_epi32(a0, idx1, a1);
    __m512i R1 = _mm512_setzero_si512(), S1 = _mm512_setzero_si512();
    if (b1) {
        const __m512i c0 = _mm512_loadu_si512((const void*)(b1 + 16)), c1 = _mm512_loadu_si512((const void*)(b1 + 80));
        R1 = _mm512_permutex2var_epi32(c0, idx0, c1);
        S1 = _mm512_permutex2var_epi32(c0, idx1, c1);
    }
    v[0] = _mm512_shuffle_i32x4(R0, R1, 0x00);
    v[1] = _mm512_shuffle_i32x4(R0, R1, 0x55);
    v[2] = _mm512_shuffle_i32x4(R0, R1, 0xAA);
    v[3] = _mm512_shuffle_i32x4(R0, R1, 0xFF);
    v[4] = _mm512_shuffle_i32x4(S0, S1, 0x00);
    v[5] = _mm512_shuffle_i32x4(S0, S1, 0x55);
    v[6] = _mm512_shuffle_i32x4(S0, S1, 0xAA);
    v[7] = _mm512_shuffle_i32x4(S0, S1, 0xFF);
    for (int k = 0; k < 8; ++k) v[k] = _mm512_and_si512(_mm512_srlv_epi16(v[k], sh), lo4);
}

// Q5_K's 5th bits into the order q4k_values_t makes: v[k] lane 4L+m holds dword k of group
// g = (L&1) + 2m of super-block L>>1, whose 5th bits are bit g of the bytes of that
// super-block's qh dword k. One vpermd brings the dword to the lane, one vprolvd by 4 - g turns
// bit g of every byte into bit 4, one vpternlogd ors it in: 3 ops per vector, and no transpose.
static AI_INLINE void q5k_high_t(const uint8_t* b0, const uint8_t* b1, __m512i* v) {
    const __m256i h1 = b1 ? _mm256_loadu_si256((const __m256i*)(b1 + 16)) : _mm256_setzero_si256();
    const __m512i qh = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(b0 + 16))), h1, 1);
    const __m512i base = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8);  // qh dwords of sb L>>1
    const __m512i rot = _mm512_setr_epi32(4, 2, 0, 30, 3, 1, 31, 29, 4, 2, 0, 30, 3, 1, 31, 29);  // (4 - g) mod 32
    const __m512i bit4 = _mm512_set1_epi8(0x10);
    for (int k = 0; k < 8; ++k) {
        const __m512i h = _mm512_rolv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(k)), qh), rot);
        v[k] = _mm512_ternarylogic_epi32(v[k], h, bit4, 0xF8);  // v | (h & 0x10)
    }
}

// Q4_K / Q5_K for a sink that takes pre-transposed panels (Sink::kPre: the gemv's DotSink) go
// through q4k_values_t (+ q5k_high_t); the packing StoreSink keeps q4k_nibbles (q5k_values) +
// transpose_g32 (measured faster there). Same bytes in the same order either way.
// Q4_K_R (block_q4_K_R in quants.h; R = true below): chunk k of each super-block holds, in
// the AVX2 lanes' order (lane = group), the nibbles of dwords k and k + 4 of every group; the
// panel's lane order of two super-blocks is perm32 of their 16 groups, so one vpermd per chunk
// pair and two nibble masks give v[k] and v[k + 4]. Any sink, no transpose.
// FL (a sink with kFormLanes): lanes left in the form's order, group 8s + l of super-block s in
// lane 8s + l (the activations are in that order too).
// O: where the nibbles start (IQ4_XS_R's at byte 8).
template <bool FL, int O = 16>
static AI_INLINE void q4kr_values(const uint8_t* b0, const uint8_t* b1, __m512i* v) {
    const __m512i lo4 = _mm512_set1_epi8(15);
    for (int k = 0; k < 4; ++k) {
        const __m256i hi = b1 ? _mm256_loadu_si256((const __m256i*)(b1 + O + 32 * k)) : _mm256_setzero_si256();
        __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(b0 + O + 32 * k))), hi, 1);
        if (!FL) x = _mm512_permutexvar_epi32(perm32(), x);
        v[k] = _mm512_and_si512(x, lo4);
        v[k + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4);
    }
}

// Q5_K_R (block_q5_K_R in quants.h): Q4_K_R's nibbles 32 bytes later, and the two super-blocks'
// hb side by side in the same lanes (perm32 unless FL): the 5th bit of the value in byte p of v[m + 4s]
// is bit 2m + s of that lane's hb byte, brought to bit 4 by one 16-bit shift (it stays inside its
// byte) and or-ed in under the 0x10 mask by one vpternlogd.
template <bool FL>
static AI_INLINE void q5kr_values(const uint8_t* b0, const uint8_t* b1, __m512i* v) {
    q4kr_values<FL>(b0 + 32, b1 ? b1 + 32 : nullptr, v);
    const __m256i h1 = b1 ? _mm256_loadu_si256((const __m256i*)(b1 + 16)) : _mm256_setzero_si256();
    __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(b0 + 16))), h1, 1);
    if (!FL) h = _mm512_permutexvar_epi32(perm32(), h);
    or_bits_as_16z<true>(v, h);  // bit 2m + s of hb tops v[m + 4s]
}

template <bool FIVE, class Sink, bool R = false>
static AI_INLINE void pack_panel_q4k(const uint8_t* b0, const uint8_t* b1, Sink& sink) {
    constexpr bool PRE = Sink::kPre || R;
    __m512i v[8];
    uint64_t sc0, mn0, sc1 = 0, mn1 = 0;
    if (R) {
        if (FIVE)
            q5kr_values<Sink::kFormLanes>(b0, b1, v);
        else
            q4kr_values<Sink::kFormLanes>(b0, b1, v);
    } else if (PRE) {  // all 8 vectors, already transposed (Q5_K: its nibbles start 32 bytes later)
        q4k_values_t(FIVE ? b0 + 32 : b0, FIVE && b1 ? b1 + 32 : b1, v);
        if (FIVE) q5k_high_t(b0, b1, v);
    } else if (FIVE)
        q5k_values(b0, v);
    else
        q4k_nibbles(b0, v);
    q4k_scales_mins_u64(b0 + 4, sc0, mn0);
    if (b1) {
        if (!PRE) {
            if (FIVE)
                q5k_values(b1, v + 4);
            else
                q4k_nibbles(b1, v + 4);
        }
        q4k_scales_mins_u64(b1 + 4, sc1, mn1);
    } else if (!PRE) {
        for (int c = 4; c < 8; ++c) v[c] = _mm512_setzero_si512();
    }
    // d, dmin of both super-blocks (fp16 words 0, 1 of each) converted at once: [d0 m0 d1 m1],
    // then d0 / m0 to lanes 0-7 and d1 / m1 to lanes 8-15 (one vpermps each)
    const __m128 dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, b1 ? (int)load_u32(b1) : 0, (int)load_u32(b0)));
    const __m512 dv = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2), _mm512_castps128_ps512(dm));
    const __m512 mv = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3), _mm512_castps128_ps512(dm));
    const __m512 scf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi64x((long long)sc1, (long long)sc0)));
    const __m512 mnf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi64x((long long)mn1, (long long)mn0)));
    // the form's lanes are the groups' natural order: D and E as they are (LANES)
    if (R && Sink::kFormLanes)
        sink.template put<32, true, true>(v, _mm512_mul_ps(dv, scf), _mm512_mul_ps(mv, mnf));
    else
        sink.template put<32, PRE>(v, _mm512_mul_ps(dv, scf), _mm512_mul_ps(mv, mnf));
}

// Q6_K: one panel = one super-block = 16 groups of 16.
template <class Sink>
static AI_INLINE void pack_panel_q6k(const uint8_t* blk, Sink& sink) {
    const block_q6_K* b = (const block_q6_K*)blk;
    const __m512i lo4 = _mm512_set1_epi8(15), hi2 = _mm512_set1_epi8(0x30);
    // qh bit pair s of every byte rotated to bits 4-5 of the same byte (dword rotation by 4 - s):
    // A: bits 0-1 | 2-3 (rotate 4 | 2), B: bits 4-5 | 6-7 (rotate 0 | -2)
    const __m512i rotA = _mm512_inserti64x4(_mm512_set1_epi32(4), _mm256_set1_epi32(2), 1);
    const __m512i rotB = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi32(30), 1);
    __m512i v[4];
    for (int h = 0; h < 2; ++h) {
        const __m512i ql = _mm512_loadu_si512((const void*)(b->ql + 64 * h));
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(b->qh + 32 * h)));
        const __m512i hA = _mm512_and_si512(_mm512_rolv_epi32(qh, rotA), hi2);
        const __m512i hB = _mm512_and_si512(_mm512_rolv_epi32(qh, rotB), hi2);
        v[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, lo4), hA);                         // elements 0..63
        v[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), lo4), hB);  // 64..127
    }
    // the 16 scales shuffled into perm16's lane order before widening (put<16, false, LANES>)
    const __m512 sc =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)b->scales), perm16_u8())));
    const __m512 D = _mm512_mul_ps(_mm512_set1_ps(half(blk + 208)), sc);
    const __m512 E = _mm512_mul_ps(_mm512_set1_ps(32.0f), D);
    sink.template put<16, false, true>(v, D, E);
}

// Q6_K_R (block_q6_K_R in quants.h): both halves' chunks side by side, their dwords permuted
// into this tier's lanes (q23kr_lanes, three vpermd), then Q6_K's nibble and bit-pair masks,
// no transpose; the scale bytes through the same permutation. Bit-identical to pack_panel_q6k.
// A sink with kFormLanes (the gemv) skips both permutations: its activations are in the form's order.
template <class Sink>
static AI_INLINE void pack_panel_q6kr(const uint8_t* blk, Sink& sink) {
    constexpr bool FL = Sink::kFormLanes;
    const __m512i lo4 = _mm512_set1_epi8(15), hi2 = _mm512_set1_epi8(0x30), idx = q23kr_lanes();
    auto lanes = [&](__m512i x) { return FL ? x : _mm512_permutexvar_epi32(idx, x); };
    auto halves = [&](int o) {  // bytes o .. o+31 of half 0 | of half 1 (64 bytes later), in lane order
        return lanes(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(blk + o))),
                                        _mm256_loadu_si256((const __m256i*)(blk + o + 64)), 1));
    };
    const __m512i qa = halves(0), qb = halves(32);
    const __m512i qh = lanes(_mm512_loadu_si512((const void*)(blk + 128)));
    __m512i v[4];
    v[0] = _mm512_or_si512(_mm512_and_si512(qa, lo4), _mm512_and_si512(_mm512_slli_epi32(qh, 4), hi2));
    v[1] = _mm512_or_si512(_mm512_and_si512(qb, lo4), _mm512_and_si512(_mm512_slli_epi32(qh, 2), hi2));
    v[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(qa, 4), lo4), _mm512_and_si512(qh, hi2));
    v[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(qb, 4), lo4), _mm512_and_si512(_mm512_srli_epi32(qh, 2), hi2));
    const __m128i sc8 = _mm_loadu_si128((const __m128i*)(blk + 192));
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(FL ? sc8 : _mm_shuffle_epi8(sc8, q23kr_lanes_u8())));
    const __m512 D = _mm512_mul_ps(_mm512_set1_ps(half(blk + 208)), sc);
    sink.template put<16, true, true>(v, D, _mm512_mul_ps(_mm512_set1_ps(32.0f), D));
}

// Q2_K / Q3_K: one panel = one super-block = 16 groups of 16. v[m] holds values 64m .. 64m+63,
// i.e. bit pairs j = 2(m%2) (low 256 bits) and j+1 (high) of the 32 bytes qs[32c ..], c = m/2;
// Q3_K adds bit 4c+j of hmask[l] as the value 4.
//
// Q2_K / Q3_K into a sink that takes pre-transposed panels (Sink::kPre: the gemv; for Q2_K
// measured 1.5-6% faster than the transpose, benchmarks/README.md): the values go straight
// to the order transpose_g16 makes (lane L = 4i + m holds group g = 4m + i, v[k] its dword k):
// group g is values 16g .. 16g+15, i.e. bit pair jj = (g%8)/2 of qs bytes 32c + 16(g%2) + 0..15,
// c = g/8, so v[k] lane L = (qs dword 8c + 4(g%2) + k) >> 2jj, masked to 2 bits per byte: one
// vpermd, one vpsrlvd, one vpand per k instead of 2.5 unpacks plus the 8-shuffle transpose.
// Q3_K's high bit, bit 4c + jj of hmask byte 16(g%2) + 4k + b, is rotated to bit 2 of its byte
// (vprolvd by 2 - (4c + jj)) and or-ed in.
struct Q23kLanes {  // the per-lane constants of that order
    __m512i qidx[4], hidx[4], shift, rot;
    Q23kLanes() {
        alignas(64) int32_t qi[4][16], hi[4][16], sh[16], ro[16];
        for (int L = 0; L < 16; ++L) {
            const int g = 4 * (L % 4) + L / 4, c = g / 8, jj = (g % 8) / 2;
            for (int k = 0; k < 4; ++k) qi[k][L] = 8 * c + 4 * (g % 2) + k, hi[k][L] = 4 * (g % 2) + k;
            sh[L] = 2 * jj;
            ro[L] = (2 - (4 * c + jj)) & 31;
        }
        for (int k = 0; k < 4; ++k)
            qidx[k] = _mm512_load_si512((const void*)qi[k]), hidx[k] = _mm512_load_si512((const void*)hi[k]);
        shift = _mm512_load_si512((const void*)sh);
        rot = _mm512_load_si512((const void*)ro);
    }
};

template <bool THREE, class Sink>
static AI_INLINE void pack_panel_q23k(const uint8_t* blk, Sink& sink) {
    const uint8_t* qs = blk + (THREE ? 32 : 16);
    constexpr bool PRE = Sink::kPre;
    __m512i v[4];
    if (PRE) {
        static const Q23kLanes lanes;
        const __m512i q = _mm512_loadu_si512((const void*)qs);
        const __m512i h = THREE ? _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)blk)) : _mm512_setzero_si512();
        const __m512i three = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(lanes.qidx[k], q), lanes.shift), three);
            if (THREE)  // v | (rotated hmask & 4)
                v[k] = _mm512_ternarylogic_epi32(v[k], _mm512_rolv_epi32(_mm512_permutexvar_epi32(lanes.hidx[k], h), lanes.rot),
                                                 four, 0xF8);
        }
    } else {
        const __m512i three = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
        const __m512i hm = THREE ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)blk)) : _mm512_setzero_si512();
        for (int m = 0; m < 4; ++m) {
            const int c = m >> 1, j = 2 * (m & 1);
            const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(qs + 32 * c)));
            const __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * j)), _mm256_set1_epi16((short)(2 * j + 2)), 1);
            v[m] = _mm512_and_si512(_mm512_srlv_epi16(x, sh), three);
            if (THREE) {
                const __m512i hs = _mm512_inserti64x4(_mm512_set1_epi16((short)(4 * c + j)),
                                                      _mm256_set1_epi16((short)(4 * c + j + 1)), 1);
                v[m] = _mm512_or_si512(v[m], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(hm, hs), one), 2));
            }
        }
    }
    // the 16 sub-block scales shuffled into perm16's lane order before widening: D and E need
    // no lane permutation later (put<16, PRE, LANES = true>)
    const __m128i lanes = perm16_u8();
    __m512 D, E;
    if (THREE) {
        D = _mm512_mul_ps(_mm512_set1_ps(half(blk + 108)),
                          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(q3k_scales_x16(blk + 96), lanes))));
        E = _mm512_mul_ps(_mm512_set1_ps(4.0f), D);
    } else {
        const __m512i s8 = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)blk), lanes));
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk + 80)));  // d, dmin
        D = _mm512_mul_ps(_mm512_broadcastss_ps(dm), _mm512_cvtepi32_ps(_mm512_and_si512(s8, _mm512_set1_epi32(15))));
        E = _mm512_mul_ps(_mm512_broadcastss_ps(_mm_movehdup_ps(dm)), _mm512_cvtepi32_ps(_mm512_srli_epi32(s8, 4)));
    }
    sink.template put<16, PRE, true>(v, D, E);
}

// Q3_K_R (block_q3_K_R in quants.h): one super-block straight into the panel order (PRE). Its
// ql bytes hold the groups in the AVX2 tier's lane order, half by half; one vpermd per vector
// puts lane L of this tier's order (group g = 4(L%4) + L/4, perm16) where it needs to be, from
// dword 8c + 4(g%2) + (g%8)/2 (c = g/8). Then as the AVX2 unpacker, at 512 bits: the high
// bits of half 1 are shifted by 2 (per-lane shift), a bitwise select (vpternlogd) joins
// them to the low bits, and v[k] is one of the two results (shifted by 4 for k >= 2) & 7:
// 14 ops for 256 values where the Q3_K block takes 24. Same values, scales and lanes as
// pack_panel_q23k<true>, so the same results bit for bit.
// A sink with kFormLanes (the gemv) leaves the dwords in the form's order (half c in lanes 8c ..),
// as its activations are.
template <class Sink>
static AI_INLINE void pack_panel_q3kr(const uint8_t* blk, Sink& sink) {
    constexpr bool FL = Sink::kFormLanes;
    const __m512i idx = q23kr_lanes();
    const __m512i hshift = FL ? _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi32(2), 1)  // 2 in half 1
                              : _mm512_setr_epi32(0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 2, 2);
    const __m512i m33 = _mm512_set1_epi8(0x33), seven = _mm512_set1_epi8(7);
    auto lanes = [&](__m512i x) { return FL ? x : _mm512_permutexvar_epi32(idx, x); };
    const __m512i x = lanes(_mm512_loadu_si512((const void*)(blk + 32)));
    const __m512i h = _mm512_sllv_epi32(lanes(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)blk))), hshift);
    // 0xE4: m33 ? first : second, bit by bit. Bits 3 and 7 come from h and are masked off below.
    const __m512i t0 = _mm512_ternarylogic_epi32(x, h, m33, 0xE4);
    const __m512i t1 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(x, 2), _mm512_srli_epi32(h, 1), m33, 0xE4);
    __m512i v[4];
    v[0] = _mm512_and_si512(t0, seven);
    v[1] = _mm512_and_si512(t1, seven);
    v[2] = _mm512_and_si512(_mm512_srli_epi32(t0, 4), seven);
    v[3] = _mm512_and_si512(_mm512_srli_epi32(t1, 4), seven);
    const __m128i order = FL ? q3kr_form_u8() : perm16_u8();
    const __m512 D = _mm512_mul_ps(_mm512_set1_ps(half(blk + 108)),
                                   _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(q3k_scales_x16(blk + 96), order))));
    sink.template put<16, true, true>(v, D, _mm512_mul_ps(_mm512_set1_ps(4.0f), D));
}

// Q2_K_R (block_q2_K_R in quants.h): one super-block, its ql dwords permuted into this tier's
// lanes (one vpermd), then v[k] = (ql >> 2k) & 3: 8 ops where Q2_K takes 12; the scale bytes
// go through the same permutation as one byte shuffle. Bit-identical to pack_panel_q23k<false>.
template <class Sink>
static AI_INLINE void pack_panel_q2kr(const uint8_t* blk, Sink& sink) {
    constexpr bool FL = Sink::kFormLanes;  // the gemv: the form's order, as its activations
    const __m512i three = _mm512_set1_epi8(3);
    const __m512i ql = _mm512_loadu_si512((const void*)(blk + 16));
    const __m512i x = FL ? ql : _mm512_permutexvar_epi32(q23kr_lanes(), ql);
    __m512i v[4];
    v[0] = _mm512_and_si512(x, three);
    v[1] = _mm512_and_si512(_mm512_srli_epi32(x, 2), three);
    v[2] = _mm512_and_si512(_mm512_srli_epi32(x, 4), three);
    v[3] = _mm512_and_si512(_mm512_srli_epi32(x, 6), three);
    const __m128i sb = _mm_loadu_si128((const __m128i*)blk);
    const __m512i s8 = _mm512_cvtepu8_epi32(FL ? sb : _mm_shuffle_epi8(sb, q23kr_lanes_u8()));
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk + 80)));  // d, dmin
    const __m512 D = _mm512_mul_ps(_mm512_broadcastss_ps(dm), _mm512_cvtepi32_ps(_mm512_and_si512(s8, _mm512_set1_epi32(15))));
    const __m512 E = _mm512_mul_ps(_mm512_broadcastss_ps(_mm_movehdup_ps(dm)), _mm512_cvtepi32_ps(_mm512_srli_epi32(s8, 4)));
    sink.template put<16, true, true>(v, D, E);
}

// IQ4_XS: one panel = two super-blocks (8 groups of 32 each); group j's nibbles are qs[16j ..].
static AI_INLINE void iq4xs_half(const uint8_t* blk, __m512i* v) {
    const __m512i lut = iq4_levels_u8();
    for (int m = 0; m < 4; ++m) v[m] = _mm512_shuffle_epi8(lut, nibbles_2x16(blk + 8 + 32 * m, blk + 24 + 32 * m));
}

// IQ4_XS straight into the transposed panel order (the one q4k_values_t makes: v[k] lane l holds
// dword k of group g = (l>>2 & 1) + 2(l & 3) + 8(l >> 3)). Dword k of group g is the low (k < 4)
// or high (k >= 4) nibbles of qs dword 4(g%8) + k%4 of super-block g/8: per k < 4 one vpermt2d per
// super-block gathers those dwords, a blend joins the two, and the two nibble halves are v[k] and
// v[k+4]; 12 permutes and blends per panel instead of 8 nibble extractions and the 24-shuffle
// transpose. Same bytes, same arithmetic.
static AI_INLINE void iq4xs_values_t(const uint8_t* b0, const uint8_t* b1, __m512i* v) {
    const __m512i lut = iq4_levels_u8(), lo4 = _mm512_set1_epi8(15);
    const __m512i gi4 = _mm512_setr_epi32(0, 8, 16, 24, 4, 12, 20, 28, 0, 8, 16, 24, 4, 12, 20, 28);  // 4 (g % 8)
    const __m512i a0 = _mm512_loadu_si512((const void*)(b0 + 8)), a1 = _mm512_loadu_si512((const void*)(b0 + 72));
    __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512();
    if (b1) {
        c0 = _mm512_loadu_si512((const void*)(b1 + 8));
        c1 = _mm512_loadu_si512((const void*)(b1 + 72));
    }
    for (int k = 0; k < 4; ++k) {
        const __m512i idx = _mm512_add_epi32(gi4, _mm512_set1_epi32(k));
        const __m512i p = _mm512_mask_blend_epi32((__mmask16)0xFF00, _mm512_permutex2var_epi32(a0, idx, a1),
                                                  _mm512_permutex2var_epi32(c0, idx, c1));
        v[k] = _mm512_shuffle_epi8(lut, _mm512_and_si512(p, lo4));                             // level + 128
        v[k + 4] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(p, 4), lo4));
    }
}

// IQ4_XS: a row's last, half-filled panel (an odd number of super-blocks, e.g. Qwen3-30B-A3B's
// expert ffn_down rows of 3) has its one super-block in lanes 0-7 (the low 256 bits of every
// vector, perm32's order) and zeros in lanes 8-15, whose products add exactly nothing. The
// gemv takes it at 256 bits (DotSink::put_half): the same bytes and arithmetic in lanes 0-7,
// lanes 8-15 of the accumulators left as they are. Measured 11-14% faster on 2048 x 768 (3
// super-blocks a row, benchmarks/ab_kernels.py); the same for Q4_K / Q5_K was level to slower.
static AI_INLINE void iq4xs_values_half(const uint8_t* b0, __m256i* v) {  // iq4xs_values_t's low 256 bits
    const __m256i lut = _mm512_castsi512_si256(iq4_levels_u8()), lo4 = _mm256_set1_epi8(15);
    const __m512i gi4 = _mm512_setr_epi32(0, 8, 16, 24, 4, 12, 20, 28, 0, 8, 16, 24, 4, 12, 20, 28);  // 4 (g % 8)
    const __m512i a0 = _mm512_loadu_si512((const void*)(b0 + 8)), a1 = _mm512_loadu_si512((const void*)(b0 + 72));
    for (int k = 0; k < 4; ++k) {
        const __m256i p = _mm512_castsi512_si256(_mm512_permutex2var_epi32(a0, _mm512_add_epi32(gi4, _mm512_set1_epi32(k)), a1));
        v[k] = _mm256_shuffle_epi8(lut, _mm256_and_si256(p, lo4));  // level + 128
        v[k + 4] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(p, 4), lo4));
    }
}

// An IQ4_XS (or IQ4_XS_R) panel's D = d sc_j for its two super-blocks' 16 groups in natural order
// (groups 8-15 get scale 0 past the row's end, b1 = nullptr, as D = 0 there).
static AI_INLINE __m512 iq4xs_D(const uint8_t* b0, const uint8_t* b1) {
    __m128i sc = iq4xs_scales_x8(b0);
    float d1 = 0.0f;
    if (b1) {
        sc = _mm_unpacklo_epi64(sc, iq4xs_scales_x8(b1));
        d1 = half(b1);
    } else {
        sc = _mm_move_epi64(sc);
    }
    const __m512 dv = _mm512_insertf32x8(_mm512_set1_ps(half(b0)), _mm256_set1_ps(d1), 1);
    return _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
}

template <class Sink>
static AI_INLINE void pack_panel_iq4xs(const uint8_t* b0, const uint8_t* b1, Sink& sink) {
    constexpr bool PRE = Sink::kPre;  // the gemv: already in panel order
    if constexpr (PRE) {
        if (!b1) {  // the row's last super-block alone, at 256 bits (above)
            __m256i h[8];
            iq4xs_values_half(b0, h);
            // its 8 scales into perm32's order for lanes 0-7 (groups 0 2 4 6 1 3 5 7) before widening
            const __m128i sc = _mm_shuffle_epi8(iq4xs_scales_x8(b0), _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, -1, -1, -1, -1, -1, -1, -1, -1));
            const __m256 D = _mm256_mul_ps(_mm256_set1_ps(half(b0)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
            sink.put_half(h, D, _mm256_mul_ps(_mm256_set1_ps(128.0f), D));
            return;
        }
    }
    __m512i v[8];
    if (PRE) {
        iq4xs_values_t(b0, b1, v);
    } else {
        iq4xs_half(b0, v);
        if (b1)
            iq4xs_half(b1, v + 4);
        else
            for (int m = 4; m < 8; ++m) v[m] = _mm512_setzero_si512();
    }
    const __m512 D = iq4xs_D(b0, b1);
    sink.template put<32, PRE>(v, D, _mm512_mul_ps(_mm512_set1_ps(128.0f), D));
}

// IQ4_XS_R (quants.h): IQ4_XS's header, its nibbles in Q4_K_R's order at byte 8: q4kr_values
// gives them in panel order (FL: the form's lanes, group 8s + l of super-block s in lane 8s + l,
// as the gemv's activations), one vpshufb per vector the levels (+ 128). No transpose; scales as
// IQ4_XS, in natural order for FL and through store_panel's perm32 otherwise: the same results
// bit for bit. A lone last super-block leaves lanes 8-15 at level kIQ4Values[0] + 128 with
// D = E = 0, against activations that are zero past the row's end: they add nothing.
template <class Sink>
static AI_INLINE void pack_panel_iq4xsr(const uint8_t* b0, const uint8_t* b1, Sink& sink) {
    constexpr bool FL = Sink::kFormLanes;
    const __m512i lut = iq4_levels_u8();
    __m512i v[8];
    q4kr_values<FL, 8>(b0, b1, v);
    for (int k = 0; k < 8; ++k) v[k] = _mm512_shuffle_epi8(lut, v[k]);  // level + 128
    const __m512 D = iq4xs_D(b0, b1);
    const __m512 E = _mm512_mul_ps(_mm512_set1_ps(128.0f), D);
    if (FL)
        sink.template put<32, true, true>(v, D, E);
    else
        sink.template put<32, true>(v, D, E);
}

// Walk one GGUF row panel by panel, handing each unpacked panel to sink.put<G>().
template <class Sink>
static AI_INLINE void for_each_panel(WType t, const uint8_t* row, int64_t nb, Sink& sink, int64_t overread = 0) {
    // nb: blocks in the row; overread: bytes past its end that may be read (see panels_32)
    const int BB = wtype_info(t).block_bytes;
    switch (t) {
        case WType::Q4_K:
        case WType::Q4_K_R:
        case WType::Q5_K:
        case WType::Q5_K_R:
        case WType::IQ4_XS:
        case WType::IQ4_XS_R:
            for (int64_t b = 0; b < nb; b += 2) {
                const uint8_t* b0 = row + b * BB;
                const uint8_t* b1 = b + 1 < nb ? b0 + BB : nullptr;
                if (t == WType::Q4_K)
                    pack_panel_q4k<false>(b0, b1, sink);
                else if (t == WType::Q4_K_R)
                    pack_panel_q4k<false, Sink, true>(b0, b1, sink);
                else if (t == WType::Q5_K)
                    pack_panel_q4k<true>(b0, b1, sink);
                else if (t == WType::Q5_K_R)
                    pack_panel_q4k<true, Sink, true>(b0, b1, sink);
                else if (t == WType::IQ4_XS_R)
                    pack_panel_iq4xsr(b0, b1, sink);
                else
                    pack_panel_iq4xs(b0, b1, sink);
            }
            return;
        case WType::Q2_K:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q23k<false>(row + b * BB, sink);
            return;
        case WType::Q3_K:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q23k<true>(row + b * BB, sink);
            return;
        case WType::Q3_K_R:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q3kr(row + b * BB, sink);
            return;
        case WType::Q2_K_R:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q2kr(row + b * BB, sink);
            return;
        default:
            break;  // below
    }
    if (t == WType::Q6_K) {
        for (int64_t b = 0; b < nb; ++b) pack_panel_q6k(row + b * 210, sink);
        return;
    }
    if (t == WType::Q6_K_R) {
        for (int64_t b = 0; b < nb; ++b) pack_panel_q6kr(row + b * 210, sink);
        return;
    }
    switch (t) {
        case WType::Q4_0: panels_32<(int)WType::Q4_0>(row, nb, sink, overread); break;
        case WType::Q4_1: panels_32<(int)WType::Q4_1>(row, nb, sink, overread); break;
        case WType::Q5_0: panels_32<(int)WType::Q5_0>(row, nb, sink, overread); break;
        case WType::Q5_1: panels_32<(int)WType::Q5_1>(row, nb, sink, overread); break;
        case WType::Q5_0_R: panels_32<(int)WType::Q5_0_R>(row, nb, sink, overread); break;
        case WType::Q5_1_R: panels_32<(int)WType::Q5_1_R>(row, nb, sink, overread); break;
        case WType::IQ4_NL: panels_32<(int)WType::IQ4_NL>(row, nb, sink, overread); break;
        default: panels_32<(int)WType::Q8_0>(row, nb, sink, overread); break;
    }
}

// Sink that stores panels (the matmul's packed weight rows).
struct StoreSink {
    static constexpr bool kPre = false;  // panels unpacked in natural order, then transposed
    static constexpr bool kFormLanes = false;  // forms in the usual lane order (the gemm's activations)
    uint8_t* dst;
    template <int G, bool PRE = false, bool LANES = false>
    void put(__m512i* v, __m512 A, __m512 B) {
        store_panel<G, PRE, LANES>(dst, v, A, B);
        dst += PG * (G + 8);
    }
};

void pack_w_avx512(WType t, const uint8_t* row, int64_t cols, uint8_t* dst) {
    StoreSink sink{dst};
    for_each_panel(t, row, cols / wtype_info(t).block_elems, sink);
}

// ---- activations: quantize per block (bit-identical to the generic tier) --------------
// max |x| over n values (a multiple of 32): the scale of one activation block.
static AI_INLINE float block_amax(const float* x, int n) {
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    return _mm512_reduce_max_ps(m);
}

// The int8 values of 32 values with the scale of their block (max |x| = amax), as two int32
// vectors, and the scale dy.
static AI_INLINE void quantize32(const float* x, float amax, __m512i& q0, __m512i& q1, float& dy) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    if (!(amax >= 1e-30f)) {
        q0 = q1 = _mm512_setzero_si512();
        dy = 0.0f;
        return;
    }
    const __m512 id = _mm512_set1_ps(127.0f / amax);
    q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));  // round to nearest even
    q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
    dy = amax / 127.0f;
}

void pack_act_avx512(const float* x, int64_t cols, int G, int off, uint8_t* dst) {
    const int bps = (G & kActBlock256) ? 8 : 1;  // 32-blocks per int8 scale
    const bool form = (G & kActFormLanes) != 0;     // lanes in a load-time form's order (form_lanes)
    G &= ~(kActNatural | kActBlock256 | kActFormLanes);
    // lane L of the usual panel moves to lane idx[L] (idx = form_lanes of the G's forms)
    __m512i to_form = _mm512_setzero_si512();
    if (form) {
        alignas(64) int32_t idx[16], inv[16];
        _mm512_store_si512((void*)idx, form_lanes(G));
        for (int l = 0; l < 16; ++l) inv[idx[l]] = l;
        to_form = _mm512_load_si512((const void*)inv);
    }
    float amax = 0.0f;
    const int64_t pb = (int64_t)PG * (G + 8);
    const int64_t nblk = cols / 32;
    const int bpp = PG * G / 32;  // 32-blocks per panel
    alignas(64) uint8_t nat[512];
    alignas(64) float DY[16];
    alignas(64) int32_t S[16];  // sum(y) per group
    for (int64_t b0 = 0; b0 < nblk; b0 += bpp, dst += pb) {
        const int nb = (int)(nblk - b0 < bpp ? nblk - b0 : bpp);
        if (nb < bpp) {
            std::memset(nat, 0, sizeof(nat));
            for (int i = 0; i < 16; ++i) DY[i] = 0.0f, S[i] = 0;
        }
        for (int j = 0; j < nb; ++j) {
            __m512i q0, q1;
            float dy;
            const int64_t b = b0 + j;
            if (b % bps == 0) amax = block_amax(x + 32 * b, 32 * bps);
            quantize32(x + 32 * b, amax, q0, q1, dy);
            _mm_store_si128((__m128i*)(nat + 32 * j), _mm512_cvtsepi32_epi8(q0));
            _mm_store_si128((__m128i*)(nat + 32 * j + 16), _mm512_cvtsepi32_epi8(q1));
            if (G == 32) {
                DY[j] = dy;
                S[j] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            } else {
                DY[2 * j] = DY[2 * j + 1] = dy;
                S[2 * j] = _mm512_reduce_add_epi32(q0);
                S[2 * j + 1] = _mm512_reduce_add_epi32(q1);
            }
        }
        const __m512 dyv = _mm512_load_ps(DY);
        const __m512i sv = _mm512_load_si512((const void*)S);
        // B: int32 C = -off * sum(y) for zero-point types, float SY = dy * sum(y) for min types
        const __m512 B = off >= 0 ? _mm512_castsi512_ps(_mm512_mullo_epi32(sv, _mm512_set1_epi32(-off)))
                                  : _mm512_mul_ps(dyv, _mm512_cvtepi32_ps(sv));
        __m512i v[8];
        for (int k = 0; k < G / 4; ++k) v[k] = _mm512_load_si512((const void*)(nat + 64 * k));
        if (G == 32)
            store_panel<32>(dst, v, dyv, B);
        else
            store_panel<16>(dst, v, dyv, B);
        if (form)  // every vector of the panel, the DY and B floats included: whole lanes move
            for (int64_t o = 0; o < pb; o += 64)
                _mm512_store_si512((void*)(dst + o), _mm512_permutexvar_epi32(to_form, _mm512_load_si512((const void*)(dst + o))));
    }
}

// ---- the micro-kernel: R weight rows x T tokens over all panels -------------------------
// Per panel: G/4 vpdpbusd per (row, token) give the 16 group dots in the 16 lanes, then
//   acc += (float(dot) * D) * DY  [- E * SY]        (lane-wise; lanes summed at the end)
// MIN: the type has a float min (E * SY); otherwise the dot starts at the token's C.
template <int R, int T, int G, bool MIN>
void tile(const uint8_t* wp, const uint8_t* ap, int64_t stride, int64_t np, float* out, int64_t ldo) {
    constexpr int S = G / 4;
    constexpr int64_t PB = PG * (G + 8);
    __m512 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; ++p) {
        const uint8_t* w = wp + p * PB;
        const uint8_t* a = ap + p * PB;
        __m512i v[R][T];
        for (int t = 0; t < T; ++t) {
            const __m512i c0 = MIN ? _mm512_setzero_si512()
                                   : _mm512_load_si512((const void*)(a + t * stride + PG * G + 64));
            for (int r = 0; r < R; ++r) v[r][t] = c0;
        }
        for (int s = 0; s < S; ++s) {
            __m512i wv[R];
            for (int r = 0; r < R; ++r) wv[r] = _mm512_load_si512((const void*)(w + r * stride + 64 * s));
            for (int t = 0; t < T; ++t) {
                const __m512i y = _mm512_load_si512((const void*)(a + t * stride + 64 * s));
                for (int r = 0; r < R; ++r) v[r][t] = _mm512_dpbusd_epi32(v[r][t], wv[r], y);  // hot spot
            }
        }
        for (int r = 0; r < R; ++r) {
            const __m512 D = _mm512_load_ps((const float*)(w + r * stride + PG * G));
            for (int t = 0; t < T; ++t) {
                const __m512 DY = _mm512_load_ps((const float*)(a + t * stride + PG * G));
                const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v[r][t]), D);
                acc[r][t] = _mm512_fmadd_ps(f, DY, acc[r][t]);
                if (MIN) {
                    const __m512 E = _mm512_load_ps((const float*)(w + r * stride + PG * G + 64));
                    const __m512 SY = _mm512_load_ps((const float*)(a + t * stride + PG * G + 64));
                    acc[r][t] = _mm512_fnmadd_ps(E, SY, acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// 4 rows x 4 tokens: 16 int32 + 16 float accumulators (a few spill to L1 once per
// panel, which measured faster than the spill-free 4x3 and 2x6 tiles).
constexpr int RMAX = 4, TMAX = 4;
using TileFn = void (*)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*, int64_t);

template <int G, bool MIN>
struct TileTable {
    TileFn f[RMAX][TMAX];
    template <int R>
    constexpr void fill_row() {
        f[R - 1][0] = tile<R, 1, G, MIN>;
        f[R - 1][1] = tile<R, 2, G, MIN>;
        f[R - 1][2] = tile<R, 3, G, MIN>;
        f[R - 1][3] = tile<R, 4, G, MIN>;
    }
    constexpr TileTable() : f{} {
        fill_row<1>();
        fill_row<2>();
        fill_row<3>();
        fill_row<4>();
    }
};
constexpr TileTable<32, true> kTiles32m;   // Q4_1, Q5_1, Q4_K, Q5_K
constexpr TileTable<32, false> kTiles32z;  // Q4_0, Q5_0, Q8_0, IQ4_NL, IQ4_XS
constexpr TileTable<16, false> kTiles16z;  // Q3_K, Q6_K
constexpr TileTable<16, true> kTiles16m;   // Q2_K

void gemm_avx512(WType t, int G, int64_t np, const uint8_t* wp, int nr, const uint8_t* ap, int nt, float* out,
                 int64_t ldo) {
    const int64_t stride = np * PG * (G + 8);
    const bool min = weight_offset(t, false) < 0;
    const TileFn(*f)[TMAX] = G == 16 ? (min ? kTiles16m.f : kTiles16z.f) : (min ? kTiles32m.f : kTiles32z.f);
    for (int t0 = 0; t0 < nt; t0 += TMAX) {
        const int tt = nt - t0 < TMAX ? nt - t0 : TMAX;
        for (int r0 = 0; r0 < nr; r0 += RMAX) {
            const int rr = nr - r0 < RMAX ? nr - r0 : RMAX;
            f[rr - 1][tt - 1](wp + r0 * stride, ap + t0 * stride, stride, np, out + t0 * ldo + r0, ldo);
        }
    }
}

// ---- a few tokens: unpack each weight panel into registers and use it at once ----------------
// Same arithmetic as pack_w + tile, without the round trip of the panel through memory.
template <bool MIN, int NT>
struct DotSink {
    static constexpr bool kPre = true;  // types that can, unpacked straight into panel order (not Q6_K, Q5_0/Q5_1, Q8_0)
    static constexpr bool kFormLanes = true;  // load-time forms in their own lane order (kActFormLanes)
    const uint8_t* a;  // current panel of token 0
    int64_t astride;
    __m512 acc[NT];    // NT = 1..kGemvMaxTokens, fixed at compile time: the accumulators stay in registers
    const uint8_t* pf;  // weight bytes to prefetch next (nullptr: none)
    int64_t pf_step;    // weight bytes per panel
    // One panel's share of the prefetch stream (every panel of a row takes one, put() or not).
    AI_INLINE void prefetch_panel() {
        if (!pf) return;
        for (int64_t o = 0; o < pf_step; o += 64) _mm_prefetch((const char*)(pf + o), _MM_HINT_T0);
        pf += pf_step;
    }
    template <int G, bool PRE = false, bool LANES = false>  // as store_panel's
    AI_INLINE void put(__m512i* v, __m512 D_nat, __m512 E_nat) {
        constexpr int64_t PB = PG * (G + 8);
        prefetch_panel();
        if (PRE) {
        } else if (G == 32)
            transpose_g32(v);
        else
            transpose_g16(v);
        const __m512i perm = G == 32 ? perm32() : perm16();
        const __m512 D = LANES ? D_nat : _mm512_permutexvar_ps(perm, D_nat);
        const __m512 E = !MIN ? _mm512_setzero_ps() : LANES ? E_nat : _mm512_permutexvar_ps(perm, E_nat);
        for (int t = 0; t < NT; ++t) {
            const uint8_t* y = a + t * astride;
            __m512i s0 = MIN ? _mm512_setzero_si512() : _mm512_load_si512((const void*)(y + PG * G + 64));
            __m512i s1 = _mm512_setzero_si512();  // two chains: half the dependent vpdpbusd latency
            for (int k = 0; k < G / 4; k += 2) {
                s0 = _mm512_dpbusd_epi32(s0, v[k], _mm512_load_si512((const void*)(y + 64 * k)));
                s1 = _mm512_dpbusd_epi32(s1, v[k + 1], _mm512_load_si512((const void*)(y + 64 * k + 64)));
            }
            const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), D);
            acc[t] = _mm512_fmadd_ps(f, _mm512_load_ps((const float*)(y + PG * G)), acc[t]);
            if (MIN) acc[t] = _mm512_fnmadd_ps(E, _mm512_load_ps((const float*)(y + PG * G + 64)), acc[t]);
        }
        a += PB;
    }
    // A row's last panel when it holds one super-block of IQ4_XS (lanes 0-7, see
    // iq4xs_values_half): put's arithmetic on the low 256 bits; lanes 8-15 keep their sums.
    AI_INLINE void put_half(const __m256i* v, __m256 D, __m256 E) {
        constexpr int G = 32;
        constexpr int64_t PB = PG * (G + 8);
        prefetch_panel();
        for (int t = 0; t < NT; ++t) {
            const uint8_t* y = a + t * astride;
            __m256i s0 = MIN ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i*)(y + PG * G + 64));
            __m256i s1 = _mm256_setzero_si256();
            for (int k = 0; k < G / 4; k += 2) {
                s0 = _mm256_dpbusd_epi32(s0, v[k], _mm256_load_si256((const __m256i*)(y + 64 * k)));
                s1 = _mm256_dpbusd_epi32(s1, v[k + 1], _mm256_load_si256((const __m256i*)(y + 64 * k + 64)));
            }
            const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), D);
            __m256 lo = _mm256_fmadd_ps(f, _mm256_load_ps((const float*)(y + PG * G)), _mm512_castps512_ps256(acc[t]));
            if (MIN) lo = _mm256_fnmadd_ps(E, _mm256_load_ps((const float*)(y + PG * G + 64)), lo);
            acc[t] = _mm512_insertf32x8(acc[t], lo, 0);
        }
        a += PB;
    }
};

// The last panel of a row when it holds 8 blocks of a 32-element type or fewer (`valid` of
// them; blk: its first block, bytes past the row's end readable), unpacked and dotted at 256
// bits: the AVX2 tier's unpacking (panel32_ymm.h, lane l = block l), moved to this tier's lane
// order (lanes 0-7 of a panel hold groups perm32[0..7] = 0,2,4,6,1,3,5,7) and dotted against
// the low halves of the activation panel `y` (token t at y + t * astride). Lanes 8-15 of the
// full panel would add exactly nothing (zero D and E, zero activations), so the sums are the
// full panel's, bit for bit (the gemv stays identical to pack_w + gemm). A full 16-group panel
// here cost as much as any other: a 576-column row (18 blocks) did the work of 1024 values.
template <int T_, bool MIN, int NT>
static AI_INLINE void half_panel_dot(const uint8_t* blk, int valid, const uint8_t* y, int64_t astride, __m512* acc) {
    constexpr WType t = (WType)T_;
    __m256i w[8];
    __m256 D, E;
    ymm::unpack_panel_32<T_>(blk, w, D, E, valid);  // Q8_0 and IQ4_NL signed there
    if (t == WType::Q8_0 || t == WType::IQ4_NL) {   // this tier's form: int8 + 128, E = 128 D
        for (int k = 0; k < 8; ++k) w[k] = _mm256_xor_si256(w[k], _mm256_set1_epi8((char)0x80));
        E = _mm256_mul_ps(_mm256_set1_ps(128.0f), D);
    }
    const __m256i lanes = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // perm32's first 8
    for (int k = 0; k < 8; ++k) w[k] = _mm256_permutevar8x32_epi32(w[k], lanes);
    D = _mm256_permutevar8x32_ps(D, lanes);
    E = _mm256_permutevar8x32_ps(E, lanes);
    constexpr int G = 32;
    for (int tk = 0; tk < NT; ++tk) {  // as DotSink::put, on lanes 0-7
        const uint8_t* a = y + tk * astride;
        __m256i s0 = MIN ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i*)(a + PG * G + 64));
        __m256i s1 = _mm256_setzero_si256();
        for (int k = 0; k < G / 4; k += 2) {
            s0 = _mm256_dpbusd_epi32(s0, w[k], _mm256_load_si256((const __m256i*)(a + 64 * k)));
            s1 = _mm256_dpbusd_epi32(s1, w[k + 1], _mm256_load_si256((const __m256i*)(a + 64 * k + 64)));
        }
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), D);
        acc[tk] = _mm512_fmadd_ps(_mm512_zextps256_ps512(f), _mm512_zextps256_ps512(_mm256_load_ps((const float*)(a + PG * G))),
                                  acc[tk]);
        if (MIN)
            acc[tk] = _mm512_fnmadd_ps(_mm512_zextps256_ps512(E),
                                       _mm512_zextps256_ps512(_mm256_load_ps((const float*)(a + PG * G + 64))), acc[tk]);
    }
}

// half_panel_dot for a run-time type, out of line (once per row) so that the row loop around it
// keeps its accumulators in registers; they travel by value.
template <int NT>
struct AccN {
    __m512 a[NT];
};
template <bool MIN, int NT>
__attribute__((noinline)) static AccN<NT> half_panel_dot_t(WType t, const uint8_t* blk, int valid, const uint8_t* y,
                                                           int64_t astride, AccN<NT> acc) {
    switch (t) {
        case WType::Q4_0: half_panel_dot<(int)WType::Q4_0, MIN, NT>(blk, valid, y, astride, acc.a); break;
        case WType::Q4_1: half_panel_dot<(int)WType::Q4_1, MIN, NT>(blk, valid, y, astride, acc.a); break;
        case WType::Q5_0: half_panel_dot<(int)WType::Q5_0, MIN, NT>(blk, valid, y, astride, acc.a); break;
        case WType::Q5_1: half_panel_dot<(int)WType::Q5_1, MIN, NT>(blk, valid, y, astride, acc.a); break;
        case WType::Q5_0_R: half_panel_dot<(int)WType::Q5_0_R, MIN, NT>(blk, valid, y, astride, acc.a); break;
        case WType::Q5_1_R: half_panel_dot<(int)WType::Q5_1_R, MIN, NT>(blk, valid, y, astride, acc.a); break;
        case WType::IQ4_NL: half_panel_dot<(int)WType::IQ4_NL, MIN, NT>(blk, valid, y, astride, acc.a); break;
        default: half_panel_dot<(int)WType::Q8_0, MIN, NT>(blk, valid, y, astride, acc.a); break;
    }
    return acc;
}

// Short rows of a 32-element type, nb blocks with nb dividing 16 (rows of 32-256 values, such as
// MLA's attn_k_b: 128): one full panel holds rpp = 16 / nb consecutive rows (the rows are
// contiguous), and each token's activation panel is replicated to match, lane l holding the
// activation group that panel group perm32[l] meets (perm32[l] % nb). One unpack and one dot
// then serve rpp rows instead of rpp half panels. Each row's sum is taken from its own lanes,
// moved to the lanes the one-row path leaves them in and the rest zeroed, so the result is that
// path's bit for bit. Returns the rows done (a multiple of rpp); the caller does the rest.
// DotSink under its own name: the unpacking templates get instantiations of their own here, so
// that those of the one-row gemv keep a single caller each and stay inlined there (sharing them
// made GCC call them out of line: regular rows ran 25-45% slower in cache).
template <bool MIN, int NT>
struct ShortRowsSink : DotSink<MIN, NT> {};

template <bool MIN, int NT>
__attribute__((noinline)) static int64_t gemv_short_rows(WType t, const uint8_t* w, int64_t nrows, int64_t nb,
                                                         const uint8_t* ap,
                               int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    constexpr int G = 32;
    constexpr int64_t PB = PG * (G + 8);  // one activation panel
    const int rpp = PG / (int)nb;
    const int64_t done = nrows / rpp * rpp;
    if (done == 0) return 0;
    alignas(64) int32_t perm[16], inv[16], rep[16], idx[16][16];
    _mm512_store_si512((void*)perm, perm32());
    for (int l = 0; l < 16; ++l) inv[perm[l]] = l;
    for (int l = 0; l < 16; ++l) rep[l] = inv[perm[l] % nb];
    __mmask16 keep = 0;  // lanes of groups 0..nb-1 in the one-row path
    for (int j = 0; j < nb; ++j) keep |= (__mmask16)(1u << inv[j]);
    for (int q = 0; q < rpp; ++q) {
        for (int l = 0; l < 16; ++l) idx[q][l] = 0;
        for (int j = 0; j < nb; ++j) idx[q][inv[j]] = inv[q * nb + j];  // row q's group j -> where one row has it
    }
    alignas(64) uint8_t act[NT * PB];  // the replicated activation panels, token t at act + t * PB
    const __m512i ridx = _mm512_load_si512((const void*)rep);
    for (int tk = 0; tk < NT; ++tk)
        for (int o = 0; o < PB; o += 64)
            _mm512_store_si512((void*)(act + tk * PB + o),
                               _mm512_permutexvar_epi32(ridx, _mm512_load_si512((const void*)(ap + tk * astride + o))));
    const int BB = wtype_info(t).block_bytes;
    const int64_t step = (int64_t)PG * BB;  // weight bytes of one panel = rpp rows
    for (int64_t r = 0; r < done; r += rpp) {
        const uint8_t* rows = w + r * (nb * BB);
        ShortRowsSink<MIN, NT> sink{{act, PB, {}, pf_dist > 0 ? rows + pf_dist : nullptr, step}};
        for (int k = 0; k < NT; ++k) sink.acc[k] = _mm512_setzero_ps();
        for_each_panel(t, rows, PG, sink);
        for (int q = 0; q < rpp; ++q) {
            const __m512i iq = _mm512_load_si512((const void*)idx[q]);
            for (int k = 0; k < NT; ++k)
                out[k * ldo + r + q] = _mm512_reduce_add_ps(_mm512_maskz_permutexvar_ps(keep, iq, sink.acc[k]));
        }
    }
    return done;
}

template <bool MIN, int NT>
static void gemv_nt(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap,
                    int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    const WTypeInfo& ti = wtype_info(t);
    const int64_t nb = cols / ti.block_elems;
    const int64_t np = (cols + PG * ti.group - 1) / (PG * ti.group);
    const int64_t pf_step = rb / np;  // weight bytes per panel (what each panel prefetches)
    // rows of a 32-element type (a block per group) ending in a panel of 8 blocks or fewer: that panel at 256 bits
    const bool has_half = ti.block_elems == 32 && nb % PG != 0 && nb % PG <= 8;
    const int64_t nb_full = has_half ? nb / PG * PG : nb;  // blocks in whole panels
    const int half_valid = (int)(nb - nb_full);
    const int BB = ti.block_bytes;
    const bool form = form_in_own_lanes(t);  // activations in kActFormLanes
    const __m512i back = form_lanes(ti.group);
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * rb;
        const int64_t overread = (nrows - 1 - r) * rb;
        DotSink<MIN, NT> sink{ap, astride, {}, pf_dist > 0 ? row + pf_dist : nullptr, pf_step};
        for (int k = 0; k < NT; ++k) sink.acc[k] = _mm512_setzero_ps();
        // the half panel needs 8 whole blocks readable; the range's last row takes the full partial panel
        const bool use_half = has_half && (8 - half_valid) * BB <= overread;
        for_each_panel(t, row, use_half ? nb_full : nb, sink, overread);
        if (use_half) {
            AccN<NT> a;
            for (int k = 0; k < NT; ++k) a.a[k] = sink.acc[k];
            a = half_panel_dot_t<MIN, NT>(t, row + nb_full * BB, half_valid, sink.a, astride, a);
            for (int k = 0; k < NT; ++k) sink.acc[k] = a.a[k];
            sink.prefetch_panel();
        }
        if (form)  // lane sums back into the usual order: the same additions as pack_w + gemm
            for (int k = 0; k < NT; ++k) sink.acc[k] = _mm512_permutexvar_ps(back, sink.acc[k]);
        for (int k = 0; k < NT; ++k) out[k * ldo + r] = _mm512_reduce_add_ps(sink.acc[k]);
    }
}

template <bool MIN>
static void gemv_impl(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap, int nt,
                      int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    static_assert(kGemvMaxTokens == 4, "one case per token count");
    const WTypeInfo& ti = wtype_info(t);
    const int64_t nb = cols / ti.block_elems;
    if (ti.block_elems == 32 && nb < PG && PG % nb == 0) {  // short rows: several to a panel
        int64_t done = 0;
        switch (nt) {
            case 1: done = gemv_short_rows<MIN, 1>(t, w, nrows, nb, ap, astride, out, ldo, pf_dist); break;
            case 2: done = gemv_short_rows<MIN, 2>(t, w, nrows, nb, ap, astride, out, ldo, pf_dist); break;
            case 3: done = gemv_short_rows<MIN, 3>(t, w, nrows, nb, ap, astride, out, ldo, pf_dist); break;
            default: done = gemv_short_rows<MIN, 4>(t, w, nrows, nb, ap, astride, out, ldo, pf_dist); break;
        }
        w += done * rb, out += done, nrows -= done;
        if (nrows == 0) return;
    }
    switch (nt) {
        case 1: gemv_nt<MIN, 1>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
        case 2: gemv_nt<MIN, 2>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
        case 3: gemv_nt<MIN, 3>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
        default: gemv_nt<MIN, 4>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
    }
}

void gemv_avx512(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap, int nt,
                 int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    if (weight_offset(t, false) < 0)
        gemv_impl<true>(t, w, nrows, rb, cols, ap, nt, astride, out, ldo, pf_dist);
    else
        gemv_impl<false>(t, w, nrows, rb, cols, ap, nt, astride, out, ldo, pf_dist);
}

// ---- F32 / F16 weights: plain FMA dot products, 4 rows x up to 4 tokens -------------------
// K: 0 = F32, 1 = F16, 2 = BF16 (the top half of a float32: widen, shift left 16).
// FloatTile::run<K, R, T>: the tile of R rows x T tokens that gemm_float_tiles (matmul_tier.h) loops over.
//
// F16 / BF16 sum each (row, token) in kChains16 = 2 chains of FMAs: 16-column step s goes to chain
// s % 2 (the masked last cols % 16 columns are step cols / 16), and out = the lanes of c_0 + c_1
// added up. One token of F16 / BF16 goes one row at a time (one weight stream per thread: from
// memory 0.81-0.86 of the time of 4-row tiles); with one chain that tile waited on each FMA's
// latency (4 cycles a step: 17 ns per 256 weights in cache, 12 / 9.6 ns (BF16 / F16) with two).
// Tiles whose chains fit in 16 registers run them side by side, larger ones one chain after the
// other (passes over the same rows, in cache after the first; 0.43-0.64 of the time of the single
// chain 4 x 4 tile in cache): every shape sums in the same order, so a token's outputs are the
// same bits whatever the token count (test_few_tokens_give_the_same_bits_as_many). F32 keeps one
// chain: its 4-row tiles serve one token too.
struct FloatTile {
    static constexpr bool kOneRowGemv16 = true;
    static constexpr int kChains16 = 2;  // 4 measured level with 2 in cache, for more registers
    template <int K, int R, int T>
    static void run(const uint8_t* w, int64_t rb, int64_t cols, const float* x, int64_t ldx, float* out,
                    int64_t ldo) {
        constexpr int C = K == 0 ? 1 : kChains16;
        constexpr bool SIDE = C == 1 || R * T * C <= 16;  // the chains side by side
        // step i: columns 16i .. 16i + 15 of the R rows and T tokens into a (mk: the columns that exist)
        const auto step16 = [&](int64_t i, __mmask16 mk, __m512(&a)[R][T]) __attribute__((always_inline)) {
            __m512 wv[R];
            for (int r = 0; r < R; ++r) {
                const uint8_t* p = w + r * rb + (K == 0 ? 4 : 2) * 16 * i;
                if (K == 1)
                    wv[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const void*)p));
                else if (K == 2)
                    wv[r] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, (const void*)p)), 16));
                else
                    wv[r] = _mm512_maskz_loadu_ps(mk, (const void*)p);
            }
            for (int t = 0; t < T; ++t) {
                const __m512 xv = _mm512_maskz_loadu_ps(mk, x + t * ldx + 16 * i);
                for (int r = 0; r < R; ++r) a[r][t] = _mm512_fmadd_ps(wv[r], xv, a[r][t]);
            }
        };
        const int64_t nfull = cols / 16;
        const __mmask16 tail = (__mmask16)((1u << (cols % 16)) - 1);  // 0: no partial step
        __m512 acc[R][T];
        if constexpr (SIDE) {
            // one named array per chain, indexed by constants only: they stay in registers
            static_assert(C == 1 || C == 2, "kChains16: 1 or 2");
            __m512 a0[R][T], a1[R][T];
            for (int r = 0; r < R; ++r)
                for (int t = 0; t < T; ++t) a0[r][t] = a1[r][t] = _mm512_setzero_ps();
            int64_t i = 0;
            for (; i + C <= nfull; i += C) {
                float_tile_prefetch<K, R>(w, rb, 16 * i);
                step16(i, (__mmask16)0xFFFF, a0);
                if constexpr (C == 2) step16(i + 1, (__mmask16)0xFFFF, a1);  // F16 / BF16: the same cache line
            }
            if (i < nfull) step16(i, (__mmask16)0xFFFF, a0);  // an odd step left (C = 2)
            if (tail) {  // the masked step, on its chain
                if (nfull % C == 0) step16(nfull, tail, a0);
                else step16(nfull, tail, a1);
            }
            for (int r = 0; r < R; ++r)
                for (int t = 0; t < T; ++t) acc[r][t] = C == 2 ? _mm512_add_ps(a0[r][t], a1[r][t]) : a0[r][t];
        } else {
            for (int c = 0; c < C; ++c) {
                __m512 a[R][T];
                for (int r = 0; r < R; ++r)
                    for (int t = 0; t < T; ++t) a[r][t] = _mm512_setzero_ps();
                for (int64_t i = c; i < nfull; i += C) {
                    float_tile_prefetch<K, R>(w, rb, 16 * i);
                    step16(i, (__mmask16)0xFFFF, a);
                }
                if (tail && nfull % C == c) step16(nfull, tail, a);
                for (int r = 0; r < R; ++r)
                    for (int t = 0; t < T; ++t) acc[r][t] = c == 0 ? a[r][t] : _mm512_add_ps(acc[r][t], a[r][t]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
};

// The per-type entries matmul_<type>_avx512 (listed at the top of this file; matmul_tier.h).
// Written out, not generated, so that `grep matmul_q4_K_avx512` finds the definition.
void matmul_f32_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_avx512, WType::F32, c, r0, r1);
}
void matmul_f16_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_avx512, WType::F16, c, r0, r1);
}
void matmul_q4_0_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q4_0, c, r0, r1, wbuf);
}
void matmul_q4_1_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q4_1, c, r0, r1, wbuf);
}
void matmul_q5_0_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_0, c, r0, r1, wbuf);
}
void matmul_q8_0_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q8_0, c, r0, r1, wbuf);
}
void matmul_q4_K_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q4_K, c, r0, r1, wbuf);
}
void matmul_q6_K_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q6_K, c, r0, r1, wbuf);
}
void matmul_bf16_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_avx512, WType::BF16, c, r0, r1);
}
void matmul_q5_1_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_1, c, r0, r1, wbuf);
}
void matmul_q5_K_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_K, c, r0, r1, wbuf);
}
void matmul_q2_K_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q2_K, c, r0, r1, wbuf);
}
void matmul_q3_K_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q3_K, c, r0, r1, wbuf);
}
void matmul_iq4_nl_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::IQ4_NL, c, r0, r1, wbuf);
}
void matmul_iq4_xs_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::IQ4_XS, c, r0, r1, wbuf);
}
void matmul_q3_K_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q3_K_R, c, r0, r1, wbuf);
}
void matmul_q2_K_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q2_K_R, c, r0, r1, wbuf);
}
void matmul_q4_K_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q4_K_R, c, r0, r1, wbuf);
}
void matmul_q6_K_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q6_K_R, c, r0, r1, wbuf);
}
void matmul_q5_K_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_K_R, c, r0, r1, wbuf);
}
void matmul_q5_0_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_0_R, c, r0, r1, wbuf);
}
void matmul_q5_1_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_1_R, c, r0, r1, wbuf);
}
void matmul_iq4_xs_R_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::IQ4_XS_R, c, r0, r1, wbuf);
}
void matmul_q4_0_P_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q4_0_P, c, r0, r1, wbuf);
}
void matmul_q4_1_P_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q4_1_P, c, r0, r1, wbuf);
}
void matmul_q5_0_P_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_0_P, c, r0, r1, wbuf);
}
void matmul_q5_1_P_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::Q5_1_P, c, r0, r1, wbuf);
}
void matmul_iq4_nl_P_avx512(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx512, WType::IQ4_NL_P, c, r0, r1, wbuf);
}

}  // namespace

const MatmulKernels matmul_kernels_avx512 = {
    "avx512", PG, false, false, true, false, pack_act_avx512, pack_w_avx512, gemm_avx512, gemm_float_tiles<FloatTile, 4>, gemv_avx512,
    PYENGINE_MATMUL_BY_TYPE(avx512),
};

}  // namespace pyengine
