#include "search/embed.h"

#include <stdlib.h>
#include <string.h>

#include "io/npy.h"
#include "io/sample.h"
#include "kernels/ops.h"

struct embedder {
    clip_model *m;
    embed_config cfg;
    int res, dim, vocab, max_len;
    sample *buf;      /* [batch] buffered samples, in stream order */
    int *has_img;     /* [batch] */
    int *n_caps;      /* [batch] captions of each sample, -1 without tok.npy */
    int n;            /* samples buffered */
    int n_img, n_txt; /* images and captions buffered */
    int txt_len;      /* L of the buffered captions (all the same) */
    uint8_t *pixels;  /* [batch, res, res, 3] */
    float *img_emb;   /* [batch, dim] */
    int32_t *ids;     /* [txt_cap, txt_len] */
    float *txt_emb;   /* [txt_cap, dim] */
    size_t txt_cap;
};

embedder *embedder_create(clip_model *m, const embed_config *cfg, const char *model)
{
    int res = clip_image_resolution(m);
    if (cfg->do_images && !res) {
        clip_set_error("%s: no image tower (use --no-images)", model);
        return NULL;
    }
    if (cfg->do_texts && m->text == CLIP_TEXT_NONE) {
        clip_set_error("%s: no text tower (use --no-texts or --text-model DIR)", model);
        return NULL;
    }
    embedder *e = xcalloc(1, sizeof *e);
    e->m = m, e->cfg = *cfg, e->res = res, e->dim = m->embed_dim;
    clip_text_limits(m, &e->vocab, &e->max_len);
    int B = cfg->batch;
    e->buf = xcalloc(B, sizeof *e->buf);
    for (int i = 0; i < B; i++) sample_init(&e->buf[i]);
    e->has_img = xcalloc(B, sizeof *e->has_img);
    e->n_caps = xcalloc(B, sizeof *e->n_caps);
    e->pixels = xmalloc((size_t)B * (res ? res : 1) * (res ? res : 1) * 3);
    e->img_emb = xmalloc((size_t)B * e->dim * sizeof(float));
    return e;
}

void embedder_free(embedder *e)
{
    if (!e) return;
    for (int i = 0; i < e->cfg.batch; i++) sample_free(&e->buf[i]);
    free(e->buf), free(e->has_img), free(e->n_caps), free(e->pixels), free(e->img_emb);
    free(e->ids), free(e->txt_emb);
    free(e);
}

/* Checks the sample's image and takes its pixels; -1 with an error naming the sample. */
static int take_image(embedder *e, const sample *s)
{
    npy_array a;
    if (sample_get_npy(s, "img.npy", &a)) return -1;
    if (a.dtype != DT_U8 || a.ndim != 3 || a.shape[2] != 3) {
        clip_set_error("sample %s: img.npy must be uint8 [H, W, 3], not %s of rank %d", s->key,
                       dtype_name(a.dtype), a.ndim);
        return -1;
    }
    if (a.shape[0] != e->res || a.shape[1] != e->res) {
        clip_set_error("sample %s: img.npy is %lldx%lld but the model takes %dx%d images (resize "
                       "with clip-prep --size %d)",
                       s->key, (long long)a.shape[0], (long long)a.shape[1], e->res, e->res,
                       e->res);
        return -1;
    }
    size_t sz = (size_t)e->res * e->res * 3;
    memcpy(e->pixels + (size_t)e->n_img * sz, a.data, sz);
    e->n_img++;
    return 0;
}

/* The captions of a checked tok.npy taken: their number, or -1 with an error naming the sample. */
static int take_captions(embedder *e, const sample *s, const npy_array *a)
{
    int n = (int)a->shape[0], L = (int)a->shape[1];
    size_t need = (size_t)(e->n_txt + n) * L;
    if (need > e->txt_cap) {
        e->txt_cap = need * 2;
        e->ids = xrealloc(e->ids, e->txt_cap * sizeof(int32_t));
    }
    if (!n) return 0; /* tok.npy [0, L]: nothing to copy (e->ids may still be NULL) */
    int32_t *dst = e->ids + (size_t)e->n_txt * L;
    memcpy(dst, a->data, (size_t)n * L * sizeof(int32_t));
    if (check_token_ids(dst, n, L, e->vocab)) {
        clip_set_error("sample %s: tok.npy: %s", s->key, clip_error());
        return -1;
    }
    e->n_txt += n;
    e->txt_len = L;
    return n;
}

/* the sample's tok.npy, checked: 1 (in *tok), 0 when it has none or texts are not embedded */
static int sample_captions(const embedder *e, const sample *s, npy_array *tok)
{
    if (!e->cfg.do_texts || !sample_get(s, "tok.npy")) return 0;
    if (sample_get_npy(s, "tok.npy", tok)) return -1;
    if (tok->dtype != DT_I32 || tok->ndim != 2 || tok->shape[1] < 1) {
        clip_set_error("sample %s: tok.npy must be int32 [n_captions, L], not %s of rank %d",
                       s->key, dtype_name(tok->dtype), tok->ndim);
        return -1;
    }
    if (tok->shape[1] > e->max_len) {
        clip_set_error("sample %s: tok.npy has %lld ids a caption, the model takes at most %d",
                       s->key, (long long)tok->shape[1], e->max_len);
        return -1;
    }
    return 1;
}

/* Encodes what is buffered, adds the embeddings and writes the samples. */
static int flush(embedder *e, stream_writer *w)
{
    if (e->n_img && clip_encode_images(e->m, e->pixels, e->n_img, e->img_emb)) {
        clip_set_error("encoding images (samples %s to %s): %s", e->buf[0].key,
                       e->buf[e->n - 1].key, clip_error());
        return -1;
    }
    if (e->n_txt) {
        e->txt_emb = xrealloc(e->txt_emb, (size_t)e->n_txt * e->dim * sizeof(float));
        for (int i = 0; i < e->n_txt; i += e->cfg.batch) {
            int b = e->n_txt - i < e->cfg.batch ? e->n_txt - i : e->cfg.batch;
            if (clip_encode_texts(e->m, e->ids + (size_t)i * e->txt_len, b, e->txt_len,
                                  e->txt_emb + (size_t)i * e->dim)) {
                clip_set_error("encoding captions (samples %s to %s): %s", e->buf[0].key,
                               e->buf[e->n - 1].key, clip_error());
                return -1;
            }
        }
    }
    int img = 0, txt = 0;
    for (int i = 0; i < e->n; i++) {
        sample *s = &e->buf[i];
        if (e->has_img[i]) {
            int64_t shape[1] = {e->dim};
            sample_set_npy(s, "img_emb.npy", DT_F32, 1, shape, e->img_emb + (size_t)img++ * e->dim);
        }
        if (e->n_caps[i] >= 0) {
            int64_t shape[2] = {e->n_caps[i], e->dim};
            sample_set_npy(s, "txt_emb.npy", DT_F32, 2, shape, e->txt_emb + (size_t)txt * e->dim);
            txt += e->n_caps[i];
        }
        if (stream_write(w, s) < 0) return -1;
        sample_clear(s);
    }
    e->n = e->n_img = e->n_txt = 0;
    return 0;
}

long embedder_run(embedder *e, stream_reader *r, stream_writer *w, progress *p)
{
    long done = 0;
    int rc;
    for (;;) {
        sample *s = &e->buf[e->n];
        if ((rc = stream_read(r, s)) <= 0) break;
        if (!sample_get(s, "img.npy") && !sample_get(s, "tok.npy")) {
            clip_set_error("sample %s: neither img.npy nor tok.npy to embed", s->key);
            return -1;
        }
        int img = e->cfg.do_images && sample_get(s, "img.npy");
        npy_array tok;
        int txt = sample_captions(e, s, &tok);
        if (txt < 0) return -1;
        /* captions of another length: write what is buffered; this sample
         * (buf[n]) starts the next batch */
        if (txt && e->n_txt && tok.shape[1] != e->txt_len) {
            int n = e->n;
            if (flush(e, w)) return -1;
            done += n;
            sample t = e->buf[0]; /* cleared by flush */
            e->buf[0] = e->buf[n];
            e->buf[n] = t;
            s = &e->buf[0]; /* tok still points into its field */
        }
        if (img && take_image(e, s)) return -1;
        e->has_img[e->n] = img;
        int n_caps = -1;
        if (txt && (n_caps = take_captions(e, s, &tok)) < 0) return -1;
        e->n_caps[e->n] = n_caps;
        e->n++;
        if (e->n_img == e->cfg.batch || e->n == e->cfg.batch) {
            done += e->n;
            if (flush(e, w)) return -1;
        }
        if (p) progress_update(p, done + e->n);
    }
    if (rc < 0) return -1;
    done += e->n;
    return flush(e, w) ? -1 : done;
}
