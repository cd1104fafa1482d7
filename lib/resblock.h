/* OpenAI CLIP's ResidualAttentionBlock (pre-LN, QuickGELU), shared by the
 * ViT image tower and the English text transformer:
 *   x = x + out_proj(attn(ln_1(x)));  x = x + c_proj(quickgelu(c_fc(ln_2(x)))) */
#ifndef CLIP_RESBLOCK_H
#define CLIP_RESBLOCK_H

#include <stdint.h>

#include "param_table.h"

typedef struct {
    float *ln_1_w, *ln_1_b;
    float *in_proj_w, *in_proj_b;   /* [3C, C], [3C] */
    float *out_proj_w, *out_proj_b; /* [C, C], [C] */
    float *ln_2_w, *ln_2_b;
    float *c_fc_w, *c_fc_b;         /* [F, C], [F] */
    float *c_proj_w, *c_proj_b;     /* [C, F], [C] */
} resblock_params;

/* What one block's forward keeps for its backward (N = B*T rows). */
typedef struct {
    float *ln_1, *ln_1_mean, *ln_1_rstd; /* [N, C], [N], [N] */
    float *qkv;                          /* [N, 3C] */
    float *att;                          /* [B, NH, T, T] */
    float *atty;                         /* [N, C] heads before out_proj */
    float *res_1;                        /* [N, C] x + attention */
    float *ln_2, *ln_2_mean, *ln_2_rstd;
    float *fc;                           /* [N, F] before QuickGELU */
    float *fc_act;                       /* [N, F] */
    float *out;                          /* [N, C] the block's output */
} resblock_acts;

/* Parameters in checkpoint key order, names `prefix` + "ln_1.weight" etc. */
void resblock_layout_params(param_table *t, resblock_params *p, const char *prefix, int C, int F);
void resblock_layout_acts(param_table *t, resblock_acts *a, int B, int T, int C, int F, int NH);

void resblock_forward(const resblock_params *p, resblock_acts *a, const float *inp, int B, int T,
                      int C, int F, int NH, int causal);

#endif
