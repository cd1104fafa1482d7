#include "io/shards.h"
#include "core/util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char **v;
    size_t n, cap;
} names;

static int push(names *l, char *s, const char *spec)
{
    if (l->n == SHARDS_MAX_NAMES) {
        free(s);
        clip_set_error("%s: expands to more than %u names", spec, SHARDS_MAX_NAMES);
        return -1;
    }
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = s;
    return 0;
}

static char *concat(const char *a, size_t alen, const char *b, size_t blen, const char *c)
{
    size_t clen = strlen(c);
    char *s = xmalloc(alen + blen + clen + 1);
    memcpy(s, a, alen);
    memcpy(s + alen, b, blen);
    memcpy(s + alen + blen, c, clen + 1);
    return s;
}

/* "LO..HI" with decimal bounds: 1 and the bounds; 0 when it is no range */
static int parse_range(const char *p, size_t len, long long *lo, long long *hi, int *width)
{
    const char *dots = NULL;
    for (size_t i = 0; i + 1 < len; i++)
        if (p[i] == '.' && p[i + 1] == '.') {
            dots = p + i;
            break;
        }
    if (!dots || dots == p || dots + 2 == p + len) return 0;
    for (const char *q = p; q < p + len; q++)
        if (q != dots && q != dots + 1 && !isdigit((unsigned char)*q)) return 0;
    if (dots - p > 18 || p + len - (dots + 2) > 18) return -1;
    char a[20], b[20];
    memcpy(a, p, dots - p);
    a[dots - p] = 0;
    memcpy(b, dots + 2, p + len - (dots + 2));
    b[p + len - (dots + 2)] = 0;
    *lo = strtoll(a, NULL, 10);
    *hi = strtoll(b, NULL, 10);
    size_t wa = strlen(a), wb = strlen(b);
    *width = (a[0] == '0' && a[1]) || (b[0] == '0' && b[1]) ? (int)(wa > wb ? wa : wb) : 0;
    return 1;
}

/* Expands the first brace group of s and recurses on each result: results go to out. */
static int expand(const char *s, names *out, const char *spec)
{
    const char *open = strchr(s, '{');
    const char *close = open ? strchr(open, '}') : NULL;
    if (!open) {
        if (strchr(s, '}')) {
            clip_set_error("%s: '}' without '{'", spec);
            return -1;
        }
        return push(out, xstrdup(s), spec);
    }
    if (!close) {
        clip_set_error("%s: '{' without '}'", spec);
        return -1;
    }
    const char *body = open + 1, *rest = close + 1;
    size_t blen = close - body;
    if (memchr(body, '{', blen)) {
        clip_set_error("%s: nested braces are not supported", spec);
        return -1;
    }
    if (!blen) {
        clip_set_error("%s: empty braces", spec);
        return -1;
    }
    size_t pre = open - s;
    long long lo, hi;
    int width;
    int range = parse_range(body, blen, &lo, &hi, &width);
    if (range < 0) {
        clip_set_error("%s: range bounds too large", spec);
        return -1;
    }
    if (range) {
        if (lo > hi) {
            clip_set_error("%s: range {%.*s} runs backwards", spec, (int)blen, body);
            return -1;
        }
        if (hi - lo >= SHARDS_MAX_NAMES) {
            clip_set_error("%s: expands to more than %u names", spec, SHARDS_MAX_NAMES);
            return -1;
        }
        for (long long i = lo; i <= hi; i++) {
            char num[32];
            int k = snprintf(num, sizeof num, "%0*lld", width, i);
            char *next = concat(s, pre, num, k, rest);
            int rc = expand(next, out, spec);
            free(next);
            if (rc < 0) return -1;
        }
        return 0;
    }
    if (!memchr(body, ',', blen)) {
        clip_set_error("%s: {%.*s} is neither a range {LO..HI} nor a list {a,b}", spec, (int)blen,
                       body);
        return -1;
    }
    for (const char *item = body; item <= close;) {
        const char *end = memchr(item, ',', close - item);
        if (!end) end = close;
        char *next = concat(s, pre, item, end - item, rest);
        int rc = expand(next, out, spec);
        free(next);
        if (rc < 0) return -1;
        item = end + 1;
    }
    return 0;
}

char **shards_expand(const char *spec, size_t *n)
{
    names out = {0};
    const char *p = spec;
    for (;;) {
        const char *sep = strstr(p, "::");
        size_t len = sep ? (size_t)(sep - p) : strlen(p);
        if (!len) {
            clip_set_error("%s: an empty name between '::'", spec);
            goto fail;
        }
        char *one = xmalloc(len + 1);
        memcpy(one, p, len);
        one[len] = 0;
        int rc = expand(one, &out, spec);
        free(one);
        if (rc < 0) goto fail;
        if (!sep) break;
        p = sep + 2;
    }
    *n = out.n;
    return out.v;
fail:
    shards_free(out.v, out.n);
    return NULL;
}

void shards_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}
