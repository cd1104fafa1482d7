/* Checkpoint loading: format detection, the tensor table, dtype conversion,
 * pickled state dicts to tensors, and atomic file writing. The formats
 * themselves live in safetensors.c, torch_zip.c and torch_legacy.c. */
#include "ckpt/ckpt_internal.h"
#include "core/atomic_file.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [DT_F32] = {"float32", 4}, [DT_F16] = {"float16", 2}, [DT_BF16] = {"bfloat16", 2},
    [DT_F64] = {"float64", 8}, [DT_I64] = {"int64", 8},   [DT_I32] = {"int32", 4},
    [DT_I16] = {"int16", 2},   [DT_I8] = {"int8", 1},     [DT_U8] = {"uint8", 1},
    [DT_BOOL] = {"bool", 1},
};

size_t ckpt_dtype_size(ckpt_dtype t) { return (unsigned)t <= DT_BOOL ? dtypes[t].size : 0; }
const char *ckpt_dtype_name(ckpt_dtype t) { return (unsigned)t <= DT_BOOL ? dtypes[t].name : "?"; }

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

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
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
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) die("out of memory (%zu bytes)", bytes);
    c->owned[c->n_owned++] = p;
    return p;
}

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void index_insert(ckpt *c, size_t i)
{
    size_t mask = c->index_cap - 1, k = hash(c->t[i].name) & mask;
    while (c->index[k]) k = (k + 1) & mask;
    c->index[k] = i + 1;
}

int ckpt_add(ckpt *c, const char *name, ckpt_dtype dt, int ndim, const int64_t *shape,
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
    int64_t numel = ckpt_shape_numel(ndim, shape, ckpt_dtype_size(dt));
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
    if (2 * c->n > c->index_cap) {
        free(c->index);
        c->index_cap = c->index_cap ? 2 * c->index_cap : 256;
        c->index = xcalloc(c->index_cap, sizeof *c->index);
        for (size_t i = 0; i < c->n; i++) index_insert(c, i);
    } else {
        index_insert(c, c->n - 1);
    }
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
    if (!c->index_cap) return NULL;
    size_t mask = c->index_cap - 1;
    for (size_t k = hash(name) & mask; c->index[k]; k = (k + 1) & mask)
        if (!strcmp(c->t[c->index[k] - 1].name, name)) return &c->t[c->index[k] - 1];
    return NULL;
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

void ckpt_free(ckpt *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) free(c->t[i].name);
    free(c->t);
    free(c->index);
    for (size_t i = 0; i < c->n_owned; i++) free(c->owned[i]);
    free(c->owned);
    for (size_t i = 0; i < c->n_meta; i++) free(c->meta[i]);
    free(c->meta);
    if (c->map_is_malloc) free((void *)c->map);
    else if (c->map) munmap((void *)c->map, c->map_len);
    free(c->path);
    free(c);
}

/* ---- loading ---- */

static int map_file(ckpt *c)
{
    int fd = open(c->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        clip_set_error("%s: %s", c->path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        clip_set_error("%s: %s", c->path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        close(fd);
        return -1;
    }
    if (st.st_size == 0) {
        close(fd);
        clip_set_error("%s: empty file, not a checkpoint", c->path);
        return -1;
    }
    void *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        clip_set_error("%s: mmap: %s", c->path, strerror(err));
        return -1;
    }
    madvise(p, st.st_size, MADV_WILLNEED); /* start reading ahead now */
    c->map = p;
    c->map_len = st.st_size;
    return 0;
}

static ckpt *load(ckpt *c)
{
    const char *path = c->path;
    const unsigned char *b = c->map;
    size_t n = c->map_len;
    int rc;
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6))) {
        rc = ckpt_load_torch_zip(c);
    } else if (b[0] == 0x80) {
        rc = ckpt_load_torch_legacy(c);
    } else if (n >= 262 && !memcmp(b + 257, "ustar", 5)) {
        clip_set_error("%s: a tar-based torch checkpoint (PyTorch < 0.4); re-save it with a "
                       "newer PyTorch", path);
        rc = -1;
    } else if (n >= 9 && b[8] == '{') {
        rc = ckpt_load_safetensors(c);
    } else {
        clip_set_error("%s: not a checkpoint (expected a PyTorch zip or pickle, or safetensors)",
                       path);
        rc = -1;
    }
    if (rc < 0) goto fail;
    return c;
fail:
    ckpt_free(c);
    return NULL;
}

ckpt *ckpt_load(const char *path)
{
    ckpt *c = xcalloc(1, sizeof *c);
    c->path = xstrdup(path);
    if (map_file(c) < 0) {
        ckpt_free(c);
        return NULL;
    }
    return load(c);
}

ckpt *ckpt_load_buffer(const void *buf, size_t len, const char *name)
{
    ckpt *c = xcalloc(1, sizeof *c);
    c->path = xstrdup(name);
    if (!len) {
        clip_set_error("%s: empty file, not a checkpoint", name);
        ckpt_free(c);
        return NULL;
    }
    void *copy = xmalloc(len);
    memcpy(copy, buf, len);
    c->map = copy;
    c->map_len = len;
    c->map_is_malloc = 1;
    return load(c);
}

/* ---- conversion to float32 ---- */

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

static void to_f32(const ckpt_tensor *t, float *dst)
{
    const unsigned char *s = t->data;
    size_t n = t->numel;
    if (!n) return;
    switch (t->dtype) {
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
        format_shape(have, sizeof have, t->ndim, t->shape);
        format_shape(want, sizeof want, ndim, shape);
        clip_set_error("%s: tensor '%s' has shape %s, expected %s", c->path, name, have, want);
        return -1;
    }
    to_f32(t, dst);
    return 0;
}

/* ---- pickled state dicts ---- */

static void byteswap(unsigned char *p, size_t n, size_t esize)
{
    if (esize < 2) return;
    for (size_t i = 0; i < n; i++, p += esize)
        for (size_t a = 0, b = esize - 1; a < b; a++, b--) {
            unsigned char x = p[a];
            p[a] = p[b];
            p[b] = x;
        }
}

/* Gathers a strided view into contiguous memory (one element at a time; only
 * odd checkpoints have non-contiguous tensors). */
static void gather(unsigned char *dst, const unsigned char *src, int ndim, const int64_t *shape,
                   const int64_t *stride, size_t esize, size_t numel)
{
    int64_t idx[CKPT_MAX_DIMS] = {0};
    for (size_t k = 0; k < numel; k++) {
        int64_t off = 0;
        for (int d = 0; d < ndim; d++) off += idx[d] * stride[d];
        memcpy(dst + k * esize, src + off * esize, esize);
        for (int d = ndim - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
}

static int add_tensor(ckpt *c, const char *name, const pk_tensor *pt)
{
    const pk_storage *st = &pt->storage->storage;
    size_t esize = ckpt_dtype_size(st->dtype);
    int64_t numel = ckpt_shape_numel(pt->ndim, pt->shape, esize);
    if (numel < 0) {
        clip_set_error("%s: tensor '%s' has an invalid shape", c->path, name);
        return -1;
    }
    int64_t avail = st->bytes / esize, last = pt->offset, expect = 1;
    int in_range = 1, contiguous = 1;
    if (pt->offset < 0) {
        clip_set_error("%s: tensor '%s' has a negative storage offset %lld", c->path, name,
                       (long long)pt->offset);
        return -1;
    }
    for (int d = pt->ndim - 1; d >= 0; d--) {
        if (pt->stride[d] < 0) {
            clip_set_error("%s: tensor '%s' has a negative stride", c->path, name);
            return -1;
        }
        if (pt->shape[d] > 1) {
            if (pt->stride[d] != expect) contiguous = 0;
            if (pt->stride[d] && (pt->shape[d] - 1) > (INT64_MAX - last) / pt->stride[d]) in_range = 0;
            else last += (pt->shape[d] - 1) * pt->stride[d];
        }
        expect *= pt->shape[d] ? pt->shape[d] : 1;
    }
    if (!numel) return ckpt_add(c, name, st->dtype, pt->ndim, pt->shape, NULL);
    if (!in_range || last >= avail) {
        char shape[256];
        format_shape(shape, sizeof shape, pt->ndim, pt->shape);
        clip_set_error("%s: tensor '%s' %s at storage offset %lld lies outside its storage '%s' "
                       "of %lld elements", c->path, name, shape, (long long)pt->offset,
                       st->key, (long long)avail);
        return -1;
    }
    /* a view that repeats elements (stride 0: an expanded tensor) is
     * materialised; it may not be larger than the whole file, so that what
     * loading commits stays bounded by what the file holds */
    if (numel > avail && (uint64_t)numel * esize > c->map_len) {
        char shape[256];
        format_shape(shape, sizeof shape, pt->ndim, pt->shape);
        clip_set_error("%s: tensor '%s' %s repeats the %lld elements of its storage '%s' into "
                       "%lld (%lld bytes): larger than the file's %zu bytes; save the tensor "
                       "with .contiguous()", c->path, name, shape, (long long)avail, st->key,
                       (long long)numel, (long long)(numel * esize), c->map_len);
        return -1;
    }
    const unsigned char *src = (const unsigned char *)st->data + pt->offset * esize;
    const void *data = src;
    if (!contiguous || (uintptr_t)src % esize) {
        unsigned char *buf = ckpt_own(c, numel * esize);
        if (contiguous) memcpy(buf, src, numel * esize);
        else gather(buf, src, pt->ndim, pt->shape, pt->stride, esize, numel);
        data = buf;
    }
    return ckpt_add(c, name, st->dtype, pt->ndim, pt->shape, data);
}

static int add_dict(ckpt *c, const pk_obj *d, char *prefix, size_t plen, int depth, size_t *budget)
{
    if (depth > 16) {
        clip_set_error("%s: dicts nested too deeply", c->path);
        return -1;
    }
    for (size_t i = 0; i + 1 < d->seq.n; i += 2) {
        if (!(*budget)--) { /* shared sub-dicts could otherwise make the walk exponential */
            clip_set_error("%s: too many dict entries", c->path);
            return -1;
        }
        const pk_obj *k = d->seq.items[i], *v = d->seq.items[i + 1];
        if (v->type != PK_TENSOR && v->type != PK_DICT) continue; /* epoch, step, ... */
        if (k->type != PK_STR) {
            clip_set_error("%s: state dict key is a %s, not a string", c->path, pk_type_name(k->type));
            return -1;
        }
        if (plen + k->str.len + 2 > 4096) {
            clip_set_error("%s: tensor name too long", c->path);
            return -1;
        }
        memcpy(prefix + plen, k->str.s, k->str.len + 1);
        if (strlen(prefix + plen) != k->str.len) {
            clip_set_error("%s: tensor name with a NUL byte", c->path);
            return -1;
        }
        int rc;
        if (v->type == PK_TENSOR) {
            rc = add_tensor(c, prefix, &v->tensor);
        } else {
            size_t n = plen + k->str.len;
            prefix[n] = '.';
            prefix[n + 1] = 0;
            rc = add_dict(c, v, prefix, n + 1, depth + 1, budget);
        }
        if (rc < 0) return -1;
    }
    return 0;
}

int ckpt_add_pickled(ckpt *c, const pk_obj *root)
{
    if (root->type != PK_DICT) {
        clip_set_error("%s: the pickle holds a %s, not a dict of tensors", c->path,
                       pk_type_name(root->type));
        return -1;
    }
    char name[4096] = "";
    size_t budget = 4 * CKPT_MAX_TENSORS;
    return add_dict(c, root, name, 0, 0, &budget);
}

/* Swaps a big-endian storage into an owned little-endian copy. */
void ckpt_swap_storage(ckpt *c, pk_storage *st)
{
    size_t esize = ckpt_dtype_size(st->dtype);
    unsigned char *buf = ckpt_own(c, st->bytes);
    memcpy(buf, st->data, st->bytes);
    byteswap(buf, st->bytes / esize, esize);
    st->data = buf;
}

/* ---- writing ---- */

int ckpt_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n < (1u << 30) ? n : (1u << 30));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return -1;
        }
        p += k;
        n -= k;
    }
    return 0;
}

int ckpt_check_out(const char *path, const ckpt_out_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!t[i].name || !*t[i].name) {
            clip_set_error("%s: tensor %zu has no name", path, i);
            return -1;
        }
        if ((unsigned)t[i].dtype > DT_BOOL || t[i].ndim < 0 || t[i].ndim > CKPT_MAX_DIMS ||
            ckpt_shape_numel(t[i].ndim, t[i].shape, ckpt_dtype_size(t[i].dtype)) < 0) {
            clip_set_error("%s: tensor '%s' has an invalid dtype or shape", path, t[i].name);
            return -1;
        }
        if (!t[i].data && ckpt_shape_numel(t[i].ndim, t[i].shape, 1) > 0) {
            clip_set_error("%s: tensor '%s' has no data", path, t[i].name);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(t[i].name, t[j].name)) {
                clip_set_error("%s: duplicate tensor name '%s'", path, t[i].name);
                return -1;
            }
    }
    return 0;
}

int ckpt_write_atomic(const char *path, int (*fn)(int fd, void *ctx), void *ctx)
{
    return atomic_file_write(path, fn, ctx);
}
