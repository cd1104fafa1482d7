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
    int width, layers, heads, mlp; /* heads = width / 64 */
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
    clip_text_acts acts;
    param_table atable;
    int act_batch, act_len, act_keep;
} clip_text;

#define CLIP_TEXT_MAX_LAYERS 1024
/* Sizes in range and every implied tensor present with its shape, checked
 * before anything is allocated; -1 with an error otherwise. */
int clip_text_config_from_ckpt(const ckpt *c, clip_text_config *cfg);
clip_text *clip_text_create(const clip_text_config *cfg);
int clip_text_load(clip_text *m, const ckpt *c);
void clip_text_free(clip_text *m);
void clip_text_reserve(clip_text *m, int B, int L, int keep_layers);

/* ids: int32 [B, L], L <= context. out: [B, out_dim] unnormalised. */
int clip_text_forward(clip_text *m, const int32_t *ids, int B, int L, float *out);

#endif
