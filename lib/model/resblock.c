#include "model/resblock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "kernels/blas.h"
#include "kernels/ops.h"

void resblock_layout_params(param_table *t, resblock_params *p, const char *prefix, int C, int F)
{
    char n[256];
    pt_add_norm(t, &p->ln_1_w, &p->ln_1_b, prefix, "ln_1", C);
    snprintf(n, sizeof n, "%sattn.in_proj_weight", prefix);
    pt_add(t, &p->in_proj_w, n, 2, (int64_t[]){3 * C, C});
    snprintf(n, sizeof n, "%sattn.in_proj_bias", prefix);
    pt_add(t, &p->in_proj_b, n, 1, (int64_t[]){3 * C});
    pt_add_linear(t, &p->out_proj_w, &p->out_proj_b, prefix, "attn.out_proj", C, C);
    pt_add_norm(t, &p->ln_2_w, &p->ln_2_b, prefix, "ln_2", C);
    pt_add_linear(t, &p->c_fc_w, &p->c_fc_b, prefix, "mlp.c_fc", F, C);
    pt_add_linear(t, &p->c_proj_w, &p->c_proj_b, prefix, "mlp.c_proj", C, F);
}

static void layout_acts(param_table *t, resblock_acts *a, int B, int T, int C, int F, int NH,
                        int with_shared)
{
    int64_t N = (int64_t)B * T;
    if (with_shared) pt_add(t, &a->ln_1, "ln_1", 2, (int64_t[]){N, C});
    pt_add(t, &a->ln_1_mean, "ln_1_mean", 1, (int64_t[]){N});
    pt_add(t, &a->ln_1_rstd, "ln_1_rstd", 1, (int64_t[]){N});
    pt_add(t, &a->qkv, "qkv", 2, (int64_t[]){N, 3 * C});
    if (with_shared) pt_add(t, &a->att, "att", 4, (int64_t[]){B, NH, T, T});
    pt_add(t, &a->atty, "atty", 2, (int64_t[]){N, C});
    pt_add(t, &a->res_1, "res_1", 2, (int64_t[]){N, C});
    if (with_shared) pt_add(t, &a->ln_2, "ln_2", 2, (int64_t[]){N, C});
    pt_add(t, &a->ln_2_mean, "ln_2_mean", 1, (int64_t[]){N});
    pt_add(t, &a->ln_2_rstd, "ln_2_rstd", 1, (int64_t[]){N});
    pt_add(t, &a->fc, "fc", 2, (int64_t[]){N, F});
    if (with_shared) pt_add(t, &a->fc_act, "fc_act", 2, (int64_t[]){N, F});
    pt_add(t, &a->out, "out", 2, (int64_t[]){N, C});
}

void resblock_layout_acts(param_table *t, resblock_acts *a, int B, int T, int C, int F, int NH)
{
    layout_acts(t, a, B, T, C, F, NH, 1);
}

void resblock_layout_acts_kept(param_table *t, resblock_acts *a, int B, int T, int C, int F, int NH)
{
    layout_acts(t, a, B, T, C, F, NH, 0);
}

void resblock_layout_tower(param_table *t, resblock_acts *blocks, int layers, int keep, int B,
                           int T, int C, int F, int NH)
{
    resblock_layout_acts(t, &blocks[0], B, T, C, F, NH);
    for (int i = 1; keep && i < layers; i++) {
        if (keep == ACTS_CHECKPOINT)
            pt_add(t, &blocks[i].out, "out", 2, (int64_t[]){(int64_t)B * T, C});
        else
            resblock_layout_acts_kept(t, &blocks[i], B, T, C, F, NH);
    }
}

void resblock_link_tower(resblock_acts *blocks, int layers, int keep)
{
    const resblock_acts *b0 = &blocks[0];
    for (int i = 1; i < layers; i++) {
        resblock_acts *b = &blocks[i];
        if (keep == ACTS_TRAIN) {
            b->ln_1 = b0->ln_1, b->att = b0->att, b->ln_2 = b0->ln_2, b->fc_act = b0->fc_act;
        } else { /* the slot; a checkpointed block writes its output to its own */
            float *out = b->out;
            *b = *b0;
            if (keep == ACTS_CHECKPOINT) b->out = out;
        }
    }
}

int resblock_quantise(resblock_qweights *q, const resblock_params *p, int C, int F)
{
    memset(q, 0, sizeof *q);
    if ((q->in_proj = qweight_make(p->in_proj_w, 3 * C, C)) &&
        (q->out_proj = qweight_make(p->out_proj_w, C, C)) &&
        (q->c_fc = qweight_make(p->c_fc_w, F, C)) && (q->c_proj = qweight_make(p->c_proj_w, C, F)))
        return 0;
    resblock_free_quantised(q);
    return -1;
}

void resblock_free_quantised(resblock_qweights *q)
{
    qweight_free(q->in_proj);
    qweight_free(q->out_proj);
    qweight_free(q->c_fc);
    qweight_free(q->c_proj);
    memset(q, 0, sizeof *q);
}

int resblock_name_index(const char *name, const char *prefix, int layers)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n)) return -2;
    char *end;
    long i = strtol(name + n, &end, 10);
    return end != name + n && *end == '.' && i >= 0 && i < layers ? (int)i : -1;
}

resblock_qweights *resblock_stack_quantise(const resblock_params *p, int layers, int C, int F,
                                           const char *what)
{
    resblock_qweights *q = calloc(layers ? layers : 1, sizeof *q);
    if (!q) {
        clip_set_error("%s: out of memory quantising the weights", what);
        return NULL;
    }
    for (int i = 0; i < layers; i++)
        if (resblock_quantise(&q[i], &p[i], C, F)) {
            resblock_stack_free_quantised(q, layers);
            return NULL;
        }
    return q;
}

void resblock_stack_free_quantised(resblock_qweights *q, int layers)
{
    for (int i = 0; q && i < layers; i++) resblock_free_quantised(&q[i]);
    free(q);
}

static void attention_timed(const compute_ctx *cx, float *out, float *att, const float *qkv,
                            int causal, int B, int T, int C, int NH)
{
    double t0 = prof_start(cx);
    attention_forward(out, att, qkv, NULL, causal, B, T, C, NH);
    prof_stop(cx, PROF_ATTENTION, t0);
}

int resblock_forward(const compute_ctx *cx, const resblock_params *p, const resblock_qweights *q,
                     resblock_acts *a, const float *inp, int B, int T, int C, int F, int NH,
                     int causal)
{
#define Q(f) (q ? q->f : NULL)
    int N = B * T;
    layernorm_forward(a->ln_1, a->ln_1_mean, a->ln_1_rstd, inp, p->ln_1_w, p->ln_1_b, N, C, 1e-5f);
    if (matmul_forward(cx, a->qkv, 3 * C, a->ln_1, p->in_proj_w, Q(in_proj), p->in_proj_b, N, C,
                       3 * C))
        return -1;
    attention_timed(cx, a->atty, a->att, a->qkv, causal, B, T, C, NH);
    if (matmul_residual_forward(cx, a->res_1, a->atty, p->out_proj_w, Q(out_proj), p->out_proj_b,
                                inp, N, C, C))
        return -1;
    layernorm_forward(a->ln_2, a->ln_2_mean, a->ln_2_rstd, a->res_1, p->ln_2_w, p->ln_2_b, N, C,
                      1e-5f);
    if (matmul_forward(cx, a->fc, F, a->ln_2, p->c_fc_w, Q(c_fc), p->c_fc_b, N, C, F)) return -1;
    quickgelu_forward(a->fc_act, a->fc, (size_t)N * F);
    /* inp may alias a->out when activations are shared between layers
     * (inference): it is no longer read past this point */
    return matmul_residual_forward(cx, a->out, a->fc_act, p->c_proj_w, Q(c_proj), p->c_proj_b,
                                   a->res_1, N, F, C);
#undef Q
}

void resblock_layout_dacts(param_table *t, resblock_dacts *d, int B, int T, int C, int F, int NH)
{
    int64_t N = (int64_t)B * T;
    pt_add(t, &d->dres, "dres", 2, (int64_t[]){N, C});
    pt_add(t, &d->dln, "dln", 2, (int64_t[]){N, C});
    pt_add(t, &d->datty, "datty", 2, (int64_t[]){N, C});
    pt_add(t, &d->dqkv, "dqkv", 2, (int64_t[]){N, 3 * C});
    pt_add(t, &d->datt, "datt", 4, (int64_t[]){B, NH, T, T});
    pt_add(t, &d->dfc_act, "dfc_act", 2, (int64_t[]){N, F});
    pt_add(t, &d->dfc, "dfc", 2, (int64_t[]){N, F});
}

int resblock_backward(const compute_ctx *cx, const resblock_params *p, resblock_params *g,
                      const resblock_acts *a, resblock_dacts *d, float *dinp, const float *dout,
                      const float *inp, int B, int T, int C, int F, int NH, int causal)
{
#define G(f) (g ? g->f : NULL)
    size_t N = (size_t)B * T;
    float *dx = dinp;
    if (dinp != dout) {
        dx = d->dres;
        memcpy(dx, dout, N * C * sizeof(float));
    }
    /* the shared slots hold another block's values: recompute this one's */
    layernorm_forward(a->ln_2, a->ln_2_mean, a->ln_2_rstd, a->res_1, p->ln_2_w, p->ln_2_b, N, C,
                      1e-5f);
    quickgelu_forward(a->fc_act, a->fc, N * F);
    zero_floats(d->dfc_act, N * F);
    zero_floats(d->dfc, N * F);
    zero_floats(d->dln, N * C);
    zero_floats(d->datty, N * C);
    zero_floats(d->dqkv, N * 3 * C);
    /* out = res_1 + c_proj(quickgelu(c_fc(ln_2(res_1)))); dx: d(out) -> d(res_1) */
    if (matmul_backward(cx, d->dfc_act, G(c_proj_w), G(c_proj_b), dx, C, a->fc_act, p->c_proj_w, N,
                        F, C))
        return -1;
    quickgelu_backward(d->dfc, a->fc, d->dfc_act, N * F);
    if (matmul_backward(cx, d->dln, G(c_fc_w), G(c_fc_b), d->dfc, F, a->ln_2, p->c_fc_w, N, C, F))
        return -1;
    layernorm_backward(dx, G(ln_2_w), G(ln_2_b), d->dln, a->res_1, p->ln_2_w, a->ln_2_mean,
                       a->ln_2_rstd, N, C);
    /* res_1 = inp + out_proj(attn(in_proj(ln_1(inp)))); dx: d(res_1) -> d(inp) */
    if (matmul_backward(cx, d->datty, G(out_proj_w), G(out_proj_b), dx, C, a->atty, p->out_proj_w,
                        N, C, C))
        return -1;
    attention_timed(cx, a->atty, a->att, a->qkv, causal, B, T, C, NH);
    double t0 = prof_start(cx);
    attention_backward(d->dqkv, d->datt, d->datty, a->qkv, a->att, B, T, C, NH);
    prof_stop(cx, PROF_ATTENTION, t0);
    zero_floats(d->dln, N * C);
    layernorm_forward(a->ln_1, a->ln_1_mean, a->ln_1_rstd, inp, p->ln_1_w, p->ln_1_b, N, C, 1e-5f);
    if (matmul_backward(cx, d->dln, G(in_proj_w), G(in_proj_b), d->dqkv, 3 * C, a->ln_1,
                        p->in_proj_w, N, C, 3 * C))
        return -1;
    layernorm_backward(dx, G(ln_1_w), G(ln_1_b), d->dln, inp, p->ln_1_w, a->ln_1_mean, a->ln_1_rstd,
                       N, C);
    if (dx != dinp) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < N * C; i++) dinp[i] += dx[i];
    }
    return 0;
#undef G
}

int resblock_heads(const char *what, int width, int recorded, int *heads)
{
    if (recorded) {
        if (recorded < 0 || width % recorded) {
            clip_set_error("%s: the recorded head count %d does not divide the width %d (a "
                           "damaged clip_config record?)",
                           what, recorded, width);
            return -1;
        }
        *heads = recorded;
    } else if (width % MODEL_DEFAULT_HEAD_DIM) {
        clip_set_error("%s: width %d is not a multiple of %d (without a recorded head count, "
                       "heads = width / %d)",
                       what, width, MODEL_DEFAULT_HEAD_DIM, MODEL_DEFAULT_HEAD_DIM);
        return -1;
    } else {
        *heads = width / MODEL_DEFAULT_HEAD_DIM;
    }
    return 0;
}

int resblock_count_layers(const ckpt *c, const char *prefix, int max, const char *what)
{
    char name[256];
    for (int n = 0;; n++) {
        snprintf(name, sizeof name, "%s%d.ln_1.weight", prefix, n);
        if (!ckpt_find(c, name)) return n;
        if (n + 1 > max) {
            clip_set_error("%s: more than %d layers (%sN)", what, max, prefix);
            return -1;
        }
    }
}
