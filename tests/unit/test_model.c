/* The C towers against the PyTorch reference (tests/ref/model_ref.py, fixtures
 * in tests/fixtures/model): per embedding cosine >= 0.9999 and max abs
 * difference <= 1e-5 (fp32, measured ~1e-7; the L2-normalised embeddings have entries
 * around 0.2). Each encoding runs twice, with the kernels that cpu_has()
 * allows (CLIP_CPU's) and with the portable ones (cpu_set_cap("generic")):
 * both must match the reference, and their bits differ exactly when the
 * AVX-512 variants of the ops were allowed to run (test_dispatch.c says why). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "tool.h"
#include "ckpt/checkpoint.h"
#include "model/clip_model.h"
#include "io/npy.h"
#include "train/train.h"
#include "unit.h"
#include "core/util.h"

#define FIX "tests/fixtures/model/"

typedef struct {
    char *buf;
    npy_array a;
} npy_file;

static npy_file load_npy(const char *path)
{
    npy_file f;
    size_t len;
    if (!(f.buf = read_file(path, &len)) || npy_parse(f.buf, len, &f.a, path))
        die("%s", clip_error());
    return f;
}

/* compare [n, d] embeddings with the reference, both ways */
static void check_emb(const char *what, const float *got, const char *ref_path, int n, int d)
{
    npy_file r = load_npy(ref_path);
    CHECK(r.a.dtype == DT_F32 && r.a.ndim == 2 && r.a.shape[0] == n && r.a.shape[1] == d,
          "%s: reference shape", ref_path);
    const float *want = r.a.data;
    for (int i = 0; i < n; i++) {
        double dot = 0, gn = 0, wn = 0, maxdiff = 0;
        for (int j = 0; j < d; j++) {
            float g = got[i * d + j], w;
            memcpy(&w, want + i * d + j, sizeof w);
            dot += (double)g * w, gn += (double)g * g, wn += (double)w * w;
            maxdiff = fmax(maxdiff, fabs(g - w));
        }
        double cos = dot / sqrt(gn * wn);
        CHECK(cos >= 0.9999 && maxdiff <= 1e-5, "%s row %d: cosine %.7f, max abs diff %.2g", what,
              i, cos, maxdiff);
        if (getenv("VERBOSE"))
            fprintf(stderr, "%s row %d: cosine %.9f, max abs diff %.2g\n", what, i, cos, maxdiff);
    }
    free(r.buf);
}

/* emb (the dispatched kernels' result) against the generic kernels' */
static void check_generic(const char *what, const float *emb, const float *generic, size_t n)
{
    int same = !memcmp(emb, generic, n * sizeof(float)), avx512 = cpu_has(CPU_AVX512);
    CHECK(same != avx512, "%s: the generic kernels' embeddings are %s the dispatched ones (%s)",
          what, same ? "identical to" : "different from", cpu_describe());
}

static void check_images(clip_model *m, const char *what, const char *ref)
{
    npy_file px = load_npy(FIX "pixels.npy");
    int n = (int)px.a.shape[0];
    CHECK(clip_image_resolution(m) == px.a.shape[1], "%s: resolution %d", what,
          clip_image_resolution(m));
    float *emb = xcalloc((size_t)n * m->embed_dim, sizeof(float));
    CHECK(clip_encode_images(m, px.a.data, n, emb) == 0, "%s: %s", what, clip_error());
    check_emb(what, emb, ref, n, m->embed_dim);
    float *gen = xcalloc((size_t)n * m->embed_dim, sizeof(float));
    cpu_set_cap("generic");
    CHECK(clip_encode_images(m, px.a.data, n, gen) == 0, "%s: %s", what, clip_error());
    cpu_set_cap(NULL);
    check_emb(what, gen, ref, n, m->embed_dim);
    check_generic(what, emb, gen, (size_t)n * m->embed_dim);
    free(gen);
    m->max_batch = 2; /* chunked: 2 + 1 */
    memset(emb, 0, (size_t)n * m->embed_dim * sizeof(float));
    CHECK(clip_encode_images(m, px.a.data, n, emb) == 0, "%s: %s", what, clip_error());
    check_emb(what, emb, ref, n, m->embed_dim);
    m->max_batch = 32;
    free(emb);
    free(px.buf);
}

static void check_texts(clip_model *m, const char *what, const char *ids_path, const char *ref)
{
    npy_file ids = load_npy(ids_path);
    int n = (int)ids.a.shape[0], L = (int)ids.a.shape[1];
    int32_t *x = xmalloc((size_t)n * L * sizeof(int32_t));
    memcpy(x, ids.a.data, (size_t)n * L * sizeof(int32_t));
    float *emb = xcalloc((size_t)n * m->embed_dim, sizeof(float));
    CHECK(clip_encode_texts(m, x, n, L, emb) == 0, "%s: %s", what, clip_error());
    check_emb(what, emb, ref, n, m->embed_dim);
    float *gen = xcalloc((size_t)n * m->embed_dim, sizeof(float));
    cpu_set_cap("generic");
    CHECK(clip_encode_texts(m, x, n, L, gen) == 0, "%s: %s", what, clip_error());
    cpu_set_cap(NULL);
    check_emb(what, gen, ref, n, m->embed_dim);
    check_generic(what, emb, gen, (size_t)n * m->embed_dim);
    free(gen);
    x[5] = 100000;
    CHECK(clip_encode_texts(m, x, n, L, emb) == -1 && strstr(clip_error(), "100000"),
          "%s: an id outside the vocabulary is an error: %s", what, clip_error());
    free(x);
    free(emb);
    free(ids.buf);
}

static void test_joint(const char *path)
{
    clip_model *m = clip_model_load(path, NULL);
    CHECK(m != NULL, "%s: %s", path, clip_error());
    if (!m) return;
    CHECK(m->text == CLIP_TEXT_BERT && m->bert && !m->ctext, "%s: BERT text tower", path);
    CHECK(m->embed_dim == 32, "embed_dim %d", m->embed_dim);
    CHECK(fabsf(m->logit_scale - 3.0f) < 1e-6f, "logit_scale %g", m->logit_scale);
    CHECK(m->visual->cfg.width == 64 && m->visual->cfg.layers == 2 && m->visual->cfg.patch == 8 &&
              m->visual->cfg.tokens == 17 && m->visual->cfg.mlp == 128,
          "ViT config from shapes");
    CHECK(m->bert->cfg.hidden == 64 && m->bert->cfg.layers == 2 && m->bert->cfg.heads == 1 &&
              m->bert->cfg.intermediate == 128 && m->bert->cfg.vocab == 256,
          "BERT config from shapes");
    check_images(m, "joint image", FIX "joint_img.npy");
    check_texts(m, "joint text", FIX "ids_bert.npy", FIX "joint_txt.npy");
    clip_model_free(m);
}

static void test_openai_and_bert_dir(void)
{
    const char *path = FIX "openai.pth";
    clip_model *m = clip_model_load(path, NULL);
    CHECK(m != NULL, "%s: %s", path, clip_error());
    if (!m) return;
    CHECK(m->text == CLIP_TEXT_CLIP && m->ctext && !m->bert, "English text tower");
    CHECK(fabsf(m->logit_scale - logf(100.0f)) < 1e-3f, "logit_scale %g", m->logit_scale);
    check_images(m, "openai image", FIX "openai_img.npy");
    check_texts(m, "openai text", FIX "ids_clip.npy", FIX "openai_txt.npy");
    clip_model_free(m);

    /* the English checkpoint + a Hugging Face BERT directory: as training
     * starts, with a fresh ln_final/text_projection head for BERT */
    m = clip_model_load(path, FIX "bert");
    CHECK(m != NULL, "%s + bert dir: %s", path, clip_error());
    if (!m) return;
    CHECK(m->text == CLIP_TEXT_BERT && m->bert && m->ctext, "both text towers, BERT first");
    CHECK(m->bert->cfg.heads == 4, "heads from config.json: %d", m->bert->cfg.heads);
    check_texts(m, "bert dir text", FIX "ids_bert.npy", FIX "bertdir_txt.npy");
    m->text = CLIP_TEXT_CLIP;
    check_texts(m, "openai text (beside BERT)", FIX "ids_clip.npy", FIX "openai_txt.npy");
    clip_model_free(m);
}

/* a copy of `src` with tensor `drop` left out, or `reshape` given a wrong shape */
static int write_broken(const char *src, const char *dst, const char *drop, const char *reshape)
{
    ckpt *c = ckpt_load(src);
    if (!c) return -1;
    size_t n = ckpt_count(c), k = 0;
    ckpt_out_tensor *out = xcalloc(n, sizeof *out);
    for (size_t i = 0; i < n; i++) {
        const ckpt_tensor *t = ckpt_tensor_at(c, i);
        if (drop && !strcmp(t->name, drop)) continue;
        ckpt_out_tensor *o = &out[k++];
        o->name = t->name, o->dtype = t->dtype, o->ndim = t->ndim, o->data = t->data;
        memcpy(o->shape, t->shape, sizeof o->shape);
        if (reshape && !strcmp(t->name, reshape)) { /* [a, b] -> [b, a] */
            o->shape[0] = t->shape[1];
            o->shape[1] = t->shape[0];
        }
    }
    int rc = ckpt_save_safetensors(dst, out, k, NULL);
    free(out);
    ckpt_free(c);
    return rc;
}

static void test_errors(const char *src)
{
    char dir[] = "/tmp/test_model.XXXXXX", path[64];
    if (!mkdtemp(dir)) die("mkdtemp");
    snprintf(path, sizeof path, "%s/x.safetensors", dir);

    const char *missing = "visual.ln_post.bias";
    CHECK(write_broken(src, path, missing, NULL) == 0, "write: %s", clip_error());
    CHECK(clip_model_load(path, NULL) == NULL && strstr(clip_error(), missing) &&
              strstr(clip_error(), path),
          "a missing tensor is named: %s", clip_error());

    const char *bad = "visual.transformer.resblocks.1.attn.in_proj_weight";
    CHECK(write_broken(src, path, NULL, bad) == 0, "write: %s", clip_error());
    CHECK(clip_model_load(path, NULL) == NULL && strstr(clip_error(), bad),
          "a mis-shaped tensor is named: %s", clip_error());

    const char *bad_bert = "transformer.encoder.layer.1.intermediate.dense.weight";
    CHECK(write_broken(src, path, NULL, bad_bert) == 0, "write: %s", clip_error());
    CHECK(clip_model_load(path, NULL) == NULL && strstr(clip_error(), bad_bert),
          "a mis-shaped BERT tensor is named: %s", clip_error());

    /* the same model through safetensors */
    CHECK(write_broken(src, path, NULL, NULL) == 0, "write: %s", clip_error());
    test_joint(path);
    unlink(path);
    rmdir(dir);

    CHECK(clip_model_load(FIX "no-such.pth", NULL) == NULL && strstr(clip_error(), "no-such.pth"),
          "a missing file is named: %s", clip_error());
}

/* a copy of checkpoint `src` whose clip_config record has tower.key set to
 * the JSON `value` (same format, by extension) */
static int write_record(const char *src, const char *dst, const char *tower, const char *key,
                        const char *value)
{
    ckpt *c = ckpt_load(src);
    if (!c) return -1;
    json_t *rec = json_loads(ckpt_metadata(c, "clip_config"), 0, NULL);
    json_object_set_new(json_object_get(rec, tower), key, json_loads(value, JSON_DECODE_ANY, NULL));
    char *js = json_dumps(rec, JSON_COMPACT);
    size_t n = ckpt_count(c);
    ckpt_out_tensor *out = ckpt_out_views(c);
    const char *meta[] = {"clip_config", js, NULL};
    size_t len = strlen(dst);
    int rc = len > 4 && !strcmp(dst + len - 4, ".pth") ? ckpt_save_pth(dst, out, n, meta)
                                                       : ckpt_save_safetensors(dst, out, n, meta);
    free(out);
    free(js);
    json_decref(rec);
    ckpt_free(c);
    return rc;
}

/* clip-train's saves record the head counts: the seed-format start (the
 * English checkpoint + a BERT directory whose config.json says 4 heads, where
 * the hidden size 64 alone would give 1) saved untrained as .pth and
 * .safetensors reloads without the directory to PyTorch's 4-head embeddings.
 * A damaged record is refused naming the file; a config.json that disagrees
 * loses to the record. */
static void test_saved_heads(void)
{
    char dir[] = "/tmp/test_model.XXXXXX", path[64], bad[64];
    if (!mkdtemp(dir)) die("mkdtemp");
    clip_model *m = train_model_load(FIX "openai.pth", FIX "bert");
    CHECK(m && m->bert->cfg.heads == 4 && m->bert->cfg.position_ids, "seed init: %s",
          m ? "4 heads and position_ids" : clip_error());
    if (!m) return;
    train_config tc;
    train_config_defaults(&tc);
    trainer *t = trainer_create(m, &tc, 3, 12);
    for (int f = 0; f < 2; f++) {
        const char *ext = f ? "safetensors" : "pth";
        snprintf(path, sizeof path, "%s/m.%s", dir, ext);
        CHECK(trainer_save_weights(t, path) == 0, "%s: %s", path, clip_error());
        ckpt *c = ckpt_load(path);
        CHECK(c && ckpt_metadata(c, "clip_config") &&
                  strstr(ckpt_metadata(c, "clip_config"), "\"heads\":4") &&
                  ckpt_find(c, "transformer.embeddings.position_ids"),
              "%s: the record holds the 4 text heads, the keys position_ids", path);
        ckpt_free(c);
        clip_model *r = clip_model_load(path, NULL);
        CHECK(r && r->bert && r->bert->cfg.heads == 4 && r->visual->cfg.heads == 1,
              "%s reloads with the recorded heads: %s", path, r ? "wrong heads" : clip_error());
        if (r) {
            check_images(r, path, FIX "openai_img.npy");
            check_texts(r, path, FIX "ids_bert.npy", FIX "bertdir_txt.npy");
            clip_model_free(r);
        }
        /* tests/fixtures/train/bert: the same BERT dimensions, 2 heads */
        r = clip_model_load(path, "tests/fixtures/train/bert");
        CHECK(r && r->bert->cfg.heads == 4, "%s: the record wins over a config.json: %s", path,
              r ? "config.json won" : clip_error());
        clip_model_free(r);

        struct {
            const char *tower, *value;
        } cases[] = {{"text", "3"},   {"text", "0"},  {"text", "\"4\""}, {"text", "-4"},
                     {"text", "128"}, {"image", "3"}, {"image", "0"}};
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            snprintf(bad, sizeof bad, "%s/bad.%s", dir, ext);
            CHECK(write_record(path, bad, cases[k].tower, "heads", cases[k].value) == 0, "%s",
                  clip_error());
            r = clip_model_load(bad, NULL);
            CHECK(!r && strstr(clip_error(), bad) && strstr(clip_error(), "heads") &&
                      strstr(clip_error(), cases[k].tower),
                  "%s heads = %s refused naming the file: %s", cases[k].tower, cases[k].value,
                  r ? "loaded" : clip_error());
            clip_model_free(r);
        }
        /* a valid image head count other than width / 64 is honoured too */
        CHECK(write_record(path, bad, "image", "heads", "2") == 0, "%s", clip_error());
        r = clip_model_load(bad, NULL);
        CHECK(r && r->visual->cfg.heads == 2, "recorded image heads: %s",
              r ? "not honoured" : clip_error());
        clip_model_free(r);
        unlink(bad);
        unlink(path);
    }
    trainer_free(t);
    rmdir(dir);
}

/* the saved key set without PyTorch: a model from scratch has no position_ids
 * buffer unless asked (checkpoint.bats loads them strictly into PyTorch) */
static void test_saved_keys(void)
{
    char dir[] = "/tmp/test_model.XXXXXX", path[64];
    if (!mkdtemp(dir)) die("mkdtemp");
    snprintf(path, sizeof path, "%s/s.pth", dir);
    for (int want = 0; want < 2; want++) {
        train_arch a;
        CHECK(train_arch_parse("tiny", &a) == 0 && !a.bert.position_ids, "%s", clip_error());
        a.bert.position_ids = want;
        train_config tc;
        train_config_defaults(&tc);
        trainer *t = trainer_create(train_model_create(&a, 1), &tc, 2, 8);
        CHECK(trainer_save_weights(t, path) == 0, "%s", clip_error());
        ckpt *c = ckpt_load(path);
        const ckpt_tensor *p = c ? ckpt_find(c, "transformer.embeddings.position_ids") : NULL;
        CHECK(c && !p == !want, "--arch%s: position_ids %s", want ? " --position-ids" : "",
              p ? "saved" : "left out");
        CHECK(!p || (p->dtype == DT_I64 && p->ndim == 2 && p->shape[0] == 1 &&
                     p->shape[1] == a.bert.max_pos && ((const int64_t *)p->data)[5] == 5),
              "position_ids: int64 [1, max_pos] = 0, 1, ...");
        clip_model *r = c ? clip_model_from_ckpt(c, path, NULL) : NULL;
        CHECK(r && r->bert->cfg.position_ids == want, "the reload keeps the key set: %s",
              r ? "no" : clip_error());
        clip_model_free(r);
        ckpt_free(c);
        trainer_free(t);
    }
    unlink(path);
    rmdir(dir);
}

/* the smallest per-row cosine of [n, d] embeddings against a reference file */
static double min_cosine(const float *got, const char *ref_path, int n, int d)
{
    npy_file r = load_npy(ref_path);
    const float *want = r.a.data;
    double worst = 1.0;
    for (int i = 0; i < n; i++) {
        double dot = 0, gn = 0, wn = 0;
        for (int j = 0; j < d; j++) {
            float g = got[i * d + j], w;
            memcpy(&w, want + i * d + j, sizeof w);
            dot += (double)g * w, gn += (double)g * g, wn += (double)w * w;
        }
        worst = fmin(worst, dot / sqrt(gn * wn));
    }
    free(r.buf);
    return worst;
}

/* Head counts that are not width / 64, from the checkpoint's clip_config
 * record (tests/ref/model_ref.py heads: a ViT of 8 heads of 8 and an English
 * text transformer of 4 heads of 16, in .safetensors): PyTorch's embeddings.
 * The same tensors without the record load with width / 64 = 1 head each and
 * embed to something else; a record whose clip_text heads do not divide the
 * width is refused naming the file. */
static void test_recorded_heads(void)
{
    const char *path = FIX "heads/model.safetensors";
    clip_model *m = clip_model_load(path, NULL);
    CHECK(m != NULL, "%s: %s", path, clip_error());
    if (!m) return;
    CHECK(m->visual->cfg.heads == 8 && m->ctext && m->ctext->cfg.heads == 4 &&
              m->text == CLIP_TEXT_CLIP,
          "recorded heads: image %d, text %d", m->visual->cfg.heads,
          m->ctext ? m->ctext->cfg.heads : 0);
    check_images(m, "8-head image", FIX "heads/img.npy");
    check_texts(m, "4-head text", FIX "ids_clip.npy", FIX "heads/txt.npy");
    clip_model_free(m);

    char dir[] = "/tmp/test_model.XXXXXX", bare[64], bad[64];
    if (!mkdtemp(dir)) die("mkdtemp");
    snprintf(bare, sizeof bare, "%s/bare.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    CHECK(write_broken(path, bare, NULL, NULL) == 0, "write: %s", clip_error());
    m = clip_model_load(bare, NULL);
    CHECK(m && m->visual->cfg.heads == 1 && m->ctext->cfg.heads == 1,
          "without the record: width / 64 heads: %s", m ? "other heads" : clip_error());
    if (m) {
        npy_file px = load_npy(FIX "pixels.npy");
        int n = (int)px.a.shape[0];
        float *emb = xcalloc((size_t)n * m->embed_dim, sizeof(float));
        CHECK(clip_encode_images(m, px.a.data, n, emb) == 0, "%s", clip_error());
        CHECK(min_cosine(emb, FIX "heads/img.npy", n, m->embed_dim) < 0.9999,
              "1 head embeds like 8: the fixture does not tell head counts apart");
        free(emb);
        free(px.buf);
        clip_model_free(m);
    }
    CHECK(write_record(path, bad, "clip_text", "heads", "3") == 0, "%s", clip_error());
    m = clip_model_load(bad, NULL);
    CHECK(!m && strstr(clip_error(), bad) && strstr(clip_error(), "clip_text heads = 3"),
          "clip_text heads = 3 refused naming the file: %s", m ? "loaded" : clip_error());
    clip_model_free(m);
    unlink(bare);
    unlink(bad);
    rmdir(dir);
}

/* Precision belongs to the model: fp32, bf16 and int8 copies of the joint
 * model side by side in one process, their encodings interleaved. The fp32
 * one gives the fp32 reference's embeddings, bit for bit the same before and
 * after the others ran; bf16 and int8 stay near it (cosine 0.999 and 0.99,
 * as clip-embed --amp / --int8 promise) without being it. A model freed in
 * int8 leaves nothing behind: the next model quantised (whose weights may
 * reuse its memory) embeds near its own reference. A model whose precision
 * says int8 without quantised weights is an error, not a silent fp32. */
static void test_precision_per_model(const char *joint)
{
    clip_model *m[3];
    const clip_precision prec[3] = {PRECISION_FP32, PRECISION_BF16, PRECISION_INT8};
    const double min_cos[3] = {0.9999, 0.999, 0.99};
    for (int k = 0; k < 3; k++) {
        m[k] = clip_model_load(joint, NULL);
        if (!m[k]) die("%s", clip_error());
    }
    for (int k = 2; k > 0; k--)
        CHECK(clip_model_set_precision(m[k], prec[k]) == 0, "%s: %s", precision_name(prec[k]),
              clip_error());
    npy_file px = load_npy(FIX "pixels.npy"), ids = load_npy(FIX "ids_bert.npy");
    int n = (int)px.a.shape[0], nt = (int)ids.a.shape[0], L = (int)ids.a.shape[1];
    int D = m[0]->embed_dim;
    float *img[3], *txt[3], *again = xcalloc((size_t)n * D, sizeof(float));
    for (int k = 2; k >= 0; k--) { /* the fp32 model last: after the others */
        img[k] = xcalloc((size_t)n * D, sizeof(float));
        txt[k] = xcalloc((size_t)nt * D, sizeof(float));
        CHECK(clip_encode_images(m[k], px.a.data, n, img[k]) == 0 &&
                  clip_encode_texts(m[k], ids.a.data, nt, L, txt[k]) == 0,
              "%s: %s", precision_name(prec[k]), clip_error());
    }
    check_emb("fp32 beside bf16 and int8 (images)", img[0], FIX "joint_img.npy", n, D);
    check_emb("fp32 beside bf16 and int8 (texts)", txt[0], FIX "joint_txt.npy", nt, D);
    for (int k = 1; k < 3; k++) {
        double ci = min_cosine(img[k], FIX "joint_img.npy", n, D);
        double ct = min_cosine(txt[k], FIX "joint_txt.npy", nt, D);
        CHECK(ci >= min_cos[k] && ct >= min_cos[k], "%s: cosine %.6f (images), %.6f (texts)",
              precision_name(prec[k]), ci, ct);
        if (getenv("VERBOSE"))
            fprintf(stderr, "%s beside fp32: cosine %.6f (images), %.6f (texts)\n",
                    precision_name(prec[k]), ci, ct);
        CHECK(memcmp(img[k], img[0], (size_t)n * D * sizeof(float)) &&
                  memcmp(txt[k], txt[0], (size_t)nt * D * sizeof(float)),
              "%s gives the fp32 embeddings: its precision did not apply", precision_name(prec[k]));
    }
    CHECK(clip_encode_images(m[2], px.a.data, n, again) == 0, "%s", clip_error());
    CHECK(clip_encode_images(m[0], px.a.data, n, again) == 0 &&
              !memcmp(again, img[0], (size_t)n * D * sizeof(float)),
          "fp32 changed after an int8 encoding");

    /* back to fp32 frees the quantised weights and gives fp32's bits */
    CHECK(clip_model_set_precision(m[2], PRECISION_FP32) == 0 && !m[2]->visual->q.blocks &&
              !m[2]->bert->q.layers,
          "fp32 again: quantised weights freed");
    CHECK(clip_encode_images(m[2], px.a.data, n, again) == 0 &&
              !memcmp(again, img[0], (size_t)n * D * sizeof(float)),
          "int8 then fp32 gives the fp32 embeddings");

    /* int8 said without quantised weights */
    m[2]->compute.precision = PRECISION_INT8;
    clip_clear_error();
    CHECK(clip_encode_images(m[2], px.a.data, n, again) == -1 &&
              strstr(clip_error(), "not quantised"),
          "int8 without quantised weights: %s", clip_error());
    clip_clear_error();
    CHECK(clip_encode_texts(m[2], ids.a.data, nt, L, again) == -1 &&
              strstr(clip_error(), "not quantised"),
          "int8 without quantised weights (text): %s", clip_error());
    for (int k = 0; k < 3; k++) {
        clip_model_free(m[k]);
        free(img[k]);
        free(txt[k]);
    }
    free(again);

    /* a model freed while int8, then another quantised */
    clip_model *a = clip_model_load(joint, NULL), *b;
    if (!a || clip_model_set_precision(a, PRECISION_INT8) ||
        clip_encode_images(a, px.a.data, n, (again = xcalloc((size_t)n * D, sizeof(float)))))
        die("%s", clip_error());
    clip_model_free(a);
    if (!(b = clip_model_load(FIX "openai.pth", NULL)) ||
        clip_model_set_precision(b, PRECISION_INT8))
        die("%s", clip_error());
    CHECK(clip_encode_images(b, px.a.data, n, again) == 0, "%s", clip_error());
    double c = min_cosine(again, FIX "openai_img.npy", n, D);
    CHECK(c >= 0.99, "int8 after another int8 model was freed: cosine %.6f to its own reference",
          c);
    if (getenv("VERBOSE")) fprintf(stderr, "int8 after another model was freed: cosine %.6f\n", c);
    clip_model_free(b);
    free(again);
    free(px.buf);
    free(ids.buf);
}

/* Loading's warnings reach the caller in m->warnings, one line each, and
 * the library prints nothing itself (stderr is captured into a file). */
static void test_warnings(void)
{
    char log[] = "/tmp/test_model_stderr.XXXXXX";
    int fd = mkstemp(log), saved = dup(2);
    if (fd < 0 || saved < 0) die("mkstemp/dup");
    fflush(stderr);
    dup2(fd, 2);
    clip_model *m = clip_model_load(FIX "openai.pth", FIX "bert");
    clip_model *t = train_model_load(FIX "openai.pth", FIX "bert");
    clip_model *quiet = clip_model_load(FIX "joint.pth", NULL);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == 0, "the library wrote %lld bytes to stderr",
          (long long)st.st_size);
    close(fd);
    unlink(log);
    CHECK(
        m && m->n_warnings == 1 &&
            strstr(m->warnings[0], "no text_projection for the BERT tower: initialising [64, 32]"),
        "clip_model_load: %d warnings: %s", m ? m->n_warnings : -1,
        m && m->n_warnings ? m->warnings[0] : clip_error());
    CHECK(t && t->n_warnings == 2 && strstr(t->warnings[1], "26 tensors not used by the model") &&
              strstr(t->warnings[1], FIX "openai.pth") && !strchr(t->warnings[1], '\n'),
          "train_model_load: %d warnings: %s", t ? t->n_warnings : -1,
          t && t->n_warnings > 1 ? t->warnings[1] : clip_error());
    CHECK(quiet && quiet->n_warnings == 0 && !quiet->warnings, "a complete checkpoint: no warning");
    clip_model_free(m);
    clip_model_free(t);
    clip_model_free(quiet);
}

/* clip-train --arch image_heads=N: saved in the record, reloaded with it;
 * the default stays width / 64, a count that does not divide the width is
 * refused */
static void test_arch_image_heads(void)
{
    train_arch a;
    CHECK(train_arch_parse("tiny", &a) == 0 && a.vit.heads == 1, "tiny: %d image heads",
          a.vit.heads);
    CHECK(train_arch_parse("tiny,image_heads=4", &a) == 0 && a.vit.heads == 4 && a.bert.heads == 1,
          "image_heads=4: %d, text %d", a.vit.heads, a.bert.heads);
    clip_clear_error();
    CHECK(train_arch_parse("tiny,image_heads=3", &a) == -1 && strstr(clip_error(), "image_heads"),
          "image_heads=3 with width 64: %s", clip_error());
    CHECK(train_arch_parse("tiny,image_width=96", &a) == -1 && strstr(clip_error(), "64"),
          "width 96 without image_heads: %s", clip_error());
    CHECK(train_arch_parse("tiny,image_width=96,image_heads=3", &a) == 0 && a.vit.heads == 3,
          "width 96, 3 heads: %s", clip_error());

    char dir[] = "/tmp/test_model.XXXXXX", path[64];
    if (!mkdtemp(dir)) die("mkdtemp");
    CHECK(train_arch_parse("tiny,image_heads=4", &a) == 0, "%s", clip_error());
    train_config tc;
    train_config_defaults(&tc);
    trainer *t = trainer_create(train_model_create(&a, 1), &tc, 2, 8);
    if (!t) die("%s", clip_error());
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    CHECK(trainer_save_weights(t, path) == 0, "%s", clip_error());
    clip_model *r = clip_model_load(path, NULL);
    CHECK(r && r->visual->cfg.heads == 4, "the saved model reloads with 4 image heads: %s",
          r ? "other heads" : clip_error());
    clip_model_free(r);
    snprintf(path, sizeof path, "%s/s.state", dir);
    CHECK(trainer_save_state(t, path, NULL) == 0, "%s", clip_error());
    trainer_free(t);
    t = trainer_load_state(path, &tc, 2, 8, NULL);
    CHECK(t && trainer_model(t)->visual->cfg.heads == 4, "the state resumes with 4 image heads: %s",
          t ? "other heads" : clip_error());
    trainer_free(t);
    unlink(path);
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    const char *joint = argc > 1 ? argv[1] : FIX "joint.pth";
    test_joint(joint);
    test_openai_and_bert_dir();
    test_errors(joint);
    test_saved_heads();
    test_saved_keys();
    test_recorded_heads();
    test_precision_per_model(joint);
    test_arch_image_heads();
    test_warnings();
    return unit_done();
}
