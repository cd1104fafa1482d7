/* Contrastive training of the joint model (ViT image tower + a text tower:
 * BERT with its ln_final/text_projection head, or OpenAI CLIP's English
 * transformer + logit_scale). A step is stages:
 *   encode    both towers over this rank's accum_freq micro-batches
 *   gather    every rank's features (train_comm.allgather)
 *   loss      this rank's rows against all the columns (contrastive.h)
 *   backward  the features' gradients summed back to their owners
 *             (reduce_scatter), then through each tower micro-batch by
 *             micro-batch (the last from the kept activations, the others
 *             recomputed: the contrastive batch of accum_freq micro-batches
 *             at the activation memory of one)
 *   reduce    the gradients summed over the ranks (allreduce, a tower's
 *             started as soon as its backward is done)
 *   update    gradient-norm clipping, AdamW, logit_scale clamped to [0, ln 100]
 * so that every rank steps to the same weights, those of one process on the
 * whole global batch (up to the order of the sums).
 * Resume state (weights + AdamW moments + position) is one safetensors file. */
#ifndef CLIP_TRAIN_H
#define CLIP_TRAIN_H

#include <stdint.h>

#include "model/clip_model.h"
#include "model/device.h"
#include "train/comm.h"
#include "train/optim.h"

typedef struct {
    double lr, min_lr_ratio; /* base learning rate; cosine floor = lr * min_lr_ratio (0.01) */
    long warmup, total_steps;
    lr_schedule schedule;
    double weight_decay; /* on tensors of rank >= 2 (all with wd_all) */
    int wd_all;
    double grad_clip; /* max total gradient norm, 0 = off */
    adamw_config adam;
    int amp;        /* bf16 matrix products, fp32 master weights */
    int accum_freq; /* micro-batches per step whose features meet in one loss (>= 1) */
    /* keep only each block's input (ACTS_CHECKPOINT, model/resblock.h) and
     * recompute the block in the backward: the same gradients, bit for bit,
     * for ~1/4 of the activation memory and one more forward */
    int grad_checkpointing;
    /* patch dropout (train/patch_mask.h): each training image drops this
     * share of its patch tokens, 0 <= mask_ratio < 1 (0: none); the kept
     * ones drawn from (mask_seed, step, position in the global batch).
     * Evaluation and the model's own encoders use every patch. */
    double mask_ratio;
    uint64_t mask_seed;
    /* Locked towers (open_clip's --lock-image, --lock-text): a locked
     * parameter gets no gradient, no AdamW moments and no backward pass, and
     * keeps its value bit for bit. lock_image: the image tower's groups
     * (vit_param_group) but the last lock_image_unlocked_groups; lock_text:
     * the whole text tower, head (ln_final, text_projection; BERT's pooler)
     * included, but the last lock_text_unlocked_layers layers and then the
     * head. logit_scale always trains. */
    int lock_image, lock_image_unlocked_groups;
    int lock_text, lock_text_unlocked_layers;
} train_config;

/* most samples in one contrastive batch (all ranks, all micro-batches) */
#define TRAIN_MAX_GLOBAL_BATCH (1 << 16)

void train_config_defaults(train_config *c);

/* Architecture of a model trained from scratch. bert.position_ids (0 from
 * train_arch_parse, as current Hugging Face) adds BERT's position_ids buffer
 * to the saved checkpoints. text: the text tower, CLIP_TEXT_BERT (bert) or
 * CLIP_TEXT_CLIP (ctext, OpenAI's English transformer: its width, layers,
 * heads, vocab and context are those of the text_* / vocab / max_pos keys). */
typedef struct {
    vit_config vit;
    bert_config bert;
    clip_text_kind text;
    clip_text_config ctext;
} train_arch;

/* "small", "base", "tiny" or KEY=VALUE,... over a preset (keys: image_width,
 * image_layers, image_heads, patch, resolution, text_width, text_layers,
 * text_heads, vocab, max_pos, embed_dim, and text=bert|clip for the text
 * tower); e.g. "small,resolution=96" or "tiny,text=clip". Head counts
 * default to width / MODEL_DEFAULT_HEAD_DIM (the image width must then be a
 * multiple of it; text heads at least 1); a given count must divide its
 * width. With text=clip, vocab defaults to 49408 (OpenAI's BPE) and max_pos
 * (the context) to 77. -1 with an error. */
int train_arch_parse(const char *spec, train_arch *a);
/* A freshly initialised model (OpenAI CLIP / BERT initialisation, seeded);
 * NULL with an error (out of memory). */
clip_model *train_model_create(const train_arch *a, uint64_t seed);

/* The training model from a checkpoint: the ViT and logit_scale of `init`,
 * and the text tower clip_model_load chooses: BERT (and the
 * ln_final/text_projection head when they fit) from `init` or `text_dir`
 * when there is one, else the English tower of an OpenAI checkpoint (the
 * whole OpenAI CLIP trains). Tensors of `init` the model does not use (the
 * English tower beside a BERT) are reported in m->warnings and left alone.
 * NULL with an error. */
clip_model *train_model_load(const char *init, const char *text_dir);

typedef struct {
    double loss, lr, grad_norm, logit_scale; /* logit_scale after the step */
    double acc_i2t, acc_t2i;
    double sec_image, sec_text, sec_optim; /* forward + backward of each tower; the update */
    double sec_loss, sec_comm;             /* the loss; waiting for the collectives */
    int global_batch;                      /* samples in the step's contrastive batch */
} train_stats;

typedef struct trainer trainer;

/* 0 when cfg's lock counts fit the model (trainer_create checks it too), or
 * -1 with an error naming the option and the counts the towers have. */
int train_check_locks(const clip_model *m, const train_config *cfg);
/* Parameters (floats) the trainer trains and those it holds in all. */
void trainer_param_counts(const trainer *t, size_t *trainable, size_t *total);

/* Allocates gradients, AdamW moments and activations for micro-batches of
 * up to `batch` samples of texts up to `max_len` tokens (cfg->accum_freq of
 * them a step). A mask_ratio outside [0, 1) is an error. Takes the model, also on
 * failure (NULL with an error; m NULL: NULL, the error left as it is, so
 * that trainer_create(train_model_create(...)) reports either's). The steps
 * compute in cfg->amp's precision (bf16 or fp32) through the trainer's own
 * compute context; the model's own (clip_encode_*, evaluation) is set to
 * fp32, its int8 weights, if any, freed. */
trainer *trainer_create(clip_model *m, const train_config *cfg, int batch, int max_len);
void trainer_free(trainer *t);
/* Run the image / text encoder on these devices (default: both cpu). */
void trainer_set_devices(trainer *t, const clip_device *image, const clip_device *text);
clip_model *trainer_model(trainer *t);
long trainer_step_count(const trainer *t);

/* What the trainer holds, in bytes: both towers' activations kept by the
 * forward for the backward (with cfg.grad_checkpointing: each block's input
 * and one block's slot), their backward scratch (one block's worth), and
 * the weights with the gradients and AdamW moments of the trainable ones. */
typedef struct {
    size_t activations, backward, weights;
} train_memory;
void trainer_memory(const trainer *t, train_memory *mem);

/* Data-parallel: the ranks of comm train one model, each on its slice of
 * every global batch (NULL or one rank: one process). Collective: every
 * rank calls it; rank 0's weights, moments and step are broadcast. The
 * buffers are resized for the global batch: -1 with an error when it is
 * too large. comm must outlive the trainer's steps. */
int trainer_set_comm(trainer *t, train_comm *comm);
/* FNV-1a over the bytes of every weight (logit_scale included). */
uint64_t trainer_checksum(const trainer *t);
/* Collective: -1 with an error naming the rank whose checksum differs from
 * rank 0's (the ranks have diverged); 0 when all agree or in one process. */
int trainer_check_sync(const trainer *t);

/* Forward + loss + backward into the gradients (no update). pixels uint8
 * [B, R, R, 3]; ids int32 [B, L]: B = accum_freq micro-batches of B /
 * accum_freq samples (with several ranks, exactly accum_freq x batch: this
 * rank's slice). -1 with an error (a bad token id, out of memory, a failed
 * collective). */
int trainer_compute_grads(trainer *t, const uint8_t *pixels, const int32_t *ids, int B, int L,
                          train_stats *st);
/* The gradient of a parameter by its checkpoint name ("logit_scale"
 * included), NULL with an error if no such parameter or if it is locked
 * (train_config.lock_*: it has no gradient). n: its element count. */
const float *trainer_grad(const trainer *t, const char *name, size_t *n);

/* Patch dropout: the patches each image keeps per step (0 without
 * cfg.mask_ratio), and those the last trainer_compute_grads kept: int32
 * [B, keep] in the batch's order (NULL before any step or without). */
int trainer_mask_keep(const trainer *t);
const int32_t *trainer_mask_kept(const trainer *t);

/* One optimizer step. 0 done; 1 the loss or a gradient was NaN/Inf (the
 * weights are left as they were before the step); -1 error. */
int trainer_step(trainer *t, const uint8_t *pixels, const int32_t *ids, int B, int L,
                 train_stats *st);

/* The towers, as trainer_encode and train_batch name them. */
enum { TRAIN_IMAGE, TRAIN_TEXT };

/* A step's input, with the features of a tower locked whole computed
 * before (a feature cache, train/feature_cache.h): features[TRAIN_IMAGE]
 * [B, D] (embed_dim, unnormalised, as trainer_encode gives them) stands for
 * the image tower's forward of pixels, which may then be NULL;
 * features[TRAIN_TEXT] the same for the text tower and ids. Not borrowed
 * beyond the call. */
typedef struct {
    const uint8_t *pixels; /* [B, R, R, 3] */
    const int32_t *ids;    /* [B, L] */
    int B, L;
    const float *features[2]; /* NULL: the tower runs */
} train_batch;
/* trainer_compute_grads and trainer_step of a train_batch; -1 with an error
 * when features are given for a tower that is not locked whole. */
int trainer_compute_grads_batch(trainer *t, const train_batch *b, train_stats *st);
int trainer_step_batch(trainer *t, const train_batch *b, train_stats *st);

/* 1 when the tower (TRAIN_IMAGE, TRAIN_TEXT) is locked whole: its features
 * are a function of its input alone. */
int trainer_tower_locked(const trainer *t, int tower);
/* The features [B, D] the steps compute for B inputs of a tower, in the
 * steps' precision (cfg.amp) and with their padding trimmed: pixels [B, R,
 * R, 3] for TRAIN_IMAGE, ids [B, L] for TRAIN_TEXT; any B (in chunks of the
 * trainer's batch). 0, or -1 with an error. */
int trainer_encode(trainer *t, int tower, const uint8_t *pixels, const int32_t *ids, int B, int L,
                   float *out);
/* FNV-1a over the bytes of one tower's weights (trainer_checksum's, for
 * one tower). */
uint64_t trainer_tower_checksum(const trainer *t, int tower);
/* 1 when the steps compute in bf16 (cfg.amp) */
int trainer_amp(const trainer *t);

/* Model weights in the reference key names: .pth (torch.load + the
 * reference model load it strictly) or, by extension, .safetensors; both
 * with the configuration (head counts included) in their "clip_config"
 * metadata (for .pth the extra archive member torch.load ignores, see
 * ckpt_save_pth). Written atomically. The keys are those of
 * the init: transformer.embeddings.position_ids only when it had the buffer
 * (or, from scratch, when train_arch asked for it). */
int trainer_save_weights(const trainer *t, const char *path);

/* Resume state: weights, AdamW moments, the step count and a caller JSON
 * blob (data position, options) in one safetensors file. */
int trainer_save_state(const trainer *t, const char *path, const char *extra_json);
/* Rebuilds the model from a state file; *extra_json (malloc'd) gets the
 * caller blob. NULL with an error. */
trainer *trainer_load_state(const char *path, const train_config *cfg, int batch, int max_len,
                            char **extra_json);

#endif
