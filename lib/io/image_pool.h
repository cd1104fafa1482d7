/* Ordered parallel decoding (clip-prep): worker threads read the images of a
 * list from an image source and decode them (image_load) at most `ring`
 * images ahead of the consumer, who takes them back in list order. Each side
 * sleeps only when it must and is woken once per half ring, not per image. */
#ifndef CLIP_IMAGE_POOL_H
#define CLIP_IMAGE_POOL_H

#include <stddef.h>

#include "io/image_source.h"

typedef struct {
    int size, mode;       /* image_load's output side and resize mode */
    long long max_pixels; /* images whose header claims more are refused undecoded */
    int keep_original;    /* hand back the file's bytes too */
    /* copied in front of the pixels (e.g. an .npy header), so that
     * prefix + pixels is one buffer with no copy of its own */
    const unsigned char *prefix;
    size_t prefix_len;
    int threads; /* decoding threads; 1: in the consumer's thread, on demand */
} image_pool_config;

/* One image: data/orig, or err. All malloc'd, the consumer's (image_pool_item_free). */
typedef struct {
    unsigned char *data; /* prefix + uint8 [size, size, 3] */
    size_t len;
    unsigned char *orig; /* the file's bytes (keep_original) */
    size_t orig_len;
    char *err; /* instead: the error, naming the image */
} image_pool_item;

typedef struct image_pool image_pool;

/* Starts decoding paths[0..n) from src (both borrowed until image_pool_free).
 * NULL with an error (a thread that could not start). */
image_pool *image_pool_start(image_source *src, const char *const *paths, size_t n,
                             const image_pool_config *cfg);
/* The next image in list order, waiting for it: 0 (*out filled, the
 * consumer's), 1 after the last. */
int image_pool_next(image_pool *p, image_pool_item *out);
void image_pool_item_free(image_pool_item *it);
/* Stops the workers (mid-list too), frees what they decoded. NULL: nothing. */
void image_pool_free(image_pool *p);

#endif
