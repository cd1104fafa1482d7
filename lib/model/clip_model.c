#include "model/clip_model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "kernels/ops.h"
#include "core/util.h"

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The record clip-train writes into its checkpoints (.safetensors and .pth
 * alike: the "clip_config" metadata) of what tensor shapes do not tell: the
 * head counts, BERT's eps. *rec: the parsed JSON (json_decref it), NULL when
 * the checkpoint has none (a foreign one: shapes, config.json and width / 64
 * decide). -1 with an error naming the file when the record is not JSON. */
static int read_record(const ckpt *c, const char *path, json_t **rec)
{
    *rec = NULL;
    const char *meta = ckpt_metadata(c, "clip_config");
    if (!meta) return 0;
    json_error_t err;
    json_t *j = json_loads(meta, 0, &err);
    if (!json_is_object(j)) {
        clip_set_error("%s: the clip_config metadata is not a JSON object (%s): the file was "
                       "altered or damaged",
                       path, j ? "another JSON value" : err.text);
        json_decref(j);
        return -1;
    }
    *rec = j;
    return 0;
}

int clip_model_warn(clip_model *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *line = NULL;
    int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    char **v = n >= 0 ? realloc(m->warnings, (m->n_warnings + 1) * sizeof *v) : NULL;
    if (!v) {
        clip_set_error("out of memory for a warning");
        if (n >= 0) free(line);
        return -1;
    }
    m->warnings = v;
    m->warnings[m->n_warnings++] = line;
    return 0;
}

/* The head count recorded for a tower ("image", "text" or "clip_text") of the given
 * width: 0 when not recorded; -1 with an error naming the file unless it is
 * a positive integer that divides the width. */
static int recorded_heads(json_t *rec, const char *tower, int width, const char *path, int *heads)
{
    *heads = 0;
    json_t *h = json_object_get(json_object_get(rec, tower), "heads");
    if (!h) return 0;
    if (!json_is_integer(h) || json_integer_value(h) <= 0 || json_integer_value(h) > width ||
        width % json_integer_value(h)) {
        char *s = json_dumps(h, JSON_ENCODE_ANY);
        clip_set_error("%s: the clip_config metadata records %s heads = %s, not a positive "
                       "divisor of the %s width %d: the file was altered or damaged (without "
                       "the record, heads come from --text-model's config.json or width / 64)",
                       path, tower, s ? s : "?", tower, width);
        free(s);
        return -1;
    }
    *heads = (int)json_integer_value(h);
    return 0;
}

/* text heads and eps: the record when there is one, over config.json
 * (json_path, NULL when not read) over the shapes' guess */
static int text_config_from_record(clip_model *m, json_t *rec, const char *path,
                                   const char *json_path, bert_config *cfg)
{
    int heads;
    if (recorded_heads(rec, "text", cfg->hidden, path, &heads)) return -1;
    if (heads) {
        if (json_path && heads != cfg->heads &&
            clip_model_warn(m, "%s says %d attention heads, %s records %d: using %d", json_path,
                            cfg->heads, path, heads, heads))
            return -1;
        cfg->heads = heads;
    }
    json_t *eps = json_object_get(json_object_get(rec, "text"), "eps");
    if (eps) {
        if (!json_is_number(eps) || !(json_number_value(eps) > 0 && json_number_value(eps) < 1)) {
            clip_set_error("%s: the clip_config metadata records a text eps that is not a number "
                           "in (0, 1): the file was altered or damaged",
                           path);
            return -1;
        }
        cfg->eps = (float)json_number_value(eps);
    }
    return 0;
}

static int load_bert(clip_model *m, const ckpt *c, const char *ckpt_path, json_t *rec,
                     const char *bert_dir, int head_in_ckpt)
{
    ckpt *hf = NULL;
    const ckpt *src = c;
    const char *prefix = "transformer.";
    char path[4096];
    int rc = -1;
    if (!ckpt_find(c, "transformer.embeddings.word_embeddings.weight")) {
        snprintf(path, sizeof path, "%s/pytorch_model.bin", bert_dir);
        if (!file_exists(path)) snprintf(path, sizeof path, "%s/model.safetensors", bert_dir);
        if (!file_exists(path)) {
            clip_set_error("%s: no pytorch_model.bin or model.safetensors", bert_dir);
            return -1;
        }
        if (!(hf = ckpt_load(path))) return -1;
        src = hf;
        prefix = ckpt_find(hf, "bert.embeddings.word_embeddings.weight") ? "bert." : "";
    }
    bert_config cfg;
    if (bert_config_from_ckpt(src, prefix, &cfg)) goto out;
    const char *json_path = NULL;
    if (bert_dir) {
        snprintf(path, sizeof path, "%s/config.json", bert_dir);
        if (file_exists(path)) {
            bert_config tensors = cfg;
            if (bert_config_from_json(path, &cfg) || bert_config_matches(&cfg, &tensors, path))
                goto out;
            json_path = path;
        }
    }
    /* the record describes the BERT of this checkpoint, not one beside it */
    if (src == c && text_config_from_record(m, rec, ckpt_path, json_path, &cfg)) goto out;
    const ckpt_tensor *tp = head_in_ckpt ? ckpt_find(c, "text_projection") : NULL;
    cfg.out_dim = tp && tp->ndim == 2 ? (int)tp->shape[1]
                  : m->visual         ? m->visual->cfg.out_dim
                                      : 512;
    if (!(m->bert = bert_create(&cfg)) || bert_load_body(m->bert, src, prefix))
        goto out; /* the message names the file */
    bert_params *p = &m->bert->params;
    if (head_in_ckpt && ckpt_find(c, "ln_final.weight")) {
        if (ckpt_read_f32(c, "ln_final.weight", 1, (int64_t[]){cfg.hidden}, p->ln_final_w) ||
            ckpt_read_f32(c, "ln_final.bias", 1, (int64_t[]){cfg.hidden}, p->ln_final_b))
            goto out;
    } else {
        for (int i = 0; i < cfg.hidden; i++) p->ln_final_w[i] = 1.0f, p->ln_final_b[i] = 0.0f;
    }
    if (tp) {
        if (ckpt_read_f32(c, "text_projection", 2, (int64_t[]){cfg.hidden, cfg.out_dim},
                          p->text_proj))
            goto out;
    } else {
        if (clip_model_warn(m,
                            "no text_projection for the BERT tower: initialising [%d, %d] from "
                            "N(0, %d^-0.5)",
                            cfg.hidden, cfg.out_dim, cfg.hidden))
            goto out;
        fill_normal(p->text_proj, (size_t)cfg.hidden * cfg.out_dim, 1.0f / sqrtf(cfg.hidden), 42);
    }
    rc = 0;
out:
    if (hf) ckpt_free(hf);
    return rc;
}

clip_model *clip_model_load(const char *ckpt_path, const char *bert_dir)
{
    ckpt *c = ckpt_load(ckpt_path);
    if (!c) return NULL;
    clip_model *m = clip_model_from_ckpt(c, ckpt_path, bert_dir);
    ckpt_free(c);
    return m;
}

clip_model *clip_model_from_ckpt(const ckpt *c, const char *ckpt_path, const char *bert_dir)
{
    clip_model *m = calloc(1, sizeof *m);
    json_t *rec = NULL;
    if (!m) {
        clip_set_error("%s: out of memory for the model", ckpt_path);
        return NULL;
    }
    m->max_batch = 32;
    m->logit_scale = logf(1.0f / 0.07f);
    m->compute = (compute_ctx){PRECISION_FP32, NULL};
    if (read_record(c, ckpt_path, &rec)) goto fail;

    if (ckpt_find(c, "visual.conv1.weight")) {
        vit_config vc;
        const ckpt_tensor *conv = ckpt_find(c, "visual.conv1.weight");
        int heads;
        if (recorded_heads(rec, "image", conv->ndim ? (int)conv->shape[0] : 0, ckpt_path, &heads) ||
            vit_config_from_ckpt(c, heads, &vc) || !(m->visual = vit_create(&vc)) ||
            vit_load(m->visual, c))
            goto fail;
    }
    int has_ctext = ckpt_find(c, "transformer.resblocks.0.attn.in_proj_weight") &&
                    ckpt_find(c, "token_embedding.weight");
    if (has_ctext) {
        clip_text_config tc;
        const ckpt_tensor *tok = ckpt_find(c, "token_embedding.weight");
        int heads;
        if (recorded_heads(rec, "clip_text", tok->ndim == 2 ? (int)tok->shape[1] : 0, ckpt_path,
                           &heads) ||
            clip_text_config_from_ckpt(c, heads, &tc) || !(m->ctext = clip_text_create(&tc)) ||
            clip_text_load(m->ctext, c))
            goto fail;
    }
    /* the top-level ln_final/text_projection belong to whichever text tower
     * sits under `transformer.` */
    if (ckpt_find(c, "transformer.embeddings.word_embeddings.weight") || bert_dir)
        if (load_bert(m, c, ckpt_path, rec, bert_dir, !has_ctext)) goto fail;

    const ckpt_tensor *ls = ckpt_find(c, "logit_scale");
    if (ls) {
        if (ls->numel != 1) {
            clip_set_error("logit_scale: expected one element, found %zu", ls->numel);
            goto fail;
        }
        if (ckpt_read_f32(c, "logit_scale", ls->ndim, ls->shape, &m->logit_scale)) goto fail;
    }
    m->text = m->bert ? CLIP_TEXT_BERT : m->ctext ? CLIP_TEXT_CLIP : CLIP_TEXT_NONE;
    m->embed_dim = m->visual  ? m->visual->cfg.out_dim
                   : m->bert  ? m->bert->cfg.out_dim
                   : m->ctext ? m->ctext->cfg.out_dim
                              : 0;
    if (!m->embed_dim) {
        clip_set_error("no image or text tower (no visual.* or transformer.* tensors)");
        goto fail;
    }
    if ((m->bert && m->bert->cfg.out_dim != m->embed_dim) ||
        (m->ctext && m->ctext->cfg.out_dim != m->embed_dim)) {
        clip_set_error("text_projection: output dimension differs from visual.proj's %d",
                       m->embed_dim);
        goto fail;
    }
    json_decref(rec);
    return m;
fail:;
    json_decref(rec);
    /* name the file unless the message already does */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", clip_error());
    if (!strstr(msg, ckpt_path) && !(bert_dir && strstr(msg, bert_dir)))
        clip_set_error("%s: %s", ckpt_path, msg);
    clip_model_free(m);
    return NULL;
}

void clip_model_free(clip_model *m)
{
    if (!m) return;
    vit_free(m->visual);
    bert_free(m->bert);
    clip_text_free(m->ctext);
    for (int i = 0; i < m->n_warnings; i++) free(m->warnings[i]);
    free(m->warnings);
    free(m);
}

int clip_model_set_precision(clip_model *m, clip_precision p)
{
    if (p == PRECISION_INT8) {
        /* all towers or none: a failure frees what the others made */
        if ((m->visual && vit_quantise(m->visual)) || (m->bert && bert_quantise(m->bert)) ||
            (m->ctext && clip_text_quantise(m->ctext))) {
            if (m->compute.precision != PRECISION_INT8) {
                if (m->visual) vit_free_quantised(m->visual);
                if (m->bert) bert_free_quantised(m->bert);
                if (m->ctext) clip_text_free_quantised(m->ctext);
            }
            return -1;
        }
    } else {
        if (m->visual) vit_free_quantised(m->visual);
        if (m->bert) bert_free_quantised(m->bert);
        if (m->ctext) clip_text_free_quantised(m->ctext);
    }
    m->compute.precision = p;
    return 0;
}

int clip_image_resolution(const clip_model *m) { return m->visual ? m->visual->cfg.resolution : 0; }

void clip_text_limits(const clip_model *m, int *vocab, int *max_len)
{
    *vocab = *max_len = 0;
    if (m->text == CLIP_TEXT_BERT)
        *vocab = m->bert->cfg.vocab, *max_len = m->bert->cfg.max_pos;
    else if (m->text == CLIP_TEXT_CLIP)
        *vocab = m->ctext->cfg.vocab, *max_len = m->ctext->cfg.context;
}

int clip_encode_images(clip_model *m, const uint8_t *pixels, int B, float *out)
{
    if (!m->visual) {
        clip_set_error("the model has no image tower");
        return -1;
    }
    size_t img = (size_t)m->visual->cfg.resolution * m->visual->cfg.resolution * 3;
    for (int b = 0; b < B; b += m->max_batch) {
        int n = B - b < m->max_batch ? B - b : m->max_batch;
        float *o = out + (size_t)b * m->embed_dim;
        if (vit_forward(m->visual, &m->compute, pixels + b * img, n, o)) return -1;
        l2_normalize(o, NULL, o, n, m->embed_dim);
    }
    return 0;
}

int clip_encode_texts(clip_model *m, const int32_t *ids, int B, int L, float *out)
{
    if (m->text == CLIP_TEXT_NONE) {
        clip_set_error("the model has no text tower");
        return -1;
    }
    int32_t *trimmed = NULL;
    for (int b = 0; b < B; b += m->max_batch) {
        int n = B - b < m->max_batch ? B - b : m->max_batch;
        float *o = out + (size_t)b * m->embed_dim;
        const int32_t *x = ids + (size_t)b * L;
        /* captions are mostly padding: encode up to the chunk's longest */
        if (!trimmed && !(trimmed = malloc((size_t)m->max_batch * L * sizeof *trimmed))) {
            clip_set_error("out of memory for %d texts of %d tokens", m->max_batch, L);
            return -1;
        }
        int used = trim_padding(trimmed, x, n, L);
        if (used < L) x = trimmed;
        int rc = m->text == CLIP_TEXT_BERT
                     ? bert_forward(m->bert, &m->compute, x, n, used, o)
                     : clip_text_forward(m->ctext, &m->compute, x, n, used, o);
        if (rc) {
            free(trimmed);
            return -1;
        }
        l2_normalize(o, NULL, o, n, m->embed_dim);
    }
    free(trimmed);
    return 0;
}
