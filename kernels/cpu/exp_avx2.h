// The part of exp that the AVX2 code shares (attention_avx2.cpp's exp8, the avx2 op table's
// exp_f8 in ops_generic.cpp): x = n ln2 + r, e^r by ExpConst's polynomial (ops.h) on 8 floats.
// The callers differ in their clamps and in how they apply 2^n. Compiled only with -mavx2 -mfma.
#pragma once

#include <immintrin.h>

#include "ops.h"

namespace pyengine {
namespace {

// e^r for x = n ln2 + r, n = x log2(e) rounded to nearest (returned in n), r in [-ln2/2, ln2/2]
inline __m256 exp_reduced8(__m256 x, __m256& n) {
    n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(ExpConst::log2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(ExpConst::ln2_hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(ExpConst::ln2_lo), r);
    __m256 p = _mm256_set1_ps(ExpConst::c[0]);
    for (int k = 1; k < 6; ++k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(ExpConst::c[k]));
    return _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
}

}  // namespace
}  // namespace pyengine
