/* clip-train: contrastive training and fine-tuning of the joint model on
 * samples with img.npy and tok.npy, in one process or as the ranks of
 * mpirun. The run (the model, the data, the loop of steps, its saves and
 * evaluations) is lib/train/run.h's; this is the options, the signals and
 * the exit status. See clip-train(1). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"
#include "core/atomic_file.h"
#include "core/util.h"
#include "kernels/blas.h"
#include "train/dist.h"
#include "train/run.h"

static const char usage[] =
    "usage: clip-train (--init CKPT [--text-model DIR] | --arch SPEC) --train DATA [options]\n"
    "       mpirun -np N clip-train ... (data-parallel: N ranks, each -b samples a step)\n"
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
    "  -h, --help               this help\n";

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* the training loop's graceful SIGINT/SIGTERM: it stops after the step (train/run.h) */
static void catch_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int main(int argc, char **argv)
{
    clip_set_progname(argv[0]);
    blas_setup(argc, argv); /* may exec the program again: before MPI starts */
    clip_handle_signals();  /* the graceful SIGINT/SIGTERM of the training loop come later */
    train_comm *comm = NULL;
    if (dist_launched() && !(comm = dist_open(&argc, &argv))) die("%s", clip_error());
    int rank = comm ? comm->rank : 0, ranks = comm ? comm->size : 1;
    char progname[64];
    if (rank) { /* the other ranks' messages say whose they are */
        snprintf(progname, sizeof progname, "%s[rank %d]", clip_progname, rank);
        clip_progname = progname;
    }
    /* clang-format off */
    enum {
        O_INIT = 256, O_TEXT, O_ARCH, O_RESUME, O_TRAIN, O_VAL, O_EVAL0, O_EPOCHS, O_STEPS,
        O_NOSHUF, O_NOAUG, O_CAPTION, O_SEED, O_LR, O_WARMUP, O_SCHED, O_MINLR, O_WD, O_WDALL,
        O_B1, O_B2, O_EPS, O_CLIP, O_AMP, O_SAVE, O_SAVE_EVERY, O_LOG, O_PROGRESS, O_QUIET,
        O_DEVICE, O_IDEV, O_TDEV, O_STOP_AFTER, O_POSIDS, O_ACCUM, O_SYNC, O_GCKPT, O_MASK,
        O_LOCK_IMG, O_LOCK_IMG_N, O_LOCK_TXT, O_LOCK_TXT_N, O_FCACHE, O_NO_FCACHE
    };
    static const struct option opts[] = {
        {"init", 1, 0, O_INIT}, {"text-model", 1, 0, O_TEXT}, {"arch", 1, 0, O_ARCH},
        {"resume", 0, 0, O_RESUME}, {"train", 1, 0, O_TRAIN}, {"val", 1, 0, O_VAL},
        {"eval-at-start", 0, 0, O_EVAL0}, {"batch-size", 1, 0, 'b'}, {"epochs", 1, 0, O_EPOCHS},
        {"steps", 1, 0, O_STEPS}, {"no-shuffle", 0, 0, O_NOSHUF}, {"no-augment", 0, 0, O_NOAUG},
        {"caption", 1, 0, O_CAPTION}, {"seed", 1, 0, O_SEED}, {"lr", 1, 0, O_LR},
        {"warmup", 1, 0, O_WARMUP}, {"schedule", 1, 0, O_SCHED}, {"min-lr-ratio", 1, 0, O_MINLR},
        {"wd", 1, 0, O_WD}, {"wd-all", 0, 0, O_WDALL}, {"beta1", 1, 0, O_B1}, {"beta2", 1, 0, O_B2},
        {"eps", 1, 0, O_EPS}, {"grad-clip", 1, 0, O_CLIP}, {"amp", 0, 0, O_AMP},
        {"save", 1, 0, O_SAVE}, {"save-every", 1, 0, O_SAVE_EVERY}, {"log", 1, 0, O_LOG},
        {"progress", 0, 0, O_PROGRESS}, {"quiet", 0, 0, O_QUIET}, {"device", 1, 0, O_DEVICE},
        {"image-device", 1, 0, O_IDEV}, {"text-device", 1, 0, O_TDEV},
        {"stop-after", 1, 0, O_STOP_AFTER}, {"position-ids", 0, 0, O_POSIDS},
        {"threads", 1, 0, 't'}, {"accum-freq", 1, 0, O_ACCUM}, {"check-sync", 1, 0, O_SYNC},
        {"help", 0, 0, 'h'}, {"grad-checkpointing", 0, 0, O_GCKPT}, {"mask-ratio", 1, 0, O_MASK},
        {"lock-image", 0, 0, O_LOCK_IMG}, {"freeze-vision", 0, 0, O_LOCK_IMG},
        {"lock-image-unlocked-groups", 1, 0, O_LOCK_IMG_N}, {"lock-text", 0, 0, O_LOCK_TXT},
        {"lock-text-unlocked-layers", 1, 0, O_LOCK_TXT_N}, {"feature-cache", 1, 0, O_FCACHE},
        {"no-feature-cache", 0, 0, O_NO_FCACHE},
        {0, 0, 0, 0}};
    /* clang-format on */
    static const char *const captions[] = {"random", "first", NULL}; /* first_caption 0, 1 */
    static const char *const schedules[] = {
        [SCHEDULE_COSINE] = "cosine", [SCHEDULE_CONSTANT] = "constant", NULL};
    const long many = 1L << 40; /* steps: no bound but sanity */
    train_run_options o;
    train_run_defaults(&o);
    o.progress = isatty(2);
    o.msg = stderr;
    o.argv0 = argv[0];
    o.stop_signal = &stop_signal;
    o.catch_signals = catch_signals;
    train_config *cfg = &o.train;
    loader_config *lc = &o.loader;
    int c;
    static const char short_opts[] = "b:t:h";
    opterr = 0; /* our own one-line message */
    while ((c = getopt_long(argc, argv, short_opts, opts, NULL)) != -1) {
        switch (c) {
        case O_INIT: o.init = optarg; break;
        case O_TEXT: o.text_dir = optarg; break;
        case O_ARCH: o.arch = optarg; break;
        case O_POSIDS: o.position_ids = 1; break;
        case O_RESUME: o.resume = 1; break;
        case O_TRAIN: o.train_path = optarg; break;
        case O_VAL: o.val_path = optarg; break;
        case O_EVAL0: o.eval_at_start = 1; break;
        case 'b':
            lc->micro = (int)parse_long_option("--batch-size", optarg, ranks > 1 ? 1 : 2, 1 << 16);
            break;
        case O_ACCUM:
            lc->accum = cfg->accum_freq =
                (int)parse_long_option("--accum-freq", optarg, 1, 1 << 12);
            break;
        case O_SYNC: o.check_sync = parse_long_option("--check-sync", optarg, 1, many); break;
        case O_EPOCHS: o.epochs = parse_long_option("--epochs", optarg, 1, 1L << 30); break;
        case O_STEPS: o.steps = parse_long_option("--steps", optarg, 1, many); break;
        case O_NOSHUF: lc->shuffle = 0; break;
        case O_NOAUG: lc->augment = 0; break;
        case O_MASK:
            cfg->mask_ratio = parse_fraction_option(
                "--mask-ratio", optarg, 0, 1, "the share of patches each image drops, e.g. 0.5");
            break;
        case O_CAPTION:
            lc->first_caption = parse_choice_option("--caption", optarg, captions);
            break;
        case O_SEED: lc->seed = (uint64_t)parse_long_option("--seed", optarg, 0, (1L << 62)); break;
        case O_LR: cfg->lr = parse_double_option("--lr", optarg, 0, 10); break;
        case O_WARMUP: cfg->warmup = parse_long_option("--warmup", optarg, 0, many); break;
        case O_SCHED: cfg->schedule = parse_choice_option("--schedule", optarg, schedules); break;
        case O_MINLR:
            cfg->min_lr_ratio = parse_double_option("--min-lr-ratio", optarg, 0, 1);
            break;
        case O_WD: cfg->weight_decay = parse_double_option("--wd", optarg, 0, 10); break;
        case O_WDALL: cfg->wd_all = 1; break;
        case O_B1:
            cfg->adam.beta1 = (float)parse_double_option("--beta1", optarg, 0, 0.999999);
            break;
        case O_B2:
            cfg->adam.beta2 = (float)parse_double_option("--beta2", optarg, 0, 0.999999);
            break;
        case O_EPS: cfg->adam.eps = (float)parse_double_option("--eps", optarg, 0, 1); break;
        case O_CLIP: cfg->grad_clip = parse_double_option("--grad-clip", optarg, 0, 1e30); break;
        case O_AMP: cfg->amp = 1; break;
        case O_GCKPT: cfg->grad_checkpointing = 1; break;
        case O_LOCK_IMG: cfg->lock_image = 1; break;
        case O_LOCK_IMG_N:
            cfg->lock_image = 1;
            cfg->lock_image_unlocked_groups =
                (int)parse_long_option("--lock-image-unlocked-groups", optarg, 0, 1 << 20);
            break;
        case O_LOCK_TXT: cfg->lock_text = 1; break;
        case O_FCACHE: o.feature_cache = optarg; break;
        case O_NO_FCACHE: o.no_feature_cache = 1; break;
        case O_LOCK_TXT_N:
            cfg->lock_text = 1;
            cfg->lock_text_unlocked_layers =
                (int)parse_long_option("--lock-text-unlocked-layers", optarg, 0, 1 << 20);
            break;
        case O_SAVE: o.save = optarg; break;
        case O_SAVE_EVERY: o.save_every = parse_long_option("--save-every", optarg, 1, many); break;
        case O_LOG: o.log_path = optarg; break;
        case O_STOP_AFTER: o.stop_after = parse_long_option("--stop-after", optarg, 1, many); break;
        case O_PROGRESS: o.progress = 1; break;
        case O_QUIET: o.progress = 0; break;
        case O_DEVICE: o.image_device = o.text_device = optarg; break;
        case O_IDEV: o.image_device = optarg; break;
        case O_TDEV: o.text_device = optarg; break;
        case 't': blas_set_threads((int)parse_long_option("--threads", optarg, 1, 1024)); break;
        case 'h': return print_help(usage);
        default: option_error(argv, short_opts);
        }
    }
    if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
    train_run_result res;
    int rc = train_run(&o, comm, &res);
    if (rc == -2) usage_error("%s", clip_error());
    if (rc && res.agreed && rank) exit(1); /* rank 0 says it */
    if (rc) die("%s", clip_error());
    dist_close(comm);
    if (res.signal) return 128 + res.signal;
    close_stdout();
    return 0;
}
