/* Element types of tensors and arrays, with their names in each format we
 * read or write: one table for the checkpoint formats (safetensors codes,
 * torch storage classes) and .npy (numpy descr strings). */
#ifndef CLIP_DTYPE_H
#define CLIP_DTYPE_H

#include <stddef.h>

typedef enum {
    DT_F32,
    DT_F16,
    DT_BF16,
    DT_F64,
    DT_I64,
    DT_I32,
    DT_I16,
    DT_I8,
    DT_U8,
    DT_BOOL
} clip_dtype;
#define DT_COUNT (DT_BOOL + 1)

typedef struct {
    const char *name;          /* "float32", as numpy and torch print it */
    size_t size;               /* bytes per element */
    const char *safetensors;   /* "F32" */
    const char *torch_storage; /* "FloatStorage" (module torch) */
    const char *npy_descr;     /* "<f4" (little-endian); NULL: not in our .npy files */
} dtype_info;

/* NULL for a value outside the enum. */
const dtype_info *dtype_info_of(clip_dtype t);
size_t dtype_size(clip_dtype t);      /* 0 outside the enum */
const char *dtype_name(clip_dtype t); /* "?" outside the enum */

/* The type a format's name stands for: 0 and *t, or -1 when the name is none
 * of ours. Names are compared as len bytes (no NUL needed). */
int dtype_from_safetensors(const char *code, size_t len, clip_dtype *t);
int dtype_from_torch_storage(const char *name, size_t len, clip_dtype *t);
/* descr as in an .npy header, e.g. "<f4"; a one-byte type may also be written
 * with '<' or '|' ("<u1", "|u1"). */
int dtype_from_npy_descr(const char *descr, size_t len, clip_dtype *t);

/* n elements of type t at src (unaligned, little-endian) to float32. */
void dtype_to_f32(clip_dtype t, const void *src, size_t n, float *dst);

/* n float32 values to type t (F32, F16, BF16: round to nearest even, as
 * torch's .to() does); -1 for any other type. */
int dtype_from_f32(clip_dtype t, const float *src, size_t n, void *dst);

#endif
