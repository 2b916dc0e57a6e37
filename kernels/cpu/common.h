// CPU helpers shared by every tier, compiled without ISA flags (generic code only).
#pragma once

#include <cstdint>

#include "quants.h"

namespace pyengine {

// Dequantize one GGUF row of `cols` elements of type t to float32 (embedding lookups).
// Same formulas, in the same order, as the NumPy reference (pyengine.quants / ggml).
void dequantize_row(WType t, const uint8_t* row, int64_t cols, float* out);

// Bytes one row of `cols` elements of type t occupies; -1 if cols is not a whole number of blocks.
int64_t row_bytes(WType t, int64_t cols);

// a * b for a, b >= 0 into *out, or false when either is negative or the product does not fit
// int64 (no wrap-around: a weight of 2**58 rows must not pass a size check as 0 bytes). Every
// binding sizes the arrays it is given with it.
inline bool mul_fits(int64_t a, int64_t b, int64_t* out) {
    if (a < 0 || b < 0 || (b != 0 && a > INT64_MAX / b)) return false;
    *out = a * b;
    return true;
}

}  // namespace pyengine
