#include "train/patch_mask.h"

#include <stdlib.h>

#include "core/util.h"

int patch_mask_keep(int patches, double ratio)
{
    int keep = (int)(patches * (1.0 - ratio));
    return keep < 1 ? 1 : keep > patches ? patches : keep;
}

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a * 0x9e3779b97f4a7c15ull ^ b;
    return splitmix64(&s);
}

/* (noise, index) pairs: larger noise first, then the lower index */
static int by_noise(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0]) return x[0] < y[0] ? 1 : -1;
    return (x[1] > y[1]) - (x[1] < y[1]);
}

static int by_index(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void patch_mask_indices(uint64_t seed, long step, int64_t position, int patches, int keep,
                        int32_t *kept, uint64_t *scratch)
{
    uint64_t state = mix(mix(seed ^ PATCH_MASK_SALT, (uint64_t)step), (uint64_t)position);
    for (int p = 0; p < patches; p++) {
        scratch[2 * p] = splitmix64(&state);
        scratch[2 * p + 1] = (uint64_t)p;
    }
    qsort(scratch, patches, 2 * sizeof *scratch, by_noise);
    for (int j = 0; j < keep; j++) kept[j] = (int32_t)scratch[2 * j + 1];
    qsort(kept, keep, sizeof *kept, by_index);
}
