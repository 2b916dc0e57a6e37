// AVX2 (+FMA, F16C) tier of the quantized matmul: 8 groups per panel, one ymm =
// 8 int32 lanes, each lane owning one group. Without VNNI the integer dot is
// vpmaddubsw (u8 x s8 -> pairs summed to s16) then vpmaddwd by ones (-> s32).
//
// vpmaddubsw saturates the s16 pair sum, so the unsigned weight byte must stay small:
// q <= 63 for every type (63*127*2 < 32767) except Q8_0, whose weights are kept
// *signed* here (E = 0) and multiplied with the sign trick |w| x sign(y, w).
//
// No STL, anonymous namespace: see the note at the top of matmul_avx512.cpp.
//
// Per type, one entry each (end of this file), called by csrc/dispatch.cpp through
// matmul_kernels_avx2.by_type:
//   matmul_q4_0_avx2 matmul_q4_1_avx2 matmul_q5_0_avx2 matmul_q5_1_avx2 matmul_q8_0_avx2
//   matmul_q2_K_avx2 matmul_q3_K_avx2 matmul_q4_K_avx2 matmul_q5_K_avx2 matmul_q6_K_avx2
//   matmul_iq4_nl_avx2 matmul_iq4_xs_avx2 matmul_q3_K_R_avx2 matmul_q2_K_R_avx2 matmul_q4_K_R_avx2 matmul_q6_K_R_avx2 matmul_q5_K_R_avx2 matmul_q5_0_R_avx2 matmul_q5_1_R_avx2 matmul_iq4_xs_R_avx2 matmul_q4_0_P_avx2 matmul_q4_1_P_avx2 matmul_q5_0_P_avx2 matmul_q5_1_P_avx2 matmul_iq4_nl_P_avx2 matmul_bf16_avx2 matmul_f16_avx2 matmul_f32_avx2
// Each computes y (n, rows) = x (n, cols) @ W.T for W of its type: the same arithmetic
// as quants.matmul_<type>, the spec (activations quantized to int8 per 32 values as
// described in matmul_kernels.h; float types in float).
#include <immintrin.h>

#include "matmul_kernels.h"
#include "matmul_tier.h"
#include "panel32_ymm.h"

namespace pyengine {
namespace {

constexpr int PG = 8;  // groups (lanes) per panel

// The panel unpackers are instantiated once per sink (store, and a dot for each token count):
// forced inline so the unpacked vectors never leave registers.
#define AI_INLINE inline __attribute__((always_inline))

using ymm::load_f16x8;
using ymm::nibbles_transposed;
using ymm::transpose4_inlane;

// G = 32: v[m] = group m (8 dwords). Afterwards lane l of every v[k] belongs to group l.
static AI_INLINE void transpose_g32(__m256i v[8]) {
    transpose4_inlane(v[0], v[1], v[2], v[3]);
    transpose4_inlane(v[4], v[5], v[6], v[7]);
    for (int k = 0; k < 4; ++k) {
        const __m256i a = v[k], b = v[4 + k];
        v[k] = _mm256_permute2x128_si256(a, b, 0x20);      // dwords k of groups 0..7
        v[4 + k] = _mm256_permute2x128_si256(a, b, 0x31);  // dwords 4+k
    }
}
// G = 16: v[m] = groups 2m, 2m+1; afterwards lane 4i+m belongs to group 2m+i.
static AI_INLINE void transpose_g16(__m256i v[4]) { transpose4_inlane(v[0], v[1], v[2], v[3]); }

// The lane order transpose_g16 leaves a 16-value panel's groups in, as dwords and as a byte
// shuffle of 8 per-group bytes (sub-block scales) taken into that order before widening.
static AI_INLINE __m256i lanes16() { return _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7); }
static AI_INLINE __m128i lanes16_u8() { return _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, -1, -1, -1, -1, -1, -1, -1, -1); }

// PRE: v is already in panel order (G = 32: lane l of every v[k] = group l; G = 16: as
// transpose_g16 leaves it).
// LANES (G = 16): A and B are already in lanes16() order, no permutation left.
// NAT (G = 16): the bytes stay in natural order (kActNatural), only A and B are permuted.
template <int G, bool PRE = false, bool LANES = false, bool NAT = false>
static AI_INLINE void store_panel(uint8_t* dst, __m256i* v, __m256 A_nat, __m256 B_nat) {
    if (G == 32) {
        if (!PRE) transpose_g32(v);
    } else {
        if (!NAT && !PRE) transpose_g16(v);
        if (!LANES) {
            A_nat = _mm256_permutevar8x32_ps(A_nat, lanes16());
            B_nat = _mm256_permutevar8x32_ps(B_nat, lanes16());
        }
    }
    for (int k = 0; k < G / 4; ++k) _mm256_store_si256((__m256i*)(dst + 32 * k), v[k]);
    _mm256_store_ps((float*)(dst + PG * G), A_nat);
    _mm256_store_ps((float*)(dst + PG * G + 32), B_nat);
}

static AI_INLINE float half(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }

// ---- weights -------------------------------------------------------------------------
// One panel of 8 blocks of a 32-element type (panel32_ymm.h) into the sink.
template <int T_, class Sink>
static AI_INLINE void pack_panel_32(const uint8_t* blk, Sink& sink, int valid = 8) {
    __m256i v[8];
    __m256 D, E;
    ymm::unpack_panel_32<T_>(blk, v, D, E, valid);
    sink.template put<32, true>(v, D, E);  // v already in panel order (lane l = group l)
}

// Q5_K: one panel = one super-block; Q4_K's nibbles (at blk + 48) plus bit 2c / 2c+1 of qh[l].
template <class Sink>
static AI_INLINE void pack_panel_q5k(const uint8_t* blk, Sink& sink) {
    // Same half-lane pairing as Q4_K below; group g's high bit is bit g of qh, g = m in lane 0
    // and g = m + 4 in lane 1. Lane 1 takes qh >> 4 once, so in both lanes the bit is bit m,
    // and one shift by the constant 4 - m moves it to bit 4 of its byte.
    const __m256i lo4 = _mm256_set1_epi8(15), bit4 = _mm256_set1_epi8(16);
    const uint8_t* qs = blk + 48;
    __m256i v[8];
    for (int h = 0; h < 2; ++h) {
        const __m256i qh0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 16 + 16 * h)));
        const __m256i qh = _mm256_blend_epi32(qh0, _mm256_srli_epi32(qh0, 4), 0xF0);
        __m256i* z = v + 4 * h;  // z[k] -> dword 4h + k of every group
        for (int c = 0; c < 2; ++c) {
            const __m256i x = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(qs + 32 * c + 16 * h))),
                _mm_loadu_si128((const __m128i*)(qs + 32 * (c + 2) + 16 * h)), 1);
            for (int s = 0; s < 2; ++s) {
                const int m = 2 * c + s;
                const __m256i hb = _mm256_and_si256(_mm256_slli_epi32(qh, 4 - m), bit4);
                const __m256i lo = _mm256_and_si256(s ? _mm256_srli_epi16(x, 4) : x, lo4);
                z[m] = _mm256_or_si256(lo, hb);
            }
        }
        transpose4_inlane(z[0], z[1], z[2], z[3]);
    }
    uint8_t sc[8], m[8];
    q4k_scales_mins(blk + 4, sc, m);
    uint64_t scw, mw;
    std::memcpy(&scw, sc, 8);
    std::memcpy(&mw, m, 8);
    const __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)scw)));
    const __m256 mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mw)));
    sink.template put<32, true>(v, _mm256_mul_ps(_mm256_set1_ps(half(blk)), scf),
                                _mm256_mul_ps(_mm256_set1_ps(half(blk + 2)), mnf));
}

// Q2_K / Q3_K: one panel = half a super-block (values 128c .. 128c+127, 8 groups of 16).
// Q3_K: v[j] = groups 2j, 2j+1 = bit pair j of qs[32c ..] plus bit 4c+j of hmask as the value 4.
template <bool THREE, class Sink>
static AI_INLINE void pack_panel_q23k(const uint8_t* blk, int c, Sink& sink) {
    const __m256i three = _mm256_set1_epi8(3);
    const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + (THREE ? 32 : 16) + 32 * c));
    const __m256i hm = THREE ? _mm256_loadu_si256((const __m256i*)blk) : _mm256_setzero_si256();
    __m256i v[4];
    // Q2_K goes straight into transpose_g16's order (PRE): v[k] lane 4h + j = dword k of group
    // 2j + h, i.e. bit pair j of qs dword 4h + k. vpshufd copies dword k of each 128-bit half (h)
    // to all four of its lanes, vpsrlvd shifts lane j by 2j: 3 ops per k and no transpose; the
    // one-token gemv then needs no horizontal adds either (5% faster, 2026-12-07). Q3_K, whose
    // high bits would take as many ops again, measured 6% slower that way than as below.
    constexpr bool PRE = !THREE;
    if (PRE) {
        const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        v[0] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32(x, 0x00), sh), three);
        v[1] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32(x, 0x55), sh), three);
        v[2] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32(x, 0xAA), sh), three);
        v[3] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi32(x, 0xFF), sh), three);
    } else {
        const __m256i four = _mm256_set1_epi8(4);
        for (int j = 0; j < 4; ++j) {
            v[j] = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(2 * j)), three);
            if (THREE) {  // bit 4c + j of each hmask byte, moved to bit 2 (the value 4): one shift, one and
                const int b = 4 * c + j;
                const __m256i h = b <= 2 ? _mm256_sll_epi16(hm, _mm_cvtsi32_si128(2 - b))
                                         : _mm256_srl_epi16(hm, _mm_cvtsi32_si128(b - 2));
                v[j] = _mm256_or_si256(v[j], _mm256_and_si256(h, four));
            }
        }
    }
    // the half's 8 sub-block scales, taken straight into lanes16 order by one byte shuffle (no
    // lane permutes of D and E later: put<16, LANES = true>)
    const __m128i lanes = lanes16_u8();
    __m256 D, E;
    if (THREE) {
        const __m128i sc = q3k_scales_x16(blk + 96);
        D = _mm256_mul_ps(_mm256_set1_ps(half(blk + 108)),
                          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi8(c ? _mm_unpackhi_epi64(sc, sc) : sc, lanes))));
        E = _mm256_mul_ps(_mm256_set1_ps(4.0f), D);
    } else {
        const __m256i s8 = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(_mm_loadl_epi64((const __m128i*)(blk + 8 * c)), lanes));
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk + 80)));  // d, dmin
        D = _mm256_mul_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(_mm256_and_si256(s8, _mm256_set1_epi32(15))));
        E = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_cvtepi32_ps(_mm256_srli_epi32(s8, 4)));
    }
    sink.template put<16, PRE, true, true>(v, D, E);  // D, E in lane order; values 0..7
}

// Q3_K_R (block_q3_K_R in quants.h): half c of a super-block straight into the panel order
// transpose_g16 makes (PRE), 16 ops for 128 values and no transpose: with X = its 32 ql bytes
// and H1, H2 = its high bits at bits 2 and 6 (see there),
//   t0 = (X & 0x33) | H1 holds k = 0 in bits 0-2 and k = 2 in bits 4-6,
//   t1 = ((X >> 2) & 0x33) | H2 holds k = 1 and k = 3 the same way,
// and v[k] is one of them (shifted by 4 for k >= 2) & 7. Same values, scales and lanes as
// pack_panel_q23k<true> makes from the Q3_K block, so the same results bit for bit.
template <class Sink>
static AI_INLINE void pack_panel_q3kr(const uint8_t* blk, int c, Sink& sink) {
    const __m256i m33 = _mm256_set1_epi8(0x33), m44 = _mm256_set1_epi8(0x44), seven = _mm256_set1_epi8(7);
    const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + 32 + 32 * c));
    const __m256i hb = _mm256_loadu_si256((const __m256i*)blk);
    // 16-bit shifts: a bit that crosses into the neighbouring byte lands outside the 0x44 / 0x33 masks
    const __m256i h1 = _mm256_and_si256(c ? _mm256_slli_epi16(hb, 2) : hb, m44);
    const __m256i h2 = _mm256_and_si256(c ? _mm256_slli_epi16(hb, 1) : _mm256_srli_epi16(hb, 1), m44);
    const __m256i t0 = _mm256_or_si256(_mm256_and_si256(x, m33), h1);
    const __m256i t1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 2), m33), h2);
    __m256i v[4];
    v[0] = _mm256_and_si256(t0, seven);
    v[1] = _mm256_and_si256(t1, seven);
    v[2] = _mm256_and_si256(_mm256_srli_epi16(t0, 4), seven);
    v[3] = _mm256_and_si256(_mm256_srli_epi16(t1, 4), seven);
    const __m128i sc = q3k_scales_x16(blk + 96);
    const __m256 D = _mm256_mul_ps(_mm256_set1_ps(half(blk + 108)),
                                   _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi8(c ? _mm_unpackhi_epi64(sc, sc) : sc, lanes16_u8()))));
    sink.template put<16, true, true, true>(v, D, _mm256_mul_ps(_mm256_set1_ps(4.0f), D));  // values 0..7
}

// Q2_K_R (block_q2_K_R in quants.h): half c straight into panel order, v[k] = (ql >> 2k) & 3
// (7 ops where Q2_K takes 12), and the half's scale bytes already in lane order (no shuffle).
// Same values, scales and lanes as pack_panel_q23k<false>: the same results bit for bit.
template <class Sink>
static AI_INLINE void pack_panel_q2kr(const uint8_t* blk, int c, Sink& sink) {
    const __m256i three = _mm256_set1_epi8(3);
    const __m256i x = _mm256_loadu_si256((const __m256i*)(blk + 16 + 32 * c));
    __m256i v[4];  // 16-bit shifts: what crosses from the next byte lands above bit 1, masked off
    v[0] = _mm256_and_si256(x, three);
    v[1] = _mm256_and_si256(_mm256_srli_epi16(x, 2), three);
    v[2] = _mm256_and_si256(_mm256_srli_epi16(x, 4), three);
    v[3] = _mm256_and_si256(_mm256_srli_epi16(x, 6), three);
    const __m256i s8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 8 * c)));
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk + 80)));  // d, dmin
    const __m256 D = _mm256_mul_ps(_mm256_broadcastss_ps(dm), _mm256_cvtepi32_ps(_mm256_and_si256(s8, _mm256_set1_epi32(15))));
    const __m256 E = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), _mm256_cvtepi32_ps(_mm256_srli_epi32(s8, 4)));
    sink.template put<16, true, true, true>(v, D, E);  // values 0..3
}

// IQ4_XS: one panel = one super-block (8 groups of 32, group j's nibbles at qs[16j ..]); signed, E = 0.
template <class Sink>
static AI_INLINE void pack_panel_iq4xs(const uint8_t* blk, Sink& sink) {
    __m256i v[8];
    nibbles_transposed<16, 8>(blk, v);  // group j's 16 nibble bytes at qs[16 j]
    ymm::iq4_lookup(v);
    const __m256 D = _mm256_mul_ps(_mm256_set1_ps(half(blk)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(iq4xs_scales_x8(blk))));
    sink.template put<32, true>(v, D, _mm256_setzero_ps());
}

// IQ4_XS_R (quants.h): IQ4_XS's header, its nibbles in Q4_K_R's order at byte 8: v[m] and v[m + 4]
// are the levels of chunk m's low and high nibbles, already in panel order: 4 loads and 20 ops
// where IQ4_XS takes 8 loads, 4 inserts, 8 shuffles for the transpose and the same 20. Scales as
// IQ4_XS: the same results bit for bit.
template <class Sink>
static AI_INLINE void pack_panel_iq4xsr(const uint8_t* blk, Sink& sink) {
    __m256i v[8];
    ymm::nibble_chunks(blk + 8, v);
    ymm::iq4_lookup(v);
    const __m256 D = _mm256_mul_ps(_mm256_set1_ps(half(blk)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(iq4xs_scales_x8(blk))));
    sink.template put<32, true>(v, D, _mm256_setzero_ps());
}

// A Q4_K (or Q4_K_R) panel's D = d sc_j, E = dmin m_j from its header, and v (already in panel
// order) into the sink.
template <class Sink>
static AI_INLINE void q4k_put_scales(const uint8_t* blk, __m256i* v, Sink& sink) {
    const uint32_t w0 = load_u32(blk + 4), w1 = load_u32(blk + 8), w2 = load_u32(blk + 12);
    const uint32_t lo6 = 0x3f3f3f3fu, l4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
    const uint64_t sc = (uint64_t)(w0 & lo6) | (uint64_t)((w2 & l4) | (((w0 >> 6) & lo2) << 4)) << 32;
    const uint64_t mn = (uint64_t)(w1 & lo6) | (uint64_t)(((w2 >> 4) & l4) | (((w1 >> 6) & lo2) << 4)) << 32;
    const __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)));
    const __m256 mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn)));
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(blk)));  // d, dmin in one conversion
    sink.template put<32, true>(v, _mm256_mul_ps(_mm256_broadcastss_ps(dm), scf),
                                _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), mnf));
}

// Q4_K: one panel = one super-block (8 groups of 32).
template <class Sink>
static AI_INLINE void pack_panel_q4k(const uint8_t* blk, Sink& sink) {
    // Group 2c+s = nibble s of the 32 bytes x_c at qs[32 c]. Per half h (bytes 16h..16h+15 ->
    // dwords 4h..4h+3 of a group) pair x_c with x_{c+2} in the two 128-bit lanes: then z[m] holds
    // group m in lane 0 and group m + 4 in lane 1, and the in-lane 4 x 4 transposes put every
    // group in its own dword lane (no lane-crossing permutes).
    const __m256i lo4 = _mm256_set1_epi8(15);
    const uint8_t* qs = blk + 16;
    __m256i v[8];
    for (int h = 0; h < 2; ++h) {
        __m256i* z = v + 4 * h;  // z[k] -> dword 4h + k of every group
        for (int c = 0; c < 2; ++c) {
            const __m256i x = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(qs + 32 * c + 16 * h))),
                _mm_loadu_si128((const __m128i*)(qs + 32 * (c + 2) + 16 * h)), 1);
            z[2 * c] = _mm256_and_si256(x, lo4);
            z[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(x, 4), lo4);
        }
        transpose4_inlane(z[0], z[1], z[2], z[3]);
    }
    q4k_put_scales(blk, v, sink);
}

// Q4_K_R (block_q4_K_R in quants.h): v[m] and v[m + 4] are the low and high nibbles of chunk m,
// already in panel order: 4 loads and 12 ops where Q4_K takes 4 inserts, 12 ops and two 4 x 4
// transposes. Scales as Q4_K: the same results bit for bit.
template <class Sink>
static AI_INLINE void pack_panel_q4kr(const uint8_t* blk, Sink& sink) {
    __m256i v[8];
    ymm::nibble_chunks(blk + 16, v);
    q4k_put_scales(blk, v, sink);
}

// Q5_K_R (block_q5_K_R in quants.h): Q4_K_R's nibbles at byte 48, and the 5th bit of the value
// in byte p of v[m + 4s] at bit 2m + s of hb[p]: a 16-bit shift by 4 - (2m + s) brings it to bit 4
// of the same byte (the shifts stay inside each byte's bits 0-7 where bit 4 is taken), one mask
// keeps it, one or tops the nibble. 4 loads and 36 ops per panel; Q5_K takes the transposes and a
// shuffle and compare per vector for its 5th bits. Scales as Q5_K (Q4_K's): the same results bit for bit.
template <class Sink>
static AI_INLINE void pack_panel_q5kr(const uint8_t* blk, Sink& sink) {
    __m256i v[8];
    ymm::nibble_chunks(blk + 48, v);
    ymm::or_bits_as_16<true>(v, _mm256_loadu_si256((const __m256i*)(blk + 16)));  // bit 2m + s of hb tops v[m + 4s]
    q4k_put_scales(blk, v, sink);
}

// Q6_K: one panel = half a super-block (8 groups of 16).
template <class Sink>
static AI_INLINE void pack_panel_q6k(const uint8_t* blk, int h, Sink& sink) {
    const block_q6_K* b = (const block_q6_K*)blk;
    const __m256i lo4 = _mm256_set1_epi8(15), hi2 = _mm256_set1_epi8(0x30);
    const __m256i qa = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h));
    const __m256i qb = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256((const __m256i*)(b->qh + 32 * h));
    __m256i v[4];  // qh bit pair 2j of each byte moved to bits 4-5 by one 16-bit shift, then masked
    v[0] = _mm256_or_si256(_mm256_and_si256(qa, lo4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), hi2));
    v[1] = _mm256_or_si256(_mm256_and_si256(qb, lo4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), hi2));
    v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), lo4), _mm256_and_si256(qh, hi2));
    v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), lo4),
                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), hi2));
    // the half's 8 scales shuffled into lanes16 order before widening (put<16, LANES = true>)
    const __m256 sc = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_shuffle_epi8(_mm_loadl_epi64((const __m128i*)(b->scales + 8 * h)), lanes16_u8())));
    const __m256 D = _mm256_mul_ps(_mm256_set1_ps(half(blk + 208)), sc);
    sink.template put<16, false, true>(v, D, _mm256_mul_ps(_mm256_set1_ps(32.0f), D));
}

// Q6_K_R (block_q6_K_R in quants.h): half h as pack_panel_q6k computes it, but from bytes
// already in panel order (no 8-shuffle transpose) and scales already in lane order.
template <class Sink>
static AI_INLINE void pack_panel_q6kr(const uint8_t* blk, int h, Sink& sink) {
    const __m256i lo4 = _mm256_set1_epi8(15), hi2 = _mm256_set1_epi8(0x30);
    const __m256i qa = _mm256_loadu_si256((const __m256i*)(blk + 64 * h));       // k = 0 | 2
    const __m256i qb = _mm256_loadu_si256((const __m256i*)(blk + 64 * h + 32));  // k = 1 | 3
    const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h));
    __m256i v[4];  // bit pair k of qh to bits 4-5 (16-bit shifts: what crosses bytes is masked off)
    v[0] = _mm256_or_si256(_mm256_and_si256(qa, lo4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), hi2));
    v[1] = _mm256_or_si256(_mm256_and_si256(qb, lo4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), hi2));
    v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), lo4), _mm256_and_si256(qh, hi2));
    v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), lo4),
                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), hi2));
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 192 + 8 * h))));
    const __m256 D = _mm256_mul_ps(_mm256_set1_ps(half(blk + 208)), sc);
    sink.template put<16, true, true>(v, D, _mm256_mul_ps(_mm256_set1_ps(32.0f), D));
}

// Walk one GGUF row panel by panel, handing each unpacked panel to sink.put<G>().
template <class Sink>
static AI_INLINE void for_each_panel(WType t, const uint8_t* row, int64_t nb, Sink& sink, int64_t overread = 0) {
    // nb: blocks in the row; overread: bytes past its end that may be read (the next rows of the same call)
    const int BB = wtype_info(t).block_bytes;
    switch (t) {
        case WType::Q4_K:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q4k(row + b * BB, sink);
            return;
        case WType::Q4_K_R:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q4kr(row + b * BB, sink);
            return;
        case WType::Q5_K:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q5k(row + b * BB, sink);
            return;
        case WType::Q5_K_R:
            for (int64_t b = 0; b < nb; ++b) pack_panel_q5kr(row + b * BB, sink);
            return;
        case WType::IQ4_XS:
            for (int64_t b = 0; b < nb; ++b) pack_panel_iq4xs(row + b * BB, sink);
            return;
        case WType::IQ4_XS_R:
            for (int64_t b = 0; b < nb; ++b) pack_panel_iq4xsr(row + b * BB, sink);
            return;
        case WType::Q2_K:
            for (int64_t b = 0; b < nb; ++b) {
                pack_panel_q23k<false>(row + b * BB, 0, sink);
                pack_panel_q23k<false>(row + b * BB, 1, sink);
            }
            return;
        case WType::Q3_K:
            for (int64_t b = 0; b < nb; ++b) {
                pack_panel_q23k<true>(row + b * BB, 0, sink);
                pack_panel_q23k<true>(row + b * BB, 1, sink);
            }
            return;
        case WType::Q3_K_R:
            for (int64_t b = 0; b < nb; ++b) {
                pack_panel_q3kr(row + b * BB, 0, sink);
                pack_panel_q3kr(row + b * BB, 1, sink);
            }
            return;
        case WType::Q2_K_R:
            for (int64_t b = 0; b < nb; ++b) {
                pack_panel_q2kr(row + b * BB, 0, sink);
                pack_panel_q2kr(row + b * BB, 1, sink);
            }
            return;
        case WType::Q6_K:
            for (int64_t b = 0; b < nb; ++b) {
                pack_panel_q6k(row + b * BB, 0, sink);
                pack_panel_q6k(row + b * BB, 1, sink);
            }
            return;
        case WType::Q6_K_R:
            for (int64_t b = 0; b < nb; ++b) {
                pack_panel_q6kr(row + b * BB, 0, sink);
                pack_panel_q6kr(row + b * BB, 1, sink);
            }
            return;
        default:
            break;  // below: 8 blocks of 32 per panel
    }
    int64_t b = 0;
    if (is_panel_form(t)) {  // whole panels first, then the tail's blocks in block_form (below)
        for (; b + 8 <= nb; b += 8) {
            __m256i v[8];
            __m256 D, E;
            const uint8_t* p = row + b * BB;
            switch (t) {
                case WType::Q4_0_P: ymm::unpack_panel_32p<(int)WType::Q4_0_P>(p, v, D, E); break;
                case WType::Q4_1_P: ymm::unpack_panel_32p<(int)WType::Q4_1_P>(p, v, D, E); break;
                case WType::Q5_0_P: ymm::unpack_panel_32p<(int)WType::Q5_0_P>(p, v, D, E); break;
                case WType::Q5_1_P: ymm::unpack_panel_32p<(int)WType::Q5_1_P>(p, v, D, E); break;
                default: ymm::unpack_panel_32p<(int)WType::IQ4_NL_P>(p, v, D, E); break;
            }
            sink.template put<32, true>(v, D, E);
        }
        t = block_form(t);
    }
    alignas(32) uint8_t tail[8 * 34];
    for (; b < nb; b += 8) {
        const uint8_t* src = row + b * BB;
        const int valid = nb - b < 8 ? (int)(nb - b) : 8;
        if (valid < 8 && (8 - valid) * BB > overread) {  // partial last panel: zero blocks (d = 0) fill it
            std::memset(tail, 0, sizeof(tail));
            std::memcpy(tail, src, (size_t)(valid * BB));
            src = tail;
        }  // else read whole blocks past the row's end (the next rows) and mask them off:
           // measured 2-3x cheaper than the copy (store-forwarding stalls on a fresh buffer)
        switch (t) {
            case WType::Q4_0: pack_panel_32<(int)WType::Q4_0>(src, sink, valid); break;
            case WType::Q4_1: pack_panel_32<(int)WType::Q4_1>(src, sink, valid); break;
            case WType::Q5_0: pack_panel_32<(int)WType::Q5_0>(src, sink, valid); break;
            case WType::Q5_1: pack_panel_32<(int)WType::Q5_1>(src, sink, valid); break;
            case WType::Q5_0_R: pack_panel_32<(int)WType::Q5_0_R>(src, sink, valid); break;
            case WType::Q5_1_R: pack_panel_32<(int)WType::Q5_1_R>(src, sink, valid); break;
            case WType::IQ4_NL: pack_panel_32<(int)WType::IQ4_NL>(src, sink, valid); break;
            default: pack_panel_32<(int)WType::Q8_0>(src, sink, valid); break;
        }
    }
}

// Sink that stores panels (the matmul's packed weight rows).
struct StoreSink {
    uint8_t* dst;
    template <int G, bool PRE = false, bool LANES = false, bool SMALL = false>  // as store_panel's
    AI_INLINE void put(__m256i* v, __m256 A, __m256 B) {
        store_panel<G, PRE, LANES>(dst, v, A, B);
        dst += PG * (G + 8);
    }
};

void pack_w_avx2(WType t, const uint8_t* row, int64_t cols, uint8_t* dst) {
    StoreSink sink{dst};
    for_each_panel(t, row, cols / wtype_info(t).block_elems, sink);
}

// ---- activations (bit-identical to the generic tier) ------------------------------------
static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
// sum of the 8 lanes: (lo half + hi half), then pairs, then the last two, in that order
static AI_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline int hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// max |x| over n values (a multiple of 32): the scale of one activation block.
static inline float block_amax(const float* x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    return hmax8(m);
}

// 32 values with the scale of their block (whose max |x| is amax): int8 values in natural
// order, dy, and the sums of its two halves.
static inline __m256i quantize32(const float* x, float amax, float& dy, int& s0, int& s1) {
    __m256 xv[4];
    for (int i = 0; i < 4; ++i) xv[i] = _mm256_loadu_ps(x + 8 * i);
    if (!(amax >= 1e-30f)) {
        dy = 0.0f;
        s0 = s1 = 0;
        return _mm256_setzero_si256();
    }
    const __m256 id = _mm256_set1_ps(127.0f / amax);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(xv[i], id));  // nearest even
    s0 = hsum8_epi32(_mm256_add_epi32(q[0], q[1]));
    s1 = hsum8_epi32(_mm256_add_epi32(q[2], q[3]));
    dy = amax / 127.0f;
    // packs work per 128-bit lane: dwords come out as 0,2,4,6,1,3,5,7 of the wanted order
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void pack_act_avx2(const float* x, int64_t cols, int G, int off, uint8_t* dst) {
    const bool natural = (G & kActNatural) != 0;  // G = 16, values left in order (matmul_kernels.h)
    const int bps = (G & kActBlock256) ? 8 : 1;  // 32-blocks per int8 scale
    G &= ~(kActNatural | kActBlock256);
    float amax = 0.0f;
    const int64_t pb = (int64_t)PG * (G + 8);
    const int64_t nblk = cols / 32;
    const int bpp = PG * G / 32;  // 32-blocks per panel
    for (int64_t b0 = 0; b0 < nblk; b0 += bpp, dst += pb) {
        const int nb = (int)(nblk - b0 < bpp ? nblk - b0 : bpp);
        __m256i v[8];
        alignas(32) float DY[8] = {0};
        alignas(32) int32_t S[8] = {0};  // sum(y) per group
        for (int j = 0; j < nb; ++j) {
            float dy;
            int s0, s1;
            const int64_t b = b0 + j;
            if (b % bps == 0) amax = block_amax(x + 32 * b, 32 * bps);
            v[j] = quantize32(x + 32 * b, amax, dy, s0, s1);  // G=32: group j; G=16: groups 2j, 2j+1
            if (G == 32) {
                DY[j] = dy;
                S[j] = s0 + s1;
            } else {
                DY[2 * j] = DY[2 * j + 1] = dy;
                S[2 * j] = s0;
                S[2 * j + 1] = s1;
            }
        }
        for (int j = nb; j < bpp; ++j) v[j] = _mm256_setzero_si256();
        const __m256 dyv = _mm256_load_ps(DY);
        const __m256i sv = _mm256_load_si256((const __m256i*)S);
        // B: int32 C = -off * sum(y) for zero-point types, float SY = dy * sum(y) for min types
        const __m256 B = off >= 0 ? _mm256_castsi256_ps(_mm256_mullo_epi32(sv, _mm256_set1_epi32(-off)))
                                  : _mm256_mul_ps(dyv, _mm256_cvtepi32_ps(sv));
        if (G == 32)
            store_panel<32>(dst, v, dyv, B);
        else if (natural)
            store_panel<16, false, false, true>(dst, v, dyv, B);
        else
            store_panel<16>(dst, v, dyv, B);
    }
}

// ---- the micro-kernel: R rows x T tokens -------------------------------------------------
// SIGNED: Q8_0 (signed weights, sign trick). Otherwise two maddubs results (each pair
// sum <= 63*127*2) are added in int16 before widening: 2 * 16002 still fits.
// MIN: float min term E * SY; otherwise the integer dot starts at the token's C.
template <int R, int T, int G, bool SIGNED, bool MIN>
void tile(const uint8_t* wp, const uint8_t* ap, int64_t stride, int64_t np, float* out, int64_t ldo) {
    constexpr int S = G / 4;
    constexpr int64_t PB = PG * (G + 8);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[R][T];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    for (int64_t p = 0; p < np; ++p) {
        const uint8_t* w = wp + p * PB;
        const uint8_t* a = ap + p * PB;
        __m256i v[R][T];
        for (int t = 0; t < T; ++t) {
            const __m256i c0 = MIN ? _mm256_setzero_si256()
                                   : _mm256_load_si256((const __m256i*)(a + t * stride + PG * G + 32));
            for (int r = 0; r < R; ++r) v[r][t] = c0;
        }
        for (int s = 0; s < S; s += 2) {
            __m256i w0[R], w1[R];
            for (int r = 0; r < R; ++r) {
                w0[r] = _mm256_load_si256((const __m256i*)(w + r * stride + 32 * s));
                w1[r] = _mm256_load_si256((const __m256i*)(w + r * stride + 32 * s + 32));
            }
            for (int t = 0; t < T; ++t) {
                const __m256i y0 = _mm256_load_si256((const __m256i*)(a + t * stride + 32 * s));
                const __m256i y1 = _mm256_load_si256((const __m256i*)(a + t * stride + 32 * s + 32));
                for (int r = 0; r < R; ++r) {
                    __m256i p16;
                    if (SIGNED) {
                        const __m256i pa =
                            _mm256_maddubs_epi16(_mm256_sign_epi8(w0[r], w0[r]), _mm256_sign_epi8(y0, w0[r]));
                        v[r][t] = _mm256_add_epi32(v[r][t], _mm256_madd_epi16(pa, ones));
                        p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w1[r], w1[r]), _mm256_sign_epi8(y1, w1[r]));
                    } else {
                        p16 = _mm256_add_epi16(_mm256_maddubs_epi16(w0[r], y0), _mm256_maddubs_epi16(w1[r], y1));
                    }
                    v[r][t] = _mm256_add_epi32(v[r][t], _mm256_madd_epi16(p16, ones));  // hot spot
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const __m256 D = _mm256_load_ps((const float*)(w + r * stride + PG * G));
            for (int t = 0; t < T; ++t) {
                const __m256 DY = _mm256_load_ps((const float*)(a + t * stride + PG * G));
                const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v[r][t]), D);
                acc[r][t] = _mm256_fmadd_ps(f, DY, acc[r][t]);
                if (MIN) {
                    const __m256 E = _mm256_load_ps((const float*)(w + r * stride + PG * G + 32));
                    const __m256 SY = _mm256_load_ps((const float*)(a + t * stride + PG * G + 32));
                    acc[r][t] = _mm256_fnmadd_ps(E, SY, acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) out[t * ldo + r] = hsum8(acc[r][t]);
}

constexpr int RMAX = 2, TMAX = 2;
using TileFn = void (*)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*, int64_t);

template <int G, bool SIGNED, bool MIN>
struct TileTable {
    TileFn f[RMAX][TMAX];
    constexpr TileTable() : f{} {
        f[0][0] = tile<1, 1, G, SIGNED, MIN>;
        f[0][1] = tile<1, 2, G, SIGNED, MIN>;
        f[1][0] = tile<2, 1, G, SIGNED, MIN>;
        f[1][1] = tile<2, 2, G, SIGNED, MIN>;
    }
};
constexpr TileTable<32, false, true> kTiles32m;   // Q4_1, Q5_1, Q5_1_R, Q4_K, Q4_K_R, Q5_K, Q5_K_R
constexpr TileTable<32, false, false> kTiles32z;  // Q4_0, Q5_0, Q5_0_R
constexpr TileTable<32, true, false> kTiles32s;   // Q8_0, IQ4_NL, IQ4_XS, IQ4_XS_R (signed, C = 0)
constexpr TileTable<16, false, false> kTiles16z;  // Q3_K, Q3_K_R, Q6_K, Q6_K_R
constexpr TileTable<16, false, true> kTiles16m;   // Q2_K, Q2_K_R

void gemm_avx2(WType t, int G, int64_t np, const uint8_t* wp, int nr, const uint8_t* ap, int nt, float* out,
               int64_t ldo) {
    const int64_t stride = np * PG * (G + 8);
    const int off = weight_offset(t, true);  // 0: signed weights (Q8_0, IQ4_*); < 0: float min
    const TileFn(*f)[TMAX] = G == 16   ? (off < 0 ? kTiles16m.f : kTiles16z.f)
                             : off == 0 ? kTiles32s.f
                             : off < 0  ? kTiles32m.f
                                        : kTiles32z.f;
    for (int t0 = 0; t0 < nt; t0 += TMAX) {
        const int tt = nt - t0 < TMAX ? nt - t0 : TMAX;
        for (int r0 = 0; r0 < nr; r0 += RMAX) {
            const int rr = nr - r0 < RMAX ? nr - r0 : RMAX;
            f[rr - 1][tt - 1](wp + r0 * stride, ap + t0 * stride, stride, np, out + t0 * ldo + r0, ldo);
        }
    }
}

// ---- a few tokens: unpack each weight panel into registers and use it at once ----------------
// Same arithmetic as pack_w + tile<1, T> (the same integer dot per lane, the same float
// epilogue per panel, the same final reduction), without the round trip of the panel
// through memory: bit-identical results.
template <bool SIGNED, bool MIN, int NT>
struct DotSink {
    const uint8_t* a;  // current panel of token 0
    int64_t astride;
    __m256 acc[NT];  // NT = 1..kGemvMaxTokens tokens, fixed at compile time: no spills for few tokens
    const uint8_t* pf;  // weight bytes to prefetch next (nullptr: none)
    int64_t pf_step;    // weight bytes per panel
    // PRE, LANES as store_panel's; SMALL: weights 0..7 (G = 16), see below
    template <int G, bool PRE = false, bool LANES = false, bool SMALL = false>
    AI_INLINE void put(__m256i* v, __m256 D, __m256 E) {
        constexpr int64_t PB = PG * (G + 8);
        // one token of Q3_K: the activations come in value order (kActNatural, see
        // act_group), the weights stay as unpacked (v[j] = groups 2j | 2j+1 in the two 128-bit
        // halves), and horizontal adds sum each group's products (below): no 8-shuffle transpose
        constexpr bool HADD = SMALL && !SIGNED && G == 16 && NT == 1 && !PRE;
        if (pf) {
            for (int64_t o = 0; o < pf_step; o += 64) _mm_prefetch((const char*)(pf + o), _MM_HINT_T0);
            pf += pf_step;
        }
        const __m256i ones = _mm256_set1_epi16(1);
        if (G == 32) {
            if (!PRE) transpose_g32(v);
        } else {
            if (!HADD && !PRE) transpose_g16(v);
            if (!LANES) {
                D = _mm256_permutevar8x32_ps(D, lanes16());
                if (MIN) E = _mm256_permutevar8x32_ps(E, lanes16());
            }
        }
        for (int t = 0; t < NT; ++t) {
            const uint8_t* y = a + t * astride;
            __m256i s = MIN ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i*)(y + PG * G + 32));
            if (HADD) {
                // p_j: 8 pair sums of group 2j (low half), 8 of group 2j+1 (high half); two rounds of
                // vphaddw leave 2 sums per group, in the order 0 2 4 6 | 1 3 5 7 (= lanes16), and
                // one madd adds them: the same integers as the transposed path (values 0..7: at most
                // 8 * 7 * 127 = 7112 per int16, no overflow)
                __m256i p[4];
                for (int k = 0; k < 4; ++k) p[k] = _mm256_maddubs_epi16(v[k], _mm256_load_si256((const __m256i*)(y + 32 * k)));
                const __m256i h = _mm256_hadd_epi16(_mm256_hadd_epi16(p[0], p[1]), _mm256_hadd_epi16(p[2], p[3]));
                s = _mm256_add_epi32(s, _mm256_madd_epi16(h, ones));
            } else if (SMALL && !SIGNED && G == 16) {
                // weights 0..7 (Q2_K, Q3_K): a group's four maddubs pair sums add up to at most
                // 4 * 2 * 7 * 127 = 7112 in int16, so one madd widens them all
                __m256i p16 = _mm256_maddubs_epi16(v[0], _mm256_load_si256((const __m256i*)y));
                for (int k = 1; k < 4; ++k)
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(v[k], _mm256_load_si256((const __m256i*)(y + 32 * k))));
                s = _mm256_add_epi32(s, _mm256_madd_epi16(p16, ones));
            } else {
                for (int k = 0; k < G / 4; k += 2) {
                    const __m256i y0 = _mm256_load_si256((const __m256i*)(y + 32 * k));
                    const __m256i y1 = _mm256_load_si256((const __m256i*)(y + 32 * k + 32));
                    __m256i p16;
                    if (SIGNED) {  // |w| x sign(y, w), as in tile
                        const __m256i pa = _mm256_maddubs_epi16(_mm256_sign_epi8(v[k], v[k]), _mm256_sign_epi8(y0, v[k]));
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(pa, ones));
                        p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v[k + 1], v[k + 1]), _mm256_sign_epi8(y1, v[k + 1]));
                    } else {
                        p16 = _mm256_add_epi16(_mm256_maddubs_epi16(v[k], y0), _mm256_maddubs_epi16(v[k + 1], y1));
                    }
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(p16, ones));
                }
            }
            const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(s), D);
            acc[t] = _mm256_fmadd_ps(f, _mm256_load_ps((const float*)(y + PG * G)), acc[t]);
            if (MIN) acc[t] = _mm256_fnmadd_ps(E, _mm256_load_ps((const float*)(y + PG * G + 32)), acc[t]);
        }
        a += PB;
    }
};

template <bool SIGNED, bool MIN, int NT>
static void gemv_nt(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap,
                    int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    const int64_t nb = cols / wtype_info(t).block_elems;
    const int64_t np = (cols + PG * wtype_info(t).group - 1) / (PG * wtype_info(t).group);
    const int64_t pf_step = rb / np;  // weight bytes per panel (what each panel prefetches)
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = w + r * rb;
        DotSink<SIGNED, MIN, NT> sink{ap, astride, {}, pf_dist > 0 ? row + pf_dist : nullptr, pf_step};
        for (int k = 0; k < NT; ++k) sink.acc[k] = _mm256_setzero_ps();
        for_each_panel(t, row, nb, sink, (nrows - 1 - r) * rb);
        for (int k = 0; k < NT; ++k) out[k * ldo + r] = hsum8(sink.acc[k]);
    }
}

template <bool SIGNED, bool MIN>
static void gemv_impl(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap, int nt,
                      int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    static_assert(kGemvMaxTokens == 4, "one case per token count");
    switch (nt) {
        case 1: gemv_nt<SIGNED, MIN, 1>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
        case 2: gemv_nt<SIGNED, MIN, 2>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
        case 3: gemv_nt<SIGNED, MIN, 3>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
        default: gemv_nt<SIGNED, MIN, 4>(t, w, nrows, rb, cols, ap, astride, out, ldo, pf_dist); break;
    }
}

void gemv_avx2(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap, int nt,
               int64_t astride, float* out, int64_t ldo, int64_t pf_dist) {
    const int off = weight_offset(t, true);  // 0: signed weights (Q8_0, IQ4_*); < 0: float min
    if (off == 0)
        gemv_impl<true, false>(t, w, nrows, rb, cols, ap, nt, astride, out, ldo, pf_dist);
    else if (off < 0)
        gemv_impl<false, true>(t, w, nrows, rb, cols, ap, nt, astride, out, ldo, pf_dist);
    else
        gemv_impl<false, false>(t, w, nrows, rb, cols, ap, nt, astride, out, ldo, pf_dist);
}

// ---- F32 / F16 weights ------------------------------------------------------------------------
// K: 0 = F32, 1 = F16, 2 = BF16 (the top half of a float32: widen, shift left 16).
// FloatTile::run<K, R, T>: the tile of R rows x T tokens that gemm_float_tiles (matmul_tier.h) loops over.
struct FloatTile {
    static constexpr bool kOneRowGemv16 = false;  // 4 rows at a time throughout (1 row: 1.08x the time, 2 threads)
    template <int K, int R, int T>
    static void run(const uint8_t* w, int64_t rb, int64_t cols, const float* x, int64_t ldx, float* out,
                    int64_t ldo) {
        __m256 acc[R][T];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= cols; i += 8) {
            float_tile_prefetch<K, R>(w, rb, i);
            __m256 wv[R];
            for (int r = 0; r < R; ++r) {
                if (K == 1)
                    wv[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + r * rb + 2 * i)));
                else if (K == 2)
                    wv[r] = _mm256_castsi256_ps(_mm256_slli_epi32(
                        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w + r * rb + 2 * i))), 16));
                else
                    wv[r] = _mm256_loadu_ps((const float*)(const void*)(w + r * rb + 4 * i));
            }
            for (int t = 0; t < T; ++t) {
                const __m256 xv = _mm256_loadu_ps(x + t * ldx + i);
                for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t) {
                float tot = hsum8(acc[r][t]);
                for (int64_t j = i; j < cols; ++j) {
                    float wj;
                    if (K == 1)
                        wj = _cvtsh_ss(load_u16(w + r * rb + 2 * j));
                    else if (K == 2)
                        wj = bf16_to_fp32(load_u16(w + r * rb + 2 * j));
                    else
                        std::memcpy(&wj, w + r * rb + 4 * j, 4);
                    tot += wj * x[t * ldx + j];
                }
                out[t * ldo + r] = tot;
            }
    }
};

// The per-type entries matmul_<type>_avx2 (listed at the top of this file; matmul_tier.h).
// Written out, not generated, so that `grep matmul_q4_K_avx2` finds the definition.
void matmul_f32_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_avx2, WType::F32, c, r0, r1);
}
void matmul_f16_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_avx2, WType::F16, c, r0, r1);
}
void matmul_q4_0_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q4_0, c, r0, r1, wbuf);
}
void matmul_q4_1_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q4_1, c, r0, r1, wbuf);
}
void matmul_q5_0_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_0, c, r0, r1, wbuf);
}
void matmul_q8_0_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q8_0, c, r0, r1, wbuf);
}
void matmul_q4_K_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q4_K, c, r0, r1, wbuf);
}
void matmul_q6_K_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q6_K, c, r0, r1, wbuf);
}
void matmul_bf16_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t*) {
    matmul_rows_float(matmul_kernels_avx2, WType::BF16, c, r0, r1);
}
void matmul_q5_1_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_1, c, r0, r1, wbuf);
}
void matmul_q5_K_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_K, c, r0, r1, wbuf);
}
void matmul_q2_K_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q2_K, c, r0, r1, wbuf);
}
void matmul_q3_K_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q3_K, c, r0, r1, wbuf);
}
void matmul_iq4_nl_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::IQ4_NL, c, r0, r1, wbuf);
}
void matmul_iq4_xs_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::IQ4_XS, c, r0, r1, wbuf);
}
void matmul_q3_K_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q3_K_R, c, r0, r1, wbuf);
}
void matmul_q2_K_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q2_K_R, c, r0, r1, wbuf);
}
void matmul_q4_K_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q4_K_R, c, r0, r1, wbuf);
}
void matmul_q6_K_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q6_K_R, c, r0, r1, wbuf);
}
void matmul_q5_K_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_K_R, c, r0, r1, wbuf);
}
void matmul_q5_0_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_0_R, c, r0, r1, wbuf);
}
void matmul_q5_1_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_1_R, c, r0, r1, wbuf);
}
void matmul_iq4_xs_R_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::IQ4_XS_R, c, r0, r1, wbuf);
}
void matmul_q4_0_P_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q4_0_P, c, r0, r1, wbuf);
}
void matmul_q4_1_P_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q4_1_P, c, r0, r1, wbuf);
}
void matmul_q5_0_P_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_0_P, c, r0, r1, wbuf);
}
void matmul_q5_1_P_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::Q5_1_P, c, r0, r1, wbuf);
}
void matmul_iq4_nl_P_avx2(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf) {
    matmul_rows_quant(matmul_kernels_avx2, WType::IQ4_NL_P, c, r0, r1, wbuf);
}

}  // namespace

const MatmulKernels matmul_kernels_avx2 = {
    "avx2", PG, true, true, false, true, pack_act_avx2, pack_w_avx2, gemm_avx2, gemm_float_tiles<FloatTile, 2>, gemv_avx2,
    PYENGINE_MATMUL_BY_TYPE(avx2),
};

}  // namespace pyengine
