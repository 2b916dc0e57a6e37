// Run-time selection of the CPU kernel tier and the multi-threaded matmul driver.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "matmul_kernels.h"

namespace pyengine {

// Tiers this CPU can run, slowest first: "generic" always, then "avx2", "avx512".
std::vector<std::string> available_variants();

// "auto" -> the best available (or $PYENGINE_CPU_VARIANT if set); otherwise the named tier.
// Throws std::invalid_argument (unknown name / not runnable on this CPU).
const MatmulKernels& select_variant(const std::string& name);

// out (n, rows) = x (n, cols) @ W.T for W (rows, cols) given as GGUF bytes of type t.
// Quantizes x once (per call), splits rows over the thread pool. Thread-safe.
void matmul(WType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* out,
            const MatmulKernels& k);

// One product of a matmul_group: out (n, rows) = x (n, cols) @ W.T, W (rows, cols) of type t.
struct MatmulPart {
    WType t;
    const uint8_t* w;
    int64_t rows, cols;
    const float* x;
    int64_t n;
    float* out;
};

// Every part's matmul (out = x @ W.T), as matmul() computes it, bit for bit: q/k/v of a layer
// (one x), the routed experts of a MoE layer, the per-head products of MLA. When every part is
// quantized and has few tokens (n <= kGemvMaxTokens: the gemv), they run as one job on the
// thread pool, each thread taking one contiguous share of the parts' weight bytes: one
// barrier instead of one per matrix, and small matrices no longer split two ways alone. Each
// distinct (x, packing form) is quantized once. Otherwise they run one matmul() after another,
// in order. No part's output may overlap any part's x or another part's output.
void matmul_group(const MatmulPart* parts, int n_parts, const MatmulKernels& k);

// out (n, cols) = dequantized rows ids[0..n) of W (rows, cols). ids must be in range.
void get_rows(WType t, const uint8_t* w, int64_t rows, int64_t cols, const int32_t* ids, int64_t n, float* out);

}  // namespace pyengine
