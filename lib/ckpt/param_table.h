/* A list of named float tensors living at offsets in one contiguous buffer,
 * each bound to a pointer field of a model struct (llm.c layout). The same
 * table type describes a tower's parameters (in checkpoint key order), and
 * — built again by the same layout function — its gradients or its
 * activations. */
#ifndef CLIP_PARAM_TABLE_H
#define CLIP_PARAM_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt/checkpoint.h"

typedef struct {
    char *name;
    int ndim;
    int64_t shape[4];
    size_t offset, numel; /* in floats */
    float **ptr;          /* the struct field that points at the data */
} param_spec;

typedef struct {
    param_spec *v;
    int n, cap;
    size_t total; /* floats */
    float *data;  /* clip_alloc_big, owned */
} param_table;

/* Append a tensor; offsets are rounded up to 16 floats (64 bytes). */
void pt_add(param_table *t, float **ptr, const char *name, int ndim, const int64_t *shape);
/* Append a PyTorch module's "<prefix><module>.weight" and then its
 * "<prefix><module>.bias": a Linear's [out, in] and [out], a LayerNorm's
 * [dim] and [dim]. */
void pt_add_linear(param_table *t, float **w, float **b, const char *prefix, const char *module,
                   int64_t out, int64_t in);
void pt_add_norm(param_table *t, float **w, float **b, const char *prefix, const char *module,
                 int64_t dim);
/* Before pt_alloc: drop the tensors keep(name, ctx) refuses and lay the rest
 * out again, in their order (a gradient table of only the trainable
 * tensors); the dropped ones' fields are left as they are (NULL in a zeroed
 * struct). */
void pt_filter(param_table *t, int (*keep)(const char *name, const void *ctx), const void *ctx);
/* Allocate the buffer (zeroed) and point every field into it. */
void pt_alloc(param_table *t);
void pt_free(param_table *t);
const param_spec *pt_find(const param_table *t, const char *name);

/* Checks, before anything is allocated, that every tensor of the table is in
 * the checkpoint with the table's shape (names as in the table): a
 * configuration read from names or a config file must not commit memory
 * for tensors that are not there. -1 with an error naming the tensor. */
int pt_check(const param_table *t, const ckpt *c);
/* Bytes of the buffer pt_alloc would allocate; SIZE_MAX if that overflows. */
size_t pt_bytes(const param_table *t);

/* Read every tensor from the checkpoint, by its name with a leading `strip`
 * replaced by `add` (both may be NULL). -1 with an error naming the tensor
 * when one is missing or mis-shaped. */
int pt_load(const param_table *t, const ckpt *c, const char *strip, const char *add);
/* Read one spec from checkpoint tensor `ckname`. */
int pt_load_spec(const param_spec *s, const ckpt *c, const char *ckname);

#endif
