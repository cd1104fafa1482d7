#include "train/run.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/util.h"
#include "io/image.h"
#include "kernels/blas.h"
#include "model/device.h"
#include "search/recall.h"
#include "train/eval.h"
#include "train/feature_cache.h"

void train_run_defaults(train_run_options *o)
{
    memset(o, 0, sizeof *o);
    train_config_defaults(&o->train);
    o->loader = (loader_config){.shuffle = 1, .augment = 1, .ranks = 1, .accum = 1, .micro = 32};
    o->epochs = 1;
    o->image_device = o->text_device = "cpu";
}

/* what a run holds; run_free releases it at every return of train_run */
typedef struct {
    const train_run_options *o;
    train_config cfg;
    loader_config lc;
    train_comm *comm; /* NULL: one process */
    int rank, ranks;  /* only rank 0 writes and speaks */
    int progress;     /* rank 0's progress lines, on o->msg */
    int agreed;       /* the error was found alike on every rank */
    char state_path[4096];
    FILE *log;
    train_loader *d;
    trainer *t;
    val_set val;
    feature_cache *fc;
    float *features[2]; /* [slots, D] the step's, per cached tower */
    int resuming, slots, global, len;
    long epochs, batches_per_epoch, total, start_epoch, start_batch;
} run;

static void run_free(run *r)
{
    feature_cache_free(r->fc);
    free(r->features[0]);
    free(r->features[1]);
    loader_close(r->d);
    val_set_free(&r->val);
    trainer_free(r->t);
    if (r->log) fclose(r->log);
}

/* "PROG: text" on the notices, rank 0's only */
static void __attribute__((format(printf, 2, 3))) note(const run *r, const char *fmt, ...)
{
    if (r->rank || !r->o->msg) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(r->o->msg, "%s: ", clip_progname);
    vfprintf(r->o->msg, fmt, ap);
    fputc('\n', r->o->msg);
    va_end(ap);
}

/* an error every rank found alike (the error set): rank 0 says it */
static int agreed(run *r)
{
    r->agreed = 1;
    return -1;
}

/* *x becomes its maximum over the ranks: their agreement (a barrier too) */
static int agree_max(run *r, double *x)
{
    return r->comm && r->comm->allreduce_f64(r->comm, x, 1, COMM_MAX) ? -1 : 0;
}

/* -1 (agreed) unless x is the same on every rank (a collective of every rank) */
static int same_on_ranks(run *r, double x, const char *what)
{
    double hi = x, lo = -x;
    if (agree_max(r, &hi) || agree_max(r, &lo)) return -1;
    lo = -lo;
    if (hi == lo) return 0;
    clip_set_error("%s differs between the ranks (from %g to %g): run every rank with the same "
                   "options and data",
                   what, lo, hi);
    return agreed(r);
}

/* the weights and the state at the data position (epoch, batch): rank 0's */
static int save_all(run *r, long epoch, long batch_in_epoch)
{
    if (!r->o->save || r->rank) return 0;
    char extra[256];
    snprintf(extra, sizeof extra,
             "{\"epoch\": %ld, \"batch\": %ld, \"seed\": %llu, "
             "\"global_batch\": %d}",
             epoch, batch_in_epoch, (unsigned long long)r->lc.seed, r->global);
    if (trainer_save_weights(r->t, r->o->save) || trainer_save_state(r->t, r->state_path, extra)) {
        clip_set_error("saving: %s", clip_error());
        return -1;
    }
    return 0;
}

/* one line of the log (rank 0's, when there is one); takes j */
static void log_json(run *r, json_t *j)
{
    if (r->log) {
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
        fprintf(r->log, "%s\n", s);
        fflush(r->log);
        free(s);
    }
    json_decref(j);
}

/* A resumed run redoes the steps after its state's (those of a run killed
 * since its last save): their lines are cut from the end of the log, so that
 * each step is logged once. A line cut short by the kill goes too; the lines
 * of earlier steps, evaluations included, stay. -1 with an error naming the
 * log. */
static int trim_log(run *r, const char *path, long state_step)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        clip_set_error("%s: %s", path, strerror(errno));
        return -1;
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
    if (bad) {
        clip_set_error("%s: read error", path);
        return -1;
    }
    if (!dropped) return 0;
    if (truncate(path, keep)) {
        clip_set_error("%s: cannot drop the lines of redone steps: %s", path, strerror(errno));
        return -1;
    }
    note(r, "%s: dropped the last %ld line%s, of steps after %ld that this run redoes", path,
         dropped, dropped == 1 ? "" : "s", state_step);
    return 0;
}

/* every rank encodes its slice of the set; rank 0 ranks, reports and logs */
static int report_eval(run *r, long step, long epoch)
{
    clip_model *m = trainer_model(r->t);
    const val_set *v = &r->val;
    double t0 = now_seconds();
    recall_set set = {.n_images = v->n_images, .n_texts = v->n_texts, .dim = m->embed_dim};
    set.img = xmalloc((size_t)v->n_images * set.dim * sizeof(float));
    set.txt = xmalloc((size_t)v->n_texts * set.dim * sizeof(float));
    set.txt_off = xmalloc((v->n_images + 1) * sizeof(int64_t));
    memcpy(set.txt_off, v->txt_off, (v->n_images + 1) * sizeof(int64_t));
    if (val_set_encode(m, v, r->comm, set.img, set.txt)) {
        recall_set_free(&set);
        clip_set_error("evaluation: %s", clip_error());
        return -1;
    }
    if (r->rank) {
        recall_set_free(&set);
        return 0;
    }
    int64_t *ir = xmalloc(v->n_images * sizeof *ir), *tr = xmalloc(v->n_texts * sizeof *tr);
    recall_ranks(&set, 0, 0, ir, tr);
    recall_metrics rm;
    recall_summarize(&set, ir, tr, &rm);
    free(ir);
    free(tr);
    recall_set_free(&set);
    note(r,
         "epoch %ld eval: i2t R@1/5/10 %.2f/%.2f/%.2f  t2i %.2f/%.2f/%.2f  mean %.2f  (%d "
         "images, %.1f s)",
         epoch, rm.txt_r[0], rm.txt_r[1], rm.txt_r[2], rm.img_r[0], rm.img_r[1], rm.img_r[2],
         rm.r_mean, v->n_images, now_seconds() - t0);
    log_json(r, json_pack("{s:I,s:I,s:o}", "step", (json_int_t)step, "epoch", (json_int_t)epoch,
                          "val", recall_metrics_json(&rm)));
    return 0;
}

/* --feature-cache where it cannot apply: -2 (a usage error), before anything loads */
static int check_cache_options(const train_run_options *o, const train_config *cfg)
{
    int img = cfg->lock_image && !cfg->lock_image_unlocked_groups;
    int txt = cfg->lock_text && !cfg->lock_text_unlocked_layers;
    const char *msg = NULL;
    if (!o->feature_cache) return 0;
    if (o->no_feature_cache)
        msg = "--feature-cache and --no-feature-cache exclude each other";
    else if (img && o->loader.augment)
        msg = "--feature-cache: the locked image tower sees another random crop every epoch, its "
              "features are not fixed: add --no-augment";
    else if (img && cfg->mask_ratio > 0)
        msg = "--feature-cache: the locked image tower keeps other patches every step "
              "(--mask-ratio), its features are not fixed";
    else if (!img && !txt)
        msg = "--feature-cache: no tower is locked whole (--lock-image with no unlocked groups "
              "and --no-augment, or --lock-text with no unlocked layers)";
    if (!msg) return 0;
    clip_set_error("%s", msg);
    return -2;
}

static void progress_line(size_t done, size_t n, void *ctx)
{
    FILE *f = ctx;
    fprintf(f, "\r%s: features of %zu/%zu samples   ", clip_progname, done, n);
    if (done == n) fputc('\n', f);
}

/* The cache of the towers that are locked whole and whose input is fixed
 * (the image's: without augmentation or patch dropout), unless
 * --no-feature-cache; none for a stream. Rank 0 computes and writes
 * --feature-cache FILE, the others read it. */
static int open_cache(run *r)
{
    const char *path = r->o->feature_cache;
    int img = trainer_tower_locked(r->t, TRAIN_IMAGE) && !r->lc.augment && !(r->cfg.mask_ratio > 0);
    int txt = trainer_tower_locked(r->t, TRAIN_TEXT);
    if (r->o->no_feature_cache || loader_is_stream(r->d) || (!img && !txt)) return 0;
    feature_cache_progress progress = r->progress ? progress_line : NULL;
    int write = r->rank == 0;
    if (r->comm && path) { /* rank 0 first; then the others read its file */
        if (!r->rank)
            r->fc = feature_cache_open(path, r->t, r->d, img, txt, 1, progress, r->o->msg);
        double failed = !r->rank && !r->fc;
        if (agree_max(r, &failed)) return -1;
        if (failed) return agreed(r);
        write = 0;
    }
    if (!r->fc &&
        !(r->fc = feature_cache_open(path, r->t, r->d, img, txt, write, progress, r->o->msg)))
        return -1;
    size_t D = trainer_model(r->t)->embed_dim;
    for (int w = 0; w < 2; w++)
        if ((w ? txt : img)) r->features[w] = xmalloc((size_t)r->slots * D * sizeof(float));
    if (img) loader_skip_pixels(r->d, 1);
    note(r, "cached the %s features of %zu samples%s%s",
         img && txt ? "image and text"
         : img      ? "image"
                    : "text",
         loader_count(r->d), path ? " in " : " (in memory)", path ? path : "");
    return 0;
}

/* The options that need nothing loaded, then the data: -2 for a usage error */
static int open_data(run *r)
{
    const train_run_options *o = r->o;
    int rc = check_cache_options(o, &r->cfg);
    if (rc) return rc;
    if (!o->train_path) {
        clip_set_error("no training data: --train FILE.tar or a stream (see --help)");
        return -1;
    }
    if (o->resume && !o->save) {
        clip_set_error("--resume continues from the --save file's state: give --save FILE");
        return -1;
    }
    if (o->save) snprintf(r->state_path, sizeof r->state_path, "%s.state", o->save);
    /* every rank reads the state (rank 0 wrote it): a file system they share */
    r->resuming = o->resume && access(r->state_path, R_OK) == 0;
    if (o->resume && !r->resuming)
        note(r, "--resume: no %s yet, starting from the beginning", r->state_path);
    return 0;
}

/* The model: --arch, --init or the state (checked against the data and the ranks) */
static int open_model(run *r, const train_arch *arch)
{
    const train_run_options *o = r->o;
    if (r->resuming) {
        char *extra = NULL;
        /* the token length of the model's activations comes from the data */
        if (!(r->t = trainer_load_state(r->state_path, &r->cfg, r->lc.micro, r->len, &extra)))
            return -1;
        json_t *j = json_loads(extra, 0, NULL);
        r->start_epoch = (long)json_integer_value(json_object_get(j, "epoch"));
        r->start_batch = (long)json_integer_value(json_object_get(j, "batch"));
        json_t *gb = json_object_get(j, "global_batch");
        long saved_global = gb ? (long)json_integer_value(gb) : r->lc.micro;
        json_decref(j);
        free(extra);
        if (saved_global != r->global) {
            clip_set_error("%s: saved at a global batch of %ld, this run's is %d (%d rank%s x %d x "
                           "-b %d): resume with the same ranks, -b and --accum-freq",
                           r->state_path, saved_global, r->global, r->ranks,
                           r->ranks > 1 ? "s" : "", r->lc.accum, r->lc.micro);
            return -1;
        }
        note(r, "resuming %s at step %ld (epoch %ld, batch %ld)", r->state_path,
             trainer_step_count(r->t), r->start_epoch + 1, r->start_batch);
    } else {
        clip_model *m;
        if (o->arch) {
            m = train_model_create(arch, r->lc.seed);
        } else if (!(m = train_model_load(o->init, o->text_dir))) {
            return -1;
        }
        if (m && train_check_locks(m, &r->cfg)) {
            clip_model_free(m);
            return -2;
        }
        if (!(r->t = trainer_create(m, &r->cfg, r->lc.micro, r->len))) return -1;
    }
    if (trainer_set_comm(r->t, r->comm)) return agreed(r);
    return 0;
}

/* Everything up to the first step: the options, data, model, evaluation set
 * and log; the signal handler; the banner; the feature cache; the
 * evaluation at the start. */
static int run_open(run *r)
{
    const train_run_options *o = r->o;
    int rc = open_data(r);
    if (rc) return rc;
    if (!r->resuming && !o->init && !o->arch) {
        clip_set_error("no model: --init CKPT [--text-model DIR] or --arch SPEC (see --help)");
        return -1;
    }
    if (o->init && o->arch) {
        clip_set_error("--init and --arch exclude each other");
        return -1;
    }
    if (o->position_ids && !o->arch) {
        clip_set_error("--position-ids goes with --arch: from --init the saved checkpoint has "
                       "BERT's position_ids buffer exactly when the init has it");
        return -1;
    }
    train_arch arch;
    if (o->arch && train_arch_parse(o->arch, &arch)) return -1;
    if (o->arch) arch.bert.position_ids = o->position_ids;
    const clip_device *idev = device_find(o->image_device, "image"),
                      *tdev = idev ? device_find(o->text_device, "text") : NULL;
    if (!idev || !tdev) return -1;
    if (image_init(o->argv0)) return -1;

    if (!(r->d = loader_open(o->train_path, &r->lc))) return -1;
    int stream = loader_is_stream(r->d);
    if (stream && !o->steps) {
        clip_set_error("--train %s is a stream: give --steps N (the schedule's length)",
                       o->train_path);
        return -1;
    }
    if (stream && o->feature_cache) {
        clip_set_error("--feature-cache: --train %s is a stream, read once: nothing to reuse",
                       o->train_path);
        return -2;
    }
    r->slots = r->lc.accum * r->lc.micro;
    r->global = r->slots * r->ranks;
    r->len = loader_token_length(r->d);
    r->batches_per_epoch = stream ? o->steps : loader_batches_per_epoch(r->d);
    r->total = o->steps ? o->steps : o->epochs * r->batches_per_epoch;
    r->epochs = o->epochs;
    if (!stream && o->steps)
        r->epochs = (o->steps + r->batches_per_epoch - 1) / r->batches_per_epoch;
    r->cfg.total_steps = r->total;
    if (same_on_ranks(r, (double)r->total, "the number of steps") ||
        same_on_ranks(r, (double)loader_count(r->d), "the number of training samples") ||
        same_on_ranks(r, r->len, "the caption length of the data"))
        return -1;

    if ((rc = open_model(r, &arch))) return rc;
    trainer_set_devices(r->t, idev, tdev);
    clip_model *m = trainer_model(r->t);
    for (int i = 0; i < m->n_warnings; i++) note(r, "%s", m->warnings[i]);
    int vocab, max_pos;
    clip_text_limits(m, &vocab, &max_pos);
    if (r->len > max_pos) {
        clip_set_error("%s: captions of %d tokens, more than the text tower's %d positions",
                       o->train_path, r->len, max_pos);
        return -1;
    }
    if (loader_set_model(r->d, clip_image_resolution(m), vocab)) return -1;
    if (o->val_path && val_set_load(&r->val, o->val_path, clip_image_resolution(m))) return -1;

    if (!r->rank && o->log_path && r->resuming &&
        trim_log(r, o->log_path, trainer_step_count(r->t)))
        return -1;
    if (!r->rank && o->log_path && !(r->log = fopen(o->log_path, r->resuming ? "a" : "w"))) {
        clip_set_error("%s: %s", o->log_path, strerror(errno));
        return -1;
    }
    if (o->catch_signals) o->catch_signals();

    const vit_config *vc = &m->visual->cfg;
    int english = m->text == CLIP_TEXT_CLIP; /* the tower the checkpoint (or --arch) has */
    char batch_desc[96] = "";
    if (r->ranks > 1 || r->lc.accum > 1)
        snprintf(batch_desc, sizeof batch_desc, " (%d rank%s x %d micro-batch%s x %d)", r->ranks,
                 r->ranks > 1 ? "s" : "", r->lc.accum, r->lc.accum > 1 ? "es" : "", r->lc.micro);
    note(r,
         "ViT %dx%d patch %d @%d, %s %dx%d (%d heads), dim %d; %s%zu samples, batch %d%s, %ld "
         "steps, lr %g (%s, warm-up %ld)%s; %s",
         vc->width, vc->layers, vc->patch, vc->resolution, english ? "CLIP text" : "BERT",
         english ? m->ctext->cfg.width : m->bert->cfg.hidden,
         english ? m->ctext->cfg.layers : m->bert->cfg.layers,
         english ? m->ctext->cfg.heads : m->bert->cfg.heads, m->embed_dim, stream ? "stream, " : "",
         loader_count(r->d), r->global, batch_desc, r->total, r->cfg.lr,
         r->cfg.schedule == SCHEDULE_COSINE ? "cosine" : "constant", r->cfg.warmup,
         r->cfg.amp ? ", amp bf16" : "", blas_describe());
    train_memory mem;
    trainer_memory(r->t, &mem);
    note(r,
         "memory: activations %.1f MiB%s, backward scratch %.1f MiB, weights + gradients + "
         "AdamW %.1f MiB (micro-batch %d x %d tokens)",
         mem.activations / 1048576.0,
         r->cfg.grad_checkpointing ? " (gradient checkpointing: block inputs)" : "",
         mem.backward / 1048576.0, mem.weights / 1048576.0, r->lc.micro, r->len);
    if (r->cfg.mask_ratio > 0)
        note(r, "patch dropout: each training image keeps %d of its %d patches (--mask-ratio %g)",
             trainer_mask_keep(r->t), vc->grid * vc->grid, r->cfg.mask_ratio);
    if (r->cfg.lock_image || r->cfg.lock_text) {
        size_t trainable, all;
        trainer_param_counts(r->t, &trainable, &all);
        note(r, "locked:%s%s; training %zu of %zu parameters",
             r->cfg.lock_image ? " the image tower" : "",
             r->cfg.lock_text ? (r->cfg.lock_image ? " and the text tower" : " the text tower")
                              : "",
             trainable, all);
    }
    if ((rc = open_cache(r))) return rc;
    if (o->val_path && o->eval_at_start && !r->resuming && report_eval(r, 0, 0)) return -1;
    return 0;
}

/* The epochs and their steps, then the last save and the closing notice */
static int run_loop(run *r, train_run_result *res)
{
    const train_run_options *o = r->o;
    train_loader *d = r->d;
    train_comm *comm = r->comm;
    double t_start = now_seconds();
    long step = trainer_step_count(r->t), step0 = step, total = r->total;
    long pos_epoch = r->start_epoch, pos_batch = r->start_batch; /* the next batch */
    int stopped = 0, ended = 0;
    for (long epoch = r->start_epoch; epoch < r->epochs && step < total && !stopped && !ended;
         epoch++) {
        if (!loader_is_stream(d)) loader_epoch(d, epoch);
        double loss_sum = 0;
        long loss_n = 0;
        for (long b = epoch == r->start_epoch ? r->start_batch : 0;
             b < r->batches_per_epoch && step < total; b++) {
            double t0 = now_seconds();
            int got = loader_batch(d, epoch, b);
            if (got < 0) return -1;
            double short_batch = got < r->slots;
            if (agree_max(r, &short_batch)) return -1;
            if (short_batch) { /* a stream ended, here or on another rank */
                note(r, "%s: the stream ended after %ld steps%s", o->train_path, step,
                     got ? " (its last samples, less than a batch, are left out)" : "");
                ended = 1;
                break;
            }
            train_stats st;
            uint64_t reduced = comm ? comm->stats.bytes_allreduced : 0;
            train_batch tb = {loader_pixels(d), loader_ids(d), r->slots, r->len, {NULL, NULL}};
            if (r->fc) {
                feature_cache_batch(r->fc, d, r->slots, r->features);
                tb.features[0] = r->features[0], tb.features[1] = r->features[1];
            }
            int rc = trainer_step_batch(r->t, &tb, &st);
            if (comm) reduced = comm->stats.bytes_allreduced - reduced;
            if (rc < 0) {
                clip_set_error("step %ld (epoch %ld): %s", step + 1, epoch + 1, clip_error());
                return -1;
            }
            if (rc == 1) { /* every rank saw the same loss */
                double done = 0;
                if (save_all(r, pos_epoch, pos_batch) || agree_max(r, &done)) return -1;
                clip_set_error(
                    "step %ld (epoch %ld): the %s is %s; stopped%s%s (the weights before "
                    "this step)",
                    step + 1, epoch + 1, isfinite(st.loss) ? "gradient" : "loss",
                    isnan(st.loss) || isnan(st.grad_norm) ? "NaN" : "infinite",
                    o->save ? ", saved to " : ", nothing saved (no --save)",
                    o->save ? o->save : "");
                return agreed(r);
            }
            step++;
            pos_epoch = b + 1 < r->batches_per_epoch ? epoch : epoch + 1;
            pos_batch = b + 1 < r->batches_per_epoch ? b + 1 : 0;
            if (o->check_sync && step % o->check_sync == 0 && trainer_check_sync(r->t))
                return agreed(r);
            double dt = now_seconds() - t0, el = now_seconds() - t_start;
            loss_sum += st.loss;
            loss_n++;
            log_json(r,
                     json_pack("{s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:f,s:I}",
                               "step", (json_int_t)step, "epoch", (json_int_t)epoch + 1, "loss",
                               st.loss, "lr", st.lr, "logit_scale", st.logit_scale, "grad_norm",
                               st.grad_norm, "acc_i2t", st.acc_i2t, "time", el, "step_time", dt,
                               "image_time", st.sec_image, "text_time", st.sec_text, "optim_time",
                               st.sec_optim, "global_batch", (json_int_t)r->global, "comm_time",
                               st.sec_comm, "allreduce_bytes", (json_int_t)reduced));
            if (r->progress)
                fprintf(o->msg,
                        "\r%s: epoch %ld/%ld step %ld/%ld loss %.4f lr %.3g scale %.2f  %.2f "
                        "s/step ETA %.0f s   ",
                        clip_progname, epoch + 1, r->epochs, step, total, st.loss, st.lr,
                        exp(st.logit_scale), dt, el / (step - step0) * (total - step));
            if (o->save_every && step % o->save_every == 0 && save_all(r, pos_epoch, pos_batch))
                return -1;
            /* a signal to any rank stops all of them after the same step; one that
             * comes while they agree stays in the flag for the next step */
            double sig = o->stop_signal ? *o->stop_signal : 0;
            if (agree_max(r, &sig)) return -1;
            if (o->stop_signal && *o->stop_signal < sig) *o->stop_signal = (int)sig;
            if (sig || (o->stop_after && step - step0 >= o->stop_after)) {
                stopped = 1;
                break;
            }
        }
        if (r->progress) fputc('\n', o->msg);
        if (stopped || ended) break;
        note(r, "epoch %ld/%ld done: step %ld, mean loss %.4f, %.1f s", epoch + 1, r->epochs, step,
             loss_n ? loss_sum / loss_n : NAN, now_seconds() - t_start);
        if (pos_batch == 0) {
            if (save_all(r, pos_epoch, pos_batch)) return -1;
            if (o->val_path && report_eval(r, step, epoch + 1)) return -1;
        }
    }
    if ((pos_batch != 0 || stopped) && save_all(r, pos_epoch, pos_batch)) return -1;
    double done = 0;
    if (agree_max(r, &done)) return -1; /* rank 0's save is complete before any rank returns */
    int sig = o->stop_signal ? *o->stop_signal : 0;
    if (sig) {
        note(r, "%s at step %ld: %s", strsignal(sig), step,
             o->save ? "saved; the same command with --resume continues"
                     : "nothing saved (no --save)");
        res->signal = sig;
        return 0;
    }
    if (stopped && step < total) {
        note(r, "stopped after %ld steps of this run (step %ld of %ld): %s", step - step0, step,
             total, o->save ? "saved; the same command with --resume continues" : "nothing saved");
        return 0;
    }
    if (pos_batch != 0 && o->val_path && report_eval(r, step, pos_epoch + 1)) return -1;
    FILE *log = r->log;
    r->log = NULL;
    if (log && (ferror(log) | fclose(log))) {
        clip_set_error("%s: write failed: %s", o->log_path, errno ? strerror(errno) : "I/O error");
        return -1;
    }
    if (o->save) note(r, "saved %s", o->save);
    return 0;
}

int train_run(const train_run_options *o, train_comm *comm, train_run_result *result)
{
    run r = {.o = o, .cfg = o->train, .lc = o->loader, .comm = comm};
    r.rank = comm ? comm->rank : 0;
    r.ranks = comm ? comm->size : 1;
    r.lc.rank = r.rank;
    r.lc.ranks = r.ranks;
    r.cfg.mask_seed = r.lc.seed;
    r.progress = o->progress && !r.rank && o->msg;
    memset(result, 0, sizeof *result);
    int rc = run_open(&r);
    if (!rc) rc = run_loop(&r, result);
    result->agreed = rc < 0 && r.agreed;
    run_free(&r);
    return rc;
}
