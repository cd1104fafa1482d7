/* clip-train: contrastive training and fine-tuning of the joint model on
 * samples with img.npy and tok.npy. See clip-train(1). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "kernels/blas.h"
#include "model/device.h"
#include "io/image.h"
#include "kernels/ops.h"
#include "search/recall.h"
#include "io/sample.h"
#include "io/sample_file.h"
#include "io/stream.h"
#include "train/train.h"
#include "core/util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s (--init CKPT [--text-model DIR] | --arch SPEC) --train DATA [options]\n"
            "Train the joint CLIP model (ViT + BERT, or OpenAI's English CLIP) contrastively on\n"
            "samples with img.npy and tok.npy (clip-prep | clip-tokenize [--bpe]).\n"
            "\n"
            "Model:\n"
            "      --init FILE          start from a checkpoint (.pth, .bin, .safetensors); tensors\n"
            "                           the model does not use are reported and left alone\n"
            "      --text-model DIR     Hugging Face BERT directory (config.json [+ weights])\n"
            "      --arch SPEC          from scratch: tiny|small|base[,KEY=N...][,text=clip] (see\n"
            "                           clip-train(1)); text=clip: OpenAI's English text tower\n"
            "      --position-ids       with --arch: save BERT's embeddings.position_ids buffer too,\n"
            "                           for a reference BertModel of transformers < 4.31 (with\n"
            "                           --init the saved keys are always those of the init)\n"
            "      --resume             continue from the --save file's state (FILE.state)\n"
            "Data:\n"
            "      --train DATA         FILE.tar or shards 'train-{000..015}.tar' (random access,\n"
            "                           shuffled each epoch) or a stream\n"
            "                           (-, tcp://..., ipc://...: read once, in order; needs --steps)\n"
            "      --val FILE.tar       evaluation samples: recall after every epoch\n"
            "      --eval-at-start      evaluate once before training too\n"
            "  -b, --batch-size N       samples per step (default 32)\n"
            "      --epochs N           passes over a FILE.tar (default 1)\n"
            "      --steps N            stop after N steps in all (the schedule's length)\n"
            "      --no-shuffle         keep the file order\n"
            "      --no-augment         no random resized crop / flip\n"
            "      --caption random|first  caption per image per step (default random)\n"
            "      --seed N             shuffling, augmentation and init (default 0)\n"
            "Optimisation:\n"
            "      --lr X               peak learning rate (default 5e-5)\n"
            "      --warmup N           linear warm-up steps (default 100)\n"
            "      --schedule cosine|constant  after warm-up (cosine ends at lr * 0.01)\n"
            "      --min-lr-ratio X     cosine floor as a fraction of lr (default 0.01)\n"
            "      --wd X               AdamW weight decay on matrices (default 0.01)\n"
            "      --wd-all             decay every tensor (biases, gains, logit_scale too)\n"
            "      --beta1 X --beta2 X --eps X   AdamW (defaults 0.9, 0.999, 1e-8)\n"
            "      --grad-clip X        clip the total gradient norm to X (default off)\n"
            "      --amp                bf16 matrix products, fp32 master weights\n"
            "Output:\n"
            "      --save FILE          weights (.pth, or .safetensors with the config); also\n"
            "                           FILE.state for --resume; written after every epoch\n"
            "      --save-every N       and every N steps\n"
            "      --stop-after N       stop (and save) after N steps of this run, as on SIGINT;\n"
            "                           --resume continues (time-sliced jobs)\n"
            "      --log FILE           JSON lines: one per step, one per evaluation\n"
            "      --progress | --quiet progress on stderr (default: when stderr is a terminal)\n"
            "Devices:\n"
            "      --device NAME        both encoders (default cpu)\n"
            "      --image-device NAME  --text-device NAME   per encoder\n"
            "  -t, --threads N          OpenMP and OpenBLAS threads (default: all cores)\n"
            "  -h, --help               this help\n",
            clip_progname);
}

/* ---- data */

typedef struct {
    const char *path;
    sample_file *file;     /* random access, or */
    stream_reader *stream; /* one pass */
    size_t n;              /* samples in the file (0 for a stream) */
    int res, len, vocab;   /* image side, token length and vocabulary of the model */
    int augment, first_caption;
    uint64_t seed;
    size_t *order; /* [n] this epoch's permutation */
    int pending;   /* a stream's first sample already sits in buf[0] */
    sample *buf;   /* [batch] */
    uint8_t *pixels;
    int32_t *ids;
} loader;

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a * 0x9e3779b97f4a7c15ull ^ b;
    return splitmix64(&s);
}

static void loader_epoch(loader *d, long epoch, int shuffle)
{
    for (size_t i = 0; i < d->n; i++) d->order[i] = i;
    if (!shuffle) return;
    uint64_t rng = mix(d->seed, 0x5eed0000ull + epoch);
    for (size_t i = d->n - 1; i > 0; i--) {
        size_t j = (size_t)image_rng_int(&rng, (int64_t)i + 1);
        size_t t = d->order[i];
        d->order[i] = d->order[j];
        d->order[j] = t;
    }
}

/* img.npy uint8 [H, W, 3] and tok.npy int32 [n, L] of a sample; dies naming it */
static void get_fields(const char *path, const sample *s, npy_array *img, npy_array *tok)
{
    if (sample_get_npy(s, "img.npy", img) || sample_get_npy(s, "tok.npy", tok))
        die("%s: %s", path, clip_error());
    if (img->dtype != DT_U8 || img->ndim != 3 || img->shape[2] != 3 || img->shape[0] < 1 ||
        img->shape[1] < 1)
        die("%s: sample %s: img.npy must be uint8 [H, W, 3]", path, s->key);
    if (tok->dtype != DT_I32 || tok->ndim != 2)
        die("%s: sample %s: tok.npy must be int32 [n_captions, L]", path, s->key);
}

/* the evaluation view: the stored pixels when already R x R, else the centre crop */
static void eval_pixels(const npy_array *img, int R, uint8_t *out)
{
    image_rgb im = {(int)img->shape[1], (int)img->shape[0], (unsigned char *)img->data};
    if (im.w == R && im.h == R) memcpy(out, img->data, (size_t)R * R * 3);
    else image_preprocess(&im, R, IMAGE_CROP, out);
}

/* pixels at the model's resolution (centre crop, or the random resized
 * crop + flip) and one caption row; dies naming the sample */
static void take_sample(loader *d, const sample *s, int slot, uint64_t rng)
{
    npy_array img, tok;
    get_fields(d->path, s, &img, &tok);
    if (tok.shape[0] < 1) die("%s: sample %s: tok.npy has no caption", d->path, s->key);
    if (tok.shape[1] > d->len)
        die("%s: sample %s: tok.npy has %lld tokens per caption, more than the %d of the first "
            "sample",
            d->path, s->key, (long long)tok.shape[1], d->len);
    int R = d->res;
    uint8_t *out = d->pixels + (size_t)slot * R * R * 3;
    if (d->augment) {
        image_rgb im = {(int)img.shape[1], (int)img.shape[0], (unsigned char *)img.data};
        image_random_resized_crop(&im, R, &rng, out);
    } else {
        eval_pixels(&img, R, out);
    }
    int64_t row = d->first_caption ? 0 : image_rng_int(&rng, tok.shape[0]);
    int32_t *dst = d->ids + (size_t)slot * d->len;
    memset(dst, 0, d->len * sizeof *dst);
    memcpy(dst, (const int32_t *)tok.data + row * tok.shape[1], tok.shape[1] * sizeof *dst);
    if (check_token_ids(dst, 1, d->len, d->vocab))
        die("%s: sample %s: tok.npy row %lld: %s (tokenised with another vocabulary?)", d->path,
            s->key, (long long)row, clip_error());
}

/* Fills batch `b` of `epoch`; returns the samples read (< B only at the end
 * of a stream). */
static int loader_batch(loader *d, long epoch, long b, int B)
{
    int got = 0;
    if (d->file) {
        for (; got < B; got++) {
            size_t idx = d->order[(size_t)b * B + got];
            sample_clear(&d->buf[got]);
            if (sample_file_read(d->file, idx, &d->buf[got]) < 0)
                die("%s: %s", d->path, clip_error());
        }
    } else {
        got = d->pending;
        d->pending = 0;
        for (; got < B; got++) {
            sample_clear(&d->buf[got]);
            int rc = stream_read(d->stream, &d->buf[got]);
            if (rc < 0) die("%s: %s", d->path, clip_error());
            if (rc == 0) break;
        }
        if (got < B) return got;
    }
    /* the decode/augment work of a batch is spread over the cores; each
     * sample's randomness depends only on (seed, epoch, batch, slot) */
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < B; i++)
        take_sample(d, &d->buf[i], i, mix(d->seed, ((uint64_t)epoch << 40) ^ ((uint64_t)b << 16) ^ i));
    return got;
}

/* the first sample fixes the token length */
static void loader_probe(loader *d, const sample *s)
{
    npy_array img, tok;
    get_fields(d->path, s, &img, &tok);
    d->len = (int)tok.shape[1];
}

/* ---- evaluation set, held in memory */

typedef struct {
    int n_images, n_texts, len, res;
    uint8_t *pixels;
    int32_t *ids;
    int64_t *txt_off;
} val_set;

static void val_load(val_set *v, const char *path, int res)
{
    sample_file *f = sample_file_open(path);
    if (!f) die("%s", clip_error());
    size_t n = sample_file_count(f);
    if (!n) die("%s: no samples", path);
    memset(v, 0, sizeof *v);
    v->res = res;
    v->pixels = xmalloc(n * res * res * 3);
    v->txt_off = xmalloc((n + 1) * sizeof *v->txt_off);
    sample s;
    sample_init(&s);
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        npy_array img, tok;
        sample_clear(&s);
        if (sample_file_read(f, i, &s) < 0) die("%s: %s", path, clip_error());
        get_fields(path, &s, &img, &tok);
        if (!v->len) v->len = (int)tok.shape[1];
        if (tok.shape[1] != v->len)
            die("%s: sample %s: tok.npy has %lld tokens per caption, the first sample %d", path,
                s.key, (long long)tok.shape[1], v->len);
        eval_pixels(&img, res, v->pixels + i * res * res * 3);
        v->txt_off[i] = v->n_texts;
        size_t need = ((size_t)v->n_texts + tok.shape[0]) * v->len;
        if (need > cap) {
            cap = need * 2;
            v->ids = xrealloc(v->ids, cap * sizeof *v->ids);
        }
        memcpy(v->ids + (size_t)v->n_texts * v->len, tok.data, tok.count * sizeof(int32_t));
        v->n_texts += (int)tok.shape[0];
    }
    v->n_images = (int)n;
    v->txt_off[n] = v->n_texts;
    sample_free(&s);
    sample_file_close(f);
}

/* what main holds, at an exit through main (make check-asan finds any leak there) */
static void run_free(loader *d, int batch, sample *first, val_set *v, trainer *t)
{
    if (d->file) sample_file_close(d->file);
    if (d->stream) stream_close_read(d->stream);
    sample_free(first);
    for (int i = 0; i < batch; i++) sample_free(&d->buf[i]);
    free(d->buf);
    free(d->order);
    clip_free_big(d->pixels, (size_t)batch * d->res * d->res * 3);
    free(d->ids);
    free(v->pixels);
    free(v->ids);
    free(v->txt_off);
    trainer_free(t);
}

static json_t *evaluate(clip_model *m, const val_set *v)
{
    recall_set set = {.n_images = v->n_images, .n_texts = v->n_texts, .dim = m->embed_dim};
    set.img = xmalloc((size_t)v->n_images * set.dim * sizeof(float));
    set.txt = xmalloc((size_t)v->n_texts * set.dim * sizeof(float));
    set.txt_off = xmalloc((v->n_images + 1) * sizeof(int64_t));
    memcpy(set.txt_off, v->txt_off, (v->n_images + 1) * sizeof(int64_t));
    if (clip_encode_images(m, v->pixels, v->n_images, set.img) ||
        clip_encode_texts(m, v->ids, v->n_texts, v->len, set.txt))
        die("evaluation: %s", clip_error());
    int64_t *ir = xmalloc(v->n_images * sizeof *ir), *tr = xmalloc(v->n_texts * sizeof *tr);
    recall_ranks(&set, 0, 0, ir, tr);
    recall_metrics rm;
    recall_summarize(&set, ir, tr, &rm);
    free(ir);
    free(tr);
    recall_set_free(&set);
    return recall_metrics_json(&rm);
}

/* ---- the run */

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

typedef struct {
    const char *save, *log_path;
    FILE *log;
    char state_path[4096];
    long save_every;
} outputs;

static void save_all(trainer *t, const outputs *o, long epoch, long batch_in_epoch, uint64_t seed)
{
    if (!o->save) return;
    char extra[256];
    snprintf(extra, sizeof extra, "{\"epoch\": %ld, \"batch\": %ld, \"seed\": %llu}", epoch,
             batch_in_epoch, (unsigned long long)seed);
    if (trainer_save_weights(t, o->save) || trainer_save_state(t, o->state_path, extra))
        die("saving: %s", clip_error());
}

static void log_json(outputs *o, json_t *j)
{
    if (o->log) {
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
        fprintf(o->log, "%s\n", s);
        fflush(o->log);
        free(s);
    }
    json_decref(j);
}

/* A resumed run redoes the steps after its state's (those of a run killed
 * since its last save): their lines are cut from the end of the log, so that
 * each step is logged once. A line cut short by the kill goes too; the lines
 * of earlier steps, evaluations included, stay. Dies naming the log. */
static void trim_log(const char *path, long state_step)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return;
        die("%s: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    off_t pos = 0, keep = 0;
    long dropped = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        pos += len;
        json_t *j = line[len - 1] == '\n' ? json_loads(line, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
        json_t *step = json_object_get(j, "step");
        if (json_is_integer(step) && json_integer_value(step) <= state_step) {
            keep = pos;
            dropped = 0;
        } else {
            dropped++;
        }
        json_decref(j);
    }
    int bad = ferror(f);
    free(line);
    fclose(f);
    if (bad) die("%s: read error", path);
    if (!dropped) return;
    if (truncate(path, keep)) die("%s: cannot drop the lines of redone steps: %s", path, strerror(errno));
    warn("%s: dropped the last %ld line%s, of steps after %ld that this run redoes", path, dropped,
         dropped == 1 ? "" : "s", state_step);
}

static void report_eval(outputs *o, clip_model *m, const val_set *v, long step, long epoch)
{
    double t0 = now_seconds();
    json_t *r = evaluate(m, v);
    fprintf(stderr, "%s: epoch %ld eval: i2t R@1/5/10 %.2f/%.2f/%.2f  t2i %.2f/%.2f/%.2f  mean %.2f  (%d images, %.1f s)\n",
            clip_progname, epoch, json_real_value(json_object_get(r, "txt_r1")),
            json_real_value(json_object_get(r, "txt_r5")), json_real_value(json_object_get(r, "txt_r10")),
            json_real_value(json_object_get(r, "img_r1")), json_real_value(json_object_get(r, "img_r5")),
            json_real_value(json_object_get(r, "img_r10")), json_real_value(json_object_get(r, "r_mean")),
            v->n_images, now_seconds() - t0);
    log_json(o, json_pack("{s:I,s:I,s:o}", "step", (json_int_t)step, "epoch", (json_int_t)epoch,
                          "val", r));
}

static double parse_double_option(const char *opt, const char *val, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= min && v <= max))
        die("%s: '%s' is not a number in [%g, %g]", opt, val, min, max);
    return v;
}

/* a file, or shards of files (io/shards.h): random access */
static int is_regular_file(const char *path)
{
    struct stat st;
    if (stream_is_zmq(path) || !strcmp(path, "-")) return 0;
    return strchr(path, '{') || strstr(path, "::") || (stat(path, &st) == 0 && S_ISREG(st.st_mode));
}

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    blas_setup(argc, argv);
    clip_handle_signals(); /* the graceful SIGINT/SIGTERM of the training loop come later */
    enum {
        O_INIT = 256, O_TEXT, O_ARCH, O_RESUME, O_TRAIN, O_VAL, O_EVAL0, O_EPOCHS, O_STEPS,
        O_NOSHUF, O_NOAUG, O_CAPTION, O_SEED, O_LR, O_WARMUP, O_SCHED, O_MINLR, O_WD, O_WDALL,
        O_B1, O_B2, O_EPS, O_CLIP, O_AMP, O_SAVE, O_SAVE_EVERY, O_LOG, O_PROGRESS, O_QUIET,
        O_DEVICE, O_IDEV, O_TDEV, O_STOP_AFTER, O_POSIDS
    };
    static const struct option opts[] = {
        {"init", 1, 0, O_INIT},        {"text-model", 1, 0, O_TEXT},  {"arch", 1, 0, O_ARCH},
        {"resume", 0, 0, O_RESUME},    {"train", 1, 0, O_TRAIN},      {"val", 1, 0, O_VAL},
        {"eval-at-start", 0, 0, O_EVAL0}, {"batch-size", 1, 0, 'b'},  {"epochs", 1, 0, O_EPOCHS},
        {"steps", 1, 0, O_STEPS},      {"no-shuffle", 0, 0, O_NOSHUF}, {"no-augment", 0, 0, O_NOAUG},
        {"caption", 1, 0, O_CAPTION},  {"seed", 1, 0, O_SEED},        {"lr", 1, 0, O_LR},
        {"warmup", 1, 0, O_WARMUP},    {"schedule", 1, 0, O_SCHED},   {"min-lr-ratio", 1, 0, O_MINLR},
        {"wd", 1, 0, O_WD},            {"wd-all", 0, 0, O_WDALL},     {"beta1", 1, 0, O_B1},
        {"beta2", 1, 0, O_B2},         {"eps", 1, 0, O_EPS},          {"grad-clip", 1, 0, O_CLIP},
        {"amp", 0, 0, O_AMP},          {"save", 1, 0, O_SAVE},        {"save-every", 1, 0, O_SAVE_EVERY},
        {"log", 1, 0, O_LOG},          {"progress", 0, 0, O_PROGRESS}, {"quiet", 0, 0, O_QUIET},
        {"device", 1, 0, O_DEVICE},    {"image-device", 1, 0, O_IDEV}, {"text-device", 1, 0, O_TDEV},
        {"stop-after", 1, 0, O_STOP_AFTER}, {"position-ids", 0, 0, O_POSIDS}, {"threads", 1, 0, 't'},        {"help", 0, 0, 'h'},           {0, 0, 0, 0}};
    const char *init = NULL, *text_dir = NULL, *arch_spec = NULL, *train_path = NULL,
               *val_path = NULL;
    const char *image_device = "cpu", *text_device = "cpu";
    int resume = 0, eval0 = 0, batch = 32, shuffle = 1, augment = 1, first_caption = 0;
    int position_ids = 0;
    int show_progress = isatty(2);
    long epochs = 1, max_steps = 0, stop_after = 0;
    uint64_t seed = 0;
    train_config cfg;
    train_config_defaults(&cfg);
    outputs out = {0};
    int c;
    while ((c = getopt_long(argc, argv, "b:t:h", opts, NULL)) != -1) {
        switch (c) {
        case O_INIT: init = optarg; break;
        case O_TEXT: text_dir = optarg; break;
        case O_ARCH: arch_spec = optarg; break;
        case O_POSIDS: position_ids = 1; break;
        case O_RESUME: resume = 1; break;
        case O_TRAIN: train_path = optarg; break;
        case O_VAL: val_path = optarg; break;
        case O_EVAL0: eval0 = 1; break;
        case 'b': batch = (int)parse_long_option("--batch-size", optarg, 2, 1 << 16); break;
        case O_EPOCHS: epochs = parse_long_option("--epochs", optarg, 1, 1L << 30); break;
        case O_STEPS: max_steps = parse_long_option("--steps", optarg, 1, 1L << 40); break;
        case O_NOSHUF: shuffle = 0; break;
        case O_NOAUG: augment = 0; break;
        case O_CAPTION:
            if (!strcmp(optarg, "first")) first_caption = 1;
            else if (!strcmp(optarg, "random")) first_caption = 0;
            else die("--caption: expected random or first, not '%s'", optarg);
            break;
        case O_SEED: seed = (uint64_t)parse_long_option("--seed", optarg, 0, (1L << 62)); break;
        case O_LR: cfg.lr = parse_double_option("--lr", optarg, 0, 10); break;
        case O_WARMUP: cfg.warmup = parse_long_option("--warmup", optarg, 0, 1L << 40); break;
        case O_SCHED:
            if (!strcmp(optarg, "cosine")) cfg.schedule = SCHEDULE_COSINE;
            else if (!strcmp(optarg, "constant")) cfg.schedule = SCHEDULE_CONSTANT;
            else die("--schedule: expected cosine or constant, not '%s'", optarg);
            break;
        case O_MINLR: cfg.min_lr_ratio = parse_double_option("--min-lr-ratio", optarg, 0, 1); break;
        case O_WD: cfg.weight_decay = parse_double_option("--wd", optarg, 0, 10); break;
        case O_WDALL: cfg.wd_all = 1; break;
        case O_B1: cfg.adam.beta1 = (float)parse_double_option("--beta1", optarg, 0, 0.999999); break;
        case O_B2: cfg.adam.beta2 = (float)parse_double_option("--beta2", optarg, 0, 0.999999); break;
        case O_EPS: cfg.adam.eps = (float)parse_double_option("--eps", optarg, 0, 1); break;
        case O_CLIP: cfg.grad_clip = parse_double_option("--grad-clip", optarg, 0, 1e30); break;
        case O_AMP: cfg.amp = 1; break;
        case O_SAVE: out.save = optarg; break;
        case O_SAVE_EVERY: out.save_every = parse_long_option("--save-every", optarg, 1, 1L << 40); break;
        case O_LOG: out.log_path = optarg; break;
        case O_STOP_AFTER: stop_after = parse_long_option("--stop-after", optarg, 1, 1L << 40); break;
        case O_PROGRESS: show_progress = 1; break;
        case O_QUIET: show_progress = 0; break;
        case O_DEVICE: image_device = text_device = optarg; break;
        case O_IDEV: image_device = optarg; break;
        case O_TDEV: text_device = optarg; break;
        case 't': blas_set_threads((int)parse_long_option("--threads", optarg, 1, 1024)); break;
        case 'h': usage(stdout); close_stdout(); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!train_path) die("no training data: --train FILE.tar or a stream (see --help)");
    if (resume && !out.save) die("--resume continues from the --save file's state: give --save FILE");
    if (out.save) snprintf(out.state_path, sizeof out.state_path, "%s.state", out.save);
    int resuming = resume && access(out.state_path, R_OK) == 0;
    if (resume && !resuming) warn("--resume: no %s yet, starting from the beginning", out.state_path);
    if (!resuming && !init && !arch_spec)
        die("no model: --init CKPT [--text-model DIR] or --arch SPEC (see --help)");
    if (init && arch_spec) die("--init and --arch exclude each other");
    if (position_ids && !arch_spec)
        die("--position-ids goes with --arch: from --init the saved checkpoint has BERT's "
            "position_ids buffer exactly when the init has it");
    train_arch arch;
    if (arch_spec && train_arch_parse(arch_spec, &arch)) die("%s", clip_error());
    if (arch_spec) arch.bert.position_ids = position_ids;
    const clip_device *idev = device_find(image_device, "image"),
                      *tdev = idev ? device_find(text_device, "text") : NULL;
    if (!idev || !tdev) die("%s", clip_error());
    if (image_init(argv[0])) die("%s", clip_error());

    /* data */
    loader d = {.path = train_path, .augment = augment, .first_caption = first_caption, .seed = seed};
    sample first;
    sample_init(&first);
    if (is_regular_file(train_path)) {
        if (!(d.file = sample_file_open(train_path))) die("%s", clip_error());
        d.n = sample_file_count(d.file);
        if (d.n < (size_t)batch)
            die("%s: %zu samples, fewer than one batch of %d", train_path, d.n, batch);
        if (sample_file_read(d.file, 0, &first) < 0) die("%s: %s", train_path, clip_error());
        loader_probe(&d, &first);
    } else {
        if (!max_steps) die("--train %s is a stream: give --steps N (the schedule's length)", train_path);
        if (!(d.stream = stream_open_read(train_path))) die("%s", clip_error());
        d.buf = xcalloc(batch, sizeof *d.buf);
        for (int i = 0; i < batch; i++) sample_init(&d.buf[i]);
        int rc = stream_read(d.stream, &d.buf[0]);
        if (rc <= 0) die("%s: %s", train_path, rc < 0 ? clip_error() : "empty stream");
        loader_probe(&d, &d.buf[0]);
        d.pending = 1;
    }
    long batches_per_epoch = d.file ? (long)(d.n / batch) : max_steps;
    long total = max_steps ? max_steps : epochs * batches_per_epoch;
    if (d.file && max_steps) epochs = (max_steps + batches_per_epoch - 1) / batches_per_epoch;
    cfg.total_steps = total;

    /* model */
    trainer *t = NULL;
    long start_epoch = 0, start_batch = 0;
    int max_len = d.len;
    val_set val = {0};
    if (resuming) {
        char *extra = NULL;
        /* the token length of the model's activations comes from the data */
        if (!(t = trainer_load_state(out.state_path, &cfg, batch, max_len, &extra)))
            die("%s", clip_error());
        json_t *j = json_loads(extra, 0, NULL);
        start_epoch = (long)json_integer_value(json_object_get(j, "epoch"));
        start_batch = (long)json_integer_value(json_object_get(j, "batch"));
        json_decref(j);
        free(extra);
        fprintf(stderr, "%s: resuming %s at step %ld (epoch %ld, batch %ld)\n", clip_progname,
                out.state_path, trainer_step_count(t), start_epoch + 1, start_batch);
    } else {
        clip_model *m;
        if (arch_spec) {
            m = train_model_create(&arch, seed);
        } else if (!(m = train_model_load(init, text_dir))) {
            die("%s", clip_error());
        }
        if (!(t = trainer_create(m, &cfg, batch, max_len))) die("%s", clip_error());
    }
    trainer_set_devices(t, idev, tdev);
    clip_model *m = trainer_model(t);
    for (int i = 0; i < m->n_warnings; i++) warn("%s", m->warnings[i]);
    d.res = clip_image_resolution(m);
    {
        int max_pos;
        clip_text_limits(m, &d.vocab, &max_pos);
        if (d.len > max_pos)
            die("%s: captions of %d tokens, more than the text tower's %d positions", train_path,
                d.len, max_pos);
    }
    if (val_path) val_load(&val, val_path, d.res);
    d.order = xmalloc((d.n ? d.n : 1) * sizeof *d.order);
    if (!d.buf) {
        d.buf = xcalloc(batch, sizeof *d.buf);
        for (int i = 0; i < batch; i++) sample_init(&d.buf[i]);
    }
    d.pixels = clip_alloc_big((size_t)batch * d.res * d.res * 3);
    d.ids = xmalloc((size_t)batch * d.len * sizeof *d.ids);

    if (out.log_path && resuming) trim_log(out.log_path, trainer_step_count(t));
    if (out.log_path && !(out.log = fopen(out.log_path, resuming ? "a" : "w")))
        die("%s: %s", out.log_path, strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    const vit_config *vc = &m->visual->cfg;
    int english = m->text == CLIP_TEXT_CLIP; /* the tower the checkpoint (or --arch) has */
    fprintf(stderr,
            "%s: ViT %dx%d patch %d @%d, %s %dx%d (%d heads), dim %d; %s%zu samples, batch %d, "
            "%ld steps, lr %g (%s, warm-up %ld)%s; %s\n",
            clip_progname, vc->width, vc->layers, vc->patch, vc->resolution,
            english ? "CLIP text" : "BERT", english ? m->ctext->cfg.width : m->bert->cfg.hidden,
            english ? m->ctext->cfg.layers : m->bert->cfg.layers,
            english ? m->ctext->cfg.heads : m->bert->cfg.heads, m->embed_dim, d.file ? "" : "stream, ", d.n, batch, total, cfg.lr,
            cfg.schedule == SCHEDULE_COSINE ? "cosine" : "constant", cfg.warmup,
            cfg.amp ? ", amp bf16" : "", blas_describe());
    if (val_path && eval0 && !resuming) report_eval(&out, m, &val, 0, 0);

    double t_start = now_seconds();
    long step = trainer_step_count(t), step0 = step;
    long pos_epoch = start_epoch, pos_batch = start_batch; /* the next batch */
    int stopped = 0, ended = 0;
    for (long epoch = start_epoch; epoch < epochs && step < total && !stopped && !ended; epoch++) {
        if (d.file) loader_epoch(&d, epoch, shuffle);
        double loss_sum = 0;
        long loss_n = 0;
        for (long b = epoch == start_epoch ? start_batch : 0; b < batches_per_epoch && step < total;
             b++) {
            double t0 = now_seconds();
            int got = loader_batch(&d, epoch, b, batch);
            if (got < batch) {
                warn("%s: the stream ended after %ld steps%s", train_path, step,
                     got ? " (its last samples, less than a batch, are left out)" : "");
                ended = 1;
                break;
            }
            train_stats st;
            int rc = trainer_step(t, d.pixels, d.ids, batch, d.len, &st);
            if (rc < 0) die("step %ld (epoch %ld): %s", step + 1, epoch + 1, clip_error());
            if (rc == 1) {
                save_all(t, &out, pos_epoch, pos_batch, seed);
                die("step %ld (epoch %ld): the %s is %s; stopped%s%s (the weights before this step)",
                    step + 1, epoch + 1, isfinite(st.loss) ? "gradient" : "loss",
                    isnan(st.loss) || isnan(st.grad_norm) ? "NaN" : "infinite",
                    out.save ? ", saved to " : ", nothing saved (no --save)", out.save ? out.save : "");
            }
            step++;
            pos_epoch = b + 1 < batches_per_epoch ? epoch : epoch + 1;
            pos_batch = b + 1 < batches_per_epoch ? b + 1 : 0;
            double dt = now_seconds() - t0, el = now_seconds() - t_start;
            loss_sum += st.loss;
            loss_n++;
            log_json(&out, json_pack("{s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "step",
                                     (json_int_t)step, "epoch", (json_int_t)epoch + 1, "loss",
                                     st.loss, "lr", st.lr, "logit_scale", st.logit_scale,
                                     "grad_norm", st.grad_norm, "acc_i2t", st.acc_i2t, "time", el,
                                     "step_time", dt, "image_time", st.sec_image, "text_time",
                                     st.sec_text, "optim_time", st.sec_optim));
            if (show_progress)
                fprintf(stderr, "\r%s: epoch %ld/%ld step %ld/%ld loss %.4f lr %.3g scale %.2f  %.2f s/step ETA %.0f s   ",
                        clip_progname, epoch + 1, epochs, step, total, st.loss, st.lr,
                        exp(st.logit_scale), dt, el / (step - step0) * (total - step));
            if (out.save_every && step % out.save_every == 0) save_all(t, &out, pos_epoch, pos_batch, seed);
            if (stop_signal || (stop_after && step - step0 >= stop_after)) {
                stopped = 1;
                break;
            }
        }
        if (show_progress) fputc('\n', stderr);
        if (stopped || ended) break;
        fprintf(stderr, "%s: epoch %ld/%ld done: step %ld, mean loss %.4f, %.1f s\n", clip_progname,
                epoch + 1, epochs, step, loss_n ? loss_sum / loss_n : NAN, now_seconds() - t_start);
        if (pos_batch == 0) {
            save_all(t, &out, pos_epoch, pos_batch, seed);
            if (val_path) report_eval(&out, m, &val, step, epoch + 1);
        }
    }
    if (pos_batch != 0 || stopped) save_all(t, &out, pos_epoch, pos_batch, seed);
    if (stop_signal) {
        fprintf(stderr, "%s: %s at step %ld: %s\n", clip_progname, strsignal(stop_signal), step,
                out.save ? "saved; the same command with --resume continues"
                         : "nothing saved (no --save)");
        run_free(&d, batch, &first, &val, t);
        return 128 + stop_signal;
    }
    if (stopped && step < total) {
        fprintf(stderr, "%s: stopped after %ld steps of this run (step %ld of %ld): %s\n",
                clip_progname, step - step0, step, total,
                out.save ? "saved; the same command with --resume continues" : "nothing saved");
        run_free(&d, batch, &first, &val, t);
        return 0;
    }
    if (pos_batch != 0 && val_path) report_eval(&out, m, &val, step, pos_epoch + 1);
    if (out.log && (ferror(out.log) | fclose(out.log)))
        die("%s: write failed: %s", out.log_path, errno ? strerror(errno) : "I/O error");
    if (out.save) fprintf(stderr, "%s: saved %s\n", clip_progname, out.save);
    run_free(&d, batch, &first, &val, t);
    close_stdout();
    return 0;
}
