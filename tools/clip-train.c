/* clip-train: contrastive training and fine-tuning of the joint model on
 * samples with img.npy and tok.npy, in one process or as the ranks of
 * mpirun. The data loader, the step's stages and the evaluation are
 * lib/train's; this is the options and the loop. See clip-train(1). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdnoreturn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "core/util.h"
#include "io/image.h"
#include "kernels/blas.h"
#include "model/device.h"
#include "search/recall.h"
#include "train/dist.h"
#include "train/eval.h"
#include "train/feature_cache.h"
#include "train/loader.h"
#include "train/train.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s (--init CKPT [--text-model DIR] | --arch SPEC) --train DATA [options]\n"
            "       mpirun -np N %s ... (data-parallel: N ranks, each -b samples a step)\n"
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
            "      --lock-image         freeze the image tower: no gradient, no AdamW state, no\n"
            "                           backward (--freeze-vision: the same)\n"
            "      --lock-image-unlocked-groups N  but its last N groups (open_clip's: 1 proj,\n"
            "                           2 + the last block and ln_post, ...); implies --lock-image\n"
            "      --lock-text          freeze the whole text tower, ln_final/text_projection too\n"
            "      --lock-text-unlocked-layers N  but its last N layers and the head; implies\n"
            "                           --lock-text (see clip-train(1) for open_clip's difference)\n"
            "      --feature-cache FILE the features of a tower locked whole (--lock-image needs\n"
            "                           --no-augment), computed once: read from FILE, or computed\n"
            "                           and written there (delete it after changing the model or\n"
            "                           data); without it they are cached in memory\n"
            "      --no-feature-cache   recompute a locked tower's features every step\n"
            "Data:\n"
            "      --train DATA         FILE.tar or shards ('train-{000..015}.tar'; random access,\n"
            "                           shuffled each epoch) or a stream (-, tcp://..., ipc://...:\n"
            "                           read once, in order; needs --steps)\n"
            "      --val FILE.tar       evaluation samples: recall after every epoch\n"
            "      --eval-at-start      evaluate once before training too\n"
            "  -b, --batch-size N       samples per step and process (default 32); the global\n"
            "                           batch is N x ranks x --accum-freq\n"
            "      --accum-freq K       K micro-batches of -b per step, their features in one loss\n"
            "                           (default 1)\n"
            "      --epochs N           passes over a FILE.tar (default 1)\n"
            "      --steps N            stop after N steps in all (the schedule's length)\n"
            "      --no-shuffle         keep the file order\n"
            "      --no-augment         no random resized crop / flip\n"
            "      --mask-ratio X       patch dropout: each training image keeps a random 1 - X of\n"
            "                           its patch tokens (0 <= X < 1, default 0; seeded by --seed,\n"
            "                           the step and its place in the batch); evaluation uses all\n"
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
            "      --grad-checkpointing keep only each block's input, recompute the block in the\n"
            "                           backward: the same gradients, about a quarter of the\n"
            "                           activation memory, one more forward a step\n"
            "      --check-sync N       under mpirun: compare the ranks' weights every N steps\n"
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
            clip_progname, clip_progname);
}

/* ---- the run */

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

typedef struct {
    const char *save, *log_path;
    FILE *log;
    char state_path[4096];
    long save_every;
    train_comm *comm; /* NULL: one process */
    int rank;         /* only rank 0 writes */
} outputs;

/* the maximum of x over the ranks: their agreement (a barrier too) */
static double agree_max(outputs *o, double x)
{
    if (o->comm && o->comm->allreduce_f64(o->comm, &x, 1, COMM_MAX))
        die("%s", clip_error());
    return x;
}

/* an error every rank found alike: rank 0 says it, the others leave quietly */
static noreturn void die_agreed(int rank, const char *msg)
{
    if (rank) exit(1);
    die("%s", msg);
}

/* dies unless x is the same on every rank (a collective of every rank) */
static void same_on_ranks(outputs *o, double x, const char *what)
{
    double hi = agree_max(o, x), lo = -agree_max(o, -x);
    char msg[256];
    snprintf(msg, sizeof msg, "%s differs between the ranks (from %g to %g): run every rank "
             "with the same options and data", what, lo, hi);
    if (hi != lo) die_agreed(o->rank, msg);
}

static void save_all(trainer *t, const outputs *o, long epoch, long batch_in_epoch, uint64_t seed,
                     int global_batch)
{
    if (!o->save || o->rank) return;
    char extra[256];
    snprintf(extra, sizeof extra, "{\"epoch\": %ld, \"batch\": %ld, \"seed\": %llu, "
             "\"global_batch\": %d}", epoch, batch_in_epoch, (unsigned long long)seed, global_batch);
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

/* every rank encodes its slice of the set; rank 0 ranks and reports */
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
    recall_set set = {.n_images = v->n_images, .n_texts = v->n_texts, .dim = m->embed_dim};
    set.img = xmalloc((size_t)v->n_images * set.dim * sizeof(float));
    set.txt = xmalloc((size_t)v->n_texts * set.dim * sizeof(float));
    set.txt_off = xmalloc((v->n_images + 1) * sizeof(int64_t));
    memcpy(set.txt_off, v->txt_off, (v->n_images + 1) * sizeof(int64_t));
    if (val_set_encode(m, v, o->comm, set.img, set.txt)) die("evaluation: %s", clip_error());
    if (o->rank) {
        recall_set_free(&set);
        return;
    }
    int64_t *ir = xmalloc(v->n_images * sizeof *ir), *tr = xmalloc(v->n_texts * sizeof *tr);
    recall_ranks(&set, 0, 0, ir, tr);
    recall_metrics rm;
    recall_summarize(&set, ir, tr, &rm);
    free(ir);
    free(tr);
    recall_set_free(&set);
    json_t *r = recall_metrics_json(&rm);
    fprintf(stderr, "%s: epoch %ld eval: i2t R@1/5/10 %.2f/%.2f/%.2f  t2i %.2f/%.2f/%.2f  mean %.2f  (%d images, %.1f s)\n",
            clip_progname, epoch, rm.txt_r[0], rm.txt_r[1], rm.txt_r[2], rm.img_r[0], rm.img_r[1],
            rm.img_r[2], rm.r_mean, v->n_images, now_seconds() - t0);
    log_json(o, json_pack("{s:I,s:I,s:o}", "step", (json_int_t)step, "epoch", (json_int_t)epoch,
                          "val", r));
}

/* --mask-ratio: in [0, 1), else a usage error */
static double parse_mask_ratio(const char *val)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= 0 && v < 1))
        usage_error("--mask-ratio: '%s' is not a number in [0, 1) (the share of patches each "
                    "image drops, e.g. 0.5)", val);
    return v;
}

/* what main holds, at each exit through main (make check-asan finds any leak there) */
/* a locked tower's features, computed once (train/feature_cache.h) */
typedef struct {
    feature_cache *fc;
    float *buf[2]; /* [slots, D] the step's, per cached tower */
} cached;

static void progress_line(size_t done, size_t n, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "\r%s: features of %zu/%zu samples   ", clip_progname, done, n);
    if (done == n) fputc('\n', stderr);
}

/* --feature-cache where it cannot apply: a usage error, before anything loads */
static void check_cache_options(const char *path, int off, const train_config *cfg,
                                const loader_config *lc)
{
    int img = cfg->lock_image && !cfg->lock_image_unlocked_groups;
    int txt = cfg->lock_text && !cfg->lock_text_unlocked_layers;
    if (!path) return;
    if (off) usage_error("--feature-cache and --no-feature-cache exclude each other");
    if (img && lc->augment)
        usage_error("--feature-cache: the locked image tower sees another random crop every "
                    "epoch, its features are not fixed: add --no-augment");
    if (img && cfg->mask_ratio > 0)
        usage_error("--feature-cache: the locked image tower keeps other patches every step "
                    "(--mask-ratio), its features are not fixed");
    if (!img && !txt)
        usage_error("--feature-cache: no tower is locked whole (--lock-image with no unlocked "
                    "groups and --no-augment, or --lock-text with no unlocked layers)");
}

/* The cache of the towers that are locked whole and whose input is fixed
 * (the image's: without augmentation or patch dropout), unless --no-feature-cache; none for
 * a stream. Rank 0 computes and writes --feature-cache FILE, the others
 * read it. */
static void open_cache(cached *c, const char *path, int off, trainer *t, train_loader *d,
                       const loader_config *lc, double mask_ratio, int slots, int progress,
                       outputs *o)
{
    int img = trainer_tower_locked(t, TRAIN_IMAGE) && !lc->augment && !(mask_ratio > 0);
    int txt = trainer_tower_locked(t, TRAIN_TEXT);
    memset(c, 0, sizeof *c);
    if (off || loader_is_stream(d) || (!img && !txt)) return;
    int write = o->rank == 0;
    if (o->comm && path) { /* rank 0 first; then the others read its file */
        if (!o->rank) c->fc = feature_cache_open(path, t, d, img, txt, 1, progress ? progress_line : NULL, NULL);
        if (agree_max(o, !o->rank && !c->fc)) die_agreed(o->rank, clip_error());
        write = 0;
    }
    if (!c->fc && !(c->fc = feature_cache_open(path, t, d, img, txt, write,
                                               progress && !o->rank ? progress_line : NULL, NULL)))
        die("%s", clip_error());
    size_t D = trainer_model(t)->embed_dim;
    for (int w = 0; w < 2; w++)
        if ((w ? txt : img)) c->buf[w] = xmalloc((size_t)slots * D * sizeof(float));
    if (img) loader_skip_pixels(d, 1);
    if (!o->rank)
        fprintf(stderr, "%s: cached the %s features of %zu samples%s%s\n", clip_progname,
                img && txt ? "image and text" : img ? "image" : "text", loader_count(d),
                path ? " in " : " (in memory)", path ? path : "");
}

static void run_free(train_loader *d, val_set *val, trainer *t, train_comm *comm, cached *c)
{
    feature_cache_free(c->fc);
    free(c->buf[0]);
    free(c->buf[1]);
    loader_close(d);
    val_set_free(val);
    trainer_free(t);
    dist_close(comm);
}

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    blas_setup(argc, argv); /* may exec the program again: before MPI starts */
    clip_handle_signals(); /* the graceful SIGINT/SIGTERM of the training loop come later */
    train_comm *comm = NULL;
    if (dist_launched() && !(comm = dist_open(&argc, &argv))) die("%s", clip_error());
    int rank = comm ? comm->rank : 0, ranks = comm ? comm->size : 1;
    char progname[64];
    if (rank) { /* the other ranks' messages say whose they are */
        snprintf(progname, sizeof progname, "%s[rank %d]", clip_progname, rank);
        clip_progname = progname;
    }
    enum {
        O_INIT = 256, O_TEXT, O_ARCH, O_RESUME, O_TRAIN, O_VAL, O_EVAL0, O_EPOCHS, O_STEPS,
        O_NOSHUF, O_NOAUG, O_CAPTION, O_SEED, O_LR, O_WARMUP, O_SCHED, O_MINLR, O_WD, O_WDALL,
        O_B1, O_B2, O_EPS, O_CLIP, O_AMP, O_SAVE, O_SAVE_EVERY, O_LOG, O_PROGRESS, O_QUIET,
        O_DEVICE, O_IDEV, O_TDEV, O_STOP_AFTER, O_POSIDS, O_ACCUM, O_SYNC, O_GCKPT, O_MASK,
        O_LOCK_IMG, O_LOCK_IMG_N, O_LOCK_TXT, O_LOCK_TXT_N, O_FCACHE, O_NO_FCACHE
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
        {"stop-after", 1, 0, O_STOP_AFTER}, {"position-ids", 0, 0, O_POSIDS}, {"threads", 1, 0, 't'},
        {"accum-freq", 1, 0, O_ACCUM}, {"check-sync", 1, 0, O_SYNC},  {"help", 0, 0, 'h'},
        {"grad-checkpointing", 0, 0, O_GCKPT},
        {"mask-ratio", 1, 0, O_MASK},
        {"lock-image", 0, 0, O_LOCK_IMG}, {"freeze-vision", 0, 0, O_LOCK_IMG},
        {"lock-image-unlocked-groups", 1, 0, O_LOCK_IMG_N}, {"lock-text", 0, 0, O_LOCK_TXT},
        {"lock-text-unlocked-layers", 1, 0, O_LOCK_TXT_N}, {"feature-cache", 1, 0, O_FCACHE},
        {"no-feature-cache", 0, 0, O_NO_FCACHE},
        {0, 0, 0, 0}};
    const char *init = NULL, *text_dir = NULL, *arch_spec = NULL, *train_path = NULL,
               *val_path = NULL;
    const char *image_device = "cpu", *text_device = "cpu";
    int resume = 0, eval0 = 0, position_ids = 0, show_progress = isatty(2), no_fcache = 0;
    const char *fcache_path = NULL;
    long epochs = 1, max_steps = 0, stop_after = 0, check_sync = 0;
    loader_config lc = {.shuffle = 1, .augment = 1, .rank = rank, .ranks = ranks, .accum = 1,
                        .micro = 32};
    train_config cfg;
    train_config_defaults(&cfg);
    outputs out = {.comm = comm, .rank = rank};
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
        case 'b': lc.micro = (int)parse_long_option("--batch-size", optarg, ranks > 1 ? 1 : 2, 1 << 16); break;
        case O_ACCUM: lc.accum = cfg.accum_freq = (int)parse_long_option("--accum-freq", optarg, 1, 1 << 12); break;
        case O_SYNC: check_sync = parse_long_option("--check-sync", optarg, 1, 1L << 40); break;
        case O_EPOCHS: epochs = parse_long_option("--epochs", optarg, 1, 1L << 30); break;
        case O_STEPS: max_steps = parse_long_option("--steps", optarg, 1, 1L << 40); break;
        case O_NOSHUF: lc.shuffle = 0; break;
        case O_NOAUG: lc.augment = 0; break;
        case O_MASK: cfg.mask_ratio = parse_mask_ratio(optarg); break;
        case O_CAPTION:
            if (!strcmp(optarg, "first")) lc.first_caption = 1;
            else if (!strcmp(optarg, "random")) lc.first_caption = 0;
            else die("--caption: expected random or first, not '%s'", optarg);
            break;
        case O_SEED: lc.seed = (uint64_t)parse_long_option("--seed", optarg, 0, (1L << 62)); break;
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
        case O_GCKPT: cfg.grad_checkpointing = 1; break;
        case O_LOCK_IMG: cfg.lock_image = 1; break;
        case O_LOCK_IMG_N:
            cfg.lock_image = 1;
            cfg.lock_image_unlocked_groups =
                (int)parse_long_option("--lock-image-unlocked-groups", optarg, 0, 1 << 20);
            break;
        case O_LOCK_TXT: cfg.lock_text = 1; break;
        case O_FCACHE: fcache_path = optarg; break;
        case O_NO_FCACHE: no_fcache = 1; break;
        case O_LOCK_TXT_N:
            cfg.lock_text = 1;
            cfg.lock_text_unlocked_layers =
                (int)parse_long_option("--lock-text-unlocked-layers", optarg, 0, 1 << 20);
            break;
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
    cfg.mask_seed = lc.seed;
    check_cache_options(fcache_path, no_fcache, &cfg, &lc);
    if (!train_path) die("no training data: --train FILE.tar or a stream (see --help)");
    if (resume && !out.save) die("--resume continues from the --save file's state: give --save FILE");
    if (out.save) snprintf(out.state_path, sizeof out.state_path, "%s.state", out.save);
    /* every rank reads the state (rank 0 wrote it): a file system they share */
    int resuming = resume && access(out.state_path, R_OK) == 0;
    if (resume && !resuming && !rank) warn("--resume: no %s yet, starting from the beginning", out.state_path);
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
    train_loader *d = loader_open(train_path, &lc);
    if (!d) die("%s", clip_error());
    if (loader_is_stream(d) && !max_steps)
        die("--train %s is a stream: give --steps N (the schedule's length)", train_path);
    if (loader_is_stream(d) && fcache_path)
        usage_error("--feature-cache: --train %s is a stream, read once: nothing to reuse",
                    train_path);
    int slots = lc.accum * lc.micro, global = slots * ranks, len = loader_token_length(d);
    long batches_per_epoch = loader_is_stream(d) ? max_steps : loader_batches_per_epoch(d);
    long total = max_steps ? max_steps : epochs * batches_per_epoch;
    if (!loader_is_stream(d) && max_steps) epochs = (max_steps + batches_per_epoch - 1) / batches_per_epoch;
    cfg.total_steps = total;
    same_on_ranks(&out, (double)total, "the number of steps");
    same_on_ranks(&out, (double)loader_count(d), "the number of training samples");
    same_on_ranks(&out, len, "the caption length of the data");

    /* model */
    trainer *t = NULL;
    long start_epoch = 0, start_batch = 0;
    if (resuming) {
        char *extra = NULL;
        /* the token length of the model's activations comes from the data */
        if (!(t = trainer_load_state(out.state_path, &cfg, lc.micro, len, &extra)))
            die("%s", clip_error());
        json_t *j = json_loads(extra, 0, NULL);
        start_epoch = (long)json_integer_value(json_object_get(j, "epoch"));
        start_batch = (long)json_integer_value(json_object_get(j, "batch"));
        json_t *gb = json_object_get(j, "global_batch");
        long saved_global = gb ? (long)json_integer_value(gb) : lc.micro;
        json_decref(j);
        free(extra);
        if (saved_global != global)
            die("%s: saved at a global batch of %ld, this run's is %d (%d rank%s x %d x -b %d): "
                "resume with the same ranks, -b and --accum-freq", out.state_path, saved_global,
                global, ranks, ranks > 1 ? "s" : "", lc.accum, lc.micro);
        if (!rank)
            fprintf(stderr, "%s: resuming %s at step %ld (epoch %ld, batch %ld)\n", clip_progname,
                    out.state_path, trainer_step_count(t), start_epoch + 1, start_batch);
    } else {
        clip_model *m;
        if (arch_spec) {
            m = train_model_create(&arch, lc.seed);
        } else if (!(m = train_model_load(init, text_dir))) {
            die("%s", clip_error());
        }
        if (m && train_check_locks(m, &cfg)) usage_error("%s", clip_error());
        if (!(t = trainer_create(m, &cfg, lc.micro, len))) die("%s", clip_error());
    }
    if (trainer_set_comm(t, comm)) die_agreed(rank, clip_error());
    trainer_set_devices(t, idev, tdev);
    clip_model *m = trainer_model(t);
    for (int i = 0; !rank && i < m->n_warnings; i++) warn("%s", m->warnings[i]);
    {
        int vocab, max_pos;
        clip_text_limits(m, &vocab, &max_pos);
        if (len > max_pos)
            die("%s: captions of %d tokens, more than the text tower's %d positions", train_path,
                len, max_pos);
        if (loader_set_model(d, clip_image_resolution(m), vocab)) die("%s", clip_error());
    }
    val_set val = {0};
    if (val_path && val_set_load(&val, val_path, clip_image_resolution(m))) die("%s", clip_error());

    if (!rank && out.log_path && resuming) trim_log(out.log_path, trainer_step_count(t));
    if (!rank && out.log_path && !(out.log = fopen(out.log_path, resuming ? "a" : "w")))
        die("%s: %s", out.log_path, strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    const vit_config *vc = &m->visual->cfg;
    int english = m->text == CLIP_TEXT_CLIP; /* the tower the checkpoint (or --arch) has */
    char batch_desc[96] = "";
    if (ranks > 1 || lc.accum > 1)
        snprintf(batch_desc, sizeof batch_desc, " (%d rank%s x %d micro-batch%s x %d)", ranks,
                 ranks > 1 ? "s" : "", lc.accum, lc.accum > 1 ? "es" : "", lc.micro);
    if (!rank)
        fprintf(stderr,
                "%s: ViT %dx%d patch %d @%d, %s %dx%d (%d heads), dim %d; %s%zu samples, batch "
                "%d%s, %ld steps, lr %g (%s, warm-up %ld)%s; %s\n",
                clip_progname, vc->width, vc->layers, vc->patch, vc->resolution,
                english ? "CLIP text" : "BERT", english ? m->ctext->cfg.width : m->bert->cfg.hidden,
                english ? m->ctext->cfg.layers : m->bert->cfg.layers,
                english ? m->ctext->cfg.heads : m->bert->cfg.heads, m->embed_dim, loader_is_stream(d) ? "stream, " : "",
                loader_count(d), global, batch_desc, total, cfg.lr,
                cfg.schedule == SCHEDULE_COSINE ? "cosine" : "constant", cfg.warmup,
                cfg.amp ? ", amp bf16" : "", blas_describe());
    if (!rank) {
        train_memory mem;
        trainer_memory(t, &mem);
        fprintf(stderr, "%s: memory: activations %.1f MiB%s, backward scratch %.1f MiB, weights "
                "+ gradients + AdamW %.1f MiB (micro-batch %d x %d tokens)\n", clip_progname,
                mem.activations / 1048576.0,
                cfg.grad_checkpointing ? " (gradient checkpointing: block inputs)" : "",
                mem.backward / 1048576.0, mem.weights / 1048576.0, lc.micro, len);
    }
    if (!rank && cfg.mask_ratio > 0)
        fprintf(stderr, "%s: patch dropout: each training image keeps %d of its %d patches "
                "(--mask-ratio %g)\n", clip_progname, trainer_mask_keep(t), vc->grid * vc->grid,
                cfg.mask_ratio);
    if (!rank && (cfg.lock_image || cfg.lock_text)) {
        size_t trainable, all;
        trainer_param_counts(t, &trainable, &all);
        fprintf(stderr, "%s: locked:%s%s; training %zu of %zu parameters\n", clip_progname,
                cfg.lock_image ? " the image tower" : "", cfg.lock_text
                    ? (cfg.lock_image ? " and the text tower" : " the text tower") : "",
                trainable, all);
    }
    cached cache;
    open_cache(&cache, fcache_path, no_fcache, t, d, &lc, cfg.mask_ratio, slots, show_progress, &out);
    if (val_path && eval0 && !resuming) report_eval(&out, m, &val, 0, 0);

    double t_start = now_seconds();
    long step = trainer_step_count(t), step0 = step;
    long pos_epoch = start_epoch, pos_batch = start_batch; /* the next batch */
    int stopped = 0, ended = 0;
    for (long epoch = start_epoch; epoch < epochs && step < total && !stopped && !ended; epoch++) {
        if (!loader_is_stream(d)) loader_epoch(d, epoch);
        double loss_sum = 0;
        long loss_n = 0;
        for (long b = epoch == start_epoch ? start_batch : 0; b < batches_per_epoch && step < total;
             b++) {
            double t0 = now_seconds();
            int got = loader_batch(d, epoch, b);
            if (got < 0) die("%s", clip_error());
            if (agree_max(&out, got < slots)) { /* a stream ended, here or on another rank */
                if (!rank)
                    warn("%s: the stream ended after %ld steps%s", train_path, step,
                         got ? " (its last samples, less than a batch, are left out)" : "");
                ended = 1;
                break;
            }
            train_stats st;
            uint64_t reduced = comm ? comm->stats.bytes_allreduced : 0;
            train_batch tb = {loader_pixels(d), loader_ids(d), slots, len, {NULL, NULL}};
            if (cache.fc) {
                feature_cache_batch(cache.fc, d, slots, cache.buf);
                tb.features[0] = cache.buf[0], tb.features[1] = cache.buf[1];
            }
            int rc = trainer_step_batch(t, &tb, &st);
            if (comm) reduced = comm->stats.bytes_allreduced - reduced;
            if (rc < 0) die("step %ld (epoch %ld): %s", step + 1, epoch + 1, clip_error());
            if (rc == 1) {
                save_all(t, &out, pos_epoch, pos_batch, lc.seed, global);
                agree_max(&out, 0); /* the save is done before any rank exits */
                if (rank) exit(1);  /* every rank saw the same loss: rank 0 says it */
                die("step %ld (epoch %ld): the %s is %s; stopped%s%s (the weights before this step)",
                    step + 1, epoch + 1, isfinite(st.loss) ? "gradient" : "loss",
                    isnan(st.loss) || isnan(st.grad_norm) ? "NaN" : "infinite",
                    out.save ? ", saved to " : ", nothing saved (no --save)", out.save ? out.save : "");
            }
            step++;
            pos_epoch = b + 1 < batches_per_epoch ? epoch : epoch + 1;
            pos_batch = b + 1 < batches_per_epoch ? b + 1 : 0;
            if (check_sync && step % check_sync == 0 && trainer_check_sync(t))
                die_agreed(rank, clip_error());
            double dt = now_seconds() - t0, el = now_seconds() - t_start;
            loss_sum += st.loss;
            loss_n++;
            log_json(&out, json_pack("{s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:f,s:I}",
                                     "step", (json_int_t)step, "epoch", (json_int_t)epoch + 1,
                                     "loss", st.loss, "lr", st.lr, "logit_scale", st.logit_scale,
                                     "grad_norm", st.grad_norm, "acc_i2t", st.acc_i2t, "time", el,
                                     "step_time", dt, "image_time", st.sec_image, "text_time",
                                     st.sec_text, "optim_time", st.sec_optim, "global_batch",
                                     (json_int_t)global, "comm_time", st.sec_comm,
                                     "allreduce_bytes", (json_int_t)reduced));
            if (show_progress && !rank)
                fprintf(stderr, "\r%s: epoch %ld/%ld step %ld/%ld loss %.4f lr %.3g scale %.2f  %.2f s/step ETA %.0f s   ",
                        clip_progname, epoch + 1, epochs, step, total, st.loss, st.lr,
                        exp(st.logit_scale), dt, el / (step - step0) * (total - step));
            if (out.save_every && step % out.save_every == 0)
                save_all(t, &out, pos_epoch, pos_batch, lc.seed, global);
            /* a signal to any rank stops all of them after the same step */
            stop_signal = (int)agree_max(&out, stop_signal);
            if (stop_signal || (stop_after && step - step0 >= stop_after)) {
                stopped = 1;
                break;
            }
        }
        if (show_progress && !rank) fputc('\n', stderr);
        if (stopped || ended) break;
        if (!rank)
            fprintf(stderr, "%s: epoch %ld/%ld done: step %ld, mean loss %.4f, %.1f s\n",
                    clip_progname, epoch + 1, epochs, step, loss_n ? loss_sum / loss_n : NAN,
                    now_seconds() - t_start);
        if (pos_batch == 0) {
            save_all(t, &out, pos_epoch, pos_batch, lc.seed, global);
            if (val_path) report_eval(&out, m, &val, step, epoch + 1);
        }
    }
    if (pos_batch != 0 || stopped) save_all(t, &out, pos_epoch, pos_batch, lc.seed, global);
    agree_max(&out, 0); /* rank 0's save is complete before any rank exits */
    if (stop_signal) {
        if (!rank)
            fprintf(stderr, "%s: %s at step %ld: %s\n", clip_progname, strsignal(stop_signal), step,
                    out.save ? "saved; the same command with --resume continues"
                             : "nothing saved (no --save)");
        run_free(d, &val, t, comm, &cache);
        return 128 + stop_signal;
    }
    if (stopped && step < total) {
        if (!rank)
            fprintf(stderr, "%s: stopped after %ld steps of this run (step %ld of %ld): %s\n",
                    clip_progname, step - step0, step, total,
                    out.save ? "saved; the same command with --resume continues" : "nothing saved");
        run_free(d, &val, t, comm, &cache);
        return 0;
    }
    if (pos_batch != 0 && val_path) report_eval(&out, m, &val, step, pos_epoch + 1);
    if (out.log && (ferror(out.log) | fclose(out.log)))
        die("%s: write failed: %s", out.log_path, errno ? strerror(errno) : "I/O error");
    if (out.save && !rank) fprintf(stderr, "%s: saved %s\n", clip_progname, out.save);
    run_free(d, &val, t, comm, &cache);
    close_stdout();
    return 0;
}
