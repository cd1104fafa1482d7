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
#include "train/contrastive.h"
#include "train/patch_mask.h"

void train_config_defaults(train_config *c)
{
    memset(c, 0, sizeof *c);
    c->lr = 5e-5;
    c->min_lr_ratio = 0.01;
    c->warmup = 100;
    c->schedule = SCHEDULE_COSINE;
    c->weight_decay = 1e-2;
    c->adam = (adamw_config){0.9f, 0.999f, 1e-8f};
    c->accum_freq = 1;
}

/* ---- architectures */

static void arch_preset(train_arch *a, int image_width, int image_layers, int patch, int resolution,
                        int text_width, int text_layers, int max_pos, int embed_dim)
{
    memset(a, 0, sizeof *a);
    /* image heads 0: width / MODEL_DEFAULT_HEAD_DIM in arch_finish */
    a->vit = (vit_config){.width = image_width,
                          .layers = image_layers,
                          .patch = patch,
                          .resolution = resolution,
                          .out_dim = embed_dim};
    a->bert = (bert_config){.hidden = text_width,
                            .layers = text_layers,
                            .heads = text_width / MODEL_DEFAULT_HEAD_DIM,
                            .max_pos = max_pos,
                            .type_vocab = 2,
                            .vocab = 21128,
                            .eps = 1e-12f,
                            .out_dim = embed_dim};
    a->text = CLIP_TEXT_BERT;
}

/* derived fields, and the constraints the towers rely on; v->heads 0: the
 * default, width / MODEL_DEFAULT_HEAD_DIM */
static int arch_finish(train_arch *a)
{
    vit_config *v = &a->vit;
    bert_config *b = &a->bert;
    int heads = v->heads ? v->heads : MODEL_DEFAULT_HEAD_DIM;
    if (v->width <= 0 || heads <= 0 || v->width % heads || v->layers <= 0 || v->patch <= 0 ||
        v->resolution <= 0 || v->resolution % v->patch) {
        if (v->heads)
            clip_set_error("arch: image_width must be a positive multiple of image_heads and "
                           "resolution a multiple of patch (width %d, heads %d, patch %d, "
                           "resolution %d)",
                           v->width, v->heads, v->patch, v->resolution);
        else
            clip_set_error("arch: image_width must be a positive multiple of %d (or of "
                           "image_heads) and resolution a multiple of patch (width %d, patch %d, "
                           "resolution %d)",
                           MODEL_DEFAULT_HEAD_DIM, v->width, v->patch, v->resolution);
        return -1;
    }
    if (b->hidden <= 0 || b->layers <= 0 || b->heads <= 0 || b->hidden % b->heads ||
        b->vocab <= 0 || b->max_pos <= 0 || a->vit.out_dim <= 0) {
        clip_set_error("arch: text_width must be a positive multiple of text_heads, and vocab, "
                       "max_pos and embed_dim positive");
        return -1;
    }
    if (!v->heads) v->heads = v->width / MODEL_DEFAULT_HEAD_DIM;
    v->mlp = 4 * v->width;
    v->grid = v->resolution / v->patch;
    v->tokens = v->grid * v->grid + 1;
    b->intermediate = 4 * b->hidden;
    b->out_dim = v->out_dim;
    if (a->text == CLIP_TEXT_CLIP) /* OpenAI's English tower, sized by the text_* keys */
        a->ctext = (clip_text_config){b->hidden,  b->layers, b->heads,  4 * b->hidden,
                                      b->max_pos, b->vocab,  v->out_dim};
    return 0;
}

int train_arch_parse(const char *spec, train_arch *a)
{
    char *s = strdup(spec), *save = NULL;
    int rc = -1, first = 1;
    if (!s) {
        clip_set_error("arch '%s': out of memory", spec);
        return -1;
    }
    arch_preset(a, 256, 6, 16, 112, 256, 4, 64, 256); /* "small" */
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save), first = 0) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            if (!first) goto bad;
            if (!strcmp(tok, "small")) continue;
            if (!strcmp(tok, "tiny"))
                arch_preset(a, 64, 2, 8, 32, 64, 2, 64, 32);
            else if (!strcmp(tok, "base"))
                arch_preset(a, 768, 12, 16, 224, 768, 12, 512, 512);
            else
                goto bad;
            continue;
        }
        *eq = 0;
        if (!strcmp(tok, "text")) {
            if (strcmp(eq + 1, "clip") && strcmp(eq + 1, "bert")) goto bad;
            a->text = strcmp(eq + 1, "clip") ? CLIP_TEXT_BERT : CLIP_TEXT_CLIP;
            continue;
        }
        char *end;
        long v = strtol(eq + 1, &end, 10);
        if (*end || end == eq + 1 || v <= 0 || v > 1 << 20) goto bad;
        struct {
            const char *key;
            int *dst;
        } keys[] = {{"image_width", &a->vit.width},     {"image_layers", &a->vit.layers},
                    {"image_heads", &a->vit.heads},     {"patch", &a->vit.patch},
                    {"resolution", &a->vit.resolution}, {"text_width", &a->bert.hidden},
                    {"text_layers", &a->bert.layers},   {"text_heads", &a->bert.heads},
                    {"vocab", &a->bert.vocab},          {"max_pos", &a->bert.max_pos},
                    {"embed_dim", &a->vit.out_dim}};
        size_t k = 0;
        while (k < sizeof keys / sizeof keys[0] && strcmp(keys[k].key, tok)) k++;
        if (k == sizeof keys / sizeof keys[0]) goto bad;
        *keys[k].dst = (int)v;
        if (!strcmp(tok, "text_width") && !strstr(spec, "text_heads="))
            a->bert.heads = (int)v / MODEL_DEFAULT_HEAD_DIM ? (int)v / MODEL_DEFAULT_HEAD_DIM : 1;
        *eq = '=';
    }
    if (a->text == CLIP_TEXT_CLIP) { /* OpenAI's BPE vocabulary and context unless given */
        if (!strstr(spec, "vocab=")) a->bert.vocab = 49408;
        if (!strstr(spec, "max_pos=")) a->bert.max_pos = 77;
    }
    rc = arch_finish(a);
    free(s);
    return rc;
bad:
    clip_set_error("arch '%s': expected tiny|small|base and/or KEY=N,... (keys image_width, "
                   "image_layers, image_heads, patch, resolution, text_width, text_layers, "
                   "text_heads, vocab, max_pos, embed_dim) and text=bert|clip",
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
        if (!is_vit)
            std = ends_with(n, "text_projection") ? attn_std : 0.02f;
        else if (ends_with(n, "in_proj_weight"))
            std = attn_std;
        else if (ends_with(n, "out_proj.weight") || ends_with(n, "c_proj.weight"))
            std = proj_std;
        else if (ends_with(n, "c_fc.weight"))
            std = fc_std;
        else if (ends_with(n, "conv1.weight"))
            std = 1.0f / sqrtf((float)(s->numel / s->shape[0]));
        else
            std = attn_std; /* class/positional embedding, proj */
        fill_normal(x, s->numel, std, seed + 0x1000193ull * (uint64_t)(i + 1));
        if (ends_with(n, "word_embeddings.weight"))
            memset(x, 0, s->shape[1] * sizeof(float)); /* padding_idx 0 */
    }
}

clip_model *train_model_create(const train_arch *a, uint64_t seed)
{
    clip_model *m = calloc(1, sizeof *m);
    if (!m) {
        clip_set_error("out of memory for the model");
        return NULL;
    }
    int english = a->text == CLIP_TEXT_CLIP;
    if (!(m->visual = vit_create(&a->vit)) || (english ? !(m->ctext = clip_text_create(&a->ctext))
                                                       : !(m->bert = bert_create(&a->bert)))) {
        clip_model_free(m);
        return NULL;
    }
    m->text = english ? CLIP_TEXT_CLIP : CLIP_TEXT_BERT;
    m->embed_dim = a->vit.out_dim;
    m->logit_scale = logf(1.0f / 0.07f);
    m->max_batch = 32;
    m->compute = (compute_ctx){PRECISION_FP32, NULL};
    init_tower(&m->visual->ptable, 1, a->vit.width, a->vit.layers, seed);
    if (english)
        clip_text_init_params(m->ctext, seed ^ 0xb5ad4eceda1ce2a9ull);
    else
        init_tower(&m->bert->ptable, 0, a->bert.hidden, a->bert.layers,
                   seed ^ 0xb5ad4eceda1ce2a9ull);
    return m;
}

static int used_by_model(const clip_model *m, const char *name)
{
    return pt_find(&m->visual->ptable, name) || (m->bert && pt_find(&m->bert->ptable, name)) ||
           (m->ctext && pt_find(&m->ctext->ptable, name)) || !strcmp(name, "logit_scale") ||
           !strcmp(name, "transformer.embeddings.position_ids");
}

clip_model *train_model_load(const char *init, const char *text_dir)
{
    ckpt *c = ckpt_load(init);
    if (!c) return NULL;
    clip_model *m = clip_model_from_ckpt(c, init, text_dir);
    if (m && (!m->visual || m->text == CLIP_TEXT_NONE)) {
        clip_set_error("%s: %s", init,
                       !m->visual ? "no ViT image tower (visual.*) to train"
                                  : "no text tower: give --text-model DIR (a Hugging Face BERT "
                                    "directory) or a checkpoint with transformer.embeddings.* "
                                    "(BERT) or token_embedding.weight (OpenAI's English tower)");
        clip_model_free(m);
        m = NULL;
    }
    if (!m) {
        ckpt_free(c);
        return NULL;
    }
    if (m->text == CLIP_TEXT_BERT) { /* the English tower beside a BERT stays unused */
        clip_text_free(m->ctext);
        m->ctext = NULL;
    }
    size_t unused = 0;
    char list[512] = "";
    for (size_t i = 0; i < ckpt_count(c); i++) {
        const char *name = ckpt_tensor_at(c, i)->name;
        if (used_by_model(m, name)) continue;
        if (unused++ < 4)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
                     unused > 1 ? ", " : "", name);
    }
    if (unused && clip_model_warn(m, "%s: %zu tensors not used by the model, left alone (%s%s)",
                                  init, unused, list, unused > 4 ? ", ..." : "")) {
        clip_model_free(m);
        m = NULL;
    }
    ckpt_free(c);
    return m;
}

/* ---- the trainer */

/* One encoder under training, a value the trainer's loops iterate over: its
 * kind (which functions run it), its model (config, parameters and
 * gradients live there), the AdamW moments in its parameters' layout, the
 * device it runs on. */
typedef enum { TOWER_VIT, TOWER_BERT, TOWER_CLIP_TEXT } tower_kind;

typedef struct {
    tower_kind kind;
    union {
        vit *vit;
        bert *bert;
        clip_text *ctext;
    } model;
    const param_table *params, *grads; /* grads: the trainable tensors only (locking) */
    float *adam_m, *adam_v;            /* [grads->total] each, in the gradients' layout */
    int *param_of;                     /* [grads->n] the index in params of each gradient */
    int frozen; /* locked whole: no gradient, no backward, no kept activations */
    const clip_device *dev;
} train_tower;

enum { IMAGE_TOWER, TEXT_TOWER, N_TOWERS };

/* what a tower encodes in a step: pixels for the image tower, ids for a text one */
typedef struct {
    const uint8_t *pixels; /* [B, R, R, 3] */
    const int32_t *ids;    /* [B, L] */
    int B, L;
    int keep; /* patch dropout: the patches kept, kept[B, keep]; NULL: all */
    const int32_t *kept;
} tower_input;

struct trainer {
    clip_model *m;
    train_config cfg;
    compute_ctx cx;     /* the steps' precision (cfg.amp); the model's own stays fp32 */
    int batch, max_len; /* one micro-batch's samples and tokens (the activations' size) */
    train_tower towers[N_TOWERS];
    float ls_grad, ls_m, ls_v; /* logit_scale */
    long step;
    train_comm *comm; /* NULL: one process */
    int rank, ranks;
    /* the step's buffers, for accum_freq micro-batches of `batch` on `ranks` ranks */
    int rows, global;           /* this rank's samples (accum * batch) and all ranks' */
    float *img, *txt;           /* [rows, D] this rank's features */
    float *dimg, *dtxt;         /* [rows, D] their gradients */
    float *all_img, *all_txt;   /* [global, D] gathered (ranks > 1; else img, txt) */
    float *dall_img, *dall_txt; /* [global, D] the loss part's gradients of every feature */
    float *scratch;             /* contrastive_scratch_floats(global, rows, D) */
    size_t scratch_n;
    int32_t *ids; /* [accum][batch, max_len]: each micro-batch trimmed */
    int *used;    /* [accum] its tokens */
    /* patch dropout (cfg.mask_ratio): keep patches of each image this step */
    int keep, kept_valid;
    int32_t *kept;          /* [accum * batch, keep] */
    uint64_t *mask_scratch; /* [2 * patches] */
};

static float *alloc_floats(size_t n)
{
    float *p = clip_alloc_big(n * sizeof(float));
    memset(p, 0, n * sizeof(float));
    return p;
}

/* How many leading parameter groups cfg's locks freeze in tower `which`
 * (groups: vit_param_group, bert_param_group, clip_text_param_group); -1
 * with an error naming the option when its count is more than the tower has. */
static int frozen_groups(const clip_model *m, const train_config *cfg, int which)
{
    if (which == IMAGE_TOWER) {
        int G = vit_groups(&m->visual->cfg), n = cfg->lock_image_unlocked_groups;
        if (!cfg->lock_image) return 0;
        if (n < 0 || n > G) {
            clip_set_error("--lock-image-unlocked-groups %d: the image tower has %d groups (the "
                           "stem, %d blocks, ln_post with the last, proj): give 0 to %d",
                           n, G, m->visual->cfg.layers, G);
            return -1;
        }
        return G - n;
    }
    int layers = m->text == CLIP_TEXT_CLIP ? m->ctext->cfg.layers : m->bert->cfg.layers;
    int n = cfg->lock_text_unlocked_layers;
    if (!cfg->lock_text) return 0;
    if (n < 0 || n > layers) {
        clip_set_error("--lock-text-unlocked-layers %d: the text tower has %d layers: give 0 to %d",
                       n, layers, layers);
        return -1;
    }
    return n ? layers + 1 - n : layers + 2; /* groups: embeddings, layers, head */
}

int train_check_locks(const clip_model *m, const train_config *cfg)
{
    return frozen_groups(m, cfg, IMAGE_TOWER) < 0 || frozen_groups(m, cfg, TEXT_TOWER) < 0 ? -1 : 0;
}

/* gradients of the trainable parameters, activations kept for batch x
 * max_len (ACTS_TRAIN, or ACTS_CHECKPOINT with cfg->grad_checkpointing,
 * model/resblock.h; none for a tower locked whole), AdamW moments; the
 * activations first: alloc_grads sizes the backward scratch for them */
static int tower_init(train_tower *tw, clip_model *m, const train_config *cfg, int which, int batch,
                      int max_len)
{
    memset(tw, 0, sizeof *tw);
    tw->dev = device_find("cpu", "");
    int f = frozen_groups(m, cfg, which);
    if (f < 0) return -1;
    int keep = cfg->grad_checkpointing ? ACTS_CHECKPOINT : ACTS_TRAIN;
    if (which == IMAGE_TOWER) {
        tw->kind = TOWER_VIT;
        tw->model.vit = m->visual;
        tw->frozen = f == vit_groups(&m->visual->cfg);
        m->visual->frozen_groups = f;
        if (vit_reserve(m->visual, batch, tw->frozen ? ACTS_INFER : keep) ||
            vit_alloc_grads(m->visual))
            return -1;
        tw->params = &m->visual->ptable, tw->grads = &m->visual->gtable;
    } else if (m->text == CLIP_TEXT_CLIP) {
        clip_text *c = tw->model.ctext = m->ctext;
        tw->kind = TOWER_CLIP_TEXT;
        tw->frozen = f == clip_text_groups(&c->cfg);
        c->frozen_groups = f;
        if (clip_text_reserve(c, batch, max_len, tw->frozen ? ACTS_INFER : keep) ||
            clip_text_alloc_grads(c))
            return -1;
        tw->params = &c->ptable, tw->grads = &c->gtable;
    } else {
        tw->kind = TOWER_BERT;
        tw->model.bert = m->bert;
        tw->frozen = f == bert_groups(&m->bert->cfg);
        m->bert->frozen_groups = f;
        if (bert_reserve(m->bert, batch, max_len, tw->frozen ? ACTS_INFER : keep) ||
            bert_alloc_grads(m->bert))
            return -1;
        tw->params = &m->bert->ptable, tw->grads = &m->bert->gtable;
    }
    tw->adam_m = alloc_floats(tw->grads->total);
    tw->adam_v = alloc_floats(tw->grads->total);
    tw->param_of = malloc((tw->grads->n ? tw->grads->n : 1) * sizeof *tw->param_of);
    if (!tw->param_of) {
        clip_set_error("out of memory for the trainer's tables");
        return -1;
    }
    for (int i = 0, j = 0; i < tw->grads->n; i++, j++) { /* both in layout order */
        while (strcmp(tw->params->v[j].name, tw->grads->v[i].name)) j++;
        tw->param_of[i] = j;
    }
    return 0;
}

static void tower_free(train_tower *tw)
{
    if (!tw->grads) return;
    size_t bytes = tw->grads->total * sizeof(float);
    if (tw->adam_m) clip_free_big(tw->adam_m, bytes);
    if (tw->adam_v) clip_free_big(tw->adam_v, bytes);
    free(tw->param_of);
}

static int tower_forward(const trainer *t, train_tower *tw, const tower_input *in, float *out)
{
    switch (tw->kind) {
    case TOWER_VIT:
        if (in->kept)
            return tw->dev->vit_forward_masked(tw->model.vit, &t->cx, in->pixels, in->B, in->keep,
                                               in->kept, out);
        return tw->dev->vit_forward(tw->model.vit, &t->cx, in->pixels, in->B, out);
    case TOWER_BERT:
        return tw->dev->bert_forward(tw->model.bert, &t->cx, in->ids, in->B, in->L, out);
    case TOWER_CLIP_TEXT:
        return tw->dev->clip_text_forward(tw->model.ctext, &t->cx, in->ids, in->B, in->L, out);
    }
    return -1;
}

static int tower_backward(const trainer *t, train_tower *tw, const tower_input *in,
                          const float *dout)
{
    switch (tw->kind) {
    case TOWER_VIT: return tw->dev->vit_backward(tw->model.vit, &t->cx, dout, in->B);
    case TOWER_BERT:
        return tw->dev->bert_backward(tw->model.bert, &t->cx, in->ids, dout, in->B, in->L);
    case TOWER_CLIP_TEXT:
        return tw->dev->clip_text_backward(tw->model.ctext, &t->cx, in->ids, dout, in->B, in->L);
    }
    return -1;
}

static void free_step_buffers(trainer *t)
{
    free(t->img), free(t->txt), free(t->dimg), free(t->dtxt);
    if (t->all_img != t->img) free(t->all_img), free(t->all_txt);
    free(t->dall_img), free(t->dall_txt);
    if (t->scratch) clip_free_big(t->scratch, t->scratch_n * sizeof(float));
    free(t->ids), free(t->used);
    t->img = t->txt = t->dimg = t->dtxt = t->all_img = t->all_txt = NULL;
    t->dall_img = t->dall_txt = t->scratch = NULL;
    t->ids = NULL;
    t->used = NULL;
}

/* the buffers of a step of accum_freq micro-batches on t->ranks ranks, every
 * size checked before it is allocated */
static int alloc_step_buffers(trainer *t)
{
    free_step_buffers(t);
    int K = t->cfg.accum_freq, D = t->m->embed_dim;
    long long rows = (long long)K * t->batch, global = rows * t->ranks;
    size_t scratch = global <= TRAIN_MAX_GLOBAL_BATCH
                         ? contrastive_scratch_floats((int)global, (int)rows, D)
                         : 0;
    if (K < 1 || global > TRAIN_MAX_GLOBAL_BATCH || !scratch ||
        (size_t)global * D > ((size_t)1 << 34) || scratch > ((size_t)1 << 36)) {
        clip_set_error("a global batch of %lld (%d rank%s x %d micro-batch%s x %d) is more than "
                       "the %d samples one contrastive batch may hold: lower -b or --accum-freq",
                       global, t->ranks, t->ranks > 1 ? "s" : "", K, K > 1 ? "es" : "", t->batch,
                       TRAIN_MAX_GLOBAL_BATCH);
        return -1;
    }
    t->rows = (int)rows, t->global = (int)global;
    size_t local = (size_t)rows * D * sizeof(float), all = (size_t)global * D * sizeof(float);
    t->img = malloc(local), t->txt = malloc(local);
    t->dimg = malloc(local), t->dtxt = malloc(local);
    if (t->ranks > 1)
        t->all_img = malloc(all), t->all_txt = malloc(all);
    else
        t->all_img = t->img, t->all_txt = t->txt;
    t->dall_img = malloc(all), t->dall_txt = malloc(all);
    t->scratch_n = scratch;
    t->scratch = clip_alloc_big(scratch * sizeof(float));
    t->ids = malloc((size_t)rows * t->max_len * sizeof(int32_t));
    t->used = malloc((size_t)K * sizeof(int));
    if (!t->img || !t->txt || !t->dimg || !t->dtxt || !t->all_img || !t->all_txt || !t->dall_img ||
        !t->dall_txt || !t->scratch || !t->ids || !t->used) {
        clip_set_error("out of memory for a global batch of %lld", global);
        return -1;
    }
    return 0;
}

/* patch dropout's buffers: the kept patches of every image of a step */
static int mask_init(trainer *t)
{
    double r = t->cfg.mask_ratio;
    if (!(r >= 0 && r < 1)) {
        clip_set_error("patch dropout: the mask ratio %g is not in [0, 1)", r);
        return -1;
    }
    if (r == 0) return 0;
    int patches = t->m->visual->cfg.grid * t->m->visual->cfg.grid;
    t->keep = patch_mask_keep(patches, r);
    size_t rows = (size_t)t->cfg.accum_freq * t->batch; /* both <= 2^16 (alloc_step_buffers) */
    t->kept = malloc(rows * t->keep * sizeof *t->kept);
    t->mask_scratch = malloc(2 * (size_t)patches * sizeof *t->mask_scratch);
    if (!t->kept || !t->mask_scratch) {
        clip_set_error("out of memory for the kept patches of %zu images", rows);
        return -1;
    }
    return 0;
}

/* this step's kept patches of the K micro-batches of b: image i of
 * micro-batch k sits at (k * ranks + rank) * b + i of the global batch
 * (loader.h) */
static void mask_generate(trainer *t, int K, int b)
{
    int patches = t->m->visual->cfg.grid * t->m->visual->cfg.grid;
    for (int k = 0; k < K; k++)
        for (int i = 0; i < b; i++) {
            int64_t pos = ((int64_t)k * t->ranks + t->rank) * b + i;
            patch_mask_indices(t->cfg.mask_seed, t->step, pos, patches, t->keep,
                               t->kept + ((size_t)k * b + i) * t->keep, t->mask_scratch);
        }
    t->kept_valid = 1;
}

int trainer_mask_keep(const trainer *t) { return t->keep; }
const int32_t *trainer_mask_kept(const trainer *t) { return t->kept_valid ? t->kept : NULL; }

trainer *trainer_create(clip_model *m, const train_config *cfg, int batch, int max_len)
{
    if (!m) return NULL; /* the error is the model's */
    trainer *t = calloc(1, sizeof *t);
    if (!t) {
        clip_set_error("out of memory for the trainer");
        clip_model_free(m);
        return NULL;
    }
    t->m = m;
    t->cfg = *cfg;
    if (t->cfg.accum_freq < 1) t->cfg.accum_freq = 1;
    t->cx = (compute_ctx){cfg->amp ? PRECISION_BF16 : PRECISION_FP32, NULL};
    t->batch = batch;
    t->max_len = max_len;
    t->ranks = 1;
    m->max_batch = batch; /* evaluation reuses the training activations */
    /* evaluation in fp32, and no quantised copies for training to make stale */
    if (clip_model_set_precision(m, PRECISION_FP32)) goto fail;
    for (int k = 0; k < N_TOWERS; k++)
        if (tower_init(&t->towers[k], m, &t->cfg, k, batch, max_len)) goto fail;
    if (alloc_step_buffers(t) || mask_init(t)) goto fail;
    return t;
fail:
    trainer_free(t);
    return NULL;
}

void trainer_free(trainer *t)
{
    if (!t) return;
    for (int k = 0; k < N_TOWERS; k++) tower_free(&t->towers[k]);
    clip_model_free(t->m);
    free_step_buffers(t);
    free(t->kept), free(t->mask_scratch);
    free(t);
}

void trainer_set_devices(trainer *t, const clip_device *image, const clip_device *text)
{
    t->towers[IMAGE_TOWER].dev = image;
    t->towers[TEXT_TOWER].dev = text;
}

void trainer_memory(const trainer *t, train_memory *mem)
{
    memset(mem, 0, sizeof *mem);
    for (int k = 0; k < N_TOWERS; k++) {
        const train_tower *tw = &t->towers[k];
        const param_table *acts = tw->kind == TOWER_VIT    ? &tw->model.vit->atable
                                  : tw->kind == TOWER_BERT ? &tw->model.bert->atable
                                                           : &tw->model.ctext->atable;
        const param_table *dacts = tw->kind == TOWER_VIT    ? &tw->model.vit->dtable
                                   : tw->kind == TOWER_BERT ? &tw->model.bert->dtable
                                                            : &tw->model.ctext->dtable;
        mem->activations += acts->total * sizeof(float);
        mem->backward += dacts->total * sizeof(float);
        /* the weights, and the gradients and AdamW m, v of the trainable ones */
        mem->weights += (tw->params->total + 3 * tw->grads->total) * sizeof(float);
    }
}

clip_model *trainer_model(trainer *t) { return t->m; }

void trainer_param_counts(const trainer *t, size_t *trainable, size_t *total)
{
    *trainable = *total = 1; /* logit_scale */
    for (int k = 0; k < N_TOWERS; k++) {
        const train_tower *tw = &t->towers[k];
        for (int i = 0; i < tw->grads->n; i++) *trainable += tw->grads->v[i].numel;
        for (int i = 0; i < tw->params->n; i++) *total += tw->params->v[i].numel;
    }
}
long trainer_step_count(const trainer *t) { return t->step; }

int trainer_set_comm(trainer *t, train_comm *comm)
{
    t->comm = comm && comm->size > 1 ? comm : NULL;
    t->rank = t->comm ? comm->rank : 0;
    t->ranks = t->comm ? comm->size : 1;
    if (alloc_step_buffers(t)) return -1;
    if (!t->comm) return 0;
    /* the same model and batch on every rank, before collectives of their sizes */
    size_t n = 0, trained = 0;
    for (int k = 0; k < N_TOWERS; k++)
        n += t->towers[k].params->total, trained += t->towers[k].grads->total;
    double mine[6] = {(double)n, -(double)n, t->rows, -t->rows, (double)trained, -(double)trained};
    double all[6];
    memcpy(all, mine, sizeof all);
    if (comm->allreduce_f64(comm, all, 6, COMM_MAX)) return -1;
    if (all[0] != -all[1] || all[2] != -all[3]) {
        clip_set_error("the ranks' models or batches differ (from %.0f to %.0f parameters, "
                       "%.0f to %.0f samples a step): start every rank with the same --init or "
                       "--arch, -b and --accum-freq",
                       -all[1], all[0], -all[3], all[2]);
        return -1;
    }
    if (all[4] != -all[5]) {
        clip_set_error("the ranks train different parts of the model (from %.0f to %.0f "
                       "trainable parameters): give every rank the same --lock-* options",
                       -all[5], all[4]);
        return -1;
    }
    /* rank 0's weights, moments and step everywhere: identical from the start */
    for (int k = 0; k < N_TOWERS; k++) {
        const train_tower *tw = &t->towers[k];
        size_t bytes = tw->params->total * sizeof(float), mb = tw->grads->total * sizeof(float);
        if (comm->bcast(comm, tw->params->data, bytes) || comm->bcast(comm, tw->adam_m, mb) ||
            comm->bcast(comm, tw->adam_v, mb))
            return -1;
    }
    float ls[3] = {t->m->logit_scale, t->ls_m, t->ls_v};
    long step = t->step;
    if (comm->bcast(comm, ls, sizeof ls) || comm->bcast(comm, &step, sizeof step)) return -1;
    t->m->logit_scale = ls[0], t->ls_m = ls[1], t->ls_v = ls[2];
    t->step = step;
    return 0;
}

uint64_t trainer_checksum(const trainer *t)
{
    uint64_t h = FNV1A64_INIT; /* over the bytes of every weight */
    for (int k = 0; k < N_TOWERS; k++)
        h = fnv1a64(h, t->towers[k].params->data, t->towers[k].params->total * sizeof(float));
    return fnv1a64(h, &t->m->logit_scale, sizeof(float));
}

int trainer_check_sync(const trainer *t)
{
    if (!t->comm) return 0;
    int N = t->ranks;
    uint64_t mine = trainer_checksum(t), *all = malloc((size_t)N * sizeof *all);
    if (!all) {
        clip_set_error("out of memory for %d checksums", N);
        return -1;
    }
    int rc = t->comm->allgather(t->comm, &mine, sizeof mine, all);
    for (int r = 1; !rc && r < N; r++)
        if (all[r] != all[0]) {
            clip_set_error("--check-sync: after step %ld the weights of rank %d differ from rank "
                           "0's (checksums %016llx and %016llx): the ranks have diverged (the "
                           "same options and data on every rank?)",
                           t->step, r, (unsigned long long)all[r], (unsigned long long)all[0]);
            rc = -1;
        }
    free(all);
    return rc;
}

/* ---- the stages of a step: encode -> gather -> loss -> backward -> reduce -> update */

/* what a step works on: this rank's K micro-batches of b samples */
typedef struct {
    const uint8_t *pixels; /* [K * b, R, R, 3] */
    const int32_t *ids;    /* [K * b, L] */
    int K, b, L;
    const float *const *features; /* [N_TOWERS]: a locked tower's given features, or NULL */
} step_batch;

static tower_input micro_input(const trainer *t, const step_batch *s, int tower, int k)
{
    size_t R = t->m->visual->cfg.resolution;
    if (tower == IMAGE_TOWER)
        return (tower_input){s->pixels + (size_t)k * s->b * R * R * 3,
                             NULL,
                             s->b,
                             0,
                             t->keep,
                             t->kept ? t->kept + (size_t)k * s->b * t->keep : NULL};
    return (tower_input){NULL, t->ids + (size_t)k * s->b * t->max_len, s->b, t->used[k], 0, NULL};
}

static float *tower_features(trainer *t, int tower, int k, int b)
{
    return (tower == IMAGE_TOWER ? t->img : t->txt) + (size_t)k * b * t->m->embed_dim;
}

/* encode: the features of the K micro-batches, micro-batch after
 * micro-batch; each tower keeps the activations of the last one only */
static int stage_encode(trainer *t, const step_batch *s, train_stats *st)
{
    if (t->kept) mask_generate(t, s->K, s->b);
    for (int k = 0; k < s->K; k++) {
        const int32_t *src = s->ids + (size_t)k * s->b * s->L;
        int32_t *dst = t->ids + (size_t)k * s->b * t->max_len;
        t->used[k] = trim_padding(dst, src, s->b, s->L);
        if (t->used[k] == s->L) memcpy(dst, src, (size_t)s->b * s->L * sizeof *src);
        for (int w = 0; w < N_TOWERS; w++) {
            size_t D = t->m->embed_dim;
            if (s->features && s->features[w]) { /* a locked tower's, computed before */
                memcpy(tower_features(t, w, k, s->b), s->features[w] + (size_t)k * s->b * D,
                       (size_t)s->b * D * sizeof(float));
                continue;
            }
            tower_input in = micro_input(t, s, w, k);
            double t0 = now_seconds();
            if (tower_forward(t, &t->towers[w], &in, tower_features(t, w, k, s->b))) return -1;
            *(w == IMAGE_TOWER ? &st->sec_image : &st->sec_text) += now_seconds() - t0;
        }
    }
    return 0;
}

/* gather: every rank's features, rank after rank */
static int stage_gather(trainer *t, train_stats *st)
{
    if (!t->comm) return 0;
    size_t bytes = (size_t)t->rows * t->m->embed_dim * sizeof(float);
    double t0 = now_seconds();
    int rc = t->comm->allgather(t->comm, t->img, bytes, t->all_img) ||
                     t->comm->allgather(t->comm, t->txt, bytes, t->all_txt)
                 ? -1
                 : 0;
    st->sec_comm += now_seconds() - t0;
    return rc;
}

/* loss: this rank's rows against all the columns */
static void stage_loss(trainer *t, contrastive_part *part)
{
    contrastive_loss_rows(t->all_img, t->all_txt, t->global, t->m->embed_dim, t->rank * t->rows,
                          t->rows, t->m->logit_scale, t->dall_img, t->dall_txt, t->scratch, part);
}

/* backward: the gradients of the gathered features summed back to their
 * owners (reduce-scatter), then through each tower: the last micro-batch
 * from the kept activations, the others recomputed. A tower's gradient
 * all-reduce starts as soon as its backward is done (the text tower's
 * backward overlaps the image tower's reduction). */
static int stage_backward(trainer *t, const step_batch *s, train_stats *st)
{
    size_t n = (size_t)t->rows * t->m->embed_dim;
    float *dfeat[N_TOWERS] = {t->dall_img, t->dall_txt};
    if (t->comm) {
        double t0 = now_seconds();
        if (t->comm->reduce_scatter(t->comm, t->dall_img, n, t->dimg) ||
            t->comm->reduce_scatter(t->comm, t->dall_txt, n, t->dtxt))
            return -1;
        st->sec_comm += now_seconds() - t0;
        dfeat[IMAGE_TOWER] = t->dimg, dfeat[TEXT_TOWER] = t->dtxt;
    }
    size_t D = t->m->embed_dim;
    for (int w = 0; w < N_TOWERS; w++) {
        train_tower *tw = &t->towers[w];
        if (tw->frozen) continue; /* locked whole: no backward, nothing to reduce */
        memset(tw->grads->data, 0, tw->grads->total * sizeof(float));
        double t0 = now_seconds();
        for (int k = s->K - 1; k >= 0; k--) {
            tower_input in = micro_input(t, s, w, k);
            if ((k != s->K - 1 && tower_forward(t, tw, &in, tower_features(t, w, k, s->b))) ||
                tower_backward(t, tw, &in, dfeat[w] + (size_t)k * s->b * D))
                goto fail;
        }
        *(w == IMAGE_TOWER ? &st->sec_image : &st->sec_text) += now_seconds() - t0;
        if (t->comm && t->comm->allreduce_start(t->comm, tw->grads->data, tw->grads->total))
            goto fail;
    }
    return 0;
fail:
    if (t->comm) {
        /* no reduction left running over the gradients; the error is the first one */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", clip_error());
        t->comm->allreduce_wait(t->comm);
        clip_set_error("%s", msg);
    }
    return -1;
}

/* reduce: the gradient all-reduce finished, and the loss parts, hits and
 * logit_scale gradient summed over the ranks */
static int stage_reduce(trainer *t, contrastive_part *part, train_stats *st)
{
    double sums[4] = {part->loss, (double)part->hits_i2t, (double)part->hits_t2i,
                      part->dlogit_scale};
    if (t->comm) {
        double t0 = now_seconds();
        if (t->comm->allreduce_wait(t->comm) || t->comm->allreduce_f64(t->comm, sums, 4, COMM_SUM))
            return -1;
        st->sec_comm += now_seconds() - t0;
    }
    t->ls_grad = (float)sums[3];
    st->loss = sums[0];
    st->acc_i2t = sums[1] / t->global;
    st->acc_t2i = sums[2] / t->global;
    st->logit_scale = t->m->logit_scale;
    st->global_batch = t->global;
    return 0;
}

/* B = K micro-batches of at most `batch`; with several ranks exactly the
 * allocated layout (the gathered blocks are of one size) */
static int check_batch(const trainer *t, int B, int L)
{
    int K = t->cfg.accum_freq;
    if (B < K || B % K || B / K > t->batch || L > t->max_len || L < 1) {
        clip_set_error(
            "batch %d x %d tokens does not fit the trainer's %d micro-batch%s of %d x %d", B, L, K,
            K > 1 ? "es" : "", t->batch, t->max_len);
        return -1;
    }
    if (t->comm && B != t->rows) {
        clip_set_error("batch %d: with %d ranks every step takes the full %d", B, t->ranks,
                       t->rows);
        return -1;
    }
    return 0;
}

int trainer_compute_grads_batch(trainer *t, const train_batch *b, train_stats *st)
{
    train_stats s;
    memset(&s, 0, sizeof s);
    int B = b->B, L = b->L;
    if (check_batch(t, B, L)) return -1;
    for (int w = 0; w < N_TOWERS; w++)
        if (b->features[w] && !t->towers[w].frozen) {
            clip_set_error("precomputed %s features for a tower that trains: they stand only for "
                           "a tower locked whole",
                           w == IMAGE_TOWER ? "image" : "text");
            return -1;
        }
    int rows = t->rows, global = t->global;
    /* a short batch (one process only): the same stages over B samples */
    t->rows = B, t->global = B * t->ranks;
    step_batch sb = {b->pixels, b->ids, t->cfg.accum_freq, B / t->cfg.accum_freq, L, b->features};
    contrastive_part part;
    int rc = -1;
    if (!stage_encode(t, &sb, &s) && !stage_gather(t, &s)) {
        double t0 = now_seconds();
        stage_loss(t, &part);
        s.sec_loss = now_seconds() - t0;
        rc = stage_backward(t, &sb, &s) || stage_reduce(t, &part, &s) ? -1 : 0;
    }
    t->rows = rows, t->global = global;
    if (st) *st = s;
    return rc;
}

const float *trainer_grad(const trainer *t, const char *name, size_t *n)
{
    if (!strcmp(name, "logit_scale")) {
        *n = 1;
        return &t->ls_grad;
    }
    for (int k = 0; k < N_TOWERS; k++) {
        const param_spec *s = pt_find(t->towers[k].grads, name);
        if (s) {
            *n = s->numel;
            return t->towers[k].grads->data + s->offset;
        }
        if (pt_find(t->towers[k].params, name)) {
            clip_set_error("%s is locked (--lock-%s): it has no gradient", name,
                           k == IMAGE_TOWER ? "image" : "text");
            return NULL;
        }
    }
    clip_set_error("no parameter %s", name);
    return NULL;
}

/* update: gradient norm, clipping, AdamW, logit_scale clamped. 1 if the
 * loss or a gradient is not finite (nothing changed) */
static int stage_update(trainer *t, train_stats *s)
{
    double sq = (double)t->ls_grad * t->ls_grad;
    for (int k = 0; k < N_TOWERS; k++)
        sq += sum_squares(t->towers[k].grads->data, t->towers[k].grads->total);
    s->grad_norm = sqrt(sq);
    s->lr = lr_at_step(t->cfg.schedule, t->cfg.lr, t->cfg.min_lr_ratio, t->cfg.warmup,
                       t->cfg.total_steps, t->step);
    if (!isfinite(s->loss) || !isfinite(s->grad_norm)) return 1;
    if (t->cfg.grad_clip > 0) {
        double coef = t->cfg.grad_clip / (s->grad_norm + 1e-6);
        if (coef < 1.0) {
            for (int k = 0; k < N_TOWERS; k++)
                scale_floats(t->towers[k].grads->data, t->towers[k].grads->total, (float)coef);
            t->ls_grad *= (float)coef;
        }
    }
    double t0 = now_seconds();
    t->step++;
    float lr = (float)s->lr, wd = (float)t->cfg.weight_decay;
    for (int k = 0; k < N_TOWERS; k++) {
        const train_tower *tw = &t->towers[k];
        const param_table *p = tw->params, *g = tw->grads;
        for (int i = 0; i < g->n; i++) { /* the trainable tensors */
            const param_spec *gs = &g->v[i], *ps = &p->v[tw->param_of[i]];
            size_t o = gs->offset;
            adamw_update(p->data + ps->offset, g->data + o, tw->adam_m + o, tw->adam_v + o,
                         ps->numel, lr, ps->ndim >= 2 || t->cfg.wd_all ? wd : 0.0f, &t->cfg.adam,
                         t->step);
        }
    }
    adamw_update(&t->m->logit_scale, &t->ls_grad, &t->ls_m, &t->ls_v, 1, lr,
                 t->cfg.wd_all ? wd : 0.0f, &t->cfg.adam, t->step);
    t->m->logit_scale = fminf(fmaxf(t->m->logit_scale, 0.0f), logf(100.0f));
    s->logit_scale = t->m->logit_scale;
    s->sec_optim = now_seconds() - t0;
    return 0;
}

int trainer_step_batch(trainer *t, const train_batch *b, train_stats *st)
{
    train_stats s;
    if (trainer_compute_grads_batch(t, b, &s)) return -1;
    int rc = stage_update(t, &s);
    if (st) *st = s;
    return rc;
}

/* trainer_compute_grads (update 0) and trainer_step (1): the batch of pixels
 * and ids, every tower running */
static int plain_batch(trainer *t, int update, const uint8_t *pixels, const int32_t *ids, int B,
                       int L, train_stats *st)
{
    train_batch b = {pixels, ids, B, L, {NULL, NULL}};
    return update ? trainer_step_batch(t, &b, st) : trainer_compute_grads_batch(t, &b, st);
}

int trainer_compute_grads(trainer *t, const uint8_t *pixels, const int32_t *ids, int B, int L,
                          train_stats *st)
{
    return plain_batch(t, 0, pixels, ids, B, L, st);
}

int trainer_step(trainer *t, const uint8_t *pixels, const int32_t *ids, int B, int L,
                 train_stats *st)
{
    return plain_batch(t, 1, pixels, ids, B, L, st);
}

int trainer_tower_locked(const trainer *t, int tower) { return t->towers[tower].frozen; }
int trainer_amp(const trainer *t) { return t->cfg.amp; }

int trainer_encode(trainer *t, int tower, const uint8_t *pixels, const int32_t *ids, int B, int L,
                   float *out)
{
    if (tower == TEXT_TOWER && L > t->max_len) {
        clip_set_error("texts of %d tokens, more than the trainer's %d", L, t->max_len);
        return -1;
    }
    size_t R = t->m->visual->cfg.resolution, D = t->m->embed_dim;
    for (int b0 = 0; b0 < B; b0 += t->batch) {
        int n = B - b0 < t->batch ? B - b0 : t->batch;
        tower_input in = {NULL, NULL, n, 0, 0, NULL}; /* all patches */
        if (tower == IMAGE_TOWER) {
            in.pixels = pixels + (size_t)b0 * R * R * 3;
        } else { /* trimmed as the steps trim them */
            const int32_t *src = ids + (size_t)b0 * L;
            in.L = trim_padding(t->ids, src, n, L);
            if (in.L == L) memcpy(t->ids, src, (size_t)n * L * sizeof *src);
            in.ids = t->ids;
        }
        if (tower_forward(t, &t->towers[tower], &in, out + (size_t)b0 * D)) return -1;
    }
    return 0;
}

uint64_t trainer_tower_checksum(const trainer *t, int tower)
{
    const param_table *p = t->towers[tower].params;
    return fnv1a64(FNV1A64_INIT, p->data, p->total * sizeof(float));
}

/* ---- saving */

/* The "clip_config" record of saved checkpoints (.safetensors and .pth): the
 * architecture, with what tensor shapes do not tell, the head counts of both
 * towers and BERT's eps, so that a reload never guesses width / 64. The
 * English tower is "clip_text" (as clip_model_load reads it), BERT "text". */
static char *config_json(const clip_model *m)
{
    const vit_config *v = &m->visual->cfg;
    const bert_config *b = m->bert ? &m->bert->cfg : NULL;
    const clip_text_config *c = m->ctext ? &m->ctext->cfg : NULL;
    json_t *text = m->text == CLIP_TEXT_CLIP
                       ? json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "width", c->width, "layers",
                                   c->layers, "heads", c->heads, "mlp", c->mlp, "context",
                                   c->context, "vocab", c->vocab, "out_dim", c->out_dim)
                       : json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f}", "hidden", b->hidden,
                                   "layers", b->layers, "heads", b->heads, "intermediate",
                                   b->intermediate, "max_pos", b->max_pos, "type_vocab",
                                   b->type_vocab, "vocab", b->vocab, "eps", (double)b->eps);
    json_t *j = json_pack("{s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i},s:o,s:i}", "image", "width", v->width,
                          "layers", v->layers, "heads", v->heads, "mlp", v->mlp, "patch", v->patch,
                          "resolution", v->resolution, "out_dim", v->out_dim,
                          m->text == CLIP_TEXT_CLIP ? "clip_text" : "text", text, "embed_dim",
                          m->embed_dim);
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
    int english = json_object_get(j, "clip_text") != NULL;
    int rc = json_unpack_ex(j, &err, 0, "{s:{s:i,s:i,s?i,s:i,s:i,s:i,s:i}}", "image", "width",
                            &a->vit.width, "layers", &a->vit.layers, "heads", &image_heads, "mlp",
                            &mlp, "patch", &a->vit.patch, "resolution", &a->vit.resolution,
                            "out_dim", &a->vit.out_dim);
    if (!rc && english) /* into the text_* fields, as train_arch_parse puts them */
        rc = json_unpack_ex(j, &err, 0, "{s:{s:i,s:i,s:i,s:i,s:i,s:i}}", "clip_text", "width",
                            &a->bert.hidden, "layers", &a->bert.layers, "heads", &a->bert.heads,
                            "mlp", &a->bert.intermediate, "context", &a->bert.max_pos, "vocab",
                            &a->bert.vocab);
    else if (!rc)
        rc =
            json_unpack_ex(j, &err, 0, "{s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:F}}", "text", "hidden",
                           &a->bert.hidden, "layers", &a->bert.layers, "heads", &a->bert.heads,
                           "intermediate", &a->bert.intermediate, "max_pos", &a->bert.max_pos,
                           "type_vocab", &a->bert.type_vocab, "vocab", &a->bert.vocab, "eps", &eps);
    json_decref(j);
    if (rc) {
        clip_set_error("clip_config metadata: %s", err.text);
        return -1;
    }
    int inter = a->bert.intermediate, types = a->bert.type_vocab;
    if (inter <= 0) {
        clip_set_error("clip_config metadata: the text MLP width %d is not positive", inter);
        return -1;
    }
    if (image_heads < 0 || (image_heads && a->vit.width % image_heads)) {
        clip_set_error("clip_config metadata: image heads %d do not divide the width %d",
                       image_heads, a->vit.width);
        return -1;
    }
    a->vit.heads = image_heads;
    a->text = english ? CLIP_TEXT_CLIP : CLIP_TEXT_BERT;
    if (arch_finish(a)) return -1;
    a->vit.mlp = mlp;
    a->bert.intermediate = a->ctext.mlp = inter;
    a->bert.type_vocab = types;
    a->bert.eps = (float)eps;
    return 0;
}

typedef struct {
    ckpt_out_tensor *v;
    size_t n, cap;
    char **names; /* owned */
    int failed;   /* out of memory: the list is incomplete (tl_add set the error) */
} tensor_list;

static void tl_add(tensor_list *l, const char *prefix, const char *name, clip_dtype dt, int ndim,
                   const int64_t *shape, const void *data)
{
    if (l->failed) return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        ckpt_out_tensor *v = realloc(l->v, cap * sizeof *v);
        if (v) l->v = v;
        char **names = v ? realloc(l->names, cap * sizeof *names) : NULL;
        if (names) l->names = names;
        if (!v || !names) goto oom;
        l->cap = cap;
    }
    size_t len = strlen(prefix) + strlen(name) + 1;
    char *full = malloc(len);
    if (!full) goto oom;
    snprintf(full, len, "%s%s", prefix, name);
    ckpt_out_tensor *o = &l->v[l->n];
    memset(o, 0, sizeof *o);
    o->name = l->names[l->n++] = full;
    o->dtype = dt;
    o->ndim = ndim;
    for (int i = 0; i < ndim; i++) o->shape[i] = shape[i];
    o->data = data;
    return;
oom:
    clip_set_error("out of memory listing the tensors to save");
    l->failed = 1;
}

static void tl_add_table(tensor_list *l, const char *prefix, const param_table *t,
                         const float *data)
{
    for (int i = 0; i < t->n; i++)
        tl_add(l, prefix, t->v[i].name, DT_F32, t->v[i].ndim, t->v[i].shape, data + t->v[i].offset);
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
 * reference model built from the same init expects. *pos: the buffer's data
 * (free it after writing), NULL without one. 0, or -1 with an error. */
static int model_tensors(tensor_list *l, const clip_model *m, int64_t **pos)
{
    *pos = NULL;
    tl_add_table(l, "", &m->visual->ptable, m->visual->ptable.data);
    const param_table *text = m->text == CLIP_TEXT_CLIP ? &m->ctext->ptable : &m->bert->ptable;
    tl_add_table(l, "", text, text->data);
    tl_add(l, "", "logit_scale", DT_F32, 0, NULL, &m->logit_scale);
    if (m->text == CLIP_TEXT_CLIP || !m->bert->cfg.position_ids) return l->failed ? -1 : 0;
    int P = m->bert->cfg.max_pos;
    if (!(*pos = malloc(P * sizeof **pos))) {
        clip_set_error("out of memory for position_ids");
        return -1;
    }
    for (int i = 0; i < P; i++) (*pos)[i] = i;
    tl_add(l, "", "transformer.embeddings.position_ids", DT_I64, 2, (int64_t[]){1, P}, *pos);
    return l->failed ? -1 : 0;
}

static char *config_or_error(const clip_model *m)
{
    char *cfg = config_json(m);
    if (!cfg) clip_set_error("out of memory for the clip_config record");
    return cfg;
}

int trainer_save_weights(const trainer *t, const char *path)
{
    tensor_list l = {0};
    int64_t *pos;
    char *cfg = NULL;
    int rc = -1;
    if (!model_tensors(&l, t->m, &pos) && (cfg = config_or_error(t->m))) {
        const char *meta[] = {"format", "pt", "clip_config", cfg, NULL};
        rc = ends_with(path, ".safetensors") ? ckpt_save_safetensors(path, l.v, l.n, meta)
                                             : ckpt_save_pth(path, l.v, l.n, meta + 2);
    }
    free(cfg);
    free(pos);
    tl_free(&l);
    return rc;
}

/* The state file's "locks" record: what each tower has frozen, the
 * options that gave it. A state without one is of a run without locks. */
static void lock_record(const trainer *t, char *buf, size_t n)
{
    const train_config *c = &t->cfg;
    char img[64] = "trained", txt[64] = "trained";
    if (c->lock_image)
        snprintf(img, sizeof img, "locked, %d groups unlocked", c->lock_image_unlocked_groups);
    if (c->lock_text)
        snprintf(txt, sizeof txt, "locked, %d layers unlocked", c->lock_text_unlocked_layers);
    snprintf(buf, n, "image %s; text %s", img, txt);
}

int trainer_save_state(const trainer *t, const char *path, const char *extra_json)
{
    tensor_list l = {0};
    int64_t *pos;
    char *cfg = NULL;
    int rc = model_tensors(&l, t->m, &pos);
    for (int k = 0; k < N_TOWERS; k++) { /* the moments of the trainable tensors */
        const train_tower *tw = &t->towers[k];
        tl_add_table(&l, "adam_m.", tw->grads, tw->adam_m);
        tl_add_table(&l, "adam_v.", tw->grads, tw->adam_v);
    }
    tl_add(&l, "adam_m.", "logit_scale", DT_F32, 0, NULL, &t->ls_m);
    tl_add(&l, "adam_v.", "logit_scale", DT_F32, 0, NULL, &t->ls_v);
    if (!rc && !l.failed && (cfg = config_or_error(t->m))) {
        char step[32], locks[128];
        snprintf(step, sizeof step, "%ld", t->step);
        lock_record(t, locks, sizeof locks);
        const char *meta[] = {"format",      "clip-train state",
                              "clip_config", cfg,
                              "step",        step,
                              "extra",       extra_json ? extra_json : "{}",
                              "locks",       locks,
                              NULL};
        rc = ckpt_save_safetensors(path, l.v, l.n, meta);
    } else {
        rc = -1;
    }
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
    if (!(t = trainer_create(train_model_create(&a, 0), cfg, batch, max_len))) goto fail;
    const char *saved_locks = ckpt_metadata(c, "locks");
    char locks[128];
    lock_record(t, locks, sizeof locks);
    if (strcmp(saved_locks ? saved_locks : "image trained; text trained", locks)) {
        clip_set_error("%s: saved with %s, this run has %s: resume with the --lock-* options "
                       "of the run that saved it",
                       path, saved_locks ? saved_locks : "image trained; text trained", locks);
        goto fail;
    }
    t->step = atol(step);
    for (int k = 0; k < N_TOWERS; k++) { /* moments of the trainable tensors only */
        const train_tower *tw = &t->towers[k];
        if (read_table(c, "", tw->params, tw->params->data) ||
            read_table(c, "adam_m.", tw->grads, tw->adam_m) ||
            read_table(c, "adam_v.", tw->grads, tw->adam_v))
            goto fail;
    }
    if (ckpt_read_f32(c, "logit_scale", 0, NULL, &t->m->logit_scale) ||
        ckpt_read_f32(c, "adam_m.logit_scale", 0, NULL, &t->ls_m) ||
        ckpt_read_f32(c, "adam_v.logit_scale", 0, NULL, &t->ls_v))
        goto fail;
    if (extra_json && !(*extra_json = strdup(extra))) {
        clip_set_error("out of memory");
        goto fail;
    }
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
