#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kernels/blas.h"
#include "ckpt/checkpoint.h"
#include "kernels/ops.h"
#include "core/util.h"

void train_config_defaults(train_config *c)
{
    memset(c, 0, sizeof *c);
    c->lr = 5e-5;
    c->min_lr_ratio = 0.01;
    c->warmup = 100;
    c->schedule = SCHEDULE_COSINE;
    c->weight_decay = 1e-2;
    c->adam = (adamw_config){0.9f, 0.999f, 1e-8f};
}

/* ---- architectures */

static void arch_preset(train_arch *a, int image_width, int image_layers, int patch, int resolution,
                        int text_width, int text_layers, int max_pos, int embed_dim)
{
    memset(a, 0, sizeof *a);
    a->vit = (vit_config){.width = image_width, .layers = image_layers, .patch = patch,
                          .resolution = resolution, .out_dim = embed_dim};
    a->bert = (bert_config){.hidden = text_width, .layers = text_layers, .heads = text_width / 64,
                            .max_pos = max_pos, .type_vocab = 2, .vocab = 21128, .eps = 1e-12f,
                            .out_dim = embed_dim};
}

/* derived fields, and the constraints the towers rely on */
static int arch_finish(train_arch *a)
{
    vit_config *v = &a->vit;
    bert_config *b = &a->bert;
    if (v->width <= 0 || v->width % 64 || v->layers <= 0 || v->patch <= 0 || v->resolution <= 0 ||
        v->resolution % v->patch) {
        clip_set_error("arch: image_width must be a positive multiple of 64 and resolution a "
                       "multiple of patch (width %d, patch %d, resolution %d)",
                       v->width, v->patch, v->resolution);
        return -1;
    }
    if (b->hidden <= 0 || b->layers <= 0 || b->heads <= 0 || b->hidden % b->heads ||
        b->vocab <= 0 || b->max_pos <= 0 || a->vit.out_dim <= 0) {
        clip_set_error("arch: text_width must be a positive multiple of text_heads, and vocab, "
                       "max_pos and embed_dim positive");
        return -1;
    }
    v->heads = v->width / 64;
    v->mlp = 4 * v->width;
    v->grid = v->resolution / v->patch;
    v->tokens = v->grid * v->grid + 1;
    b->intermediate = 4 * b->hidden;
    b->out_dim = v->out_dim;
    return 0;
}

int train_arch_parse(const char *spec, train_arch *a)
{
    char *s = xstrdup(spec), *save = NULL;
    int rc = -1, first = 1;
    arch_preset(a, 256, 6, 16, 112, 256, 4, 64, 256); /* "small" */
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save), first = 0) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            if (!first) goto bad;
            if (!strcmp(tok, "small")) continue;
            if (!strcmp(tok, "tiny")) arch_preset(a, 64, 2, 8, 32, 64, 2, 64, 32);
            else if (!strcmp(tok, "base")) arch_preset(a, 768, 12, 16, 224, 768, 12, 512, 512);
            else goto bad;
            continue;
        }
        *eq = 0;
        char *end;
        long v = strtol(eq + 1, &end, 10);
        if (*end || end == eq + 1 || v <= 0 || v > 1 << 20) goto bad;
        struct {
            const char *key;
            int *dst;
        } keys[] = {{"image_width", &a->vit.width}, {"image_layers", &a->vit.layers},
                    {"patch", &a->vit.patch},       {"resolution", &a->vit.resolution},
                    {"text_width", &a->bert.hidden}, {"text_layers", &a->bert.layers},
                    {"text_heads", &a->bert.heads}, {"vocab", &a->bert.vocab},
                    {"max_pos", &a->bert.max_pos},  {"embed_dim", &a->vit.out_dim}};
        size_t k = 0;
        while (k < sizeof keys / sizeof keys[0] && strcmp(keys[k].key, tok)) k++;
        if (k == sizeof keys / sizeof keys[0]) goto bad;
        *keys[k].dst = (int)v;
        if (!strcmp(tok, "text_width") && !strstr(spec, "text_heads="))
            a->bert.heads = (int)v / 64 ? (int)v / 64 : 1;
        *eq = '=';
    }
    rc = arch_finish(a);
    free(s);
    return rc;
bad:
    clip_set_error("arch '%s': expected tiny|small|base and/or KEY=N,... (keys image_width, "
                   "image_layers, patch, resolution, text_width, text_layers, text_heads, vocab, "
                   "max_pos, embed_dim)",
                   spec);
    free(s);
    return -1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* OpenAI CLIP's initialisation for the ViT (its text transformer's scheme
 * for the blocks), Hugging Face BERT's (N(0, 0.02), [PAD] row zero) for the
 * text tower; LayerNorm 1/0, biases 0. */
static void init_tower(const param_table *t, int is_vit, int width, int layers, uint64_t seed)
{
    float attn_std = 1.0f / sqrtf((float)width);
    float proj_std = attn_std / sqrtf(2.0f * layers);
    float fc_std = 1.0f / sqrtf(2.0f * width);
    for (int i = 0; i < t->n; i++) {
        const param_spec *s = &t->v[i];
        float *x = *s->ptr, std;
        const char *n = s->name;
        if (ends_with(n, "bias") || (s->ndim == 1 && !ends_with(n, "class_embedding"))) {
            float v = ends_with(n, "weight") ? 1.0f : 0.0f; /* LayerNorm gains */
            for (size_t k = 0; k < s->numel; k++) x[k] = v;
            continue;
        }
        if (!is_vit) std = ends_with(n, "text_projection") ? attn_std : 0.02f;
        else if (ends_with(n, "in_proj_weight")) std = attn_std;
        else if (ends_with(n, "out_proj.weight") || ends_with(n, "c_proj.weight")) std = proj_std;
        else if (ends_with(n, "c_fc.weight")) std = fc_std;
        else if (ends_with(n, "conv1.weight")) std = 1.0f / sqrtf((float)(s->numel / s->shape[0]));
        else std = attn_std; /* class/positional embedding, proj */
        fill_normal(x, s->numel, std, seed + 0x1000193ull * (uint64_t)(i + 1));
        if (ends_with(n, "word_embeddings.weight"))
            memset(x, 0, s->shape[1] * sizeof(float)); /* padding_idx 0 */
    }
}

clip_model *train_model_create(const train_arch *a, uint64_t seed)
{
    clip_model *m = xcalloc(1, sizeof *m);
    m->visual = vit_create(&a->vit);
    m->bert = bert_create(&a->bert);
    m->text = CLIP_TEXT_BERT;
    m->embed_dim = a->vit.out_dim;
    m->logit_scale = logf(1.0f / 0.07f);
    m->max_batch = 32;
    init_tower(&m->visual->ptable, 1, a->vit.width, a->vit.layers, seed);
    init_tower(&m->bert->ptable, 0, a->bert.hidden, a->bert.layers, seed ^ 0xb5ad4eceda1ce2a9ull);
    return m;
}

static int used_by_model(const clip_model *m, const char *name)
{
    return pt_find(&m->visual->ptable, name) || pt_find(&m->bert->ptable, name) ||
           !strcmp(name, "logit_scale") || !strcmp(name, "transformer.embeddings.position_ids");
}

clip_model *train_model_load(const char *init, const char *text_dir)
{
    ckpt *c = ckpt_load(init);
    if (!c) return NULL;
    clip_model *m = clip_model_from_ckpt(c, init, text_dir);
    if (m && (!m->visual || !m->bert)) {
        clip_set_error("%s: %s", init,
                       !m->visual ? "no ViT image tower (visual.*) to train"
                                  : "no BERT text tower: give --text-model DIR (a Hugging Face "
                                    "BERT directory) or a checkpoint with transformer.embeddings.*");
        clip_model_free(m);
        m = NULL;
    }
    if (!m) {
        ckpt_free(c);
        return NULL;
    }
    clip_text_free(m->ctext);
    m->ctext = NULL;
    m->text = CLIP_TEXT_BERT;
    size_t unused = 0;
    char list[512] = "";
    for (size_t i = 0; i < ckpt_count(c); i++) {
        const char *name = ckpt_tensor_at(c, i)->name;
        if (used_by_model(m, name)) continue;
        if (unused++ < 4)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", unused > 1 ? ", " : "",
                     name);
    }
    if (unused)
        warn("%s: %zu tensors not used by the model, left alone (%s%s)", init, unused, list,
             unused > 4 ? ", ..." : "");
    ckpt_free(c);
    return m;
}

/* ---- the trainer */

struct trainer {
    clip_model *m;
    train_config cfg;
    int batch, max_len;
    float *adam_m[2], *adam_v[2]; /* per tower, laid out as its parameters */
    float ls_grad, ls_m, ls_v;    /* logit_scale */
    long step;
    float *img, *txt, *dimg, *dtxt, *scratch; /* [batch, D] and the loss's scratch */
    int32_t *ids;                             /* [batch, max_len] trimmed */
    const clip_device *image_dev, *text_dev;
};

static const param_table *tower_params(const trainer *t, int k)
{
    return k == 0 ? &t->m->visual->ptable : &t->m->bert->ptable;
}

static const param_table *tower_grads(const trainer *t, int k)
{
    return k == 0 ? &t->m->visual->gtable : &t->m->bert->gtable;
}

static float *alloc_floats(size_t n)
{
    float *p = clip_alloc_big(n * sizeof(float));
    memset(p, 0, n * sizeof(float));
    return p;
}

trainer *trainer_create(clip_model *m, const train_config *cfg, int batch, int max_len)
{
    trainer *t = xcalloc(1, sizeof *t);
    t->m = m;
    t->cfg = *cfg;
    t->batch = batch;
    t->max_len = max_len;
    t->image_dev = t->text_dev = device_find("cpu", "");
    m->max_batch = batch; /* evaluation reuses the training activations */
    vit_alloc_grads(m->visual);
    bert_alloc_grads(m->bert);
    vit_reserve(m->visual, batch, 1);
    bert_reserve(m->bert, batch, max_len, 1);
    for (int k = 0; k < 2; k++) {
        t->adam_m[k] = alloc_floats(tower_params(t, k)->total);
        t->adam_v[k] = alloc_floats(tower_params(t, k)->total);
    }
    int D = m->embed_dim;
    t->img = xmalloc((size_t)batch * D * sizeof(float));
    t->txt = xmalloc((size_t)batch * D * sizeof(float));
    t->dimg = xmalloc((size_t)batch * D * sizeof(float));
    t->dtxt = xmalloc((size_t)batch * D * sizeof(float));
    t->scratch = xmalloc(((size_t)3 * batch * batch + (size_t)2 * batch * D) * sizeof(float));
    t->ids = xmalloc((size_t)batch * max_len * sizeof(int32_t));
    return t;
}

void trainer_free(trainer *t)
{
    if (!t) return;
    for (int k = 0; k < 2; k++) {
        size_t bytes = tower_params(t, k)->total * sizeof(float);
        clip_free_big(t->adam_m[k], bytes);
        clip_free_big(t->adam_v[k], bytes);
    }
    clip_model_free(t->m);
    free(t->img);
    free(t->txt);
    free(t->dimg);
    free(t->dtxt);
    free(t->scratch);
    free(t->ids);
    free(t);
}

void trainer_set_devices(trainer *t, const clip_device *image, const clip_device *text)
{
    t->image_dev = image;
    t->text_dev = text;
}

clip_model *trainer_model(trainer *t) { return t->m; }
long trainer_step_count(const trainer *t) { return t->step; }

int trainer_compute_grads(trainer *t, const uint8_t *pixels, const int32_t *ids, int B, int L,
                          train_stats *st)
{
    clip_model *m = t->m;
    if (B > t->batch || L > t->max_len) {
        clip_set_error("batch %d x %d tokens exceeds the trainer's %d x %d", B, L, t->batch,
                       t->max_len);
        return -1;
    }
    for (int k = 0; k < 2; k++)
        memset(tower_grads(t, k)->data, 0, tower_grads(t, k)->total * sizeof(float));
    blas_set_bf16(t->cfg.amp);
    double t0 = now_seconds();
    t->image_dev->vit_forward(m->visual, pixels, B, t->img);
    double t1 = now_seconds();
    int used = trim_padding(t->ids, ids, B, L);
    if (used == L) memcpy(t->ids, ids, (size_t)B * L * sizeof *ids); /* kept for the backward */
    if (t->text_dev->bert_forward(m->bert, t->ids, B, used, t->txt)) {
        blas_set_bf16(0);
        return -1;
    }
    double t2 = now_seconds();
    contrastive_stats cs;
    contrastive_loss(t->img, t->txt, B, m->embed_dim, m->logit_scale, t->dimg, t->dtxt,
                     &t->ls_grad, t->scratch, &cs);
    double t3 = now_seconds();
    t->image_dev->vit_backward(m->visual, t->dimg, B);
    double t4 = now_seconds();
    t->text_dev->bert_backward(m->bert, t->ids, t->dtxt, B, used);
    double t5 = now_seconds();
    blas_set_bf16(0);
    if (st) {
        memset(st, 0, sizeof *st);
        st->sec_image = (t1 - t0) + (t4 - t3);
        st->sec_text = (t2 - t1) + (t5 - t4);
        st->loss = cs.loss;
        st->acc_i2t = cs.acc_i2t;
        st->acc_t2i = cs.acc_t2i;
        st->logit_scale = m->logit_scale;
    }
    return 0;
}

const float *trainer_grad(const trainer *t, const char *name, size_t *n)
{
    if (!strcmp(name, "logit_scale")) {
        *n = 1;
        return &t->ls_grad;
    }
    for (int k = 0; k < 2; k++) {
        const param_spec *s = pt_find(tower_params(t, k), name);
        if (s) {
            *n = s->numel;
            return tower_grads(t, k)->data + s->offset;
        }
    }
    return NULL;
}

int trainer_step(trainer *t, const uint8_t *pixels, const int32_t *ids, int B, int L,
                 train_stats *st)
{
    train_stats s;
    if (trainer_compute_grads(t, pixels, ids, B, L, &s)) return -1;
    double sq = (double)t->ls_grad * t->ls_grad;
    for (int k = 0; k < 2; k++) sq += sum_squares(tower_grads(t, k)->data, tower_grads(t, k)->total);
    s.grad_norm = sqrt(sq);
    s.lr = lr_at_step(t->cfg.schedule, t->cfg.lr, t->cfg.min_lr_ratio, t->cfg.warmup,
                      t->cfg.total_steps, t->step);
    if (st) *st = s;
    if (!isfinite(s.loss) || !isfinite(s.grad_norm)) return 1;
    if (t->cfg.grad_clip > 0) {
        double coef = t->cfg.grad_clip / (s.grad_norm + 1e-6);
        if (coef < 1.0) {
            for (int k = 0; k < 2; k++)
                scale_floats(tower_grads(t, k)->data, tower_grads(t, k)->total, (float)coef);
            t->ls_grad *= (float)coef;
        }
    }
    double t0 = now_seconds();
    t->step++;
    float lr = (float)s.lr, wd = (float)t->cfg.weight_decay;
    for (int k = 0; k < 2; k++) {
        const param_table *p = tower_params(t, k), *g = tower_grads(t, k);
        for (int i = 0; i < p->n; i++) {
            const param_spec *ps = &p->v[i];
            size_t o = ps->offset;
            adamw_update(p->data + o, g->data + o, t->adam_m[k] + o, t->adam_v[k] + o, ps->numel,
                         lr, ps->ndim >= 2 || t->cfg.wd_all ? wd : 0.0f, &t->cfg.adam, t->step);
        }
    }
    adamw_update(&t->m->logit_scale, &t->ls_grad, &t->ls_m, &t->ls_v, 1, lr,
                 t->cfg.wd_all ? wd : 0.0f, &t->cfg.adam, t->step);
    t->m->logit_scale = fminf(fmaxf(t->m->logit_scale, 0.0f), logf(100.0f));
    if (st) {
        st->logit_scale = t->m->logit_scale;
        st->sec_optim = now_seconds() - t0;
    }
    return 0;
}

/* ---- saving */

/* The "clip_config" record of saved checkpoints (.safetensors and .pth): the
 * architecture, with what tensor shapes do not tell, the head counts of both
 * towers and BERT's eps, so that a reload never guesses width / 64. */
static char *config_json(const clip_model *m)
{
    const vit_config *v = &m->visual->cfg;
    const bert_config *b = &m->bert->cfg;
    json_t *j = json_pack("{s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i},s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f},s:i}",
                          "image", "width", v->width, "layers", v->layers, "heads", v->heads, "mlp",
                          v->mlp, "patch", v->patch, "resolution", v->resolution, "out_dim",
                          v->out_dim, "text", "hidden",
                          b->hidden, "layers", b->layers, "heads", b->heads, "intermediate",
                          b->intermediate, "max_pos", b->max_pos, "type_vocab", b->type_vocab,
                          "vocab", b->vocab, "eps", (double)b->eps, "embed_dim", m->embed_dim);
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

static int arch_from_json(const char *s, train_arch *a)
{
    json_error_t err;
    json_t *j = json_loads(s, 0, &err);
    memset(a, 0, sizeof *a);
    double eps = 1e-12;
    int mlp = 0, image_heads = 0; /* absent from older state files: width / 64 */
    int rc = json_unpack_ex(j, &err, 0, "{s:{s:i,s:i,s?i,s:i,s:i,s:i,s:i},s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:F}}",
                            "image", "width", &a->vit.width, "layers", &a->vit.layers, "heads",
                            &image_heads, "mlp", &mlp, "patch",
                            &a->vit.patch, "resolution", &a->vit.resolution, "out_dim",
                            &a->vit.out_dim, "text", "hidden", &a->bert.hidden, "layers",
                            &a->bert.layers, "heads", &a->bert.heads, "intermediate",
                            &a->bert.intermediate, "max_pos", &a->bert.max_pos, "type_vocab",
                            &a->bert.type_vocab, "vocab", &a->bert.vocab, "eps", &eps);
    json_decref(j);
    if (rc) {
        clip_set_error("clip_config metadata: %s", err.text);
        return -1;
    }
    int inter = a->bert.intermediate, types = a->bert.type_vocab;
    if (arch_finish(a)) return -1;
    if (image_heads) {
        if (image_heads < 0 || a->vit.width % image_heads) {
            clip_set_error("clip_config metadata: image heads %d do not divide the width %d",
                           image_heads, a->vit.width);
            return -1;
        }
        a->vit.heads = image_heads;
    }
    a->vit.mlp = mlp;
    a->bert.intermediate = inter;
    a->bert.type_vocab = types;
    a->bert.eps = (float)eps;
    return 0;
}

typedef struct {
    ckpt_out_tensor *v;
    size_t n, cap;
    char **names; /* owned */
} tensor_list;

static void tl_add(tensor_list *l, const char *prefix, const char *name, clip_dtype dt, int ndim,
                   const int64_t *shape, const void *data)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
        l->names = xrealloc(l->names, l->cap * sizeof *l->names);
    }
    size_t len = strlen(prefix) + strlen(name) + 1;
    char *full = xmalloc(len);
    snprintf(full, len, "%s%s", prefix, name);
    ckpt_out_tensor *o = &l->v[l->n];
    memset(o, 0, sizeof *o);
    o->name = l->names[l->n++] = full;
    o->dtype = dt;
    o->ndim = ndim;
    for (int i = 0; i < ndim; i++) o->shape[i] = shape[i];
    o->data = data;
}

static void tl_add_table(tensor_list *l, const char *prefix, const param_table *t, const float *data)
{
    for (int i = 0; i < t->n; i++)
        tl_add(l, prefix, t->v[i].name, DT_F32, t->v[i].ndim, t->v[i].shape,
               data + t->v[i].offset);
}

static void tl_free(tensor_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    free(l->v);
}

/* the reference model's state dict: both towers, the head, logit_scale and,
 * when the model came with it (bert_config.position_ids), BERT's
 * position_ids buffer: exactly the keys a strict load_state_dict of the
 * reference model built from the same init expects. Returns the buffer's
 * data (free it after writing), NULL without one. */
static int64_t *model_tensors(tensor_list *l, const clip_model *m)
{
    tl_add_table(l, "", &m->visual->ptable, m->visual->ptable.data);
    tl_add_table(l, "", &m->bert->ptable, m->bert->ptable.data);
    tl_add(l, "", "logit_scale", DT_F32, 0, NULL, &m->logit_scale);
    if (!m->bert->cfg.position_ids) return NULL;
    int P = m->bert->cfg.max_pos;
    int64_t *pos = xmalloc(P * sizeof *pos);
    for (int i = 0; i < P; i++) pos[i] = i;
    tl_add(l, "", "transformer.embeddings.position_ids", DT_I64, 2, (int64_t[]){1, P}, pos);
    return pos;
}

int trainer_save_weights(const trainer *t, const char *path)
{
    tensor_list l = {0};
    int64_t *pos = model_tensors(&l, t->m);
    char *cfg = config_json(t->m);
    const char *meta[] = {"format", "pt", "clip_config", cfg, NULL};
    int rc = ends_with(path, ".safetensors") ? ckpt_save_safetensors(path, l.v, l.n, meta)
                                             : ckpt_save_pth(path, l.v, l.n, meta + 2);
    free(cfg);
    free(pos);
    tl_free(&l);
    return rc;
}

int trainer_save_state(const trainer *t, const char *path, const char *extra_json)
{
    tensor_list l = {0};
    int64_t *pos = model_tensors(&l, t->m);
    for (int k = 0; k < 2; k++) {
        tl_add_table(&l, "adam_m.", tower_params(t, k), t->adam_m[k]);
        tl_add_table(&l, "adam_v.", tower_params(t, k), t->adam_v[k]);
    }
    tl_add(&l, "adam_m.", "logit_scale", DT_F32, 0, NULL, &t->ls_m);
    tl_add(&l, "adam_v.", "logit_scale", DT_F32, 0, NULL, &t->ls_v);
    char *cfg = config_json(t->m);
    char step[32];
    snprintf(step, sizeof step, "%ld", t->step);
    const char *meta[] = {"format", "clip-train state", "clip_config", cfg, "step", step,
                          "extra", extra_json ? extra_json : "{}", NULL};
    int rc = ckpt_save_safetensors(path, l.v, l.n, meta);
    free(cfg);
    free(pos);
    tl_free(&l);
    return rc;
}

static int read_table(const ckpt *c, const char *prefix, const param_table *t, float *data)
{
    for (int i = 0; i < t->n; i++) {
        char name[300];
        snprintf(name, sizeof name, "%s%s", prefix, t->v[i].name);
        if (ckpt_read_f32(c, name, t->v[i].ndim, t->v[i].shape, data + t->v[i].offset)) return -1;
    }
    return 0;
}

trainer *trainer_load_state(const char *path, const train_config *cfg, int batch, int max_len,
                            char **extra_json)
{
    ckpt *c = ckpt_load(path);
    if (!c) return NULL;
    const char *meta = ckpt_metadata(c, "clip_config"), *step = ckpt_metadata(c, "step");
    const char *extra = ckpt_metadata(c, "extra");
    train_arch a;
    trainer *t = NULL;
    if (!meta || !step || !extra) {
        clip_set_error("%s: not a clip-train state file (no clip_config/step metadata)", path);
        goto fail;
    }
    if (arch_from_json(meta, &a)) goto fail;
    /* the saved key set continues that of the run's init */
    a.bert.position_ids = ckpt_find(c, "transformer.embeddings.position_ids") != NULL;
    t = trainer_create(train_model_create(&a, 0), cfg, batch, max_len);
    t->step = atol(step);
    for (int k = 0; k < 2; k++)
        if (read_table(c, "", tower_params(t, k), tower_params(t, k)->data) ||
            read_table(c, "adam_m.", tower_params(t, k), t->adam_m[k]) ||
            read_table(c, "adam_v.", tower_params(t, k), t->adam_v[k]))
            goto fail;
    if (ckpt_read_f32(c, "logit_scale", 0, NULL, &t->m->logit_scale) ||
        ckpt_read_f32(c, "adam_m.logit_scale", 0, NULL, &t->ls_m) ||
        ckpt_read_f32(c, "adam_v.logit_scale", 0, NULL, &t->ls_v))
        goto fail;
    if (extra_json) *extra_json = xstrdup(extra);
    ckpt_free(c);
    return t;
fail:;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", clip_error());
    if (!strstr(msg, path)) clip_set_error("%s: %s", path, msg);
    trainer_free(t);
    ckpt_free(c);
    return NULL;
}
