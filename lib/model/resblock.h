/* OpenAI CLIP's ResidualAttentionBlock (pre-LN, QuickGELU), shared by the
 * ViT image tower and the English text transformer:
 *   x = x + out_proj(attn(ln_1(x)));  x = x + c_proj(quickgelu(c_fc(ln_2(x)))) */
#ifndef CLIP_RESBLOCK_H
#define CLIP_RESBLOCK_H

#include <stdint.h>

#include "ckpt/param_table.h"
#include "kernels/blas.h"

/* When the attention head count is not recorded (a foreign checkpoint, no
 * config.json), it is width / MODEL_DEFAULT_HEAD_DIM: OpenAI CLIP's and
 * Hugging Face BERT-base's 64-wide heads. */
#define MODEL_DEFAULT_HEAD_DIM 64

/* The head count of a tower of this width: `recorded` (0: none recorded)
 * when it divides the width, else width / MODEL_DEFAULT_HEAD_DIM when that
 * divides it. -1 with an error naming the tower (`what`: "visual", ...). */
int resblock_heads(const char *what, int width, int recorded, int *heads);
/* How many blocks "<prefix>N.ln_1.weight" (N = 0, 1, ...) c holds; -1 with
 * an error when more than max. */
int resblock_count_layers(const ckpt *c, const char *prefix, int max, const char *what);
/* The N of a tensor name "<prefix>N.<rest>" (block N of a stack): N when
 * 0 <= N < layers, -1 when the name has the prefix but no such block, -2
 * when it does not have the prefix. */
int resblock_name_index(const char *name, const char *prefix, int layers);

typedef struct {
    float *ln_1_w, *ln_1_b;
    float *in_proj_w, *in_proj_b;   /* [3C, C], [3C] */
    float *out_proj_w, *out_proj_b; /* [C, C], [C] */
    float *ln_2_w, *ln_2_b;
    float *c_fc_w, *c_fc_b;     /* [F, C], [F] */
    float *c_proj_w, *c_proj_b; /* [C, F], [C] */
} resblock_params;

/* A block's Linear weights quantised for int8 inference (gemm_int8.h),
 * owned by the tower that owns the block: resblock_quantise makes them from
 * the current weights (change the weights and they are stale: quantise
 * again), resblock_free_quantised frees them. All NULL when not quantised. */
typedef struct {
    qweight *in_proj, *out_proj, *c_fc, *c_proj;
} resblock_qweights;

/* 0, or -1 with an error (out of memory), nothing left allocated. */
int resblock_quantise(resblock_qweights *q, const resblock_params *p, int C, int F);
void resblock_free_quantised(resblock_qweights *q);
/* The same for a tower's stack of `layers` blocks: a malloc'd [layers] array
 * (resblock_stack_free_quantised frees it and its weights; NULL: nothing),
 * or NULL with an error naming `what` (the tower). */
resblock_qweights *resblock_stack_quantise(const resblock_params *p, int layers, int C, int F,
                                           const char *what);
void resblock_stack_free_quantised(resblock_qweights *q, int layers);

/* What one block's forward keeps for its backward (N = B*T rows). */
typedef struct {
    float *ln_1, *ln_1_mean, *ln_1_rstd; /* [N, C], [N], [N]; ln_1, att, ln_2 and */
    float *qkv;                          /* [N, 3C] */
    float *att;                          /* [B, NH, T, T]  fc_act may be shared */
    float *atty;                         /* [N, C] heads before out_proj */
    float *res_1;                        /* [N, C] x + attention */
    float *ln_2, *ln_2_mean, *ln_2_rstd;
    float *fc;     /* [N, F] before QuickGELU */
    float *fc_act; /* [N, F]; may be a slot shared between blocks */
    float *out;    /* [N, C] the block's output */
} resblock_acts;

/* Backward scratch: one slot, reused by every block of a tower. */
typedef struct {
    float *dres;          /* [N, C] the residual stream when dinp != dout */
    float *dln;           /* [N, C] gradient of ln_2, then of ln_1 */
    float *datty;         /* [N, C] */
    float *dqkv;          /* [N, 3C] */
    float *datt;          /* [B, NH, T, T] */
    float *dfc_act, *dfc; /* [N, F] after / before QuickGELU */
} resblock_dacts;

/* Parameters in checkpoint key order, names `prefix` + "ln_1.weight" etc. */
void resblock_layout_params(param_table *t, resblock_params *p, const char *prefix, int C, int F);
void resblock_layout_acts(param_table *t, resblock_acts *a, int B, int T, int C, int F, int NH);
/* The same without ln_1, att, ln_2 and fc_act, for blocks whose activations
 * are kept for training: the caller points those at one shared slot (block
 * 0's), which resblock_backward recomputes from what each block keeps
 * (saves 3 N*C + N*F + B*NH*T*T floats per block; ~1/3 of ViT-B/16's). */
void resblock_layout_acts_kept(param_table *t, resblock_acts *a, int B, int T, int C, int F,
                               int NH);

/* What a tower's activations are reserved for (the `keep` of vit_reserve,
 * bert_reserve, clip_text_reserve):
 *   ACTS_INFER       one slot, reused by every block (inference)
 *   ACTS_TRAIN       every block's activations kept for the backward (shared
 *                    slots aside, see resblock_layout_acts_kept)
 *   ACTS_CHECKPOINT  gradient checkpointing: each block keeps only its output
 *                    [N, C] (the next block's input); one full slot, which
 *                    the backward re-runs each block's forward into before
 *                    that block's backward. The same arithmetic on the same
 *                    inputs: the gradients are ACTS_TRAIN's, bit for bit. */
enum { ACTS_INFER = 0, ACTS_TRAIN = 1, ACTS_CHECKPOINT = 2 };

/* The activations of a tower's `layers` blocks for `keep` (above): laid out
 * in t, then, after pt_alloc(t), resblock_link_tower points the blocks that
 * share block 0's slots at them. */
void resblock_layout_tower(param_table *t, resblock_acts *blocks, int layers, int keep, int B,
                           int T, int C, int F, int NH);
void resblock_link_tower(resblock_acts *blocks, int layers, int keep);

/* q: the block's quantised weights, needed (non-NULL) when cx->precision is
 * PRECISION_INT8, else ignored. 0, or -1 with an error (int8 without them). */
int resblock_forward(const compute_ctx *cx, const resblock_params *p, const resblock_qweights *q,
                     resblock_acts *a, const float *inp, int B, int T, int C, int F, int NH,
                     int causal);
void resblock_layout_dacts(param_table *t, resblock_dacts *d, int B, int T, int C, int F, int NH);

/* Backward of resblock_forward, right after it (a: that block's kept
 * activations, inp: its input). dout: gradient w.r.t. the block's output.
 * Accumulates the parameter gradients into g (NULL: none). dinp == dout is
 * the intended use: the buffer holding the residual stream's gradient is
 * updated in place from d(out) to d(inp) (overwritten, not accumulated).
 * Otherwise dinp += d(inp) and dout is left unchanged. d is scratch (zeroed
 * here as needed); a->ln_1, att, atty, ln_2 and fc_act are recomputed (the
 * same values: causal as in the forward). 0, or -1 with an error (out of
 * memory in a bf16 product). */
int resblock_backward(const compute_ctx *cx, const resblock_params *p, resblock_params *g,
                      const resblock_acts *a, resblock_dacts *d, float *dinp, const float *dout,
                      const float *inp, int B, int T, int C, int F, int NH, int causal);

#endif
