/* core/dtype.c's conversions against independent ones: float16 against the
 * compiler's _Float16 (IEEE round to nearest even), bfloat16 against choosing
 * the nearer of the two neighbours in double; and every float16 and bfloat16
 * value round-trips through float32. */
#include "core/dtype.h"
#include "unit.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint16_t bf16_nearest(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t lo = x & 0xffff0000u, hi = lo + 0x10000u;
    float flo, fhi;
    memcpy(&flo, &lo, 4);
    memcpy(&fhi, &hi, 4);
    double dlo = fabs((double)f - flo), dhi = fabs((double)fhi - f);
    return (uint16_t)((dhi < dlo || (dhi == dlo && (lo >> 16) & 1) ? hi : lo) >> 16);
}

int main(void)
{
    long f16_bad = 0, bf16_bad = 0, trip_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t v = (uint16_t)h, back;
        float f;
        dtype_to_f32(DT_F16, &v, 1, &f);
        dtype_from_f32(DT_F16, &f, 1, &back);
        if (!isnan(f) && back != v) trip_bad++;
        dtype_to_f32(DT_BF16, &v, 1, &f);
        dtype_from_f32(DT_BF16, &f, 1, &back);
        if (!isnan(f) && back != v) trip_bad++;
    }
    for (uint64_t b = 0; b < (1ull << 32); b += 997) {
        uint32_t bits = (uint32_t)b;
        float f;
        memcpy(&f, &bits, 4);
        uint16_t ours, want;
        dtype_from_f32(DT_F16, &f, 1, &ours);
        _Float16 ref = (_Float16)f;
        memcpy(&want, &ref, 2);
        if (isnan(f) ? (ours & 0x7c00) != 0x7c00 || !(ours & 0x3ff) : ours != want) f16_bad++;
        dtype_from_f32(DT_BF16, &f, 1, &ours);
        if (isnan(f) ? (ours & 0x7f80) != 0x7f80 || !(ours & 0x7f)
                     : !isinf(f) && fabsf(f) < 3.38e38f && ours != bf16_nearest(f))
            bf16_bad++;
    }
    CHECK(trip_bad == 0, "%ld float16/bfloat16 values do not round-trip through float32", trip_bad);
    CHECK(f16_bad == 0, "%ld of 4.3M float32 values round to float16 unlike _Float16", f16_bad);
    CHECK(bf16_bad == 0, "%ld of 4.3M float32 values round to bfloat16 not to the nearer neighbour",
          bf16_bad);
    clip_dtype t;
    CHECK(!dtype_from_npy_descr("<f4", 3, &t) && t == DT_F32, "npy <f4");
    CHECK(!dtype_from_npy_descr("<u1", 3, &t) && t == DT_U8, "npy <u1 for a one-byte type");
    CHECK(dtype_from_npy_descr(">f4", 3, &t) < 0, "big-endian npy refused");
    CHECK(!dtype_from_safetensors("BF16", 4, &t) && t == DT_BF16, "safetensors BF16");
    CHECK(dtype_from_safetensors("BF1", 3, &t) < 0, "a prefix is no name");
    CHECK(!dtype_from_torch_storage("HalfStorage", 11, &t) && t == DT_F16, "torch HalfStorage");
    return unit_done();
}
