/* Model checkpoints: PyTorch zip (.pth, pytorch_model.bin), legacy torch
 * pickles, and safetensors. Loading never executes code: the pickle reader
 * is a restricted VM that accepts only what a state dict needs. */
#ifndef CLIP_CHECKPOINT_H
#define CLIP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

#define CKPT_MAX_DIMS 8

typedef struct {
    char *name;
    clip_dtype dtype;
    int ndim;
    int64_t shape[CKPT_MAX_DIMS];
    size_t numel;
    const void *data; /* numel elements of dtype, contiguous C order, owned by the ckpt */
} ckpt_tensor;

typedef struct ckpt ckpt;

/* Detects the format from the content. NULL with clip_error() set (naming
 * the file and, where it applies, the tensor or pickle opcode). */
ckpt *ckpt_load(const char *path);
/* The same from memory (copied); `name` stands for the file in messages. */
ckpt *ckpt_load_buffer(const void *buf, size_t len, const char *name);
void ckpt_free(ckpt *c);

size_t ckpt_count(const ckpt *c);
const ckpt_tensor *ckpt_tensor_at(const ckpt *c, size_t i);
const ckpt_tensor *ckpt_find(const ckpt *c, const char *name);
/* Metadata string: safetensors' __metadata__, or the clip-tools record of a
 * .pth written by ckpt_save_pth; NULL if absent. */
const char *ckpt_metadata(const ckpt *c, const char *key);

/* Copy tensor `name` converted to float32 into dst, checking the shape
 * (ndim dims in shape[]). -1 with an error naming the tensor if it is
 * missing or mis-shaped. */
int ckpt_read_f32(const ckpt *c, const char *name, int ndim, const int64_t *shape, float *dst);

/* Writing. Tensors are float32 unless dtype says otherwise. */
typedef struct {
    const char *name;
    clip_dtype dtype;
    int ndim;
    int64_t shape[CKPT_MAX_DIMS];
    const void *data;
} ckpt_out_tensor;

/* Every tensor of c, in order, as a list to save: views of c's names and data
 * (c must outlive the list). malloc'd, ckpt_count(c) entries; the caller frees. */
ckpt_out_tensor *ckpt_out_views(const ckpt *c);

/* In the format the path's suffix names: .safetensors, or .pth/.pt/.bin
 * (PyTorch zip); -1 with an error naming the path for any other. */
int ckpt_save(const char *path, const ckpt_out_tensor *t, size_t n, const char *const *metadata);
/* safetensors; metadata: NULL or pairs {key, value, key, value, ..., NULL}. */
int ckpt_save_safetensors(const char *path, const ckpt_out_tensor *t, size_t n,
                          const char *const *metadata);
/* PyTorch zip format that torch.load() reads as an OrderedDict of exactly
 * these tensors. metadata (NULL or pairs, as above) goes into an extra
 * member, archive/clip-tools/metadata.json, that torch.load ignores. */
int ckpt_save_pth(const char *path, const ckpt_out_tensor *t, size_t n,
                  const char *const *metadata);

#endif
