#include "train/feature_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/util.h"
#include "io/stream.h"

#define HEADER_KEY "__feature_cache__"
#define CHUNK 64 /* samples encoded at a time while building */

static const char *const field_of[2] = {"img_feat.npy", "txt_feat.npy"};

void feature_cache_free(feature_cache *c)
{
    if (!c) return;
    free(c->img);
    free(c->txt);
    free(c->txt_off);
    free(c->record);
    free(c);
}

/* What the cache is made from, as this run would make it: the header record */
static char *make_record(trainer *t, train_loader *d, const int towers[2])
{
    clip_model *m = trainer_model(t);
    size_t n = loader_count(d);
    uint64_t keys = FNV1A64_INIT;
    for (size_t i = 0; i < n; i++) {
        const char *k = loader_key(d, i);
        keys = fnv1a64(keys, k, strlen(k) + 1);
    }
    char hex[3][20];
    snprintf(hex[0], sizeof hex[0], "%016llx", (unsigned long long)keys);
    for (int w = 0; w < 2; w++)
        snprintf(hex[w + 1], sizeof hex[w + 1], "%016llx",
                 (unsigned long long)trainer_tower_checksum(t, w));
    json_t *j = json_pack("{s:s,s:i,s:I,s:s,s:i,s:s}", "format", "clip-train feature cache",
                          "version", 1, "samples", (json_int_t)n, "keys_fnv", hex[0], "dim",
                          m->embed_dim, "precision", trainer_amp(t) ? "bf16" : "fp32");
    if (j && towers[TRAIN_IMAGE])
        json_object_set_new(
            j, "image",
            json_pack("{s:s,s:i}", "weights_fnv", hex[1], "resolution", clip_image_resolution(m)));
    if (j && towers[TRAIN_TEXT])
        json_object_set_new(
            j, "text",
            json_pack("{s:s,s:i}", "weights_fnv", hex[2], "tokens", loader_token_length(d)));
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!s) clip_set_error("out of memory for the feature cache's record");
    return s;
}

/* the names of the record's entries that differ, for the error */
static void record_diff(const char *want, const char *got, char *out, size_t cap)
{
    json_t *a = json_loads(want, 0, NULL), *b = json_loads(got, 0, NULL);
    const char *key;
    json_t *v;
    out[0] = 0;
    json_object_foreach(a, key, v)
    {
        json_t *o = json_object_get(b, key);
        if (json_equal(v, o)) continue;
        const char *sub;
        json_t *sv;
        int whole = !json_is_object(v) || !json_is_object(o);
        if (!whole)
            json_object_foreach(v, sub, sv) if (!json_equal(sv, json_object_get(o, sub))) snprintf(
                out + strlen(out), cap - strlen(out), "%s%s.%s", out[0] ? ", " : "", key, sub);
        if (whole)
            snprintf(out + strlen(out), cap - strlen(out), "%s%s%s", out[0] ? ", " : "", key,
                     o ? "" : " (absent)");
    }
    json_object_foreach(b, key, v) if (!json_object_get(a, key)) snprintf(
        out + strlen(out), cap - strlen(out), "%s%s (not this run's)", out[0] ? ", " : "", key);
    json_decref(a);
    json_decref(b);
}

/* room for `more` rows of D floats in c->txt (holding c->rows); -1 with an error */
static int grow_text(feature_cache *c, size_t *cap, size_t more, const char *what)
{
    size_t D = c->dim, need = c->rows + more;
    if (need > FEATURE_CACHE_MAX_FLOATS / D) {
        clip_set_error("%s: %zu caption rows x %zu floats is more than a cached tower may hold "
                       "(%zu floats): train without the text cache (--no-feature-cache)",
                       what, need, D, FEATURE_CACHE_MAX_FLOATS);
        return -1;
    }
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need) n *= 2;
    if (n > FEATURE_CACHE_MAX_FLOATS / D) n = FEATURE_CACHE_MAX_FLOATS / D;
    float *p = realloc(c->txt, n * D * sizeof(float));
    if (!p) {
        clip_set_error("%s: out of memory for %zu cached text features", what, n);
        return -1;
    }
    c->txt = p;
    *cap = n;
    return 0;
}

static feature_cache *cache_new(trainer *t, train_loader *d, const int towers[2], const char *what)
{
    feature_cache *c = calloc(1, sizeof *c);
    if (!c) {
        clip_set_error("%s: out of memory", what);
        return NULL;
    }
    c->towers[0] = towers[0], c->towers[1] = towers[1];
    c->dim = trainer_model(t)->embed_dim;
    c->n = loader_count(d);
    if (!(c->record = make_record(t, d, towers))) goto fail;
    if (towers[TRAIN_IMAGE]) {
        if (c->n > FEATURE_CACHE_MAX_FLOATS / c->dim) {
            clip_set_error("%s: %zu images x %d floats is more than a cached tower may hold (%zu "
                           "floats): train without the image cache (--no-feature-cache)",
                           what, c->n, c->dim, FEATURE_CACHE_MAX_FLOATS);
            goto fail;
        }
        if (!(c->img = malloc((c->n ? c->n : 1) * c->dim * sizeof(float)))) {
            clip_set_error("%s: out of memory for %zu x %d cached image features", what, c->n,
                           c->dim);
            goto fail;
        }
    }
    if (towers[TRAIN_TEXT] && !(c->txt_off = calloc(c->n + 1, sizeof *c->txt_off))) {
        clip_set_error("%s: out of memory for the caption rows of %zu samples", what, c->n);
        goto fail;
    }
    return c;
fail:
    feature_cache_free(c);
    return NULL;
}

/* every feature through the trainer's locked towers, CHUNK samples at a time */
static int build(feature_cache *c, trainer *t, train_loader *d, feature_cache_progress progress,
                 void *ctx, const char *what)
{
    clip_model *m = trainer_model(t);
    int R = clip_image_resolution(m), L = loader_token_length(d), rc = -1;
    size_t D = c->dim, txt_cap = 0, ids_rows = 0, ids_cap = 0;
    uint8_t *pixels = c->towers[TRAIN_IMAGE] ? malloc((size_t)CHUNK * R * R * 3) : NULL;
    int32_t *ids = NULL;
    if (c->towers[TRAIN_IMAGE] && !pixels) {
        clip_set_error("%s: out of memory for %d images", what, CHUNK);
        return -1;
    }
    for (size_t i0 = 0; i0 < c->n; i0 += CHUNK) {
        size_t n = c->n - i0 < CHUNK ? c->n - i0 : CHUNK;
        ids_rows = 0;
        for (size_t k = 0; k < n; k++) {
            int32_t *tok;
            int rows;
            uint8_t *px = pixels ? pixels + k * R * R * 3 : NULL;
            if (loader_read_sample(d, i0 + k, px, &tok, &rows)) goto done;
            if (c->towers[TRAIN_TEXT]) {
                if (ids_rows + rows > ids_cap) {
                    size_t cap = 2 * (ids_rows + rows);
                    int32_t *p = realloc(ids, cap * L * sizeof *ids);
                    if (!p) {
                        free(tok);
                        clip_set_error("%s: out of memory for %zu captions", what, cap);
                        goto done;
                    }
                    ids = p, ids_cap = cap;
                }
                memcpy(ids + ids_rows * L, tok, (size_t)rows * L * sizeof *ids);
                ids_rows += rows;
                c->txt_off[i0 + k + 1] = c->txt_off[i0 + k] + rows;
            }
            free(tok);
        }
        if (pixels && trainer_encode(t, TRAIN_IMAGE, pixels, NULL, (int)n, 0, c->img + i0 * D))
            goto done;
        if (c->towers[TRAIN_TEXT]) {
            if (grow_text(c, &txt_cap, ids_rows, what) ||
                trainer_encode(t, TRAIN_TEXT, NULL, ids, (int)ids_rows, L, c->txt + c->rows * D))
                goto done;
            c->rows += ids_rows;
        }
        if (progress) progress(i0 + n, c->n, ctx);
    }
    rc = 0;
done:
    free(pixels);
    free(ids);
    return rc;
}

static int save(const feature_cache *c, const char *path, train_loader *d)
{
    stream_writer *w = stream_open_write(path);
    if (!w) return -1;
    sample s;
    sample_init(&s);
    sample_set_key(&s, HEADER_KEY);
    sample_set_copy(&s, "json", c->record, strlen(c->record));
    int rc = stream_write(w, &s);
    for (size_t i = 0; !rc && i < c->n; i++) {
        sample_clear(&s);
        sample_set_key(&s, loader_key(d, i));
        if (c->img)
            sample_set_npy(&s, field_of[TRAIN_IMAGE], DT_F32, 1, (int64_t[]){c->dim},
                           c->img + i * c->dim);
        if (c->txt_off) {
            int64_t rows = (int64_t)(c->txt_off[i + 1] - c->txt_off[i]);
            sample_set_npy(&s, field_of[TRAIN_TEXT], DT_F32, 2, (int64_t[]){rows, c->dim},
                           c->txt + c->txt_off[i] * c->dim);
        }
        rc = stream_write(w, &s);
    }
    sample_free(&s);
    if (rc) {
        stream_abort_write(w);
        return -1;
    }
    return stream_close_write(w);
}

static int load(feature_cache *c, const char *path, train_loader *d)
{
    char msg[1024], diff[512];
    stream_reader *r = stream_open_read(path);
    if (!r) return -1;
    sample s;
    sample_init(&s);
    size_t D = c->dim, txt_cap = 0, i = 0;
    int rc = stream_read(r, &s);
    const sample_field *h = rc > 0 ? sample_get(&s, "json") : NULL;
    if (rc < 0) goto damaged;
    if (!h || strcmp(s.key, HEADER_KEY)) {
        clip_set_error("%s: not a clip-train feature cache (no %s.json first): delete it, or give "
                       "--feature-cache another file",
                       path, HEADER_KEY);
        goto fail;
    }
    char *got = strndup((const char *)h->data, h->size);
    if (!got) {
        clip_set_error("%s: out of memory", path);
        goto fail;
    }
    if (strcmp(got, c->record)) {
        record_diff(c->record, got, diff, sizeof diff);
        clip_set_error("%s: made from another model or data (%s differ%s from this run's): delete "
                       "it to compute the features again",
                       path, diff[0] ? diff : "the records",
                       strchr(diff, ',') || !diff[0] ? "" : "s");
        free(got);
        goto fail;
    }
    free(got);
    for (; i < c->n; i++) {
        if ((rc = stream_read(r, &s)) <= 0) {
            if (rc < 0) goto damaged;
            clip_set_error("%s: truncated: %zu of the %zu samples' features: delete it to compute "
                           "them again",
                           path, i, c->n);
            goto fail;
        }
        if (strcmp(s.key, loader_key(d, i))) {
            clip_set_error("%s: sample %zu is '%s', the data's is '%s': made from other data, "
                           "delete it",
                           path, i, s.key, loader_key(d, i));
            goto fail;
        }
        for (int w = 0; w < 2; w++) {
            if (!c->towers[w]) continue;
            npy_array a;
            if (sample_get_npy(&s, field_of[w], &a)) goto damaged;
            int64_t rows = w == TRAIN_IMAGE ? 1 : a.ndim == 2 ? a.shape[0] : -1;
            if (a.dtype != DT_F32 || rows < 1 || a.shape[a.ndim - 1] != (int64_t)D ||
                (w == TRAIN_IMAGE && a.ndim != 1)) {
                clip_set_error("%s: sample %s: %s is not float32 [%s%zu]: delete it", path, s.key,
                               field_of[w], w == TRAIN_IMAGE ? "" : "rows, ", D);
                goto fail;
            }
            if (w == TRAIN_IMAGE) {
                memcpy(c->img + i * D, a.data, D * sizeof(float));
                continue;
            }
            if (grow_text(c, &txt_cap, (size_t)rows, path)) goto fail;
            memcpy(c->txt + c->rows * D, a.data, (size_t)rows * D * sizeof(float));
            c->rows += (size_t)rows;
            c->txt_off[i + 1] = c->rows;
        }
    }
    if ((rc = stream_read(r, &s)) != 0) {
        if (rc < 0) goto damaged;
        clip_set_error("%s: more samples than the data's %zu: made from other data, delete it",
                       path, c->n);
        goto fail;
    }
    sample_free(&s);
    stream_close_read(r);
    return 0;
damaged:
    snprintf(msg, sizeof msg, "%s", clip_error());
    clip_set_error("%s: damaged or truncated after %zu samples (%s): delete it to compute the "
                   "features again",
                   path, i, msg);
fail:
    sample_free(&s);
    stream_close_read(r);
    return -1;
}

feature_cache *feature_cache_open(const char *path, trainer *t, train_loader *d, int image,
                                  int text, int write, feature_cache_progress progress, void *ctx)
{
    const char *what = path ? path : "the feature cache";
    int towers[2] = {image, text};
    for (int w = 0; w < 2; w++)
        if (towers[w] && !trainer_tower_locked(t, w)) {
            clip_set_error("%s: the %s tower trains: only a tower locked whole has fixed features",
                           what, w == TRAIN_IMAGE ? "image" : "text");
            return NULL;
        }
    if (!image && !text) {
        clip_set_error("%s: no tower to cache", what);
        return NULL;
    }
    if (loader_is_stream(d)) {
        clip_set_error("%s: the training data is a stream: features are cached for a FILE.tar",
                       what);
        return NULL;
    }
    feature_cache *c = cache_new(t, d, towers, what);
    if (!c) return NULL;
    int rc = path && access(path, F_OK) == 0 ? load(c, path, d)
             : build(c, t, d, progress, ctx, what) || (path && write && save(c, path, d)) ? -1
                                                                                          : 0;
    if (rc) {
        feature_cache_free(c);
        return NULL;
    }
    return c;
}

void feature_cache_batch(const feature_cache *c, const train_loader *d, int slots, float *out[2])
{
    const size_t *idx = loader_slot_samples(d);
    const int *row = loader_slot_rows(d);
    size_t D = c->dim;
    for (int k = 0; k < slots; k++) {
        if (c->img) memcpy(out[TRAIN_IMAGE] + k * D, c->img + idx[k] * D, D * sizeof(float));
        if (c->txt)
            memcpy(out[TRAIN_TEXT] + k * D, c->txt + (c->txt_off[idx[k]] + row[k]) * D,
                   D * sizeof(float));
    }
}
