/* The tensor table's insides (tensors.c), shared with the format readers and
 * writers (safetensors.c, torch_zip.c, torch_legacy.c) and the loader
 * (checkpoint.c); not part of the public API. */
#ifndef CLIP_CKPT_INTERNAL_H
#define CLIP_CKPT_INTERNAL_H

#include <jansson.h>

#include "ckpt/checkpoint.h"
#include "core/strmap.h"

struct ckpt {
    char *path;
    ckpt_tensor *t;
    size_t n, cap;
    strmap names;             /* name -> index into t */
    const unsigned char *map; /* the whole file, read-only */
    size_t map_len;
    int map_is_malloc; /* from ckpt_load_buffer: free, not munmap */
    void **owned;      /* buffers freed with the checkpoint */
    size_t n_owned, cap_owned;
    char **meta; /* key, value, key, value, ... */
    size_t n_meta;
};

#define CKPT_MAX_TENSORS (1u << 20)

/* An empty table; `name` (copied) stands for the file in messages. */
ckpt *ckpt_new(const char *name);
/* Adds a tensor (name copied, data borrowed; must stay valid while c lives).
 * Fails on a duplicate name. */
int ckpt_add(ckpt *c, const char *name, clip_dtype dt, int ndim, const int64_t *shape,
             const void *data);
/* A buffer freed by ckpt_free; 64-byte aligned. */
void *ckpt_own(ckpt *c, size_t bytes);
/* "[2, 3]" into buf (truncated to cap). */
void ckpt_format_shape(char *buf, size_t cap, int ndim, const int64_t *shape);
/* numel of a shape, -1 on a negative dim or overflow (also of numel * esize). */
int64_t ckpt_shape_numel(int ndim, const int64_t *shape, size_t esize);

int ckpt_load_safetensors(ckpt *c);
int ckpt_load_torch_zip(ckpt *c);
int ckpt_load_torch_legacy(ckpt *c);

/* Metadata from a JSON object of strings (safetensors' __metadata__, a .pth's
 * clip-tools record); `what` names it in messages. -1 unless every value is
 * a string. Called at most once per checkpoint. */
int ckpt_set_metadata(ckpt *c, json_t *m, const char *what);
/* The pairs {key, value, ..., NULL} (or NULL: none) as a new JSON object;
 * NULL when a key or value is not valid UTF-8. */
json_t *ckpt_metadata_object(const char *const *metadata);

/* Writes through fn into a temporary file beside path, fsyncs it and renames
 * it over path: atomic_file_write (core/atomic_file.h), whose temporary file
 * a signal or an error removes. fn returns -1 with the error set. */
int ckpt_write_atomic(const char *path, int (*fn)(int fd, void *ctx), void *ctx);
int ckpt_write_all(int fd, const void *buf, size_t n);
/* Checks names (present, unique), dims and data pointers before writing. */
int ckpt_check_out(const char *path, const ckpt_out_tensor *t, size_t n);

#endif
