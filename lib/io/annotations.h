/* Image-caption annotations in the seed format: a JSON list of
 * {"image": "flickr8k-images/x.jpg", "caption": ["...", ...]}. */
#ifndef CLIP_ANNOTATIONS_H
#define CLIP_ANNOTATIONS_H

#include <stddef.h>

typedef struct {
    char *image;     /* relative path, '\' separators turned into '/' */
    char **captions; /* UTF-8 */
    int n_captions;
} annotation;

typedef struct {
    annotation *items;
    size_t n;
} annotations;

/* NULL with clip_error() naming the file (and the entry index and image for a
 * bad entry). "caption" may also be a single string; it may be absent (0 captions). */
annotations *annotations_load(const char *path);
void annotations_free(annotations *a);

#endif
