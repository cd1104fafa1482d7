/* Open addressing with linear probing; tables stay at most half full. */
#include "core/strmap.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h ^ (h >> 15);
}

void strmap_init(strmap *m)
{
    memset(m, 0, sizeof *m);
    m->mask = 1023;
    m->slots = xcalloc(m->mask + 1, sizeof *m->slots);
    /* never NULL, not even for a first key of 0 bytes: m->pool + 0 and memcpy(NULL, ...)
     * are undefined (fuzz_annotations, an annotation with the image "") */
    m->pool_cap = 4096;
    m->pool = xmalloc(m->pool_cap);
}

void strmap_free(strmap *m)
{
    free(m->slots);
    free(m->key_off);
    free(m->key_len);
    free(m->value);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

void strmap_clear(strmap *m)
{
    memset(m->slots, 0, (m->mask + 1) * sizeof *m->slots);
    m->n = 0;
    m->pool_len = 0;
}

static uint32_t *find_slot(const strmap *m, const char *key, size_t len)
{
    uint32_t i = hash_bytes(key, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        uint32_t e = m->slots[i];
        if (!e) return &m->slots[i];
        e--;
        if (m->key_len[e] == len && !memcmp(m->pool + m->key_off[e], key, len)) return &m->slots[i];
    }
}

static void grow(strmap *m)
{
    uint32_t nmask = m->mask * 2 + 1;
    free(m->slots);
    m->slots = xcalloc((size_t)nmask + 1, sizeof *m->slots);
    m->mask = nmask;
    for (uint32_t e = 0; e < m->n; e++)
        *find_slot(m, m->pool + m->key_off[e], m->key_len[e]) = e + 1;
}

void strmap_put(strmap *m, const char *key, size_t len, int32_t value)
{
    uint32_t *slot = find_slot(m, key, len);
    if (*slot) {
        m->value[*slot - 1] = value;
        return;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->key_off = xrealloc(m->key_off, m->cap * sizeof *m->key_off);
        m->key_len = xrealloc(m->key_len, m->cap * sizeof *m->key_len);
        m->value = xrealloc(m->value, m->cap * sizeof *m->value);
    }
    if (m->pool_len + len > m->pool_cap) {
        m->pool_cap = (m->pool_len + len) * 2 + 4096;
        m->pool = xrealloc(m->pool, m->pool_cap);
    }
    memcpy(m->pool + m->pool_len, key, len);
    m->key_off[m->n] = m->pool_len;
    m->key_len[m->n] = len;
    m->value[m->n] = value;
    m->pool_len += len;
    *slot = ++m->n;
    if (m->n * 2 > m->mask) grow(m);
}

int strmap_get(const strmap *m, const char *key, size_t len, int32_t *value)
{
    uint32_t e = *find_slot(m, key, len);
    if (!e) return 0;
    *value = m->value[e - 1];
    return 1;
}

static uint32_t hash_pair(uint64_t k)
{
    k *= 0x9E3779B97F4A7C15ull;
    return (uint32_t)(k >> 32);
}

void pairmap_init(pairmap *m)
{
    m->mask = 1023;
    m->n = 0;
    m->keys = xcalloc(m->mask + 1, sizeof *m->keys);
    m->value = xcalloc(m->mask + 1, sizeof *m->value);
}

void pairmap_free(pairmap *m)
{
    free(m->keys);
    free(m->value);
    memset(m, 0, sizeof *m);
}

static uint32_t pair_slot(const pairmap *m, uint64_t k)
{
    uint32_t i = hash_pair(k) & m->mask;
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & m->mask;
    return i;
}

void pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t value)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t i = pair_slot(m, k);
    if (!m->keys[i]) {
        m->keys[i] = k;
        if (++m->n * 2 > m->mask) {
            pairmap old = *m;
            m->mask = old.mask * 2 + 1;
            m->keys = xcalloc((size_t)m->mask + 1, sizeof *m->keys);
            m->value = xcalloc((size_t)m->mask + 1, sizeof *m->value);
            for (uint32_t j = 0; j <= old.mask; j++)
                if (old.keys[j]) {
                    uint32_t s = pair_slot(m, old.keys[j]);
                    m->keys[s] = old.keys[j];
                    m->value[s] = old.value[j];
                }
            free(old.keys);
            free(old.value);
            i = pair_slot(m, k);
        }
    }
    m->value[i] = value;
}

int pairmap_get(const pairmap *m, int32_t a, int32_t b, int32_t *value)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t i = pair_slot(m, k);
    if (!m->keys[i]) return 0;
    *value = m->value[i];
    return 1;
}
