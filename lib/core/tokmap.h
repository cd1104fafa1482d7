/* String -> int32 hash map for the tokenisers (vocabularies, BPE word cache).
 * Keys are byte strings copied into the map; inserting an existing key
 * overwrites its value (as a Python dict built from a list does). */
#ifndef CLIP_TOKMAP_H
#define CLIP_TOKMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t *slots;    /* 1 + entry index, 0 = empty */
    uint32_t mask;
    uint32_t *key_off;  /* per entry: key offset into pool */
    uint32_t *key_len;
    int32_t *value;
    uint32_t n, cap;    /* entries */
    char *pool;
    size_t pool_len, pool_cap;
} tokmap;

void tokmap_init(tokmap *m);
void tokmap_free(tokmap *m);
void tokmap_clear(tokmap *m);
void tokmap_put(tokmap *m, const char *key, size_t len, int32_t value);
/* 1 and *value when found, else 0. */
int tokmap_get(const tokmap *m, const char *key, size_t len, int32_t *value);

/* Same for (a, b) pairs of int32 (BPE merge ranks). */
typedef struct {
    uint64_t *keys;     /* (a << 32 | b) + 1, 0 = empty */
    int32_t *value;
    uint32_t mask, n;
} pairmap;

void pairmap_init(pairmap *m);
void pairmap_free(pairmap *m);
void pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t value);
int pairmap_get(const pairmap *m, int32_t a, int32_t b, int32_t *value);

#endif
