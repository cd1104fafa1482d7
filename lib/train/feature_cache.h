/* The features of a locked tower, computed once for the whole training file
 * and reused by every epoch: a tower locked whole (train_config.lock_*) is
 * a fixed function of its input, and without augmentation its input is
 * fixed too (the centre crop of each image; each caption row), so that each
 * later step costs only the tower that trains.
 *
 *   image  [n_samples, D]: one feature per sample (its centre crop)
 *   text   [n_rows, D]: one per caption row, rows of sample i at
 *          txt_off[i] .. txt_off[i+1] (--caption random draws among them)
 *
 * Features as trainer_encode computes them: unnormalised, in the steps'
 * precision. In memory (n x D floats each, the size checked before it is
 * allocated), and optionally in a file: a tar stream of npy (clip-stream(5))
 * whose first sample, "__feature_cache__.json", records what it was made
 * from: per tower the FNV-1a of its weights, the resolution or token length,
 * the precision and the dimension, and the data's sample count and the
 * FNV-1a of its keys in order; then one sample per training sample, its key
 * and img_feat.npy float32 [D] and/or txt_feat.npy float32 [rows, D]. A file
 * made from another model or data, or cut short, is refused with an error
 * that says to delete it. The keys are checked, not the samples' contents:
 * data rewritten under the same keys needs the file deleted. */
#ifndef CLIP_FEATURE_CACHE_H
#define CLIP_FEATURE_CACHE_H

#include <stddef.h>

#include "train/loader.h"
#include "train/train.h"

/* most floats one cached tower may hold (16 GiB) */
#define FEATURE_CACHE_MAX_FLOATS ((size_t)1 << 32)

typedef struct {
    int towers[2];   /* [TRAIN_IMAGE], [TRAIN_TEXT]: 1 cached */
    int dim;         /* D */
    size_t n;        /* samples */
    float *img;      /* [n, D] or NULL */
    float *txt;      /* [rows, D] or NULL */
    size_t *txt_off; /* [n + 1] or NULL */
    size_t rows;     /* caption rows in all */
    char *record;    /* the header's JSON (what it was made from), owned */
} feature_cache;

/* Called every few samples while features are computed: done of n. */
typedef void (*feature_cache_progress)(size_t done, size_t n, void *ctx);

/* The cache of the towers asked for (image, text: 1 each; each must be
 * locked whole in t) over d's file (loader_set_model done): read from
 * `path` when it exists (checked against t and d), else computed, batch
 * after batch through trainer_encode, and written to `path` when given
 * (atomically; NULL: memory only). write 0: never write (an MPI rank that
 * reads what rank 0 wrote). NULL with an error naming the file. */
feature_cache *feature_cache_open(const char *path, trainer *t, train_loader *d, int image,
                                  int text, int write, feature_cache_progress progress, void *ctx);
void feature_cache_free(feature_cache *c);

/* The cached features of the loader's last batch (loader_slot_samples,
 * loader_slot_rows), `slots` of them: out[TRAIN_IMAGE], out[TRAIN_TEXT]
 * [slots, D] each, for the cached towers (the others left alone). */
void feature_cache_batch(const feature_cache *c, const train_loader *d, int slots, float *out[2]);

#endif
