/* The English text tower: OpenAI CLIP's text transformer (causal, QuickGELU,
 * pre-LN) with ln_final and text_projection; the feature is taken at the EOT
 * token (the largest id). Keys at the top level of OpenAI's checkpoint:
 * token_embedding.weight, positional_embedding, transformer.resblocks.*,
 * ln_final.*, text_projection. Forward for inference and training, backward
 * for training (the interface of bert.h: alloc_grads, backward). */
#ifndef CLIP_CLIP_TEXT_H
#define CLIP_CLIP_TEXT_H

#include <stdint.h>

#include "ckpt/checkpoint.h"
#include "ckpt/param_table.h"
#include "model/resblock.h"

typedef struct {
    int width, layers, heads, mlp; /* heads: width / 64 unless recorded */
    int context, vocab, out_dim;
} clip_text_config;

typedef struct {
    float *token_emb; /* [V, W] */
    float *pos_emb;   /* [context, W] */
    resblock_params *blocks;
    float *ln_final_w, *ln_final_b;
    float *text_proj; /* [W, D] */
} clip_text_params;

typedef struct {
    float *emb;            /* [B*L, W] token + positional embedding, block 0's input */
    resblock_acts *blocks; /* all alias one slot unless kept for training; kept
                              blocks share block 0's ln_1, att, ln_2, fc_act */
    float *eot;            /* [B, W] the last block's output at each EOT */
    float *ln_final, *ln_final_mean, *ln_final_rstd;
    float *out;   /* [B, D] */
    int *eot_pos; /* [B], malloc'd beside the table */
} clip_text_acts;

typedef struct {
    clip_text_config cfg;
    clip_text_params params;
    param_table ptable;
    resblock_qweights *q; /* [layers], clip_text_quantise; owned; NULL when not quantised */
    clip_text_acts acts;
    param_table atable;
    int act_batch, act_len, act_keep;
    /* training (clip_text_alloc_grads): gradients in the parameters' layout,
     * and one block's worth of backward scratch sized for dact_batch x
     * dact_len tokens */
    clip_text_params grads;
    param_table gtable;
    resblock_dacts dacts;
    float *dx;               /* [B*L, W] gradient of the residual stream */
    float *dln_final, *deot; /* [B, W] */
    param_table dtable;
    int dact_batch, dact_len;
    /* locking (set before clip_text_alloc_grads): the first frozen_groups
     * groups (clip_text_param_group) get no gradient: not in gtable, their
     * grads fields NULL, and clip_text_backward stops above them */
    int frozen_groups;
} clip_text;

#define CLIP_TEXT_MAX_LAYERS 1024
/* Sizes in range and every implied tensor present with its shape, checked
 * before anything is allocated; -1 with an error otherwise. heads: the head
 * count the checkpoint records, or 0 when it records none: then width /
 * MODEL_DEFAULT_HEAD_DIM (64, OpenAI's rule; the width must be a multiple). */
int clip_text_config_from_ckpt(const ckpt *c, int heads, clip_text_config *cfg);
/* The tower with zeroed parameters; NULL with an error (out of memory). */
clip_text *clip_text_create(const clip_text_config *cfg);
int clip_text_load(clip_text *m, const ckpt *c);
void clip_text_free(clip_text *m);
/* As vit_quantise / vit_free_quantised (vit.h), for this tower's blocks. */
int clip_text_quantise(clip_text *m);
void clip_text_free_quantised(clip_text *m);
/* Size the activations for B texts of L tokens; keep_layers as
 * vit_reserve's (ACTS_INFER, ACTS_TRAIN or ACTS_CHECKPOINT, resblock.h).
 * 0, or -1 with an error (out of memory). */
int clip_text_reserve(clip_text *m, int B, int L, int keep_layers);

/* ids: int32 [B, L], L <= context. out: [B, out_dim] unnormalised. cx: as
 * vit_forward's. -1 with an error (an id outside the vocabulary, L past the
 * context, int8 without clip_text_quantise). */
int clip_text_forward(clip_text *m, const compute_ctx *cx, const int32_t *ids, int B, int L,
                      float *out);

/* OpenAI CLIP's initialisation of the text tower (initialize_parameters):
 * token_embedding N(0, 0.02), positional_embedding N(0, 0.01), in_proj
 * N(0, W^-0.5), out_proj and c_proj N(0, W^-0.5 (2 layers)^-0.5), c_fc
 * N(0, (2W)^-0.5), text_projection N(0, W^-0.5); biases 0, LayerNorm 1/0.
 * Reproducible from seed. */
void clip_text_init_params(clip_text *m, uint64_t seed);

/* Parameter groups for locking, in order: 0 token_embedding and
 * positional_embedding, 1 .. layers the blocks, layers+1 the head (ln_final,
 * text_projection): clip_text_groups = layers + 2. -1 for a name that is
 * none of the tower's. */
int clip_text_param_group(const clip_text_config *cfg, const char *name);
static inline int clip_text_groups(const clip_text_config *cfg) { return cfg->layers + 2; }

/* Allocate (zeroed) the gradients, and the backward scratch for the shape
 * the activations are reserved for; does nothing the second time. 0, or -1
 * with an error (out of memory). */
int clip_text_alloc_grads(clip_text *m);
/* Backward of the clip_text_forward just run on the same ids, with
 * activations kept (clip_text_reserve(m, B, L, 1) before the forward). dout:
 * [B, out_dim] gradient w.r.t. the unnormalised output. Accumulates into
 * m->grads (zero m->gtable.data between steps). Through the causal mask
 * only the tokens up to each text's EOT receive gradient: the padding after
 * it adds exactly 0 (to token_embedding row 0 and to its positions), as do
 * positional_embedding rows from L on; otherwise id 0 (a real BPE token) is
 * an ordinary row, there is no padding_idx. Nothing below the first
 * trainable group (frozen_groups) is differentiated. -1 with an error
 * when no activations were kept for B x L tokens, else 0. */
int clip_text_backward(clip_text *m, const compute_ctx *cx, const int32_t *ids, const float *dout,
                       int B, int L);

#endif
