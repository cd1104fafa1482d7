#include "core/dtype.h"

#include <stdint.h>
#include <string.h>

static const dtype_info dtypes[DT_COUNT] = {
    [DT_F32] = {"float32", 4, "F32", "FloatStorage", "<f4"},
    [DT_F16] = {"float16", 2, "F16", "HalfStorage", "<f2"},
    [DT_BF16] = {"bfloat16", 2, "BF16", "BFloat16Storage", NULL},
    [DT_F64] = {"float64", 8, "F64", "DoubleStorage", NULL},
    [DT_I64] = {"int64", 8, "I64", "LongStorage", "<i8"},
    [DT_I32] = {"int32", 4, "I32", "IntStorage", "<i4"},
    [DT_I16] = {"int16", 2, "I16", "ShortStorage", NULL},
    [DT_I8] = {"int8", 1, "I8", "CharStorage", NULL},
    [DT_U8] = {"uint8", 1, "U8", "ByteStorage", "|u1"},
    [DT_BOOL] = {"bool", 1, "BOOL", "BoolStorage", NULL},
};

const dtype_info *dtype_info_of(clip_dtype t) { return (unsigned)t < DT_COUNT ? &dtypes[t] : NULL; }
size_t dtype_size(clip_dtype t) { return (unsigned)t < DT_COUNT ? dtypes[t].size : 0; }
const char *dtype_name(clip_dtype t) { return (unsigned)t < DT_COUNT ? dtypes[t].name : "?"; }

static int same(const char *a, size_t len, const char *b)
{
    return b && strlen(b) == len && !memcmp(a, b, len);
}

int dtype_from_safetensors(const char *code, size_t len, clip_dtype *t)
{
    for (int i = 0; i < DT_COUNT; i++)
        if (same(code, len, dtypes[i].safetensors)) return *t = i, 0;
    return -1;
}

int dtype_from_torch_storage(const char *name, size_t len, clip_dtype *t)
{
    for (int i = 0; i < DT_COUNT; i++)
        if (same(name, len, dtypes[i].torch_storage)) return *t = i, 0;
    return -1;
}

int dtype_from_npy_descr(const char *descr, size_t len, clip_dtype *t)
{
    for (int i = 0; i < DT_COUNT; i++) {
        const char *d = dtypes[i].npy_descr;
        if (!d) continue;
        if (same(descr, len, d) ||
            (dtypes[i].size == 1 && len == 3 && (descr[0] == '<' || descr[0] == '|') &&
             !memcmp(descr + 1, d + 1, 2)))
            return *t = i, 0;
    }
    return -1;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void dtype_to_f32(clip_dtype t, const void *src, size_t n, float *dst)
{
    const unsigned char *s = src;
    if (!n) return;
    switch (t) {
    case DT_F32: memcpy(dst, s, n * 4); break;
    case DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        break;
    case DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
#define CONVERT(T)                                                                                 \
    for (size_t i = 0; i < n; i++) {                                                               \
        T v;                                                                                       \
        memcpy(&v, s + sizeof(T) * i, sizeof(T));                                                  \
        dst[i] = (float)v;                                                                         \
    }                                                                                              \
    break;
    case DT_F64: CONVERT(double)
    case DT_I64: CONVERT(int64_t)
    case DT_I32: CONVERT(int32_t)
    case DT_I16: CONVERT(int16_t)
    case DT_I8: CONVERT(int8_t)
    case DT_U8: CONVERT(uint8_t)
    case DT_BOOL:
        for (size_t i = 0; i < n; i++) dst[i] = s[i] ? 1.0f : 0.0f;
        break;
#undef CONVERT
    }
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (x >> 16) & 0x8000;
    uint32_t a = x & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00;     /* NaN */
    if (a >= 0x477ff000) return sign | 0x7c00;    /* rounds to >= 65520: inf */
    if (a < 0x38800000) {                         /* below 2^-14: subnormal or zero */
        if (a < 0x33000000) return sign;          /* below half the smallest subnormal */
        uint32_t man = (a & 0x7fffff) | 0x800000; /* 24-bit significand */
        int shift = 126 - (int)(a >> 23);         /* 14..24 more bits to drop */
        uint32_t kept = man >> shift, rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (kept & 1))) kept++;
        return sign | (uint16_t)kept;
    }
    uint32_t r = a + 0xfff + ((a >> 13) & 1); /* round the 13 dropped bits to nearest even */
    return sign | (uint16_t)((r >> 13) - (112u << 10));
}

int dtype_from_f32(clip_dtype t, const float *src, size_t n, void *dst)
{
    unsigned char *d = dst;
    switch (t) {
    case DT_F32: memcpy(dst, src, n * 4); return 0;
    case DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    case DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    default: return -1;
    }
}
