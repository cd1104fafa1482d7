/* clip-query: text -> image and image -> caption search over an embedded
 * sample stream, and zero-shot labelling of an image. See clip-query(1). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "clip_model.h"
#include "image.h"
#include "sample.h"
#include "stream.h"
#include "tokenizer.h"
#include "util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s --model CKPT --vocab VOCAB.txt (--text TEXT | --image FILE) [options]\n"
            "Search an embedded sample stream (clip-embed output) by text or image, or label\n"
            "an image zero-shot.\n"
            "\n"
            "  -m, --model FILE         joint CLIP checkpoint (.pth, .bin, .safetensors)\n"
            "      --text-model DIR     Hugging Face BERT directory (when the checkpoint has none)\n"
            "      --vocab FILE         Chinese BERT WordPiece vocabulary (vocab.txt)\n"
            "      --context-length N   ids per text incl. start/end (default 52, at most the\n"
            "                           model's positions)\n"
            "      --index FILE         embedded sample stream (img_emb.npy, txt_emb.npy, json)\n"
            "      --text TEXT          rank the index's images by similarity to TEXT\n"
            "      --image FILE         rank the index's captions by similarity to the image\n"
            "      --labels A,B,...     with --image: zero-shot probabilities of the labels\n"
            "                           (no --index needed)\n"
            "  -k N                     results shown (default 5)\n"
            "      --json               print a JSON array instead of lines\n"
            "  -t, --threads N          OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
            "  -h, --help               this help\n",
            clip_progname);
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

/* want_images: one entry per sample (img_emb.npy, required); otherwise one
 * entry per caption row of txt_emb.npy (samples without one are skipped). */
static void load_index(const char *path, int dim, int want_images, index_set *ix)
{
    stream_reader *r = stream_open_read(path);
    if (!r) die("%s", clip_error());
    sample s;
    sample_init(&s);
    int rc;
    while ((rc = stream_read(r, &s)) > 0) {
        const char *field = want_images ? "img_emb.npy" : "txt_emb.npy";
        if (!sample_get(&s, field)) {
            if (want_images)
                die("%s: sample %s has no img_emb.npy (run clip-embed on the index)", path, s.key);
            continue;
        }
        npy_array a;
        if (sample_get_npy(&s, field, &a)) die("%s: %s", path, clip_error());
        int ok = a.dtype == NPY_F32 && (want_images ? a.ndim == 1 : a.ndim == 2);
        if (!ok) die("%s: sample %s: %s must be float32 of rank %d", path, s.key, field,
                     want_images ? 1 : 2);
        int64_t d = a.shape[a.ndim - 1];
        if (d != dim)
            die("%s: sample %s: %s has dimension %lld but the model embeds in %d", path, s.key,
                field, (long long)d, dim);
        json_t *meta = NULL;
        const sample_field *jf = sample_get(&s, "json");
        if (jf) meta = json_loadb((const char *)jf->data, jf->size, 0, NULL);
        const char *image = json_string_value(json_object_get(meta, "image"));
        json_t *caps = json_object_get(meta, "captions");
        float row[dim];
        int rows = want_images ? 1 : (int)a.shape[0];
        for (int i = 0; i < rows; i++) {
            memcpy(row, (const char *)a.data + (size_t)i * dim * sizeof(float), dim * sizeof(float));
            add_entry(ix, dim, s.key, image,
                      want_images ? NULL : json_string_value(json_array_get(caps, i)), row);
        }
        json_decref(meta);
    }
    if (rc < 0) die("%s", clip_error());
    stream_close_read(r);
    sample_free(&s);
    if (!ix->n) die("%s: no samples with %s", path, want_images ? "img_emb.npy" : "txt_emb.npy");
}

static void encode_texts(clip_model *m, tokenizer *tok, int ctx, char **texts, int n, float *out)
{
    int32_t *ids = xcalloc((size_t)n * ctx, sizeof *ids);
    for (int i = 0; i < n; i++)
        if (tokenizer_encode(tok, texts[i], strlen(texts[i]), ids + (size_t)i * ctx, ctx) < 0)
            die("text '%s': %s", texts[i], clip_error());
    if (clip_encode_texts(m, ids, n, ctx, out)) die("encoding text: %s", clip_error());
    free(ids);
}

static void encode_image(clip_model *m, const char *path, float *out)
{
    int res = clip_image_resolution(m);
    size_t len;
    char *buf = read_file(path, &len);
    if (!buf) die("%s", clip_error());
    uint8_t *px = xmalloc((size_t)res * res * 3);
    if (image_load(buf, len, res, IMAGE_CROP, px, path)) die("%s", clip_error());
    if (clip_encode_images(m, px, 1, out)) die("encoding %s: %s", path, clip_error());
    free(px), free(buf);
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

static void print_json(json_t *a)
{
    char *s = json_dumps(a, JSON_INDENT(1));
    puts(s);
    free(s);
    json_decref(a);
}

/* text -> images, or image -> captions */
static void search(const index_set *ix, const float *q, int dim, int k, int captions, int as_json)
{
    double *score = xmalloc(ix->n * sizeof *score);
    for (size_t i = 0; i < ix->n; i++) score[i] = cosine(q, ix->emb + i * dim, dim);
    size_t *order = rank(score, ix->n);
    size_t top = (size_t)k < ix->n ? (size_t)k : ix->n;
    json_t *arr = json_array();
    for (size_t r = 0; r < top; r++) {
        const entry *e = &ix->e[order[r]];
        const char *what = captions ? e->caption : e->image;
        if (as_json) {
            json_t *o = json_pack("{s:s, s:f}", "key", e->key, "score", score[order[r]]);
            json_object_set_new(o, captions ? "caption" : "image",
                                what ? json_string(what) : json_null());
            json_array_append_new(arr, o);
        } else {
            printf("%zu %.6f %s %s\n", r + 1, score[order[r]], e->key, what ? what : "-");
        }
    }
    if (as_json) print_json(arr);
    else json_decref(arr);
    free(order), free(score);
}

static void zero_shot(clip_model *m, tokenizer *tok, int ctx, const float *img, char *labels_arg,
                      int as_json)
{
    int n = 0;
    char **labels = xmalloc((strlen(labels_arg) + 1) * sizeof *labels);
    for (char *p = strtok(labels_arg, ","); p; p = strtok(NULL, ",")) {
        while (*p == ' ') p++;
        char *end = p + strlen(p);
        while (end > p && end[-1] == ' ') *--end = 0;
        if (*p) labels[n++] = p;
    }
    if (!n) die("--labels: no labels given");
    int dim = m->embed_dim;
    float *emb = xmalloc((size_t)n * dim * sizeof(float));
    encode_texts(m, tok, ctx, labels, n, emb);
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
        if (as_json)
            json_array_append_new(arr, json_pack("{s:s, s:f}", "label", labels[i], "prob", p[i]));
        else
            printf("%.6f %s\n", p[i], labels[i]);
    }
    if (as_json) print_json(arr);
    else json_decref(arr);
    free(order), free(p), free(emb), free(labels);
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    enum { OPT_TEXT_MODEL = 256, OPT_VOCAB, OPT_CTX, OPT_INDEX, OPT_TEXT, OPT_IMAGE, OPT_LABELS,
           OPT_JSON };
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
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *model = NULL, *text_model = NULL, *vocab = NULL, *index = NULL, *text = NULL,
               *image = NULL;
    char *labels = NULL;
    int k = 5, ctx = 0, threads = 0, as_json = 0, c;
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
        case 'k': k = (int)parse_long_option("-k", optarg, 1, 1 << 30); break;
        case 't': threads = (int)parse_long_option("--threads", optarg, 1, 1024); break;
        case 'h': usage(stdout); return 0;
        default:
            if (optopt && optopt < 256 && !strchr("mkth", optopt))
                die("unknown option '-%c' (see --help)", optopt);
            die("option '%s' is unknown or needs a value (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!model) die("--model CKPT is required (see --help)");
    if (!text == !image) die("give one of --text TEXT or --image FILE (see --help)");
    if (labels && !image) die("--labels needs --image FILE");
    if (!labels && !index) die("--index FILE is required (see --help)");
    if ((text || labels) && !vocab) die("--vocab VOCAB.txt is required for text (see --help)");
    if (threads) omp_set_num_threads(threads);
    if (image && image_init(argv[0])) die("%s", clip_error());

    tokenizer *tok = NULL;
    if (vocab && !(tok = tokenizer_open_wordpiece(vocab))) die("%s", clip_error());
    clip_model *m = clip_model_load(model, text_model);
    if (!m) die("%s", clip_error());
    int dim = m->embed_dim, max_len = 0;
    if (m->text == CLIP_TEXT_BERT) max_len = m->bert->cfg.max_pos;
    else if (m->text == CLIP_TEXT_CLIP) max_len = m->ctext->cfg.context;
    if (tok) {
        if (m->text == CLIP_TEXT_NONE) die("%s: no text tower (use --text-model DIR)", model);
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
    if (text) {
        load_index(index, dim, 1, &ix);
        char *t = (char *)text;
        encode_texts(m, tok, ctx, &t, 1, q);
        search(&ix, q, dim, k, 0, as_json);
    } else {
        encode_image(m, image, q);
        if (labels) {
            zero_shot(m, tok, ctx, q, labels, as_json);
        } else {
            load_index(index, dim, 0, &ix);
            search(&ix, q, dim, k, 1, as_json);
        }
    }
    for (size_t i = 0; i < ix.n; i++) free(ix.e[i].key), free(ix.e[i].image), free(ix.e[i].caption);
    free(ix.e), free(ix.emb), free(q);
    if (tok) tokenizer_close(tok);
    clip_model_free(m);
    return 0;
}
