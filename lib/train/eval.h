/* The evaluation set of clip-train, held in memory, and its embeddings
 * computed by all the ranks of a data-parallel run: each encodes its own
 * slice of the images and of the captions, and the slices are gathered, so
 * that every rank ends with the embeddings of one process (the same
 * figures; search/recall.h ranks them). */
#ifndef CLIP_EVAL_H
#define CLIP_EVAL_H

#include <stdint.h>

#include "model/clip_model.h"
#include "train/comm.h"

typedef struct {
    int n_images, n_texts, len, res;
    uint8_t *pixels;  /* [n_images, res, res, 3]: the centre crop (or the stored pixels at res) */
    int32_t *ids;     /* [n_texts, len] every caption */
    int64_t *txt_off; /* [n_images + 1]: image i's captions are [txt_off[i], txt_off[i + 1]) */
} val_set;

/* Every sample of a FILE.tar (or shards) with img.npy and tok.npy, the
 * captions of one length. 0, or -1 with an error naming the file and sample;
 * *v is then empty. */
int val_set_load(val_set *v, const char *path, int res);
void val_set_free(val_set *v);

/* L2-normalised embeddings: img [n_images, D], txt [n_texts, D], D =
 * m->embed_dim. Collective over comm (NULL: one process encodes all). 0, or
 * -1 with an error. */
int val_set_encode(clip_model *m, const val_set *v, train_comm *comm, float *img, float *txt);

#endif
