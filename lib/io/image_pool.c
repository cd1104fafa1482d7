#include "io/image_pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "io/image.h"

typedef struct {
    int done;
    image_pool_item item;
} slot;

struct image_pool {
    image_pool_config cfg;
    const char *const *paths;
    image_source *src;
    /* next: the first path no worker has taken; consumed: the first slot
     * the consumer has not taken; [consumed, batch_end): the batch it waits for */
    size_t n, next, consumed, ring, batch_end;
    slot *slots;
    image_pool_item *batch; /* the batch handed over, [ring / 2] */
    size_t batch_pos, batch_len;
    int stop, consumer_waits, workers_waiting;
    pthread_t *threads;
    int n_threads; /* started */
    pthread_mutex_t lock;
    pthread_cond_t space, done;
};

static void decode(const image_pool *p, const char *path, image_pool_item *out)
{
    const image_pool_config *c = &p->cfg;
    size_t len;
    unsigned char *bytes = image_source_read(p->src, path, &len);
    if (!bytes) {
        out->err = xstrdup(clip_error());
        return;
    }
    out->len = c->prefix_len + (size_t)c->size * c->size * 3;
    out->data = xmalloc(out->len);
    memcpy(out->data, c->prefix, c->prefix_len);
    if (image_load(bytes, len, c->size, c->mode, out->data + c->prefix_len, c->max_pixels, path)) {
        out->err = xstrdup(clip_error());
        free(out->data);
        out->data = NULL;
        free(bytes);
        return;
    }
    if (c->keep_original) {
        out->orig = bytes;
        out->orig_len = len;
    } else {
        free(bytes);
    }
}

/* are slots [p->consumed, p->batch_end) all done? (under the lock) */
static int batch_ready(const image_pool *p)
{
    for (size_t i = p->consumed; i < p->batch_end; i++)
        if (!p->slots[i % p->ring].done) return 0;
    return 1;
}

static void *worker(void *arg)
{
    image_pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->stop && p->next < p->n && p->next >= p->consumed + p->ring) {
            p->workers_waiting++;
            pthread_cond_wait(&p->space, &p->lock);
            p->workers_waiting--;
        }
        if (p->stop || p->next >= p->n) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        size_t i = p->next++;
        pthread_mutex_unlock(&p->lock);
        slot r = {1, {0}};
        decode(p, p->paths[i], &r.item);
        pthread_mutex_lock(&p->lock);
        p->slots[i % p->ring] = r;
        if (p->consumer_waits && i < p->batch_end && batch_ready(p)) {
            p->consumer_waits = 0;
            pthread_cond_signal(&p->done);
        }
        pthread_mutex_unlock(&p->lock);
    }
    image_thread_done();
    return NULL;
}

/* the next half ring of results, from slot p->consumed, into p->batch */
static void take_batch(image_pool *p)
{
    size_t first = p->consumed, k = p->ring / 2 ? p->ring / 2 : 1;
    if (k > p->n - first) k = p->n - first;
    pthread_mutex_lock(&p->lock);
    p->batch_end = first + k;
    while (!batch_ready(p)) {
        p->consumer_waits = 1;
        pthread_cond_wait(&p->done, &p->lock);
    }
    p->consumer_waits = 0;
    for (size_t i = 0; i < k; i++) {
        slot *s = &p->slots[(first + i) % p->ring];
        p->batch[i] = s->item;
        memset(s, 0, sizeof *s);
    }
    p->consumed = first + k;
    if (p->workers_waiting) pthread_cond_broadcast(&p->space);
    pthread_mutex_unlock(&p->lock);
    p->batch_pos = 0, p->batch_len = k;
}

image_pool *image_pool_start(image_source *src, const char *const *paths, size_t n,
                             const image_pool_config *cfg)
{
    image_pool *p = xcalloc(1, sizeof *p);
    p->cfg = *cfg;
    p->paths = paths, p->n = n, p->src = src;
    int threads = cfg->threads > 1 ? cfg->threads : 1;
    p->ring = 4 * (size_t)threads;
    p->slots = xcalloc(p->ring, sizeof *p->slots);
    p->batch = xcalloc(p->ring, sizeof *p->batch);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->space, NULL);
    pthread_cond_init(&p->done, NULL);
    if (threads == 1) return p; /* decoded in image_pool_next: no hand-over at all */
    p->threads = xcalloc(threads, sizeof *p->threads);
    for (; p->n_threads < threads; p->n_threads++) {
        int rc = pthread_create(&p->threads[p->n_threads], NULL, worker, p);
        if (rc) {
            clip_set_error("cannot start decoding thread %d of %d: %s", p->n_threads + 1, threads,
                           strerror(rc));
            image_pool_free(p);
            return NULL;
        }
    }
    return p;
}

int image_pool_next(image_pool *p, image_pool_item *out)
{
    if (!p->n_threads) {
        if (p->next >= p->n) return 1;
        memset(out, 0, sizeof *out);
        decode(p, p->paths[p->next++], out);
        return 0;
    }
    if (p->batch_pos == p->batch_len) {
        if (p->consumed >= p->n) return 1;
        take_batch(p);
    }
    *out = p->batch[p->batch_pos];
    memset(&p->batch[p->batch_pos++], 0, sizeof *out);
    return 0;
}

void image_pool_item_free(image_pool_item *it)
{
    free(it->data);
    free(it->orig);
    free(it->err);
    memset(it, 0, sizeof *it);
}

void image_pool_free(image_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->space);
    pthread_mutex_unlock(&p->lock);
    for (int t = 0; t < p->n_threads; t++) pthread_join(p->threads[t], NULL);
    for (size_t t = 0; t < p->ring; t++) {
        image_pool_item_free(&p->slots[t].item);
        image_pool_item_free(&p->batch[t]);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->space);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->slots);
    free(p->batch);
    free(p);
}
