/* The Chinese text tower: Hugging Face BertModel (post-LN, erf GELU) and the
 * joint model's text head: pooler -> ln_final -> @ text_projection.
 * Parameter names are those of the joint checkpoint: `transformer.` + HF
 * names for the body, `ln_final.*` and `text_projection` for the head. */
#ifndef CLIP_BERT_H
#define CLIP_BERT_H

#include <stdint.h>

#include "ckpt/checkpoint.h"
#include "ckpt/param_table.h"
#include "kernels/blas.h"
#include "model/resblock.h"

/* limits on sizes read from a checkpoint or config.json (BERT-large: 1024
 * wide, 24 layers; bert-base-chinese: 21128 ids) */
#define BERT_MAX_WIDTH (1 << 14)
#define BERT_MAX_LAYERS 1024
#define BERT_MAX_VOCAB (1 << 22)

typedef struct {
    int hidden, layers, heads, intermediate;
    int max_pos, type_vocab, vocab;
    float eps;   /* 1e-12 */
    int out_dim; /* text_projection [hidden, out_dim] */
    /* 1: the state dict holds the int64 [1, max_pos] buffer
     * `embeddings.position_ids` (0, 1, ..., max_pos - 1), as Hugging Face
     * BertModel before transformers 4.31 kept it; later ones leave it out
     * (persistent=False) and refuse it in a strict load. Saved checkpoints
     * write it only when set: the key set of the checkpoint it came from. */
    int position_ids;
} bert_config;

typedef struct {
    float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* attention.self.{query,key,value} */
    float *ao_w, *ao_b, *ao_ln_w, *ao_ln_b;   /* attention.output.{dense,LayerNorm} */
    float *i_w, *i_b;                         /* intermediate.dense [I, H] */
    float *o_w, *o_b, *o_ln_w, *o_ln_b;       /* output.{dense,LayerNorm} */
} bert_layer_params;

typedef struct {
    float *word_emb, *pos_emb, *type_emb, *emb_ln_w, *emb_ln_b;
    bert_layer_params *layers;
    float *pooler_w, *pooler_b;
    float *ln_final_w, *ln_final_b; /* head: LayerNorm(hidden), eps 1e-5 */
    float *text_proj;               /* [H, D] */
} bert_params;

/* The Linear weights quantised for int8 (gemm_int8.h): every layer's six
 * and the pooler's; all NULL when not quantised. */
typedef struct {
    qweight *q, *k, *v, *ao, *i, *o;
} bert_layer_qweights;

typedef struct {
    bert_layer_qweights *layers; /* [layers] */
    qweight *pooler;
} bert_qweights;

typedef struct {
    float *qkv;   /* [N, 3H] */
    float *att;   /* [B, NH, L, L] */
    float *atty;  /* [N, H] */
    float *res_1; /* [N, H] x + attention output dense */
    float *ln_1, *ln_1_mean, *ln_1_rstd;
    float *fc, *fc_act;               /* [N, I] before / after GELU; fc_act: one slot shared by
                                       all layers (bert_backward recomputes it) */
    float *res_2;                     /* [N, H] ln_1 + output dense */
    float *out, *out_mean, *out_rstd; /* [N, H] the layer's output LayerNorm */
} bert_layer_acts;

typedef struct {
    uint8_t *key_valid; /* [N] id != [PAD]; malloc'd beside the table */
    float *emb, *emb_ln, *emb_ln_mean, *emb_ln_rstd; /* [N, H] */
    bert_layer_acts *layers;
    float *cls;               /* [B, H] */
    float *pool_pre, *pooled; /* [B, H] before / after tanh */
    float *ln_final, *ln_final_mean, *ln_final_rstd;
    float *out; /* [B, D] */
} bert_acts;

/* Backward scratch: one layer's worth, reused by every layer. */
typedef struct {
    float *dx;                                     /* [N, H] gradient of the residual stream */
    float *dres, *dln, *datty;                     /* [N, H] */
    float *dqkv;                                   /* [N, 3H] */
    float *datt;                                   /* [B, NH, L, L] */
    float *dfc_act, *dfc;                          /* [N, I] after / before GELU */
    float *dln_final, *dpooled, *dpool_pre, *dcls; /* [B, H] */
} bert_dacts;

typedef struct {
    bert_config cfg;
    bert_params params;
    param_table ptable;
    bert_qweights q; /* bert_quantise; owned, freed with the tower */
    bert_acts acts;
    param_table atable;
    int act_batch, act_len, act_keep;
    /* training (bert_alloc_grads): gradients in the parameters' layout, and
     * the backward scratch sized for dact_batch x dact_len tokens */
    bert_params grads;
    param_table gtable;
    bert_dacts dacts;
    param_table dtable;
    int dact_batch, dact_len;
    /* locking (set before bert_alloc_grads): the first frozen_groups groups
     * (bert_param_group) get no gradient: not in gtable, their grads fields
     * NULL, and bert_backward stops above them */
    int frozen_groups;
} bert;

/* Config from tensor shapes under `prefix` ("transformer.", "bert." or "");
 * heads = hidden / MODEL_DEFAULT_HEAD_DIM (64, BERT-base's; at least 1) and
 * eps 1e-12 unless set by bert_config_from_json or a checkpoint's record;
 * position_ids from the presence of `prefix`embeddings.position_ids. */
int bert_config_from_ckpt(const ckpt *c, const char *prefix, bert_config *cfg);
/* Overrides from a Hugging Face config.json: each size in range, heads
 * dividing hidden_size; -1 with an error naming the file and the limit. */
int bert_config_from_json(const char *path, bert_config *cfg);
/* 0 if cfg (after config.json) agrees with the sizes the tensors gave,
 * else -1 naming `path`, the key and both values. */
int bert_config_matches(const bert_config *cfg, const bert_config *tensors, const char *path);

/* The tower with zeroed parameters; NULL with an error (out of memory). */
bert *bert_create(const bert_config *cfg);
/* Body weights from `c` where they sit under `prefix` (the joint
 * checkpoint's "transformer.", or an HF file's "bert." or ""). Accepts the
 * old LayerNorm gamma/beta names; ignores embeddings.position_ids. */
int bert_load_body(bert *m, const ckpt *c, const char *prefix);
void bert_free(bert *m);

/* As vit_quantise / vit_free_quantised (vit.h), for this tower's Linears. */
int bert_quantise(bert *m);
void bert_free_quantised(bert *m);

/* Size the activations for B texts of L tokens; keep_layers as
 * vit_reserve's (ACTS_INFER, ACTS_TRAIN or ACTS_CHECKPOINT, model/resblock.h:
 * checkpointed, a layer keeps its output LayerNorm's [N, H] only). 0, or -1
 * with an error (out of memory). */
int bert_reserve(bert *m, int B, int L, int keep_layers);

/* ids: int32 [B, L], 0 = [PAD] (masked). out: [B, out_dim] unnormalised.
 * cx: as vit_forward's. -1 with an error for an id outside the vocabulary,
 * L > max positions, or int8 without bert_quantise. */
int bert_forward(bert *m, const compute_ctx *cx, const int32_t *ids, int B, int L, float *out);

/* Allocate (zeroed) the gradients, and the backward scratch for the shape
 * the activations are reserved for; does nothing the second time. 0, or -1
 * with an error (out of memory). */
int bert_alloc_grads(bert *m);
/* Backward of the bert_forward just run on the same ids, with activations
 * kept (bert_reserve(m, B, L, 1) before the forward). dout: [B, out_dim]
 * gradient w.r.t. the unnormalised output. Accumulates into m->grads (zero
 * m->gtable.data between steps). As nn.Embedding(padding_idx=0), the [PAD]
 * row of the word embeddings gets no gradient. Nothing below the first
 * trainable group (frozen_groups) is differentiated (all frozen: nothing at
 * all). -1 with an error when no activations were kept for B x L tokens,
 * else 0. */
int bert_backward(bert *m, const compute_ctx *cx, const int32_t *ids, const float *dout, int B,
                  int L);

/* Parameter groups for locking, in order: 0 the embeddings, 1 .. layers the
 * encoder layers, layers+1 the head (pooler, ln_final, text_projection):
 * bert_groups = layers + 2. The group of a parameter by its name; -1 for a
 * name that is none of the tower's. */
int bert_param_group(const bert_config *cfg, const char *name);
static inline int bert_groups(const bert_config *cfg) { return cfg->layers + 2; }

/* FLOPs of one text of L tokens through the layers (GEMMs and attention). */
double bert_forward_flops(const bert_config *cfg, int L);

#endif
