/* NumPy .npy format 1.0 (little-endian, C order): encode and parse in memory. */
#ifndef CLIP_NPY_H
#define CLIP_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

/* The element types of our .npy files: those with an npy_descr in core/dtype.c. */
typedef clip_dtype npy_dtype;

#define NPY_MAX_DIMS 8

typedef struct {
    npy_dtype dtype;
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    const void *data; /* points into the parsed buffer (not necessarily aligned) */
    size_t count;     /* number of elements */
} npy_array;

/* Parse buf as an .npy file. 0 on success; -1 with clip_error() set
 * (what = the name used in the message, e.g. "key.img.npy"). */
int npy_parse(const void *buf, size_t len, npy_array *out, const char *what);

/* Encode to a malloc'd buffer (t one of the NPY_ types); *len receives its size. data NULL: the data
 * part (the last count * dtype size bytes) is left for the caller to fill. */
unsigned char *npy_encode(npy_dtype t, int ndim, const int64_t *shape, const void *data,
                          size_t *len);

#endif
