#include "model/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/blas.h"
#include "kernels/ops.h"
#include "core/util.h"

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

int vit_config_from_ckpt(const ckpt *c, int heads, vit_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    const ckpt_tensor *conv = ckpt_find(c, "visual.conv1.weight");
    const ckpt_tensor *pos = ckpt_find(c, "visual.positional_embedding");
    const ckpt_tensor *proj = ckpt_find(c, "visual.proj");
    const ckpt_tensor *fc = ckpt_find(c, "visual.transformer.resblocks.0.mlp.c_fc.weight");
    if (!conv || !pos || !proj || !fc) {
        clip_set_error("no ViT image tower: missing %s",
                       !conv   ? "visual.conv1.weight"
                       : !pos  ? "visual.positional_embedding"
                       : !proj ? "visual.proj"
                               : "visual.transformer.resblocks.0.mlp.c_fc.weight");
        return -1;
    }
    if (conv->ndim != 4 || conv->shape[1] != 3 || conv->shape[2] != conv->shape[3] ||
        pos->ndim != 2 || proj->ndim != 2 || fc->ndim != 2) {
        clip_set_error("visual.conv1.weight, visual.positional_embedding or visual.proj has an "
                       "unexpected shape");
        return -1;
    }
    /* bounds far above any CLIP (ViT-bigG: width 1664, 48 layers, 257 tokens)
     * that keep every size product in range; tokens at most 1 + 64^2, since
     * attention holds tokens^2 scores per head and image */
    if (check_range("visual.conv1.weight: the width", conv->shape[0], 64, 1 << 14) ||
        check_range("visual.conv1.weight: the patch size", conv->shape[2], 1, 1024) ||
        check_range("visual.positional_embedding: the token count", pos->shape[0], 2, 4097) ||
        check_range("visual.proj: the output dimension", proj->shape[1], 1, 1 << 16) ||
        check_range("visual.transformer.resblocks.0.mlp.c_fc.weight: the MLP width", fc->shape[0],
                    1, 1 << 16))
        return -1;
    cfg->width = (int)conv->shape[0];
    cfg->patch = (int)conv->shape[2];
    cfg->tokens = (int)pos->shape[0];
    cfg->grid = (int)lround(sqrt((double)(cfg->tokens - 1)));
    if (cfg->grid * cfg->grid + 1 != cfg->tokens || pos->shape[1] != cfg->width) {
        clip_set_error("visual.positional_embedding: shape [%lld, %lld] does not fit a square grid "
                       "of width %d",
                       (long long)pos->shape[0], (long long)pos->shape[1], cfg->width);
        return -1;
    }
    cfg->resolution = cfg->grid * cfg->patch;
    cfg->mlp = (int)fc->shape[0];
    cfg->out_dim = (int)proj->shape[1];
    if (resblock_heads("visual", cfg->width, heads, &cfg->heads) < 0) return -1;
    if ((cfg->layers = resblock_count_layers(c, "visual.transformer.resblocks.", VIT_MAX_LAYERS,
                                             "visual")) < 0)
        return -1;
    return vit_check_ckpt(cfg, c);
}

static void vit_layout(const vit_config *g, vit_params *p, param_table *t)
{
    int W = g->width, P = g->patch;
    pt_add(t, &p->class_emb, "visual.class_embedding", 1, (int64_t[]){W});
    pt_add(t, &p->pos_emb, "visual.positional_embedding", 2, (int64_t[]){g->tokens, W});
    pt_add(t, &p->proj, "visual.proj", 2, (int64_t[]){W, g->out_dim});
    pt_add(t, &p->conv1_w, "visual.conv1.weight", 4, (int64_t[]){W, 3, P, P});
    pt_add_norm(t, &p->ln_pre_w, &p->ln_pre_b, "", "visual.ln_pre", W);
    for (int i = 0; i < g->layers; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "visual.transformer.resblocks.%d.", i);
        resblock_layout_params(t, &p->blocks[i], prefix, W, g->mlp);
    }
    pt_add_norm(t, &p->ln_post_w, &p->ln_post_b, "", "visual.ln_post", W);
}

int vit_check_ckpt(const vit_config *cfg, const ckpt *c)
{
    vit_params p = {0};
    param_table t = {0};
    if (!(p.blocks = calloc(cfg->layers ? cfg->layers : 1, sizeof(resblock_params)))) {
        clip_set_error("visual: out of memory for %d layers", cfg->layers);
        return -1;
    }
    vit_layout(cfg, &p, &t);
    int rc = pt_check(&t, c);
    pt_free(&t);
    free(p.blocks);
    return rc;
}

vit *vit_create(const vit_config *cfg)
{
    vit *m = calloc(1, sizeof *m);
    size_t n = cfg->layers ? cfg->layers : 1;
    if (!m || !(m->params.blocks = calloc(n, sizeof(resblock_params))) ||
        !(m->acts.blocks = calloc(n, sizeof(resblock_acts)))) {
        clip_set_error("visual: out of memory for %d layers", cfg->layers);
        vit_free(m);
        return NULL;
    }
    m->cfg = *cfg;
    vit_layout(cfg, &m->params, &m->ptable);
    pt_alloc(&m->ptable);
    return m;
}

int vit_load(vit *m, const ckpt *c) { return pt_load(&m->ptable, c, NULL, NULL); }

void vit_free_quantised(vit *m)
{
    qweight_free(m->q.conv1);
    resblock_stack_free_quantised(m->q.blocks, m->cfg.layers);
    memset(&m->q, 0, sizeof m->q);
}

int vit_quantise(vit *m)
{
    const vit_config *g = &m->cfg;
    vit_qweights q = {qweight_make(m->params.conv1_w, g->width, 3 * g->patch * g->patch), NULL};
    if (!q.conv1 || !(q.blocks = resblock_stack_quantise(m->params.blocks, g->layers, g->width,
                                                         g->mlp, "visual"))) {
        qweight_free(q.conv1);
        return -1;
    }
    vit_free_quantised(m);
    m->q = q;
    return 0;
}

void vit_free(vit *m)
{
    if (!m) return;
    vit_free_quantised(m);
    pt_free(&m->ptable);
    pt_free(&m->atable);
    pt_free(&m->gtable);
    pt_free(&m->dtable);
    free(m->fwd_slot);
    free(m->params.blocks);
    free(m->grads.blocks);
    free(m->acts.blocks);
    free(m);
}

int vit_reserve(vit *m, int B, int keep_layers)
{
    if (m->atable.data && B <= m->act_batch && keep_layers == m->act_keep) return 0;
    pt_free(&m->atable);
    m->act_batch = 0;
    const vit_config *g = &m->cfg;
    vit_acts *a = &m->acts;
    param_table *t = &m->atable;
    int64_t W = g->width, NP = (int64_t)B * g->grid * g->grid, N = (int64_t)B * g->tokens;
    pt_add(t, &a->patches, "patches", 2, (int64_t[]){NP, 3 * g->patch * g->patch});
    pt_add(t, &a->patch_emb, "patch_emb", 2, (int64_t[]){NP, W});
    pt_add(t, &a->emb, "emb", 2, (int64_t[]){N, W});
    pt_add(t, &a->ln_pre, "ln_pre", 2, (int64_t[]){N, W});
    pt_add(t, &a->ln_pre_mean, "ln_pre_mean", 1, (int64_t[]){N});
    pt_add(t, &a->ln_pre_rstd, "ln_pre_rstd", 1, (int64_t[]){N});
    /* kept blocks share block 0's ln_1, att, ln_2 and fc_act (recomputed by the backward) */
    resblock_layout_tower(t, a->blocks, g->layers, keep_layers, B, g->tokens, g->width, g->mlp,
                          g->heads);
    pt_add(t, &a->cls, "cls", 2, (int64_t[]){B, W});
    pt_add(t, &a->ln_post, "ln_post", 2, (int64_t[]){B, W});
    pt_add(t, &a->ln_post_mean, "ln_post_mean", 1, (int64_t[]){B});
    pt_add(t, &a->ln_post_rstd, "ln_post_rstd", 1, (int64_t[]){B});
    pt_add(t, &a->out, "out", 2, (int64_t[]){B, g->out_dim});
    pt_alloc(t);
    resblock_link_tower(a->blocks, g->layers, keep_layers);
    m->act_batch = B;
    m->act_keep = keep_layers;
    return 0;
}

/* uint8 HWC pixels -> normalised patches, one row per patch in the
 * (channel, y, x) order of conv1's weight: image b's patches kept[b * keep
 * ...] (NULL: all G*G of them in grid order, keep = G*G). */
static void im2col_normalize(float *patches, const uint8_t *pixels, int B, int G, int P,
                             const int32_t *kept, int keep)
{
    int R = G * P, K = 3 * P * P;
    float scale[3], shift[3];
    for (int ch = 0; ch < 3; ch++) {
        scale[ch] = 1.0f / (255.0f * clip_std[ch]);
        shift[ch] = -clip_mean[ch] / clip_std[ch];
    }
#pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * keep; bp++) {
        int b = bp / keep, p = kept ? kept[bp] : bp % keep, gy = p / G, gx = p % G;
        float *row = patches + (size_t)bp * K;
        for (int y = 0; y < P; y++) {
            const uint8_t *src = pixels + (((size_t)b * R + gy * P + y) * R + gx * P) * 3;
            for (int x = 0; x < P; x++)
                for (int ch = 0; ch < 3; ch++)
                    row[(ch * P + y) * P + x] = src[x * 3 + ch] * scale[ch] + shift[ch];
        }
    }
}

/* m->fwd_keep and fwd_slot for the patches kept (NULL: all), checking them */
static int remember_kept(vit *m, int B, int keep, const int32_t *kept)
{
    int GG = m->cfg.grid * m->cfg.grid;
    m->fwd_keep = 0;
    if (!kept) return 0;
    if (keep < 1 || keep > GG) {
        clip_set_error("visual: %d patches kept of %d (patch dropout keeps 1 to %d)", keep, GG, GG);
        return -1;
    }
    size_t n = (size_t)B * GG;
    if (n > m->fwd_slot_n) {
        int32_t *slot = realloc(m->fwd_slot, n * sizeof *slot);
        if (!slot) {
            clip_set_error("visual: out of memory for the kept patches of %d images", B);
            return -1;
        }
        m->fwd_slot = slot, m->fwd_slot_n = n;
    }
    for (size_t i = 0; i < n; i++) m->fwd_slot[i] = -1;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < keep; j++) {
            int32_t p = kept[(size_t)b * keep + j];
            if (p < 0 || p >= GG || m->fwd_slot[(size_t)b * GG + p] >= 0) {
                clip_set_error("visual: image %d's kept patch %d (slot %d) is %s", b, p, j,
                               p < 0 || p >= GG ? "outside the grid" : "repeated");
                return -1;
            }
            m->fwd_slot[(size_t)b * GG + p] = j;
        }
    m->fwd_keep = keep;
    return 0;
}

int vit_forward(vit *m, const compute_ctx *cx, const uint8_t *pixels, int B, float *out)
{
    return vit_forward_masked(m, cx, pixels, B, 0, NULL, out);
}

int vit_forward_masked(vit *m, const compute_ctx *cx, const uint8_t *pixels, int B, int keep,
                       const int32_t *kept, float *out)
{
    const vit_config *g = &m->cfg;
    const vit_params *p = &m->params;
    if (cx->precision == PRECISION_INT8 && !m->q.blocks) {
        clip_set_error("the image tower runs in int8 but its weights are not quantised "
                       "(vit_quantise, clip_model_set_precision)");
        return -1;
    }
    if (vit_reserve(m, B, m->act_keep) || remember_kept(m, B, keep, kept)) return -1;
    vit_acts *a = &m->acts;
    /* T tokens a sequence: the class token and GG patches (all, or those kept) */
    int W = g->width, GG = kept ? keep : g->grid * g->grid, T = 1 + GG, N = B * T;

    im2col_normalize(a->patches, pixels, B, g->grid, g->patch, kept, GG);
    if (matmul_forward(cx, a->patch_emb, W, a->patches, p->conv1_w, m->q.conv1, NULL, B * GG,
                       3 * g->patch * g->patch, W))
        return -1;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < N; bt++) {
        int b = bt / T, t = bt % T;
        const float *src = t ? a->patch_emb + ((size_t)b * GG + t - 1) * W : p->class_emb;
        int row = t && kept ? 1 + kept[(size_t)b * GG + t - 1] : t; /* its place on the grid */
        const float *pos = p->pos_emb + (size_t)row * W;
        float *dst = a->emb + (size_t)bt * W;
        for (int j = 0; j < W; j++) dst[j] = src[j] + pos[j];
    }
    layernorm_forward(a->ln_pre, a->ln_pre_mean, a->ln_pre_rstd, a->emb, p->ln_pre_w, p->ln_pre_b,
                      N, W, 1e-5f);

    const float *x = a->ln_pre;
    for (int l = 0; l < g->layers; l++) {
        if (resblock_forward(cx, &p->blocks[l], m->q.blocks ? &m->q.blocks[l] : NULL, &a->blocks[l],
                             x, B, T, W, g->mlp, g->heads, 0))
            return -1;
        x = a->blocks[l].out;
    }
    for (int b = 0; b < B; b++)
        memcpy(a->cls + (size_t)b * W, x + (size_t)b * T * W, W * sizeof(float));
    layernorm_forward(a->ln_post, a->ln_post_mean, a->ln_post_rstd, a->cls, p->ln_post_w,
                      p->ln_post_b, B, W, 1e-5f);
    double t0 = prof_start(cx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, g->out_dim, W, 1.0f, a->ln_post, W,
                p->proj, g->out_dim, 0.0f, a->out, g->out_dim);
    prof_stop(cx, PROF_GEMM, t0);
    if (out) memcpy(out, a->out, (size_t)B * g->out_dim * sizeof(float));
    return 0;
}

static void vit_reserve_dacts(vit *m, int B)
{
    if (m->dtable.data && B <= m->dact_batch) return;
    pt_free(&m->dtable);
    const vit_config *g = &m->cfg;
    param_table *t = &m->dtable;
    resblock_layout_dacts(t, &m->dacts, B, g->tokens, g->width, g->mlp, g->heads);
    pt_add(t, &m->dx, "dx", 2, (int64_t[]){(int64_t)B * g->tokens, g->width});
    pt_add(t, &m->dln_post, "dln_post", 2, (int64_t[]){B, g->width});
    pt_add(t, &m->dcls, "dcls", 2, (int64_t[]){B, g->width});
    pt_alloc(t);
    m->dact_batch = B;
}

int vit_param_group(const vit_config *g, const char *name)
{
    int block = resblock_name_index(name, "visual.transformer.resblocks.", g->layers);
    if (block != -2) return block < 0 ? -1 : block + 1;
    if (!strcmp(name, "visual.proj")) return g->layers + 1;
    if (!strncmp(name, "visual.ln_post.", 15)) return g->layers;
    if (!strcmp(name, "visual.conv1.weight") || !strcmp(name, "visual.class_embedding") ||
        !strcmp(name, "visual.positional_embedding") || !strncmp(name, "visual.ln_pre.", 14))
        return 0;
    return -1;
}

static int vit_trains(const char *name, const void *ctx)
{
    const vit *m = ctx;
    return vit_param_group(&m->cfg, name) >= m->frozen_groups;
}

int vit_alloc_grads(vit *m)
{
    if (!m->gtable.data) {
        size_t n = m->cfg.layers ? m->cfg.layers : 1;
        if (!(m->grads.blocks = calloc(n, sizeof(resblock_params)))) {
            clip_set_error("visual: out of memory for the gradients of %d layers", m->cfg.layers);
            return -1;
        }
        vit_layout(&m->cfg, &m->grads, &m->gtable);
        if (m->frozen_groups > 0) pt_filter(&m->gtable, vit_trains, m);
        pt_alloc(&m->gtable);
    }
    if (m->act_batch && m->frozen_groups < vit_groups(&m->cfg)) vit_reserve_dacts(m, m->act_batch);
    return 0;
}

int vit_backward(vit *m, const compute_ctx *cx, const float *dout, int B)
{
    const vit_config *g = &m->cfg;
    const vit_params *p = &m->params;
    const vit_acts *a = &m->acts;
    if (!m->act_keep || !m->atable.data || B > m->act_batch) {
        clip_set_error("vit_backward: no activations kept for a batch of %d (vit_reserve(m, B, 1) "
                       "before the forward)",
                       B);
        return -1;
    }
    if (vit_alloc_grads(m)) return -1;
    /* frozen: the groups below f (vit_param_group) */
    int f = m->frozen_groups, W = g->width, D = g->out_dim;
    if (f >= vit_groups(g)) return 0;
    vit_reserve_dacts(m, B);
    vit_params *gr = &m->grads;
    /* the forward's T = 1 + GG tokens: GG patches of the grid's G2 (all, or those kept) */
    int G2 = g->grid * g->grid, GG = m->fwd_keep ? m->fwd_keep : G2, T = 1 + GG;
    int N = B * T, K = 3 * g->patch * g->patch;

    /* out = ln_post(cls) @ proj */
    double t0 = prof_start(cx);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, W, D, B, 1.0f, a->ln_post, W, dout, D,
                1.0f, gr->proj, D);
    if (f > g->layers) {
        prof_stop(cx, PROF_GEMM, t0);
        return 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, W, D, 1.0f, dout, D, p->proj, D, 0.0f,
                m->dln_post, W);
    prof_stop(cx, PROF_GEMM, t0);
    memset(m->dcls, 0, (size_t)B * W * sizeof(float));
    layernorm_backward(m->dcls, gr->ln_post_w, gr->ln_post_b, m->dln_post, a->cls, p->ln_post_w,
                       a->ln_post_mean, a->ln_post_rstd, B, W);
    zero_floats(m->dx, (size_t)N * W);
    for (int b = 0; b < B; b++)
        memcpy(m->dx + (size_t)b * T * W, m->dcls + (size_t)b * W, W * sizeof(float));

    for (int l = g->layers - 1; l >= 0 && l + 1 >= f; l--) { /* block l is group l + 1 */
        const float *inp = l ? a->blocks[l - 1].out : a->ln_pre;
        /* checkpointed: the slot holds the last block's activations, from the forward */
        if (m->act_keep == ACTS_CHECKPOINT && l < g->layers - 1 &&
            resblock_forward(cx, &p->blocks[l], m->q.blocks ? &m->q.blocks[l] : NULL, &a->blocks[l],
                             inp, B, T, W, g->mlp, g->heads, 0))
            return -1;
        if (resblock_backward(cx, &p->blocks[l], &gr->blocks[l], &a->blocks[l], &m->dacts, m->dx,
                              m->dx, inp, B, T, W, g->mlp, g->heads, 0))
            return -1;
    }
    if (f > 0) return 0;

    /* emb = [class | patches] + positions; ln_pre = LN(emb) */
    float *demb = m->dacts.dln, *dpatch = m->dacts.datty; /* free again: [N, W] each */
    zero_floats(demb, (size_t)N * W);
    layernorm_backward(demb, gr->ln_pre_w, gr->ln_pre_b, m->dx, a->emb, p->ln_pre_w, a->ln_pre_mean,
                       a->ln_pre_rstd, N, W);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < g->tokens; r++) { /* row r of positional_embedding */
        float *dpos = gr->pos_emb + (size_t)r * W;
        for (int b = 0; b < B; b++) {
            /* its token in image b's sequence; none: a dropped patch */
            int t = r && m->fwd_keep ? 1 + m->fwd_slot[(size_t)b * G2 + r - 1] : r;
            if (!t && r) continue;
            const float *src = demb + ((size_t)b * T + t) * W;
            for (int j = 0; j < W; j++) dpos[j] += src[j];
            if (t == 0)
                for (int j = 0; j < W; j++) gr->class_emb[j] += src[j];
            else
                memcpy(dpatch + ((size_t)b * GG + t - 1) * W, src, W * sizeof(float));
        }
    }
    return matmul_backward(cx, NULL, gr->conv1_w, NULL, dpatch, W, a->patches, p->conv1_w, B * GG,
                           K, W);
}

double vit_forward_flops(const vit_config *g)
{
    double T = g->tokens, W = g->width, F = g->mlp, P = g->patch;
    return g->layers * (T * 2 * (4 * W * W + 2 * W * F) + 4 * T * T * W) +
           2.0 * g->grid * g->grid * 3 * P * P * W;
}
