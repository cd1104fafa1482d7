#include "model/bert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kernels/blas.h"
#include "kernels/ops.h"
#include "core/util.h"
#include "model/resblock.h"

static const ckpt_tensor *find2(const ckpt *c, const char *prefix, const char *name)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s", prefix, name);
    return ckpt_find(c, buf);
}

int bert_config_from_ckpt(const ckpt *c, const char *prefix, bert_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    const ckpt_tensor *word = find2(c, prefix, "embeddings.word_embeddings.weight");
    const ckpt_tensor *pos = find2(c, prefix, "embeddings.position_embeddings.weight");
    const ckpt_tensor *type = find2(c, prefix, "embeddings.token_type_embeddings.weight");
    const ckpt_tensor *inter = find2(c, prefix, "encoder.layer.0.intermediate.dense.weight");
    if (!word || !pos || !type || !inter) {
        clip_set_error("no BERT text tower: missing %sembeddings.%s", prefix,
                       !word   ? "word_embeddings.weight"
                       : !pos  ? "position_embeddings.weight"
                       : !type ? "token_type_embeddings.weight"
                               : "../encoder.layer.0.intermediate.dense.weight");
        return -1;
    }
    if (word->ndim != 2 || pos->ndim != 2 || type->ndim != 2 || inter->ndim != 2) {
        clip_set_error("%sembeddings: unexpected tensor rank", prefix);
        return -1;
    }
    char what[4][192];
    snprintf(what[0], sizeof what[0], "%sembeddings.word_embeddings.weight: the vocabulary",
             prefix);
    snprintf(what[1], sizeof what[1], "%sembeddings.word_embeddings.weight: the width", prefix);
    snprintf(what[2], sizeof what[2], "%sembeddings.position_embeddings.weight: the positions",
             prefix);
    snprintf(what[3], sizeof what[3], "%sencoder.layer.0.intermediate.dense.weight: the width",
             prefix);
    if (check_range(what[0], word->shape[0], 1, BERT_MAX_VOCAB) ||
        check_range(what[1], word->shape[1], 1, BERT_MAX_WIDTH) ||
        check_range(what[2], pos->shape[0], 1, 1 << 16) ||
        check_range(what[3], inter->shape[0], 1, BERT_MAX_WIDTH * 8) ||
        check_range("token_type_embeddings: the types", type->shape[0], 1, 1 << 16))
        return -1;
    cfg->vocab = (int)word->shape[0];
    cfg->hidden = (int)word->shape[1];
    cfg->max_pos = (int)pos->shape[0];
    cfg->type_vocab = (int)type->shape[0];
    cfg->intermediate = (int)inter->shape[0];
    cfg->heads = cfg->hidden / MODEL_DEFAULT_HEAD_DIM ? cfg->hidden / MODEL_DEFAULT_HEAD_DIM : 1;
    cfg->eps = 1e-12f;
    cfg->position_ids = find2(c, prefix, "embeddings.position_ids") != NULL;
    char name[128];
    for (;;) {
        snprintf(name, sizeof name, "encoder.layer.%d.attention.self.query.weight", cfg->layers);
        if (!find2(c, prefix, name)) break;
        /* a layer counts by its big tensors, not by one name: the parameter
         * table is sized from this before anything is read */
        static const char *const big[] = {
            "attention.self.query.weight", "attention.self.key.weight",
            "attention.self.value.weight", "attention.output.dense.weight",
            "intermediate.dense.weight",   "output.dense.weight"};
        for (int k = 0; k < 6; k++) {
            int64_t rows = k == 4 ? cfg->intermediate : cfg->hidden;
            int64_t cols = k == 5 ? cfg->intermediate : cfg->hidden;
            snprintf(name, sizeof name, "encoder.layer.%d.%s", cfg->layers, big[k]);
            const ckpt_tensor *t = find2(c, prefix, name);
            if (!t || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
                clip_set_error("%s%s: %s, expected [%lld, %lld]", prefix, name,
                               t ? "mis-shaped" : "missing", (long long)rows, (long long)cols);
                return -1;
            }
        }
        if (++cfg->layers > BERT_MAX_LAYERS) {
            clip_set_error("%sencoder: more than %d layers", prefix, BERT_MAX_LAYERS);
            return -1;
        }
    }
    return 0;
}

int bert_config_matches(const bert_config *cfg, const bert_config *tensors, const char *path)
{
    const struct {
        const char *key;
        int got, have;
    } f[] = {{"hidden_size", cfg->hidden, tensors->hidden},
             {"num_hidden_layers", cfg->layers, tensors->layers},
             {"intermediate_size", cfg->intermediate, tensors->intermediate},
             {"max_position_embeddings", cfg->max_pos, tensors->max_pos},
             {"type_vocab_size", cfg->type_vocab, tensors->type_vocab},
             {"vocab_size", cfg->vocab, tensors->vocab}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].got != f[i].have) {
            clip_set_error("%s: %s is %d but the checkpoint's tensors have %d", path, f[i].key,
                           f[i].got, f[i].have);
            return -1;
        }
    return 0;
}

int bert_config_from_json(const char *path, bert_config *cfg)
{
    json_error_t err;
    size_t len;
    char *text = read_file_max(path, &len, CLIP_MAX_CONFIG_FILE, "config file");
    if (!text) return -1;
    json_t *j = json_loadb(text, len, 0, &err);
    free(text);
    if (!j) {
        clip_set_error("%s: %s (line %d)", path, err.text, err.line);
        return -1;
    }
    /* each in 1..max before it is narrowed to int: 2^32 heads would become 0 */
    struct {
        const char *key;
        int *dst;
        int64_t max;
    } ints[] = {{"hidden_size", &cfg->hidden, BERT_MAX_WIDTH},
                {"num_hidden_layers", &cfg->layers, BERT_MAX_LAYERS},
                {"num_attention_heads", &cfg->heads, BERT_MAX_WIDTH},
                {"intermediate_size", &cfg->intermediate, BERT_MAX_WIDTH * 8},
                {"max_position_embeddings", &cfg->max_pos, 1 << 16},
                {"type_vocab_size", &cfg->type_vocab, 1 << 16},
                {"vocab_size", &cfg->vocab, BERT_MAX_VOCAB}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        json_t *v = json_object_get(j, ints[i].key);
        if (!v) continue;
        if (!json_is_integer(v) || json_integer_value(v) <= 0 ||
            json_integer_value(v) > ints[i].max) {
            clip_set_error("%s: %s is not an integer in 1..%lld", path, ints[i].key,
                           (long long)ints[i].max);
            json_decref(j);
            return -1;
        }
        *ints[i].dst = (int)json_integer_value(v);
    }
    json_t *eps = json_object_get(j, "layer_norm_eps");
    if (eps) {
        /* as float: 1e75 would be inf, 1e-50 zero, and a string was once ignored */
        float e = json_is_number(eps) ? (float)json_number_value(eps) : NAN;
        if (!(e > 0 && e < 1)) {
            clip_set_error("%s: layer_norm_eps is not a number in (0, 1) (as float32)", path);
            json_decref(j);
            return -1;
        }
        cfg->eps = e;
    }
    json_t *act = json_object_get(j, "hidden_act");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "gelu"))) {
        clip_set_error("%s: hidden_act must be \"gelu\" (erf GELU)", path);
        json_decref(j);
        return -1;
    }
    json_decref(j);
    if (cfg->hidden % cfg->heads) {
        clip_set_error("%s: hidden_size %d is not divisible by num_attention_heads %d", path,
                       cfg->hidden, cfg->heads);
        return -1;
    }
    return 0;
}

static void bert_layout(const bert_config *g, bert_params *p, param_table *t)
{
    int64_t H = g->hidden, FF = g->intermediate;
    pt_add(t, &p->word_emb, "transformer.embeddings.word_embeddings.weight", 2,
           (int64_t[]){g->vocab, H});
    pt_add(t, &p->pos_emb, "transformer.embeddings.position_embeddings.weight", 2,
           (int64_t[]){g->max_pos, H});
    pt_add(t, &p->type_emb, "transformer.embeddings.token_type_embeddings.weight", 2,
           (int64_t[]){g->type_vocab, H});
    pt_add_norm(t, &p->emb_ln_w, &p->emb_ln_b, "", "transformer.embeddings.LayerNorm", H);
    for (int i = 0; i < g->layers; i++) {
        bert_layer_params *l = &p->layers[i];
        char pre[64];
        snprintf(pre, sizeof pre, "transformer.encoder.layer.%d.", i);
        pt_add_linear(t, &l->q_w, &l->q_b, pre, "attention.self.query", H, H);
        pt_add_linear(t, &l->k_w, &l->k_b, pre, "attention.self.key", H, H);
        pt_add_linear(t, &l->v_w, &l->v_b, pre, "attention.self.value", H, H);
        pt_add_linear(t, &l->ao_w, &l->ao_b, pre, "attention.output.dense", H, H);
        pt_add_norm(t, &l->ao_ln_w, &l->ao_ln_b, pre, "attention.output.LayerNorm", H);
        pt_add_linear(t, &l->i_w, &l->i_b, pre, "intermediate.dense", FF, H);
        pt_add_linear(t, &l->o_w, &l->o_b, pre, "output.dense", H, FF);
        pt_add_norm(t, &l->o_ln_w, &l->o_ln_b, pre, "output.LayerNorm", H);
    }
    pt_add_linear(t, &p->pooler_w, &p->pooler_b, "", "transformer.pooler.dense", H, H);
    pt_add_norm(t, &p->ln_final_w, &p->ln_final_b, "", "ln_final", H);
    pt_add(t, &p->text_proj, "text_projection", 2, (int64_t[]){H, g->out_dim});
}

bert *bert_create(const bert_config *cfg)
{
    bert *m = calloc(1, sizeof *m);
    size_t n = cfg->layers ? cfg->layers : 1;
    if (!m || !(m->params.layers = calloc(n, sizeof(bert_layer_params))) ||
        !(m->acts.layers = calloc(n, sizeof(bert_layer_acts)))) {
        clip_set_error("text tower: out of memory for %d layers", cfg->layers);
        bert_free(m);
        return NULL;
    }
    m->cfg = *cfg;
    bert_layout(cfg, &m->params, &m->ptable);
    pt_alloc(&m->ptable);
    return m;
}

static void free_qweights(bert_qweights *q, int layers)
{
    for (int i = 0; q->layers && i < layers; i++) {
        bert_layer_qweights *l = &q->layers[i];
        qweight_free(l->q), qweight_free(l->k), qweight_free(l->v);
        qweight_free(l->ao), qweight_free(l->i), qweight_free(l->o);
    }
    free(q->layers);
    qweight_free(q->pooler);
    memset(q, 0, sizeof *q);
}

void bert_free_quantised(bert *m) { free_qweights(&m->q, m->cfg.layers); }

int bert_quantise(bert *m)
{
    const bert_config *g = &m->cfg;
    int H = g->hidden, FF = g->intermediate;
    bert_qweights q = {0};
    if (!(q.layers = calloc(g->layers ? g->layers : 1, sizeof *q.layers))) {
        clip_set_error("text tower: out of memory quantising the weights");
        return -1;
    }
    int ok = (q.pooler = qweight_make(m->params.pooler_w, H, H)) != NULL;
    for (int i = 0; ok && i < g->layers; i++) {
        const bert_layer_params *p = &m->params.layers[i];
        bert_layer_qweights *l = &q.layers[i];
        ok = (l->q = qweight_make(p->q_w, H, H)) && (l->k = qweight_make(p->k_w, H, H)) &&
             (l->v = qweight_make(p->v_w, H, H)) && (l->ao = qweight_make(p->ao_w, H, H)) &&
             (l->i = qweight_make(p->i_w, FF, H)) && (l->o = qweight_make(p->o_w, H, FF));
    }
    if (!ok) {
        free_qweights(&q, g->layers);
        return -1;
    }
    bert_free_quantised(m);
    m->q = q;
    return 0;
}

int bert_load_body(bert *m, const ckpt *c, const char *prefix)
{
    static const char body[] = "transformer.";
    for (int i = 0; i < m->ptable.n; i++) {
        const param_spec *s = &m->ptable.v[i];
        if (strncmp(s->name, body, sizeof body - 1)) continue; /* the head */
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, s->name + sizeof body - 1);
        if (!ckpt_find(c, name)) {
            /* checkpoints converted from TensorFlow name LayerNorm gamma/beta */
            char old[256];
            size_t n = strlen(name);
            const char *w = ".LayerNorm.weight", *b = ".LayerNorm.bias";
            old[0] = 0;
            if (n > strlen(w) && !strcmp(name + n - strlen(w), w))
                snprintf(old, sizeof old, "%.*s.LayerNorm.gamma", (int)(n - strlen(w)), name);
            else if (n > strlen(b) && !strcmp(name + n - strlen(b), b))
                snprintf(old, sizeof old, "%.*s.LayerNorm.beta", (int)(n - strlen(b)), name);
            if (old[0] && ckpt_find(c, old)) memcpy(name, old, sizeof old);
        }
        if (pt_load_spec(s, c, name)) return -1;
    }
    return 0;
}

void bert_free(bert *m)
{
    if (!m) return;
    bert_free_quantised(m);
    pt_free(&m->ptable);
    pt_free(&m->atable);
    pt_free(&m->gtable);
    pt_free(&m->dtable);
    free(m->acts.key_valid);
    free(m->params.layers);
    free(m->grads.layers);
    free(m->acts.layers);
    free(m);
}

int bert_reserve(bert *m, int B, int L, int keep_layers)
{
    if (m->atable.data && B <= m->act_batch && L <= m->act_len && keep_layers == m->act_keep)
        return 0;
    pt_free(&m->atable);
    free(m->acts.key_valid);
    m->act_batch = m->act_len = 0;
    const bert_config *g = &m->cfg;
    bert_acts *a = &m->acts;
    param_table *t = &m->atable;
    int64_t H = g->hidden, FF = g->intermediate, N = (int64_t)B * L;
    if (!(a->key_valid = malloc(N ? N : 1))) {
        clip_set_error("text tower: out of memory for a batch of %d x %d tokens", B, L);
        return -1;
    }
    pt_add(t, &a->emb, "emb", 2, (int64_t[]){N, H});
    pt_add(t, &a->emb_ln, "emb_ln", 2, (int64_t[]){N, H});
    pt_add(t, &a->emb_ln_mean, "emb_ln_mean", 1, (int64_t[]){N});
    pt_add(t, &a->emb_ln_rstd, "emb_ln_rstd", 1, (int64_t[]){N});
    /* checkpointed, layers 1.. keep their output only: block 0's slot is the rest */
    int slots = keep_layers == ACTS_TRAIN ? g->layers : 1;
    for (int i = 1; keep_layers == ACTS_CHECKPOINT && i < g->layers; i++)
        pt_add(t, &a->layers[i].out, "out", 2, (int64_t[]){N, H});
    for (int i = 0; i < slots; i++) {
        bert_layer_acts *l = &a->layers[i];
        pt_add(t, &l->qkv, "qkv", 2, (int64_t[]){N, 3 * H});
        pt_add(t, &l->att, "att", 4, (int64_t[]){B, g->heads, L, L});
        pt_add(t, &l->atty, "atty", 2, (int64_t[]){N, H});
        pt_add(t, &l->res_1, "res_1", 2, (int64_t[]){N, H});
        pt_add(t, &l->ln_1, "ln_1", 2, (int64_t[]){N, H});
        pt_add(t, &l->ln_1_mean, "ln_1_mean", 1, (int64_t[]){N});
        pt_add(t, &l->ln_1_rstd, "ln_1_rstd", 1, (int64_t[]){N});
        pt_add(t, &l->fc, "fc", 2, (int64_t[]){N, FF});
        if (i == 0) /* shared by kept layers, recomputed by the backward */
            pt_add(t, &l->fc_act, "fc_act", 2, (int64_t[]){N, FF});
        pt_add(t, &l->res_2, "res_2", 2, (int64_t[]){N, H});
        pt_add(t, &l->out, "out", 2, (int64_t[]){N, H});
        pt_add(t, &l->out_mean, "out_mean", 1, (int64_t[]){N});
        pt_add(t, &l->out_rstd, "out_rstd", 1, (int64_t[]){N});
    }
    pt_add(t, &a->cls, "cls", 2, (int64_t[]){B, H});
    pt_add(t, &a->pool_pre, "pool_pre", 2, (int64_t[]){B, H});
    pt_add(t, &a->pooled, "pooled", 2, (int64_t[]){B, H});
    pt_add(t, &a->ln_final, "ln_final", 2, (int64_t[]){B, H});
    pt_add(t, &a->ln_final_mean, "ln_final_mean", 1, (int64_t[]){B});
    pt_add(t, &a->ln_final_rstd, "ln_final_rstd", 1, (int64_t[]){B});
    pt_add(t, &a->out, "out", 2, (int64_t[]){B, g->out_dim});
    pt_alloc(t);
    for (int i = 1; i < slots; i++) a->layers[i].fc_act = a->layers[0].fc_act;
    for (int i = slots; i < g->layers; i++) {
        float *out = a->layers[i].out;
        a->layers[i] = a->layers[0];
        if (keep_layers == ACTS_CHECKPOINT) a->layers[i].out = out;
    }
    m->act_batch = B;
    m->act_len = L;
    m->act_keep = keep_layers;
    return 0;
}

static void attention_timed(const compute_ctx *cx, float *out, float *att, const float *qkv,
                            const uint8_t *key_valid, int B, int T, int C, int NH)
{
    double t0 = prof_start(cx);
    attention_forward(out, att, qkv, key_valid, 0, B, T, C, NH);
    prof_stop(cx, PROF_ATTENTION, t0);
}

/* One layer: x [N, H] -> l->out (post-LN BERT), keeping what bert_backward needs in l */
static int layer_forward(const compute_ctx *cx, const bert_config *g, const bert_layer_params *lp,
                         const bert_layer_qweights *lq, bert_layer_acts *l, const float *x,
                         const uint8_t *key_valid, int B, int L)
{
    int H = g->hidden, FF = g->intermediate, N = B * L;
    if (matmul_forward(cx, l->qkv, 3 * H, x, lp->q_w, lq->q, lp->q_b, N, H, H) ||
        matmul_forward(cx, l->qkv + H, 3 * H, x, lp->k_w, lq->k, lp->k_b, N, H, H) ||
        matmul_forward(cx, l->qkv + 2 * H, 3 * H, x, lp->v_w, lq->v, lp->v_b, N, H, H))
        return -1;
    attention_timed(cx, l->atty, l->att, l->qkv, key_valid, B, L, H, g->heads);
    if (matmul_residual_forward(cx, l->res_1, l->atty, lp->ao_w, lq->ao, lp->ao_b, x, N, H, H))
        return -1;
    layernorm_forward(l->ln_1, l->ln_1_mean, l->ln_1_rstd, l->res_1, lp->ao_ln_w, lp->ao_ln_b, N, H,
                      g->eps);
    if (matmul_forward(cx, l->fc, FF, l->ln_1, lp->i_w, lq->i, lp->i_b, N, H, FF)) return -1;
    gelu_erf_forward(l->fc_act, l->fc, (size_t)N * FF);
    if (matmul_residual_forward(cx, l->res_2, l->fc_act, lp->o_w, lq->o, lp->o_b, l->ln_1, N, FF,
                                H))
        return -1;
    layernorm_forward(l->out, l->out_mean, l->out_rstd, l->res_2, lp->o_ln_w, lp->o_ln_b, N, H,
                      g->eps);
    return 0;
}

static const bert_layer_qweights *layer_qweights(const bert *m, int i)
{
    static const bert_layer_qweights none = {0};
    return m->q.layers ? &m->q.layers[i] : &none;
}

int bert_forward(bert *m, const compute_ctx *cx, const int32_t *ids, int B, int L, float *out)
{
    const bert_config *g = &m->cfg;
    const bert_params *p = &m->params;
    if (L > g->max_pos) {
        clip_set_error("text length %d exceeds BERT's %d positions", L, g->max_pos);
        return -1;
    }
    if (check_token_ids(ids, B, L, g->vocab)) return -1;
    if (cx->precision == PRECISION_INT8 && !m->q.layers) {
        clip_set_error("the text tower runs in int8 but its weights are not quantised "
                       "(bert_quantise, clip_model_set_precision)");
        return -1;
    }
    if (bert_reserve(m, B, L, m->act_keep)) return -1;
    bert_acts *a = &m->acts;
    int H = g->hidden, N = B * L;

#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < N; bt++) {
        const float *w = p->word_emb + (size_t)ids[bt] * H;
        const float *pos = p->pos_emb + (size_t)(bt % L) * H;
        float *dst = a->emb + (size_t)bt * H;
        for (int j = 0; j < H; j++) dst[j] = w[j] + pos[j] + p->type_emb[j];
        a->key_valid[bt] = ids[bt] != 0;
    }
    layernorm_forward(a->emb_ln, a->emb_ln_mean, a->emb_ln_rstd, a->emb, p->emb_ln_w, p->emb_ln_b,
                      N, H, g->eps);
    const float *x = a->emb_ln;
    for (int i = 0; i < g->layers; i++) {
        if (layer_forward(cx, g, &p->layers[i], layer_qweights(m, i), &a->layers[i], x,
                          a->key_valid, B, L))
            return -1;
        x = a->layers[i].out;
    }
    for (int b = 0; b < B; b++)
        memcpy(a->cls + (size_t)b * H, x + (size_t)b * L * H, H * sizeof(float));
    if (matmul_forward(cx, a->pool_pre, H, a->cls, p->pooler_w, m->q.pooler, p->pooler_b, B, H, H))
        return -1;
    tanh_forward(a->pooled, a->pool_pre, (size_t)B * H);
    layernorm_forward(a->ln_final, a->ln_final_mean, a->ln_final_rstd, a->pooled, p->ln_final_w,
                      p->ln_final_b, B, H, 1e-5f);
    double t0 = prof_start(cx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, g->out_dim, H, 1.0f, a->ln_final, H,
                p->text_proj, g->out_dim, 0.0f, a->out, g->out_dim);
    prof_stop(cx, PROF_GEMM, t0);
    if (out) memcpy(out, a->out, (size_t)B * g->out_dim * sizeof(float));
    return 0;
}

static void bert_reserve_dacts(bert *m, int B, int L)
{
    if (m->dtable.data && B <= m->dact_batch && L <= m->dact_len) return;
    pt_free(&m->dtable);
    const bert_config *g = &m->cfg;
    bert_dacts *d = &m->dacts;
    param_table *t = &m->dtable;
    int64_t H = g->hidden, N = (int64_t)B * L;
    pt_add(t, &d->dx, "dx", 2, (int64_t[]){N, H});
    pt_add(t, &d->dres, "dres", 2, (int64_t[]){N, H});
    pt_add(t, &d->dln, "dln", 2, (int64_t[]){N, H});
    pt_add(t, &d->datty, "datty", 2, (int64_t[]){N, H});
    pt_add(t, &d->dqkv, "dqkv", 2, (int64_t[]){N, 3 * H});
    pt_add(t, &d->datt, "datt", 4, (int64_t[]){B, g->heads, L, L});
    pt_add(t, &d->dfc_act, "dfc_act", 2, (int64_t[]){N, g->intermediate});
    pt_add(t, &d->dfc, "dfc", 2, (int64_t[]){N, g->intermediate});
    pt_add(t, &d->dln_final, "dln_final", 2, (int64_t[]){B, H});
    pt_add(t, &d->dpooled, "dpooled", 2, (int64_t[]){B, H});
    pt_add(t, &d->dpool_pre, "dpool_pre", 2, (int64_t[]){B, H});
    pt_add(t, &d->dcls, "dcls", 2, (int64_t[]){B, H});
    pt_alloc(t);
    m->dact_batch = B;
    m->dact_len = L;
}

int bert_param_group(const bert_config *g, const char *name)
{
    int block = resblock_name_index(name, "transformer.encoder.layer.", g->layers);
    if (block != -2) return block < 0 ? -1 : block + 1;
    if (!strncmp(name, "transformer.embeddings.", 23)) return 0;
    if (!strncmp(name, "transformer.pooler.", 19) || !strncmp(name, "ln_final.", 9) ||
        !strcmp(name, "text_projection"))
        return g->layers + 1;
    return -1;
}

static int bert_trains(const char *name, const void *ctx)
{
    const bert *m = ctx;
    return bert_param_group(&m->cfg, name) >= m->frozen_groups;
}

int bert_alloc_grads(bert *m)
{
    if (!m->gtable.data) {
        size_t n = m->cfg.layers ? m->cfg.layers : 1;
        if (!(m->grads.layers = calloc(n, sizeof(bert_layer_params)))) {
            clip_set_error("text tower: out of memory for the gradients of %d layers",
                           m->cfg.layers);
            return -1;
        }
        bert_layout(&m->cfg, &m->grads, &m->gtable);
        if (m->frozen_groups > 0) pt_filter(&m->gtable, bert_trains, m);
        pt_alloc(&m->gtable);
    }
    if (m->act_batch && m->frozen_groups < bert_groups(&m->cfg))
        bert_reserve_dacts(m, m->act_batch, m->act_len);
    return 0;
}

#define EMB_COLS 32

int bert_backward(bert *m, const compute_ctx *cx, const int32_t *ids, const float *dout, int B,
                  int L)
{
    const bert_config *g = &m->cfg;
    const bert_params *p = &m->params;
    const bert_acts *a = &m->acts;
    if (!m->act_keep || !m->atable.data || B > m->act_batch || L > m->act_len) {
        clip_set_error("bert_backward: no activations kept for %d x %d tokens (bert_reserve(m, B, "
                       "L, 1) before the forward)",
                       B, L);
        return -1;
    }
    if (bert_alloc_grads(m)) return -1;
    int f = m->frozen_groups; /* the groups below f are frozen (bert_param_group) */
    if (f >= bert_groups(g)) return 0;
    bert_reserve_dacts(m, B, L);
    bert_params *gr = &m->grads;
    bert_dacts *d = &m->dacts;
    int H = g->hidden, FF = g->intermediate, D = g->out_dim;
    size_t N = (size_t)B * L, BH = (size_t)B * H;

    /* head: out = ln_final(tanh(pooler(cls))) @ text_projection */
    double t0 = prof_start(cx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H, D, 1.0f, dout, D, p->text_proj, D,
                0.0f, d->dln_final, H);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, D, B, 1.0f, a->ln_final, H, dout, D,
                1.0f, gr->text_proj, D);
    prof_stop(cx, PROF_GEMM, t0);
    memset(d->dpooled, 0, BH * sizeof(float));
    memset(d->dpool_pre, 0, BH * sizeof(float));
    memset(d->dcls, 0, BH * sizeof(float));
    layernorm_backward(d->dpooled, gr->ln_final_w, gr->ln_final_b, d->dln_final, a->pooled,
                       p->ln_final_w, a->ln_final_mean, a->ln_final_rstd, B, H);
    tanh_backward(d->dpool_pre, a->pooled, d->dpooled, BH);
    if (matmul_backward(cx, f > g->layers ? NULL : d->dcls, gr->pooler_w, gr->pooler_b,
                        d->dpool_pre, H, a->cls, p->pooler_w, B, H, H))
        return -1;
    if (f > g->layers) return 0;
    zero_floats(d->dx, N * H);
    for (int b = 0; b < B; b++)
        memcpy(d->dx + (size_t)b * L * H, d->dcls + (size_t)b * H, H * sizeof(float));

    for (int i = g->layers - 1; i >= 0 && i + 1 >= f; i--) { /* layer i is group i + 1 */
        const bert_layer_params *lp = &p->layers[i];
        bert_layer_params *lg = &gr->layers[i];
        const bert_layer_acts *l = &a->layers[i];
        const float *x = i ? a->layers[i - 1].out : a->emb_ln;
        /* checkpointed: the slot holds the last layer's activations, from the forward */
        if (m->act_keep == ACTS_CHECKPOINT && i < g->layers - 1 &&
            layer_forward(cx, g, lp, layer_qweights(m, i), &a->layers[i], x, a->key_valid, B, L))
            return -1;
        /* out = LN(res_2), res_2 = ln_1 + output.dense(gelu(intermediate.dense(ln_1))) */
        zero_floats(d->dres, N * H);
        layernorm_backward(d->dres, lg->o_ln_w, lg->o_ln_b, d->dx, l->res_2, lp->o_ln_w,
                           l->out_mean, l->out_rstd, N, H);
        memcpy(d->dln, d->dres, N * H * sizeof(float));
        gelu_erf_forward(l->fc_act, l->fc, N * FF); /* the slot is shared: recompute */
        zero_floats(d->dfc_act, N * FF);
        zero_floats(d->dfc, N * FF);
        if (matmul_backward(cx, d->dfc_act, lg->o_w, lg->o_b, d->dres, H, l->fc_act, lp->o_w, N, FF,
                            H))
            return -1;
        gelu_erf_backward(d->dfc, l->fc, d->dfc_act, N * FF);
        if (matmul_backward(cx, d->dln, lg->i_w, lg->i_b, d->dfc, FF, l->ln_1, lp->i_w, N, H, FF))
            return -1;
        /* ln_1 = LN(res_1), res_1 = x + attention.output.dense(attn(q, k, v of x)) */
        zero_floats(d->dres, N * H);
        layernorm_backward(d->dres, lg->ao_ln_w, lg->ao_ln_b, d->dln, l->res_1, lp->ao_ln_w,
                           l->ln_1_mean, l->ln_1_rstd, N, H);
        memcpy(d->dx, d->dres, N * H * sizeof(float));
        zero_floats(d->datty, N * H);
        zero_floats(d->dqkv, N * 3 * H);
        if (matmul_backward(cx, d->datty, lg->ao_w, lg->ao_b, d->dres, H, l->atty, lp->ao_w, N, H,
                            H))
            return -1;
        t0 = prof_start(cx);
        attention_backward(d->dqkv, d->datt, d->datty, l->qkv, l->att, B, L, H, g->heads);
        prof_stop(cx, PROF_ATTENTION, t0);
        if (matmul_backward(cx, d->dx, lg->q_w, lg->q_b, d->dqkv, 3 * H, x, lp->q_w, N, H, H) ||
            matmul_backward(cx, d->dx, lg->k_w, lg->k_b, d->dqkv + H, 3 * H, x, lp->k_w, N, H, H) ||
            matmul_backward(cx, d->dx, lg->v_w, lg->v_b, d->dqkv + 2 * H, 3 * H, x, lp->v_w, N, H,
                            H))
            return -1;
    }

    if (f > 0) return 0;
    /* emb = word[id] + position[t] + token_type[0]; emb_ln = LN(emb) */
    float *demb = d->dres;
    zero_floats(demb, N * H);
    layernorm_backward(demb, gr->emb_ln_w, gr->emb_ln_b, d->dx, a->emb, p->emb_ln_w, a->emb_ln_mean,
                       a->emb_ln_rstd, N, H);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < L; t++) {
        float *dpos = gr->pos_emb + (size_t)t * H;
        for (int b = 0; b < B; b++) {
            const float *src = demb + ((size_t)b * L + t) * H;
            for (int j = 0; j < H; j++) dpos[j] += src[j];
        }
    }
    /* the word scatter-add by column blocks: rows sharing an id never race */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < H; c0 += EMB_COLS) {
        int n = H - c0 < EMB_COLS ? H - c0 : EMB_COLS;
        float st[EMB_COLS] = {0};
        for (size_t bt = 0; bt < N; bt++) {
            const float *src = demb + bt * H + c0;
            for (int j = 0; j < n; j++) st[j] += src[j];
            if (ids[bt] == 0) continue; /* padding_idx */
            float *dw = gr->word_emb + (size_t)ids[bt] * H + c0;
            for (int j = 0; j < n; j++) dw[j] += src[j];
        }
        for (int j = 0; j < n; j++) gr->type_emb[c0 + j] += st[j];
    }
    return 0;
}

double bert_forward_flops(const bert_config *g, int L)
{
    double H = g->hidden, F = g->intermediate;
    return g->layers * (L * 2 * (4 * H * H + 2 * H * F) + 4.0 * L * L * H);
}
