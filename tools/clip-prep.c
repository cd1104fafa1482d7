/* clip-prep: annotations + images (folder or archive) -> a sample stream with
 * preprocessed pixels (img.npy) and captions (json). See clip-prep(1). */
#include "tool.h"
#include "core/atomic_file.h"
#include "io/annotations.h"
#include "io/image.h"
#include "io/image_source.h"
#include "io/npy.h"
#include "io/stream.h"
#include "core/util.h"

#include <errno.h>
#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: clip-prep --annotations FILE.json --root DIR|ARCHIVE [options]\n"
    "       clip-prep [options] IMAGE...\n"
    "Preprocess images (and their captions) into a sample stream: <key>.img.npy\n"
    "(uint8 [size,size,3]) and <key>.json ({\"image\", \"captions\"}).\n"
    "  --annotations FILE  JSON list of {\"image\": path, \"caption\": [...]}\n"
    "  --root DIR|ARCHIVE  where the image paths are: a folder, .zip, .tar, .tar.gz\n"
    "  -o OUT              output: -, FILE.tar, tcp://..., ipc://... (default -)\n"
    "  --size N            output side in pixels (default 224)\n"
    "  --resize MODE       crop (default), letterbox or squash\n"
    "  --keep-original     also store the original bytes as <key>.jpg / .png\n"
    "  --skip-bad          warn about bad images and go on (exit 0)\n"
    "  --max-pixels N      refuse an image whose header claims more than N pixels\n"
    "                      (width x height; default 89478485, Pillow's limit)\n"
    "  --threads N         decoding threads (default: number of cores)\n"
    "  --progress          progress on stderr\n"
    "  -h, --help          this help\n";

typedef struct {
    const char *image; /* path as given / as in the annotations */
    char **captions;
    int n_captions;
} job;

typedef struct {
    int done;
    unsigned char *npy, *orig; /* img.npy (header + pixels), original bytes */
    size_t npy_len, orig_len;
    char *err;
} slot;

/* Workers decode jobs in order into a ring of slots, at most `ring` ahead of
 * the writer. Each side sleeps only when it must and is woken once per batch
 * of ring/2 images, not once per image. */
typedef struct {
    const job *jobs;
    size_t n, next, consumed, ring, batch_end;
    slot *slots;
    image_source *src;
    int size, mode, keep_original, stop;
    long long max_pixels; /* images claiming more are refused before decoding */
    const unsigned char *npy_header; /* the .npy header of uint8 [size, size, 3] */
    size_t npy_header_len;
    int writer_waits, workers_waiting;
    pthread_mutex_t lock;
    pthread_cond_t space, done;
} pool;

/* The pixels are decoded straight behind a copy of the .npy header, so the
 * img.npy field needs no copy of its own. */
static void process(const pool *p, const job *j, slot *out)
{
    size_t len;
    unsigned char *bytes = image_source_read(p->src, j->image, &len);
    if (!bytes) {
        out->err = xstrdup(clip_error());
        return;
    }
    out->npy_len = p->npy_header_len + (size_t)p->size * p->size * 3;
    out->npy = xmalloc(out->npy_len);
    memcpy(out->npy, p->npy_header, p->npy_header_len);
    if (image_load(bytes, len, p->size, p->mode, out->npy + p->npy_header_len, p->max_pixels,
                   j->image)) {
        out->err = xstrdup(clip_error());
        free(out->npy);
        out->npy = NULL;
        free(bytes);
        return;
    }
    if (p->keep_original) {
        out->orig = bytes;
        out->orig_len = len;
    } else {
        free(bytes);
    }
}

/* are slots [p->consumed, p->batch_end) all done? (under the lock) */
static int batch_ready(const pool *p)
{
    for (size_t i = p->consumed; i < p->batch_end; i++)
        if (!p->slots[i % p->ring].done) return 0;
    return 1;
}

static void *worker(void *arg)
{
    pool *p = arg;
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
        slot r = {0};
        process(p, &p->jobs[i], &r);
        r.done = 1;
        pthread_mutex_lock(&p->lock);
        p->slots[i % p->ring] = r;
        if (p->writer_waits && i < p->batch_end && batch_ready(p)) {
            p->writer_waits = 0;
            pthread_cond_signal(&p->done);
        }
        pthread_mutex_unlock(&p->lock);
    }
    image_thread_done();
    return NULL;
}

/* Move the next batch of results (from slot `first`) into out; returns its size. */
static size_t take_batch(pool *p, size_t first, slot *out)
{
    size_t k = p->ring / 2 ? p->ring / 2 : 1;
    if (k > p->n - first) k = p->n - first;
    pthread_mutex_lock(&p->lock);
    p->batch_end = first + k;
    while (!batch_ready(p)) {
        p->writer_waits = 1;
        pthread_cond_wait(&p->done, &p->lock);
    }
    p->writer_waits = 0;
    for (size_t i = 0; i < k; i++) {
        out[i] = p->slots[(first + i) % p->ring];
        memset(&p->slots[(first + i) % p->ring], 0, sizeof *out);
    }
    p->consumed = first + k;
    if (p->workers_waiting) pthread_cond_broadcast(&p->space);
    pthread_mutex_unlock(&p->lock);
    return k;
}

static void slot_free(slot *r)
{
    free(r->npy);
    free(r->orig);
    free(r->err);
}

/* WebDataset key: file name without extension, other dots -> '_'. */
static char *make_key(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *key = xstrdup(base);
    char *dot = strrchr(key, '.');
    if (dot && dot != key) *dot = 0;
    for (char *c = key; *c; c++)
        if (*c == '.') *c = '_';
    if (!*key) {
        free(key);
        key = xstrdup("_");
    }
    return key;
}

static char *meta_json(const job *j)
{
    json_t *caps = json_array();
    for (int i = 0; i < j->n_captions; i++) json_array_append_new(caps, json_string(j->captions[i]));
    char *image = path_with_slashes(j->image);
    json_t *o = json_pack("{s:s, s:o}", "image", image, "captions", caps);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    free(image);
    return s;
}

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    clip_handle_signals();
    /* per-image buffers (~150 KB) would otherwise be fresh mmaps, each page faulted in */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    const char *ann_path = NULL, *root = NULL, *out = "-";
    int size = 224, mode = IMAGE_CROP, keep = 0, skip_bad = 0, show = 0;
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    long long max_pixels = IMAGE_MAX_PIXELS;
    char **paths = xmalloc((argc + 1) * sizeof *paths);
    size_t n_paths = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            free(paths);
            close_stdout();
            return 0;
        } else if (!strcmp(a, "--annotations")) {
            if (!val) usage_error("--annotations needs a file");
            ann_path = argv[++i];
        } else if (!strcmp(a, "--root")) {
            if (!val) usage_error("--root needs a folder or archive");
            root = argv[++i];
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!val) usage_error("%s needs an output", a);
            out = argv[++i];
        } else if (!strcmp(a, "--size")) {
            size = (int)parse_long_option(a, val, 1, 8192);
            i++;
        } else if (!strcmp(a, "--resize")) {
            if (!val || (mode = image_resize_parse(val)) < 0)
                usage_error("--resize: expected crop, letterbox or squash, got '%s'", val ? val : "");
            i++;
        } else if (!strcmp(a, "--max-pixels")) {
            max_pixels = parse_long_option(a, val, 1, 1L << 40);
            i++;
        } else if (!strcmp(a, "--threads")) {
            threads = parse_long_option(a, val, 1, 256);
            i++;
        } else if (!strcmp(a, "--keep-original")) {
            keep = 1;
        } else if (!strcmp(a, "--skip-bad")) {
            skip_bad = 1;
        } else if (!strcmp(a, "--progress")) {
            show = 1;
        } else if (!strcmp(a, "--")) {
            while (++i < argc) paths[n_paths++] = argv[i];
        } else if (a[0] == '-' && a[1]) {
            usage_error("unknown option %s", a);
        } else {
            paths[n_paths++] = argv[i];
        }
    }
    if (ann_path && n_paths) usage_error("give either --annotations or image paths, not both");
    if (!ann_path && !n_paths) usage_error("no input: --annotations FILE.json or image paths");
    if (threads < 1) threads = 1;

    annotations *ann = NULL;
    job *jobs;
    size_t n;
    if (ann_path) {
        if (!(ann = annotations_load(ann_path)) || annotations_check_root(ann, root, ann_path))
            die("%s", clip_error());
        if (ann->n_merged)
            warn("%s: %zu entr%s named an image listed before: %s captions joined its sample",
                 ann_path, ann->n_merged, ann->n_merged == 1 ? "y" : "ies",
                 ann->n_merged == 1 ? "its" : "their");
        n = ann->n;
        jobs = xcalloc(n + 1, sizeof *jobs);
        for (size_t i = 0; i < n; i++)
            jobs[i] = (job){ann->items[i].image, ann->items[i].captions, ann->items[i].n_captions};
    } else {
        n = n_paths;
        jobs = xcalloc(n + 1, sizeof *jobs);
        for (size_t i = 0; i < n; i++) jobs[i] = (job){paths[i], NULL, 0};
    }

    if (image_init(argv[0])) die("%s", clip_error());
    image_source *src = image_source_open(root);
    if (!src) die("%s", clip_error());
    for (size_t i = 0; i < n; i++) image_source_want(src, jobs[i].image);

    /* a file output appears only when complete (see stream_open_write) */
    stream_writer *w = stream_open_write(out);
    if (!w) die("%s", clip_error());

    int64_t shape[3] = {size, size, 3};
    size_t npy_len;
    unsigned char *npy_header = npy_encode(DT_U8, 3, shape, NULL, &npy_len);
    pool p = {.jobs = jobs, .n = n, .ring = 4 * threads, .src = src, .size = size, .mode = mode,
              .keep_original = keep, .max_pixels = max_pixels, .npy_header = npy_header,
              .npy_header_len = npy_len - (size_t)size * size * 3};
    /* one thread: decode in this one, no hand-over at all */
    long n_workers = threads > 1 ? threads : 0;
    p.slots = xcalloc(p.ring, sizeof *p.slots);
    slot *batch = xcalloc(p.ring, sizeof *batch);
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.space, NULL);
    pthread_cond_init(&p.done, NULL);
    pthread_t *tids = xmalloc(threads * sizeof *tids);
    for (long t = 0; t < n_workers; t++) pthread_create(&tids[t], NULL, worker, &p);

    progress prog;
    progress_start(&prog, "clip-prep", "images", n, show);
    sample s;
    sample_init(&s);
    size_t written = 0, bad = 0, i = 0, k = 0, b = 0;
    char *fatal = NULL;
    while (i < n && !fatal) {
        if (b == k) {
            b = 0;
            if (n_workers) {
                k = take_batch(&p, i, batch);
            } else {
                k = 1;
                batch[0] = (slot){0};
                process(&p, &jobs[i], &batch[0]);
            }
        }
        slot r = batch[b];
        batch[b++] = (slot){0};
        const job *j = &jobs[i++];
        if (r.err) {
            if (skip_bad) {
                warn("skipping %s", r.err);
                bad++;
                free(r.err);
            } else {
                fatal = r.err;
            }
            continue;
        }
        sample_clear(&s);
        char *key = make_key(j->image);
        sample_set_key(&s, key);
        free(key);
        char *meta = meta_json(j);
        sample_set(&s, "json", meta, strlen(meta));
        sample_set(&s, "img.npy", r.npy, r.npy_len);
        if (r.orig) sample_set(&s, image_type(r.orig, r.orig_len), r.orig, r.orig_len);
        if (stream_write(w, &s)) fatal = xstrdup(clip_error());
        else written++;
        progress_update(&prog, written + bad);
    }

    pthread_mutex_lock(&p.lock);
    p.stop = 1;
    pthread_cond_broadcast(&p.space);
    pthread_mutex_unlock(&p.lock);
    for (long t = 0; t < n_workers; t++) pthread_join(tids[t], NULL);
    for (size_t t = 0; t < p.ring; t++) {
        slot_free(&p.slots[t]);
        slot_free(&batch[t]);
    }
    if (fatal) stream_abort_write(w);
    else if (stream_close_write(w)) fatal = xstrdup(clip_error());
    if (fatal) die("%s", fatal);
    progress_end(&prog, written + bad);
    if (bad) warn("%zu bad image%s skipped, %zu written", bad, bad == 1 ? "" : "s", written);
    sample_free(&s);
    image_source_close(src);
    annotations_free(ann);
    free(jobs);
    free(paths);
    free(p.slots);
    free(batch);
    free(npy_header);
    free(tids);
    close_stdout();
    return 0;
}
