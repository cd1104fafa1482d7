/* clip-embed: add image (img_emb.npy) and caption (txt_emb.npy) embeddings
 * to every sample of a stream. See clip-embed(1). */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "kernels/blas.h"
#include "model/clip_model.h"
#include "model/device.h"
#include "kernels/gemm_int8.h"
#include "kernels/ops.h"
#include "io/sample.h"
#include "io/stream.h"
#include "core/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s --model CKPT [options]\n"
            "Add img_emb.npy (float32 [D]) for img.npy and txt_emb.npy (float32 [n_captions, D])\n"
            "for tok.npy to every sample of a stream; other fields pass through.\n"
            "\n"
            "  -m, --model FILE       joint CLIP checkpoint (.pth, .bin, .safetensors)\n"
            "      --text-model DIR   Hugging Face BERT directory (when the checkpoint has none)\n"
            "  -i, --input ENDPOINT   sample stream in: -, FILE.tar, tcp://..., ipc://... (default -)\n"
            "  -o, --output ENDPOINT  sample stream out (default -)\n"
            "  -b, --batch-size N     images (and captions) encoded together (default 32)\n"
            "  -t, --threads N        OpenMP and OpenBLAS threads (default: OMP_NUM_THREADS or all\n"
            "                         cores)\n"
            "      --device NAME      only cpu in this build\n"
            "      --no-images        do not embed images (img.npy passes through)\n"
            "      --no-texts         do not embed captions (tok.npy passes through)\n"
            "      --amp              bf16 matrix products (fp32 accumulation): about twice as\n"
            "                         fast, embeddings within ~1e-2 of fp32\n"
            "      --int8             int8 Linear layers (weights per channel, inputs per row):\n"
            "                         about 3.5 times fp32, embeddings within ~3e-2 of fp32\n"
            "      --progress         progress on stderr\n"
            "  -h, --help             this help\n",
            clip_progname);
}

typedef struct {
    clip_model *m;
    int batch, do_images, do_texts;
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
} embedder;

/* Checks the sample's fields and takes its pixels; dies naming the sample. */
static void take_image(embedder *e, const sample *s)
{
    npy_array a;
    if (sample_get_npy(s, "img.npy", &a)) die("%s", clip_error());
    if (a.dtype != DT_U8 || a.ndim != 3 || a.shape[2] != 3)
        die("sample %s: img.npy must be uint8 [H, W, 3], not %s of rank %d", s->key,
            dtype_name(a.dtype), a.ndim);
    if (a.shape[0] != e->res || a.shape[1] != e->res)
        die("sample %s: img.npy is %lldx%lld but the model takes %dx%d images (resize with "
            "clip-prep --size %d)",
            s->key, (long long)a.shape[0], (long long)a.shape[1], e->res, e->res, e->res);
    size_t sz = (size_t)e->res * e->res * 3;
    memcpy(e->pixels + (size_t)e->n_img * sz, a.data, sz);
    e->n_img++;
}

/* Number of captions taken; dies naming the sample. */
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
    if (check_token_ids(dst, n, L, e->vocab)) die("sample %s: tok.npy: %s", s->key, clip_error());
    e->n_txt += n;
    e->txt_len = L;
    return n;
}

/* Encodes what is buffered, adds the embeddings and writes the samples. */
static void flush(embedder *e, stream_writer *w)
{
    if (e->n_img && clip_encode_images(e->m, e->pixels, e->n_img, e->img_emb))
        die("encoding images (samples %s to %s): %s", e->buf[0].key, e->buf[e->n - 1].key,
            clip_error());
    if (e->n_txt) {
        e->txt_emb = xrealloc(e->txt_emb, (size_t)e->n_txt * e->dim * sizeof(float));
        for (int i = 0; i < e->n_txt; i += e->batch) {
            int b = e->n_txt - i < e->batch ? e->n_txt - i : e->batch;
            if (clip_encode_texts(e->m, e->ids + (size_t)i * e->txt_len, b, e->txt_len,
                                  e->txt_emb + (size_t)i * e->dim))
                die("encoding captions (samples %s to %s): %s", e->buf[0].key,
                    e->buf[e->n - 1].key, clip_error());
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
        if (stream_write(w, s) < 0) die("%s", clip_error());
        sample_clear(s);
    }
    e->n = e->n_img = e->n_txt = 0;
}

static size_t run(embedder *e, const char *in, const char *out, int show_progress)
{
    stream_reader *r = stream_open_read(in);
    if (!r) die("%s", clip_error());
    stream_writer *w = stream_open_write(out);
    if (!w) die("%s", clip_error());
    progress p;
    progress_start(&p, "clip-embed", "samples", 0, show_progress);
    size_t done = 0;
    int rc;
    for (;;) {
        sample *s = &e->buf[e->n];
        if ((rc = stream_read(r, s)) <= 0) break;
        int img = e->do_images && sample_get(s, "img.npy");
        npy_array tok;
        int txt = 0;
        if (!sample_get(s, "img.npy") && !sample_get(s, "tok.npy"))
            die("sample %s: neither img.npy nor tok.npy to embed", s->key);
        if (e->do_texts && sample_get(s, "tok.npy")) {
            if (sample_get_npy(s, "tok.npy", &tok)) die("%s", clip_error());
            if (tok.dtype != DT_I32 || tok.ndim != 2 || tok.shape[1] < 1)
                die("sample %s: tok.npy must be int32 [n_captions, L], not %s of rank %d", s->key,
                    dtype_name(tok.dtype), tok.ndim);
            if (tok.shape[1] > e->max_len)
                die("sample %s: tok.npy has %lld ids a caption, the model takes at most %d",
                    s->key, (long long)tok.shape[1], e->max_len);
            txt = 1;
            /* captions of different lengths go into different batches */
            if (e->n_txt && tok.shape[1] != e->txt_len) {
                /* write what is buffered; the new sample (buf[n]) starts the next batch */
                int n = e->n;
                flush(e, w);
                done += n;
                sample t = e->buf[0]; /* cleared by flush */
                e->buf[0] = e->buf[n];
                e->buf[n] = t;
                s = &e->buf[0]; /* tok still points into its field */
            }
        }
        if (img) take_image(e, s);
        e->has_img[e->n] = img;
        e->n_caps[e->n] = txt ? take_captions(e, s, &tok) : -1;
        e->n++;
        if (e->n_img == e->batch || e->n == e->batch) {
            done += e->n;
            flush(e, w);
        }
        progress_update(&p, done + e->n);
    }
    if (rc < 0) die("%s", clip_error());
    done += e->n;
    flush(e, w);
    progress_end(&p, done);
    if (stream_close_write(w) < 0) die("%s", clip_error());
    stream_close_read(r);
    return done;
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    clip_set_progname(argv[0]);
    clip_handle_signals();
    enum { OPT_TEXT_MODEL = 256, OPT_DEVICE, OPT_PROGRESS, OPT_NO_IMAGES, OPT_NO_TEXTS, OPT_AMP, OPT_INT8 };
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text-model", required_argument, NULL, OPT_TEXT_MODEL},
        {"input", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'},
        {"batch-size", required_argument, NULL, 'b'},
        {"threads", required_argument, NULL, 't'},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"progress", no_argument, NULL, OPT_PROGRESS},
        {"no-images", no_argument, NULL, OPT_NO_IMAGES},
        {"no-texts", no_argument, NULL, OPT_NO_TEXTS},
        {"amp", no_argument, NULL, OPT_AMP},
        {"int8", no_argument, NULL, OPT_INT8},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    const char *model = NULL, *text_model = NULL, *in = "-", *out = "-", *device = "cpu";
    int batch = 32, threads = 0, show_progress = 0, do_images = 1, do_texts = 1, c;
    int amp = 0, int8 = 0;
    opterr = 0; /* our own one-line message */
    static const char short_opts[] = "m:i:o:b:t:h";
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_TEXT_MODEL: text_model = optarg; break;
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'b': batch = (int)parse_long_option("--batch-size", optarg, 1, 4096); break;
        case 't': threads = (int)parse_long_option("--threads", optarg, 1, 1024); break;
        case OPT_DEVICE: device = optarg; break;
        case OPT_PROGRESS: show_progress = 1; break;
        case OPT_NO_IMAGES: do_images = 0; break;
        case OPT_NO_TEXTS: do_texts = 0; break;
        case OPT_AMP: amp = 1; break;
        case OPT_INT8:
            int8 = 1;
            if (!gemm_int8_available())
                warn("--int8: no AVX512_VNNI here (CPU features: %s, see CLIP_CPU), so the int8 "
                     "layers run in plain C, slower than fp32", cpu_describe());
            break;
        case 'h': usage(stdout); close_stdout(); return 0;
        default: option_error(argv, short_opts);
        }
    }
    if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
    if (!model) usage_error("--model CKPT is required");
    if (!device_find(device, "encoder")) die("%s", clip_error());
    if (threads) blas_set_threads(threads);

    clip_model *m = clip_model_load(model, text_model);
    if (!m) die("%s", clip_error());
    for (int i = 0; i < m->n_warnings; i++) warn("%s", m->warnings[i]);
    /* --int8 wins over --amp: its Linear layers leave no matrix product to bf16 */
    if (clip_model_set_precision(m, int8 ? PRECISION_INT8 : amp ? PRECISION_BF16 : PRECISION_FP32))
        die("%s: %s", model, clip_error());
    embedder e = {.m = m, .batch = batch, .do_images = do_images, .do_texts = do_texts};
    e.res = clip_image_resolution(m);
    e.dim = m->embed_dim;
    if (do_images && !e.res) die("%s: no image tower (use --no-images)", model);
    if (do_texts && m->text == CLIP_TEXT_NONE)
        die("%s: no text tower (use --no-texts or --text-model DIR)", model);
    clip_text_limits(m, &e.vocab, &e.max_len);
    e.buf = xcalloc(batch, sizeof *e.buf);
    for (int i = 0; i < batch; i++) sample_init(&e.buf[i]);
    e.has_img = xcalloc(batch, sizeof *e.has_img);
    e.n_caps = xcalloc(batch, sizeof *e.n_caps);
    e.pixels = xmalloc((size_t)batch * (e.res ? e.res : 1) * (e.res ? e.res : 1) * 3);
    e.img_emb = xmalloc((size_t)batch * e.dim * sizeof(float));

    run(&e, in, out, show_progress);

    for (int i = 0; i < batch; i++) sample_free(&e.buf[i]);
    free(e.buf), free(e.has_img), free(e.n_caps), free(e.pixels), free(e.img_emb);
    free(e.ids), free(e.txt_emb);
    clip_model_free(m);
    close_stdout();
    return 0;
}
