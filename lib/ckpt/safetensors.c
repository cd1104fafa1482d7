/* safetensors: an 8-byte little-endian header length, a JSON header
 * {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
 *  "__metadata__": {"key": "value"}}, then the tensor bytes (offsets are
 * relative to the end of the header). Tensors point into the mapped file. */
#include "ckpt/ckpt_internal.h"
#include "core/util.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADER (100u << 20) /* the limit the reference implementation uses */

typedef struct {
    uint64_t begin, end;
    const char *name;
} range;

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int load_tensor(ckpt *c, const char *name, json_t *v, const unsigned char *data,
                       uint64_t data_len, range *r)
{
    const char *path = c->path;
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
        json_array_size(jo) != 2) {
        clip_set_error("%s: safetensors entry '%s' needs dtype, shape and data_offsets", path,
                       name);
        return -1;
    }
    clip_dtype dt;
    if (dtype_from_safetensors(json_string_value(jd), json_string_length(jd), &dt) < 0) {
        clip_set_error("%s: tensor '%s' has unsupported dtype '%s'", path, name,
                       json_string_value(jd));
        return -1;
    }
    int64_t shape[CKPT_MAX_DIMS];
    size_t ndim = json_array_size(js);
    if (ndim > CKPT_MAX_DIMS) {
        clip_set_error("%s: tensor '%s' has %zu dims (at most %d supported)", path, name, ndim,
                       CKPT_MAX_DIMS);
        return -1;
    }
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            clip_set_error("%s: tensor '%s' has an invalid shape", path, name);
            return -1;
        }
        shape[i] = json_integer_value(d);
    }
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < json_integer_value(jb) ||
        (uint64_t)json_integer_value(je) > data_len) {
        clip_set_error("%s: tensor '%s' has data_offsets outside the %llu data bytes", path, name,
                       (unsigned long long)data_len);
        return -1;
    }
    uint64_t b = json_integer_value(jb), e = json_integer_value(je);
    size_t esize = dtype_size(dt);
    int64_t numel = ckpt_shape_numel(ndim, shape, esize);
    if (numel < 0 || (uint64_t)numel * esize != e - b) {
        clip_set_error("%s: tensor '%s' has %llu data bytes, its dtype %s and shape need %lld",
                       path, name, (unsigned long long)(e - b), dtype_info_of(dt)->safetensors,
                       numel < 0 ? -1LL : (long long)(numel * esize));
        return -1;
    }
    const void *p = data + b;
    if ((uintptr_t)p % esize) { /* misaligned in the file: copy */
        void *buf = ckpt_own(c, e - b);
        memcpy(buf, p, e - b);
        p = buf;
    }
    r->begin = b;
    r->end = e;
    return ckpt_add(c, name, dt, ndim, shape, p);
}

int ckpt_load_safetensors(ckpt *c)
{
    const char *path = c->path;
    if (c->map_len < 8) {
        clip_set_error("%s: truncated safetensors file (%zu bytes)", path, c->map_len);
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | c->map[i];
    if (hlen > MAX_HEADER || hlen > c->map_len - 8) {
        clip_set_error("%s: safetensors header length %llu exceeds the file (%zu bytes)%s", path,
                       (unsigned long long)hlen, c->map_len,
                       hlen > MAX_HEADER ? " or the 100 MB limit" : "");
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)c->map + 8, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        clip_set_error("%s: safetensors header is not valid JSON: %s (at byte %d)", path, jerr.text,
                       jerr.position);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(root)) {
        clip_set_error("%s: safetensors header is not a JSON object", path);
        goto out;
    }
    const unsigned char *data = c->map + 8 + hlen;
    uint64_t data_len = c->map_len - 8 - hlen;
    range *ranges = xcalloc(json_object_size(root) + 1, sizeof *ranges);
    size_t nr = 0;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (!strcmp(k, "__metadata__")) {
            if (ckpt_set_metadata(c, v, "safetensors __metadata__") < 0) goto out_ranges;
            continue;
        }
        if (load_tensor(c, k, v, data, data_len, &ranges[nr]) < 0) goto out_ranges;
        ranges[nr++].name = c->t[c->n - 1].name;
    }
    qsort(ranges, nr, sizeof *ranges, cmp_range);
    uint64_t end = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < nr; i++) {
        if (ranges[i].begin == ranges[i].end) continue;
        if (ranges[i].begin < end) {
            clip_set_error("%s: tensors '%s' and '%s' overlap in the data", path, prev,
                           ranges[i].name);
            goto out_ranges;
        }
        end = ranges[i].end;
        prev = ranges[i].name;
    }
    rc = 0;
out_ranges:
    free(ranges);
out:
    json_decref(root);
    return rc;
}

/* ---- writing ---- */

typedef struct {
    const char *path;
    const ckpt_out_tensor *t;
    size_t n;
    size_t *order;
    char *header;
    size_t header_len;
} st_writer;

static int write_st(int fd, void *ctx)
{
    st_writer *w = ctx;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint64_t)w->header_len >> (8 * i);
    if (ckpt_write_all(fd, len8, 8) < 0 || ckpt_write_all(fd, w->header, w->header_len) < 0)
        goto fail;
    for (size_t i = 0; i < w->n; i++) {
        const ckpt_out_tensor *t = &w->t[w->order[i]];
        size_t bytes = ckpt_shape_numel(t->ndim, t->shape, 1) * dtype_size(t->dtype);
        if (ckpt_write_all(fd, t->data, bytes) < 0) goto fail;
    }
    return 0;
fail:
    clip_set_error("%s: write: %s", w->path, strerror(errno));
    return -1;
}

int ckpt_save_safetensors(const char *path, const ckpt_out_tensor *t, size_t n,
                          const char *const *metadata)
{
    if (ckpt_check_out(path, t, n) < 0) return -1;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, "__metadata__")) {
            clip_set_error("%s: '__metadata__' cannot be a tensor name", path);
            return -1;
        }
    /* Lay out wider dtypes first so that every tensor is aligned in the file
     * (the data starts at a multiple of 64). */
    size_t *order = xmalloc((n + 1) * sizeof *order), k = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (size_t i = 0; i < n; i++)
            if (dtype_size(t[i].dtype) == size) order[k++] = i;
    uint64_t *begin = xmalloc((n + 1) * sizeof *begin), off = 0;
    for (size_t i = 0; i < n; i++) {
        const ckpt_out_tensor *x = &t[order[i]];
        begin[order[i]] = off;
        off += ckpt_shape_numel(x->ndim, x->shape, 1) * dtype_size(x->dtype);
    }
    json_t *root = json_object();
    int bad = 0;
    if (metadata && metadata[0]) {
        json_t *m = ckpt_metadata_object(metadata);
        bad |= !m || json_object_set_new(root, "__metadata__", m);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        for (int d = 0; d < t[i].ndim; d++)
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        uint64_t bytes = ckpt_shape_numel(t[i].ndim, t[i].shape, 1) * dtype_size(t[i].dtype);
        json_array_append_new(offs, json_integer(begin[i]));
        json_array_append_new(offs, json_integer(begin[i] + bytes));
        json_object_set_new(e, "dtype", json_string(dtype_info_of(t[i].dtype)->safetensors));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", offs);
        bad |= json_object_set_new(root, t[i].name, e);
    }
    char *js = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    free(begin);
    if (!js) {
        free(order);
        clip_set_error(
            "%s: cannot encode the safetensors header (a name or metadata is not valid UTF-8)",
            path);
        return -1;
    }
    size_t jlen = strlen(js), hlen = (8 + jlen + 63) / 64 * 64 - 8;
    char *header = xmalloc(hlen);
    memcpy(header, js, jlen);
    memset(header + jlen, ' ', hlen - jlen);
    free(js);
    st_writer w = {path, t, n, order, header, hlen};
    int rc = ckpt_write_atomic(path, write_st, &w);
    free(header);
    free(order);
    return rc;
}
