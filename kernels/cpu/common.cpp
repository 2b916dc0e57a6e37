// Scalar dequantization of whole rows (used by get_rows / embedding lookups).
#include "common.h"

#include <vector>

namespace pyengine {

int64_t row_bytes(WType t, int64_t cols) {
    const WTypeInfo& ti = wtype_info(t);
    if (cols < 0 || cols % ti.block_elems) return -1;
    return cols / ti.block_elems * ti.block_bytes;
}

void dequantize_row(WType t, const uint8_t* row, int64_t cols, float* out) {
    switch (t) {
        case WType::F32:
            std::memcpy(out, row, (size_t)cols * 4);
            return;
        case WType::F16:
            for (int64_t i = 0; i < cols; ++i) out[i] = fp16_to_fp32(load_u16(row + 2 * i));
            return;
        case WType::BF16:
            for (int64_t i = 0; i < cols; ++i) out[i] = bf16_to_fp32(load_u16(row + 2 * i));
            return;
        default:
            break;
    }
    const WTypeInfo& ti = wtype_info(t);
    const int64_t nb = cols / ti.block_elems;
    if (is_panel_form(t)) {  // the whole row back into its GGUF type first
        std::vector<uint8_t> gguf((size_t)(nb * ti.block_bytes));
        convert_form_row(t, row, gguf.data(), nb, true);
        dequantize_row(load_form_source(t), gguf.data(), cols, out);
        return;
    }
    for (int64_t b = 0; b < nb; ++b, out += ti.block_elems) {
        const uint8_t* blk = row + b * ti.block_bytes;
        if (load_form_source(t) != t) {  // a load-time form: the GGUF block it was made from
            uint8_t gb[256];
            convert_load_form(t, blk, gb, true);
            dequantize_row(load_form_source(t), gb, ti.block_elems, out);
            continue;
        }
        switch (t) {
            case WType::Q4_0: {
                const float d = fp16_to_fp32(load_u16(blk));
                const uint8_t* qs = blk + 2;
                for (int i = 0; i < 16; ++i) {
                    out[i] = d * (float)((qs[i] & 15) - 8);
                    out[i + 16] = d * (float)((qs[i] >> 4) - 8);
                }
                break;
            }
            case WType::Q4_1: {
                const float d = fp16_to_fp32(load_u16(blk)), m = fp16_to_fp32(load_u16(blk + 2));
                const uint8_t* qs = blk + 4;
                for (int i = 0; i < 16; ++i) {
                    out[i] = d * (float)(qs[i] & 15) + m;
                    out[i + 16] = d * (float)(qs[i] >> 4) + m;
                }
                break;
            }
            case WType::Q5_0: {
                const float d = fp16_to_fp32(load_u16(blk));
                const uint32_t qh = load_u32(blk + 2);
                const uint8_t* qs = blk + 6;
                for (int i = 0; i < 16; ++i) {
                    const int lo = (qs[i] & 15) | (int)((qh >> i) & 1) << 4;
                    const int hi = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
                    out[i] = d * (float)(lo - 16);
                    out[i + 16] = d * (float)(hi - 16);
                }
                break;
            }
            case WType::Q8_0: {
                const float d = fp16_to_fp32(load_u16(blk));
                const int8_t* qs = (const int8_t*)(blk + 2);
                for (int i = 0; i < 32; ++i) out[i] = d * (float)qs[i];
                break;
            }
            case WType::Q4_K: {
                const float d = fp16_to_fp32(load_u16(blk)), dmin = fp16_to_fp32(load_u16(blk + 2));
                uint8_t sc[8], m[8];
                q4k_scales_mins(blk + 4, sc, m);
                const uint8_t* qs = blk + 16;
                for (int c = 0; c < 4; ++c) {
                    const float d0 = d * (float)sc[2 * c], m0 = dmin * (float)m[2 * c];
                    const float d1 = d * (float)sc[2 * c + 1], m1 = dmin * (float)m[2 * c + 1];
                    for (int i = 0; i < 32; ++i) {
                        out[64 * c + i] = d0 * (float)(qs[32 * c + i] & 15) - m0;
                        out[64 * c + 32 + i] = d1 * (float)(qs[32 * c + i] >> 4) - m1;
                    }
                }
                break;
            }
            case WType::Q6_K: {
                const block_q6_K* q6 = (const block_q6_K*)blk;
                const float d = fp16_to_fp32(load_u16(blk + 208));
                for (int h = 0; h < 2; ++h) {
                    const uint8_t* ql = q6->ql + 64 * h;
                    const uint8_t* qh = q6->qh + 32 * h;
                    const int8_t* sc = q6->scales + 8 * h;
                    float* y = out + 128 * h;
                    for (int l = 0; l < 32; ++l) {
                        const int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
                        const int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
                        const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                        const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                        const int is = l / 16;
                        y[l] = (d * (float)sc[is + 0]) * (float)q1;
                        y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
                        y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
                        y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
                    }
                }
                break;
            }
            case WType::Q5_1: {  // x = d * q + m, q = nibble | bit i of qh << 4
                const float d = fp16_to_fp32(load_u16(blk)), m = fp16_to_fp32(load_u16(blk + 2));
                const uint32_t qh = load_u32(blk + 4);
                const uint8_t* qs = blk + 8;
                for (int i = 0; i < 16; ++i) {
                    const int lo = (qs[i] & 15) | (int)((qh >> i) & 1) << 4;
                    const int hi = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
                    out[i] = d * (float)lo + m;
                    out[i + 16] = d * (float)hi + m;
                }
                break;
            }
            case WType::Q5_K: {  // x = (d sc_j) q - dmin m_j, q = nibble | bit 2c (+1) of qh[l] << 4
                const float d = fp16_to_fp32(load_u16(blk)), dmin = fp16_to_fp32(load_u16(blk + 2));
                uint8_t sc[8], m[8];
                q4k_scales_mins(blk + 4, sc, m);
                const uint8_t* qh = blk + 16;
                const uint8_t* qs = blk + 48;
                for (int c = 0; c < 4; ++c) {
                    const float d0 = d * (float)sc[2 * c], m0 = dmin * (float)m[2 * c];
                    const float d1 = d * (float)sc[2 * c + 1], m1 = dmin * (float)m[2 * c + 1];
                    for (int i = 0; i < 32; ++i) {
                        const int lo = (qs[32 * c + i] & 15) | ((qh[i] >> (2 * c)) & 1) << 4;
                        const int hi = (qs[32 * c + i] >> 4) | ((qh[i] >> (2 * c + 1)) & 1) << 4;
                        out[64 * c + i] = d0 * (float)lo - m0;
                        out[64 * c + 32 + i] = d1 * (float)hi - m1;
                    }
                }
                break;
            }
            case WType::Q2_K: {  // x = (d sc_k) q - dmin m_k; value 128c + 32j + l in bits 2j of qs[32c + l]
                const float d = fp16_to_fp32(load_u16(blk + 80)), dmin = fp16_to_fp32(load_u16(blk + 82));
                const uint8_t* qs = blk + 16;
                for (int c = 0; c < 2; ++c)
                    for (int j = 0; j < 4; ++j)
                        for (int l = 0; l < 32; ++l) {
                            const int v = 128 * c + 32 * j + l, k = v / 16;
                            const float dl = d * (float)(blk[k] & 15), ml = dmin * (float)(blk[k] >> 4);
                            out[v] = dl * (float)((qs[32 * c + l] >> (2 * j)) & 3) - ml;
                        }
                break;
            }
            case WType::Q3_K: {  // x = (d sc_k) (q - 4), q = 2 bits of qs | hmask bit << 2
                const float d = fp16_to_fp32(load_u16(blk + 108));
                int8_t sc[16];
                q3k_scales(blk + 96, sc);
                const uint8_t* qs = blk + 32;
                for (int c = 0; c < 2; ++c)
                    for (int j = 0; j < 4; ++j)
                        for (int l = 0; l < 32; ++l) {
                            const int v = 128 * c + 32 * j + l;
                            const int q = ((qs[32 * c + l] >> (2 * j)) & 3) | ((blk[l] >> (4 * c + j)) & 1) << 2;
                            out[v] = (d * (float)sc[v / 16]) * (float)(q - 4);
                        }
                break;
            }
            case WType::IQ4_NL: {  // x = d * level[nibble]
                const float d = fp16_to_fp32(load_u16(blk));
                for (int i = 0; i < 16; ++i) {
                    out[i] = d * (float)kIQ4Values[blk[2 + i] & 15];
                    out[i + 16] = d * (float)kIQ4Values[blk[2 + i] >> 4];
                }
                break;
            }
            case WType::IQ4_XS: {  // x = (d sc_j) level[nibble]
                const float d = fp16_to_fp32(load_u16(blk));
                int8_t sc[8];
                iq4xs_scales(blk, sc);
                for (int j = 0; j < 8; ++j) {
                    const float dl = d * (float)sc[j];
                    const uint8_t* qs = blk + 8 + 16 * j;
                    for (int i = 0; i < 16; ++i) {
                        out[32 * j + i] = dl * (float)kIQ4Values[qs[i] & 15];
                        out[32 * j + 16 + i] = dl * (float)kIQ4Values[qs[i] >> 4];
                    }
                }
                break;
            }
            default:
                break;
        }
    }
}

}  // namespace pyengine
