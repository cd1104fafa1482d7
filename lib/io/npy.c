#include "io/npy.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char magic[] = "\x93NUMPY";

unsigned char *npy_encode(npy_dtype t, int ndim, const int64_t *shape, const void *data,
                          size_t *len)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype_info_of(t)->npy_descr);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(hdr + n, sizeof hdr - n, "%lld,%s", (long long)shape[i],
                      (i + 1 < ndim) ? " " : "");
        count *= (size_t)shape[i];
    }
    if (ndim > 1) n--; /* "(3,)" for one dim, "(2, 3)" for more */
    n += snprintf(hdr + n, sizeof hdr - n, "), }");
    /* pad with spaces so that the data starts on a 64-byte boundary, ending in '\n' */
    size_t total_hdr = 10 + n + 1;
    size_t padded = (total_hdr + 63) / 64 * 64;
    size_t dlen = count * dtype_size(t);
    unsigned char *out = xmalloc(padded + dlen);
    memcpy(out, magic, 6);
    out[6] = 1;
    out[7] = 0;
    uint16_t hl = (uint16_t)(padded - 10);
    out[8] = hl & 0xff;
    out[9] = hl >> 8;
    memcpy(out + 10, hdr, n);
    memset(out + 10 + n, ' ', padded - 10 - n - 1);
    out[padded - 1] = '\n';
    if (dlen && data) memcpy(out + padded, data, dlen);
    *len = padded + dlen;
    return out;
}

/* Find "'key':" in the header dict and return a pointer past the colon and spaces, or NULL
 * when the header ends there (no value). */
static const char *dict_value(const char *h, const char *end, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = h; p + kl + 2 < end; p++) {
        if ((*p == '\'' || *p == '"') && !memcmp(p + 1, key, kl) && p[kl + 1] == *p) {
            p += kl + 2;
            while (p < end && *p == ' ') p++;
            if (p >= end || *p != ':') return NULL;
            p++;
            while (p < end && *p == ' ') p++;
            return p < end ? p : NULL;
        }
    }
    return NULL;
}

int npy_parse(const void *buf, size_t len, npy_array *out, const char *what)
{
    const unsigned char *b = buf;
    if (len < 10 || memcmp(b, magic, 6)) {
        clip_set_error("%s: not an .npy array", what);
        return -1;
    }
    size_t hl, off;
    if (b[6] == 1) {
        hl = b[8] | (b[9] << 8);
        off = 10;
    } else if (b[6] == 2 || b[6] == 3) {
        if (len < 12) goto truncated;
        hl = b[8] | (b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
        off = 12;
    } else {
        clip_set_error("%s: unsupported .npy version %d", what, b[6]);
        return -1;
    }
    if (off + hl > len) goto truncated;
    const char *h = (const char *)b + off, *end = h + hl;

    const char *v = dict_value(h, end, "descr");
    if (!v || v + 5 > end || (*v != '\'' && *v != '"')) goto bad;
    clip_dtype found;
    if (v[4] != *v || dtype_from_npy_descr(v + 1, 3, &found) < 0) {
        clip_set_error("%s: unsupported dtype %.5s", what,
                       v); /* at most the 5 bytes known to lie in the header */
        return -1;
    }
    out->dtype = found;

    v = dict_value(h, end, "fortran_order");
    if (!v || end - v < 4) goto bad;
    if (!memcmp(v, "True", 4)) {
        clip_set_error("%s: Fortran-order arrays are not supported", what);
        return -1;
    }

    v = dict_value(h, end, "shape");
    if (!v || *v != '(') goto bad;
    v++;
    out->ndim = 0;
    size_t count = 1;
    while (v < end && *v != ')') {
        while (v < end && (*v == ' ' || *v == ',')) v++;
        if (v < end && *v == ')') break;
        /* digits by hand, never past `end`: strtoll would read on past a header
         * that ends inside a number (the buffer is not NUL-terminated) */
        const char *e = v;
        int64_t d = 0;
        while (e < end && *e >= '0' && *e <= '9') {
            if (d > (INT64_MAX - 9) / 10) goto bad;
            d = d * 10 + (*e++ - '0');
        }
        if (e == v || e >= end || out->ndim == NPY_MAX_DIMS) goto bad;
        if (d && count > SIZE_MAX / (size_t)d) goto bad;
        out->shape[out->ndim++] = d;
        count *= (size_t)d;
        v = e;
    }
    if (v >= end) goto bad;
    out->count = count;
    size_t dlen = count * dtype_size(found);
    if (count && dlen / count != dtype_size(found)) goto bad;
    if (len - off - hl != dlen) {
        if (len - off - hl < dlen) goto truncated;
        clip_set_error("%s: %zu bytes of data, shape needs %zu", what, len - off - hl, dlen);
        return -1;
    }
    out->data = b + off + hl;
    return 0;
truncated:
    clip_set_error("%s: truncated .npy array", what);
    return -1;
bad:
    clip_set_error("%s: malformed .npy header", what);
    return -1;
}
