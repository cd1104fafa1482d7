#include "model/clip_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/blas.h"
#include "kernels/ops.h"
#include "core/util.h"

static void clip_text_layout(const clip_text_config *g, clip_text_params *p, param_table *t);

int clip_text_config_from_ckpt(const ckpt *c, int heads, clip_text_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    const ckpt_tensor *tok = ckpt_find(c, "token_embedding.weight");
    const ckpt_tensor *pos = ckpt_find(c, "positional_embedding");
    const ckpt_tensor *proj = ckpt_find(c, "text_projection");
    const ckpt_tensor *fc = ckpt_find(c, "transformer.resblocks.0.mlp.c_fc.weight");
    if (!tok || !pos || !proj || !fc) {
        clip_set_error("no CLIP text tower: missing %s",
                       !tok    ? "token_embedding.weight"
                       : !pos  ? "positional_embedding"
                       : !proj ? "text_projection"
                               : "transformer.resblocks.0.mlp.c_fc.weight");
        return -1;
    }
    if (tok->ndim != 2 || pos->ndim != 2 || proj->ndim != 2 || fc->ndim != 2) {
        clip_set_error("CLIP text tower: unexpected tensor rank");
        return -1;
    }
    if (check_range("token_embedding.weight: the vocabulary", tok->shape[0], 1, 1 << 24) ||
        check_range("token_embedding.weight: the width", tok->shape[1], 64, 1 << 14) ||
        check_range("positional_embedding: the context length", pos->shape[0], 1, 1 << 16) ||
        check_range("text_projection: the output dimension", proj->shape[1], 1, 1 << 16) ||
        check_range("transformer.resblocks.0.mlp.c_fc.weight: the MLP width", fc->shape[0], 1,
                    1 << 16))
        return -1;
    cfg->vocab = (int)tok->shape[0];
    cfg->width = (int)tok->shape[1];
    cfg->context = (int)pos->shape[0];
    cfg->out_dim = (int)proj->shape[1];
    cfg->mlp = (int)fc->shape[0];
    if (resblock_heads("CLIP text tower", cfg->width, heads, &cfg->heads) < 0) return -1;
    if ((cfg->layers = resblock_count_layers(c, "transformer.resblocks.", CLIP_TEXT_MAX_LAYERS,
                                             "CLIP text tower")) < 0)
        return -1;
    /* every tensor the configuration implies, before anything is allocated */
    clip_text_params p = {0};
    param_table t = {0};
    if (!(p.blocks = calloc(cfg->layers ? cfg->layers : 1, sizeof(resblock_params)))) {
        clip_set_error("CLIP text tower: out of memory for %d layers", cfg->layers);
        return -1;
    }
    clip_text_layout(cfg, &p, &t);
    int rc = pt_check(&t, c);
    pt_free(&t);
    free(p.blocks);
    return rc;
}

static void clip_text_layout(const clip_text_config *g, clip_text_params *p, param_table *t)
{
    int W = g->width;
    pt_add(t, &p->pos_emb, "positional_embedding", 2, (int64_t[]){g->context, W});
    pt_add(t, &p->text_proj, "text_projection", 2, (int64_t[]){W, g->out_dim});
    for (int i = 0; i < g->layers; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "transformer.resblocks.%d.", i);
        resblock_layout_params(t, &p->blocks[i], prefix, W, g->mlp);
    }
    pt_add(t, &p->token_emb, "token_embedding.weight", 2, (int64_t[]){g->vocab, W});
    pt_add_norm(t, &p->ln_final_w, &p->ln_final_b, "", "ln_final", W);
}

clip_text *clip_text_create(const clip_text_config *cfg)
{
    clip_text *m = calloc(1, sizeof *m);
    size_t n = cfg->layers ? cfg->layers : 1;
    if (!m || !(m->params.blocks = calloc(n, sizeof(resblock_params))) ||
        !(m->acts.blocks = calloc(n, sizeof(resblock_acts)))) {
        clip_set_error("CLIP text tower: out of memory for %d layers", cfg->layers);
        clip_text_free(m);
        return NULL;
    }
    m->cfg = *cfg;
    clip_text_layout(cfg, &m->params, &m->ptable);
    pt_alloc(&m->ptable);
    return m;
}

int clip_text_load(clip_text *m, const ckpt *c) { return pt_load(&m->ptable, c, NULL, NULL); }

void clip_text_free_quantised(clip_text *m)
{
    resblock_stack_free_quantised(m->q, m->cfg.layers);
    m->q = NULL;
}

int clip_text_quantise(clip_text *m)
{
    const clip_text_config *g = &m->cfg;
    resblock_qweights *q =
        resblock_stack_quantise(m->params.blocks, g->layers, g->width, g->mlp, "CLIP text tower");
    if (!q) return -1;
    clip_text_free_quantised(m);
    m->q = q;
    return 0;
}

void clip_text_free(clip_text *m)
{
    if (!m) return;
    clip_text_free_quantised(m);
    pt_free(&m->ptable);
    pt_free(&m->atable);
    pt_free(&m->gtable);
    pt_free(&m->dtable);
    free(m->acts.eot_pos);
    free(m->params.blocks);
    free(m->grads.blocks);
    free(m->acts.blocks);
    free(m);
}

int clip_text_reserve(clip_text *m, int B, int L, int keep_layers)
{
    if (m->atable.data && B <= m->act_batch && L <= m->act_len && keep_layers == m->act_keep)
        return 0;
    pt_free(&m->atable);
    free(m->acts.eot_pos);
    m->act_batch = m->act_len = 0;
    const clip_text_config *g = &m->cfg;
    clip_text_acts *a = &m->acts;
    param_table *t = &m->atable;
    int64_t W = g->width, N = (int64_t)B * L;
    if (!(a->eot_pos = malloc((B ? B : 1) * sizeof(int)))) {
        clip_set_error("CLIP text tower: out of memory for a batch of %d", B);
        return -1;
    }
    pt_add(t, &a->emb, "emb", 2, (int64_t[]){N, W});
    /* kept blocks share block 0's ln_1, att, ln_2 and fc_act (recomputed by the backward) */
    resblock_layout_tower(t, a->blocks, g->layers, keep_layers, B, L, W, g->mlp, g->heads);
    pt_add(t, &a->eot, "eot", 2, (int64_t[]){B, W});
    pt_add(t, &a->ln_final, "ln_final", 2, (int64_t[]){B, W});
    pt_add(t, &a->ln_final_mean, "ln_final_mean", 1, (int64_t[]){B});
    pt_add(t, &a->ln_final_rstd, "ln_final_rstd", 1, (int64_t[]){B});
    pt_add(t, &a->out, "out", 2, (int64_t[]){B, g->out_dim});
    pt_alloc(t);
    resblock_link_tower(a->blocks, g->layers, keep_layers);
    m->act_batch = B;
    m->act_len = L;
    m->act_keep = keep_layers;
    return 0;
}

int clip_text_forward(clip_text *m, const compute_ctx *cx, const int32_t *ids, int B, int L,
                      float *out)
{
    const clip_text_config *g = &m->cfg;
    const clip_text_params *p = &m->params;
    if (L > g->context) {
        clip_set_error("text length %d exceeds the CLIP text context of %d", L, g->context);
        return -1;
    }
    if (check_token_ids(ids, B, L, g->vocab)) return -1;
    if (cx->precision == PRECISION_INT8 && !m->q) {
        clip_set_error("the CLIP text tower runs in int8 but its weights are not quantised "
                       "(clip_text_quantise, clip_model_set_precision)");
        return -1;
    }
    if (clip_text_reserve(m, B, L, m->act_keep)) return -1;
    clip_text_acts *a = &m->acts;
    int W = g->width, N = B * L;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < N; bt++) {
        const float *w = p->token_emb + (size_t)ids[bt] * W;
        const float *pos = p->pos_emb + (size_t)(bt % L) * W;
        float *dst = a->emb + (size_t)bt * W;
        for (int j = 0; j < W; j++) dst[j] = w[j] + pos[j];
    }
    const float *x = a->emb;
    for (int l = 0; l < g->layers; l++) {
        if (resblock_forward(cx, &p->blocks[l], m->q ? &m->q[l] : NULL, &a->blocks[l], x, B, L, W,
                             g->mlp, g->heads, 1))
            return -1;
        x = a->blocks[l].out;
    }
    for (int b = 0; b < B; b++) {
        int e = 0; /* argmax: the first occurrence of the largest id, as torch */
        for (int t = 1; t < L; t++)
            if (ids[(size_t)b * L + t] > ids[(size_t)b * L + e]) e = t;
        a->eot_pos[b] = e;
        memcpy(a->eot + (size_t)b * W, x + ((size_t)b * L + e) * W, W * sizeof(float));
    }
    layernorm_forward(a->ln_final, a->ln_final_mean, a->ln_final_rstd, a->eot, p->ln_final_w,
                      p->ln_final_b, B, W, 1e-5f);
    double t0 = prof_start(cx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, g->out_dim, W, 1.0f, a->ln_final, W,
                p->text_proj, g->out_dim, 0.0f, a->out, g->out_dim);
    prof_stop(cx, PROF_GEMM, t0);
    if (out) memcpy(out, a->out, (size_t)B * g->out_dim * sizeof(float));
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

void clip_text_init_params(clip_text *m, uint64_t seed)
{
    const param_table *t = &m->ptable;
    float W = (float)m->cfg.width;
    float attn_std = 1.0f / sqrtf(W), proj_std = attn_std / sqrtf(2.0f * m->cfg.layers);
    float fc_std = 1.0f / sqrtf(2.0f * W);
    for (int i = 0; i < t->n; i++) {
        const param_spec *s = &t->v[i];
        float *x = *s->ptr, std;
        const char *n = s->name;
        if (s->ndim == 1) { /* biases 0, LayerNorm gains 1 */
            float v = ends_with(n, "ln_1.weight") || ends_with(n, "ln_2.weight") ||
                              ends_with(n, "ln_final.weight")
                          ? 1.0f
                          : 0.0f;
            for (size_t k = 0; k < s->numel; k++) x[k] = v;
            continue;
        }
        if (!strcmp(n, "token_embedding.weight"))
            std = 0.02f;
        else if (!strcmp(n, "positional_embedding"))
            std = 0.01f;
        else if (ends_with(n, "in_proj_weight") || !strcmp(n, "text_projection"))
            std = attn_std;
        else if (ends_with(n, "c_fc.weight"))
            std = fc_std;
        else
            std = proj_std; /* attn.out_proj.weight, mlp.c_proj.weight */
        fill_normal(x, s->numel, std, seed + 0x1000193ull * (uint64_t)(i + 1));
    }
}

static void clip_text_reserve_dacts(clip_text *m, int B, int L)
{
    if (m->dtable.data && B <= m->dact_batch && L <= m->dact_len) return;
    pt_free(&m->dtable);
    const clip_text_config *g = &m->cfg;
    param_table *t = &m->dtable;
    resblock_layout_dacts(t, &m->dacts, B, L, g->width, g->mlp, g->heads);
    pt_add(t, &m->dx, "dx", 2, (int64_t[]){(int64_t)B * L, g->width});
    pt_add(t, &m->dln_final, "dln_final", 2, (int64_t[]){B, g->width});
    pt_add(t, &m->deot, "deot", 2, (int64_t[]){B, g->width});
    pt_alloc(t);
    m->dact_batch = B;
    m->dact_len = L;
}

int clip_text_param_group(const clip_text_config *g, const char *name)
{
    int block = resblock_name_index(name, "transformer.resblocks.", g->layers);
    if (block != -2) return block < 0 ? -1 : block + 1;
    if (!strcmp(name, "token_embedding.weight") || !strcmp(name, "positional_embedding")) return 0;
    if (!strncmp(name, "ln_final.", 9) || !strcmp(name, "text_projection")) return g->layers + 1;
    return -1;
}

static int clip_text_trains(const char *name, const void *ctx)
{
    const clip_text *m = ctx;
    return clip_text_param_group(&m->cfg, name) >= m->frozen_groups;
}

int clip_text_alloc_grads(clip_text *m)
{
    if (!m->gtable.data) {
        size_t n = m->cfg.layers ? m->cfg.layers : 1;
        if (!(m->grads.blocks = calloc(n, sizeof(resblock_params)))) {
            clip_set_error("CLIP text tower: out of memory for the gradients of %d layers",
                           m->cfg.layers);
            return -1;
        }
        clip_text_layout(&m->cfg, &m->grads, &m->gtable);
        if (m->frozen_groups > 0) pt_filter(&m->gtable, clip_text_trains, m);
        pt_alloc(&m->gtable);
    }
    if (m->act_batch && m->frozen_groups < clip_text_groups(&m->cfg))
        clip_text_reserve_dacts(m, m->act_batch, m->act_len);
    return 0;
}

#define EMB_COLS 32

int clip_text_backward(clip_text *m, const compute_ctx *cx, const int32_t *ids, const float *dout,
                       int B, int L)
{
    const clip_text_config *g = &m->cfg;
    const clip_text_params *p = &m->params;
    const clip_text_acts *a = &m->acts;
    if (!m->act_keep || !m->atable.data || B > m->act_batch || L > m->act_len) {
        clip_set_error("clip_text_backward: no activations kept for %d x %d tokens "
                       "(clip_text_reserve(m, B, L, 1) before the forward)",
                       B, L);
        return -1;
    }
    if (clip_text_alloc_grads(m)) return -1;
    int f = m->frozen_groups; /* the groups below f are frozen (clip_text_param_group) */
    if (f >= clip_text_groups(g)) return 0;
    clip_text_reserve_dacts(m, B, L);
    clip_text_params *gr = &m->grads;
    int W = g->width, D = g->out_dim;
    size_t N = (size_t)B * L;

    /* out = ln_final(x[b, eot_b]) @ text_projection */
    double t0 = prof_start(cx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, W, D, 1.0f, dout, D, p->text_proj, D,
                0.0f, m->dln_final, W);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, W, D, B, 1.0f, a->ln_final, W, dout, D,
                1.0f, gr->text_proj, D);
    prof_stop(cx, PROF_GEMM, t0);
    memset(m->deot, 0, (size_t)B * W * sizeof(float));
    layernorm_backward(m->deot, gr->ln_final_w, gr->ln_final_b, m->dln_final, a->eot, p->ln_final_w,
                       a->ln_final_mean, a->ln_final_rstd, B, W);
    if (f > g->layers) return 0;
    zero_floats(m->dx, N * W);
    for (int b = 0; b < B; b++)
        memcpy(m->dx + ((size_t)b * L + a->eot_pos[b]) * W, m->deot + (size_t)b * W,
               W * sizeof(float));

    for (int l = g->layers - 1; l >= 0 && l + 1 >= f; l--) { /* block l is group l + 1 */
        const float *inp = l ? a->blocks[l - 1].out : a->emb;
        /* checkpointed: the slot holds the last block's activations, from the forward */
        if (m->act_keep == ACTS_CHECKPOINT && l < g->layers - 1 &&
            resblock_forward(cx, &p->blocks[l], m->q ? &m->q[l] : NULL, &a->blocks[l], inp, B, L, W,
                             g->mlp, g->heads, 1))
            return -1;
        if (resblock_backward(cx, &p->blocks[l], &gr->blocks[l], &a->blocks[l], &m->dacts, m->dx,
                              m->dx, inp, B, L, W, g->mlp, g->heads, 1))
            return -1;
    }

    if (f > 0) return 0;
        /* emb = token_embedding[id] + positional_embedding[t] */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < L; t++) {
        float *dpos = gr->pos_emb + (size_t)t * W;
        for (int b = 0; b < B; b++) {
            const float *src = m->dx + ((size_t)b * L + t) * W;
            for (int j = 0; j < W; j++) dpos[j] += src[j];
        }
    }
    /* the token scatter-add by column blocks: rows sharing an id never race */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < W; c0 += EMB_COLS) {
        int n = W - c0 < EMB_COLS ? W - c0 : EMB_COLS;
        for (size_t bt = 0; bt < N; bt++) {
            const float *src = m->dx + bt * W + c0;
            float *dw = gr->token_emb + (size_t)ids[bt] * W + c0;
            for (int j = 0; j < n; j++) dw[j] += src[j];
        }
    }
    return 0;
}
