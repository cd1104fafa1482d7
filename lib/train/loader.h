/* The training data of clip-train: samples carrying img.npy (uint8 [H, W, 3])
 * and tok.npy (int32 [n_captions, L]), from a FILE.tar (or shards in brace
 * notation, io/shards.h) read by random access in a seeded shuffled order,
 * or from a stream (-, tcp://, ipc://) read once in arrival order. A batch is
 * pixels at the model's resolution (random resized crop + flip, or the centre
 * crop) and one caption row per sample (random, or the first).
 *
 * Data parallelism: a global step takes G = ranks * accum * micro samples,
 * positions [g G, (g + 1) G) of the epoch's order (the last incomplete global
 * batch of an epoch is dropped). Every rank computes the same order; rank r's
 * micro-batch k is positions (k * ranks + r) * micro ... + micro - 1 of the
 * global batch, so the ranks' slices are disjoint and an epoch visits each
 * sample (but the dropped tail) exactly once across ranks. A sample's crop,
 * flip and caption depend only on (seed, epoch, g, its position), never on
 * how the global batch is split. */
#ifndef CLIP_LOADER_H
#define CLIP_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "io/sample.h"

typedef struct {
    int shuffle, augment, first_caption;
    uint64_t seed;
    int rank, ranks; /* this process and their number (0, 1 without MPI) */
    int accum;       /* micro-batches per step (--accum-freq), >= 1 */
    int micro;       /* samples per micro-batch per rank (-b), >= 1 */
} loader_config;

typedef struct train_loader train_loader;

/* Opens the data and reads its first sample, which fixes the token length.
 * A stream with ranks > 1 must be a ZeroMQ endpoint (each rank pulls its
 * own samples); stdin is one process's. NULL with an error naming the file
 * or sample. */
train_loader *loader_open(const char *spec, const loader_config *cfg);
void loader_close(train_loader *d);

/* A training sample's img.npy (uint8 [H, W, 3]) and tok.npy (int32 [n, L],
 * L >= 1), parsed into img and tok (pointing into s); -1 with an error
 * naming path and the sample. */
int loader_sample_fields(const char *path, const sample *s, npy_array *img, npy_array *tok);

int loader_is_stream(const train_loader *d);
/* samples in the file (0 for a stream) */
size_t loader_count(const train_loader *d);
/* tokens per caption, from the first sample */
int loader_token_length(const train_loader *d);
/* global batches in an epoch of a file (count / G); 0 for a stream */
long loader_batches_per_epoch(const train_loader *d);

/* The model's image side and vocabulary; allocates the batch buffers
 * (accum * micro samples). 0, or -1 with an error. */
int loader_set_model(train_loader *d, int resolution, int vocab);

/* The order of `epoch` (a file; the identity without shuffle). */
void loader_epoch(train_loader *d, long epoch);

/* This rank's accum * micro samples of global batch g of the epoch into the
 * buffers, micro-batch after micro-batch. Returns the samples read: all of
 * them, or fewer only at the end of a stream; -1 with an error naming the
 * file and sample (a missing field, a bad shape, a token id outside the
 * vocabulary, a caption longer than the first sample's). */
int loader_batch(train_loader *d, long epoch, long g);
/* the batch: pixels uint8 [accum * micro, R, R, 3], ids int32 [accum * micro, L] */
const uint8_t *loader_pixels(const train_loader *d);
const int32_t *loader_ids(const train_loader *d);

/* For a feature cache (train/feature_cache.h), a file's only: the sample
 * index and the caption row of each slot of the last batch ([accum *
 * micro] each), a sample's key, and sample i as an epoch without
 * augmentation sees it: pixels uint8 [R, R, 3] (the centre crop) and every
 * caption row, *tok int32 [*rows, L] (malloc'd, 0-padded to the data's
 * token length L). -1 with an error naming the file and sample. */
const size_t *loader_slot_samples(const train_loader *d);
const int *loader_slot_rows(const train_loader *d);
const char *loader_key(const train_loader *d, size_t i);
int loader_read_sample(train_loader *d, size_t i, uint8_t *pixels, int32_t **tok, int *rows);
/* The evaluation view of an img.npy (uint8 [H, W, 3], checked): its pixels when already
 * R x R, else the centre crop, into out [R, R, 3]. */
void loader_centre_pixels(const npy_array *img, int R, uint8_t *out);
/* skip 1: batches leave the pixels undecoded (a cached image tower) */
void loader_skip_pixels(train_loader *d, int skip);

#endif
