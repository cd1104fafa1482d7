/* Legacy torch.save files (_use_new_zipfile_serialization=False): five
 * pickles back to back -- the magic number, the protocol version (1001),
 * sys_info, the state dict (persistent ids ('storage', type, root_key,
 * location, numel, view_metadata)), the list of storage keys -- followed,
 * for each key in that order, by an int64 element count and the storage's
 * little-endian bytes. */
#include "ckpt/torch_state.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char magic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

typedef struct {
    pk_obj **s; /* every storage made by persistent_load */
    size_t n, cap;
} legacy_reader;

typedef struct {
    const char *key;
    const unsigned char *data;
    int64_t numel;
    size_t esize;
} record;

static pk_obj *persistent_load(pk_vm *vm, const pk_obj *pid, void *ctx)
{
    legacy_reader *r = ctx;
    pk_obj *const *it = pid->type == PK_TUPLE ? pid->seq.items : NULL;
    if (!it || pid->seq.n != 6 || it[0]->type != PK_STR || strcmp(it[0]->str.s, "storage") ||
        it[1]->type != PK_GLOBAL || it[1]->global.kind != PKG_STORAGE_TYPE ||
        it[2]->type != PK_STR || it[4]->type != PK_INT || it[4]->i < 0) {
        if (it && pid->seq.n && it[0]->type == PK_STR && !strcmp(it[0]->str.s, "module"))
            clip_set_error("refusing to load a pickled nn.Module (only tensors are allowed)");
        else
            clip_set_error("unsupported persistent id (expected ('storage', type, key, location, "
                           "numel, view))");
        return NULL;
    }
    clip_dtype dt = it[1]->global.dtype;
    pk_obj *o;
    const pk_obj *view = it[5];
    if (view->type == PK_NONE) {
        o = pk_new_storage(vm, dt, it[2]->str.s, it[4]->i);
    } else {
        pk_obj *const *v = view->type == PK_TUPLE ? view->seq.items : NULL;
        if (!v || view->seq.n != 3 || v[0]->type != PK_STR || v[1]->type != PK_INT ||
            v[2]->type != PK_INT || v[1]->i < 0 || v[2]->i < 0) {
            clip_set_error("bad storage view (expected (key, offset, size))");
            return NULL;
        }
        o = pk_new_storage(vm, dt, v[0]->str.s, v[2]->i);
        if (o) {
            o->storage.view_of = xstrdup(it[2]->str.s);
            o->storage.view_offset = v[1]->i;
        }
    }
    if (!o) return NULL;
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->s = xrealloc(r->s, r->cap * sizeof *r->s);
    }
    r->s[r->n++] = o;
    return o;
}

static int next_pickle(ckpt *c, pk_vm *vm, size_t *pos, const char *what, pk_obj **out)
{
    size_t used;
    *out = pk_load(vm, c->map + *pos, c->map_len - *pos, &used);
    if (!*out) {
        clip_set_error("%s: %s: %s", c->path, what, clip_error());
        return -1;
    }
    *pos += used;
    return 0;
}

static int cmp_record(const void *a, const void *b)
{
    return strcmp(((const record *)a)->key, ((const record *)b)->key);
}

static const record *find_record(const record *rec, size_t n, const char *key)
{
    record k = {.key = key};
    return bsearch(&k, rec, n, sizeof *rec, cmp_record);
}

static const char *root_key(const pk_obj *o)
{
    return o->storage.view_of ? o->storage.view_of : o->storage.key;
}

static int cmp_storage(const void *a, const void *b)
{
    return strcmp(root_key(*(pk_obj *const *)a), root_key(*(pk_obj *const *)b));
}

/* r->s is sorted by root key before the storage data is read */
static const pk_storage *find_storage(legacy_reader *r, const char *key)
{
    pk_storage tmp = {.key = (char *)key};
    pk_obj k = {.type = PK_STORAGE, .storage = tmp}, *kp = &k;
    pk_obj **o = bsearch(&kp, r->s, r->n, sizeof *r->s, cmp_storage);
    return o ? &(*o)->storage : NULL;
}

int ckpt_load_torch_legacy(ckpt *c)
{
    legacy_reader r = {0};
    pk_vm *vm = pk_new(persistent_load, &r);
    record *rec = NULL;
    int rc = -1;
    size_t pos = 0;
    pk_obj *o, *root, *keys;
    if (next_pickle(c, vm, &pos, "pickle", &o) < 0) goto out;
    if (o->type != PK_BIGINT || o->str.len != sizeof magic ||
        memcmp(o->str.s, magic, sizeof magic)) {
        clip_set_error("%s: a pickle, but not a torch checkpoint (no torch magic number)", c->path);
        goto out;
    }
    if (next_pickle(c, vm, &pos, "protocol version", &o) < 0) goto out;
    if (o->type != PK_INT || o->i != 1001) {
        clip_set_error("%s: unsupported torch legacy protocol version", c->path);
        goto out;
    }
    if (next_pickle(c, vm, &pos, "sys_info", &o) < 0) goto out;
    if (next_pickle(c, vm, &pos, "state dict", &root) < 0) goto out;
    if (next_pickle(c, vm, &pos, "storage keys", &keys) < 0) goto out;
    if (keys->type != PK_LIST) {
        clip_set_error("%s: storage keys are a %s, not a list", c->path, pk_type_name(keys->type));
        goto out;
    }
    rec = xcalloc(keys->seq.n + 1, sizeof *rec);
    if (r.n) qsort(r.s, r.n, sizeof *r.s, cmp_storage);
    for (size_t i = 0; i < keys->seq.n; i++) {
        const pk_obj *k = keys->seq.items[i];
        if (k->type != PK_STR) {
            clip_set_error("%s: a storage key is a %s", c->path, pk_type_name(k->type));
            goto out;
        }
        const pk_storage *st = find_storage(&r, k->str.s);
        if (!st) {
            clip_set_error("%s: storage '%s' is not used by any tensor", c->path, k->str.s);
            goto out;
        }
        size_t esize = dtype_size(st->dtype);
        if (c->map_len - pos < 8) goto truncated;
        int64_t numel = 0;
        memcpy(&numel, c->map + pos, 8); /* little-endian, as on every host we build for */
        pos += 8;
        if (numel < 0 || (uint64_t)numel > (c->map_len - pos) / esize) goto truncated;
        rec[i] = (record){k->str.s, c->map + pos, numel, esize};
        pos += numel * esize;
    }
    qsort(rec, keys->seq.n, sizeof *rec, cmp_record);
    for (size_t i = 1; i < keys->seq.n; i++)
        if (!strcmp(rec[i - 1].key, rec[i].key)) {
            clip_set_error("%s: storage '%s' listed twice", c->path, rec[i].key);
            goto out;
        }
    for (size_t j = 0; j < r.n; j++) {
        pk_storage *st = &r.s[j]->storage;
        const char *root = root_key(r.s[j]);
        const record *re = find_record(rec, keys->seq.n, root);
        size_t esize = dtype_size(st->dtype);
        if (!re) {
            clip_set_error("%s: storage '%s' is missing from the storage list", c->path, root);
            goto out;
        }
        if (re->esize != esize) {
            clip_set_error("%s: storage '%s' used with two element types", c->path, root);
            goto out;
        }
        int64_t off = st->view_of ? st->view_offset : 0;
        int64_t numel = st->view_of ? st->numel : re->numel;
        if (off > re->numel || numel > re->numel - off) {
            clip_set_error("%s: storage view '%s' lies outside storage '%s'", c->path, st->key,
                           root);
            goto out;
        }
        st->data = re->data + off * esize;
        st->bytes = numel * esize;
    }
    rc = ckpt_add_pickled(c, root);
    goto out;
truncated:
    clip_set_error("%s: truncated storage data", c->path);
out:
    free(rec);
    free(r.s);
    pk_free(vm);
    return rc;
}
