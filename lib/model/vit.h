/* The image tower: OpenAI CLIP VisionTransformer (keys under `visual.`).
 * Configuration is inferred from the checkpoint's tensor shapes. */
#ifndef CLIP_VIT_H
#define CLIP_VIT_H

#include <stdint.h>

#include "ckpt/checkpoint.h"
#include "ckpt/param_table.h"
#include "model/resblock.h"

typedef struct {
    int width, layers, heads, mlp; /* heads: width / 64 unless recorded; mlp = 4 * width */
    int patch, grid, resolution;   /* resolution = grid * patch pixels */
    int tokens;                    /* 1 + grid^2 */
    int out_dim;                   /* proj [width, out_dim] */
} vit_config;

typedef struct {
    float *conv1_w;   /* [W, 3, P, P] used as [W, 3*P*P] */
    float *class_emb; /* [W] */
    float *pos_emb;   /* [T, W] */
    float *ln_pre_w, *ln_pre_b;
    resblock_params *blocks;
    float *ln_post_w, *ln_post_b;
    float *proj; /* [W, D] */
} vit_params;

typedef struct {
    float *patches;   /* [B*G*G, 3*P*P] normalised pixels, im2col */
    float *patch_emb; /* [B*G*G, W] */
    float *emb;       /* [B*T, W] class + patches + positions */
    float *ln_pre, *ln_pre_mean, *ln_pre_rstd;
    resblock_acts *blocks; /* all alias one slot unless kept for training */
    float *cls;            /* [B, W] the last block's class tokens */
    float *ln_post, *ln_post_mean, *ln_post_rstd;
    float *out; /* [B, D] */
} vit_acts;

/* The Linear weights quantised for int8 (resblock.h): the patch embedding
 * and every block's; all NULL when not quantised. */
typedef struct {
    qweight *conv1;
    resblock_qweights *blocks; /* [layers] */
} vit_qweights;

typedef struct {
    vit_config cfg;
    vit_params params;
    param_table ptable;
    vit_qweights q; /* vit_quantise; owned, freed with the tower */
    vit_acts acts;
    param_table atable;
    int act_batch, act_keep; /* what the activations are sized for */
    /* training (vit_alloc_grads): gradients in the parameters' layout, and
     * one block's worth of backward scratch sized for dact_batch */
    vit_params grads;
    param_table gtable;
    resblock_dacts dacts;
    float *dx;              /* [B*T, W] gradient of the residual stream */
    float *dln_post, *dcls; /* [B, W] */
    param_table dtable;
    int dact_batch;
    /* the patches the last forward kept (vit_forward_masked), for its
     * backward: fwd_keep per image, 0 = all of them; fwd_slot[b * G*G + p]:
     * patch p's place among image b's kept ones, -1 dropped (owned; grown
     * to fwd_slot_n entries as batches need) */
    int fwd_keep;
    int32_t *fwd_slot;
    size_t fwd_slot_n;
    /* locking (set before vit_alloc_grads): the first frozen_groups groups
     * (vit_param_group) get no gradient: they are not in gtable, their grads
     * fields stay NULL, and vit_backward stops above them */
    int frozen_groups;
} vit;

#define VIT_MAX_LAYERS 1024

/* Config from the shapes of `visual.*`. heads: the head count the checkpoint
 * records (clip-train's clip_config metadata), or 0 when it records none:
 * then width / MODEL_DEFAULT_HEAD_DIM (64, OpenAI's rule). 0, or -1 with an error if `visual.*` is
 * absent or inconsistent (sizes in range, heads dividing the width, every
 * tensor the configuration implies present with its shape: vit_check_ckpt),
 * before anything is allocated. */
int vit_config_from_ckpt(const ckpt *c, int heads, vit_config *cfg);
int vit_check_ckpt(const vit_config *cfg, const ckpt *c);
/* The tower with zeroed parameters; NULL with an error (out of memory). */
vit *vit_create(const vit_config *cfg);
int vit_load(vit *m, const ckpt *c);
void vit_free(vit *m);

/* Quantise the Linear weights as they are now, for forwards under
 * PRECISION_INT8 (again after the weights change); 0, or -1 with an error,
 * the tower unchanged. vit_free_quantised drops them (vit_free does too). */
int vit_quantise(vit *m);
void vit_free_quantised(vit *m);

/* Size the activations for batch B; keep_layers (resblock.h): ACTS_INFER
 * reuses one slot, ACTS_TRAIN keeps every block's activations for the
 * backward, ACTS_CHECKPOINT only every block's output (the backward
 * recomputes the rest). 0, or -1 with an error (out of memory). */
int vit_reserve(vit *m, int B, int keep_layers);

/* pixels: uint8 [B, R, R, 3] (R = cfg.resolution), normalised with CLIP's
 * mean/std here. out: [B, out_dim] unnormalised features (NULL: only in
 * m->acts.out). cx: the precision and timing of the matrix products
 * (PRECISION_INT8 needs vit_quantise first). 0, or -1 with an error. */
int vit_forward(vit *m, const compute_ctx *cx, const uint8_t *pixels, int B, float *out);
/* vit_forward over a subset of each image's patches (patch dropout, FLIP):
 * kept int32 [B, keep], image b's patch indices (row-major on the grid, in
 * [0, G*G), distinct) in the order they enter the sequence after the class
 * token; their positional embeddings are those of their places on the grid.
 * The blocks run over T' = 1 + keep tokens; conv1 embeds only the kept
 * patches. kept NULL: all patches (keep ignored), vit_forward itself. The
 * kept patches are remembered for vit_backward. 0, or -1 with an error
 * (keep outside [1, G*G], an index out of range or repeated). */
int vit_forward_masked(vit *m, const compute_ctx *cx, const uint8_t *pixels, int B, int keep,
                       const int32_t *kept, float *out);

/* Allocate (zeroed) the gradients, and the backward scratch for the batch
 * the activations are reserved for; does nothing the second time. 0, or -1
 * with an error (out of memory). */
int vit_alloc_grads(vit *m);
/* Backward of the vit_forward just run on the same batch, with activations
 * kept (vit_reserve(m, B, 1) before the forward). dout: [B, out_dim]
 * gradient w.r.t. the unnormalised output. Accumulates into m->grads (zero
 * m->gtable.data between steps). No gradient w.r.t. the pixels, and none
 * below the first trainable group (frozen_groups): the backward ends there
 * (all frozen: it does nothing). After vit_forward_masked, over the kept
 * patches: the positional_embedding rows of dropped patches get no
 * gradient. -1 with an error when no activations were kept for batch B,
 * else 0. */
int vit_backward(vit *m, const compute_ctx *cx, const float *dout, int B);

/* The parameter groups of open_clip's VisionTransformer.lock, in order: 0
 * the stem (conv1, class_embedding, positional_embedding, ln_pre), 1 ..
 * layers-1 blocks 0 .. layers-2, layers the last block and ln_post, layers+1
 * proj: vit_groups = layers + 2. The group of a parameter by its name; -1
 * for a name that is none of the tower's. */
int vit_param_group(const vit_config *cfg, const char *name);
static inline int vit_groups(const vit_config *cfg) { return cfg->layers + 2; }

/* Multiply-add FLOPs (2 per MAC) of one image's forward pass: the GEMMs
 * and attention products, for benchmarks. */
double vit_forward_flops(const vit_config *cfg);

#endif
