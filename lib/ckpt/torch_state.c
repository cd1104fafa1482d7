/* PyTorch state dicts: the unpickled dict of tensors (torch_zip.c,
 * torch_legacy.c) into the tensor table, checking each view against its
 * storage before anything is copied. */
#include "ckpt/ckpt_internal.h"
#include "ckpt/torch_state.h"
#include "core/util.h"

#include <string.h>

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
    size_t esize = dtype_size(st->dtype);
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
            if (pt->stride[d] && (pt->shape[d] - 1) > (INT64_MAX - last) / pt->stride[d])
                in_range = 0;
            else
                last += (pt->shape[d] - 1) * pt->stride[d];
        }
        expect *= pt->shape[d] ? pt->shape[d] : 1;
    }
    if (!numel) return ckpt_add(c, name, st->dtype, pt->ndim, pt->shape, NULL);
    if (!in_range || last >= avail) {
        char shape[256];
        ckpt_format_shape(shape, sizeof shape, pt->ndim, pt->shape);
        clip_set_error("%s: tensor '%s' %s at storage offset %lld lies outside its storage '%s' "
                       "of %lld elements",
                       c->path, name, shape, (long long)pt->offset, st->key, (long long)avail);
        return -1;
    }
    /* a view that repeats elements (stride 0: an expanded tensor) is
     * materialised; it may not be larger than the whole file, so that what
     * loading commits stays bounded by what the file holds */
    if (numel > avail && (uint64_t)numel * esize > c->map_len) {
        char shape[256];
        ckpt_format_shape(shape, sizeof shape, pt->ndim, pt->shape);
        clip_set_error("%s: tensor '%s' %s repeats the %lld elements of its storage '%s' into "
                       "%lld (%lld bytes): larger than the file's %zu bytes; save the tensor "
                       "with .contiguous()",
                       c->path, name, shape, (long long)avail, st->key, (long long)numel,
                       (long long)(numel * esize), c->map_len);
        return -1;
    }
    const unsigned char *src = (const unsigned char *)st->data + pt->offset * esize;
    const void *data = src;
    if (!contiguous || (uintptr_t)src % esize) {
        unsigned char *buf = ckpt_own(c, numel * esize);
        if (contiguous)
            memcpy(buf, src, numel * esize);
        else
            gather(buf, src, pt->ndim, pt->shape, pt->stride, esize, numel);
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
            clip_set_error("%s: state dict key is a %s, not a string", c->path,
                           pk_type_name(k->type));
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
    size_t esize = dtype_size(st->dtype);
    unsigned char *buf = ckpt_own(c, st->bytes);
    memcpy(buf, st->data, st->bytes);
    byteswap(buf, st->bytes / esize, esize);
    st->data = buf;
}

/* ---- writing ---- */
