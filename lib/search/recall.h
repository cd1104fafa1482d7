/* Retrieval recall as Chinese-CLIP measures it: images x all captions, R@1/5/10
 * both ways, computed in blocks so that the score matrix is never held whole.
 *
 * Rank of a query = 1 + the number of wrong candidates whose score is strictly
 * greater than the true one (ties count in the query's favour):
 *   image->text: true score = the best of the image's own captions; wrong
 *                candidates = every caption of another image.
 *   text->image: true score = the caption's own image; wrong candidates =
 *                every other image.
 * A hit at k is rank <= k. An image with no captions is not an image->text
 * query (its rank is 0) but is still a text->image candidate (a distractor). */
#ifndef CLIP_RECALL_H
#define CLIP_RECALL_H

#include <jansson.h>
#include <stdint.h>

/* Embeddings of an evaluation set: image i owns captions
 * [txt_off[i], txt_off[i+1]) of txt. */
typedef struct {
    int64_t n_images, n_texts;
    int dim;
    float *img;       /* [n_images, dim] */
    float *txt;       /* [n_texts, dim] */
    int64_t *txt_off; /* [n_images + 1] */
} recall_set;

/* What recall_load reads of each sample of a stream (flags, or'ed). */
enum {
    RECALL_IMAGES = 1,       /* img_emb.npy (float32 [D]): every sample must have one */
    RECALL_TEXTS = 2,        /* txt_emb.npy (float32 [n, D]): every sample must have one */
    RECALL_TEXTS_IF_ANY = 4, /* txt_emb.npy where a sample has one (without: no captions) */
    RECALL_NAME_STREAM =
        8, /* errors about a sample start with the endpoint ("emb.tar: sample k: ...") */
};

/* What a search shows of the samples (recall_load's meta): owned, strings malloc'd. */
typedef struct {
    char **key;     /* [n_images] the samples' keys */
    char **image;   /* [n_images] the json field's "image", NULL where there is none */
    char **caption; /* [n_texts] the json field's "captions"[row], NULL where there is none */
} recall_meta;

/* The one loader of embedded streams (clip-recall, clip-query): every sample
 * of the stream at endpoint is an image of set, with the vectors `what` asks
 * for, L2-normalised (scores are cosine similarities); set->img stays NULL
 * without RECALL_IMAGES, set->txt without a RECALL_TEXTS*. dim: the model's
 * embedding dimension, which every vector must have (0: the first sample's,
 * 1..65536). meta (may be NULL) gets the keys, image paths and captions.
 * -1 with clip_error() naming the sample on a missing field, a bad shape or
 * dtype, a dimension that differs, a non-finite value, a zero vector; and
 * naming the stream on an empty stream, or one without captions when they
 * are required (RECALL_TEXTS) or all that is read (no RECALL_IMAGES).
 * set and meta are then left empty. */
int recall_load(const char *endpoint, unsigned what, int dim, recall_set *set, recall_meta *meta);
/* recall_load(endpoint, RECALL_IMAGES | RECALL_TEXTS, 0, set, NULL) */
int recall_load_stream(const char *endpoint, recall_set *set);
void recall_set_free(recall_set *set);
/* Frees meta's strings and arrays (set: the set it was loaded with); NULLs them. */
void recall_meta_free(recall_meta *meta, const recall_set *set);

/* Ranks of every image (img_rank[n_images], 0 for an image without captions)
 * and every caption (txt_rank[n_texts]) by dot product of the vectors as
 * given. block_images x block_texts scores are held per thread at a time
 * (<= 0: defaults 256 x 4096); the result does not depend on them. Parallel
 * over image blocks with OpenMP; each thread calls sgemm single-threaded. */
void recall_ranks(const recall_set *set, int block_images, int block_texts, int64_t *img_rank,
                  int64_t *txt_rank);

typedef struct {
    double txt_r[3], img_r[3]; /* percent at k = 1, 5, 10; txt = image->text */
    double txt_r_mean, img_r_mean, r_mean;
    int64_t n_images, n_texts;
    int64_t n_image_queries; /* images that have captions */
} recall_metrics;

void recall_summarize(const recall_set *set, const int64_t *img_rank, const int64_t *txt_rank,
                      recall_metrics *m);

/* {"txt_r1", ..., "r_mean", "n_images", "n_texts"}; new reference. */
json_t *recall_metrics_json(const recall_metrics *m);

#endif
