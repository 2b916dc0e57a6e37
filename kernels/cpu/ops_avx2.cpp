// The "avx2" op variant: the portable loops of ops_generic.cpp compiled with AVX2/FMA
// flags (CMake gives *_avx2.cpp files -mavx2 -mfma -mf16c), so the compiler vectorises
// them 8 floats wide; its attention is attention_avx2 (attention_avx2.cpp). Used on CPUs with AVX2 but
// without AVX-512 (and selectable by name on AVX-512 CPUs).
#define PYENGINE_OPS_AVX2 1
#include "ops_generic.cpp"
