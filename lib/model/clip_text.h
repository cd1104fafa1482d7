/* The English text tower: OpenAI CLIP's text transformer (causal, QuickGELU,
 * pre-LN) with ln_final and text_projection; the feature is taken at the EOT
 * token (the largest id). Keys at the top level of OpenAI's checkpoint:
 * token_embedding.weight, positional_embedding, transformer.resblocks.*,
 * ln_final.*, text_projection. */
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
    float *emb; /* [B*L, W] */
    resblock_acts *blocks;
    float *eot; /* [B, W] the last block's output at each EOT */
    float *ln_final, *ln_final_mean, *ln_final_rstd;
    float *out; /* [B, D] */
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
/* 0, or -1 with an error (out of memory). */
int clip_text_reserve(clip_text *m, int B, int L, int keep_layers);

/* ids: int32 [B, L], L <= context. out: [B, out_dim] unnormalised. cx: as
 * vit_forward's. -1 with an error (an id outside the vocabulary, L past the
 * context, int8 without clip_text_quantise). */
int clip_text_forward(clip_text *m, const compute_ctx *cx, const int32_t *ids, int B, int L,
                      float *out);

#endif
