// The contract between csrc/dispatch.cpp and the per-ISA matmul kernels
// (matmul_generic.cpp, matmul_avx2.cpp, matmul_avx512.cpp). Each tier names its
// per-type entry matmul_<type>_<tier> (matmul_q4_K_generic, matmul_q4_K_avx2,
// matmul_q4_K_avx512, ...; type spelled as ggml does) and lists them in its by_type table;
// both come from one macro pair in matmul_tier.h, with the loop of the float weight types.
//
// How a quantized matmul runs (every tier does the same arithmetic):
//
//  1. Each weight row is cut into *groups* of G elements that share one scale
//     (G = 32 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL/Q4_K/Q5_K/IQ4_XS, 16 for Q2_K/Q3_K/Q6_K).
//     A group unpacks (unpack_block in quants.h) to unsigned bytes q_i and two floats D, E
//     with  w_i = D * q_i - E:
//        Q4_0:   q = nibble,        D = d,      E = 8 d
//        Q4_1:   q = nibble,        D = d,      E = -m
//        Q5_0:   q = 5-bit value,   D = d,      E = 16 d
//        Q5_1:   q = 5-bit value,   D = d,      E = -m
//        Q8_0:   q = int8 + 128,    D = d,      E = 128 d    (AVX2 keeps q signed, E = 0; see there)
//        IQ4_NL: q = level + 128,   D = d,      E = 128 d    (level = kIQ4Values[nibble]; AVX2: signed)
//        Q2_K:   q = 2-bit value,   D = d sc_k, E = dmin m_k
//        Q3_K:   q = 3-bit value,   D = d sc_k, E = 4 d sc_k
//        Q4_K:   q = nibble,        D = d sc_j, E = dmin m_j
//        Q5_K:   q = 5-bit value,   D = d sc_j, E = dmin m_j
//        Q6_K:   q = 6-bit value,   D = d sc_j, E = 32 d sc_j
//        IQ4_XS: q = level + 128,   D = d sc_j, E = 128 d sc_j (AVX2: signed)
//  2. Activations are quantized to int8 per block of the weight type: 32 values for the
//     32-element types, 256 for the K-quants and IQ4_XS (kActBlock256 below; llama.cpp's
//     Q8_0 / Q8_K choice). amax = max |x| over the block, then y = x * (127/amax) rounded
//     to the nearest integer, ties to even (the factor 127/amax is one float division per
//     block; the rounding is nearbyint in the default rounding mode, cvtps_epi32 in the SIMD
//     tiers), scale dy = amax/127; a block with amax < 1e-30 (or NaN) becomes all zeros
//     with dy = 0. For each group we keep DY = dy (the same for every group of a 256-block)
//     and either
//        SY = dy * sum(y)            (float)  for the types with a real min (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K), or
//        C  = -off * sum(y)          (int32)  for the others, off = E / D = 8, 16, 128, 4, 32.
//  3. sum_i w_i x_i  ~=  D * DY * (sum_i q_i y_i + C)        (zero-point types: exact in int)
//                    or  D * DY *  sum_i q_i y_i  -  E * SY  (min types)
//     The integer dot is exact: u8 x s8 products are what vpdpbusd and maddubs compute,
//     and C simply starts the accumulator.
//
// Both sides are stored as *panels* of `lanes` groups (PG): per panel
//     [ PG*G bytes of q (or y) | PG floats D (or DY) | PG floats E (or SY / int32 C) ]
// A row of `cols` values is ceil(cols / (PG*G)) panels; groups past `cols` are zero.
// Inside a panel a SIMD tier transposes the bytes so that 32-bit lane l of every
// vector holds 4 bytes of one group: one vpdpbusd per vector then accumulates whole
// group dots per lane, and the float epilogue (D, DY, E, SY) runs once per panel.
// Weights and activations go through the same transposition, so they always match.
#pragma once

#include <cstdint>

#include "quants.h"

namespace pyengine {

struct MatmulCall;  // one call's shared state (below)

// The per-type entry of a tier, matmul_<type>_<tier>: columns [r0, r1) of out (n, rows)
// for one call, the unit of work of one thread. wbuf: that thread's buffer of
// rb_rows * stride bytes (unused by the float types).
using MatmulRowsFn = void (*)(const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf);

struct MatmulKernels {
    const char* name;
    int lanes;       // PG: groups per panel
    bool q8_signed;  // Q8_0 weights kept signed (offset 0) instead of int8 + 128
    // The gemv of one token reads Q3_K activations in the kActNatural form (below).
    bool gemv1_natural16;
    // The gemv (n <= kGemvMaxTokens) reads the load-time forms' activations in kActFormLanes (below).
    bool gemv_form_lanes;
    // pack_w and gemv read the panel forms (Q4_0_P, ..., quants.h); for a tier that does not,
    // matmul_rows_quant rewrites their rows back into the GGUF type, a few at a time, first.
    bool panel_forms;

    // Quantize one token x[0..cols) into panels of group size G (dst: n_panels * panel_bytes).
    // off >= 0: the B field gets int32 C = -off * sum(y); off < 0: float SY = dy * sum(y).
    void (*pack_act)(const float* x, int64_t cols, int G, int off, uint8_t* dst);
    // Unpack one GGUF weight row (cols elements of type t) into panels.
    void (*pack_w)(WType t, const uint8_t* row, int64_t cols, uint8_t* dst);
    // out[t*ldo + r] = dot(weight row r, token t) for r < nr, t < nt; rows and tokens are
    // packed with stride n_panels * panel_bytes.
    void (*gemm)(WType t, int G, int64_t n_panels, const uint8_t* wp, int nr, const uint8_t* ap, int nt,
                 float* out, int64_t ldo);
    // F32 / F16 weights (no quantization): out[t*ldo + r] = sum_i w[r][i] * x[t*ldx + i].
    void (*gemm_float)(WType t, const uint8_t* w, int64_t row_bytes, int64_t cols, int nr, const float* x,
                       int64_t ldx, int nt, float* out, int64_t ldo);
    // Optional (nullptr: use pack_w + gemm). nrows consecutive GGUF weight rows (rb bytes apart)
    // against nt <= kGemvMaxTokens packed tokens (stride astride), unpacking each panel straight
    // into registers: out[t*ldo + r] = dot(row r, token t). Same arithmetic as pack_w + gemm.
    // (A range of rows, not one: what depends only on the shape is worked out once per call.)
    // pf_dist > 0: while reading each panel, prefetch the weight bytes pf_dist further on
    // (the rows of one call are contiguous, so this runs into the next rows): a steady
    // stream, a few cache lines per panel, instead of a burst per row.
    void (*gemv)(WType t, const uint8_t* w, int64_t nrows, int64_t rb, int64_t cols, const uint8_t* ap, int nt,
                 int64_t astride, float* out, int64_t ldo, int64_t pf_dist);
    // matmul_<type>_<tier> of every type, indexed by (int)WType (see MatmulRowsFn above).
    MatmulRowsFn by_type[(int)WType::COUNT];
};

constexpr int kGemvMaxTokens = 4;

// How far ahead of its reads a float weight tile (F32/F16/BF16, 4 rows or 1 at a time) prefetches
// each row: one prefetch per cache line, 2 KB ahead. First tuned on a 4096x4096 BF16 matrix from
// memory (AVX-512, 2 threads, one FMA chain then): 28-30 GB/s without, 39 with 1 KB, 32-33 with
// 512 B or 2 KB. Since the tiles sum in two chains (9a51037) they consume faster: on a machine
// whose bus gives 45-84 GB/s, tg32 of a synthetic 1B, 2 threads, alternating, 2 KB / 1 KB:
// AVX-512 BF16 1.02-1.12 (6 rounds), F16 1.03-1.17 (3), AVX2 BF16 0.96-1.07 (6, 5 faster); 4 KB
// level with 2 KB on AVX-512 and slower on AVX2, 512 B slower (2026-12-08).
constexpr int64_t kFloatPrefetchBytes = 2048;

// pack_act's G may carry this flag (G = 16 only): the panel's int8 values stay in natural
// order (byte i = value i of the panel) while the DY and B floats keep the lane order. A
// one-token gemv that sums each group's products with horizontal adds (AVX2 Q3_K)
// reads the weights as they unpack, without transposing them into lanes first.
constexpr int kActNatural = 0x100;

// pack_act's G may carry this flag: one int8 scale per 256 activation values instead of per
// 32 (set for the super-block weight types by act_group). Every group of a 256-block gets
// the same DY, so the kernels need not know.
constexpr int kActBlock256 = 0x200;

// pack_act's G may carry this flag (set by act_group for a tier's gemv of a load-time form of a
// 256-element type, Q2_K_R / Q3_K_R / Q4_K_R / Q5_K_R / Q6_K_R / IQ4_XS_R): the panel's lanes are moved (whole dwords, DY and B with
// them) into the order in which the form's bytes hold the groups, so that the gemv loads the
// weights straight into lanes, without a permute per vector. The tier's gemv moves its lane
// sums back into the usual order before adding them up: the same results bit for bit.
constexpr int kActFormLanes = 0x400;

// The G that pack_act gets for a matmul of n tokens of type t on tier k. The types listed here
// must be exactly those whose one-token gemv sums with horizontal adds (matmul_avx2.cpp:
// DotSink's HADD, the types unpacked with SMALL); test_few_tokens_give_the_same_bits_as_many
// fails on any mismatch.
// The load-time forms whose gemv reads kActFormLanes on a tier with gemv_form_lanes: those of the
// 256-element types (a super-block's groups in the AVX2 lanes' order). Q5_0_R / Q5_1_R keep the usual lanes.
static inline bool form_in_own_lanes(WType t) { return load_form_source(t) != t && wtype_info(t).block_elems == 256; }

static inline int act_group(const MatmulKernels& k, WType t, int G, int64_t n) {
    if (wtype_info(t).block_elems == 256) G |= kActBlock256;  // the spec's act_block
    if (k.gemv1_natural16 && n == 1 && t == WType::Q3_K) G |= kActNatural;
    if (k.gemv_form_lanes && k.gemv != nullptr && n <= kGemvMaxTokens && form_in_own_lanes(t)) G |= kActFormLanes;
    return G;
}

// The zero point a type's unpacked bytes carry (q = w/D + off), or -1 for types with a
// float min, whose correction stays in float (E * SY).
static inline int weight_offset(WType t, bool q8_signed) {
    switch (load_form_source(t)) {  // a load-time form's: its GGUF type's
        case WType::Q4_0: return 8;
        case WType::Q5_0: return 16;
        case WType::Q8_0:
        case WType::IQ4_NL:
        case WType::IQ4_XS: return q8_signed ? 0 : 128;
        case WType::Q3_K: return 4;
        case WType::Q6_K: return 32;
        default: return -1;  // Q4_1, Q5_1, Q2_K, Q4_K, Q5_K
    }
}

static inline int64_t panel_elems(const MatmulKernels& k, int G) { return (int64_t)k.lanes * G; }
static inline int64_t panel_bytes(const MatmulKernels& k, int G) { return (int64_t)k.lanes * (G + 8); }
static inline int64_t n_panels(const MatmulKernels& k, int G, int64_t cols) {
    const int64_t pe_ = panel_elems(k, G);
    return (cols + pe_ - 1) / pe_;
}

// ---- one matmul call, split over threads by rows -------------------------------------
// What csrc/dispatch.cpp sets up once per call and every worker thread reads (each
// worker takes its own copy; the shared one sits alone on its cache lines).
struct alignas(64) MatmulCall {
    const uint8_t* w;    // (rows, rb) GGUF bytes of the weight
    int64_t rows, cols;
    int64_t rb;          // bytes of one weight row
    const float* x;      // (n, cols) float activations (what the float weight types read)
    const uint8_t* act;  // (n, stride) activations packed by pack_act (quantized types)
    int64_t n;           // tokens
    int G;               // group size of the weight type (0 for float types)
    int act_G;           // G as pack_act got it (act_group: may carry kActNatural, kActBlock256)
    int64_t np;          // panels per packed row
    int64_t stride;      // bytes of one packed row / token (np * panel_bytes)
    int64_t rb_rows;     // weight rows unpacked at a time into a thread's buffer
    int64_t pf_rows;     // prefetch distance of the packing path (more tokens), in weight rows
    float* out;          // (n, rows)
};

// The bodies every matmul_<type>_<tier> runs with its own type and tier's kernels,
// defined once in csrc/dispatch.cpp (compiled without ISA flags: they only loop and call
// the tier's kernels through k):
//  - quantized types: out[:, r0:r1) from weight rows [r0, r1) and the activations c.act
//    packed by k.pack_act. Few tokens (n <= kGemvMaxTokens, tier has a gemv): the rows go
//    to k.gemv in one call, which unpacks each straight into registers against every
//    token. Otherwise rb_rows rows
//    at a time are unpacked into wbuf (pack_w) and every token runs against them (gemm),
//    so each unpacked byte is reused n times.
//  - float types (F32/F16/BF16): out[:, r0:r1) from weight rows [r0, r1) and x in float,
//    64 tokens at a time (no quantization of x).
void matmul_rows_quant(const MatmulKernels& k, WType t, const MatmulCall& c, int64_t r0, int64_t r1, uint8_t* wbuf);
void matmul_rows_float(const MatmulKernels& k, WType t, const MatmulCall& c, int64_t r0, int64_t r1);

extern const MatmulKernels matmul_kernels_generic;
#ifdef PYENGINE_HAVE_X86_VARIANTS
extern const MatmulKernels matmul_kernels_avx2;
extern const MatmulKernels matmul_kernels_avx512;
#endif

}  // namespace pyengine
