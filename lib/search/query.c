#include "search/query.h"
#include "core/datafile.h"
#include "core/util.h"
#include "io/image.h"

#include <utf8proc.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void query_engine_init(query_engine *qe, clip_model *model, tokenizer *tok, int context,
                       const recall_set *index, const recall_meta *meta)
{
    memset(qe, 0, sizeof *qe);
    qe->model = model;
    qe->tok = tok;
    qe->context = context;
    qe->index = index;
    qe->meta = meta;
    pthread_mutex_init(&qe->model_lock, NULL);
}

void query_engine_destroy(query_engine *qe) { pthread_mutex_destroy(&qe->model_lock); }

static void budget_error(const query_budget *b, const char *what)
{
    clip_set_error("request: over the time budget of %g s while %s (--time-budget SEC)", b->seconds,
                   what);
}

int query_budget_check(const query_budget *b, const char *what)
{
    if (!b || now_seconds() <= b->deadline) return 0;
    budget_error(b, what);
    return -1;
}

/* Takes the model lock, waiting no longer than the budget. */
static int lock_model(query_engine *qe, const query_budget *b)
{
    if (!b) {
        pthread_mutex_lock(&qe->model_lock);
        return 0;
    }
    /* pthread_mutex_timedlock waits on the wall clock: the deadline's distance from now on it */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double left = fmax(0, fmin(b->deadline - now_seconds(), 1e6)), ns = until.tv_nsec + left * 1e9;
    until.tv_sec += (time_t)(ns / 1e9);
    until.tv_nsec = (long)fmod(ns, 1e9);
    int rc = pthread_mutex_timedlock(&qe->model_lock, &until);
    if (rc == 0 && !query_budget_check(b, "waiting for the model")) return 0;
    if (rc == 0)
        pthread_mutex_unlock(&qe->model_lock);
    else
        budget_error(b, "waiting for the model");
    return -1;
}

/* ---- top k ---- */

/* a is worse than b: a lower score, or the same and a later index */
static int worse(const query_hit *a, const query_hit *b)
{
    return a->score < b->score || (a->score == b->score && a->index > b->index);
}

static void sift_down(query_hit *h, size_t n, size_t i)
{
    for (;;) {
        size_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && worse(&h[l], &h[w])) w = l;
        if (r < n && worse(&h[r], &h[w])) w = r;
        if (w == i) return;
        query_hit t = h[i];
        h[i] = h[w], h[w] = t;
        i = w;
    }
}

void query_top_init(query_top *t, size_t k)
{
    t->k = k ? k : 1;
    t->n = 0;
    t->hit = xmalloc(t->k * sizeof *t->hit);
}

void query_top_push(query_top *t, double score, size_t index)
{
    query_hit x = {isnan(score) ? -INFINITY : score, index};
    if (t->n < t->k) { /* sift up: the worst stays at the root */
        size_t i = t->n++;
        while (i && worse(&x, &t->hit[(i - 1) / 2])) {
            t->hit[i] = t->hit[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        t->hit[i] = x;
    } else if (worse(&t->hit[0], &x)) {
        t->hit[0] = x;
        sift_down(t->hit, t->n, 0);
    }
}

void query_top_sort(query_top *t)
{
    /* heapsort: the worst goes to the end each time, so the best ends up first */
    for (size_t n = t->n; n > 1; n--) {
        query_hit w = t->hit[0];
        t->hit[0] = t->hit[n - 1];
        t->hit[n - 1] = w;
        sift_down(t->hit, n - 1, 0);
    }
}

void query_top_free(query_top *t)
{
    free(t->hit);
    t->hit = NULL;
    t->n = 0;
}

/* ---- encoding ---- */

tokenizer *query_open_tokenizer(const clip_model *m, const char *model_path, const char *vocab,
                                int *context)
{
    int vocab_size, max_len, bpe = m->text == CLIP_TEXT_CLIP;
    clip_text_limits(m, &vocab_size, &max_len);
    tokenizer *tok = !vocab ? tokenizer_open_shipped(bpe)
                     : bpe  ? tokenizer_open_bpe(vocab)
                            : tokenizer_open_wordpiece(vocab);
    if (!tok) return NULL;
    if (tokenizer_vocab_size(tok) > vocab_size) {
        clip_set_error("%s: vocabulary of %d ids, the text tower of %s has %d (use --vocab FILE "
                       "with the model's own vocabulary)",
                       vocab ? vocab
                       : bpe ? BPE_MERGES_FILE
                             : WORDPIECE_VOCAB_FILE,
                       tokenizer_vocab_size(tok), model_path, vocab_size);
        tokenizer_close(tok);
        return NULL;
    }
    int def = tokenizer_default_context(tok);
    if (!*context) *context = def < max_len ? def : max_len;
    if (*context > max_len) {
        clip_set_error("--context-length %d: the model takes at most %d ids", *context, max_len);
        tokenizer_close(tok);
        return NULL;
    }
    return tok;
}

int query_encode_text(query_engine *qe, const char *text, size_t len, float *out,
                      const query_budget *b)
{
    int32_t *ids = xcalloc(qe->context, sizeof *ids);
    int err = -1;
    if (lock_model(qe, b)) goto out;
    if (tokenizer_encode(qe->tok, text, len, ids, qe->context) < 0)
        clip_set_error("text '%.*s': %s", len > 80 ? 80 : (int)len, text, clip_error());
    else if (clip_encode_texts(qe->model, ids, 1, qe->context, out))
        clip_set_error("encoding text: %s", clip_error());
    else
        err = 0;
    pthread_mutex_unlock(&qe->model_lock);
out:
    free(ids);
    return err;
}

typedef struct {
    int fd;
    const char *path;
    const query_budget *b;
} pipe_source;

/* read_source_max's source: what the pipe has once it is readable. */
static ssize_t read_pipe(void *source, char *dst, size_t room)
{
    const pipe_source *s = source;
    for (;;) {
        double left = s->b->deadline - now_seconds();
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        /* Linux reports a FIFO that never had a writer neither readable nor hung up */
        int rc = left > 0 ? poll(&p, 1, (int)ceil(fmin(left, 3600) * 1000)) : 0;
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0) break;
        if (rc == 0) {
            char what[300];
            snprintf(what, sizeof what, "reading %.256s (a pipe)", s->path);
            budget_error(s->b, what);
            return -1;
        }
        ssize_t got = read(s->fd, dst, room);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got >= 0) return got;
        break;
    }
    clip_set_error("%s: %s", s->path, strerror(errno));
    return -1;
}

/* read_file_max's checks and limit for an image; a pipe is read as data
 * comes and given up on when the budget runs out (a FIFO that no one writes
 * would otherwise hold the request, and its thread, for ever). */
static char *read_image(const char *path, size_t *len, const query_budget *b)
{
    const size_t limit = CLIP_MAX_IMAGE_FILE;
    if (!b) return read_file_max(path, len, limit, "image");
    /* O_NONBLOCK: opening a FIFO does not wait for a writer */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISFIFO(st.st_mode)) {
        if (fd >= 0) close(fd);
        return read_file_max(path, len, limit, "image");
    }
    pipe_source src = {fd, path, b};
    char *buf = read_source_max(read_pipe, &src, 1 << 16, limit, path, "image", len);
    close(fd);
    return buf;
}

int query_encode_image(query_engine *qe, const char *path, float *out, const query_budget *b)
{
    int res = clip_image_resolution(qe->model), err = -1;
    size_t len;
    char *buf = read_image(path, &len, b);
    if (!buf) return -1;
    uint8_t *px = xmalloc((size_t)res * res * 3);
    if (query_budget_check(b, "reading the image")) goto out;
    if (image_load(buf, len, res, IMAGE_CROP, px, IMAGE_MAX_PIXELS, path)) goto out;
    if (query_budget_check(b, "decoding the image")) goto out;
    if (lock_model(qe, b)) goto out;
    if (clip_encode_images(qe->model, px, 1, out))
        clip_set_error("encoding %s: %s", path, clip_error());
    else
        err = 0;
    pthread_mutex_unlock(&qe->model_lock);
out:
    free(px), free(buf);
    return err;
}

/* ---- search ---- */

/* s with each byte that is not part of valid UTF-8 as '?' (keys and messages
 * may quote a tar name or a request's bytes); malloc'd */
static char *utf8_lossy(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *clean = xmalloc(n + 1);
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t got = utf8proc_iterate((const utf8proc_uint8_t *)s + i, n - i, &cp);
        if (got <= 0) {
            clean[o++] = '?';
            i++;
        } else {
            memcpy(clean + o, s + i, got);
            o += got, i += got;
        }
    }
    clean[o] = 0;
    return clean;
}

/* a JSON string of s, or null for NULL */
static json_t *json_text(const char *s)
{
    if (!s) return json_null();
    json_t *j = json_string(s);
    if (j) return j;
    char *clean = utf8_lossy(s);
    j = json_string(clean);
    free(clean);
    return j;
}

static double dot(const float *a, const float *b, int dim)
{
    double s = 0;
    for (int i = 0; i < dim; i++) s += (double)a[i] * b[i];
    return s;
}

/* the image (sample) caption c belongs to: txt_off[i] <= c < txt_off[i + 1] */
static size_t owner(const recall_set *ix, size_t c)
{
    size_t lo = 0, hi = ix->n_images; /* txt_off[lo] <= c < txt_off[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((size_t)ix->txt_off[mid] <= c)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

#define SEARCH_CHUNK 4096 /* rows scored between two looks at the budget */

json_t *query_search(const query_engine *qe, const float *q, size_t k, int captions,
                     const query_budget *b)
{
    const recall_set *ix = qe->index;
    const float *rows = captions ? ix->txt : ix->img;
    size_t n = captions ? ix->n_texts : ix->n_images;
    int dim = ix->dim;
    json_t *arr = json_array();
    if (!n) return arr;
    query_top top;
    query_top_init(&top, k < n ? k : n);
    double score[SEARCH_CHUNK];
    for (size_t c0 = 0; c0 < n; c0 += SEARCH_CHUNK) {
        if (query_budget_check(b, "searching the index")) {
            query_top_free(&top);
            json_decref(arr);
            return NULL;
        }
        int m = (int)(n - c0 < SEARCH_CHUNK ? n - c0 : SEARCH_CHUNK);
#pragma omp parallel for if ((size_t)m * dim > (1 << 18))
        for (int i = 0; i < m; i++) score[i] = dot(q, rows + (c0 + i) * dim, dim);
        for (int i = 0; i < m; i++) query_top_push(&top, score[i], c0 + i);
    }
    query_top_sort(&top);
    const recall_meta *meta = qe->meta;
    for (size_t r = 0; r < top.n; r++) {
        size_t i = top.hit[r].index, sample = captions ? owner(ix, i) : i;
        const char *what = captions ? meta->caption[i] : meta->image[i];
        json_array_append_new(arr, json_pack("{s:o, s:f, s:o}", "key", json_text(meta->key[sample]),
                                             "score", top.hit[r].score,
                                             captions ? "caption" : "image", json_text(what)));
    }
    query_top_free(&top);
    return arr;
}

int query_split_labels(char *s, const char **labels)
{
    int n = 0;
    char *save;
    for (char *p = strtok_r(s, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ') p++;
        char *end = p + strlen(p);
        while (end > p && end[-1] == ' ') *--end = 0;
        if (*p) labels[n++] = p;
    }
    return n;
}

json_t *query_zero_shot(query_engine *qe, const float *img, const char *const *labels, int n,
                        const query_budget *b)
{
    int dim = qe->model->embed_dim, ctx = qe->context;
    int batch = qe->model->max_batch > 0 ? qe->model->max_batch : 32;
    float *emb = xmalloc((size_t)n * dim * sizeof(float));
    int32_t *ids = xmalloc((size_t)batch * ctx * sizeof *ids);
    double *p = xmalloc(n * sizeof *p);
    json_t *arr = NULL;
    for (int b0 = 0; b0 < n; b0 += batch) {
        int nb = n - b0 < batch ? n - b0 : batch, bad = 0;
        if (lock_model(qe, b)) goto out;
        memset(ids, 0, (size_t)nb * ctx * sizeof *ids);
        for (int i = 0; i < nb && !bad; i++) {
            const char *l = labels[b0 + i];
            if (tokenizer_encode(qe->tok, l, strlen(l), ids + (size_t)i * ctx, ctx) < 0) {
                clip_set_error("text '%.80s': %s", l, clip_error());
                bad = 1;
            }
        }
        if (!bad && clip_encode_texts(qe->model, ids, nb, ctx, emb + (size_t)b0 * dim)) {
            clip_set_error("encoding text: %s", clip_error());
            bad = 1;
        }
        pthread_mutex_unlock(&qe->model_lock);
        if (bad) goto out;
    }
    double scale = exp(qe->model->logit_scale), mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) {
        p[i] = scale * dot(img, emb + (size_t)i * dim, dim);
        if (p[i] > mx) mx = p[i];
    }
    for (int i = 0; i < n; i++) sum += p[i] = exp(p[i] - mx);
    query_top top;
    query_top_init(&top, n);
    for (int i = 0; i < n; i++) query_top_push(&top, p[i] /= sum, i);
    query_top_sort(&top);
    arr = json_array();
    for (size_t r = 0; r < top.n; r++) {
        size_t i = top.hit[r].index;
        json_array_append_new(arr,
                              json_pack("{s:o, s:f}", "label", json_text(labels[i]), "prob", p[i]));
    }
    query_top_free(&top);
out:
    free(p), free(ids), free(emb);
    return arr;
}

/* ---- requests ---- */

static int request_error(query_request *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int request_error(query_request *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clip_set_verror("request", fmt, ap);
    va_end(ap);
    query_request_free(out);
    return -1;
}

static int known_key(const char *key)
{
    static const char *const keys[] = {"text", "image", "labels", "k", "quit"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strcmp(key, keys[i])) return 1;
    return 0;
}

int query_request_parse(const void *bytes, size_t len, query_request *out)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *j = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) return request_error(out, "not JSON: %s (at byte %d)", jerr.text, jerr.position);
    out->json = j;
    if (!json_is_object(j)) return request_error(out, "not a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        if (!known_key(key))
            return request_error(out, "unknown key \"%.40s\" (known: text, image, labels, k, quit)",
                                 key);
    }
    json_t *quit = json_object_get(j, "quit"), *text = json_object_get(j, "text"),
           *image = json_object_get(j, "image"), *labels = json_object_get(j, "labels"),
           *k = json_object_get(j, "k");
    if (quit && !json_is_boolean(quit)) return request_error(out, "\"quit\" must be true or false");
    if (json_is_true(quit)) {
        out->kind = QUERY_QUIT;
        return 0;
    }
    if (text && !json_is_string(text)) return request_error(out, "\"text\" must be a string");
    if (image && (!json_is_string(image) || !json_string_length(image)))
        return request_error(out, "\"image\" must be a non-empty string (a file the server reads)");
    if (!text == !image)
        return request_error(out, "give one of \"text\" or \"image\" (or \"quit\": true)");
    out->k = 5;
    if (k) {
        if (!json_is_integer(k) || json_integer_value(k) < 1 || json_integer_value(k) > QUERY_MAX_K)
            return request_error(out, "\"k\" must be an integer in 1..%d", QUERY_MAX_K);
        out->k = (int)json_integer_value(k);
    }
    if (labels) {
        if (text) return request_error(out, "\"labels\" go with \"image\", not \"text\"");
        size_t n = json_array_size(labels), i;
        if (!json_is_array(labels) || !n)
            return request_error(out, "\"labels\" must be a non-empty array of strings");
        if (n > QUERY_MAX_LABELS)
            return request_error(out, "%zu labels, more than %d", n, QUERY_MAX_LABELS);
        out->labels = xmalloc(n * sizeof *out->labels);
        json_array_foreach(labels, i, v)
        {
            if (!json_is_string(v)) return request_error(out, "\"labels\"[%zu] is not a string", i);
            out->labels[i] = json_string_value(v);
        }
        out->n_labels = (int)n;
    }
    if (text) {
        out->kind = QUERY_TEXT;
        out->text = json_string_value(text);
        out->text_len = json_string_length(text);
    } else {
        out->kind = labels ? QUERY_LABELS : QUERY_IMAGE;
        out->image = json_string_value(image);
    }
    return 0;
}

void query_request_free(query_request *r)
{
    free(r->labels);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

json_t *query_run(query_engine *qe, const query_request *r, const query_budget *b)
{
    int dim = qe->model->embed_dim;
    float *q = xmalloc(dim * sizeof(float));
    json_t *out = NULL;
    if (r->kind == QUERY_QUIT) {
        clip_set_error("request: quit is the server's to answer");
    } else if (r->kind != QUERY_IMAGE && !qe->tok) {
        clip_set_error("request: text needs a model with a text tower (--text-model DIR)");
    } else if (r->kind != QUERY_LABELS && !qe->index) {
        clip_set_error("request: search needs the server started with --index");
    } else if (r->kind != QUERY_TEXT && !clip_image_resolution(qe->model)) {
        clip_set_error("request: the model has no image tower");
    } else if (r->kind == QUERY_IMAGE && !qe->index->n_texts) {
        clip_set_error("request: the index has no txt_emb.npy captions");
    } else if (r->kind == QUERY_TEXT) {
        if (!query_encode_text(qe, r->text, r->text_len, q, b))
            out = query_search(qe, q, r->k, 0, b);
    } else if (!query_encode_image(qe, r->image, q, b)) {
        out = r->kind == QUERY_LABELS ? query_zero_shot(qe, q, r->labels, r->n_labels, b)
                                      : query_search(qe, q, r->k, 1, b);
    }
    free(q);
    return out;
}

json_t *query_error_json(const char *msg)
{
    char *clean = utf8_lossy(msg);
    json_t *j = json_pack("{s:s}", "error", clean);
    free(clean);
    return j;
}
