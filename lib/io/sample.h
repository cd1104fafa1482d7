/* A sample: a key and its fields (<key>.<field> members of a tar stream). */
#ifndef CLIP_SAMPLE_H
#define CLIP_SAMPLE_H

#include <stddef.h>

#include "io/npy.h"

typedef struct {
    char *name; /* field name: "img.npy", "json", "tok.npy", ... */
    unsigned char *data;
    size_t size;
} sample_field;

typedef struct {
    char *key;
    sample_field *fields;
    int n, cap;
} sample;

void sample_init(sample *s);
void sample_clear(sample *s); /* drop key and fields, keep the allocation */
void sample_free(sample *s);
void sample_set_key(sample *s, const char *key);

const sample_field *sample_get(const sample *s, const char *name);
/* Takes ownership of data (malloc'd); replaces a field of the same name. */
void sample_set(sample *s, const char *name, void *data, size_t size);
void sample_set_copy(sample *s, const char *name, const void *data, size_t size);
/* Encode as .npy and set. */
void sample_set_npy(sample *s, const char *name, npy_dtype t, int ndim, const int64_t *shape,
                    const void *data);

/* Parse field `name` as .npy. -1 with an error naming the sample when the
 * field is missing or malformed. */
int sample_get_npy(const sample *s, const char *name, npy_array *out);

/* A tar member's name, "<dir>/<key>.<field>": the key runs to the first dot
 * of the base name (so "a/b.img.npy" is key "a/b", field "img.npy"). -1 when
 * there is no dot, or nothing before or after it. *key is malloc'd; *field
 * points into path. */
int sample_split_member_name(const char *path, char **key, const char **field);
/* The key of the sample made from the file `path` (WebDataset's rule): its
 * base name without the extension, other dots turned into '_' ("a/x.y.jpg"
 * is "x_y"), so that splitting "<key>.<field>" finds the field again; "_"
 * when nothing is left. malloc'd. */
char *sample_key_for_path(const char *path);

#endif
