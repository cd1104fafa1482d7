/* One training run of clip-train, from its options to the last save: the
 * model (--arch, --init or a --resume state), the data, and the loop of
 * epochs and steps with its JSON log, saves, evaluations (retrieval recall
 * of a --val set, search/recall.h) and stops (--steps, --stop-after, a
 * signal, a NaN, the end of a stream), over the ranks of a train_comm. The
 * tool parses the options into a train_run_options and turns the result into
 * the exit status; everything between is here.
 *
 * Notices that are no error (the banner, progress, the epochs' and the
 * evaluations' lines, "saved ...") go to opts->msg as "PROG: text" lines
 * (clip_progname), from rank 0 only. Only rank 0 writes the log, the
 * checkpoints and a feature cache file. */
#ifndef CLIP_TRAIN_RUN_H
#define CLIP_TRAIN_RUN_H

#include <signal.h>
#include <stdio.h>

#include "train/comm.h"
#include "train/loader.h"
#include "train/train.h"

typedef struct {
    /* the steps' configuration (total_steps and mask_seed are the run's:
     * from the data and loader.seed) and the data's (loader.rank and
     * loader.ranks are the run's comm's) */
    train_config train;
    loader_config loader;
    /* the model: init [+ text_dir], or arch (train_arch_parse; position_ids:
     * BERT's buffer saved too), or with resume the state of save */
    const char *init, *text_dir, *arch;
    int position_ids, resume;
    const char *train_path; /* a FILE.tar, shards or a stream (io/shards.h, io/stream.h) */
    const char *val_path;   /* NULL: no evaluation */
    int eval_at_start;
    long epochs;               /* >= 1; with steps as many as those take */
    long steps;                /* 0: epochs over the file (a stream needs it) */
    long stop_after;           /* 0: none; else stop (and save) after so many steps of this run */
    long check_sync;           /* 0: none; else compare the ranks' weights every so many steps */
    const char *save;          /* NULL: nothing saved; else weights there, state in SAVE.state */
    long save_every;           /* 0: after epochs only */
    const char *log_path;      /* NULL: no log; else JSON lines, a step or an evaluation each */
    const char *feature_cache; /* a locked tower's features in this file (train/feature_cache.h) */
    int no_feature_cache;      /* recompute a locked tower's features every step */
    const char *image_device, *text_device; /* model/device.h names */
    int progress;                           /* the progress lines (with \r) */
    FILE *msg;                              /* the notices (NULL: none); not closed */
    const char *argv0;                      /* for image_init */
    /* The stop a signal asks for: the caller's handler sets *stop_signal to
     * the signal; the run stops after the step under way on every rank (the
     * largest signal of the ranks is written back to each). NULL: no signals.
     * catch_signals (NULL: none) installs that handler: the run calls it
     * once the model, data and log are ready, before the banner, so that a
     * signal before then ends the process as usual. */
    volatile sig_atomic_t *stop_signal;
    void (*catch_signals)(void);
} train_run_options;

/* clip-train's defaults: train_config_defaults, shuffled and augmented data,
 * -b 32, one epoch, the cpu devices; everything else 0 or NULL. */
void train_run_defaults(train_run_options *o);

typedef struct {
    int signal; /* the signal that stopped a run that returned 0 (0: none) */
    int agreed; /* with -1: every rank found the error alike; only rank 0 need say it */
} train_run_result;

/* The run, collective over comm (NULL: one process; every rank calls it
 * with the same options). 0 when it finished, stopped after --stop-after
 * steps or stopped on a signal (result->signal), everything saved that
 * there was to save; -1 with an error naming the file, sample, step or
 * option; -2 with an error for options that do not fit together or the
 * model (a usage error). Frees what it allocated on every return. */
int train_run(const train_run_options *o, train_comm *comm, train_run_result *result);

#endif
