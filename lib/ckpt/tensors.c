/* The tensor table under every checkpoint format: names (hashed), dtypes,
 * shapes, borrowed or owned data, metadata strings, and conversion to
 * float32. The format readers fill it (ckpt_add); the loader and the models
 * read it. */
#include "ckpt/ckpt_internal.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int64_t ckpt_shape_numel(int ndim, const int64_t *shape, size_t esize)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    if (esize && n > INT64_MAX / (int64_t)esize) return -1;
    return n;
}

void ckpt_format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* ---- the tensor table ---- */

void *ckpt_own(ckpt *c, size_t bytes)
{
    if (c->n_owned == c->cap_owned) {
        c->cap_owned = c->cap_owned ? 2 * c->cap_owned : 16;
        c->owned = xrealloc(c->owned, c->cap_owned * sizeof *c->owned);
    }
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) clip_out_of_memory(bytes);
    c->owned[c->n_owned++] = p;
    return p;
}

int ckpt_add(ckpt *c, const char *name, clip_dtype dt, int ndim, const int64_t *shape,
             const void *data)
{
    if (ckpt_find(c, name)) {
        clip_set_error("%s: duplicate tensor name '%s'", c->path, name);
        return -1;
    }
    if (c->n >= CKPT_MAX_TENSORS) {
        clip_set_error("%s: more than %u tensors", c->path, CKPT_MAX_TENSORS);
        return -1;
    }
    if (ndim < 0 || ndim > CKPT_MAX_DIMS) {
        clip_set_error("%s: tensor '%s' has %d dims (at most %d supported)", c->path, name, ndim,
                       CKPT_MAX_DIMS);
        return -1;
    }
    int64_t numel = ckpt_shape_numel(ndim, shape, dtype_size(dt));
    if (numel < 0) {
        clip_set_error("%s: tensor '%s' has an invalid shape", c->path, name);
        return -1;
    }
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->t = xrealloc(c->t, c->cap * sizeof *c->t);
    }
    static const uint64_t empty[1];
    ckpt_tensor *t = &c->t[c->n++];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, ndim * sizeof *shape);
    t->numel = numel;
    t->data = numel ? data : (const void *)empty;
    strmap_put(&c->names, name, strlen(name), (int32_t)(c->n - 1));
    return 0;
}

size_t ckpt_count(const ckpt *c) { return c->n; }
const ckpt_tensor *ckpt_tensor_at(const ckpt *c, size_t i) { return i < c->n ? &c->t[i] : NULL; }

ckpt_out_tensor *ckpt_out_views(const ckpt *c)
{
    ckpt_out_tensor *out = xcalloc(c->n ? c->n : 1, sizeof *out);
    for (size_t i = 0; i < c->n; i++) {
        const ckpt_tensor *t = &c->t[i];
        out[i] = (ckpt_out_tensor){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(out[i].shape, t->shape, sizeof t->shape);
    }
    return out;
}

const ckpt_tensor *ckpt_find(const ckpt *c, const char *name)
{
    int32_t i;
    return strmap_get(&c->names, name, strlen(name), &i) ? &c->t[i] : NULL;
}

const char *ckpt_metadata(const ckpt *c, const char *key)
{
    for (size_t i = 0; i + 1 < c->n_meta; i += 2)
        if (!strcmp(c->meta[i], key)) return c->meta[i + 1];
    return NULL;
}

int ckpt_set_metadata(ckpt *c, json_t *m, const char *what)
{
    if (!json_is_object(m)) {
        clip_set_error("%s: %s is not an object", c->path, what);
        return -1;
    }
    if (c->meta) {
        clip_set_error("%s: %s: metadata given twice", c->path, what);
        return -1;
    }
    const char *k;
    json_t *v;
    c->meta = xcalloc(2 * json_object_size(m) + 1, sizeof *c->meta);
    json_object_foreach(m, k, v)
    {
        if (!json_is_string(v)) {
            clip_set_error("%s: %s: metadata '%s' is not a string", c->path, what, k);
            return -1;
        }
        c->meta[c->n_meta++] = xstrdup(k);
        c->meta[c->n_meta++] = xstrdup(json_string_value(v));
    }
    return 0;
}

json_t *ckpt_metadata_object(const char *const *metadata)
{
    json_t *m = json_object();
    int bad = 0;
    for (size_t i = 0; metadata && metadata[i] && metadata[i + 1]; i += 2)
        bad |= json_object_set_new(m, metadata[i], json_string(metadata[i + 1]));
    if (bad) {
        json_decref(m);
        return NULL;
    }
    return m;
}

ckpt *ckpt_new(const char *name)
{
    ckpt *c = xcalloc(1, sizeof *c);
    c->path = xstrdup(name);
    strmap_init(&c->names);
    return c;
}

void ckpt_free(ckpt *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) free(c->t[i].name);
    free(c->t);
    strmap_free(&c->names);
    for (size_t i = 0; i < c->n_owned; i++) free(c->owned[i]);
    free(c->owned);
    for (size_t i = 0; i < c->n_meta; i++) free(c->meta[i]);
    free(c->meta);
    if (c->map_is_malloc)
        free((void *)c->map);
    else if (c->map)
        munmap((void *)c->map, c->map_len);
    free(c->path);
    free(c);
}

/* ---- loading ---- */

int ckpt_read_f32(const ckpt *c, const char *name, int ndim, const int64_t *shape, float *dst)
{
    const ckpt_tensor *t = ckpt_find(c, name);
    if (!t) {
        clip_set_error("%s: no tensor '%s'", c->path, name);
        return -1;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[256], want[256];
        ckpt_format_shape(have, sizeof have, t->ndim, t->shape);
        ckpt_format_shape(want, sizeof want, ndim, shape);
        clip_set_error("%s: tensor '%s' has shape %s, expected %s", c->path, name, have, want);
        return -1;
    }
    dtype_to_f32(t->dtype, t->data, t->numel, dst);
    return 0;
}

/* ---- pickled state dicts ---- */
