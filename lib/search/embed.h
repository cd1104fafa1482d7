/* Embedding a sample stream (clip-embed): every sample passes through with
 * img_emb.npy (float32 [D]) for its img.npy and txt_emb.npy (float32
 * [n_captions, D]) for its tok.npy added; other fields and the order stay.
 * Samples are buffered and encoded in batches; captions of different lengths
 * go into different batches (a batch is written before one of another length
 * starts). */
#ifndef CLIP_EMBED_H
#define CLIP_EMBED_H

#include "core/util.h"
#include "io/stream.h"
#include "model/clip_model.h"

typedef struct {
    int batch;               /* samples (and captions) encoded together, >= 1 */
    int do_images, do_texts; /* 0: that field passes through unembedded */
} embed_config;

typedef struct embedder embedder;

/* m is borrowed (its precision as set). NULL with an error naming `model`
 * (the checkpoint, for messages) when a tower asked for is missing. */
embedder *embedder_create(clip_model *m, const embed_config *cfg, const char *model);
void embedder_free(embedder *e);

/* Every sample of r, with its embeddings, to w (neither closed here); p
 * (NULL: none) counts the samples. The samples done, or -1 with an error
 * naming the sample (a missing or malformed field, an image of another
 * size than the model's, a caption longer than it takes, a token id
 * outside its vocabulary) or the batch that failed to encode. */
long embedder_run(embedder *e, stream_reader *r, stream_writer *w, progress *p);

#endif
