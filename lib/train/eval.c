#include "train/eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "io/image.h"
#include "io/sample.h"
#include "io/sample_file.h"
#include "train/loader.h"

/* loader_sample_fields, and every sample's captions as long as the first's */
static int sample_fields(const char *path, const sample *s, int *len, npy_array *img,
                         npy_array *tok)
{
    if (loader_sample_fields(path, s, img, tok)) return -1;
    if (!*len) *len = (int)tok->shape[1];
    if (tok->shape[1] != *len) {
        clip_set_error("%s: sample %s: tok.npy has %lld tokens per caption, the first sample %d",
                       path, s->key, (long long)tok->shape[1], *len);
        return -1;
    }
    return 0;
}

int val_set_load(val_set *v, const char *path, int res)
{
    memset(v, 0, sizeof *v);
    sample_file *f = sample_file_open(path);
    if (!f) return -1;
    size_t n = sample_file_count(f);
    size_t px = (size_t)res * res * 3;
    sample s;
    sample_init(&s);
    if (!n) {
        clip_set_error("%s: no samples", path);
        goto fail;
    }
    if (n > (1u << 26) || res < 1 || px > ((size_t)1 << 40) / n) {
        clip_set_error("%s: %zu samples at %d x %d pixels are more than an evaluation set held in "
                       "memory may be",
                       path, n, res, res);
        goto fail;
    }
    v->res = res;
    v->pixels = clip_alloc_big(n * px);
    v->txt_off = malloc((n + 1) * sizeof *v->txt_off);
    if (!v->pixels || !v->txt_off) goto oom;
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        npy_array img, tok;
        if (sample_file_read(f, i, &s) < 0 || sample_fields(path, &s, &v->len, &img, &tok))
            goto fail;
        loader_centre_pixels(&img, res, v->pixels + i * px);
        v->txt_off[i] = v->n_texts;
        if (tok.shape[0] > (1 << 20) || v->n_texts + tok.shape[0] > (1 << 28)) {
            clip_set_error("%s: sample %s: more captions than an evaluation set may hold", path,
                           s.key);
            goto fail;
        }
        size_t need = ((size_t)v->n_texts + tok.shape[0]) * v->len;
        if (need > cap) {
            size_t ncap = need * 2;
            int32_t *ids = realloc(v->ids, ncap * sizeof *ids);
            if (!ids) goto oom;
            v->ids = ids;
            cap = ncap;
        }
        memcpy(v->ids + (size_t)v->n_texts * v->len, tok.data, tok.count * sizeof(int32_t));
        v->n_texts += (int)tok.shape[0];
    }
    v->n_images = (int)n;
    v->txt_off[n] = v->n_texts;
    sample_free(&s);
    sample_file_close(f);
    return 0;
oom:
    clip_set_error("%s: out of memory for the evaluation set", path);
fail:
    sample_free(&s);
    sample_file_close(f);
    /* the pixels were allocated for n samples */
    if (v->pixels) clip_free_big(v->pixels, n * px);
    v->pixels = NULL;
    val_set_free(v);
    return -1;
}

void val_set_free(val_set *v)
{
    if (v->pixels) clip_free_big(v->pixels, (size_t)v->n_images * v->res * v->res * 3);
    free(v->ids);
    free(v->txt_off);
    memset(v, 0, sizeof *v);
}

/* rows [r * per, min(n, (r + 1) * per)) are rank r's, per = ceil(n / ranks) */
static int encode_sharded(clip_model *m, train_comm *comm, int n, int is_image, const val_set *v,
                          float *out)
{
    int N = comm ? comm->size : 1, r = comm ? comm->rank : 0, D = m->embed_dim;
    int per = (n + N - 1) / N, lo = r * per, hi = lo + per < n ? lo + per : n;
    if (N == 1)
        return is_image ? clip_encode_images(m, v->pixels, n, out)
                        : clip_encode_texts(m, v->ids, n, v->len, out);
    size_t block = (size_t)per * D;
    float *mine = calloc(block, sizeof *mine), *all = malloc((size_t)N * block * sizeof *all);
    int rc = -1;
    if (!mine || !all) {
        clip_set_error("out of memory for the evaluation's embeddings");
    } else if (hi <= lo ||
               !(is_image
                     ? clip_encode_images(m, v->pixels + (size_t)lo * v->res * v->res * 3, hi - lo,
                                          mine)
                     : clip_encode_texts(m, v->ids + (size_t)lo * v->len, hi - lo, v->len, mine))) {
        rc = 0;
    }
    /* every rank takes part in the gather, even after a failure of its own */
    int bad = rc != 0;
    double flag = bad;
    if (comm->allreduce_f64(comm, &flag, 1, COMM_MAX)) return -1;
    if (flag) {
        if (!bad) clip_set_error("evaluation: another rank failed");
        free(mine), free(all);
        return -1;
    }
    rc = comm->allgather(comm, mine, block * sizeof *mine, all);
    if (!rc) memcpy(out, all, (size_t)n * D * sizeof *out);
    free(mine), free(all);
    return rc;
}

int val_set_encode(clip_model *m, const val_set *v, train_comm *comm, float *img, float *txt)
{
    if (comm && comm->size < 2) comm = NULL;
    if (encode_sharded(m, comm, v->n_images, 1, v, img)) return -1;
    return encode_sharded(m, comm, v->n_texts, 0, v, txt);
}
