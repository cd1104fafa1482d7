#include "train/loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/util.h"
#include "io/image.h"
#include "io/sample.h"
#include "io/sample_file.h"
#include "io/stream.h"
#include "kernels/ops.h"

struct train_loader {
    char *path;
    loader_config cfg;
    sample_file *file;     /* random access, or */
    stream_reader *stream; /* one pass */
    size_t n;              /* samples in the file (0 for a stream) */
    int res, len, vocab;   /* image side, token length and vocabulary of the model */
    int slots;             /* accum * micro: samples per rank per step */
    size_t *order;         /* [n] this epoch's permutation */
    int pending;           /* a stream's first sample already sits in buf[0] */
    sample *buf;           /* [slots] */
    int *failed;           /* [slots] take_sample's result per slot */
    uint8_t *pixels;       /* [slots, res, res, 3] */
    int32_t *ids;          /* [slots, len] */
    size_t *slot_sample;   /* [slots] each slot's sample index (a file) */
    int *slot_row;         /* [slots] and its caption row */
    int skip_pixels;       /* 1: no pixels decoded (a cached image tower) */
};

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a * 0x9e3779b97f4a7c15ull ^ b;
    return splitmix64(&s);
}

int loader_sample_fields(const char *path, const sample *s, npy_array *img, npy_array *tok)
{
    if (sample_get_npy(s, "img.npy", img) || sample_get_npy(s, "tok.npy", tok)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", clip_error());
        clip_set_error("%s: %s", path, msg);
        return -1;
    }
    if (img->dtype != DT_U8 || img->ndim != 3 || img->shape[2] != 3 || img->shape[0] < 1 ||
        img->shape[1] < 1) {
        clip_set_error("%s: sample %s: img.npy must be uint8 [H, W, 3]", path, s->key);
        return -1;
    }
    if (tok->dtype != DT_I32 || tok->ndim != 2 || tok->shape[1] < 1) {
        clip_set_error("%s: sample %s: tok.npy must be int32 [n_captions, L]", path, s->key);
        return -1;
    }
    return 0;
}

static int is_regular_file(const char *path)
{
    struct stat st;
    return !stream_is_zmq(path) && strcmp(path, "-") && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int probe(train_loader *d, const sample *s)
{
    npy_array img, tok;
    if (loader_sample_fields(d->path, s, &img, &tok)) return -1;
    if (tok.shape[1] < 1) {
        clip_set_error("%s: sample %s: tok.npy has no tokens", d->path, s->key);
        return -1;
    }
    d->len = (int)tok.shape[1];
    return 0;
}

train_loader *loader_open(const char *spec, const loader_config *cfg)
{
    train_loader *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(spec))) {
        free(d);
        clip_set_error("%s: out of memory", spec);
        return NULL;
    }
    d->cfg = *cfg;
    if (cfg->accum < 1 || cfg->micro < 1 || cfg->ranks < 1 || cfg->rank < 0 ||
        cfg->rank >= cfg->ranks || (long long)cfg->accum * cfg->micro > (1 << 20)) {
        clip_set_error("%s: bad batch layout (%d micro-batches of %d, rank %d of %d)", spec,
                       cfg->accum, cfg->micro, cfg->rank, cfg->ranks);
        goto fail;
    }
    d->slots = cfg->accum * cfg->micro;
    long long global = (long long)d->slots * cfg->ranks;
    /* a file, or shards in brace notation (io/shards.h); anything else is a stream */
    int shards = !stream_is_zmq(spec) && (strchr(spec, '{') || strstr(spec, "::"));
    if (is_regular_file(spec) || shards) {
        if (!(d->file = sample_file_open(spec))) goto fail;
        d->n = sample_file_count(d->file);
        if (d->n < (size_t)global) {
            if (cfg->ranks > 1 || cfg->accum > 1)
                clip_set_error("%s: %zu samples, fewer than one batch of %lld (%d rank%s x %d "
                               "micro-batch%s x %d)",
                               spec, d->n, global, cfg->ranks, cfg->ranks > 1 ? "s" : "",
                               cfg->accum, cfg->accum > 1 ? "es" : "", cfg->micro);
            else
                clip_set_error("%s: %zu samples, fewer than one batch of %d", spec, d->n,
                               cfg->micro);
            goto fail;
        }
        if (!(d->order = malloc(d->n * sizeof *d->order))) {
            clip_set_error("%s: out of memory for the order of %zu samples", spec, d->n);
            goto fail;
        }
        sample first;
        sample_init(&first);
        int rc = sample_file_read(d->file, 0, &first) < 0 ? -1 : probe(d, &first);
        if (rc && !strstr(clip_error(), spec)) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", clip_error());
            clip_set_error("%s: %s", spec, msg);
        }
        sample_free(&first);
        if (rc) goto fail;
    } else {
        if (cfg->ranks > 1 && !stream_is_zmq(spec)) {
            clip_set_error("--train %s: a stream is one process's; with %d ranks give a FILE.tar "
                           "(each rank takes its slice) or a ZeroMQ endpoint (each rank pulls "
                           "its own samples)",
                           spec, cfg->ranks);
            goto fail;
        }
        if (!(d->stream = stream_open_read(spec))) goto fail;
        if (!(d->buf = calloc(d->slots, sizeof *d->buf))) {
            clip_set_error("%s: out of memory", spec);
            goto fail;
        }
        for (int i = 0; i < d->slots; i++) sample_init(&d->buf[i]);
        int rc = stream_read(d->stream, &d->buf[0]);
        if (rc <= 0) {
            if (rc == 0)
                clip_set_error("%s: empty stream", spec);
            else if (!strstr(clip_error(), spec)) {
                char msg[1024];
                snprintf(msg, sizeof msg, "%s", clip_error());
                clip_set_error("%s: %s", spec, msg);
            }
            goto fail;
        }
        if (probe(d, &d->buf[0])) goto fail;
        d->pending = 1;
    }
    return d;
fail:
    loader_close(d);
    return NULL;
}

void loader_close(train_loader *d)
{
    if (!d) return;
    if (d->file) sample_file_close(d->file);
    if (d->stream) stream_close_read(d->stream);
    if (d->buf)
        for (int i = 0; i < d->slots; i++) sample_free(&d->buf[i]);
    free(d->buf);
    free(d->failed);
    free(d->slot_sample);
    free(d->slot_row);
    free(d->order);
    if (d->pixels) clip_free_big(d->pixels, (size_t)d->slots * d->res * d->res * 3);
    free(d->ids);
    free(d->path);
    free(d);
}

int loader_is_stream(const train_loader *d) { return d->stream != NULL; }
size_t loader_count(const train_loader *d) { return d->n; }
int loader_token_length(const train_loader *d) { return d->len; }

long loader_batches_per_epoch(const train_loader *d)
{
    return d->file ? (long)(d->n / ((size_t)d->slots * d->cfg.ranks)) : 0;
}

int loader_set_model(train_loader *d, int resolution, int vocab)
{
    d->vocab = vocab;
    if (d->pixels) clip_free_big(d->pixels, (size_t)d->slots * d->res * d->res * 3);
    d->pixels = NULL;
    d->res = resolution;
    if (resolution < 1 || resolution > 1 << 14) {
        clip_set_error("%s: image resolution %d out of range", d->path, resolution);
        return -1;
    }
    if (!d->buf) {
        if (!(d->buf = calloc(d->slots, sizeof *d->buf))) goto oom;
        for (int i = 0; i < d->slots; i++) sample_init(&d->buf[i]);
    }
    free(d->failed);
    free(d->ids);
    free(d->slot_sample);
    free(d->slot_row);
    d->slot_sample = calloc(d->slots, sizeof *d->slot_sample);
    d->slot_row = calloc(d->slots, sizeof *d->slot_row);
    d->failed = calloc(d->slots, sizeof *d->failed);
    d->ids = malloc((size_t)d->slots * d->len * sizeof *d->ids);
    d->pixels = clip_alloc_big((size_t)d->slots * resolution * resolution * 3);
    if (!d->failed || !d->ids || !d->pixels || !d->slot_sample || !d->slot_row) goto oom;
    return 0;
oom:
    clip_set_error("%s: out of memory for a batch of %d samples", d->path, d->slots);
    return -1;
}

void loader_epoch(train_loader *d, long epoch)
{
    for (size_t i = 0; i < d->n; i++) d->order[i] = i;
    if (!d->cfg.shuffle || d->n < 2) return;
    uint64_t rng = mix(d->cfg.seed, 0x5eed0000ull + epoch);
    for (size_t i = d->n - 1; i > 0; i--) {
        size_t j = (size_t)image_rng_int(&rng, (int64_t)i + 1);
        size_t t = d->order[i];
        d->order[i] = d->order[j];
        d->order[j] = t;
    }
}

void loader_centre_pixels(const npy_array *img, int R, uint8_t *out)
{
    image_rgb im = {(int)img->shape[1], (int)img->shape[0], (unsigned char *)img->data};
    if (im.w == R && im.h == R)
        memcpy(out, img->data, (size_t)R * R * 3);
    else
        image_preprocess(&im, R, IMAGE_CROP, out);
}

/* tok.npy of sample s: 1 to 2^20 captions of at most the first sample's
 * tokens, else -1 with an error naming the sample */
static int check_captions(const train_loader *d, const sample *s, const npy_array *tok)
{
    if (tok->shape[0] < 1 || tok->shape[0] > (1 << 20)) {
        clip_set_error("%s: sample %s: tok.npy has %lld captions: 1 to 2^20 a sample", d->path,
                       s->key, (long long)tok->shape[0]);
        return -1;
    }
    if (tok->shape[1] > d->len) {
        clip_set_error("%s: sample %s: tok.npy has %lld tokens per caption, more than the %d of "
                       "the first sample",
                       d->path, s->key, (long long)tok->shape[1], d->len);
        return -1;
    }
    return 0;
}

/* pixels at the model's resolution (centre crop, or the random resized crop
 * + flip) and one caption row into slot `slot`; -1 with an error naming the
 * sample */
static int take_sample(train_loader *d, const sample *s, int slot, uint64_t rng)
{
    npy_array img, tok;
    if (loader_sample_fields(d->path, s, &img, &tok)) return -1;
    if (check_captions(d, s, &tok)) return -1;
    int R = d->res;
    uint8_t *out = d->pixels + (size_t)slot * R * R * 3;
    if (d->cfg.augment) {
        image_rgb im = {(int)img.shape[1], (int)img.shape[0], (unsigned char *)img.data};
        image_random_resized_crop(&im, R, &rng, out);
    } else if (!d->skip_pixels) {
        loader_centre_pixels(&img, R, out);
    }
    int64_t row = d->cfg.first_caption ? 0 : image_rng_int(&rng, tok.shape[0]);
    d->slot_row[slot] = (int)row;
    int32_t *dst = d->ids + (size_t)slot * d->len;
    memset(dst, 0, d->len * sizeof *dst);
    memcpy(dst, (const int32_t *)tok.data + row * tok.shape[1], tok.shape[1] * sizeof *dst);
    if (check_token_ids(dst, 1, d->len, d->vocab)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", clip_error());
        clip_set_error("%s: sample %s: tok.npy row %lld: %s (tokenised with another vocabulary?)",
                       d->path, s->key, (long long)row, msg);
        return -1;
    }
    return 0;
}

/* position in the global batch of this rank's slot */
static long long global_position(const train_loader *d, int slot)
{
    int k = slot / d->cfg.micro, i = slot % d->cfg.micro;
    return ((long long)k * d->cfg.ranks + d->cfg.rank) * d->cfg.micro + i;
}

int loader_batch(train_loader *d, long epoch, long g)
{
    int B = d->slots, got = 0;
    if (d->file) {
        size_t base = (size_t)g * B * d->cfg.ranks;
        for (; got < B; got++) {
            size_t idx = d->order[base + (size_t)global_position(d, got)];
            d->slot_sample[got] = idx;
            if (sample_file_read(d->file, idx, &d->buf[got]) < 0) {
                if (!strstr(clip_error(), d->path)) {
                    char msg[1024];
                    snprintf(msg, sizeof msg, "%s", clip_error());
                    clip_set_error("%s: %s", d->path, msg);
                }
                return -1;
            }
        }
    } else {
        got = d->pending;
        d->pending = 0;
        for (; got < B; got++) {
            sample_clear(&d->buf[got]);
            int rc = stream_read(d->stream, &d->buf[got]);
            if (rc < 0) {
                char msg[1024];
                snprintf(msg, sizeof msg, "%s", clip_error());
                clip_set_error("%s: %s", d->path, msg);
                return -1;
            }
            if (rc == 0) break;
        }
        if (got < B) return got;
    }
    /* the decode/augment work of a batch is spread over the cores; each
     * sample's randomness depends only on (seed, epoch, batch, position) */
    int fail = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : fail)
    for (int i = 0; i < B; i++) {
        uint64_t key =
            ((uint64_t)epoch << 40) ^ ((uint64_t)g << 16) ^ (uint64_t)global_position(d, i);
        d->failed[i] = take_sample(d, &d->buf[i], i, mix(d->cfg.seed, key));
        fail |= d->failed[i] != 0;
    }
    if (fail) {
        /* the error of the first failing slot, set again on this thread */
        int i = 0;
        while (!d->failed[i]) i++;
        uint64_t key =
            ((uint64_t)epoch << 40) ^ ((uint64_t)g << 16) ^ (uint64_t)global_position(d, i);
        take_sample(d, &d->buf[i], i, mix(d->cfg.seed, key));
        return -1;
    }
    return got;
}

const uint8_t *loader_pixels(const train_loader *d) { return d->pixels; }
const int32_t *loader_ids(const train_loader *d) { return d->ids; }

const size_t *loader_slot_samples(const train_loader *d) { return d->slot_sample; }
const int *loader_slot_rows(const train_loader *d) { return d->slot_row; }
const char *loader_key(const train_loader *d, size_t i) { return sample_file_key(d->file, i); }
void loader_skip_pixels(train_loader *d, int skip) { d->skip_pixels = skip; }

int loader_read_sample(train_loader *d, size_t i, uint8_t *pixels, int32_t **tok, int *rows)
{
    sample s;
    npy_array img, t;
    sample_init(&s);
    *tok = NULL;
    int rc = -1;
    if (!d->file || i >= d->n) {
        clip_set_error("%s: no sample %zu to read (a file of %zu)", d->path, i, d->n);
        goto done;
    }
    if (sample_file_read(d->file, i, &s) < 0 || loader_sample_fields(d->path, &s, &img, &t))
        goto done;
    if (check_captions(d, &s, &t)) goto done;
    *rows = (int)t.shape[0];
    if (!(*tok = calloc((size_t)*rows * d->len, sizeof **tok))) {
        clip_set_error("%s: sample %s: out of memory for %d captions", d->path, s.key, *rows);
        goto done;
    }
    for (int r = 0; r < *rows; r++)
        memcpy(*tok + (size_t)r * d->len, (const int32_t *)t.data + (size_t)r * t.shape[1],
               t.shape[1] * sizeof **tok);
    if (check_token_ids(*tok, *rows, d->len, d->vocab)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", clip_error());
        clip_set_error("%s: sample %s: tok.npy: %s", d->path, s.key, msg);
        goto done;
    }
    if (pixels) loader_centre_pixels(&img, d->res, pixels);
    rc = 0;
done:
    if (rc) free(*tok), *tok = NULL;
    sample_free(&s);
    return rc;
}
