/* Search and zero-shot labelling with a CLIP model over an embedded index
 * (clip-query), and the requests of its server (search/server.h):
 *   text -> images:   cosine of the text's embedding with every img_emb.npy;
 *   image -> captions: cosine of the image's with every row of txt_emb.npy;
 *   image + labels:   softmax(exp(logit_scale) * cosine) over the labels.
 * Every function that can take long takes a query_budget and gives up with
 * an error once it has run out (a stage under way is finished first). */
#ifndef CLIP_QUERY_H
#define CLIP_QUERY_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>

#include "model/clip_model.h"
#include "search/recall.h"
#include "text/tokenizer.h"

/* What answers queries. model, tok and the index are borrowed (the caller
 * frees them after query_engine_destroy). The tokeniser and the model are
 * used under model_lock, one query at a time; reading and decoding images
 * and searching run concurrently. */
typedef struct {
    clip_model *model;
    tokenizer *tok;          /* NULL: the model has no text tower */
    int context;             /* ids per text incl. start/end */
    const recall_set *index; /* NULL: no index; img [n_images, dim], txt [n_texts, dim]
                                * L2-normalised (recall_load RECALL_IMAGES |
                                * RECALL_TEXTS_IF_ANY); txt NULL when it has no captions */
    const recall_meta *meta; /* the index's keys, images and captions */
    int threads;             /* OpenMP threads of a query run on another thread (0: as is) */
    pthread_mutex_t model_lock;
} query_engine;

void query_engine_init(query_engine *qe, clip_model *model, tokenizer *tok, int context,
                       const recall_set *index, const recall_meta *meta);
void query_engine_destroy(query_engine *qe);

/* A time budget: deadline on now_seconds()'s clock, seconds the budget it
 * came from (for the message). A NULL budget never runs out. */
typedef struct {
    double deadline, seconds;
} query_budget;

/* 0 while the budget lasts, else -1 after clip_set_error("request: over the
 * time budget of S s while WHAT (--time-budget SEC)"). */
int query_budget_check(const query_budget *b, const char *what);

/* The k best (highest score, then lowest index) of scores pushed one by
 * one: O(k) memory whatever the number of candidates. A NaN score counts as
 * -infinity. */
typedef struct {
    double score;
    size_t index;
} query_hit;
typedef struct {
    query_hit *hit; /* [k], a heap of the n kept (worst first) until query_top_sort */
    size_t n, k;
} query_top;
void query_top_init(query_top *t, size_t k); /* k >= 1 */
void query_top_push(query_top *t, double score, size_t index);
/* Sorts the kept hits best first (hit[0 .. n)); the heap is spent. */
void query_top_sort(query_top *t);
void query_top_free(query_top *t);

/* The tokeniser of m's text tower (m->text != CLIP_TEXT_NONE): vocab, or
 * NULL for the one shipped for the tower's kind. *context: ids per text, 0
 * for the tokeniser's default capped at the tower's positions (set then).
 * NULL with clip_error() naming the file: a vocabulary larger than the
 * tower's (model_path names the model), a context longer than its positions. */
tokenizer *query_open_tokenizer(const clip_model *m, const char *model_path, const char *vocab,
                                int *context);

/* One text (len bytes of UTF-8) -> out[embed_dim], L2-normalised. -1 with
 * clip_error() naming the text on invalid UTF-8, the budget, or a model error. */
int query_encode_text(query_engine *qe, const char *text, size_t len, float *out,
                      const query_budget *b);
/* The image file at path (a regular file or a pipe of at most
 * CLIP_MAX_IMAGE_FILE bytes, at most IMAGE_MAX_PIXELS pixels) resized and
 * centre-cropped as clip-prep does -> out[embed_dim], L2-normalised. A pipe
 * is waited on no longer than the budget. -1 with clip_error() naming path. */
int query_encode_image(query_engine *qe, const char *path, float *out, const query_budget *b);

/* q[dim] (L2-normalised) against the index's images (captions == 0) or
 * captions (1): a new JSON array of the min(k, n) best, highest score first,
 * {"key", "score", "image"} or {"key", "score", "caption"} (null where the
 * sample's json has none; a byte of a key that is not UTF-8 as '?'). The
 * index must have what is searched. NULL after clip_set_error when the
 * budget runs out. */
json_t *query_search(const query_engine *qe, const float *q, size_t k, int captions,
                     const query_budget *b);

/* img[dim] (an image's embedding) against n >= 1 labels: a new JSON array of
 * {"label", "prob"}, highest first, the probabilities summing to 1. Needs
 * qe->tok. NULL after clip_set_error (a label's UTF-8, the budget). */
json_t *query_zero_shot(query_engine *qe, const float *img, const char *const *labels, int n,
                        const query_budget *b);

/* "a, b,,c " -> labels "a", "b", "c": s is cut up in place, labels[] (room
 * for strlen(s) + 1) points into it; empty ones are skipped. Their count. */
int query_split_labels(char *s, const char **labels);

/* ---- the server's requests ---- */

#define QUERY_MAX_K 10000     /* "k" of a request */
#define QUERY_MAX_LABELS 1000 /* "labels" of a request */

typedef enum { QUERY_QUIT, QUERY_TEXT, QUERY_IMAGE, QUERY_LABELS } query_kind;

/* A parsed request: its strings point into json (which it owns). */
typedef struct {
    query_kind kind;
    const char *text; /* QUERY_TEXT: UTF-8 of text_len bytes, no NUL inside */
    size_t text_len;
    const char *image;   /* QUERY_IMAGE, QUERY_LABELS: a non-empty path */
    const char **labels; /* QUERY_LABELS: [n_labels] strings, 1 <= n_labels <= QUERY_MAX_LABELS */
    int n_labels;
    int k; /* QUERY_TEXT, QUERY_IMAGE: 1..QUERY_MAX_K (default 5) */
    json_t *json;
} query_request;

/* Request bytes (len of them, any content) -> 0 and *out, one of
 *   {"text": T, "k": K}  {"image": P, "k": K}  {"image": P, "labels": [L, ...]}
 *   {"quit": true}
 * ("k" optional; "quit": false is as if absent), or -1 after
 * clip_set_error("request: ...") naming the problem: not JSON (or not UTF-8),
 * not an object, an unknown key, a value of the wrong type or range, neither
 * or both of text and image, labels with text. out is then empty. */
int query_request_parse(const void *bytes, size_t len, query_request *out);
void query_request_free(query_request *r);

/* {"error": msg}, msg's invalid UTF-8 (quoted from a request or a file) as
 * '?'; a new reference. */
json_t *query_error_json(const char *msg);

/* Answers a request other than QUERY_QUIT: a new JSON array as query_search
 * or query_zero_shot give, or NULL after clip_set_error (no text tower, no
 * index or no captions in it, no image tower, an unreadable image, the budget). */
json_t *query_run(query_engine *qe, const query_request *r, const query_budget *b);

#endif
