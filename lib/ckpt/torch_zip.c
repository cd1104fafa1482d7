/* PyTorch zip checkpoints (torch.save since 1.6): <prefix>/data.pkl is a
 * pickle of the state dict whose storages are persistent ids
 * ('storage', torch.FloatStorage, key, location, numel) naming the members
 * <prefix>/data/<key>; <prefix>/byteorder says "big" on big-endian writers.
 * torch stores members uncompressed, so libarchive hands us pointers into
 * the mapped file and tensors are not copied.
 *
 * Checkpoints we write may carry one more member, <prefix>/clip-tools/
 * metadata.json: a JSON object of strings, the same map as safetensors'
 * __metadata__ (ckpt_metadata). torch.load reads only data.pkl, byteorder
 * and the data/ members it names, so the state dict stays exactly the
 * tensors (torch requires every member under the one <prefix>/ folder). */
#include "ckpt/torch_state.h"
#include "core/util.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METADATA_MEMBER "clip-tools/metadata.json"

typedef struct {
    char *name;
    const unsigned char *data;
    size_t size;
    int swapped_esize; /* big-endian data already swapped for this element size */
} member;

typedef struct {
    ckpt *c;
    member *m;
    size_t n;
    const char *prefix; /* "<archive>/" */
    int big_endian;
} zip_reader;

static int cmp_member(const void *a, const void *b)
{
    return strcmp(((const member *)a)->name, ((const member *)b)->name);
}

/* z->m is sorted by name once the archive is read */
static member *find_member(zip_reader *z, const char *name)
{
    member key = {.name = (char *)name};
    return bsearch(&key, z->m, z->n, sizeof *z->m, cmp_member);
}

/* Reads the current entry: a pointer into the map when the data is stored as
 * one piece, else a copy (compressed members, which torch does not write). */
static int read_member(zip_reader *z, struct archive *a, member *m, size_t *copied)
{
    ckpt *c = z->c;
    const void *buf;
    size_t size, cap = 0;
    la_int64_t off;
    unsigned char *copy = NULL;
    m->data = NULL;
    m->size = 0;
    for (;;) {
        int r = archive_read_data_block(a, &buf, &size, &off);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK) {
            clip_set_error("%s: member %s: %s", c->path, m->name, archive_error_string(a));
            free(copy);
            return -1;
        }
        if (!size) continue;
        if (off != (la_int64_t)m->size) {
            clip_set_error("%s: member %s: sparse data", c->path, m->name);
            free(copy);
            return -1;
        }
        if (!m->size && !copy && (const unsigned char *)buf >= c->map &&
            (const unsigned char *)buf + size <= c->map + c->map_len) {
            m->data = buf; /* zero copy, unless another block follows */
            m->size = size;
            continue;
        }
        if (m->size + size > cap) {
            if (*copied + m->size + size > 64 * c->map_len + (1u << 20)) {
                clip_set_error("%s: member %s expands too much (a zip bomb?)", c->path, m->name);
                free(copy);
                return -1;
            }
            size_t ncap = cap ? cap : 1 << 16;
            while (ncap < m->size + size) ncap *= 2;
            unsigned char *n = xrealloc(copy, ncap);
            if (!copy && m->size) memcpy(n, m->data, m->size);
            copy = n;
            cap = ncap;
        }
        memcpy(copy + m->size, buf, size);
        m->size += size;
        m->data = copy;
    }
    if (copy) {
        *copied += m->size;
        unsigned char *owned = ckpt_own(c, m->size);
        memcpy(owned, copy, m->size);
        free(copy);
        m->data = owned;
    }
    if (!m->data) m->data = (const unsigned char *)"";
    return 0;
}

static int wanted(zip_reader *z, const char *name)
{
    size_t pl = strlen(z->prefix);
    if (strncmp(name, z->prefix, pl)) return 0;
    return !strcmp(name + pl, "byteorder") || !strncmp(name + pl, "data/", 5) ||
           !strcmp(name + pl, METADATA_MEMBER);
}

static int read_archive(zip_reader *z)
{
    ckpt *c = z->c;
    struct archive *a = archive_read_new();
    archive_read_support_format_zip_seekable(a); /* needs the central directory, as torch does */
    int rc = -1;
    size_t copied = 0, cap = 0;
    char *prefix = NULL;
    if (archive_read_open_memory(a, c->map, c->map_len) != ARCHIVE_OK) {
        clip_set_error("%s: %s", c->path, archive_error_string(a));
        goto out;
    }
    struct archive_entry *e;
    for (;;) {
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
            clip_set_error("%s: %s", c->path, archive_error_string(a));
            goto out;
        }
        const char *name = archive_entry_pathname(e);
        if (!name || archive_entry_filetype(e) != AE_IFREG) continue;
        size_t len = strlen(name);
        int is_pkl = !prefix && len >= 8 && !strcmp(name + len - 8, "data.pkl") &&
                     (len == 8 || name[len - 9] == '/');
        if (is_pkl) {
            prefix = xstrndup(name, len - 8);
            z->prefix = prefix;
        } else if (!prefix || !wanted(z, name)) {
            continue;
        }
        if (z->n == cap) {
            cap = cap ? 2 * cap : 64;
            z->m = xrealloc(z->m, cap * sizeof *z->m);
        }
        member *m = &z->m[z->n++];
        memset(m, 0, sizeof *m);
        m->name = xstrdup(name);
        if (read_member(z, a, m, &copied) < 0) goto out;
    }
    if (!prefix) {
        clip_set_error("%s: a zip without data.pkl, not a PyTorch checkpoint", c->path);
        goto out;
    }
    qsort(z->m, z->n, sizeof *z->m, cmp_member);
    for (size_t i = 1; i < z->n; i++)
        if (!strcmp(z->m[i - 1].name, z->m[i].name)) {
            clip_set_error("%s: member %s appears twice", c->path, z->m[i].name);
            goto out;
        }
    rc = 0;
out:
    archive_read_free(a);
    return rc;
}

static pk_obj *persistent_load(pk_vm *vm, const pk_obj *pid, void *ctx)
{
    zip_reader *z = ctx;
    ckpt *c = z->c;
    if (pid->type != PK_TUPLE || pid->seq.n < 5 || pid->seq.items[0]->type != PK_STR ||
        strcmp(pid->seq.items[0]->str.s, "storage") || pid->seq.items[1]->type != PK_GLOBAL ||
        pid->seq.items[1]->global.kind != PKG_STORAGE_TYPE || pid->seq.items[2]->type != PK_STR ||
        pid->seq.items[4]->type != PK_INT || pid->seq.items[4]->i < 0) {
        clip_set_error(
            "unsupported persistent id (expected ('storage', type, key, location, numel))");
        return NULL;
    }
    clip_dtype dt = pid->seq.items[1]->global.dtype;
    const char *key = pid->seq.items[2]->str.s;
    int64_t numel = pid->seq.items[4]->i;
    size_t esize = dtype_size(dt);
    char name[512];
    if (snprintf(name, sizeof name, "%sdata/%s", z->prefix, key) >= (int)sizeof name) {
        clip_set_error("storage key too long");
        return NULL;
    }
    member *m = find_member(z, name);
    if (!m) {
        clip_set_error("storage '%s' has no member %s", key, name);
        return NULL;
    }
    if (numel > (int64_t)(m->size / esize)) {
        /* numel * esize may not fit in 64 bits: not computed */
        clip_set_error("storage '%s' of %lld %s needs %lld x %zu bytes, member %s has %zu", key,
                       (long long)numel, dtype_name(dt), (long long)numel, esize, name, m->size);
        return NULL;
    }
    pk_obj *o = pk_new_storage(vm, dt, key, numel);
    if (!o) return NULL;
    if (z->big_endian && esize > 1) {
        if (m->swapped_esize && m->swapped_esize != (int)esize) {
            clip_set_error("storage '%s' used with two element sizes", key);
            return NULL;
        }
        if (!m->swapped_esize) {
            pk_storage tmp = {.dtype = dt, .data = m->data, .bytes = m->size / esize * esize};
            ckpt_swap_storage(c, &tmp);
            m->data = tmp.data;
            m->swapped_esize = esize;
        }
    }
    o->storage.data = m->data;
    o->storage.bytes = numel * esize;
    return o;
}

int ckpt_load_torch_zip(ckpt *c)
{
    zip_reader z = {.c = c};
    pk_vm *vm = NULL;
    int rc = -1;
    if (read_archive(&z) < 0) goto out;
    char name[512];
    snprintf(name, sizeof name, "%sbyteorder", z.prefix);
    member *bo = find_member(&z, name);
    if (bo) {
        if (bo->size == 3 && !memcmp(bo->data, "big", 3))
            z.big_endian = 1;
        else if (!(bo->size == 6 && !memcmp(bo->data, "little", 6))) {
            clip_set_error("%s: unknown byteorder '%.*s'", c->path,
                           (int)(bo->size < 16 ? bo->size : 16), (const char *)bo->data);
            goto out;
        }
    }
    snprintf(name, sizeof name, "%s" METADATA_MEMBER, z.prefix);
    member *md = find_member(&z, name);
    if (md) {
        json_error_t jerr;
        json_t *j = json_loadb((const char *)md->data, md->size, JSON_REJECT_DUPLICATES, &jerr);
        if (!j) {
            clip_set_error("%s: member %s is not valid JSON: %s", c->path, name, jerr.text);
            goto out;
        }
        int bad = ckpt_set_metadata(c, j, name);
        json_decref(j);
        if (bad) goto out;
    }
    snprintf(name, sizeof name, "%sdata.pkl", z.prefix);
    member *pkl = find_member(&z, name);
    vm = pk_new(persistent_load, &z);
    size_t used;
    pk_obj *root = pk_load(vm, pkl->data, pkl->size, &used);
    if (!root) {
        clip_set_error("%s: %s: %s", c->path, name, clip_error());
        goto out;
    }
    rc = ckpt_add_pickled(c, root);
out:
    pk_free(vm);
    for (size_t i = 0; i < z.n; i++) free(z.m[i].name);
    free(z.m);
    free((char *)z.prefix);
    return rc;
}

/* ---- writing ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        while (b->n + n > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void put_str(bytes *b, const char *s)
{
    size_t n = strlen(s);
    unsigned char h[5] = {'X', n, n >> 8, n >> 16, n >> 24};
    put(b, h, 5);
    put(b, s, n);
}

static void put_int(bytes *b, int64_t v)
{
    if (v >= INT32_MIN && v <= INT32_MAX) {
        unsigned char h[5] = {'J', v, v >> 8, v >> 16, v >> 24};
        put(b, h, 5);
    } else {
        unsigned char h[10] = {0x8a, 8};
        for (int i = 0; i < 8; i++) h[2 + i] = (uint64_t)v >> (8 * i);
        put(b, h, 10);
    }
}

#define PUT(b, lit) put(b, lit, sizeof(lit) - 1)

/* OrderedDict([(name, _rebuild_tensor_v2(storage i, 0, shape, stride, False, OrderedDict()))]) */
static void make_pickle(bytes *b, const ckpt_out_tensor *t, size_t n)
{
    PUT(b, "\x80\x02"
           "ccollections\nOrderedDict\n"
           ")R(");
    for (size_t i = 0; i < n; i++) {
        put_str(b, t[i].name);
        PUT(b, "ctorch._utils\n_rebuild_tensor_v2\n"
               "((");
        put_str(b, "storage");
        PUT(b, "ctorch\n");
        put(b, dtype_info_of(t[i].dtype)->torch_storage,
            strlen(dtype_info_of(t[i].dtype)->torch_storage));
        PUT(b, "\n");
        char key[32];
        snprintf(key, sizeof key, "%zu", i);
        put_str(b, key);
        put_str(b, "cpu");
        put_int(b, ckpt_shape_numel(t[i].ndim, t[i].shape, 1));
        PUT(b, "tQ");
        put_int(b, 0);
        int64_t stride[CKPT_MAX_DIMS], s = 1;
        for (int d = t[i].ndim - 1; d >= 0; d--) {
            stride[d] = s;
            s *= t[i].shape[d];
        }
        PUT(b, "(");
        for (int d = 0; d < t[i].ndim; d++) put_int(b, t[i].shape[d]);
        PUT(b, "t(");
        for (int d = 0; d < t[i].ndim; d++) put_int(b, stride[d]);
        PUT(b, "t\x89"
               "ccollections\nOrderedDict\n"
               ")R"
               "tR");
    }
    PUT(b, "u.");
}

typedef struct {
    const char *path;
    const ckpt_out_tensor *t;
    size_t n;
    const char *metadata; /* JSON text of the metadata member, or NULL */
} pth_writer;

/* *header and *trailer (if given) receive the bytes libarchive wrote around the data. */
static int add_member_measured(struct archive *a, const char *name, const void *data, size_t size,
                               int64_t *header, int64_t *trailer)
{
    int64_t p0 = archive_filter_bytes(a, 0);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, size);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 315532800, 0); /* 1980-01-01, the zip epoch: reproducible files */
    int r = archive_write_header(a, e);
    archive_entry_free(e);
    if (r != ARCHIVE_OK) return -1;
    int64_t p1 = archive_filter_bytes(a, 0);
    const char *p = data;
    while (size) {
        la_ssize_t k = archive_write_data(a, p, size < (1u << 30) ? size : (1u << 30));
        if (k <= 0) return -1;
        p += k;
        size -= k;
    }
    if (archive_write_finish_entry(a) != ARCHIVE_OK) return -1;
    if (header) *header = p1 - p0;
    if (trailer) *trailer = archive_filter_bytes(a, 0) - p1 - (int64_t)(p - (const char *)data);
    return 0;
}

static int add_member(struct archive *a, const char *name, const void *data, size_t size)
{
    return add_member_measured(a, name, data, size, NULL, NULL);
}

/* Storages start at multiples of 64 in the file, as torch writes them, so
 * that loading points into the map instead of copying. libarchive has no
 * alignment option: a padding member "archive/.pad/<i>" (ignored by
 * torch.load) goes before each storage that would be misaligned, sized from
 * the header and data-descriptor overheads measured on the byteorder member. */
static int align_next(struct archive *a, const char *next_name, int64_t overhead, int64_t trailer,
                      size_t i)
{
    int64_t pos = archive_filter_bytes(a, 0);
    int64_t start = pos + overhead + strlen(next_name);
    if (start % 64 == 0) return 0;
    char pad[64];
    snprintf(pad, sizeof pad, "archive/.pad/%zu", i);
    int64_t after_pad = pos + overhead + strlen(pad) + trailer; /* with no pad data */
    int64_t len = ((64 - (after_pad + overhead + strlen(next_name)) % 64) % 64);
    static const char zeros[64];
    return add_member(a, pad, zeros, len);
}

static int write_pth(int fd, void *ctx)
{
    pth_writer *w = ctx;
    struct archive *a = archive_write_new();
    archive_write_set_format_zip(a);
    archive_write_zip_set_compression_store(a);
    archive_write_set_bytes_in_last_block(a, 1);
    bytes pkl = {0};
    make_pickle(&pkl, w->t, w->n);
    int rc = -1;
    if (archive_write_open_fd(a, fd) != ARCHIVE_OK) goto fail;
    if (add_member(a, "archive/data.pkl", pkl.p, pkl.n) < 0) goto fail;
    /* local header = overhead + name length; trailer = data descriptor */
    int64_t header, trailer;
    if (add_member_measured(a, "archive/byteorder", "little", 6, &header, &trailer) < 0) goto fail;
    if (w->metadata &&
        add_member(a, "archive/" METADATA_MEMBER, w->metadata, strlen(w->metadata)) < 0)
        goto fail;
    int64_t overhead = header - (int64_t)strlen("archive/byteorder");
    for (size_t i = 0; i < w->n; i++) {
        char name[64];
        snprintf(name, sizeof name, "archive/data/%zu", i);
        size_t bytes = ckpt_shape_numel(w->t[i].ndim, w->t[i].shape, 1) * dtype_size(w->t[i].dtype);
        if (overhead >= 0 && align_next(a, name, overhead, trailer, i) < 0) goto fail;
        if (add_member(a, name, w->t[i].data, bytes) < 0) goto fail;
    }
    if (add_member(a, "archive/version", "3\n", 2) < 0) goto fail;
    if (archive_write_close(a) != ARCHIVE_OK) goto fail;
    rc = 0;
    goto out;
fail:
    clip_set_error("%s: %s", w->path,
                   archive_error_string(a) ? archive_error_string(a) : strerror(errno));
out:
    archive_write_free(a);
    free(pkl.p);
    return rc;
}

int ckpt_save_pth(const char *path, const ckpt_out_tensor *t, size_t n, const char *const *metadata)
{
    if (ckpt_check_out(path, t, n) < 0) return -1;
    char *js = NULL;
    if (metadata && metadata[0]) {
        json_t *m = ckpt_metadata_object(metadata);
        js = m ? json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(m);
        if (!js) {
            clip_set_error("%s: cannot encode the metadata (a key or value is not valid UTF-8)",
                           path);
            return -1;
        }
    }
    pth_writer w = {path, t, n, js};
    int rc = ckpt_write_atomic(path, write_pth, &w);
    free(js);
    return rc;
}
