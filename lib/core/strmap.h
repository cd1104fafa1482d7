/* String -> int32 hash map (vocabularies, the BPE word cache, checkpoint tensor
 * names, archive member names).
 * Keys are byte strings copied into the map; inserting an existing key
 * overwrites its value (as a Python dict built from a list does). */
#ifndef CLIP_STRMAP_H
#define CLIP_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t *slots; /* 1 + entry index, 0 = empty */
    uint32_t mask;
    uint32_t *key_off; /* per entry: key offset into pool */
    uint32_t *key_len;
    int32_t *value;
    uint32_t n, cap; /* entries */
    char *pool;
    size_t pool_len, pool_cap;
} strmap;

void strmap_init(strmap *m);
void strmap_free(strmap *m);
void strmap_clear(strmap *m);
void strmap_put(strmap *m, const char *key, size_t len, int32_t value);
/* 1 and *value when found, else 0. */
int strmap_get(const strmap *m, const char *key, size_t len, int32_t *value);

/* Same for (a, b) pairs of int32 (BPE merge ranks). */
typedef struct {
    uint64_t *keys; /* (a << 32 | b) + 1, 0 = empty */
    int32_t *value;
    uint32_t mask, n;
} pairmap;

void pairmap_init(pairmap *m);
void pairmap_free(pairmap *m);
void pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t value);
int pairmap_get(const pairmap *m, int32_t a, int32_t b, int32_t *value);

#endif
