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

}  // namespace pyengine
