/* clip-query: text -> image and image -> caption search over an embedded
 * sample stream, and zero-shot labelling of an image. See clip-query(1). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "core/atomic_file.h"
#include "kernels/blas.h"
#include "model/clip_model.h"
#include "io/image.h"
#include "io/sample.h"
#include "io/stream.h"
#include "core/datafile.h"
#include "text/tokenizer.h"
#include "core/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s --model CKPT (--text TEXT | --image FILE | --serve ADDR) [options]\n"
            "       %s --request ADDR JSON\n"
            "Search an embedded sample stream (clip-embed output) by text or image, or label\n"
            "an image zero-shot.\n"
            "\n"
            "  -m, --model FILE         joint CLIP checkpoint (.pth, .bin, .safetensors)\n"
            "      --text-model DIR     Hugging Face BERT directory (when the checkpoint has none)\n"
            "      --vocab FILE         the text tower's vocabulary: WordPiece vocab.txt (BERT)\n"
            "                           or BPE merges .txt.gz (English CLIP tower); default:\n"
            "                           the one shipped with clip-tools\n"
            "      --context-length N   ids per text incl. start/end (default 52, at most the\n"
            "                           model's positions)\n"
            "      --index FILE         embedded sample stream (img_emb.npy, txt_emb.npy, json)\n"
            "      --text TEXT          rank the index's images by similarity to TEXT\n"
            "      --image FILE         rank the index's captions by similarity to the image\n"
            "      --labels A,B,...     with --image: zero-shot probabilities of the labels\n"
            "                           (no --index needed)\n"
            "  -k N                     results shown (default 5)\n"
            "      --json               print a JSON array instead of lines\n"
            "      --serve ADDR         load once, then answer JSON requests on a ZeroMQ REP\n"
            "                           socket bound to ADDR (e.g. tcp://127.0.0.1:5557) until\n"
            "                           {\"quit\": true}, SIGINT or SIGTERM\n"
            "      --request ADDR JSON  send one request to a --serve ADDR and print the reply\n"
            "      --timeout SEC        --request: seconds to wait for the reply (default 600)\n"
            "  -t, --threads N          OpenMP and OpenBLAS threads (default: OMP_NUM_THREADS or\n"
            "                           all cores)\n"
            "  -h, --help               this help\n",
            clip_progname, clip_progname);
}

typedef struct {
    char *key, *image; /* image may be NULL */
    char *caption;     /* caption mode: the caption text (NULL if not in json) */
} entry;

typedef struct {
    entry *e;
    float *emb; /* [n, dim] */
    size_t n, cap;
} index_set;

static void add_entry(index_set *ix, int dim, const char *key, const char *image,
                      const char *caption, const float *emb)
{
    if (ix->n == ix->cap) {
        ix->cap = ix->cap ? ix->cap * 2 : 64;
        ix->e = xrealloc(ix->e, ix->cap * sizeof *ix->e);
        ix->emb = xrealloc(ix->emb, ix->cap * dim * sizeof(float));
    }
    entry *e = &ix->e[ix->n];
    e->key = xstrdup(key);
    e->image = image ? xstrdup(image) : NULL;
    e->caption = caption ? xstrdup(caption) : NULL;
    memcpy(ix->emb + ix->n * dim, emb, dim * sizeof(float));
    ix->n++;
}

/* One pass over the index: img gets one entry per sample (img_emb.npy, required
 * when img is given); cap gets one entry per caption row of txt_emb.npy (samples
 * without one are skipped). Either may be NULL. */
static int load_index(const char *path, int dim, index_set *img, index_set *cap)
{
    stream_reader *r = stream_open_read(path);
    if (!r) return -1;
    sample s;
    sample_init(&s);
    int rc, err = -1;
    json_t *meta = NULL;
    while ((rc = stream_read(r, &s)) > 0) {
        for (int want_images = 1; want_images >= 0; want_images--) {
            index_set *ix = want_images ? img : cap;
            if (!ix) continue;
            const char *field = want_images ? "img_emb.npy" : "txt_emb.npy";
            if (!sample_get(&s, field)) {
                if (!want_images) continue;
                clip_set_error("%s: sample %s has no img_emb.npy (run clip-embed on the index)",
                               path, s.key);
                goto out;
            }
            npy_array a;
            if (sample_get_npy(&s, field, &a)) {
                clip_set_error("%s: %s", path, clip_error());
                goto out;
            }
            if (a.dtype != DT_F32 || a.ndim != (want_images ? 1 : 2)) {
                clip_set_error("%s: sample %s: %s must be float32 of rank %d", path, s.key, field,
                               want_images ? 1 : 2);
                goto out;
            }
            int64_t d = a.shape[a.ndim - 1];
            if (d != dim) {
                clip_set_error("%s: sample %s: %s has dimension %lld but the model embeds in %d",
                               path, s.key, field, (long long)d, dim);
                goto out;
            }
            const sample_field *jf = sample_get(&s, "json");
            meta = jf ? json_loadb((const char *)jf->data, jf->size, 0, NULL) : NULL;
            const char *image = json_string_value(json_object_get(meta, "image"));
            json_t *caps = json_object_get(meta, "captions");
            float row[dim];
            int rows = want_images ? 1 : (int)a.shape[0];
            for (int i = 0; i < rows; i++) {
                memcpy(row, (const char *)a.data + (size_t)i * dim * sizeof(float),
                       dim * sizeof(float));
                add_entry(ix, dim, s.key, image,
                          want_images ? NULL : json_string_value(json_array_get(caps, i)), row);
            }
            json_decref(meta);
            meta = NULL;
        }
    }
    if (rc < 0) goto out;
    if (img && !img->n) {
        clip_set_error("%s: no samples with img_emb.npy", path);
        goto out;
    }
    if (cap && !cap->n && !img) {
        clip_set_error("%s: no samples with txt_emb.npy", path);
        goto out;
    }
    err = 0;
out:
    json_decref(meta);
    stream_close_read(r);
    sample_free(&s);
    return err;
}

static int encode_texts(clip_model *m, tokenizer *tok, int ctx, char **texts, int n, float *out)
{
    int32_t *ids = xcalloc((size_t)n * ctx, sizeof *ids);
    int err = -1;
    for (int i = 0; i < n; i++)
        if (tokenizer_encode(tok, texts[i], strlen(texts[i]), ids + (size_t)i * ctx, ctx) < 0) {
            clip_set_error("text '%s': %s", texts[i], clip_error());
            goto out;
        }
    if (clip_encode_texts(m, ids, n, ctx, out)) {
        clip_set_error("encoding text: %s", clip_error());
        goto out;
    }
    err = 0;
out:
    free(ids);
    return err;
}

static int encode_image(clip_model *m, const char *path, float *out)
{
    int res = clip_image_resolution(m), err = -1;
    size_t len;
    char *buf = read_file_max(path, &len, CLIP_MAX_IMAGE_FILE, "image");
    if (!buf) return -1;
    uint8_t *px = xmalloc((size_t)res * res * 3);
    if (image_load(buf, len, res, IMAGE_CROP, px, IMAGE_MAX_PIXELS, path)) goto out;
    if (clip_encode_images(m, px, 1, out)) {
        clip_set_error("encoding %s: %s", path, clip_error());
        goto out;
    }
    err = 0;
out:
    free(px), free(buf);
    return err;
}

static double cosine(const float *a, const float *b, int dim)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < dim; i++) ab += a[i] * b[i], aa += a[i] * a[i], bb += b[i] * b[i];
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
}

static const double *sort_scores;
static int by_score_desc(const void *x, const void *y)
{
    double a = sort_scores[*(const size_t *)x], b = sort_scores[*(const size_t *)y];
    return a < b ? 1 : a > b ? -1 : (*(const size_t *)x > *(const size_t *)y) - (*(const size_t *)x < *(const size_t *)y);
}

static size_t *rank(const double *score, size_t n)
{
    size_t *order = xmalloc(n * sizeof *order);
    for (size_t i = 0; i < n; i++) order[i] = i;
    sort_scores = score;
    qsort(order, n, sizeof *order, by_score_desc);
    return order;
}

/* text -> images, or image -> captions: a JSON array of {key, score, image|caption} */
static json_t *search(const index_set *ix, const float *q, int dim, int k, int captions)
{
    double *score = xmalloc(ix->n * sizeof *score);
    for (size_t i = 0; i < ix->n; i++) score[i] = cosine(q, ix->emb + i * dim, dim);
    size_t *order = rank(score, ix->n);
    size_t top = (size_t)k < ix->n ? (size_t)k : ix->n;
    json_t *arr = json_array();
    for (size_t r = 0; r < top; r++) {
        const entry *e = &ix->e[order[r]];
        const char *what = captions ? e->caption : e->image;
        json_t *o = json_pack("{s:s, s:f}", "key", e->key, "score", score[order[r]]);
        json_object_set_new(o, captions ? "caption" : "image", what ? json_string(what) : json_null());
        json_array_append_new(arr, o);
    }
    free(order), free(score);
    return arr;
}

/* a JSON array of {label, prob}, highest first; NULL after clip_set_error */
static json_t *zero_shot(clip_model *m, tokenizer *tok, int ctx, const float *img, char **labels,
                         int n)
{
    int dim = m->embed_dim;
    float *emb = xmalloc((size_t)n * dim * sizeof(float));
    if (encode_texts(m, tok, ctx, labels, n, emb)) {
        free(emb);
        return NULL;
    }
    double *p = xmalloc(n * sizeof *p), scale = exp(m->logit_scale), mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) {
        p[i] = scale * cosine(img, emb + (size_t)i * dim, dim);
        if (p[i] > mx) mx = p[i];
    }
    for (int i = 0; i < n; i++) sum += p[i] = exp(p[i] - mx);
    for (int i = 0; i < n; i++) p[i] /= sum;
    size_t *order = rank(p, n);
    json_t *arr = json_array();
    for (int r = 0; r < n; r++) {
        int i = (int)order[r];
        json_array_append_new(arr, json_pack("{s:s, s:f}", "label", labels[i], "prob", p[i]));
    }
    free(order), free(p), free(emb);
    return arr;
}

static void print_result(json_t *a, int as_json)
{
    if (as_json) {
        char *s = json_dumps(a, JSON_INDENT(1));
        puts(s);
        free(s);
    } else {
        size_t i;
        json_t *o;
        json_array_foreach(a, i, o) {
            const char *label = json_string_value(json_object_get(o, "label"));
            if (label) {
                printf("%.6f %s\n", json_real_value(json_object_get(o, "prob")), label);
                continue;
            }
            json_t *what = json_object_get(o, "image");
            if (!what) what = json_object_get(o, "caption");
            printf("%zu %.6f %s %s\n", i + 1, json_real_value(json_object_get(o, "score")),
                   json_string_value(json_object_get(o, "key")),
                   json_is_string(what) ? json_string_value(what) : "-");
        }
    }
}

typedef struct {
    clip_model *m;
    tokenizer *tok;
    int ctx, dim;
    index_set img, cap;
    int have_index;
} server;

/* One request -> reply; *quit set by {"quit": true}. Never exits. */
static json_t *answer(server *sv, const char *req, size_t len, int *quit)
{
    json_error_t jerr;
    json_t *r = json_loadb(req, len, 0, &jerr), *out = NULL;
    char **labels = NULL;
    float *q = xmalloc(sv->dim * sizeof(float));
    if (!r || !json_is_object(r)) {
        clip_set_error("request: %s", r ? "not a JSON object" : jerr.text);
        goto out;
    }
    if (json_is_true(json_object_get(r, "quit"))) {
        *quit = 1;
        out = json_pack("{s:b}", "ok", 1);
        goto out;
    }
    json_t *jk = json_object_get(r, "k"), *jl = json_object_get(r, "labels");
    const char *text = json_string_value(json_object_get(r, "text"));
    const char *image = json_string_value(json_object_get(r, "image"));
    int k = 5;
    if (jk && (!json_is_integer(jk) || json_integer_value(jk) < 1)) {
        clip_set_error("request: \"k\" must be a positive integer");
        goto out;
    }
    if (jk) k = json_integer_value(jk) > (1 << 30) ? 1 << 30 : (int)json_integer_value(jk);
    if (!text == !image) {
        clip_set_error("request: give one of \"text\" or \"image\" (or \"quit\": true)");
        goto out;
    }
    if ((text || jl) && !sv->tok) {
        clip_set_error("request: text needs a model with a text tower (--text-model DIR)");
        goto out;
    }
    if (jl) {
        size_t n = json_array_size(jl), i;
        json_t *v;
        if (!text && n) labels = xmalloc(n * sizeof *labels);
        json_array_foreach(jl, i, v) {
            if (!json_is_string(v) || !labels) break;
            labels[i] = (char *)json_string_value(v);
        }
        if (text || !n || i < n) {
            clip_set_error("request: \"labels\" must be a non-empty array of strings with \"image\"");
            goto out;
        }
    }
    if (!jl && !sv->have_index) {
        clip_set_error("request: search needs the server started with --index");
        goto out;
    }
    if (text) {
        char *t = (char *)text;
        if (encode_texts(sv->m, sv->tok, sv->ctx, &t, 1, q)) goto out;
        out = search(&sv->img, q, sv->dim, k, 0);
    } else {
        if (!clip_image_resolution(sv->m)) {
            clip_set_error("request: the model has no image tower");
            goto out;
        }
        if (encode_image(sv->m, image, q)) goto out;
        if (jl) out = zero_shot(sv->m, sv->tok, sv->ctx, q, labels, (int)json_array_size(jl));
        else if (!sv->cap.n) clip_set_error("request: the index has no txt_emb.npy captions");
        else out = search(&sv->cap, q, sv->dim, k, 1);
    }
out:
    if (!out) out = json_pack("{s:s}", "error", clip_error());
    json_decref(r);
    free(labels), free(q);
    return out;
}

static void send_json(void *sock, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    int rc;
    while ((rc = zmq_send(sock, s, strlen(s), 0)) < 0 && zmq_errno() == EINTR) {}
    if (rc < 0) warn("send: %s", zmq_strerror(zmq_errno()));
    free(s);
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* Answers until {"quit": true} (returns 0) or SIGINT/SIGTERM (returns 128 + the
 * signal). The handlers restart interrupted system calls, so a request being
 * answered (say, an image read from a pipe) finishes and its reply goes out; the
 * loop waits in zmq_poll, which a signal always interrupts, with a timeout in case
 * the signal went to another thread (OpenMP, OpenBLAS). */
static int serve(server *sv, const char *addr)
{
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_REP);
    if (zmq_bind(sock, addr)) die("%s: cannot bind: %s", addr, zmq_strerror(zmq_errno()));
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "%s: serving on %s\n", clip_progname, addr);
    int quit = 0;
    while (!quit && !stop_signal) {
        zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
        int n = zmq_poll(&it, 1, 200);
        if (n < 0 && zmq_errno() != EINTR) die("%s: poll: %s", addr, zmq_strerror(zmq_errno()));
        if (n <= 0 || stop_signal) continue;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&msg);
            if (e == EINTR || e == EAGAIN) continue;
            die("%s: receive: %s", addr, zmq_strerror(e));
        }
        json_t *reply = answer(sv, zmq_msg_data(&msg), zmq_msg_size(&msg), &quit);
        zmq_msg_close(&msg);
        send_json(sock, reply);
        json_decref(reply);
    }
    /* not 0: the last reply may still be queued; 1 s bounds the wait for a client
     * that went away */
    int linger = 1000;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    while (zmq_ctx_term(ctx) < 0 && zmq_errno() == EINTR) {}
    const char *path = strncmp(addr, "ipc://", 6) ? NULL : addr + 6;
    if (path && *path != '@' && strcmp(path, "*")) unlink(path); /* libzmq 4.3 leaves it */
    if (!stop_signal) return 0;
    fprintf(stderr, "%s: stopped by %s\n", clip_progname, stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
    return 128 + stop_signal;
}

/* --request ADDR JSON: exit 0 with the reply on stdout, 1 if it is {"error": ...} */
static int request(const char *addr, const char *req, int timeout_ms)
{
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, addr)) die("%s: cannot connect: %s", addr, zmq_strerror(zmq_errno()));
    if (zmq_send(sock, req, strlen(req), 0) < 0) die("%s: send: %s", addr, zmq_strerror(zmq_errno()));
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, 0) < 0)
        die("%s: no reply within %d s: %s", addr, timeout_ms / 1000, zmq_strerror(zmq_errno()));
    fwrite(zmq_msg_data(&msg), 1, zmq_msg_size(&msg), stdout);
    putchar('\n');
    json_t *j = json_loadb(zmq_msg_data(&msg), zmq_msg_size(&msg), 0, NULL);
    int rc = json_object_get(j, "error") ? 1 : 0;
    json_decref(j);
    zmq_msg_close(&msg);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    clip_handle_signals(); /* --serve installs its own for SIGINT and SIGTERM */
    enum { OPT_TEXT_MODEL = 256, OPT_VOCAB, OPT_CTX, OPT_INDEX, OPT_TEXT, OPT_IMAGE, OPT_LABELS,
           OPT_JSON, OPT_SERVE, OPT_REQUEST, OPT_TIMEOUT };
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text-model", required_argument, NULL, OPT_TEXT_MODEL},
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"context-length", required_argument, NULL, OPT_CTX},
        {"index", required_argument, NULL, OPT_INDEX},
        {"text", required_argument, NULL, OPT_TEXT},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"labels", required_argument, NULL, OPT_LABELS},
        {"json", no_argument, NULL, OPT_JSON},
        {"serve", required_argument, NULL, OPT_SERVE},
        {"request", required_argument, NULL, OPT_REQUEST},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *model = NULL, *text_model = NULL, *vocab = NULL, *index = NULL, *text = NULL,
               *image = NULL, *serve_addr = NULL, *request_addr = NULL;
    char *labels = NULL;
    int k = 5, ctx = 0, threads = 0, as_json = 0, timeout = 600, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:k:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_TEXT_MODEL: text_model = optarg; break;
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_CTX: ctx = (int)parse_long_option("--context-length", optarg, 2, 4096); break;
        case OPT_INDEX: index = optarg; break;
        case OPT_TEXT: text = optarg; break;
        case OPT_IMAGE: image = optarg; break;
        case OPT_LABELS: labels = optarg; break;
        case OPT_JSON: as_json = 1; break;
        case OPT_SERVE: serve_addr = optarg; break;
        case OPT_REQUEST: request_addr = optarg; break;
        case OPT_TIMEOUT: timeout = (int)parse_long_option("--timeout", optarg, 1, 1000000); break;
        case 'k': k = (int)parse_long_option("-k", optarg, 1, 1 << 30); break;
        case 't': threads = (int)parse_long_option("--threads", optarg, 1, 1024); break;
        case 'h': usage(stdout); close_stdout(); return 0;
        default:
            if (optopt && optopt < 256 && !strchr("mkth", optopt))
                die("unknown option '-%c' (see --help)", optopt);
            die("option '%s' is unknown or needs a value (see --help)", argv[optind - 1]);
        }
    }
    if (request_addr) {
        if (optind != argc - 1) die("--request ADDR needs one JSON argument (see --help)");
        int rc = request(request_addr, argv[optind], timeout * 1000);
        close_stdout();
        return rc;
    }
    if (optind < argc) die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!model) die("--model CKPT is required (see --help)");
    if (serve_addr && (text || image || labels))
        die("--serve takes its queries as requests, not --text/--image/--labels");
    if (!serve_addr && !text == !image)
        die("give one of --text TEXT, --image FILE or --serve ADDR (see --help)");
    if (labels && !image) die("--labels needs --image FILE");
    if (!serve_addr && !labels && !index) die("--index FILE is required (see --help)");
    if (threads) blas_set_threads(threads);
    if ((image || serve_addr) && image_init(argv[0])) die("%s", clip_error());

    clip_model *m = clip_model_load(model, text_model);
    if (!m) die("%s", clip_error());
    for (int i = 0; i < m->n_warnings; i++) warn("%s", m->warnings[i]);
    int dim = m->embed_dim, vocab_size, max_len;
    clip_text_limits(m, &vocab_size, &max_len);
    if ((text || labels) && m->text == CLIP_TEXT_NONE)
        die("%s: no text tower (use --text-model DIR)", model);
    tokenizer *tok = NULL;
    if (m->text != CLIP_TEXT_NONE && (text || labels || serve_addr)) {
        int bpe = m->text == CLIP_TEXT_CLIP;
        tok = !vocab ? tokenizer_open_shipped(bpe)
              : bpe  ? tokenizer_open_bpe(vocab)
                     : tokenizer_open_wordpiece(vocab);
        if (!tok) die("%s", clip_error());
        if (tokenizer_vocab_size(tok) > vocab_size)
            die("%s: vocabulary of %d ids, the text tower of %s has %d (use --vocab FILE "
                "with the model's own vocabulary)",
                vocab ? vocab : bpe ? BPE_MERGES_FILE : WORDPIECE_VOCAB_FILE,
                tokenizer_vocab_size(tok), model, vocab_size);
        if (!ctx) ctx = tokenizer_default_context(tok) < max_len ? tokenizer_default_context(tok)
                                                                 : max_len;
        if (ctx > max_len)
            die("--context-length %d: the model takes at most %d ids", ctx, max_len);
    }
    if (image && !clip_image_resolution(m)) die("%s: no image tower", model);

    index_set ix = {0};
    if (index) {
        FILE *f = fopen(index, "rb"); /* a clear error before the model work */
        if (!f && !stream_is_zmq(index) && strcmp(index, "-")) die("%s: cannot open index", index);
        if (f) fclose(f);
    }
    float *q = xmalloc(dim * sizeof(float));
    json_t *res = NULL;
    int rc = 0;
    if (serve_addr) {
        server sv = {.m = m, .tok = tok, .ctx = ctx, .dim = dim, .have_index = !!index};
        if (index && load_index(index, dim, &sv.img, &sv.cap)) die("%s", clip_error());
        rc = serve(&sv, serve_addr);
        ix = sv.img;
        for (size_t i = 0; i < sv.cap.n; i++)
            free(sv.cap.e[i].key), free(sv.cap.e[i].image), free(sv.cap.e[i].caption);
        free(sv.cap.e), free(sv.cap.emb);
    } else if (text) {
        if (load_index(index, dim, &ix, NULL)) die("%s", clip_error());
        char *t = (char *)text;
        if (encode_texts(m, tok, ctx, &t, 1, q)) die("%s", clip_error());
        res = search(&ix, q, dim, k, 0);
    } else {
        if (encode_image(m, image, q)) die("%s", clip_error());
        if (labels) {
            int n = 0;
            char **lv = xmalloc((strlen(labels) + 1) * sizeof *lv);
            for (char *p = strtok(labels, ","); p; p = strtok(NULL, ",")) {
                while (*p == ' ') p++;
                char *end = p + strlen(p);
                while (end > p && end[-1] == ' ') *--end = 0;
                if (*p) lv[n++] = p;
            }
            if (!n) die("--labels: no labels given");
            if (!(res = zero_shot(m, tok, ctx, q, lv, n))) die("%s", clip_error());
            free(lv);
        } else {
            if (load_index(index, dim, NULL, &ix)) die("%s", clip_error());
            res = search(&ix, q, dim, k, 1);
        }
    }
    if (res) print_result(res, as_json);
    json_decref(res);
    for (size_t i = 0; i < ix.n; i++) free(ix.e[i].key), free(ix.e[i].image), free(ix.e[i].caption);
    free(ix.e), free(ix.emb), free(q);
    if (tok) tokenizer_close(tok);
    clip_model_free(m);
    if (!rc) close_stdout();
    return rc;
}
