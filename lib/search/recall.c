#include "search/recall.h"
#include "core/util.h"
#include "io/stream.h"
#include "kernels/ops.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading ---- */

/* Checks finiteness, then scales v[dim] to unit length. */
static int normalize(float *v, int dim, const char *key, const char *field, int64_t row)
{
    double ss = 0;
    for (int k = 0; k < dim; k++) {
        if (!isfinite(v[k])) {
            clip_set_error("sample %s: %s row %lld has a non-finite value", key, field,
                           (long long)row);
            return -1;
        }
        ss += (double)v[k] * v[k];
    }
    if (ss == 0) {
        clip_set_error("sample %s: %s row %lld is a zero vector", key, field, (long long)row);
        return -1;
    }
    l2_normalize(v, NULL, v, 1, dim);
    return 0;
}

static int check_f32(const npy_array *a, const char *key, const char *field, int ndim)
{
    if (a->dtype != DT_F32 || a->ndim != ndim) {
        clip_set_error("sample %s: %s must be float32 with %d dimension%s, got %s with %d", key,
                       field, ndim, ndim > 1 ? "s" : "", dtype_name(a->dtype), a->ndim);
        return -1;
    }
    return 0;
}

/* A field's embedding dimension against the model's (model_dim) or the set's. */
static int check_dim(int64_t d, int set_dim, int model_dim, const char *key, const char *field)
{
    if (d == set_dim) return 0;
    if (model_dim)
        clip_set_error("sample %s: %s has dimension %lld but the model embeds in %d", key, field,
                       (long long)d, model_dim);
    else
        clip_set_error("sample %s: embedding dimension %lld (%s), expected %d as in the first "
                       "sample",
                       key, (long long)d, field, set_dim);
    return -1;
}

typedef struct {
    unsigned what;
    int model_dim;
    int64_t img_cap, txt_cap; /* capacities in rows */
    recall_meta *meta;
} loader;

static void add_meta(loader *ld, recall_set *set, const sample *s, const char *key, int64_t n_cap)
{
    recall_meta *meta = ld->meta;
    const sample_field *jf = sample_get(s, "json");
    json_t *j = jf ? json_loadb((const char *)jf->data, jf->size, 0, NULL) : NULL;
    const char *image = json_string_value(json_object_get(j, "image"));
    json_t *caps = json_object_get(j, "captions");
    meta->key[set->n_images] = xstrdup(key);
    meta->image[set->n_images] = image ? xstrdup(image) : NULL;
    for (int64_t r = 0; r < n_cap; r++) {
        const char *c = json_string_value(json_array_get(caps, (size_t)r));
        meta->caption[set->n_texts + r] = c ? xstrdup(c) : NULL;
    }
    json_decref(j);
}

/* Appends the sample's vectors (and meta) to set. */
static int add_sample(loader *ld, recall_set *set, const sample *s)
{
    const char *key = s->key ? s->key : "?";
    npy_array img, txt;
    int with_img = ld->what & RECALL_IMAGES;
    int with_txt = (ld->what & RECALL_TEXTS) ||
                   ((ld->what & RECALL_TEXTS_IF_ANY) && sample_get(s, "txt_emb.npy"));
    if (with_img &&
        (sample_get_npy(s, "img_emb.npy", &img) || check_f32(&img, key, "img_emb.npy", 1)))
        return -1;
    if (with_txt &&
        (sample_get_npy(s, "txt_emb.npy", &txt) || check_f32(&txt, key, "txt_emb.npy", 2)))
        return -1;
    if (set->dim == 0 && (with_img || with_txt)) { /* the first sample's, no model's */
        int64_t d = with_img ? img.shape[0] : txt.shape[1];
        if (d < 1 || d > 65536) {
            clip_set_error("sample %s: %s has dimension %lld", key,
                           with_img ? "img_emb.npy" : "txt_emb.npy", (long long)d);
            return -1;
        }
        set->dim = (int)d;
    }
    int dim = set->dim;
    if (with_img && check_dim(img.shape[0], dim, ld->model_dim, key, "img_emb.npy")) return -1;
    if (with_txt && check_dim(txt.shape[1], dim, ld->model_dim, key, "txt_emb.npy")) return -1;
    int64_t n_cap = with_txt ? txt.shape[0] : 0;
    if (set->n_images + 1 >= INT_MAX || set->n_texts + n_cap >= INT_MAX) {
        clip_set_error("sample %s: more than %d images or captions", key, INT_MAX - 1);
        return -1;
    }
    if (set->n_images == ld->img_cap) {
        ld->img_cap = ld->img_cap ? 2 * ld->img_cap : 1024;
        if (with_img) set->img = xrealloc(set->img, ld->img_cap * dim * sizeof(float));
        set->txt_off = xrealloc(set->txt_off, (ld->img_cap + 1) * sizeof(int64_t));
        if (ld->meta) {
            ld->meta->key = xrealloc(ld->meta->key, ld->img_cap * sizeof(char *));
            ld->meta->image = xrealloc(ld->meta->image, ld->img_cap * sizeof(char *));
        }
    }
    if (set->n_texts + n_cap > ld->txt_cap) {
        while (set->n_texts + n_cap > ld->txt_cap)
            ld->txt_cap = ld->txt_cap ? 2 * ld->txt_cap : 4096;
        set->txt = xrealloc(set->txt, ld->txt_cap * dim * sizeof(float));
        if (ld->meta) ld->meta->caption = xrealloc(ld->meta->caption, ld->txt_cap * sizeof(char *));
    }
    if (with_img) {
        float *iv = set->img + set->n_images * dim;
        memcpy(iv, img.data, dim * sizeof(float)); /* npy data need not be aligned */
        if (normalize(iv, dim, key, "img_emb.npy", 0)) return -1;
    }
    if (n_cap) {
        float *tv = set->txt + set->n_texts * dim;
        memcpy(tv, txt.data, n_cap * dim * sizeof(float));
        for (int64_t r = 0; r < n_cap; r++)
            if (normalize(tv + r * dim, dim, key, "txt_emb.npy", r)) return -1;
    }
    if (ld->meta) add_meta(ld, set, s, key, n_cap);
    set->n_images++;
    set->n_texts += n_cap;
    set->txt_off[set->n_images] = set->n_texts;
    return 0;
}

int recall_load(const char *endpoint, unsigned what, int dim, recall_set *set, recall_meta *meta)
{
    memset(set, 0, sizeof *set);
    if (meta) memset(meta, 0, sizeof *meta);
    set->txt_off = xcalloc(1, sizeof(int64_t));
    set->dim = dim;
    stream_reader *r = stream_open_read(endpoint);
    if (!r) {
        recall_set_free(set);
        return -1;
    }
    sample s;
    sample_init(&s);
    loader ld = {.what = what, .model_dim = dim, .meta = meta};
    int rc;
    while ((rc = stream_read(r, &s)) == 1)
        if (add_sample(&ld, set, &s)) {
            if (what & RECALL_NAME_STREAM) clip_set_error("%s: %s", endpoint, clip_error());
            break;
        }
    int err = rc != 0;
    sample_free(&s);
    stream_close_read(r);
    int need_texts =
        (what & RECALL_TEXTS) || ((what & RECALL_TEXTS_IF_ANY) && !(what & RECALL_IMAGES));
    if (!err && set->n_images == 0) {
        clip_set_error("%s: empty stream (no samples)", endpoint);
        err = 1;
    } else if (!err && need_texts && set->n_texts == 0) {
        clip_set_error("%s: no captions in any of %lld samples", endpoint,
                       (long long)set->n_images);
        err = 1;
    }
    if (err) {
        if (meta) recall_meta_free(meta, set);
        recall_set_free(set);
        return -1;
    }
    return 0;
}

int recall_load_stream(const char *endpoint, recall_set *set)
{
    return recall_load(endpoint, RECALL_IMAGES | RECALL_TEXTS, 0, set, NULL);
}

void recall_set_free(recall_set *set)
{
    free(set->img);
    free(set->txt);
    free(set->txt_off);
    memset(set, 0, sizeof *set);
}

void recall_meta_free(recall_meta *meta, const recall_set *set)
{
    for (int64_t i = 0; meta->key && i < set->n_images; i++)
        free(meta->key[i]), free(meta->image[i]);
    for (int64_t c = 0; meta->caption && c < set->n_texts; c++) free(meta->caption[c]);
    free(meta->key);
    free(meta->image);
    free(meta->caption);
    memset(meta, 0, sizeof *meta);
}

/* ---- ranking ---- */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* S[m, n] = img[i0 .. i0+m) . txt[c0 .. c0+n)^T */
static void score_tile(const recall_set *set, int64_t i0, int m, int64_t c0, int n, float *S)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, set->dim, 1.0f,
                set->img + i0 * set->dim, set->dim, set->txt + c0 * set->dim, set->dim, 0.0f, S, n);
}

/* The true scores of image block [i0, i0+m): its best own caption
 * (img_true) and, for each of its captions, its own image (txt_true). They
 * come from the same sgemm as the scores they are compared with, so that an
 * exact duplicate of the true candidate ties (and does not count). */
static void true_scores(const recall_set *set, int64_t i0, int m, int block_texts, float *S,
                        float *img_true, float *txt_true)
{
    const int64_t *off = set->txt_off;
    for (int r = 0; r < m; r++) img_true[i0 + r] = -INFINITY;
    for (int64_t c0 = off[i0]; c0 < off[i0 + m]; c0 += block_texts) {
        int n = (int)min64(block_texts, off[i0 + m] - c0);
        score_tile(set, i0, m, c0, n, S);
        for (int r = 0; r < m; r++) {
            int64_t lo = max64(off[i0 + r], c0), hi = min64(off[i0 + r + 1], c0 + n);
            for (int64_t c = lo; c < hi; c++) {
                float v = S[(size_t)r * n + (c - c0)];
                txt_true[c] = v;
                if (v > img_true[i0 + r]) img_true[i0 + r] = v;
            }
        }
    }
}

/* Counts, for the tile of images [i0, i0+m) x captions [c0, c0+n), the wrong
 * candidates that beat the true score: per image into img_above, per caption
 * into txt_above (this thread's counters). */
static void count_tile(const recall_set *set, int64_t i0, int m, int64_t c0, int n, const float *S,
                       const float *img_true, const float *txt_true, int64_t *img_above,
                       int32_t *txt_above)
{
    const int64_t *off = set->txt_off;
    const float *tt = txt_true + c0;
    int32_t *ta = txt_above + c0;
    for (int r = 0; r < m; r++) {
        const float *row = S + (size_t)r * n;
        float thr = img_true[i0 + r];
        int cnt = 0;
#pragma omp simd reduction(+ : cnt)
        for (int c = 0; c < n; c++) {
            cnt += row[c] > thr;
            ta[c] += row[c] > tt[c];
        }
        /* own captions are not wrong candidates either way (none should beat
         * its true score anyway, unless sgemm rounded this tile differently) */
        int64_t lo = max64(off[i0 + r], c0), hi = min64(off[i0 + r + 1], c0 + n);
        for (int64_t c = lo; c < hi; c++) {
            cnt -= row[c - c0] > thr;
            ta[c - c0] -= row[c - c0] > tt[c - c0];
        }
        img_above[i0 + r] += cnt;
    }
}

void recall_ranks(const recall_set *set, int block_images, int block_texts, int64_t *img_rank,
                  int64_t *txt_rank)
{
    int64_t NI = set->n_images, NT = set->n_texts;
    int bi = block_images > 0 ? block_images : 256;
    int bt = block_texts > 0 ? block_texts : 4096;
    float *img_true = xmalloc(max64(NI, 1) * sizeof(float));
    float *txt_true = xmalloc(max64(NT, 1) * sizeof(float));
    int nthreads = omp_get_max_threads();
    int32_t *txt_above = xcalloc((size_t)nthreads * max64(NT, 1), sizeof(int32_t));
    for (int64_t i = 0; i < NI; i++) img_rank[i] = 0; /* counts "above" until the end */
        /* Inside the parallel region OpenBLAS (OpenMP build) runs each sgemm on
     * the calling thread, so the threads split the blocks without nesting. */
#pragma omp parallel num_threads(nthreads)
    {
        float *S = xmalloc((size_t)bi * bt * sizeof(float));
        int32_t *ta = txt_above + (size_t)omp_get_thread_num() * NT;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i0 = 0; i0 < NI; i0 += bi)
            true_scores(set, i0, (int)min64(bi, NI - i0), bt, S, img_true, txt_true);
#pragma omp for schedule(dynamic, 1)
        for (int64_t i0 = 0; i0 < NI; i0 += bi) {
            int m = (int)min64(bi, NI - i0);
            for (int64_t c0 = 0; c0 < NT; c0 += bt) {
                int n = (int)min64(bt, NT - c0);
                score_tile(set, i0, m, c0, n, S);
                count_tile(set, i0, m, c0, n, S, img_true, txt_true, img_rank, ta);
            }
        }
        free(S);
    }
    for (int64_t i = 0; i < NI; i++)
        img_rank[i] = set->txt_off[i + 1] > set->txt_off[i] ? img_rank[i] + 1 : 0;
    for (int64_t c = 0; c < NT; c++) {
        int64_t above = 0;
        for (int t = 0; t < nthreads; t++) above += txt_above[(size_t)t * NT + c];
        txt_rank[c] = above + 1;
    }
    free(txt_above);
    free(txt_true);
    free(img_true);
}

/* ---- metrics ---- */

static const int recall_k[3] = {1, 5, 10};

void recall_summarize(const recall_set *set, const int64_t *img_rank, const int64_t *txt_rank,
                      recall_metrics *m)
{
    memset(m, 0, sizeof *m);
    m->n_images = set->n_images;
    m->n_texts = set->n_texts;
    int64_t img_hits[3] = {0}, txt_hits[3] = {0};
    for (int64_t i = 0; i < set->n_images; i++) {
        if (img_rank[i] == 0) continue;
        m->n_image_queries++;
        for (int j = 0; j < 3; j++) img_hits[j] += img_rank[i] <= recall_k[j];
    }
    for (int64_t c = 0; c < set->n_texts; c++)
        for (int j = 0; j < 3; j++) txt_hits[j] += txt_rank[c] <= recall_k[j];
    for (int j = 0; j < 3; j++) {
        /* txt_* = image->text (texts retrieved), img_* = text->image */
        m->txt_r[j] = m->n_image_queries ? 100.0 * img_hits[j] / m->n_image_queries : 0;
        m->img_r[j] = m->n_texts ? 100.0 * txt_hits[j] / m->n_texts : 0;
    }
    m->txt_r_mean = (m->txt_r[0] + m->txt_r[1] + m->txt_r[2]) / 3;
    m->img_r_mean = (m->img_r[0] + m->img_r[1] + m->img_r[2]) / 3;
    m->r_mean = (m->txt_r_mean + m->img_r_mean) / 2;
}

json_t *recall_metrics_json(const recall_metrics *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "txt_r1", json_real(m->txt_r[0]));
    json_object_set_new(o, "txt_r5", json_real(m->txt_r[1]));
    json_object_set_new(o, "txt_r10", json_real(m->txt_r[2]));
    json_object_set_new(o, "txt_r_mean", json_real(m->txt_r_mean));
    json_object_set_new(o, "img_r1", json_real(m->img_r[0]));
    json_object_set_new(o, "img_r5", json_real(m->img_r[1]));
    json_object_set_new(o, "img_r10", json_real(m->img_r[2]));
    json_object_set_new(o, "img_r_mean", json_real(m->img_r_mean));
    json_object_set_new(o, "r_mean", json_real(m->r_mean));
    json_object_set_new(o, "n_images", json_integer(m->n_images));
    json_object_set_new(o, "n_texts", json_integer(m->n_texts));
    return o;
}
