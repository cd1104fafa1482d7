/* The C backward passes against PyTorch autograd (tests/ref/backward_ref.py,
 * fixtures in tests/fixtures/backward): every parameter gradient of
 *   loss = sum(vit(pixels) * r_img) + sum(bert(ids) * r_txt)
 * must satisfy, per tensor, max |g_c - g_ref| <= 1e-4 * G, G = max |g_ref|: the
 * fp32 noise floor of a gradient, derived in tests/unit/test_train.c (two
 * implementations, ~100 reductions of length <= 256 each; these towers are
 * smaller still). No absolute floor: BERT's query/key/value biases and
 * weights share the scale of the group, as ViT's fused in_proj does, since
 * the key bias's exact gradient is 0 (softmax ignores a constant added to a
 * row of scores) and both sides give rounding noise of terms of the query's
 * and value's size. Measured worst ratio ~0.007. Also: every parameter is
 * covered, gradients accumulate, resblock_backward's non-aliased form, and
 * attention_backward directly with a causal and a key mask. The English
 * tower (OpenAI CLIP's causal text transformer, fixtures en_*) the same way:
 * loss = sum(clip_text(ids) * r_txt), every tensor against PyTorch, the
 * padding after each EOT and the positions past L getting exactly 0.
 * Run from the repository root; the speed is measured by make bench-train. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "kernels/blas.h"
#include "ckpt/checkpoint.h"
#include "model/clip_model.h"
#include "io/npy.h"
#include "kernels/ops.h"
#include "unit.h"
#include "core/util.h"

#define FIX "tests/fixtures/backward/"
#define RTOL 1e-4

static double worst_ratio;
static char worst_name[256];

/* an .npy fixture copied into an aligned buffer; checks dtype and count */
static void *load_npy(const char *path, npy_dtype dt, size_t count)
{
    size_t len;
    npy_array a;
    char *buf = read_file(path, &len);
    if (!buf || npy_parse(buf, len, &a, path)) die("%s", clip_error());
    if (a.dtype != dt || a.count != count)
        die("%s: expected %zu %s, found %zu %s", path, count, dtype_name(dt), a.count,
            dtype_name(a.dtype));
    void *out = xmalloc(count * dtype_size(dt));
    memcpy(out, a.data, count * dtype_size(dt));
    free(buf);
    return out;
}

/* max |got - mult * want| against RTOL * scale (scale < 0: max |mult * want|) */
static void check_close(const char *what, const float *got, const float *want, size_t n, float mult,
                        double scale)
{
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        maxref = fmax(maxref, fabs(mult * want[i]));
        maxdiff = fmax(maxdiff, fabs(got[i] - mult * want[i]));
    }
    if (scale < 0) scale = maxref;
    double ratio = maxdiff > 0 ? (scale > 0 ? maxdiff / (RTOL * scale) : INFINITY) : 0;
    CHECK(ratio <= 1.0,
          "%s: max abs diff %.3g, max |ref| %.3g, scale %.3g (ratio to tolerance %.3f)", what,
          maxdiff, maxref, scale, ratio);
    if (ratio > worst_ratio) {
        worst_ratio = ratio;
        snprintf(worst_name, sizeof worst_name, "%s", what);
    }
    if (getenv("VERBOSE"))
        fprintf(stderr, "%-64s max|ref| %.3e  scale %.3e  max diff %.3e  ratio %.4f\n", what,
                maxref, scale, maxdiff, ratio);
}

/* the scale of a reference gradient: max |g| over it, or over BERT's
 * query/key/value group it belongs to */
static double ref_scale(const ckpt *ref, const char *name)
{
    static const char *const qkv[3] = {"query", "key", "value"};
    char names[3][256];
    int k = 1;
    snprintf(names[0], sizeof names[0], "%s", name);
    const char *p = strstr(name, "attention.self.");
    for (int j = 0; p && j < 3; j++) {
        const char *q = p + strlen("attention.self.");
        size_t n = strlen(qkv[j]);
        if (strncmp(q, qkv[j], n) || q[n] != '.') continue;
        for (int i = 0; i < 3; i++)
            snprintf(names[i], sizeof names[i], "%.*s%s%s", (int)(q - name), name, qkv[i], q + n);
        k = 3;
        break;
    }
    double G = 0;
    for (int j = 0; j < k; j++) {
        const ckpt_tensor *t = ckpt_find(ref, names[j]);
        if (!t) die("reference gradient %s missing", names[j]);
        float *x = xmalloc(t->numel * sizeof(float));
        if (ckpt_read_f32(ref, names[j], t->ndim, t->shape, x)) die("%s", clip_error());
        for (size_t i = 0; i < t->numel; i++) G = fmax(G, fabs((double)x[i]));
        free(x);
    }
    return G;
}

/* every tensor of a gradient table against its reference; returns how many */
static int check_table(const param_table *gt, const ckpt *ref, float mult)
{
    int found = 0;
    for (int i = 0; i < gt->n; i++) {
        const param_spec *s = &gt->v[i];
        float *want = xmalloc(s->numel * sizeof(float));
        int rc = ckpt_read_f32(ref, s->name, s->ndim, s->shape, want);
        CHECK(rc == 0, "reference gradient %s: %s", s->name, clip_error());
        if (rc == 0) {
            found++;
            check_close(s->name, *s->ptr, want, s->numel, mult,
                        fabs(mult) * ref_scale(ref, s->name));
        }
        free(want);
    }
    return found;
}

/* per tensor, so that a sanitizer build may leave poisoned gaps between them */
static void zero_table(param_table *t)
{
    for (int i = 0; i < t->n; i++) memset(*t->v[i].ptr, 0, t->v[i].numel * sizeof(float));
}

static float *copy_table(const param_table *t, float *dst)
{
    for (int i = 0; i < t->n; i++)
        memcpy(dst + t->v[i].offset, *t->v[i].ptr, t->v[i].numel * sizeof(float));
    return dst;
}

static void run_step(clip_model *m, const uint8_t *pixels, const int32_t *ids, const float *r_img,
                     const float *r_txt, int B, int L)
{
    const compute_ctx *cx = &m->compute;
    CHECK(vit_forward(m->visual, cx, pixels, B, NULL) == 0, "vit_forward: %s", clip_error());
    CHECK(vit_backward(m->visual, cx, r_img, B) == 0, "vit_backward: %s", clip_error());
    CHECK(bert_forward(m->bert, cx, ids, B, L, NULL) == 0, "bert_forward: %s", clip_error());
    CHECK(bert_backward(m->bert, cx, ids, r_txt, B, L) == 0, "bert_backward: %s", clip_error());
}

static void test_towers(void)
{
    clip_model *m = clip_model_load(FIX "joint.pth", NULL);
    ckpt *ref = ckpt_load(FIX "grads.pth");
    if (!m || !ref) die("%s", clip_error());
    vit *v = m->visual;
    bert *t = m->bert;
    /* 2 heads of 32 (from shapes the loader infers width / 64 = 1) */
    v->cfg.heads = 2;
    t->cfg.heads = 2;
    const int B = 3, L = 12, R = v->cfg.resolution, D = m->embed_dim;
    uint8_t *pixels = load_npy(FIX "pixels.npy", DT_U8, (size_t)B * R * R * 3);
    int32_t *ids = load_npy(FIX "ids.npy", DT_I32, (size_t)B * L);
    float *r_img = load_npy(FIX "r_img.npy", DT_F32, (size_t)B * D);
    float *r_txt = load_npy(FIX "r_txt.npy", DT_F32, (size_t)B * D);

    vit_reserve(v, B, 1);
    vit_alloc_grads(v);
    bert_reserve(t, B, L, 1);
    bert_alloc_grads(t);
    CHECK(v->gtable.total == v->ptable.total && t->gtable.total == t->ptable.total &&
              v->gtable.n == v->ptable.n && t->gtable.n == t->ptable.n,
          "gradient tables in the parameters' layout");
    run_step(m, pixels, ids, r_img, r_txt, B, L);
    int n = check_table(&v->gtable, ref, 1.0f) + check_table(&t->gtable, ref, 1.0f);
    CHECK(n == v->gtable.n + t->gtable.n && (size_t)n == ckpt_count(ref),
          "coverage: %d of %d parameters checked, %zu reference gradients", n,
          v->gtable.n + t->gtable.n, ckpt_count(ref));
    printf("checked %d parameter gradients (ViT %d, BERT %d); worst ratio to tolerance %.4f (%s)\n",
           n, v->gtable.n, t->gtable.n, worst_ratio, worst_name);

    /* padding_idx = 0: the [PAD] row gets exactly nothing; nor do positions >= L */
    const float *w0 = t->grads.word_emb;
    int pad_zero = 1, pos_zero = 1;
    for (int j = 0; j < t->cfg.hidden; j++) pad_zero &= w0[j] == 0.0f;
    for (size_t j = (size_t)L * t->cfg.hidden; j < (size_t)t->cfg.max_pos * t->cfg.hidden; j++)
        pos_zero &= t->grads.pos_emb[j] == 0.0f;
    CHECK(pad_zero && pos_zero, "no gradient for the [PAD] word row or unused positions");

    /* backward accumulates: a second step without zeroing doubles */
    run_step(m, pixels, ids, r_img, r_txt, B, L);
    check_table(&v->gtable, ref, 2.0f);
    check_table(&t->gtable, ref, 2.0f);
    /* and zeroing the tables is all a new step needs */
    zero_table(&v->gtable);
    zero_table(&t->gtable);
    vit_alloc_grads(v); /* idempotent: keeps the same buffers */
    bert_alloc_grads(t);
    run_step(m, pixels, ids, r_img, r_txt, B, L);
    check_table(&v->gtable, ref, 1.0f);
    check_table(&t->gtable, ref, 1.0f);

    /* resblock_backward with dinp != dout (+= into dinp, dout untouched) and
     * no parameter gradients, against the in-place form, on the last block */
    const vit_config *g = &v->cfg;
    size_t N = (size_t)B * g->tokens * g->width;
    int last = g->layers - 1;
    float *dout = xmalloc(N * sizeof(float)), *d1 = xmalloc(N * sizeof(float)),
          *d2 = xmalloc(N * sizeof(float)), *keep = xmalloc(N * sizeof(float));
    float *gsave = xcalloc(v->gtable.total, sizeof(float)),
          *gnow = xcalloc(v->gtable.total, sizeof(float));
    fill_normal(dout, N, 1.0f, 7);
    memcpy(d1, dout, N * sizeof(float));
    memcpy(keep, dout, N * sizeof(float));
    for (size_t i = 0; i < N; i++) d2[i] = 1.0f;
    copy_table(&v->gtable, gsave);
    const float *inp = v->acts.blocks[last - 1].out;
    resblock_backward(&m->compute, &v->params.blocks[last], NULL, &v->acts.blocks[last], &v->dacts,
                      d1, d1, inp, B, g->tokens, g->width, g->mlp, g->heads, 0);
    resblock_backward(&m->compute, &v->params.blocks[last], NULL, &v->acts.blocks[last], &v->dacts,
                      d2, dout, inp, B, g->tokens, g->width, g->mlp, g->heads, 0);
    double maxd = 0, maxv = 0;
    for (size_t i = 0; i < N; i++) {
        maxv = fmax(maxv, fabs(d1[i]));
        maxd = fmax(maxd, fabs(d2[i] - 1.0f - d1[i]));
    }
    CHECK(maxd <= 1e-5 * maxv, "resblock_backward: aliased and separate dinp differ by %.3g", maxd);
    CHECK(!memcmp(dout, keep, N * sizeof(float)), "resblock_backward changed a separate dout");
    CHECK(!memcmp(gsave, copy_table(&v->gtable, gnow), v->gtable.total * sizeof(float)),
          "resblock_backward with g = NULL changed gradients");
    free(dout), free(d1), free(d2), free(keep), free(gsave), free(gnow);

    free(pixels), free(ids), free(r_img), free(r_txt);
    ckpt_free(ref);
    clip_model_free(m);
}

/* the English tower: gradients of sum(clip_text(ids) * r_txt) */
static void test_english(void)
{
    clip_model *m = clip_model_load(FIX "en_text.pth", NULL);
    ckpt *ref = ckpt_load(FIX "en_grads.pth");
    if (!m || !ref) die("%s", clip_error());
    clip_text *t = m->ctext;
    CHECK(t && !m->visual && !m->bert, "en_text.pth: the English text tower alone");
    if (!t) return;
    t->cfg.heads = 2; /* 2 heads of 32 (from shapes the loader infers width / 64 = 1) */
    const int B = 3, L = 12, D = m->embed_dim, W = t->cfg.width;
    int32_t *ids = load_npy(FIX "en_ids.npy", DT_I32, (size_t)B * L);
    float *r_txt = load_npy(FIX "en_r_txt.npy", DT_F32, (size_t)B * D);
    double worst_before = worst_ratio;
    char name_before[256];
    snprintf(name_before, sizeof name_before, "%s", worst_name);
    worst_ratio = 0;
    CHECK(clip_text_reserve(t, B, L, 1) == 0 && clip_text_alloc_grads(t) == 0, "%s", clip_error());
    CHECK(t->gtable.total == t->ptable.total && t->gtable.n == t->ptable.n,
          "gradient tables in the parameters' layout");
    for (int pass = 1; pass <= 2; pass++) { /* the second accumulates: twice the gradients */
        CHECK(clip_text_forward(t, &m->compute, ids, B, L, NULL) == 0, "clip_text_forward: %s",
              clip_error());
        CHECK(clip_text_backward(t, &m->compute, ids, r_txt, B, L) == 0, "clip_text_backward: %s",
              clip_error());
        int n = check_table(&t->gtable, ref, (float)pass);
        CHECK(n == t->gtable.n && (size_t)n == ckpt_count(ref),
              "coverage: %d of %d English tower parameters checked, %zu reference gradients", n,
              t->gtable.n, ckpt_count(ref));
        if (pass == 1)
            printf("checked %d English tower gradients; worst ratio to tolerance %.4f (%s)\n", n,
                   worst_ratio, worst_name);
    }
    if (worst_before > worst_ratio) {
        worst_ratio = worst_before;
        snprintf(worst_name, sizeof worst_name, "%s", name_before);
    }
    /* positions >= L get nothing; token_embedding row 0 gets text 1's inner
     * "!" only, not the padding after an EOT: with the padding made another
     * id, row 0 is the same (half the doubled one) */
    int pos_zero = 1;
    for (size_t j = (size_t)L * W; j < (size_t)t->cfg.context * W; j++)
        pos_zero &= t->grads.pos_emb[j] == 0.0f;
    CHECK(pos_zero, "no gradient for positions past the texts");
    float *row0 = xmalloc(W * sizeof(float));
    memcpy(row0, t->grads.token_emb, W * sizeof(float));
    int32_t *shifted = xmalloc((size_t)B * L * sizeof *ids);
    memcpy(shifted, ids, (size_t)B * L * sizeof *ids);
    zero_table(&t->gtable);
    int any_pad = 0;
    for (int b = 0; b < B; b++) /* padding 0 -> another id: the EOT's output is the same */
        for (int j = L - 1; j >= 0 && shifted[b * L + j] == 0; j--)
            shifted[b * L + j] = 5, any_pad = 1;
    CHECK(any_pad, "the fixture has padding");
    clip_text_forward(t, &m->compute, shifted, B, L, NULL);
    clip_text_backward(t, &m->compute, shifted, r_txt, B, L);
    double maxd = 0, maxv = 0;
    for (int j = 0; j < W; j++) {
        maxv = fmax(maxv, fabs(t->grads.token_emb[j]));
        maxd = fmax(maxd, fabs(2.0f * t->grads.token_emb[j] - row0[j]));
    }
    CHECK(maxv > 0 && maxd <= 1e-6 * maxv,
          "token_embedding row 0: the padding after the EOT changed it (diff %.3g of %.3g)", maxd,
          maxv);
    free(row0), free(shifted);
    free(ids), free(r_txt);
    ckpt_free(ref);
    clip_model_free(m);
}

static void test_attention(void)
{
    const int B = 2, T = 5, C = 16, NH = 2;
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    float *qkv = load_npy(FIX "attn_qkv.npy", DT_F32, nqkv);
    float *dout = load_npy(FIX "attn_dout.npy", DT_F32, nout);
    uint8_t *kv = load_npy(FIX "attn_key_valid.npy", DT_U8, (size_t)B * T);
    float *out = xmalloc(nout * sizeof(float)), *dqkv = xmalloc(nqkv * sizeof(float));
    float *att = xmalloc((size_t)B * NH * T * T * sizeof(float));
    float *datt = xmalloc((size_t)B * NH * T * T * sizeof(float));
    for (int masked = 0; masked < 2; masked++) {
        const char *name = masked ? "masked" : "causal";
        char path[256], what[64];
        attention_forward(out, att, qkv, masked ? kv : NULL, !masked, B, T, C, NH);
        snprintf(path, sizeof path, FIX "attn_out_%s.npy", name);
        float *want = load_npy(path, DT_F32, nout);
        snprintf(what, sizeof what, "attention_forward (%s)", name);
        check_close(what, out, want, nout, 1.0f, -1);
        free(want);
        memset(dqkv, 0, nqkv * sizeof(float));
        attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH);
        snprintf(path, sizeof path, FIX "attn_dqkv_%s.npy", name);
        want = load_npy(path, DT_F32, nqkv);
        snprintf(what, sizeof what, "attention_backward (%s)", name);
        check_close(what, dqkv, want, nqkv, 1.0f, -1);
        free(want);
    }
    free(qkv), free(dout), free(kv), free(out), free(dqkv), free(att), free(datt);
}

/* A backward without the kept activations it needs used to exit the
 * program: now -1 with a message naming the call, the gradients untouched. */
static void test_backward_errors(void)
{
    clip_model *m = clip_model_load(FIX "joint.pth", NULL);
    if (!m) die("%s", clip_error());
    const int B = 3, L = 12;
    float *dout = xcalloc((size_t)B * m->embed_dim, sizeof(float));
    int32_t ids[3 * 12] = {101, 5, 102};
    clip_clear_error();
    CHECK(vit_backward(m->visual, &m->compute, dout, B) == -1 &&
              strstr(clip_error(), "vit_backward: no activations kept for a batch of 3"),
          "vit_backward before any forward: %s", clip_error());
    clip_clear_error();
    CHECK(bert_backward(m->bert, &m->compute, ids, dout, B, L) == -1 &&
              strstr(clip_error(), "bert_backward: no activations kept for 3 x 12 tokens"),
          "bert_backward before any forward: %s", clip_error());
    /* activations kept for 2 images, a backward asked for 3 */
    CHECK(vit_reserve(m->visual, 2, 1) == 0, "%s", clip_error());
    clip_clear_error();
    CHECK(vit_backward(m->visual, &m->compute, dout, B) == -1 && strstr(clip_error(), "batch of 3"),
          "vit_backward past the kept batch: %s", clip_error());
    CHECK(!m->visual->gtable.data && !m->bert->gtable.data,
          "a refused backward allocated gradients");
    free(dout);
    clip_model_free(m);

    clip_model *e = clip_model_load(FIX "en_text.pth", NULL);
    if (!e) die("%s", clip_error());
    dout = xcalloc((size_t)B * e->embed_dim, sizeof(float));
    clip_clear_error();
    CHECK(clip_text_backward(e->ctext, &e->compute, ids, dout, B, L) == -1 &&
              strstr(clip_error(), "clip_text_backward: no activations kept for 3 x 12 tokens"),
          "clip_text_backward before any forward: %s", clip_error());
    /* activations for inference (one shared slot) are not enough */
    CHECK(clip_text_forward(e->ctext, &e->compute, ids, B, L, NULL) == 0, "%s", clip_error());
    clip_clear_error();
    CHECK(clip_text_backward(e->ctext, &e->compute, ids, dout, B, L) == -1 &&
              strstr(clip_error(), "no activations kept"),
          "clip_text_backward after an inference forward: %s", clip_error());
    CHECK(!e->ctext->gtable.data, "a refused English backward allocated gradients");
    free(dout);
    clip_model_free(e);
}

int main(int argc, char **argv)
{
    blas_setup(argc, argv);
    test_towers();
    test_english();
    test_attention();
    test_backward_errors();
    printf("worst ratio to tolerance overall: %.4f (%s)\n", worst_ratio, worst_name);
    return unit_done();
}
